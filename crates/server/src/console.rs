//! The interactive serial console over WebSocket: `/console/<guest>` on the
//! WebSocket listener.
//!
//! Binary frames carry the console's bytes both ways. From the server: the
//! recent output first (one frame), then live output. From the client:
//! keystrokes (text frames are taken as their UTF-8 bytes too). Text
//! frames from the server are JSON notices:
//! `{"console":{"name":…,"running":true|false}}` when the connection opens
//! and whenever the guest's hypervisor starts or ends, and
//! `{"console":{"name":…,"error":"…"}}` when input is refused (another
//! viewer holds the keyboard, or the guest is not running). Any number of
//! viewers; the first to type while the keyboard is free holds it until it
//! disconnects.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::sync::broadcast::error::RecvError;
use tracing::{debug, info};

use hyve_engine::vmm::console::{ConsoleEvent, InputError, Viewer};

use hyve_proto::ErrorCode;

use crate::api::{forbidden, Outcome};
use crate::rest;
use crate::session::Login;
use crate::App;

/// The path prefix of console connections.
pub const PREFIX: &str = "/console/";

/// Opens a console connection for `guest`, or refuses before upgrading:
/// 401/403 without a full login, else the HTTP status and sentence of the
/// engine's error (`{"console":{"error":…}}`).
pub async fn upgrade(
    app: Arc<App>,
    peer: SocketAddr,
    login: Login,
    guest: &str,
    ws: WebSocketUpgrade,
) -> Response {
    // The console is the guest's keyboard: it needs a login with full
    // access, given on the upgrade request (Bearer token or Basic).
    let who = match login {
        Login::Verified(who) => Some(who),
        Login::Token(t) => app.auth.check(&t).await,
        Login::None => None,
    };
    let Some(who) = who else {
        return rest::reply(&Outcome::protocol(
            ErrorCode::Unauthorized,
            "the console needs a login: send 'Authorization: Bearer <token>' (or Basic credentials) with the upgrade request",
        ));
    };
    if !who.may_write() {
        return rest::reply(&forbidden(&who, "the console needs full access"));
    }
    let (viewer, running) = match app.vmm.console_viewer(guest) {
        Ok(v) => v,
        Err(e) => return rest::reply(&Outcome::action_error("console", &e)),
    };
    let guest = guest.to_string();
    ws.on_upgrade(move |socket| serve(app, peer, guest, viewer, running, socket))
}

fn notice(guest: &str, key: &str, value: serde_json::Value) -> Message {
    Message::Text(
        json!({"console": {"name": guest, key: value}})
            .to_string()
            .into(),
    )
}

async fn serve(
    app: Arc<App>,
    peer: SocketAddr,
    guest: String,
    mut viewer: Viewer,
    running: bool,
    socket: WebSocket,
) {
    info!(guest, %peer, "console viewer joined");
    let (mut sink, mut stream) = socket.split();
    let mut shutdown = app.shutdown.subscribe();
    let backlog = std::mem::take(&mut viewer.backlog);
    if sink
        .send(notice(&guest, "running", json!(running)))
        .await
        .is_err()
    {
        return;
    }
    if !backlog.is_empty() && sink.send(Message::Binary(backlog.into())).await.is_err() {
        return;
    }
    loop {
        tokio::select! {
            ev = viewer.events.recv() => {
                let msg = match ev {
                    Ok(ConsoleEvent::Output(b)) => Message::Binary(b.to_vec().into()),
                    Ok(ConsoleEvent::Running(r)) => notice(&guest, "running", json!(r)),
                    Err(RecvError::Lagged(n)) => notice(&guest, "error", json!(format!("this viewer fell behind; {n} chunks of output were skipped"))),
                    Err(RecvError::Closed) => break,
                };
                if sink.send(msg).await.is_err() {
                    break;
                }
            }
            m = stream.next() => {
                let data = match m {
                    Some(Ok(Message::Binary(b))) => b.to_vec(),
                    Some(Ok(Message::Text(t))) => t.as_bytes().to_vec(),
                    Some(Ok(Message::Close(_))) | None => break,
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => {
                        debug!(error = %e, "console read failed");
                        break;
                    }
                };
                if let Err(e) = viewer.send(data).await {
                    let why = match e {
                        InputError::Busy => "another viewer is typing on this console; you are watching only",
                        InputError::NotRunning => "the guest is not running; input is dropped",
                    };
                    if sink.send(notice(&guest, "error", json!(why))).await.is_err() {
                        break;
                    }
                }
            }
            _ = shutdown.changed() => break,
        }
    }
    let _ = sink.close().await;
    info!(guest, %peer, "console viewer left");
}
