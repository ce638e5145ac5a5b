//! From a parsed request to its outcome, the same for WebSocket and REST.
//!
//! `dispatch` is the one gate: `rpc/identify` and `rpc/auth*` are answered
//! to anyone; everything else needs a session that is logged in (401
//! otherwise), then routes on the lower-cased `namespace/name` to its class
//! module. What a limited user may do is each class's to say (`iohyve`
//! refuses its changing actions with 403). Transports only parse frames and
//! render the [`Outcome`].

use serde_json::{json, Value};

use hyve_engine::Error;
use hyve_proto::{ErrorCode, ProtocolError, Request};

use crate::auth::{Identity, Role};
use crate::session::{Session, Transport};
use crate::App;

pub mod dispatcher;
pub mod events;
pub mod host;
pub mod iohyve;
pub mod rpc;

/// What a request comes to.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Success: the reply's `args`.
    Ok(Value),
    /// Success whose `args` are already JSON text (listvms, rendered
    /// straight from the inventory rather than built as a `Value`).
    Json(String),
    /// A known action that failed: answered in band (`name` stays
    /// `"response"`) with `{"<action>": {"error": …}}`; REST uses `status`.
    ActionError { args: Value, status: u16 },
    /// An error frame (`error/error`).
    Protocol(ProtocolError),
    /// No reply at all: `rpc/auth_clear`, as the original (REST still
    /// answers, with empty args).
    NoReply,
}

impl Outcome {
    pub fn action_error(action: &str, err: &Error) -> Outcome {
        Outcome::ActionError {
            args: json!({ action: { "error": err.message } }),
            status: err.kind.http_status(),
        }
    }

    pub fn protocol(code: ErrorCode, detail: impl Into<String>) -> Outcome {
        Outcome::Protocol(ProtocolError::new(code, detail))
    }

    /// The HTTP status of this outcome.
    pub fn http_status(&self) -> u16 {
        match self {
            Outcome::Ok(_) | Outcome::Json(_) | Outcome::NoReply => 200,
            Outcome::ActionError { status, .. } => *status,
            Outcome::Protocol(p) => p.code.http_status(),
        }
    }
}

/// A class this server answers after login, and what each role may do
/// with it; `rpc/query` lists these (the real SysAdm GUI shows its iohyve
/// page only when `sysadm/iohyve`, `sysadm/network` and `sysadm/zfs` are
/// all there).
pub struct Class {
    pub route: &'static str,
    pub full: &'static str,
    pub limited: &'static str,
}

pub const CLASSES: &[Class] = &[
    Class {
        route: "events/subscribe",
        full: "read",
        limited: "read",
    },
    Class {
        route: "rpc/dispatcher",
        full: "read/write",
        limited: "read",
    },
    Class {
        route: "rpc/settings",
        full: "read/write",
        limited: "read/write",
    },
    Class {
        route: "sysadm/iohyve",
        full: "read/write",
        limited: "read",
    },
    Class {
        route: "sysadm/network",
        full: "read",
        limited: "read",
    },
    Class {
        route: "sysadm/zfs",
        full: "read",
        limited: "read",
    },
];

/// The 401 for a request that needs a login, saying how to log in on the
/// transport it came by.
pub fn not_logged_in(transport: Transport) -> ProtocolError {
    ProtocolError::new(
        ErrorCode::Unauthorized,
        match transport {
            Transport::WebSocket => {
                "log in first: send rpc/auth with a user name and password (or rpc/auth_token with a token) on this connection"
            }
            Transport::Rest => {
                "log in first: send HTTP Basic credentials or an 'Authorization: Bearer <token>' header with every request"
            }
        },
    )
}

/// The 403 for a limited user's changing request.
pub fn forbidden(who: &Identity, what: &str) -> Outcome {
    debug_assert_eq!(who.role, Role::Limited);
    Outcome::protocol(
        ErrorCode::Forbidden,
        format!("user '{}' has read-only access: {what}", who.user),
    )
}

/// Routes one request to its class.
pub async fn dispatch(app: &App, session: &Session, req: &Request) -> Outcome {
    let route = req.route();
    if rpc::is_login(&route) {
        return rpc::login(app, session, req).await;
    }
    let Some(who) = session.identity(app).await else {
        return Outcome::Protocol(not_logged_in(session.transport));
    };
    match route.as_str() {
        "rpc/query" => rpc::query(&who),
        "rpc/settings" => rpc::settings(app, &who, &req.args),
        "sysadm/iohyve" => iohyve::handle(app, &who, &req.args).await,
        "events/subscribe" => events::handle(app, session, "subscribe", &req.args).await,
        "events/unsubscribe" => events::handle(app, session, "unsubscribe", &req.args).await,
        "rpc/dispatcher" => dispatcher::handle(app, &who, &req.args).await,
        "sysadm/network" => host::network(&req.args).await,
        "sysadm/zfs" => host::zfs(app, &req.args).await,
        other => Outcome::protocol(
            ErrorCode::NotFound,
            format!(
                "no class {:?} on this server",
                hyve_proto::iohyve::truncate(other, 64)
            ),
        ),
    }
}
