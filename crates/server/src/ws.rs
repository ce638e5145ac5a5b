//! WebSocket: one JSON request per frame, replies matched by id.
//!
//! Each connection has a reader (this task) and a writer task joined by a
//! bounded queue. Every request runs in its own task, so a slow request
//! never holds up the next frame or another connection; replies may thus
//! come back out of order, as the protocol allows.

use std::sync::Arc;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use std::net::SocketAddr;

use axum::extract::{ConnectInfo, State};
use axum::http::Uri;
use axum::response::Response;
use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tracing::debug;

use hyve_proto::{parse_request, render_error, render_response};

use crate::api::{self, Outcome};
use crate::session::Session;
use crate::App;

/// Frames waiting for the writer, per connection.
const OUT_QUEUE: usize = 256;

/// The upgrade is accepted on any path, with no subprotocol; paths under
/// `/console/` open a guest's serial console instead of the API.
pub async fn upgrade(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    uri: Uri,
    ws: WebSocketUpgrade,
) -> Response {
    if let Some(guest) = uri.path().strip_prefix(crate::console::PREFIX) {
        return crate::console::upgrade(app, peer, guest, ws);
    }
    ws.on_upgrade(move |socket| connection(app, peer, socket))
}

/// Renders an outcome as the frame the client receives.
pub fn render(head: &hyve_proto::RequestHead, outcome: Outcome) -> String {
    match outcome {
        Outcome::Ok(args) | Outcome::ActionError { args, .. } => render_response(head, args),
        Outcome::Protocol(p) => render_error(head.id.as_deref(), &p),
    }
}

async fn connection(app: Arc<App>, peer: SocketAddr, socket: WebSocket) {
    let (mut sink, mut stream) = socket.split();
    let (tx, mut rx) = mpsc::channel::<Message>(OUT_QUEUE);
    let writer = tokio::spawn(async move {
        while let Some(m) = rx.recv().await {
            if sink.send(m).await.is_err() {
                break;
            }
        }
        let _ = sink.close().await;
    });
    let session = Arc::new(Session::websocket(peer, tx.clone()));
    let mut shutdown = app.shutdown.subscribe();
    loop {
        let msg = tokio::select! {
            m = stream.next() => m,
            _ = shutdown.changed() => break,
        };
        let text = match msg {
            Some(Ok(Message::Text(t))) => t.to_string(),
            Some(Ok(Message::Binary(b))) => String::from_utf8_lossy(&b).into_owned(),
            Some(Ok(Message::Close(_))) | None => break,
            Some(Ok(_)) => continue,
            Some(Err(e)) => {
                debug!(error = %e, "websocket read failed");
                break;
            }
        };
        let req = match parse_request(&text) {
            Ok(r) => r,
            Err((id, err)) => {
                let _ = tx
                    .send(Message::Text(render_error(id.as_deref(), &err).into()))
                    .await;
                continue;
            }
        };
        let (app, tx, session) = (app.clone(), tx.clone(), session.clone());
        tokio::spawn(async move {
            let outcome = api::dispatch(&app, &session, &req).await;
            let _ = tx
                .send(Message::Text(render(&req.head, outcome).into()))
                .await;
        });
    }
    drop(tx);
    drop(session);
    let _ = writer.await;
}
