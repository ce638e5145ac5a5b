//! REST: `PUT /<namespace>/<name>` with a JSON body (GET and POST too).
//! The reply body is `{"args": …}`; the HTTP status tells the class of
//! failure.

use std::sync::Arc;

use axum::body::Bytes;
use std::net::SocketAddr;

use axum::extract::{ConnectInfo, State};
use axum::http::{header, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use hyve_proto::{ErrorCode, ProtocolError, Request, RequestHead};

use crate::api::{self, Outcome};
use crate::session::Session;
use crate::App;

fn reply(outcome: &Outcome) -> Response {
    let args = match outcome {
        Outcome::Ok(v) => v.clone(),
        Outcome::ActionError { args, .. } => args.clone(),
        Outcome::Protocol(p) => p.args(),
    };
    let status = StatusCode::from_u16(outcome.http_status()).unwrap_or(StatusCode::OK);
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        json!({ "args": args }).to_string(),
    )
        .into_response()
}

fn protocol(code: ErrorCode, detail: String) -> Response {
    reply(&Outcome::Protocol(ProtocolError::new(code, detail)))
}

/// Every path lands here; `/<namespace>/<name>` is routed, the rest is 404.
pub async fn handle(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    method: Method,
    uri: Uri,
    body: Bytes,
) -> Response {
    if !matches!(method, Method::GET | Method::PUT | Method::POST) {
        let mut r = protocol(
            ErrorCode::BadRequest,
            format!("method {method} is not supported: use PUT, GET or POST"),
        );
        *r.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
        return r;
    }
    let parts: Vec<&str> = uri.path().split('/').filter(|s| !s.is_empty()).collect();
    let [namespace, name] = parts[..] else {
        return protocol(
            ErrorCode::NotFound,
            "requests go to /<namespace>/<name>, such as PUT /sysadm/iohyve".into(),
        );
    };
    let args = if body.iter().all(u8::is_ascii_whitespace) {
        json!({})
    } else {
        match serde_json::from_slice::<Value>(&body) {
            Ok(Value::Object(mut obj)) => obj.remove("args").unwrap_or(Value::Object(obj)),
            Ok(other) => {
                return protocol(
                    ErrorCode::BadRequest,
                    format!(
                        "the body must be a JSON object, not {}",
                        hyve_proto::envelope::json_type_name(&other)
                    ),
                )
            }
            Err(e) => return protocol(ErrorCode::BadRequest, format!("malformed JSON: {e}")),
        }
    };
    let req = Request {
        head: RequestHead {
            namespace: namespace.to_string(),
            name: name.to_string(),
            id: None,
        },
        args,
    };
    let session = Session::rest(peer);
    let outcome = api::dispatch(&app, &session, &req).await;
    reply(&outcome)
}
