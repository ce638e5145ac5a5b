//! From a parsed request to its outcome, the same for WebSocket and REST.
//!
//! `dispatch` routes on the lower-cased `namespace/name`; each class is one
//! module. Transports only parse frames and render the [`Outcome`].

use serde_json::{json, Value};

use hyve_engine::Error;
use hyve_proto::{ErrorCode, ProtocolError, Request};

use crate::session::Session;
use crate::App;

pub mod dispatcher;
pub mod events;
pub mod iohyve;

/// What a request comes to.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Success: the reply's `args`.
    Ok(Value),
    /// A known action that failed: answered in band (`name` stays
    /// `"response"`) with `{"<action>": {"error": …}}`; REST uses `status`.
    ActionError { args: Value, status: u16 },
    /// An error frame (`error/error`).
    Protocol(ProtocolError),
}

impl Outcome {
    pub fn action_error(action: &str, err: &Error) -> Outcome {
        Outcome::ActionError {
            args: json!({ action: { "error": err.message } }),
            status: err.kind.http_status(),
        }
    }

    /// The HTTP status of this outcome.
    pub fn http_status(&self) -> u16 {
        match self {
            Outcome::Ok(_) => 200,
            Outcome::ActionError { status, .. } => *status,
            Outcome::Protocol(p) => p.code.http_status(),
        }
    }
}

/// Routes one request to its class.
pub async fn dispatch(app: &App, session: &Session, req: &Request) -> Outcome {
    match req.route().as_str() {
        "sysadm/iohyve" => iohyve::handle(app, &req.args).await,
        "events/subscribe" => events::handle(app, session, "subscribe", &req.args).await,
        "events/unsubscribe" => events::handle(app, session, "unsubscribe", &req.args).await,
        "rpc/dispatcher" => dispatcher::handle(app, &req.args).await,
        other => Outcome::Protocol(ProtocolError::new(
            ErrorCode::NotFound,
            format!(
                "no class {:?} on this server",
                hyve_proto::iohyve::truncate(other, 64)
            ),
        )),
    }
}
