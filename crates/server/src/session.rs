//! What the server knows about the peer of a request: one per WebSocket
//! connection, one per REST request. Its login state lives here, so every
//! class (and every other engineer's handler: events, the dispatcher, the
//! console) asks the same question the same way: [`Session::identity`].

use std::net::SocketAddr;
use std::sync::Mutex;

use axum::extract::ws::Message;
use tokio::sync::mpsc;

use crate::api::events::SessionEvents;
use crate::auth::Identity;
use crate::App;

/// The transport a session came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    WebSocket,
    Rest,
}

/// How a session is logged in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Login {
    None,
    /// A token (rpc/auth*, or `Authorization: Bearer`): checked, and its
    /// life extended, at every request, so expiry and logout take effect
    /// at once.
    Token(String),
    /// A REST request whose Basic credentials were checked just now.
    Verified(Identity),
}

pub struct Session {
    pub peer: SocketAddr,
    pub transport: Transport,
    /// Frames to push to a WebSocket peer outside of replies (events);
    /// `None` for REST.
    pub push: Option<mpsc::Sender<Message>>,
    /// The connection's event subscription (`events/subscribe`).
    pub events: SessionEvents,
    login: Mutex<Login>,
}

impl Session {
    pub fn websocket(peer: SocketAddr, push: mpsc::Sender<Message>, login: Login) -> Session {
        Session {
            peer,
            transport: Transport::WebSocket,
            push: Some(push),
            events: SessionEvents::default(),
            login: Mutex::new(login),
        }
    }

    pub fn rest(peer: SocketAddr, login: Login) -> Session {
        Session {
            peer,
            transport: Transport::Rest,
            push: None,
            events: SessionEvents::default(),
            login: Mutex::new(login),
        }
    }

    /// Who is logged in on this session, if anyone still is (an expired or
    /// cleared token is no one). Each call counts as use of the token.
    pub async fn identity(&self, app: &App) -> Option<Identity> {
        let login = self.login();
        match login {
            Login::None => None,
            Login::Verified(i) => Some(i),
            Login::Token(t) => app.auth.check(&t).await,
        }
    }

    pub fn login(&self) -> Login {
        self.login.lock().unwrap().clone()
    }

    pub fn set_login(&self, login: Login) {
        *self.login.lock().unwrap() = login;
    }

    /// Whether the session has logged in (its token may since have expired):
    /// what the WebSocket's login timeout looks at.
    pub fn has_logged_in(&self) -> bool {
        !matches!(*self.login.lock().unwrap(), Login::None)
    }
}

/// The login an HTTP request carries in its `Authorization` header:
/// `Basic` (user name and password, checked now, counting towards the
/// address's block like any login) or `Bearer <token>`. No header is no
/// login; a header that does not log in is a 401, never a silent
/// downgrade. The WebSocket upgrade (any path, the console's too) goes
/// through here as well, so a client without a JSON channel can log in.
pub async fn login_from_headers(
    app: &App,
    peer: SocketAddr,
    headers: &axum::http::HeaderMap,
) -> Result<Login, hyve_proto::ProtocolError> {
    use base64::Engine as _;
    use hyve_proto::{ErrorCode, ProtocolError};
    let unauthorized = |d: &str| ProtocolError::new(ErrorCode::Unauthorized, d);
    let Some(value) = headers.get(axum::http::header::AUTHORIZATION) else {
        return Ok(Login::None);
    };
    let value = value
        .to_str()
        .map_err(|_| unauthorized("the Authorization header is not text"))?;
    let (scheme, rest) = value.trim().split_once(' ').unwrap_or((value, ""));
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        return match app.auth.check(rest).await {
            Some(_) => Ok(Login::Token(rest.to_string())),
            None => Err(unauthorized(
                "the token is not valid: it expired, was cleared or was never issued; log in again",
            )),
        };
    }
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(rest)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or_else(|| {
                unauthorized("the Basic credentials are not base64 of 'user:password'")
            })?;
        let (user, password) = decoded
            .split_once(':')
            .ok_or_else(|| unauthorized("the Basic credentials are not 'user:password'"))?;
        let identity = app.auth.password(peer.ip(), user, password).await?;
        return Ok(Login::Verified(identity));
    }
    Err(unauthorized(
        "unsupported Authorization scheme: use Basic (user name and password) or Bearer (a token)",
    ))
}
