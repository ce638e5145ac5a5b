//! REST: `PUT /<namespace>/<name>` with a JSON body (GET and POST too).
//! The reply body is `{"args": …}`; the HTTP status tells the class of
//! failure. Every request logs in by itself: HTTP Basic, or
//! `Authorization: Bearer <token>` from `rpc/auth`; a 401 carries
//! `WWW-Authenticate` so that curl and browsers know to ask.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use hyve_proto::{ErrorCode, ProtocolError, Request, RequestHead};

use crate::api::{self, Outcome};
use crate::session::{login_from_headers, Session};
use crate::App;

pub fn reply(outcome: &Outcome) -> Response {
    let body = match outcome {
        Outcome::Ok(v) | Outcome::ActionError { args: v, .. } => {
            args_body(&hyve_proto::envelope::to_json(v))
        }
        Outcome::Json(text) => args_body(text),
        Outcome::Protocol(p) => args_body(&hyve_proto::envelope::to_json(&p.args())),
        Outcome::NoReply => args_body("{}"),
    };
    let status = StatusCode::from_u16(outcome.http_status()).unwrap_or(StatusCode::OK);
    let mut r = (status, [(header::CONTENT_TYPE, "application/json")], body).into_response();
    if status == StatusCode::UNAUTHORIZED {
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Basic realm=\"hyve\", charset=\"UTF-8\""),
        );
    }
    r
}

/// `{"args":<args>}`
fn args_body(args: &str) -> String {
    let mut s = String::with_capacity(args.len() + 9);
    s.push_str("{\"args\":");
    s.push_str(args);
    s.push('}');
    s
}

fn protocol(code: ErrorCode, detail: String) -> Response {
    reply(&Outcome::Protocol(ProtocolError::new(code, detail)))
}

/// The body, or the 413 that says how large it may be, or the 408 of a
/// body that does not arrive within the client timeout (a client sending
/// a byte now and then would otherwise hold its connection for ever).
async fn read_body(
    body: Body,
    headers: &HeaderMap,
    max: usize,
    timeout: std::time::Duration,
) -> Result<Bytes, Response> {
    let too_large = || {
        protocol(
            ErrorCode::PayloadTooLarge,
            format!("the request body is larger than this server accepts ({max} bytes)"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return Err(too_large());
    }
    match tokio::time::timeout(timeout, axum::body::to_bytes(body, max)).await {
        Ok(r) => r.map_err(|_| too_large()),
        Err(_) => {
            let mut r = protocol(
                ErrorCode::RequestTimeout,
                format!(
                    "the request body did not arrive within {} s",
                    timeout.as_secs()
                ),
            );
            r.headers_mut().insert(
                header::CONNECTION,
                header::HeaderValue::from_static("close"),
            );
            Err(r)
        }
    }
}

/// Every path lands here; `/<namespace>/<name>` is routed, the rest is 404.
pub async fn handle(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    if !matches!(method, Method::GET | Method::PUT | Method::POST) {
        let mut r = protocol(
            ErrorCode::BadRequest,
            format!("method {method} is not supported: use PUT, GET or POST"),
        );
        *r.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
        return r;
    }
    let body = match read_body(
        body,
        &headers,
        app.net.max_body_bytes,
        app.net.client_timeout,
    )
    .await
    {
        Ok(b) => b,
        Err(r) => return r,
    };
    let login = match login_from_headers(&app, peer, &headers).await {
        Ok(l) => l,
        Err(e) => return reply(&Outcome::Protocol(e)),
    };
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
    let session = Session::rest(peer, login);
    let outcome = api::dispatch(&app, &session, &req).await;
    reply(&outcome)
}
