//! A client for the SysAdm API over WebSocket.
//!
//! One connection carries many requests at once: each gets a fresh id and
//! its reply is routed back by id; event frames go to a separate stream.
//! [`Client::connect_with`] adds TLS trust ([`Trust`]) and a login
//! ([`Credentials`]) done before the client is handed over.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;

pub mod tls;

pub use tls::{fingerprint_text, parse_fingerprint, Fingerprint, Trust};

/// How to log in once connected.
#[derive(Debug, Clone)]
pub enum Credentials {
    /// `rpc/auth`.
    Password { user: String, password: String },
    /// `rpc/auth_token`.
    Token(String),
}

/// How to connect.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// For `wss://` URLs.
    pub trust: Trust,
    /// A login done right after connecting; its failure fails the connect.
    pub credentials: Option<Credentials>,
    /// A token sent as `Authorization: Bearer` on the upgrade request, for
    /// paths that log in that way.
    pub bearer: Option<String>,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            trust: Trust::PublicRoots,
            credentials: None,
            bearer: None,
        }
    }
}

#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum ClientError {
    #[error("cannot connect to {url}: {reason}")]
    Connect { url: String, reason: String },
    /// The server's certificate is not the one pinned for it.
    #[error("the certificate of {url} has changed: expected {}, got {}", fingerprint_text(.expected), fingerprint_text(.actual))]
    CertificateChanged {
        url: String,
        expected: Fingerprint,
        actual: Fingerprint,
    },
    /// The server answered the upgrade with an HTTP error.
    #[error("{reason} (HTTP {status})")]
    Refused {
        url: String,
        status: u16,
        reason: String,
    },
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

/// Reply waiters by request id; `None` once the connection has closed, so
/// that a request made after that fails at once instead of waiting for ever.
type Pending = Arc<Mutex<Option<HashMap<String, oneshot::Sender<Value>>>>>;

/// A live connection.
pub struct Client {
    out: mpsc::Sender<Message>,
    pending: Pending,
    next_id: AtomicU64,
    events: Mutex<Option<mpsc::UnboundedReceiver<Value>>>,
    fingerprint: Option<Fingerprint>,
    token: Mutex<Option<(String, u64)>>,
}

/// Opens the raw WebSocket (TLS per `options.trust`, `Authorization` per
/// `options.bearer`), and reports the certificate's fingerprint when the
/// trust is by fingerprint.
pub async fn open(
    url: &str,
    options: &ConnectOptions,
) -> Result<
    (
        tokio_tungstenite::WebSocketStream<
            tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
        >,
        Option<Fingerprint>,
    ),
    ClientError,
> {
    let fail = |reason: String| ClientError::Connect {
        url: url.to_string(),
        reason,
    };
    let mut request = url.into_client_request().map_err(|e| fail(e.to_string()))?;
    if let Some(t) = &options.bearer {
        let v = HeaderValue::from_str(&format!("Bearer {t}"))
            .map_err(|_| fail("the token is not a valid header value".into()))?;
        request.headers_mut().insert("Authorization", v);
    }
    let (config, seen) = tls::client_config(&options.trust).map_err(&fail)?;
    let connector = tokio_tungstenite::Connector::Rustls(config);
    // tungstenite zeroes the free part of its read buffer before every
    // read; its 128 KiB default made each small reply cost a 128 KiB memset.
    // One TLS record's worth; larger messages still grow it.
    let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .read_buffer_size(16 * 1024);
    let result = tokio_tungstenite::connect_async_tls_with_config(
        request,
        Some(config),
        true,
        Some(connector),
    )
    .await;
    let seen = *seen.lock().unwrap();
    match result {
        Ok((stream, _)) => Ok((stream, seen)),
        Err(e) => {
            if let (Trust::Fingerprint(Some(expected)), Some(actual)) = (&options.trust, seen) {
                if *expected != actual {
                    return Err(ClientError::CertificateChanged {
                        url: url.to_string(),
                        expected: *expected,
                        actual,
                    });
                }
            }
            match refusal(&e) {
                Some((status, reason)) => Err(ClientError::Refused {
                    url: url.to_string(),
                    status,
                    reason,
                }),
                None => Err(fail(e.to_string())),
            }
        }
    }
}

/// The status and sentence of an upgrade the server answered with an HTTP
/// error: the server's own words when it sent an error object (401, 404,
/// 503...), else the status.
fn refusal(e: &tokio_tungstenite::tungstenite::Error) -> Option<(u16, String)> {
    let tokio_tungstenite::tungstenite::Error::Http(resp) = e else {
        return None;
    };
    let status = resp.status();
    let body = resp
        .body()
        .as_ref()
        .and_then(|b| serde_json::from_slice::<Value>(b).ok())
        .unwrap_or(Value::Null);
    let reason = if let Some(d) = body["args"]["detail"].as_str() {
        d.to_string()
    } else if let Some(d) = body["args"]
        .as_object()
        .and_then(|a| a.values().find_map(action_error))
    {
        // An in-band refusal: `{"args":{"<what>":{"error":…}}}`.
        d.to_string()
    } else {
        format!("the server answered {status}")
    };
    Some((status.as_u16(), reason))
}

impl Client {
    /// Connects to `url` (`ws://` or `wss://` with the public CAs), without
    /// logging in.
    pub async fn connect(url: &str) -> Result<Client, ClientError> {
        Self::connect_with(url, &ConnectOptions::default()).await
    }

    /// Connects with `options`, logging in if they carry credentials.
    pub async fn connect_with(url: &str, options: &ConnectOptions) -> Result<Client, ClientError> {
        let (stream, fingerprint) = open(url, options).await?;
        let mut client = Self::start(stream);
        client.fingerprint = fingerprint;
        match &options.credentials {
            Some(Credentials::Password { user, password }) => {
                client.login(user, password).await?;
            }
            Some(Credentials::Token(t)) => {
                client.login_token(t).await?;
            }
            None => {}
        }
        Ok(client)
    }

    /// The fingerprint of the server's certificate, when trusted by
    /// fingerprint.
    pub fn server_fingerprint(&self) -> Option<Fingerprint> {
        self.fingerprint
    }

    /// The token of the last login on this connection and its lifetime.
    pub fn token(&self) -> Option<(String, u64)> {
        self.token.lock().unwrap().clone()
    }

    fn granted(&self, args: &Value) -> Result<(String, u64), ClientError> {
        let (Some(t), Some(secs)) = (args[0].as_str(), args[1].as_u64()) else {
            return Err(ClientError::Unexpected(args.to_string()));
        };
        let g = (t.to_string(), secs);
        *self.token.lock().unwrap() = Some(g.clone());
        Ok(g)
    }

    /// `rpc/auth`: returns the token and its lifetime in seconds.
    pub async fn login(&self, user: &str, password: &str) -> Result<(String, u64), ClientError> {
        let args = self
            .call(
                "rpc",
                "auth",
                json!({"username": user, "password": password}),
            )
            .await?;
        self.granted(&args)
    }

    /// `rpc/auth_token`.
    pub async fn login_token(&self, token: &str) -> Result<(String, u64), ClientError> {
        let args = self
            .call("rpc", "auth_token", json!({ "token": token }))
            .await?;
        self.granted(&args)
    }

    /// `rpc/auth_clear`: ends the connection's token. The server sends no
    /// reply, so this only sends.
    pub async fn logout(&self) -> Result<(), ClientError> {
        *self.token.lock().unwrap() = None;
        let frame =
            json!({"namespace": "rpc", "name": "auth_clear", "id": "auth_clear", "args": {}});
        self.send_text(frame.to_string()).await
    }

    fn start<S>(stream: tokio_tungstenite::WebSocketStream<S>) -> Client
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (mut sink, mut source) = stream.split();
        let (out, mut out_rx) = mpsc::channel::<Message>(64);
        let pending: Pending = Arc::new(Mutex::new(Some(HashMap::new())));
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
                let waiter = p2.lock().unwrap().as_mut().and_then(|m| m.remove(&id));
                if let Some(tx) = waiter {
                    let _ = tx.send(v);
                }
            }
            // Dropping the senders wakes every waiter with `Closed`; later
            // requests see `None` and fail at once.
            *p2.lock().unwrap() = None;
        });
        Client {
            out,
            pending,
            next_id: AtomicU64::new(1),
            events: Mutex::new(Some(ev_rx)),
            fingerprint: None,
            token: Mutex::new(None),
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
        match self.pending.lock().unwrap().as_mut() {
            Some(m) => m.insert(id.clone(), tx),
            None => return Err(ClientError::Closed),
        };
        let frame = json!({"namespace": namespace, "name": name, "id": id, "args": args});
        if self
            .out
            .send(Message::Text(frame.to_string().into()))
            .await
            .is_err()
        {
            if let Some(m) = self.pending.lock().unwrap().as_mut() {
                m.remove(&id);
            }
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

#[cfg(test)]
mod closed_connection_tests {
    use super::*;

    /// A request made after the server closed the connection fails at once
    /// (it used to wait for ever: its waiter was registered after the
    /// reader had dropped all of them, and the frame still went to the
    /// writer's queue).
    #[tokio::test]
    async fn a_request_after_the_close_fails_at_once() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (s, _) = l.accept().await.unwrap();
            let mut ws = tokio_tungstenite::accept_async(s).await.unwrap();
            ws.close(None).await.unwrap();
        });
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (ws, _) = tokio_tungstenite::client_async(format!("ws://{addr}/"), tcp)
            .await
            .unwrap();
        let c = Client::start(ws);
        server.await.unwrap();
        for _ in 0..500 {
            if c.pending.lock().unwrap().is_none() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let r = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            c.request("rpc", "query", json!({})),
        )
        .await
        .expect("a request on a closed connection must not wait");
        assert!(matches!(r, Err(ClientError::Closed)), "{r:?}");
    }
}
