//! One real guest through its whole life, exactly as an operator would
//! drive it: create, install from the ISO, see its marker on the serial
//! console, stop it through ACPI, start it again from its disk, SIGKILL the
//! server, start the server again and find the guest still running and
//! still listed, its console output kept, force it off, delete it, and
//! find nothing of it left on disk or in the process table.
//! The guest runs under TCG (see common/guest.rs).

mod common;

use common::guest::*;
use serde_json::json;

#[tokio::test]
async fn a_guest_from_install_to_delete() {
    let dirs = GuestDirs::new();
    let data = dirs.data();
    let mut server = start_server(&data, "");
    let c = server.client().await;
    guest_with_iso(&c, &data, "re0", "g1", "hyve-test.iso").await;
    let gdir = guest_dir(&data, "g1");

    // install: the reply of the API document, the ISO booted first.
    let r = c
        .iohyve("install", json!({"name": "g1", "iso": "hyve-test.iso"}))
        .await
        .unwrap();
    assert_eq!(r, json!({"iso": "hyve-test.iso", "name": "g1"}));
    let props = c.iohyve("getprops", json!({"name": "g1"})).await.unwrap();
    assert_eq!(props["g1"]["install"], "yes");
    assert!(!props["g1"]["mac"].as_str().unwrap().is_empty());
    assert_eq!(
        vm_state(&c, "g1").await,
        json!({"description": props["g1"]["description"], "rcboot": "NO", "running": "YES", "vmm": "YES"})
    );
    let log = wait_console(&c, "g1", MARKER).await;
    assert_ne!(last_boot(&log), "hd0", "install must boot the CD:\n{log}");
    let first_pid = qemu_pid(&data, "g1");

    // A graceful stop answers at once; the guest's ACPI handler runs and
    // it powers off.
    let r = c.iohyve("stop", json!({"name": "g1"})).await.unwrap();
    assert_eq!(r, json!({"name": "g1"}));
    wait_running(&c, "g1", "NO").await;
    assert_eq!(vm_state(&c, "g1").await["vmm"], "NO");
    wait_console(&c, "g1", "HYVE-TEST-GUEST power button").await;
    let vm_log = std::fs::read_to_string(gdir.join("vm.log")).unwrap();
    assert!(
        vm_log.contains("exited with status 0 (powered off after the power button)"),
        "{vm_log}"
    );
    assert!(!alive(first_pid));

    // What the installer would have written: the test ISO is a hybrid
    // image that also boots as a disk (stands in for a guest's installer).
    std::fs::write(gdir.join("disk0.img"), std::fs::read(test_iso()).unwrap()).unwrap();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(gdir.join("disk0.img"))
        .unwrap();
    f.set_len(64 << 20).unwrap();
    drop(f);

    // start: boots disk0, install goes back to no.
    let r = c.iohyve("start", json!({"name": "g1"})).await.unwrap();
    assert_eq!(r, json!({"name": "g1"}));
    let props = c.iohyve("getprops", json!({"name": "g1"})).await.unwrap();
    assert_eq!(props["g1"]["install"], "no");
    wait_for("a boot from disk0", || async {
        let log = c.iohyve("consolelog", json!({"name": "g1"})).await.unwrap()["g1"]
            .as_str()
            .unwrap()
            .to_string();
        (log.matches(MARKER).count() == 2 && last_boot(&log) == "hd0").then_some(())
    })
    .await;
    let pid = qemu_pid(&data, "g1");
    drop(c);

    // The server dies hard; the guest does not.
    server.kill();
    assert!(alive(pid), "the guest died with the server");
    let server = start_server(&data, "");
    let c = server.client().await;
    let state = vm_state(&c, "g1").await;
    assert_eq!(
        (state["running"].clone(), state["vmm"].clone()),
        (json!("YES"), json!("YES"))
    );
    assert!(
        server.log().contains("re-adopted a running guest"),
        "{}",
        server.log()
    );
    // Re-adopted, not started again: still one QEMU, the same one.
    assert_eq!(qemu_pids_under(dirs.root.path()), vec![pid]);
    let log = c.iohyve("consolelog", json!({"name": "g1"})).await.unwrap()["g1"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(log.contains(&format!("{MARKER}hd0")), "{log}");
    // A second start of the running guest is refused.
    let e = c.iohyve("start", json!({"name": "g1"})).await.unwrap_err();
    assert_eq!(e.to_string(), "Guest 'g1' is already running");

    // Force stop of the adopted guest.
    let r = c
        .iohyve("stop", json!({"name": "g1", "force": "true"}))
        .await
        .unwrap();
    assert_eq!(r, json!({"name": "g1"}));
    wait_running(&c, "g1", "NO").await;
    assert!(!alive(pid));
    let vm_log = std::fs::read_to_string(gdir.join("vm.log")).unwrap();
    assert!(vm_log.contains("(forced off by stop)"), "{vm_log}");

    // delete: nothing of the guest is left.
    let r = c.iohyve("delete", json!({"name": "g1"})).await.unwrap();
    assert_eq!(r, json!({"name": "g1"}));
    assert!(!gdir.exists());
    let left: Vec<_> = std::fs::read_dir(data.join("tank/iohyve"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    let mut left = left;
    left.sort();
    assert_eq!(left, ["Firmware", "ISO"]);
    assert_eq!(c.iohyve("listvms", json!({})).await.unwrap(), json!({}));
    assert!(qemu_pids_under(dirs.root.path()).is_empty());
}
