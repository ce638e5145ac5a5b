//! A client for the SysAdm API over WebSocket.
//!
//! One connection carries many requests at once: each gets a fresh id and
//! its reply is routed back by id; event frames go to a separate stream.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;

#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum ClientError {
    #[error("cannot connect to {url}: {reason}")]
    Connect { url: String, reason: String },
    #[error("the connection to the server closed")]
    Closed,
    /// An `error/error` frame.
    #[error("{}", protocol_sentence(.code, .message, .detail))]
    Protocol {
        code: String,
        message: String,
        detail: Option<String>,
    },
    /// An action that failed, answered in band.
    #[error("{0}")]
    Action(String),
    #[error("unexpected reply from the server: {0}")]
    Unexpected(String),
}

fn protocol_sentence(code: &str, message: &str, detail: &Option<String>) -> String {
    match detail {
        Some(d) => format!("{message} ({code}): {d}"),
        None => format!("{message} ({code})"),
    }
}

type Pending = Arc<Mutex<HashMap<String, oneshot::Sender<Value>>>>;

/// A live connection.
pub struct Client {
    out: mpsc::Sender<Message>,
    pending: Pending,
    next_id: AtomicU64,
    events: Mutex<Option<mpsc::UnboundedReceiver<Value>>>,
}

impl Client {
    /// Connects to `url` (`ws://host:port`).
    pub async fn connect(url: &str) -> Result<Client, ClientError> {
        let (stream, _) =
            tokio_tungstenite::connect_async(url)
                .await
                .map_err(|e| ClientError::Connect {
                    url: url.to_string(),
                    reason: e.to_string(),
                })?;
        Ok(Self::start(stream))
    }

    fn start<S>(stream: tokio_tungstenite::WebSocketStream<S>) -> Client
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (mut sink, mut source) = stream.split();
        let (out, mut out_rx) = mpsc::channel::<Message>(64);
        let pending: Pending = Arc::default();
        let (ev_tx, ev_rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(m) = out_rx.recv().await {
                if sink.send(m).await.is_err() {
                    break;
                }
            }
            let _ = sink.close().await;
        });
        let p2 = pending.clone();
        tokio::spawn(async move {
            while let Some(Ok(m)) = source.next().await {
                let text = match m {
                    Message::Text(t) => t.to_string(),
                    Message::Binary(b) => String::from_utf8_lossy(&b).into_owned(),
                    Message::Close(_) => break,
                    _ => continue,
                };
                let Ok(v) = serde_json::from_str::<Value>(&text) else {
                    continue;
                };
                if v["namespace"] == "events" && v["name"] != "response" {
                    let _ = ev_tx.send(v);
                    continue;
                }
                let id = v["id"].as_str().unwrap_or("").to_string();
                if let Some(tx) = p2.lock().unwrap().remove(&id) {
                    let _ = tx.send(v);
                }
            }
            // Dropping the senders wakes every waiter with `Closed`.
            p2.lock().unwrap().clear();
        });
        Client {
            out,
            pending,
            next_id: AtomicU64::new(1),
            events: Mutex::new(Some(ev_rx)),
        }
    }

    /// The stream of event frames (whole frames); can be taken once.
    pub fn take_events(&self) -> Option<mpsc::UnboundedReceiver<Value>> {
        self.events.lock().unwrap().take()
    }

    /// Sends a request and waits for the whole reply frame.
    pub async fn request(
        &self,
        namespace: &str,
        name: &str,
        args: Value,
    ) -> Result<Value, ClientError> {
        let id = format!("hyve-{}", self.next_id.fetch_add(1, Ordering::Relaxed));
        let (tx, rx) = oneshot::channel();
        self.pending.lock().unwrap().insert(id.clone(), tx);
        let frame = json!({"namespace": namespace, "name": name, "id": id, "args": args});
        if self
            .out
            .send(Message::Text(frame.to_string().into()))
            .await
            .is_err()
        {
            self.pending.lock().unwrap().remove(&id);
            return Err(ClientError::Closed);
        }
        rx.await.map_err(|_| ClientError::Closed)
    }

    /// Sends a request and returns the reply's `args`, turning an error
    /// frame into [`ClientError::Protocol`].
    pub async fn call(
        &self,
        namespace: &str,
        name: &str,
        args: Value,
    ) -> Result<Value, ClientError> {
        let reply = self.request(namespace, name, args).await?;
        if reply["name"] == "error" || reply["namespace"] == "error" {
            let a = &reply["args"];
            return Err(ClientError::Protocol {
                code: a["code"].as_str().unwrap_or("").to_string(),
                message: a["message"].as_str().unwrap_or("").to_string(),
                detail: a["detail"].as_str().map(str::to_string),
            });
        }
        Ok(reply["args"].clone())
    }

    /// Runs one `sysadm/iohyve` action and returns its result, the value
    /// under the action's key; an in-band error becomes
    /// [`ClientError::Action`].
    pub async fn iohyve(&self, action: &str, mut args: Value) -> Result<Value, ClientError> {
        if args.is_null() {
            args = json!({});
        }
        args["action"] = json!(action);
        let reply = self.call("sysadm", "iohyve", args).await?;
        let inner = reply
            .get(action)
            .cloned()
            .ok_or_else(|| ClientError::Unexpected(reply.to_string()))?;
        if let Some(msg) = action_error(&inner) {
            return Err(ClientError::Action(msg.to_string()));
        }
        Ok(inner)
    }

    /// Subscribes this connection to event names (`dispatcher`); the
    /// events then arrive on [`Client::take_events`]. Returns the reply's
    /// last valid name (empty if none was known to the server).
    pub async fn subscribe(&self, names: &[&str]) -> Result<String, ClientError> {
        let r = self.call("events", "subscribe", json!(names)).await?;
        Ok(r["subscribe"].as_str().unwrap_or("").to_string())
    }

    /// Sends a raw text frame (tests use it for malformed input).
    pub async fn send_text(&self, text: String) -> Result<(), ClientError> {
        self.out
            .send(Message::Text(text.into()))
            .await
            .map_err(|_| ClientError::Closed)
    }
}

/// The sentence of an in-band error: `{"error": "<string>"}` and nothing
/// else (a guest named "error" maps to an object, not a string).
pub fn action_error(inner: &Value) -> Option<&str> {
    let obj = inner.as_object()?;
    if obj.len() == 1 {
        obj.get("error")?.as_str()
    } else {
        None
    }
}
