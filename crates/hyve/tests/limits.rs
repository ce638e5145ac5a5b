//! Limits that keep one client from hurting the others: message and body
//! size, connections, requests in flight per connection. Each is answered
//! with a clear error or a clean close, and everyone else is still served.

mod common;

use std::time::{Duration, Instant};

use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

fn frame(ns: &str, name: &str, id: &str, args: Value) -> String {
    json!({"namespace": ns, "name": name, "id": id, "args": args}).to_string()
}

async fn works(server: &TestServer) {
    let c = server.client().await;
    c.iohyve("version", json!({})).await.expect("still served");
}

#[tokio::test]
async fn an_oversized_message_closes_only_its_connection() {
    let dir = data_dir();
    let server = TestServer::start_with_config(dir.path(), "[limits]\nmax_frame_size = \"4K\"\n");
    let bystander = server.client().await;
    let mut ws = server.raw_ws("/").await;
    // Just under the limit is served.
    let pad = "x".repeat(3000);
    let r = roundtrip(
        &mut ws,
        &frame(
            "sysadm",
            "iohyve",
            "small",
            json!({"action": "version", "pad": pad}),
        ),
    )
    .await;
    assert_eq!(r["name"], "response", "{r}");
    let big = frame(
        "sysadm",
        "iohyve",
        "big",
        json!({"action": "version", "pad": "y".repeat(10_000)}),
    );
    ws.send(Message::Text(big.into())).await.unwrap();
    let close = loop {
        match tokio::time::timeout(Duration::from_secs(60), ws.next())
            .await
            .unwrap()
        {
            Some(Ok(Message::Close(f))) => break f,
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    let f = close.expect("a close frame with a code");
    assert_eq!(u16::from(f.code), 1009);
    assert!(f.reason.contains("4096 bytes"), "{}", f.reason);
    bystander.iohyve("version", json!({})).await.unwrap();
    works(&server).await;
}

#[tokio::test]
async fn an_oversized_body_is_413() {
    let dir = data_dir();
    let server = TestServer::start_with_config(dir.path(), "[limits]\nmax_body_size = \"4K\"\n");
    let body = json!({"action": "version", "pad": "z".repeat(10_000)}).to_string();
    let (status, v) = server.rest("/sysadm/iohyve", &body).await;
    assert_eq!(status, 413, "{v}");
    assert_eq!(v["args"]["code"], "413");
    assert!(
        v["args"]["detail"].as_str().unwrap().contains("4096 bytes"),
        "{v}"
    );
    let (status, _) = server
        .rest("/sysadm/iohyve", r#"{"action":"version"}"#)
        .await;
    assert_eq!(status, 200);
    works(&server).await;
}

#[tokio::test]
async fn too_many_connections_are_refused_with_503() {
    let dir = data_dir();
    let server = TestServer::start_with_config(dir.path(), "[limits]\nmax_connections = 3\n");
    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(server.raw_ws_anonymous("/").await);
    }
    let o = ConnectOptions {
        trust: server.trust(),
        ..Default::default()
    };
    let e = hyve_client::open(&server.ws, &o)
        .await
        .expect_err("refused");
    let msg = e.to_string();
    assert!(
        msg.contains("503") && msg.contains("too many connections"),
        "{msg}"
    );
    let r = server
        .http()
        .put(format!("{}/rpc/identify", server.rest))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 503);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["args"]["code"], "503");
    assert!(
        v["args"]["detail"].as_str().unwrap().contains("at most 3"),
        "{v}"
    );
    // The connections inside the limit are served as before.
    for ws in open.iter_mut() {
        let r = roundtrip(ws, &frame("rpc", "identify", "i", json!({}))).await;
        assert_eq!(r["args"]["type"], "server");
    }
    // One leaves: there is room again.
    let mut gone = open.pop().unwrap();
    gone.close(None).await.unwrap();
    drop(gone);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match hyve_client::open(&server.ws, &o).await {
            Ok(_) => break,
            Err(e) => {
                assert!(Instant::now() < deadline, "no room after a close: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

#[tokio::test]
async fn requests_in_flight_per_connection_are_limited() {
    let dir = data_dir();
    let server = TestServer::start_with_config(dir.path(), "[limits]\nmax_in_flight = 2\n");
    let c = server.client().await;
    setup(&c).await;
    c.iohyve("create", json!({"name": "slow", "size": "1G"}))
        .await
        .unwrap();
    // A disk image on storage that does not answer: opening it for writing
    // waits until someone reads the FIFO. Real hosts see this with a hung
    // NFS mount; here it holds a request in flight for as long as the test
    // wants.
    let img = dir.path().join("tank/iohyve/slow/disk0.img");
    std::fs::remove_file(&img).unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        &img,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )
    .unwrap();
    let mut ws = server.raw_ws("/").await;
    let grow = json!({"action": "resizedisk", "name": "slow", "disk": "disk0", "size": "2G"});
    ws.send(Message::Text(
        frame("sysadm", "iohyve", "g1", grow.clone()).into(),
    ))
    .await
    .unwrap();
    ws.send(Message::Text(frame("sysadm", "iohyve", "g2", grow).into()))
        .await
        .unwrap();
    let r = roundtrip(
        &mut ws,
        &frame("sysadm", "iohyve", "v3", json!({"action": "version"})),
    )
    .await;
    assert_eq!(r["id"], "v3");
    assert_eq!(r["name"], "error", "{r}");
    assert_eq!(r["args"]["code"], "429", "{r}");
    assert!(
        r["args"]["detail"].as_str().unwrap().contains("2 requests"),
        "{r}"
    );
    // Other connections are not held up.
    works(&server).await;
    // The storage answers again: both requests finish (a FIFO cannot grow).
    let reader = rustix::fs::open(
        &img,
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::NONBLOCK,
        rustix::fs::Mode::empty(),
    )
    .unwrap();
    let mut ids = Vec::new();
    for _ in 0..2 {
        let r = next_json(&mut ws).await;
        assert_eq!(r["name"], "response", "answered in band: {r}");
        assert!(r["args"]["resizedisk"]["error"].is_string(), "{r}");
        ids.push(r["id"].as_str().unwrap().to_string());
    }
    ids.sort();
    assert_eq!(ids, ["g1", "g2"]);
    drop(reader);
    let r = roundtrip(
        &mut ws,
        &frame("sysadm", "iohyve", "v4", json!({"action": "version"})),
    )
    .await;
    assert_eq!(r["name"], "response", "{r}");
    let disks = c
        .iohyve("listdisks", json!({"name": "slow"}))
        .await
        .unwrap();
    assert_eq!(disks, json!({"disk0": "1G"}), "nothing recorded");
}
