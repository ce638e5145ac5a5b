//! The PAM account backend with real system users: this test makes (as
//! root, as CI runs) two groups and three users with a fresh random
//! password, logs in through the host's PAM stack (service `login`), and
//! removes them again at the end.

mod common;

use std::process::Command;

use common::*;
use serde_json::json;

const ADMINS: &str = "hyvet-adm";
const OPERATORS: &str = "hyvet-ops";
const FULL: &str = "hyvet-full";
const LIMITED: &str = "hyvet-lim";
const NOBODY: &str = "hyvet-none";

fn run(cmd: &str, args: &[&str], ok_codes: &[i32]) {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    let code = out.status.code().unwrap_or(-1);
    assert!(
        out.status.success() || ok_codes.contains(&code),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The users and groups, removed when dropped (even if the test fails).
struct SystemUsers;

impl SystemUsers {
    fn make(password: &str) -> SystemUsers {
        assert!(
            rustix::process::geteuid().is_root(),
            "this test makes system users and must run as root (CI does)"
        );
        for g in [ADMINS, OPERATORS] {
            run("groupadd", &[g], &[9]); // 9: exists already
        }
        for (user, group) in [
            (FULL, Some(ADMINS)),
            (LIMITED, Some(OPERATORS)),
            (NOBODY, None),
        ] {
            // No home, no shell: these users exist for PAM only.
            let mut args = vec!["-M", "-s", "/usr/sbin/nologin"];
            if let Some(g) = group {
                args.extend(["-G", g]);
            }
            args.push(user);
            run("useradd", &args, &[9]);
            run("usermod", &["-G", group.unwrap_or(""), user], &[]);
        }
        let mut chpasswd = Command::new("chpasswd")
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        {
            use std::io::Write;
            let stdin = chpasswd.stdin.as_mut().unwrap();
            for u in [FULL, LIMITED, NOBODY] {
                writeln!(stdin, "{u}:{password}").unwrap();
            }
        }
        assert!(chpasswd.wait().unwrap().success());
        SystemUsers
    }
}

impl Drop for SystemUsers {
    fn drop(&mut self) {
        for u in [FULL, LIMITED, NOBODY] {
            let _ = Command::new("userdel").arg(u).output();
        }
        for g in [ADMINS, OPERATORS] {
            let _ = Command::new("groupdel").arg(g).output();
        }
    }
}

#[tokio::test]
async fn pam_users_log_in_with_the_access_of_their_groups() {
    // A fresh random password each run: these users must not be a door.
    let mut bytes = [0u8; 16];
    std::io::Read::read_exact(
        &mut std::fs::File::open("/dev/urandom").unwrap(),
        &mut bytes,
    )
    .unwrap();
    let password: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let _users = SystemUsers::make(&password);
    let dir = data_dir();
    let server = TestServer::start_with_config(
        dir.path(),
        &format!("[auth]\nbackend = \"pam\"\nadmin_group = \"{ADMINS}\"\noperator_group = \"{OPERATORS}\"\n"),
    );

    let full = server.client_as(FULL, &password).await;
    setup(&full).await;
    full.iohyve("create", json!({"name": "pamguest", "size": "1G"}))
        .await
        .unwrap();
    assert_eq!(
        full.call("rpc", "query", json!({})).await.unwrap()["sysadm/iohyve"],
        "read/write"
    );

    let before = snapshot(dir.path());
    let limited = server.client_as(LIMITED, &password).await;
    let vms = limited.iohyve("listvms", json!({})).await.unwrap();
    assert!(vms.get("pamguest").is_some(), "{vms}");
    let r = limited
        .request(
            "sysadm",
            "iohyve",
            json!({"action": "delete", "name": "pamguest"}),
        )
        .await
        .unwrap();
    assert_eq!(r["args"]["code"], "403", "{r}");

    let anon = server.anonymous_client().await;
    let e = anon.login(NOBODY, &password).await.unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("401") && msg.contains(ADMINS),
        "not in a group: {msg}"
    );
    let e = anon.login(FULL, "not the password").await.unwrap_err();
    assert!(e.to_string().contains("wrong user name or password"), "{e}");
    let e = anon.login("hyvet-nosuchuser", &password).await.unwrap_err();
    assert!(e.to_string().contains("wrong user name or password"), "{e}");
    // REST Basic goes through PAM too.
    let r = server
        .http()
        .put(format!("{}/sysadm/iohyve", server.rest))
        .basic_auth(LIMITED, Some(&password))
        .body(r#"{"action":"listvms"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_unchanged(
        &before,
        &snapshot(dir.path()),
        "limited and failed PAM logins",
    );

    // The embedded account file is not this server's: `hyve user` says so.
    let out = user_cmd(
        dir.path(),
        server.config.as_deref(),
        &["add", "x", "--role", "full", "--password-stdin"],
        "pw",
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("PAM"));
}
