//! Guests, disks, properties and setup survive a server restart, clean
//! (SIGTERM) or not (SIGKILL), and what a crash left half-done is cleared.

mod common;

use common::*;
use serde_json::{json, Value};

async fn state(c: &Client) -> Value {
    let mut guests = serde_json::Map::new();
    let vms = c.iohyve("listvms", json!({})).await.unwrap();
    for name in vms.as_object().unwrap().keys() {
        guests.insert(
            name.clone(),
            json!({
                "props": c.iohyve("getprops", json!({"name": name})).await.unwrap(),
                "disks": c.iohyve("listdisks", json!({"name": name})).await.unwrap(),
            }),
        );
    }
    json!({
        "issetup": c.iohyve("issetup", json!({})).await.unwrap(),
        "listvms": vms,
        "listisos": c.iohyve("listisos", json!({})).await.unwrap(),
        "guests": guests,
    })
}

async fn populate(c: &Client, data: &std::path::Path) {
    setup(c).await;
    c.iohyve("create", json!({"name": "web", "size": "64M"}))
        .await
        .unwrap();
    c.iohyve("create", json!({"name": "db", "size": "32M"}))
        .await
        .unwrap();
    c.iohyve("adddisk", json!({"name": "db", "size": "16M"}))
        .await
        .unwrap();
    c.iohyve("adddisk", json!({"name": "db", "size": "8M"}))
        .await
        .unwrap();
    c.iohyve("deletedisk", json!({"name": "db", "disk": "disk1"}))
        .await
        .unwrap();
    c.iohyve(
        "resizedisk",
        json!({"name": "web", "disk": "disk0", "size": "128M"}),
    )
    .await
    .unwrap();
    c.iohyve("setprop", json!({"name": "web", "ram": "1G", "cpu": "2", "persist": "0", "description": "front end, rack 2"}))
        .await
        .unwrap();
    std::fs::write(iso_dir(data).join("install.iso"), b"iso").unwrap();
}

#[tokio::test]
async fn everything_survives_a_clean_restart() {
    let dir = data_dir();
    let mut server = TestServer::start(dir.path());
    let c = server.client().await;
    populate(&c, dir.path()).await;
    let before = state(&c).await;
    drop(c);
    assert!(
        server.stop().success(),
        "SIGTERM must stop the server cleanly"
    );
    assert!(server.log().contains("stopped"));

    let server = TestServer::start(dir.path());
    let c = server.client().await;
    assert_eq!(state(&c).await, before);
    // Numbers keep counting from what is on disk.
    let r = c
        .iohyve("create", json!({"name": "third", "size": "16M"}))
        .await
        .unwrap();
    assert_eq!(r["size"], "16M");
    let p = c
        .iohyve("getprops", json!({"name": "third"}))
        .await
        .unwrap();
    assert_eq!(
        (p["third"]["tap"].clone(), p["third"]["con"].clone()),
        (json!("tap2"), json!("nmdm2"))
    );
    let d = c
        .iohyve("adddisk", json!({"name": "db", "size": "16M"}))
        .await
        .unwrap();
    assert_eq!(d, json!({"db": {"size": "16M"}}));
    assert_eq!(
        c.iohyve("listdisks", json!({"name": "db"})).await.unwrap(),
        json!({"disk0": "32M", "disk2": "8M", "disk3": "16M"})
    );
}

#[tokio::test]
async fn everything_survives_sigkill() {
    let dir = data_dir();
    let mut server = TestServer::start(dir.path());
    let c = server.client().await;
    populate(&c, dir.path()).await;
    let before = state(&c).await;
    server.kill();
    let server = TestServer::start(dir.path());
    let c = server.client().await;
    assert_eq!(state(&c).await, before);
    // The images on disk have the sizes listed.
    let img = dir.path().join("tank/iohyve/web/disk0.img");
    assert_eq!(std::fs::metadata(img).unwrap().len(), 128 << 20);
}

#[tokio::test]
async fn a_second_server_on_the_same_data_dir_is_refused() {
    let dir = data_dir();
    let _server = TestServer::start(dir.path());
    let out = std::process::Command::new(HYVE)
        .args([
            "serve",
            "--no-tls",
            "--ws-listen",
            "127.0.0.1:0",
            "--rest-listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("another hyve server is using"), "{err}");
}

#[tokio::test]
async fn leftovers_of_a_crash_are_cleared_at_start() {
    let dir = data_dir();
    let mut server = TestServer::start(dir.path());
    let c = server.client().await;
    populate(&c, dir.path()).await;
    let before = state(&c).await;
    server.kill();
    // What a crash in the middle of create, delete, a properties write and
    // a resize would leave.
    let pool = dir.path().join("tank/iohyve");
    std::fs::create_dir(pool.join(".creating-half-0123")).unwrap();
    std::fs::write(pool.join(".creating-half-0123/guest.toml"), "[props]\n").unwrap();
    std::fs::create_dir(pool.join(".deleting-old-4567")).unwrap();
    std::fs::write(pool.join("web/.guest.toml.89ab.tmp"), "garbage").unwrap();
    std::fs::write(iso_dir(dir.path()).join("partial.iso.part"), b"half").unwrap();
    // An image made by an adddisk that was never recorded, and one that a
    // deletedisk unlisted but did not get to remove (db lists disk0 and
    // disk2).
    std::fs::write(pool.join("db/disk4.img"), b"").unwrap();
    std::fs::write(pool.join("db/disk1.img"), b"deleted data").unwrap();
    let server = TestServer::start(dir.path());
    let c = server.client().await;
    assert_eq!(state(&c).await, before);
    assert!(!pool.join(".creating-half-0123").exists());
    assert!(!pool.join(".deleting-old-4567").exists());
    assert!(!pool.join("web/.guest.toml.89ab.tmp").exists());
    assert!(!pool.join("db/disk4.img").exists());
    assert!(!pool.join("db/disk1.img").exists());
    assert!(pool.join("db/disk2.img").exists());
    drop(server);

    // A grow that reached the image but not guest.toml is finished.
    let img = pool.join("db/disk0.img");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&img)
        .unwrap()
        .set_len(48 << 20)
        .unwrap();
    let server = TestServer::start(dir.path());
    let c = server.client().await;
    let disks = c.iohyve("listdisks", json!({"name": "db"})).await.unwrap();
    assert_eq!(disks["disk0"], "48M");
    let toml = std::fs::read_to_string(pool.join("db/guest.toml")).unwrap();
    assert!(toml.contains("bytes = 50331648"), "{toml}");
}
