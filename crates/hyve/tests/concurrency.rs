//! 50 clients at once creating, changing and deleting guests, on their own
//! guests and on shared ones: only the errors the rules call for, and a
//! consistent state at the end, in memory, on disk and after a restart.

mod common;

use std::collections::BTreeSet;

use common::*;
use serde_json::{json, Value};

const CLIENTS: usize = 50;
const SHARED: usize = 5;

/// Errors two clients racing on one guest may rightly get.
fn allowed(msg: &str) -> bool {
    [
        "already exists",
        "No such guest",
        "already used by",
        "no disk",
    ]
    .iter()
    .any(|a| msg.contains(a))
}

async fn worker(c: Client, i: usize) -> Result<usize, String> {
    let mut refused = 0;
    let mut check = |r: Result<Value, hyve_client::ClientError>| match r {
        Ok(_) => Ok(()),
        Err(hyve_client::ClientError::Action(m)) if allowed(&m) => {
            refused += 1;
            Ok(())
        }
        Err(e) => Err(format!("client {i}: {e}")),
    };
    let own = format!("own{i}");
    let shared = format!("shared{}", i % SHARED);
    for round in 0..3 {
        check(
            c.iohyve("create", json!({"name": own, "size": "16M"}))
                .await,
        )?;
        check(
            c.iohyve("create", json!({"name": shared, "size": "16M"}))
                .await,
        )?;
        check(c.iohyve("setprop", json!({"name": shared, "cpu": format!("{}", 1 + i % 4), "description": format!("by {i}")})).await)?;
        check(
            c.iohyve("adddisk", json!({"name": shared, "size": "8M"}))
                .await,
        )?;
        check(
            c.iohyve(
                "setprop",
                json!({"name": own, "tap": format!("tap{}", 100 + (i + round) % 60)}),
            )
            .await,
        )?;
        check(
            c.iohyve("adddisk", json!({"name": own, "size": "8M"}))
                .await,
        )?;
        check(
            c.iohyve(
                "resizedisk",
                json!({"name": own, "disk": "disk1", "size": "24M"}),
            )
            .await,
        )?;
        check(
            c.iohyve("deletedisk", json!({"name": shared, "disk": "disk1"}))
                .await,
        )?;
        check(c.iohyve("listvms", json!({})).await)?;
        if (i + round).is_multiple_of(3) {
            check(c.iohyve("delete", json!({"name": shared})).await)?;
        }
        if round < 2 || i.is_multiple_of(2) {
            check(c.iohyve("delete", json!({"name": own})).await)?;
        }
    }
    Ok(refused)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_clients_end_consistent() {
    let dir = data_dir();
    let server = TestServer::start(dir.path());
    let c = server.client().await;
    setup(&c).await;
    let mut tasks = Vec::new();
    for i in 0..CLIENTS {
        let c = server.client().await;
        tasks.push(tokio::spawn(worker(c, i)));
    }
    let mut refused = 0;
    for t in tasks {
        refused += t.await.unwrap().unwrap_or_else(|e| panic!("{e}"));
    }
    assert!(refused > 0, "the shared guests were never contended");

    let vms = c.iohyve("listvms", json!({})).await.unwrap();
    let names: BTreeSet<String> = vms.as_object().unwrap().keys().cloned().collect();
    // Odd clients deleted their own guest in the last round, even ones kept it.
    for i in 0..CLIENTS {
        assert_eq!(names.contains(&format!("own{i}")), i % 2 == 1, "own{i}");
    }
    // On disk: exactly the listed guests, each whole.
    let pool = dir.path().join("tank/iohyve");
    let on_disk: BTreeSet<String> = std::fs::read_dir(&pool)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != "ISO" && n != "Firmware")
        .collect();
    assert_eq!(
        on_disk, names,
        "folders on disk differ from the guests listed"
    );
    let mut taps = BTreeSet::new();
    let mut cons = BTreeSet::new();
    for name in &names {
        let props = &c.iohyve("getprops", json!({"name": name})).await.unwrap()[name];
        assert!(
            taps.insert(props["tap"].as_str().unwrap().to_string()),
            "tap shared: {props}"
        );
        assert!(
            cons.insert(props["con"].as_str().unwrap().to_string()),
            "con shared: {props}"
        );
        let disks = c.iohyve("listdisks", json!({"name": name})).await.unwrap();
        let mut images: BTreeSet<String> = std::fs::read_dir(pool.join(name))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(images.remove("guest.toml"), "{name} has no guest.toml");
        let listed: BTreeSet<String> = disks
            .as_object()
            .unwrap()
            .keys()
            .map(|d| format!("{d}.img"))
            .collect();
        assert_eq!(
            images, listed,
            "{name}: images on disk differ from the disks listed"
        );
        for (d, size) in disks.as_object().unwrap() {
            let len = std::fs::metadata(pool.join(name).join(format!("{d}.img")))
                .unwrap()
                .len();
            let want = hyve_engine::Size::parse(size.as_str().unwrap())
                .unwrap()
                .bytes();
            assert_eq!(len, want, "{name}/{d}");
        }
    }
    // And the same after a restart.
    let mut all = Vec::new();
    for name in &names {
        all.push(c.iohyve("getprops", json!({"name": name})).await.unwrap());
        all.push(c.iohyve("listdisks", json!({"name": name})).await.unwrap());
    }
    drop(server);
    let server = TestServer::start(dir.path());
    let c = server.client().await;
    assert_eq!(c.iohyve("listvms", json!({})).await.unwrap(), vms);
    let mut again = Vec::new();
    for name in &names {
        again.push(c.iohyve("getprops", json!({"name": name})).await.unwrap());
        again.push(c.iohyve("listdisks", json!({"name": name})).await.unwrap());
    }
    assert_eq!(again, all);
}
