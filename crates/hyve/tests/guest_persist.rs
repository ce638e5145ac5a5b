//! Guests that die and guests that start by themselves: `persist` restarts
//! a hypervisor that was killed, up to the crash-loop guard; without it the
//! guest stays down; `boot` = 1 guests start with the server unless they
//! were stopped on purpose. These guests boot a blank "ISO" (QEMU runs, its
//! firmware finds nothing to boot), which is all a running guest needs here.

mod common;

use common::guest::*;
use common::*;
use serde_json::json;

fn kill9(pid: i32) {
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(pid).unwrap(),
        rustix::process::Signal::KILL,
    )
    .unwrap();
}

async fn blank_guest(c: &Client, data: &std::path::Path, name: &str) {
    c.iohyve("create", json!({"name": name, "size": "16M"}))
        .await
        .unwrap();
    c.iohyve("setprop", json!({"name": name, "ram": "64M"}))
        .await
        .unwrap();
    let iso = iso_dir(data).join("blank.iso");
    if !iso.exists() {
        std::fs::write(iso, vec![0u8; 2048]).unwrap();
    }
}

#[tokio::test]
async fn persist_restarts_a_killed_guest_until_the_guard_trips() {
    let dirs = GuestDirs::new();
    let data = dirs.data();
    let server = start_server(&data, "restart_limit = 2\nrestart_window = 3600");
    let c = server.client().await;
    setup(&c).await;
    blank_guest(&c, &data, "p1").await;
    blank_guest(&c, &data, "p0").await;
    c.iohyve("setprop", json!({"name": "p0", "persist": "0"}))
        .await
        .unwrap();
    for g in ["p1", "p0"] {
        c.iohyve("install", json!({"name": g, "iso": "blank.iso"}))
            .await
            .unwrap();
    }

    // persist 0: killed means down.
    kill9(qemu_pid(&data, "p0"));
    wait_running(&c, "p0", "NO").await;
    assert_eq!(vm_state(&c, "p0").await["vmm"], "NO");

    // persist 1: restarted, the same way it was launched, twice...
    let mut pid = qemu_pid(&data, "p1");
    for round in 1..=2 {
        kill9(pid);
        let new = wait_for(&format!("restart {round}"), || async {
            let log = std::fs::read_to_string(guest_dir(&data, "p1").join("vm.log")).ok()?;
            if log.matches("running, pid").count() != round + 1 {
                return None;
            }
            let p = std::fs::read_to_string(guest_dir(&data, "p1").join("run/qemu.pid")).ok()?;
            let p: i32 = p.trim().parse().ok()?;
            (p != pid && alive(p)).then_some(p)
        })
        .await;
        assert_eq!(vm_state(&c, "p1").await["running"], "YES");
        pid = new;
    }
    let log = std::fs::read_to_string(guest_dir(&data, "p1").join("vm.log")).unwrap();
    assert_eq!(log.matches("install from blank.iso:").count(), 3, "{log}");
    assert_eq!(
        log.matches("killed by signal 9 (unexpectedly)").count(),
        2,
        "{log}"
    );

    // ...and the third death within the window trips the guard.
    kill9(pid);
    wait_for("the crash-loop guard", || async {
        let log = std::fs::read_to_string(guest_dir(&data, "p1").join("vm.log")).ok()?;
        log.contains("not restarting: it ended unexpectedly 2 times within 3600 s")
            .then_some(())
    })
    .await;
    wait_running(&c, "p1", "NO").await;
    assert!(qemu_pids_under(dirs.root.path()).is_empty());
}

#[tokio::test]
async fn boot_guests_start_with_the_server_unless_stopped_on_purpose() {
    let dirs = GuestDirs::new();
    let data = dirs.data();
    let mut server = start_server(&data, "");
    let c = server.client().await;
    setup(&c).await;
    blank_guest(&c, &data, "auto").await;
    blank_guest(&c, &data, "manual").await;
    c.iohyve("setprop", json!({"name": "auto", "boot": "1"}))
        .await
        .unwrap();
    drop(c);
    server.stop();

    let mut server = start_server(&data, "");
    let c = server.client().await;
    wait_running(&c, "auto", "YES").await;
    let listed = c.iohyve("listvms", json!({})).await.unwrap();
    assert_eq!(listed["auto"]["rcboot"], "YES");
    assert_eq!(listed["manual"]["running"], "NO");
    assert_eq!(qemu_pids_under(dirs.root.path()).len(), 1);

    // An operator's stop sticks across a server restart.
    c.iohyve("stop", json!({"name": "auto", "force": "true"}))
        .await
        .unwrap();
    wait_running(&c, "auto", "NO").await;
    drop(c);
    server.stop();
    let server = start_server(&data, "");
    let c = server.client().await;
    wait_for("autostart to pass over the stopped guest", || async {
        server
            .log()
            .contains("was stopped on purpose since the host booted")
            .then_some(())
    })
    .await;
    assert_eq!(vm_state(&c, "auto").await["running"], "NO");
    assert!(qemu_pids_under(dirs.root.path()).is_empty());
}
