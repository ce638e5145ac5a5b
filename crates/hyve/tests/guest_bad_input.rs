//! Bad requests around running guests: each gets a clear error with the
//! right HTTP class, and nothing changes. The guest boots a tiny "ISO"
//! that is no bootable image at all: QEMU runs (its firmware finds nothing
//! to boot), which is all a running guest needs to be here.

mod common;

use common::guest::*;
use common::*;
use serde_json::json;

async fn rest_err(server: &TestServer, body: serde_json::Value) -> (u16, String) {
    let action = body["action"].as_str().unwrap().to_string();
    let (status, reply) = server.rest("/sysadm/iohyve", &body.to_string()).await;
    let msg = reply["args"][&action]["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error in {reply}"))
        .to_string();
    (status, msg)
}

#[tokio::test]
async fn bad_requests_change_nothing() {
    let dirs = GuestDirs::new();
    let data = dirs.data();
    let server = start_server(&data, "");
    let c = server.client().await;
    setup(&c).await;
    c.iohyve("create", json!({"name": "g", "size": "64M"}))
        .await
        .unwrap();
    c.iohyve("setprop", json!({"name": "g", "ram": "64M"}))
        .await
        .unwrap();
    c.iohyve("adddisk", json!({"name": "g", "size": "16M"}))
        .await
        .unwrap();
    std::fs::write(iso_dir(&data).join("blank.iso"), vec![0u8; 2048]).unwrap();

    // Stopped guest: nothing to start or stop that is not there.
    let before = snapshot(&data);
    for (body, status, msg) in [
        (
            json!({"action": "start", "name": "nope"}),
            404,
            "No such guest 'nope'",
        ),
        (
            json!({"action": "install", "name": "nope", "iso": "blank.iso"}),
            404,
            "No such guest 'nope'",
        ),
        (
            json!({"action": "install", "name": "g", "iso": "missing.iso"}),
            404,
            "No such ISO 'missing.iso'",
        ),
        (
            json!({"action": "stop", "name": "g"}),
            409,
            "Guest 'g' is not running",
        ),
        (
            json!({"action": "stop", "name": "nope", "force": "true"}),
            404,
            "No such guest 'nope'",
        ),
        (
            json!({"action": "consolelog", "name": "g", "bytes": "-5"}),
            400,
            "invalid bytes '-5': expected a whole number from 1 to 65536",
        ),
    ] {
        assert_eq!(
            rest_err(&server, body.clone()).await,
            (status, msg.to_string()),
            "{body}"
        );
    }
    for hostile in [
        "../../../etc/passwd",
        "-drive",
        "$(reboot)",
        "a,b.iso",
        "x.iso\n",
        "ISO/../blank.iso",
    ] {
        let (status, msg) = rest_err(
            &server,
            json!({"action": "install", "name": "g", "iso": hostile}),
        )
        .await;
        assert_eq!(status, 400, "{hostile:?}: {msg}");
        assert!(msg.starts_with("invalid ISO name"), "{msg}");
    }
    for hostile in ["../g", "-g", "g;reboot"] {
        let (status, msg) = rest_err(&server, json!({"action": "start", "name": hostile})).await;
        assert_eq!(status, 400, "{msg}");
        assert!(msg.starts_with("invalid guest name"), "{msg}");
    }
    assert_unchanged(&before, &snapshot(&data), "refused requests");
    assert!(qemu_pids_under(dirs.root.path()).is_empty());

    // Running guest: what would pull its disks or media away is refused.
    c.iohyve("install", json!({"name": "g", "iso": "blank.iso"}))
        .await
        .unwrap();
    let gdir = guest_dir(&data, "g");
    let guest_toml = std::fs::read(gdir.join("guest.toml")).unwrap();
    let sizes = |d: &std::path::Path| {
        ["disk0.img", "disk1.img"].map(|f| std::fs::metadata(d.join(f)).unwrap().len())
    };
    let disk_sizes = sizes(&gdir);
    for (body, msg) in [
        (
            json!({"action": "start", "name": "g"}),
            "Guest 'g' is already running",
        ),
        (
            json!({"action": "install", "name": "g", "iso": "blank.iso"}),
            "Guest 'g' is already running",
        ),
        (
            json!({"action": "delete", "name": "g"}),
            "Guest 'g' is running: stop it before deleting it",
        ),
        (
            json!({"action": "resizedisk", "name": "g", "disk": "disk0", "size": "128M"}),
            "Guest 'g' is running: stop it before resizing its disks",
        ),
        (
            json!({"action": "deletedisk", "name": "g", "disk": "disk1"}),
            "Guest 'g' is running: stop it before removing its disks",
        ),
        (
            json!({"action": "rmiso", "target": "blank.iso"}),
            "ISO 'blank.iso' is in use by running guest 'g': stop the guest first",
        ),
    ] {
        assert_eq!(
            rest_err(&server, body.clone()).await,
            (409, msg.to_string()),
            "{body}"
        );
    }
    assert_eq!(std::fs::read(gdir.join("guest.toml")).unwrap(), guest_toml);
    assert_eq!(sizes(&gdir), disk_sizes);
    assert!(iso_dir(&data).join("blank.iso").is_file());
    assert_eq!(qemu_pids_under(dirs.root.path()).len(), 1);
    let state = vm_state(&c, "g").await;
    assert_eq!(
        (state["running"].clone(), state["vmm"].clone()),
        (json!("YES"), json!("YES"))
    );

    // Once it is off, the same requests go through.
    c.iohyve("stop", json!({"name": "g", "force": "true"}))
        .await
        .unwrap();
    wait_running(&c, "g", "NO").await;
    c.iohyve("rmiso", json!({"target": "blank.iso"}))
        .await
        .unwrap();
    c.iohyve(
        "resizedisk",
        json!({"name": "g", "disk": "disk0", "size": "128M"}),
    )
    .await
    .unwrap();
    c.iohyve("delete", json!({"name": "g"})).await.unwrap();
    assert!(qemu_pids_under(dirs.root.path()).is_empty());
}

/// A guest takes no more disks than a hypervisor can attach: with the
/// most it may have it still installs and starts; one more is refused
/// (the concurrency suite found guests given so many that QEMU ran out of
/// PCI slots and they could never start again).
#[tokio::test]
async fn a_guest_takes_no_more_disks_than_it_can_boot_with() {
    let dirs = GuestDirs::new();
    let data = dirs.data();
    let server = start_server(&data, "");
    let c = server.client().await;
    setup(&c).await;
    c.iohyve("create", json!({"name": "g", "size": "1M"}))
        .await
        .unwrap();
    c.iohyve("setprop", json!({"name": "g", "ram": "32M"}))
        .await
        .unwrap();
    for _ in 1..hyve_engine::engine::MAX_DISKS {
        c.iohyve("adddisk", json!({"name": "g", "size": "1M"}))
            .await
            .unwrap();
    }
    let e = c
        .iohyve("adddisk", json!({"name": "g", "size": "1M"}))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("the most a guest can have"), "{e}");
    let disks = c.iohyve("listdisks", json!({"name": "g"})).await.unwrap();
    assert_eq!(
        disks.as_object().unwrap().len(),
        hyve_engine::engine::MAX_DISKS
    );
    std::fs::write(iso_dir(&data).join("blank.iso"), vec![0u8; 2048]).unwrap();
    for (action, args) in [
        ("install", json!({"name": "g", "iso": "blank.iso"})),
        ("start", json!({"name": "g"})),
    ] {
        c.iohyve(action, args)
            .await
            .unwrap_or_else(|e| panic!("{action} with the most disks: {e}"));
        c.iohyve("stop", json!({"name": "g", "force": "true"}))
            .await
            .unwrap();
        wait_for("g off", || async {
            (vm_state(&c, "g").await["vmm"] == "NO").then_some(())
        })
        .await;
    }
}
