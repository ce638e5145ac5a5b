//! `events/subscribe` and `unsubscribe`: the exact frames, and that a
//! subscriber that never reads holds up neither the others nor the
//! download.

mod common;

use std::time::Duration;

use common::origin::{content, File, Origin};
use common::tasks::*;
use common::*;
use futures_util::SinkExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

fn frame(name: &str, id: &str, args: Value) -> String {
    json!({"namespace": "events", "name": name, "id": id, "args": args}).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_and_unsubscribe_frames() {
    let dir = data_dir();
    let origin = Origin::http().await;
    let server = TestServer::start(dir.path());
    let c = server.client().await;
    setup(&c).await;
    let mut ws = server.raw_ws("/").await;
    // A plain string, as the real client sends it.
    assert_eq!(
        roundtrip(&mut ws, &frame("subscribe", "s1", json!("dispatcher"))).await,
        json!({"args": {"subscribe": "dispatcher"}, "id": "s1", "name": "response", "namespace": "events"})
    );
    // An array: unknown names are skipped, the reply names the last valid one.
    assert_eq!(
        roundtrip(
            &mut ws,
            &frame("subscribe", "s2", json!(["bogus", "dispatcher", "nope"]))
        )
        .await["args"],
        json!({"subscribe": "dispatcher"})
    );
    assert_eq!(
        roundtrip(&mut ws, &frame("subscribe", "s3", json!(["bogus"]))).await["args"],
        json!({"subscribe": ""})
    );
    // Anything else is a bad request.
    for (i, bad) in [
        json!(42),
        json!({"name": "dispatcher"}),
        json!([1]),
        json!(null),
    ]
    .into_iter()
    .enumerate()
    {
        let r = roundtrip(&mut ws, &frame("subscribe", &format!("b{i}"), bad.clone())).await;
        assert_eq!(r["name"], "error", "{bad}: {r}");
        assert_eq!(r["namespace"], "error");
        assert_eq!(r["args"]["code"], "400");
        assert_eq!(r["id"], format!("b{i}"));
    }
    // Events arrive as the protocol shows them.
    let url = origin.put("/one.iso", File::new(content(100_000)));
    let id = c.iohyve("fetchiso", json!({"url": url})).await.unwrap()["queueid"]
        .as_str()
        .unwrap()
        .to_string();
    let mut states = Vec::new();
    loop {
        let f = next_json(&mut ws).await;
        assert_eq!(
            (f["id"].clone(), f["name"].clone(), f["namespace"].clone()),
            (json!("none"), json!("dispatcher"), json!("events")),
            "{f}"
        );
        assert_eq!(f["args"]["process_details"]["process_id"], json!(id));
        let s = f["args"]["state"].as_str().unwrap().to_string();
        let done = s == "finished";
        if states.last() != Some(&s) {
            states.push(s);
        }
        if done {
            break;
        }
    }
    assert_eq!(states, ["pending", "running", "finished"]);
    // After unsubscribe, nothing more arrives: the next frame is a reply.
    assert_eq!(
        roundtrip(&mut ws, &frame("unsubscribe", "u1", json!(["dispatcher"]))).await,
        json!({"args": {"unsubscribe": "dispatcher"}, "id": "u1", "name": "response", "namespace": "events"})
    );
    c.subscribe(&["dispatcher"]).await.unwrap();
    let mut events = c.take_events().unwrap();
    let url = origin.put("/two.iso", File::new(content(100_000)));
    let id = c.iohyve("fetchiso", json!({"url": url})).await.unwrap()["queueid"]
        .as_str()
        .unwrap()
        .to_string();
    events_until_finished(&mut events, &id, 120).await;
    let r = roundtrip(
        &mut ws,
        r#"{"namespace":"sysadm","name":"iohyve","id":"v","args":{"action":"version"}}"#,
    )
    .await;
    assert_eq!(r["id"], "v", "an event arrived after unsubscribe: {r}");
    // Over REST there is no connection to push events on.
    let (status, body) = server
        .rest("/events/subscribe", r#"{"args":"dispatcher"}"#)
        .await;
    assert_eq!(status, 400);
    assert!(body["args"]["detail"]
        .as_str()
        .unwrap()
        .contains("WebSocket"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_subscribers_one_never_reads() {
    let dir = data_dir();
    let origin = Origin::http().await;
    let data = content(2 << 20);
    let url = origin.put(
        "/many.iso",
        File::new(data.clone()).slowly(64 * 1024, Duration::from_millis(30)),
    );
    let server = TestServer::start(dir.path());
    let c = server.client().await;
    setup(&c).await;
    // The stuck one: subscribes, then never reads a frame again.
    let mut stuck = server.raw_ws("/").await;
    stuck
        .send(Message::Text(
            frame("subscribe", "s", json!("dispatcher")).into(),
        ))
        .await
        .unwrap();
    assert_eq!(
        next_json(&mut stuck).await["args"],
        json!({"subscribe": "dispatcher"})
    );
    let mut readers = Vec::new();
    for _ in 0..19 {
        let r = server.client().await;
        r.subscribe(&["dispatcher"]).await.unwrap();
        let ev = r.take_events().unwrap();
        readers.push((r, ev));
    }
    let id = c.iohyve("fetchiso", json!({"url": url})).await.unwrap()["queueid"]
        .as_str()
        .unwrap()
        .to_string();
    let mut handles = Vec::new();
    for (r, mut ev) in readers {
        let id = id.clone();
        handles.push(tokio::spawn(async move {
            let frames = events_until_finished(&mut ev, &id, 180).await;
            drop(r);
            frames
        }));
    }
    for h in handles {
        let frames = h.await.unwrap();
        let states: Vec<&str> = frames
            .iter()
            .map(|f| f["args"]["state"].as_str().unwrap())
            .collect();
        assert_eq!(states[0], "pending");
        assert_eq!(states[1], "running");
        assert!(frames.len() > 3, "no progress seen: {states:?}");
        let last = &frames.last().unwrap()["args"];
        assert_eq!(return_code(last), "0");
        assert_eq!(last["percent_done"], "100%");
    }
    assert_eq!(
        std::fs::read(iso_dir(dir.path()).join("many.iso")).unwrap(),
        data
    );
    // The server still answers everyone else at once.
    assert_eq!(
        c.iohyve("listisos", json!({})).await.unwrap(),
        json!(["many.iso"])
    );
    drop(stuck);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_subscriber_loses_no_state_event() {
    const TASKS: usize = 120;
    let dir = data_dir();
    let root = dir.path().join("isos");
    std::fs::create_dir_all(&root).unwrap();
    let data = content(64 * 1024);
    std::fs::write(root.join("src.iso"), &data).unwrap();
    let cfg = dir.path().join("hyve.toml");
    std::fs::write(
        &cfg,
        format!(
            "[tasks]\nmax_concurrent = 8\n[fetch]\nfile_roots = [{:?}]\n",
            root.to_str().unwrap()
        ),
    )
    .unwrap();
    let data_dir = dir.path().join("data");
    let server = TestServer::start_with(&data_dir, &["--config", cfg.to_str().unwrap()]);
    let c = server.client().await;
    setup(&c).await;
    // Subscribes, then reads nothing until every task has finished.
    let mut stuck = server.raw_ws_tiny_window("/").await;
    stuck
        .send(Message::Text(
            frame("subscribe", "s", json!("dispatcher")).into(),
        ))
        .await
        .unwrap();
    assert_eq!(
        next_json(&mut stuck).await["args"],
        json!({"subscribe": "dispatcher"})
    );
    c.subscribe(&["dispatcher"]).await.unwrap();
    let mut events = c.take_events().unwrap();
    let url = format!("file://{}", root.join("src.iso").display());
    let mut ids = Vec::new();
    for i in 0..TASKS {
        let r = c
            .iohyve("fetchiso", json!({"url": url, "name": format!("n{i}.iso")}))
            .await
            .unwrap();
        ids.push(r["queueid"].as_str().unwrap().to_string());
    }
    // The reader that keeps up sees every task end, and every ISO is there.
    let seen = events_until_all_finished(&mut events, &ids, 300).await;
    for id in &ids {
        assert_eq!(return_code(&seen[id].last().unwrap()["args"]), "0");
    }
    assert_eq!(names_in(&iso_dir(&data_dir)).len(), TASKS);
    // The stuck one, once it reads, gets every state of every task, in order.
    let mut states: std::collections::HashMap<String, Vec<String>> = Default::default();
    let mut finished = 0;
    while finished < TASKS {
        let f = next_json(&mut stuck).await;
        let id = f["args"]["process_details"]["process_id"]
            .as_str()
            .unwrap()
            .to_string();
        let s = f["args"]["state"].as_str().unwrap().to_string();
        if s == "finished" {
            finished += 1;
        }
        let v = states.entry(id).or_default();
        if v.last() != Some(&s) {
            v.push(s);
        }
    }
    for id in &ids {
        assert_eq!(states[id], ["pending", "running", "finished"], "{id}");
    }
}
