//! The command line's side of logins: `hyve user` on a data dir, `hyve
//! login` and `logout`, the kept token (owner-only file), and a new login
//! when the token has expired.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Output;

use common::*;
use serde_json::json;

fn text(o: &[u8]) -> String {
    String::from_utf8_lossy(o).into_owned()
}

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}: {}{}",
        out.status.code(),
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

fn token_files(home: &Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(home.join("tokens"))
        .map(|d| d.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default()
}

#[test]
fn hyve_user_manages_the_account_file() {
    let dir = data_dir();
    let d = dir.path();
    let out = ok(user_cmd(
        d,
        None,
        &["add", "alice", "--role", "full", "--password-stdin"],
        "alice pw",
    ));
    assert_eq!(out, "Added user alice (full access)\n");
    ok(user_cmd(
        d,
        None,
        &["add", "bob", "--role", "limited", "--password-stdin"],
        "bob pw",
    ));
    let users = d.join("hyve/users.toml");
    assert_eq!(
        std::fs::metadata(&users).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let content = std::fs::read_to_string(&users).unwrap();
    assert!(
        content.contains("$argon2id$") && !content.contains("alice pw"),
        "{content}"
    );

    let before = std::fs::read(&users).unwrap();
    for (args, stdin, says) in [
        (
            vec!["add", "alice", "--role", "full", "--password-stdin"],
            "x",
            "already exists",
        ),
        (
            vec!["add", "-x", "--role", "full", "--password-stdin"],
            "x",
            "",
        ),
        (
            vec!["add", "carol", "--role", "full", "--password-stdin"],
            "",
            "must not be empty",
        ),
        (
            vec!["add", "carol", "--role", "root", "--password-stdin"],
            "x",
            "root",
        ),
        (vec!["del", "nobody"], "", "no user 'nobody'"),
        (
            vec!["passwd", "nobody", "--password-stdin"],
            "x",
            "no user 'nobody'",
        ),
    ] {
        let out = user_cmd(d, None, &args, stdin);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(
            text(&out.stderr).contains(says),
            "{args:?}: {}",
            text(&out.stderr)
        );
    }
    assert_eq!(
        std::fs::read(&users).unwrap(),
        before,
        "refused commands change nothing"
    );

    let list = ok(user_cmd(d, None, &["list"], ""));
    assert!(list.contains("alice") && list.contains("full"), "{list}");
    assert!(list.contains("bob") && list.contains("limited"), "{list}");

    // Against the running server: changes take effect at once.
    let server = TestServer::start(d);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        server.client_as("alice", "alice pw").await;
        ok(user_cmd(
            d,
            None,
            &["passwd", "alice", "--password-stdin"],
            "new pw",
        ));
        let anon = server.anonymous_client().await;
        assert!(anon.login("alice", "alice pw").await.is_err());
        anon.login("alice", "new pw").await.unwrap();
        ok(user_cmd(d, None, &["del", "bob"], ""));
        assert!(anon.login("bob", "bob pw").await.is_err());
    });
}

#[test]
fn login_keeps_a_token_that_later_commands_use() {
    let dir = data_dir();
    let server = TestServer::start(dir.path());
    let out = ok(server.cli().arg("login").output().unwrap());
    assert!(out.starts_with("Logged in to 127.0.0.1:"), "{out}");
    let files = token_files(server.cli_home());
    assert_eq!(files.len(), 1);
    let mode = std::fs::metadata(&files[0]).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "readable by its owner only");
    let token = std::fs::read_to_string(&files[0])
        .unwrap()
        .trim()
        .to_string();
    assert_eq!(token.len(), 40);

    // No credentials now: the token does it.
    let out = server
        .cli()
        .env_remove("HYVE_USER")
        .env_remove("HYVE_PASSWORD")
        .arg("version")
        .output()
        .unwrap();
    ok(out);

    // logout ends the token on the server too.
    let out = ok(server.cli().arg("logout").output().unwrap());
    assert!(out.starts_with("Logged out"), "{out}");
    assert!(token_files(server.cli_home()).is_empty());
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let anon = server.anonymous_client().await;
        let e = anon.login_token(&token).await.unwrap_err();
        assert!(e.to_string().contains("401"), "{e}");
    });
    let out = server
        .cli()
        .env_remove("HYVE_USER")
        .env_remove("HYVE_PASSWORD")
        .arg("list")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("hyve login"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn a_wrong_password_keeps_nothing() {
    let dir = data_dir();
    let server = TestServer::start(dir.path());
    let out = server
        .cli()
        .env("HYVE_PASSWORD", "wrong")
        .arg("login")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("cannot log in") && err.contains("wrong user name or password"),
        "{err}"
    );
    assert!(token_files(server.cli_home()).is_empty());
}

#[test]
fn an_expired_login_is_done_again() {
    let dir = data_dir();
    let server = TestServer::start_with_config(dir.path(), "[auth]\ntoken_lifetime_secs = 2\n");
    ok(server.cli().arg("login").output().unwrap());
    let first = std::fs::read_to_string(&token_files(server.cli_home())[0]).unwrap();
    std::thread::sleep(std::time::Duration::from_secs(4));
    // Without credentials: told what to do.
    let out = server
        .cli()
        .env_remove("HYVE_USER")
        .env_remove("HYVE_PASSWORD")
        .arg("version")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("expired"),
        "{}",
        text(&out.stderr)
    );
    // With them: logged in again, a new token kept.
    ok(server.cli().arg("version").output().unwrap());
    let files = token_files(server.cli_home());
    assert_eq!(files.len(), 1);
    assert_ne!(std::fs::read_to_string(&files[0]).unwrap(), first);
    // And the CLI's commands still act.
    let out = ok(server.cli().args(["--json", "list"]).output().unwrap());
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&out).unwrap(),
        json!({})
    );
}

#[test]
fn the_default_server_is_wss() {
    let out = ok(std::process::Command::new(HYVE)
        .arg("--help")
        .output()
        .unwrap());
    assert!(out.contains("wss://127.0.0.1:12150"), "{out}");
}
