//! The `events` namespace: `subscribe` and `unsubscribe` (PROTOCOL.md §4).
//!
//! A WebSocket connection subscribes with a name or an array of names; the
//! first subscription gives the connection a [`Subscriber`] on the engine's
//! event bus and a forwarding task that renders each event as a frame and
//! queues it for the connection's writer. The bus never waits for that
//! task, so a client that stops reading only fills its own bounded queue
//! (see `hyve_engine::events`); the others and the download carry on.

use std::sync::{Arc, Mutex};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes};
use serde_json::{json, Value};
use tokio::task::AbortHandle;
use tracing::debug;

use hyve_engine::events::{Event, Subscriber};
use hyve_engine::tasks::EVENT_NAME;
use hyve_proto::{render_event, ProtocolError};

use super::Outcome;
use crate::session::Session;
use crate::App;

/// The event names this server sends.
pub const KNOWN_EVENTS: [&str; 1] = [EVENT_NAME];

/// WebSocket close code for a client too far behind on events (1008,
/// policy violation): it reconnects and lists the tasks again.
const CLOSE_LAGGED: u16 = 1008;

/// A connection's subscription: its subscriber and the task forwarding
/// events to the connection. Dropping it (with the session) stops both.
#[derive(Default)]
pub struct SessionEvents {
    active: Mutex<Option<Active>>,
}

struct Active {
    sub: Arc<Subscriber>,
    forwarder: AbortHandle,
}

impl Drop for Active {
    fn drop(&mut self) {
        self.forwarder.abort();
    }
}

impl SessionEvents {
    /// The names this connection receives.
    pub fn names(&self) -> Vec<String> {
        let a = self.active.lock().expect("session events poisoned");
        a.as_ref()
            .map(|a| a.sub.names().into_iter().collect())
            .unwrap_or_default()
    }
}

/// Reads `args`: a string or an array of strings.
fn names(args: &Value) -> Result<Vec<String>, ProtocolError> {
    let bad = || {
        ProtocolError::bad_request(format!(
            "events take an event name or an array of names, not {}",
            hyve_proto::envelope::json_type_name(args)
        ))
    };
    match args {
        Value::String(s) => Ok(vec![s.clone()]),
        Value::Array(a) => a
            .iter()
            .map(|v| v.as_str().map(str::to_string).ok_or_else(bad))
            .collect(),
        _ => Err(bad()),
    }
}

pub async fn handle(app: &App, session: &Session, name: &str, args: &Value) -> Outcome {
    let names = match names(args) {
        Ok(n) => n,
        Err(p) => return Outcome::Protocol(p),
    };
    let Some(push) = &session.push else {
        return Outcome::Protocol(ProtocolError::bad_request(
            "events are sent over WebSocket: subscribe on a WebSocket connection",
        ));
    };
    // Unknown names are skipped; the reply names the last valid one.
    let valid: Vec<&str> = names
        .iter()
        .filter_map(|n| {
            KNOWN_EVENTS
                .iter()
                .copied()
                .find(|k| k.eq_ignore_ascii_case(n))
        })
        .collect();
    let last = valid.last().copied().unwrap_or("");
    let mut active = session
        .events
        .active
        .lock()
        .expect("session events poisoned");
    if name == "subscribe" {
        let a = active.get_or_insert_with(|| {
            let sub = Arc::new(app.events.subscribe());
            let forwarder = tokio::spawn(forward(sub.clone(), push.clone())).abort_handle();
            Active { sub, forwarder }
        });
        a.sub.add_names(valid.iter().copied());
        debug!(peer = %session.peer, events = ?valid, "subscribed");
    } else if let Some(a) = active.as_ref() {
        a.sub.remove_names(valid.iter().copied());
        debug!(peer = %session.peer, events = ?valid, "unsubscribed");
    }
    Outcome::Ok(json!({ name: last }))
}

/// The frame of the event being fanned out, rendered by the first
/// forwarder to get it and shared by the others (a reference-counted
/// buffer): with 1,000 subscribers an event was serialized 1,000 times.
/// One slot is enough, as every forwarder handles the same event at about
/// the same time; holding the `Arc` keeps its address from being reused.
struct FrameCache(Mutex<Option<(Arc<Event>, Utf8Bytes)>>);

static LAST_FRAME: FrameCache = FrameCache(Mutex::new(None));

impl FrameCache {
    fn frame(&self, ev: &Arc<Event>) -> Utf8Bytes {
        let mut slot = self.0.lock().expect("frame cache poisoned");
        if let Some((cached, frame)) = slot.as_ref() {
            if Arc::ptr_eq(cached, ev) {
                return frame.clone();
            }
        }
        let frame = Utf8Bytes::from(render_event(&ev.name, &ev.payload));
        *slot = Some((ev.clone(), frame.clone()));
        frame
    }
}

/// Moves events from the subscriber to the connection's writer, until the
/// connection goes (the send fails) or the session drops (abort).
async fn forward(sub: Arc<Subscriber>, push: tokio::sync::mpsc::Sender<Message>) {
    loop {
        match sub.recv().await {
            Ok(ev) => {
                let frame = LAST_FRAME.frame(&ev);
                if push.send(Message::Text(frame)).await.is_err() {
                    return;
                }
            }
            Err(_lagged) => {
                let _ = push
                    .send(Message::Close(Some(CloseFrame {
                        code: CLOSE_LAGGED,
                        reason: "too far behind on events; reconnect and list the tasks".into(),
                    })))
                    .await;
                return;
            }
        }
    }
}
