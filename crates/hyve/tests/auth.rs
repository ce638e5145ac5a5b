//! Logins and what they allow: the real client's flow over wss://, every
//! way a login fails (each the right error, nothing changed on disk),
//! tokens (sliding, expired, cleared), REST Basic and Bearer, limited users,
//! the blacklist and the WebSocket's login and idle timeouts.

mod common;

use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

/// Asserts `v` is the error frame with `code` (and the request's id).
fn assert_error(v: &Value, code: &str, id: &str) {
    assert_eq!(v["name"], "error", "{v}");
    assert_eq!(v["namespace"], "error", "{v}");
    assert_eq!(v["args"]["code"], code, "{v}");
    assert_eq!(v["id"], id, "{v}");
    assert!(
        v["args"]["detail"].as_str().is_some_and(|d| !d.is_empty()),
        "a sentence says why: {v}"
    );
}

fn frame(ns: &str, name: &str, id: &str, args: Value) -> String {
    json!({"namespace": ns, "name": name, "id": id, "args": args}).to_string()
}

/// The next frame that is not a control frame; `None` on close.
async fn next_frame(ws: &mut RawWs) -> Option<Message> {
    loop {
        let m = tokio::time::timeout(std::time::Duration::from_secs(60), ws.next())
            .await
            .expect("nothing within 60 s")?;
        match m {
            Ok(Message::Ping(_)) | Ok(Message::Pong(_)) => continue,
            Ok(m) => return Some(m),
            Err(_) => return None,
        }
    }
}

#[tokio::test]
async fn the_real_client_flow_over_wss() {
    let dir = data_dir();
    let server = TestServer::start(dir.path());
    assert!(
        server.ws.starts_with("wss://"),
        "TLS by default: {}",
        server.ws
    );
    let mut ws = server.raw_ws_anonymous("/").await;

    let r = roundtrip(&mut ws, &frame("rpc", "identify", "i1", json!({}))).await;
    assert_eq!(r["name"], "response");
    assert_eq!(r["args"]["type"], "server");
    assert!(r["args"]["hostname"]
        .as_str()
        .is_some_and(|h| !h.is_empty()));

    // Before login, anything else is the 401 error object.
    let r = roundtrip(
        &mut ws,
        &frame("sysadm", "iohyve", "q0", json!({"action": "listvms"})),
    )
    .await;
    assert_error(&r, "401", "q0");
    let r = roundtrip(
        &mut ws,
        &frame("events", "subscribe", "s0", json!("dispatcher")),
    )
    .await;
    assert_error(&r, "401", "s0");

    let r = roundtrip(
        &mut ws,
        &frame(
            "rpc",
            "auth",
            "a1",
            json!({"username": USER, "password": PASSWORD}),
        ),
    )
    .await;
    assert_eq!(r["name"], "response", "{r}");
    let token = r["args"][0].as_str().expect("a token");
    assert!(token.len() >= 22, "at least 128 bits: {token}");
    assert_eq!(r["args"][1], 900, "seconds the token lives");

    // Past the login gate now (the events class itself is another module's).
    let r = roundtrip(
        &mut ws,
        &frame("events", "subscribe", "s1", json!("dispatcher")),
    )
    .await;
    assert_eq!(
        r,
        json!({"args": {"subscribe": "dispatcher"}, "id": "s1", "name": "response", "namespace": "events"})
    );

    let r = roundtrip(
        &mut ws,
        &frame("sysadm", "iohyve", "q1", json!({"action": "listvms"})),
    )
    .await;
    assert_eq!(
        r,
        json!({"args": {"listvms": {}}, "id": "q1", "name": "response", "namespace": "sysadm"})
    );
}

#[tokio::test]
async fn auth_and_a_request_back_to_back() {
    // The reference test client does not wait for auth's reply: auth must be
    // handled before the next frame is read.
    let dir = data_dir();
    let server = TestServer::start(dir.path());
    let mut ws = server.raw_ws_anonymous("/").await;
    for _ in 0..3 {
        ws.send(Message::Text(
            frame(
                "rpc",
                "auth",
                "a",
                json!({"username": USER, "password": PASSWORD}),
            )
            .into(),
        ))
        .await
        .unwrap();
        ws.send(Message::Text(
            frame("sysadm", "iohyve", "v", json!({"action": "version"})).into(),
        ))
        .await
        .unwrap();
        let first = next_json(&mut ws).await;
        let second = next_json(&mut ws).await;
        assert_eq!(first["id"], "a", "auth is answered first: {first}");
        assert!(first["args"][0].is_string(), "{first}");
        assert_eq!(second["id"], "v");
        assert_eq!(second["name"], "response", "{second}");
        assert!(second["args"]["version"]["version"].is_string(), "{second}");
    }
}

#[tokio::test]
async fn failed_logins_are_401_and_change_nothing() {
    let dir = data_dir();
    // More failures than the default five happen here: no block wanted.
    let server = TestServer::start_with_config(dir.path(), "[auth]\nmax_failures = 20\n");
    setup(&server.client().await).await;
    let before = snapshot(dir.path());
    let mut ws = server.raw_ws_anonymous("/").await;
    let cases = [
        (
            "wrong password",
            json!({"username": USER, "password": "nope"}),
        ),
        (
            "unknown user",
            json!({"username": "mallory", "password": PASSWORD}),
        ),
        ("no password", json!({"username": USER})),
        (
            "hostile name",
            json!({"username": "-rf /", "password": "x"}),
        ),
    ];
    for (what, args) in cases {
        let r = roundtrip(&mut ws, &frame("rpc", "auth", what, args)).await;
        assert_error(&r, "401", what);
        // Still not logged in.
        let r = roundtrip(
            &mut ws,
            &frame(
                "sysadm",
                "iohyve",
                "c",
                json!({"action": "create", "name": "x", "size": "1G"}),
            ),
        )
        .await;
        assert_error(&r, "401", "c");
    }
    // Wrong password and unknown user read the same: no user enumeration.
    let a = roundtrip(
        &mut ws,
        &frame(
            "rpc",
            "auth",
            "1",
            json!({"username": USER, "password": "x"}),
        ),
    )
    .await;
    let b = roundtrip(
        &mut ws,
        &frame(
            "rpc",
            "auth",
            "1",
            json!({"username": "nobody", "password": "x"}),
        ),
    )
    .await;
    assert_eq!(a["args"], b["args"]);
    assert_eq!(a["args"]["detail"], "wrong user name or password");
    assert_unchanged(&before, &snapshot(dir.path()), "failed logins");
}

#[tokio::test]
async fn tokens_resume_clear_and_are_refused_after() {
    let dir = data_dir();
    let server = TestServer::start(dir.path());
    let c = server.client().await;
    let (token, secs) = c.token().unwrap();
    assert_eq!(secs, 900);

    // Another connection resumes with the token.
    let mut ws = server.raw_ws_anonymous("/").await;
    let r = roundtrip(
        &mut ws,
        &frame("rpc", "auth_token", "t", json!({ "token": token })),
    )
    .await;
    assert_eq!(r["args"], json!([token, 900]));
    let r = roundtrip(
        &mut ws,
        &frame("sysadm", "iohyve", "l", json!({"action": "listisos"})),
    )
    .await;
    assert_eq!(r["name"], "response", "{r}");

    // A token that was never issued.
    let mut other = server.raw_ws_anonymous("/").await;
    let r = roundtrip(
        &mut other,
        &frame("rpc", "auth_token", "x", json!({"token": "A".repeat(40)})),
    )
    .await;
    assert_error(&r, "401", "x");

    // auth_clear: no reply, and the token is over everywhere.
    ws.send(Message::Text(
        frame("rpc", "auth_clear", "clr", json!({})).into(),
    ))
    .await
    .unwrap();
    let r = roundtrip(
        &mut ws,
        &frame("sysadm", "iohyve", "l2", json!({"action": "listisos"})),
    )
    .await;
    assert_error(&r, "401", "l2");
    let e = c.iohyve("listvms", json!({})).await.unwrap_err();
    assert!(e.to_string().contains("401"), "{e}");
    let r = roundtrip(
        &mut other,
        &frame("rpc", "auth_token", "y", json!({ "token": token })),
    )
    .await;
    assert_error(&r, "401", "y");
    let (status, body) = {
        let r = server
            .http()
            .put(format!("{}/sysadm/iohyve", server.rest))
            .bearer_auth(&token)
            .body(r#"{"action":"listvms"}"#)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json::<Value>().await.unwrap())
    };
    assert_eq!(status, 401, "{body}");
}

#[tokio::test]
async fn an_expired_token_is_refused() {
    let dir = data_dir();
    let server = TestServer::start_with_config(dir.path(), "[auth]\ntoken_lifetime_secs = 2\n");
    let c = server.client().await;
    let (token, secs) = c.token().unwrap();
    assert_eq!(secs, 2);
    setup(&c).await;
    let before = snapshot(dir.path());
    // Unused for longer than its lifetime.
    tokio::time::sleep(std::time::Duration::from_secs(4)).await;
    let e = c
        .iohyve("create", json!({"name": "late", "size": "1G"}))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("401"), "{e}");
    let mut ws = server.raw_ws_anonymous("/").await;
    let r = roundtrip(
        &mut ws,
        &frame("rpc", "auth_token", "t", json!({ "token": token })),
    )
    .await;
    assert_error(&r, "401", "t");
    assert!(
        r["args"]["detail"].as_str().unwrap().contains("expired"),
        "{r}"
    );
    assert_unchanged(&before, &snapshot(dir.path()), "an expired token");
}

#[tokio::test]
async fn a_limited_user_reads_but_cannot_change() {
    let dir = data_dir();
    let server = TestServer::start(dir.path());
    add_user(dir.path(), None, "viewer", "limited", "view only pw");
    let admin = server.client().await;
    setup(&admin).await;
    admin
        .iohyve("create", json!({"name": "web", "size": "1G"}))
        .await
        .unwrap();
    std::fs::write(iso_dir(dir.path()).join("a.iso"), b"iso").unwrap();
    let before = snapshot(dir.path());

    let v = server.client_as("viewer", "view only pw").await;
    for (action, args) in [
        ("listvms", json!({})),
        ("listisos", json!({})),
        ("issetup", json!({})),
        ("listdisks", json!({"name": "web"})),
        ("version", json!({})),
        ("getprops", json!({"name": "web"})),
    ] {
        v.iohyve(action, args)
            .await
            .unwrap_or_else(|e| panic!("{action}: {e}"));
    }
    for (action, args) in [
        ("create", json!({"name": "x", "size": "1G"})),
        ("delete", json!({"name": "web"})),
        ("setprop", json!({"name": "web", "ram": "1G"})),
        ("adddisk", json!({"name": "web", "size": "1G"})),
        (
            "resizedisk",
            json!({"name": "web", "disk": "disk0", "size": "2G"}),
        ),
        ("deletedisk", json!({"name": "web", "disk": "disk0"})),
        ("rmiso", json!({"target": "a.iso"})),
        ("renameiso", json!({"source": "a.iso", "target": "b.iso"})),
        ("setup", json!({"pool": "other", "nic": "re1"})),
        ("start", json!({"name": "web"})),
        ("stop", json!({"name": "web"})),
        ("install", json!({"name": "web", "iso": "a.iso"})),
        ("fetchiso", json!({"url": "http://127.0.0.1:1/x.iso"})),
        // Missing keys: still 403, the arguments are not looked at.
        ("create", json!({})),
    ] {
        let mut a = args.clone();
        a["action"] = json!(action);
        let r = v.request("sysadm", "iohyve", a).await.unwrap();
        assert_eq!(r["name"], "error", "{action}: {r}");
        assert_eq!(r["args"]["code"], "403", "{action}: {r}");
        assert!(
            r["args"]["detail"].as_str().unwrap().contains("viewer"),
            "{r}"
        );
    }
    // Tasks: a limited user may list them and follow events, not kill.
    let r = v
        .call("rpc", "dispatcher", json!({"action": "list"}))
        .await
        .unwrap();
    assert_eq!(r, json!({"jobs": {}}));
    let r = v
        .call("events", "subscribe", json!("dispatcher"))
        .await
        .unwrap();
    assert_eq!(r, json!({"subscribe": "dispatcher"}));
    let r = v
        .request(
            "rpc",
            "dispatcher",
            json!({"action": "kill", "job_id": "{00000000-0000-4000-8000-000000000000}"}),
        )
        .await
        .unwrap();
    assert_eq!(r["args"]["code"], "403", "{r}");
    // REST too.
    let r = server
        .http()
        .put(format!("{}/sysadm/iohyve", server.rest))
        .basic_auth("viewer", Some("view only pw"))
        .body(r#"{"action":"delete","name":"web"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    assert_unchanged(&before, &snapshot(dir.path()), "a limited user's writes");
    // rpc/query says so.
    let q = v.call("rpc", "query", json!({})).await.unwrap();
    assert_eq!(q["sysadm/iohyve"], "read");
    let q = admin.call("rpc", "query", json!({})).await.unwrap();
    assert_eq!(q["sysadm/iohyve"], "read/write");
}

#[tokio::test]
async fn rest_logs_in_with_basic_or_bearer() {
    let dir = data_dir();
    let server = TestServer::start(dir.path());
    let url = format!("{}/sysadm/iohyve", server.rest);
    let body = r#"{"action":"issetup"}"#;
    let http = server.http();

    let r = http.put(&url).body(body).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 401);
    assert!(r.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .starts_with("Basic"));
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["args"]["code"], "401");

    let r = http
        .put(&url)
        .basic_auth(USER, Some(PASSWORD))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"args": {"issetup": {"setup": "false"}}})
    );

    let r = http
        .put(&url)
        .basic_auth(USER, Some("wrong"))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    assert_eq!(
        r.json::<Value>().await.unwrap()["args"]["detail"],
        "wrong user name or password"
    );

    // A token from rpc/auth over REST, then Bearer.
    let r = http
        .put(format!("{}/rpc/auth", server.rest))
        .body(json!({"username": USER, "password": PASSWORD}).to_string())
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    let token = v["args"][0].as_str().unwrap().to_string();
    let r = http
        .put(&url)
        .bearer_auth(&token)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let r = http
        .put(&url)
        .bearer_auth("nonsense")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let r = http
        .put(&url)
        .header("Authorization", "Negotiate abc")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);

    // rpc/identify needs no login.
    let r = http
        .put(format!("{}/rpc/identify", server.rest))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["args"]["type"], "server");
}

#[tokio::test]
async fn the_upgrade_request_may_carry_the_login() {
    let dir = data_dir();
    let server = TestServer::start(dir.path());
    // Bearer (what raw_ws does).
    let mut ws = server.raw_ws("/").await;
    let r = roundtrip(
        &mut ws,
        &frame("sysadm", "iohyve", "1", json!({"action": "issetup"})),
    )
    .await;
    assert_eq!(r["name"], "response");
    // A bad token on the upgrade is refused, not downgraded.
    let o = ConnectOptions {
        trust: server.trust(),
        credentials: None,
        bearer: Some("bogus".into()),
    };
    let e = hyve_client::open(&server.ws, &o)
        .await
        .expect_err("refused");
    assert!(e.to_string().contains("401"), "{e}");
}

#[tokio::test]
async fn the_blacklist_engages_after_five_failures_and_survives_a_restart() {
    let dir = data_dir();
    let mut server = TestServer::start(dir.path());
    let mut ws = server.raw_ws_anonymous("/").await;
    let bad = json!({"username": USER, "password": "guess"});
    for i in 1..=4 {
        let r = roundtrip(&mut ws, &frame("rpc", "auth", &i.to_string(), bad.clone())).await;
        assert_eq!(r["args"]["detail"], "wrong user name or password", "{r}");
    }
    let r = roundtrip(&mut ws, &frame("rpc", "auth", "5", bad.clone())).await;
    assert_error(&r, "401", "5");
    let d = r["args"]["detail"].as_str().unwrap();
    assert!(d.contains("too many failed logins from 127.0.0.1"), "{d}");
    // Now even the right password is refused, over both transports.
    let good = json!({"username": USER, "password": PASSWORD});
    let r = roundtrip(&mut ws, &frame("rpc", "auth", "6", good.clone())).await;
    assert_error(&r, "401", "6");
    assert!(
        r["args"]["detail"]
            .as_str()
            .unwrap()
            .contains("refused until"),
        "{r}"
    );
    let r = server
        .http()
        .put(format!("{}/sysadm/iohyve", server.rest))
        .basic_auth(USER, Some(PASSWORD))
        .body(r#"{"action":"issetup"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let text = std::fs::read_to_string(dir.path().join("hyve/blacklist.toml")).unwrap();
    assert!(text.contains("\"127.0.0.1\""), "{text}");

    drop(ws);
    assert!(server.stop().success());
    let server = TestServer::start(dir.path());
    let mut ws = server.raw_ws_anonymous("/").await;
    let r = roundtrip(&mut ws, &frame("rpc", "auth", "7", good)).await;
    assert_error(&r, "401", "7");
    assert!(
        r["args"]["detail"]
            .as_str()
            .unwrap()
            .contains("refused until"),
        "{r}"
    );
}

#[tokio::test]
async fn a_connection_that_never_logs_in_is_closed() {
    let dir = data_dir();
    let server = TestServer::start_with_config(dir.path(), "[auth]\nlogin_timeout_secs = 1\n");
    let mut ws = server.raw_ws_anonymous("/").await;
    // identify does not count as a login.
    let r = roundtrip(&mut ws, &frame("rpc", "identify", "i", json!({}))).await;
    assert_eq!(r["args"]["type"], "server");
    match next_frame(&mut ws).await {
        Some(Message::Close(Some(f))) => {
            assert_eq!(u16::from(f.code), 1008);
            assert!(
                f.reason.contains("not logged in within 1 s"),
                "{}",
                f.reason
            );
        }
        other => panic!("expected a close frame, got {other:?}"),
    }
    // A logged-in connection outlives the login timeout.
    let mut ws = server.raw_ws("/").await;
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    let r = roundtrip(
        &mut ws,
        &frame("sysadm", "iohyve", "v", json!({"action": "version"})),
    )
    .await;
    assert_eq!(r["name"], "response", "{r}");
}

#[tokio::test]
async fn an_idle_connection_is_closed() {
    let dir = data_dir();
    let server = TestServer::start_with_config(dir.path(), "[auth]\nidle_timeout_secs = 2\n");
    let mut ws = server.raw_ws("/").await;
    let r = roundtrip(
        &mut ws,
        &frame("sysadm", "iohyve", "v", json!({"action": "version"})),
    )
    .await;
    assert_eq!(r["name"], "response");
    match next_frame(&mut ws).await {
        Some(Message::Close(Some(f))) => {
            assert_eq!(u16::from(f.code), 1000);
            assert!(f.reason.contains("without a request"), "{}", f.reason);
        }
        other => panic!("expected a close frame, got {other:?}"),
    }
}

#[tokio::test]
async fn without_tls_logins_are_still_required() {
    let dir = data_dir();
    let server = TestServer::start_with(dir.path(), &["--no-tls"]);
    assert!(server.ws.starts_with("ws://"), "{}", server.ws);
    let mut ws = server.raw_ws_anonymous("/").await;
    let r = roundtrip(
        &mut ws,
        &frame("sysadm", "iohyve", "1", json!({"action": "listvms"})),
    )
    .await;
    assert_error(&r, "401", "1");
    server
        .client()
        .await
        .iohyve("listvms", json!({}))
        .await
        .unwrap();
    let (status, _) = server
        .rest("/sysadm/iohyve", r#"{"action":"issetup"}"#)
        .await;
    assert_eq!(status, 200);
}
