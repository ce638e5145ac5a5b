//! The request envelope and the reply frames (PROTOCOL.md section 2).

use serde_json::{Map, Value};

/// The part of a request that its reply echoes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RequestHead {
    /// The namespace as the client sent it (routing is case-insensitive, the
    /// reply echoes the original spelling).
    pub namespace: String,
    /// The class name as sent.
    pub name: String,
    /// The request id; `None` when absent or empty.
    pub id: Option<String>,
}

/// A parsed request: head plus arguments.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub head: RequestHead,
    /// `args` as sent, or the whole object when the request has no `args` key.
    pub args: Value,
}

impl Request {
    /// The routing key: lower-cased `namespace/name`.
    pub fn route(&self) -> String {
        format!(
            "{}/{}",
            self.head.namespace.to_ascii_lowercase(),
            self.head.name.to_ascii_lowercase()
        )
    }
}

/// Protocol error codes. The wire carries the code as a string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    BadRequest,
    Unauthorized,
    Forbidden,
    NotFound,
    RequestTimeout,
    PayloadTooLarge,
    TooManyRequests,
    ServiceUnavailable,
}

impl ErrorCode {
    pub fn code(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "400",
            ErrorCode::Unauthorized => "401",
            ErrorCode::Forbidden => "403",
            ErrorCode::NotFound => "404",
            ErrorCode::RequestTimeout => "408",
            ErrorCode::PayloadTooLarge => "413",
            ErrorCode::TooManyRequests => "429",
            ErrorCode::ServiceUnavailable => "503",
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "Bad Request",
            ErrorCode::Unauthorized => "Unauthorized",
            ErrorCode::Forbidden => "Forbidden",
            ErrorCode::NotFound => "Not Found",
            ErrorCode::RequestTimeout => "Request Timeout",
            ErrorCode::PayloadTooLarge => "Payload Too Large",
            ErrorCode::TooManyRequests => "Too Many Requests",
            ErrorCode::ServiceUnavailable => "Service Unavailable",
        }
    }

    /// The HTTP status a REST reply carries for this error.
    pub fn http_status(self) -> u16 {
        self.code().parse().expect("codes are numeric")
    }
}

/// A protocol-level failure: answered with the `error/error` frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtocolError {
    pub code: ErrorCode,
    /// A human sentence saying what was wrong, sent as `args.detail`.
    pub detail: Option<String>,
}

impl ProtocolError {
    pub fn new(code: ErrorCode, detail: impl Into<String>) -> Self {
        ProtocolError {
            code,
            detail: Some(detail.into()),
        }
    }

    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(ErrorCode::BadRequest, detail)
    }

    /// The `args` object of the error frame: `{"code","message"[,"detail"]}`.
    pub fn args(&self) -> Value {
        let mut m = Map::new();
        m.insert("code".into(), Value::from(self.code.code()));
        m.insert("message".into(), Value::from(self.code.message()));
        if let Some(d) = &self.detail {
            m.insert("detail".into(), Value::from(d.as_str()));
        }
        Value::Object(m)
    }
}

impl std::fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.detail {
            Some(d) => write!(f, "{} {}: {}", self.code.code(), self.code.message(), d),
            None => write!(f, "{} {}", self.code.code(), self.code.message()),
        }
    }
}

impl std::error::Error for ProtocolError {}

/// Reads the id the way clients use it: a string as is, a number as its
/// decimal text; anything else (or an empty string) counts as no id.
fn read_id(v: Option<&Value>) -> Option<String> {
    match v {
        Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    }
}

fn read_required(obj: &Map<String, Value>, key: &str) -> Result<String, String> {
    match obj.get(key) {
        None => Err(format!("the request has no '{key}'")),
        Some(Value::String(s)) if s.trim().is_empty() => Err(format!("'{key}' is empty")),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(other) => Err(format!(
            "'{key}' must be a string, not {}",
            json_type_name(other)
        )),
    }
}

/// The JSON type of a value, in words, for error sentences.
pub fn json_type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Parses one WebSocket frame's text into a request.
///
/// On failure the error carries the request id when one could be read, so the
/// client can still match the error frame to its request.
pub fn parse_request(text: &str) -> Result<Request, (Option<String>, ProtocolError)> {
    let value: Value = serde_json::from_str(text).map_err(|e| {
        (
            None,
            ProtocolError::bad_request(format!("malformed JSON: {e}")),
        )
    })?;
    request_from_value(value)
}

/// Builds a request from an already parsed JSON value (see [`parse_request`]).
pub fn request_from_value(value: Value) -> Result<Request, (Option<String>, ProtocolError)> {
    let Value::Object(mut obj) = value else {
        return Err((
            None,
            ProtocolError::bad_request(format!(
                "a request must be a JSON object, not {}",
                json_type_name(&value)
            )),
        ));
    };
    let id = read_id(obj.get("id"));
    let namespace = read_required(&obj, "namespace").map_err(|e| {
        (
            id.clone(),
            ProtocolError::bad_request(format!("missing namespace: {e}")),
        )
    })?;
    let name = read_required(&obj, "name").map_err(|e| {
        (
            id.clone(),
            ProtocolError::bad_request(format!("missing name: {e}")),
        )
    })?;
    let args = match obj.remove("args") {
        Some(a) => a,
        None => Value::Object(obj),
    };
    Ok(Request {
        head: RequestHead {
            namespace,
            name,
            id,
        },
        args,
    })
}

/// Renders a success reply:
/// `{"args":…,"id":…,"name":"response","namespace":<as sent>}`.
///
/// Like the original server, a request without an id gets its own `name`
/// where `"response"` would go, and an empty id.
pub fn render_response(head: &RequestHead, args: Value) -> String {
    render_response_json(head, &to_json(&args))
}

/// [`render_response`] for `args` already rendered as JSON text (a reply
/// too large to be worth building as a `Value` first, such as listvms).
pub fn render_response_json(head: &RequestHead, args: &str) -> String {
    let name = if head.id.is_some() {
        "response"
    } else {
        head.name.as_str()
    };
    frame(
        args,
        head.id.as_deref().unwrap_or(""),
        name,
        &head.namespace,
    )
}

/// Renders a protocol error frame: `name` and `namespace` are both `"error"`.
pub fn render_error(id: Option<&str>, err: &ProtocolError) -> String {
    frame(&to_json(&err.args()), id.unwrap_or(""), "error", "error")
}

/// Compact JSON text of a value (straight into a buffer, not through
/// `Display`).
pub fn to_json(v: &Value) -> String {
    serde_json::to_string(v).expect("a JSON value serializes")
}

/// Appends a JSON string literal, escaped as serde_json escapes it.
pub fn json_str(out: &mut Vec<u8>, s: &str) {
    serde_json::to_writer(out, s).expect("writing to memory cannot fail");
}

/// `{"args":<args>,"id":…,"name":…,"namespace":…}`: the frame every reply,
/// error and event is, its keys sorted as everywhere else, written
/// directly instead of through an envelope `Value`.
pub fn frame(args: &str, id: &str, name: &str, namespace: &str) -> String {
    let mut out = Vec::with_capacity(args.len() + id.len() + name.len() + namespace.len() + 48);
    out.extend_from_slice(b"{\"args\":");
    out.extend_from_slice(args.as_bytes());
    out.extend_from_slice(b",\"id\":");
    json_str(&mut out, id);
    out.extend_from_slice(b",\"name\":");
    json_str(&mut out, name);
    out.extend_from_slice(b",\"namespace\":");
    json_str(&mut out, namespace);
    out.push(b'}');
    String::from_utf8(out).expect("JSON text is UTF-8")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keys_are_sorted_and_compact() {
        // Inserted out of order on purpose: if a dependency turned on
        // serde_json's preserve_order, this would keep insertion order.
        let mut m = Map::new();
        m.insert("zeta".into(), json!(1));
        m.insert("alpha".into(), json!({"y": 1, "b": 2}));
        assert_eq!(
            Value::Object(m).to_string(),
            r#"{"alpha":{"b":2,"y":1},"zeta":1}"#
        );
    }

    #[test]
    fn parses_a_full_envelope() {
        let r = parse_request(
            r#"{"namespace":"SysAdm","name":"iohyve","id":"fooid","args":{"action":"listvms"}}"#,
        )
        .unwrap();
        assert_eq!(r.head.namespace, "SysAdm");
        assert_eq!(r.route(), "sysadm/iohyve");
        assert_eq!(r.head.id.as_deref(), Some("fooid"));
        assert_eq!(r.args, json!({"action": "listvms"}));
    }

    #[test]
    fn without_args_the_whole_object_is_the_args() {
        let r =
            parse_request(r#"{"namespace":"sysadm","name":"iohyve","action":"listvms"}"#).unwrap();
        assert_eq!(r.args["action"], "listvms");
        assert_eq!(r.head.id, None);
    }

    #[test]
    fn numeric_ids_are_echoed_as_text() {
        let r = parse_request(r#"{"namespace":"a","name":"b","id":7,"args":{}}"#).unwrap();
        assert_eq!(r.head.id.as_deref(), Some("7"));
    }

    #[test]
    fn envelope_errors_are_bad_requests() {
        for text in [
            "{",
            "[]",
            "\"x\"",
            r#"{"name":"iohyve","id":"1"}"#,
            r#"{"namespace":"","name":"iohyve"}"#,
            r#"{"namespace":"sysadm","id":"1"}"#,
            r#"{"namespace":5,"name":"iohyve"}"#,
        ] {
            let (_, e) = parse_request(text).unwrap_err();
            assert_eq!(e.code, ErrorCode::BadRequest, "{text}");
            assert!(e.detail.is_some());
        }
        let (id, _) = parse_request(r#"{"name":"iohyve","id":"abc"}"#).unwrap_err();
        assert_eq!(id.as_deref(), Some("abc"));
    }

    #[test]
    fn deeply_nested_json_is_refused_not_a_stack_overflow() {
        let text = "[".repeat(100_000);
        assert!(parse_request(&text).is_err());
    }

    #[test]
    fn response_shape() {
        let head = RequestHead {
            namespace: "sysadm".into(),
            name: "iohyve".into(),
            id: Some("fooid".into()),
        };
        assert_eq!(
            render_response(&head, json!({"version": {"version": "x"}})),
            r#"{"args":{"version":{"version":"x"}},"id":"fooid","name":"response","namespace":"sysadm"}"#
        );
        let head = RequestHead { id: None, ..head };
        assert_eq!(
            render_response(&head, json!([])),
            r#"{"args":[],"id":"","name":"iohyve","namespace":"sysadm"}"#
        );
    }

    #[test]
    fn error_shape() {
        let e = ProtocolError {
            code: ErrorCode::Unauthorized,
            detail: None,
        };
        assert_eq!(
            render_error(Some("x"), &e),
            r#"{"args":{"code":"401","message":"Unauthorized"},"id":"x","name":"error","namespace":"error"}"#
        );
        assert_eq!(ErrorCode::NotFound.http_status(), 404);
    }
}
