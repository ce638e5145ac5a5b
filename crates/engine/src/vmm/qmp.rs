//! A small QMP client over the guest's unix socket.
//!
//! QMP is JSON lines: a greeting, `qmp_capabilities`, then commands (each
//! answered by `return` or `error`, matched here by `id`) interleaved with
//! asynchronous events. A reader task routes replies to their callers and
//! events to one channel; when QEMU closes the socket the channel ends,
//! which is how the supervisor learns early that QEMU is going away.

use std::collections::HashMap;
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::OwnedWriteHalf;
use tokio::sync::{mpsc, oneshot};

use super::unixsock::unix_connect;

/// How long one command may take before the caller gives up on it.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Result<Value, String>>>>>;

/// A QMP connection.
pub struct Qmp {
    writer: tokio::sync::Mutex<OwnedWriteHalf>,
    pending: Pending,
    next_id: AtomicU64,
}

/// An asynchronous QMP event: its name and data.
#[derive(Debug, Clone)]
pub struct Event {
    pub name: String,
    pub data: Value,
}

async fn read_json(r: &mut (impl AsyncBufReadExt + Unpin)) -> io::Result<Value> {
    let mut line = String::new();
    if r.read_line(&mut line).await? == 0 {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "QMP closed"));
    }
    serde_json::from_str(&line).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

impl Qmp {
    /// Connects to `dir/name`, negotiates capabilities, and returns the
    /// client with its event stream.
    pub async fn connect(
        dir: &Path,
        name: &str,
    ) -> io::Result<(Qmp, mpsc::UnboundedReceiver<Event>)> {
        let stream = unix_connect(dir, name).await?;
        let (r, mut w) = stream.into_split();
        let mut r = BufReader::new(r);
        let handshake = async {
            let greeting = read_json(&mut r).await?;
            if greeting.get("QMP").is_none() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "not a QMP greeting",
                ));
            }
            w.write_all(b"{\"execute\":\"qmp_capabilities\"}\n").await?;
            loop {
                let v = read_json(&mut r).await?;
                if v.get("return").is_some() {
                    return Ok(());
                }
                if let Some(e) = v.get("error") {
                    return Err(io::Error::other(format!("qmp_capabilities failed: {e}")));
                }
            }
        };
        tokio::time::timeout(COMMAND_TIMEOUT, handshake)
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "QMP did not answer"))??;
        let pending: Pending = Arc::default();
        let (ev_tx, ev_rx) = mpsc::unbounded_channel();
        let p2 = pending.clone();
        tokio::spawn(async move {
            while let Ok(v) = read_json(&mut r).await {
                if let Some(name) = v.get("event").and_then(Value::as_str) {
                    let _ = ev_tx.send(Event {
                        name: name.to_string(),
                        data: v.get("data").cloned().unwrap_or(Value::Null),
                    });
                    continue;
                }
                let Some(id) = v.get("id").and_then(Value::as_u64) else {
                    continue;
                };
                let Some(tx) = p2.lock().expect("qmp map").remove(&id) else {
                    continue;
                };
                let reply = match (v.get("return"), v.get("error")) {
                    (Some(r), _) => Ok(r.clone()),
                    (_, Some(e)) => Err(e
                        .get("desc")
                        .and_then(Value::as_str)
                        .unwrap_or("QMP error")
                        .to_string()),
                    _ => Err("malformed QMP reply".into()),
                };
                let _ = tx.send(reply);
            }
            // Dropping the senders wakes every waiter.
            p2.lock().expect("qmp map").clear();
        });
        Ok((
            Qmp {
                writer: tokio::sync::Mutex::new(w),
                pending,
                next_id: AtomicU64::new(1),
            },
            ev_rx,
        ))
    }

    /// Runs one command and returns its `return` value.
    pub async fn execute(&self, command: &str, arguments: Option<Value>) -> Result<Value, String> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut msg = json!({"execute": command, "id": id});
        if let Some(a) = arguments {
            msg["arguments"] = a;
        }
        let (tx, rx) = oneshot::channel();
        self.pending.lock().expect("qmp map").insert(id, tx);
        let mut line = msg.to_string();
        line.push('\n');
        let sent = self.writer.lock().await.write_all(line.as_bytes()).await;
        if let Err(e) = sent {
            self.pending.lock().expect("qmp map").remove(&id);
            return Err(format!("QMP write failed: {e}"));
        }
        match tokio::time::timeout(COMMAND_TIMEOUT, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err("QEMU closed its QMP socket".into()),
            Err(_) => {
                self.pending.lock().expect("qmp map").remove(&id);
                Err(format!(
                    "QMP {command} got no answer within {} s",
                    COMMAND_TIMEOUT.as_secs()
                ))
            }
        }
    }

    /// Whether the guest's CPUs run (`query-status`), as opposed to paused.
    pub async fn running(&self) -> Result<bool, String> {
        let r = self.execute("query-status", None).await?;
        Ok(r.get("running").and_then(Value::as_bool).unwrap_or(false))
    }
}
