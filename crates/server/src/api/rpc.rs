//! The `rpc` namespace (PROTOCOL.md section 3): identify, the logins
//! (`auth`, `auth_token`, `auth_ssl`, `auth_clear`), `query` and `settings`.
//!
//! Every login first drops the session's current one, as the original
//! did: a failed `auth` leaves the connection logged out. A token replaced
//! this way stays valid for its other users (the CLI shares one token
//! between its runs); only `auth_clear` ends a token.

use serde_json::{json, Map, Value};

use hyve_proto::{ErrorCode, ProtocolError, Request};

use super::{forbidden, Outcome, CLASSES};
use crate::auth::{Grant, Identity, Role};
use crate::session::{Login, Session};
use crate::App;

/// The names answered before login, in arrival order on a WebSocket.
pub fn is_login(route: &str) -> bool {
    matches!(
        route,
        "rpc/identify" | "rpc/auth" | "rpc/auth_token" | "rpc/auth_clear" | "rpc/auth_ssl"
    )
}

fn unauthorized(detail: impl Into<String>) -> Outcome {
    Outcome::protocol(ErrorCode::Unauthorized, detail)
}

/// The reply to a successful login: `["<token>", <seconds>]`.
fn granted(session: &Session, grant: Grant) -> Outcome {
    session.set_login(Login::Token(grant.token.clone()));
    Outcome::Ok(json!([grant.token, grant.lifetime_secs]))
}

fn string_arg<'a>(args: &'a Value, key: &str) -> Option<&'a str> {
    args.get(key).and_then(Value::as_str)
}

/// This host's name, as `rpc/identify` reports it.
pub fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".into())
}

/// identify and the auth family.
pub async fn login(app: &App, session: &Session, req: &Request) -> Outcome {
    let args = &req.args;
    let peer = session.peer.ip();
    match req.route().as_str() {
        "rpc/identify" => Outcome::Ok(json!({"hostname": hostname(), "type": "server"})),
        "rpc/auth_clear" => {
            if let Login::Token(t) = session.login() {
                app.auth.revoke(&t);
            }
            session.set_login(Login::None);
            Outcome::NoReply
        }
        "rpc/auth" => {
            session.set_login(Login::None);
            let (Some(user), Some(password)) =
                (string_arg(args, "username"), string_arg(args, "password"))
            else {
                return unauthorized(
                    "rpc/auth takes {\"username\": \"<name>\", \"password\": \"<password>\"}",
                );
            };
            match app.auth.password(peer, user, password).await {
                Ok(identity) => granted(session, app.auth.issue(identity)),
                Err(e) => Outcome::Protocol(e),
            }
        }
        "rpc/auth_token" => {
            session.set_login(Login::None);
            let Some(token) = string_arg(args, "token") else {
                return unauthorized("rpc/auth_token takes {\"token\": \"<token>\"}");
            };
            match app.auth.resume(token).await {
                Ok(grant) => granted(session, grant),
                Err(e) => Outcome::Protocol(e),
            }
        }
        "rpc/auth_ssl" => {
            session.set_login(Login::None);
            match string_arg(args, "encrypted_string") {
                None => match app.auth.challenge() {
                    Ok(s) => Outcome::Ok(json!({ "test_string": s })),
                    Err(e) => Outcome::Protocol(e),
                },
                Some(enc) => match app.auth.signature(peer, enc).await {
                    Ok(identity) => granted(session, app.auth.issue(identity)),
                    Err(e) => Outcome::Protocol(e),
                },
            }
        }
        other => unreachable!("{other} is not a login route"),
    }
}

/// Every class this server answers, with the access the user has to it.
pub fn query(who: &Identity) -> Outcome {
    let m: Map<String, Value> = CLASSES
        .iter()
        .map(|c| {
            let access = match who.role {
                Role::Full => c.full,
                Role::Limited => c.limited,
            };
            (c.route.to_string(), Value::from(access))
        })
        .collect();
    Outcome::Ok(Value::Object(m))
}

fn bad(detail: impl Into<String>) -> Outcome {
    Outcome::Protocol(ProtocolError::bad_request(detail))
}

/// The keys of `rpc/auth_ssl`: register, list, revoke, checksums.
pub fn settings(app: &App, who: &Identity, args: &Value) -> Outcome {
    const ACTIONS: &str =
        "register_ssl_cert, list_ssl_certs, revoke_ssl_cert or list_ssl_checksums";
    let Some(action) = string_arg(args, "action") else {
        return bad(format!(
            "rpc/settings takes an object with an \"action\": {ACTIONS}"
        ));
    };
    let keys = app.auth.keys();
    let opt = |k: &str| string_arg(args, k).unwrap_or("");
    match action {
        "register_ssl_cert" => {
            let Some(pub_key) = string_arg(args, "pub_key") else {
                return bad(
                    "register_ssl_cert needs \"pub_key\": the base64 encoding of a PEM public key",
                );
            };
            match keys.register(&who.user, pub_key, opt("nickname"), opt("email")) {
                Ok(()) => Outcome::Ok(json!({})),
                Err(e) => bad(e),
            }
        }
        "list_ssl_certs" => {
            let only = (who.role != Role::Full).then_some(who.user.as_str());
            Outcome::Ok(json!(keys.list(only)))
        }
        "list_ssl_checksums" => Outcome::Ok(json!({ "md5_keys": keys.checksums() })),
        "revoke_ssl_cert" => {
            let Some(pub_key) = string_arg(args, "pub_key") else {
                return bad("revoke_ssl_cert needs \"pub_key\": the key as it was registered");
            };
            let user = string_arg(args, "user").unwrap_or(&who.user);
            if user != who.user && !who.may_write() {
                return forbidden(who, "it may revoke its own keys only");
            }
            match keys.revoke(user, pub_key) {
                Ok(()) => Outcome::Ok(json!({})),
                Err(e) => bad(e),
            }
        }
        other => bad(format!(
            "rpc/settings has no action {:?}: use {ACTIONS}",
            hyve_proto::iohyve::truncate(other, 40)
        )),
    }
}
