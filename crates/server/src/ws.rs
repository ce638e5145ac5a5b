//! WebSocket: one JSON request per frame, replies matched by id.
//!
//! Each connection has a reader (this task) and a writer task joined by a
//! bounded queue. `rpc/identify` and `rpc/auth*` run in the reader, in
//! arrival order, before the next frame is read: the reference client
//! sends `auth` and its first request back to back. Every other request
//! runs in its own task (at most `max_in_flight` per connection; more are
//! answered 429), so a slow request never holds up the next frame or
//! another connection; replies may thus come back out of order, as the
//! protocol allows.
//!
//! A connection that has not logged in within `login_timeout_secs` is closed
//! (code 1008), as is one silent for `idle_timeout_secs` (code 1000); a
//! message larger than `max_frame_size` closes it with code 1009. The
//! upgrade request may carry `Authorization: Bearer <token>` (or Basic) to
//! start logged in.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, Uri};
use axum::response::Response;
use futures_util::{SinkExt, StreamExt};
use tokio::sync::{mpsc, Semaphore};
use tokio::time::{sleep_until, Instant};
use tracing::{debug, info};

use hyve_proto::{
    parse_request, render_error, render_response, render_response_json, ErrorCode, ProtocolError,
};

use crate::api::{self, rpc, Outcome};
use crate::listen::stopping;
use crate::session::{login_from_headers, Login, Session};
use crate::App;

/// Frames waiting for the writer, per connection.
const OUT_QUEUE: usize = 256;

/// The WebSocket read buffer: one TLS record's worth. tungstenite zeroes
/// the free part of it before every read, so its default (128 KiB) cost a
/// 128 KiB memset per request frame; larger messages still grow it.
pub const READ_BUFFER: usize = 16 * 1024;

/// The upgrade is accepted on any path, with no subprotocol; paths under
/// `/console/` open a guest's serial console instead of the API.
pub async fn upgrade(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    uri: Uri,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    let login = match login_from_headers(&app, peer, &headers).await {
        Ok(l) => l,
        Err(e) => return crate::rest::reply(&Outcome::Protocol(e)),
    };
    if let Some(guest) = uri.path().strip_prefix(crate::console::PREFIX) {
        return crate::console::upgrade(app, peer, login, guest, ws).await;
    }
    let (login, owned) = match login {
        // Basic on the upgrade: a token for this connection only, ended
        // when it closes.
        Login::Verified(identity) => {
            let g = app.auth.issue(identity);
            (Login::Token(g.token.clone()), Some(g.token))
        }
        l => (l, None),
    };
    let limit = app.net.max_frame_bytes;
    ws.max_message_size(limit)
        .max_frame_size(limit)
        .read_buffer_size(READ_BUFFER)
        .on_upgrade(move |socket| connection(app, peer, login, owned, socket))
}

/// Renders an outcome as the frame the client receives (`None`: no reply).
pub fn render(head: &hyve_proto::RequestHead, outcome: Outcome) -> Option<String> {
    match outcome {
        Outcome::Ok(args) | Outcome::ActionError { args, .. } => Some(render_response(head, args)),
        Outcome::Json(args) => Some(render_response_json(head, &args)),
        Outcome::Protocol(p) => Some(render_error(head.id.as_deref(), &p)),
        Outcome::NoReply => None,
    }
}

fn close(code: u16, reason: String) -> CloseFrame {
    CloseFrame {
        code,
        reason: reason.into(),
    }
}

/// Whether a read failed because the message was over the size limit.
fn too_big(e: axum::Error) -> bool {
    matches!(
        e.into_inner().downcast_ref::<tungstenite::Error>(),
        Some(tungstenite::Error::Capacity(_))
    )
}

async fn connection(
    app: Arc<App>,
    peer: SocketAddr,
    login: Login,
    owned: Option<String>,
    socket: WebSocket,
) {
    let (mut sink, mut stream) = socket.split();
    let (tx, mut rx) = mpsc::channel::<Message>(OUT_QUEUE);
    let writer = tokio::spawn(async move {
        while let Some(m) = rx.recv().await {
            let last = matches!(m, Message::Close(_));
            if sink.send(m).await.is_err() || last {
                break;
            }
        }
        let _ = sink.close().await;
    });
    let session = Arc::new(Session::websocket(peer, tx.clone(), login));
    let in_flight = Arc::new(Semaphore::new(app.net.max_in_flight));
    let login_timeout = Duration::from_secs(app.config.auth.login_timeout_secs);
    let idle_timeout = Duration::from_secs(app.config.auth.idle_timeout_secs);
    let mut logged_out_since = Instant::now();
    let mut last_frame = Instant::now();
    let mut shutdown = app.shutdown.subscribe();
    let farewell = loop {
        let logged_in = session.has_logged_in();
        let deadline = if logged_in {
            last_frame + idle_timeout
        } else {
            logged_out_since + login_timeout
        };
        let msg = tokio::select! {
            m = stream.next() => m,
            // The writer gave up on the client (see listen::Conn).
            _ = tx.closed() => break None,
            _ = stopping(&mut shutdown) => break Some(close(1001, "the server is stopping".into())),
            _ = sleep_until(deadline) => {
                info!(%peer, logged_in, "closing a quiet connection");
                break Some(if logged_in {
                    close(1000, format!("closed after {} s without a request", idle_timeout.as_secs()))
                } else {
                    close(1008, format!("not logged in within {} s", login_timeout.as_secs()))
                });
            }
        };
        last_frame = Instant::now();
        let text = match msg {
            Some(Ok(Message::Text(t))) => t.to_string(),
            Some(Ok(Message::Binary(b))) => String::from_utf8_lossy(&b).into_owned(),
            Some(Ok(Message::Close(_))) | None => break None,
            Some(Ok(_)) => continue,
            Some(Err(e)) => {
                if too_big(e) {
                    let max = app.net.max_frame_bytes;
                    info!(%peer, max, "message over the size limit: closing");
                    break Some(close(
                        1009,
                        format!("a message is larger than this server accepts ({max} bytes)"),
                    ));
                }
                debug!(%peer, "websocket read failed");
                break None;
            }
        };
        // A failed send means the writer is gone (the client took no reply
        // within the client timeout, or the socket failed): so is the
        // connection.
        let req = match parse_request(&text) {
            Ok(r) => r,
            Err((id, err)) => {
                let frame = render_error(id.as_deref(), &err);
                if tx.send(Message::Text(frame.into())).await.is_err() {
                    break None;
                }
                continue;
            }
        };
        if rpc::is_login(&req.route()) {
            let outcome = api::dispatch(&app, &session, &req).await;
            if logged_in && !session.has_logged_in() {
                logged_out_since = Instant::now();
            }
            if let Some(frame) = render(&req.head, outcome) {
                if tx.send(Message::Text(frame.into())).await.is_err() {
                    break None;
                }
            }
            continue;
        }
        let Ok(permit) = in_flight.clone().try_acquire_owned() else {
            let err = ProtocolError::new(
                ErrorCode::TooManyRequests,
                format!(
                    "this connection already has {} requests running; wait for their replies",
                    app.net.max_in_flight
                ),
            );
            let frame = render_error(req.head.id.as_deref(), &err);
            if tx.send(Message::Text(frame.into())).await.is_err() {
                break None;
            }
            continue;
        };
        let (app, tx, session) = (app.clone(), tx.clone(), session.clone());
        tokio::spawn(async move {
            let outcome = api::dispatch(&app, &session, &req).await;
            if let Some(frame) = render(&req.head, outcome) {
                let _ = tx.send(Message::Text(frame.into())).await;
            }
            drop(permit);
        });
    };
    if let Some(frame) = farewell {
        let _ = tx.send(Message::Close(Some(frame))).await;
    }
    drop(tx);
    drop(session);
    let _ = writer.await;
    if let Some(t) = owned {
        app.auth.revoke(&t);
    }
}
