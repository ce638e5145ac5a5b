//! Following background tasks from a test: their dispatcher events and
//! their state in `rpc/dispatcher list`.

use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::mpsc::UnboundedReceiver;

use super::Client;

/// The dispatcher frames of task `id`, up to and including `finished`
/// (frames of other tasks are skipped). Panics after `secs` seconds.
pub async fn events_until_finished(
    events: &mut UnboundedReceiver<Value>,
    id: &str,
    secs: u64,
) -> Vec<Value> {
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let frame = tokio::time::timeout_at(deadline, events.recv())
            .await
            .unwrap_or_else(|_| panic!("task {id} did not finish within {secs} s; saw {out:#?}"))
            .expect("the connection closed");
        if frame["args"]["process_details"]["process_id"] != json!(id) {
            continue;
        }
        let done = frame["args"]["state"] == "finished";
        out.push(frame);
        if done {
            return out;
        }
    }
}

/// The frames of every task in `ids` until each has finished, by id.
pub async fn events_until_all_finished(
    events: &mut UnboundedReceiver<Value>,
    ids: &[String],
    secs: u64,
) -> std::collections::HashMap<String, Vec<Value>> {
    let mut out: std::collections::HashMap<String, Vec<Value>> = Default::default();
    let mut left = ids.len();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while left > 0 {
        let frame = tokio::time::timeout_at(deadline, events.recv())
            .await
            .unwrap_or_else(|_| panic!("tasks did not finish within {secs} s; saw {out:#?}"))
            .expect("the connection closed");
        let id = frame["args"]["process_details"]["process_id"]
            .as_str()
            .unwrap_or("")
            .to_string();
        if !ids.contains(&id) {
            continue;
        }
        if frame["args"]["state"] == "finished" {
            left -= 1;
        }
        out.entry(id).or_default().push(frame);
    }
    out
}

/// Waits for a progress frame of task `id` showing at least one byte.
pub async fn wait_for_progress(events: &mut UnboundedReceiver<Value>, id: &str) -> Value {
    loop {
        let f = tokio::time::timeout(Duration::from_secs(60), events.recv())
            .await
            .expect("no progress within 60 s")
            .expect("the connection closed");
        let a = &f["args"];
        if a["process_details"]["process_id"] == json!(id) {
            assert_ne!(a["state"], "finished", "finished before any progress: {f}");
            if a.get("percent_done").is_some() && a["percent_done"] != "0%" {
                return f;
            }
        }
    }
}

/// The return code a finished payload carries.
pub fn return_code(args: &Value) -> String {
    args["process_details"]
        .as_object()
        .and_then(|d| d.iter().find(|(k, _)| k.starts_with("return_codes/")))
        .map(|(_, v)| v.as_str().unwrap().to_string())
        .unwrap_or_else(|| panic!("no return code in {args}"))
}

/// `fetchiso` with `args` (plus the action); the queueid.
pub async fn fetch(c: &Client, args: Value) -> String {
    let r = c.iohyve("fetchiso", args).await.expect("fetchiso");
    r["queueid"].as_str().unwrap().to_string()
}

/// The tasks of `rpc/dispatcher list`.
pub async fn list(c: &Client) -> serde_json::Map<String, Value> {
    let r = c
        .call("rpc", "dispatcher", json!({"action": "list"}))
        .await
        .unwrap();
    r["jobs"].as_object().unwrap().clone()
}

/// Polls `rpc/dispatcher list` until task `id` is finished; its entry.
pub async fn wait_finished(c: &Client, id: &str, secs: u64) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(t) = list(c).await.get(id) {
            if t["state"] == "finished" {
                return t.clone();
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "task {id} did not finish within {secs} s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The names in a folder, sorted (empty if it does not exist).
pub fn names_in(dir: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|r| {
            r.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}
