//! Bad requests of every kind: each gets a clear error of the right form,
//! and the data dir is byte-for-byte what it was before.

mod common;

use common::*;
use serde_json::{json, Value};

/// A server with pool `tank`, guest `g1` (disk0 + disk1), guest `g2`, and
/// ISO `a.iso`.
async fn prepared() -> (tempfile::TempDir, TestServer, Client) {
    let dir = data_dir();
    let server = TestServer::start(dir.path());
    let c = server.client().await;
    setup(&c).await;
    for g in ["g1", "g2"] {
        c.iohyve("create", json!({"name": g, "size": "16M"}))
            .await
            .unwrap();
    }
    c.iohyve("adddisk", json!({"name": "g1", "size": "16M"}))
        .await
        .unwrap();
    std::fs::write(iso_dir(dir.path()).join("a.iso"), b"iso").unwrap();
    (dir, server, c)
}

/// The values every argument is tried with.
fn hostile() -> Vec<Value> {
    vec![
        json!("../x"),
        json!("-rf"),
        json!("a b"),
        json!("$(id)"),
        json!(""),
        json!("x".repeat(10 * 1024)),
        json!("g1/../../etc"),
        json!("tab\there"),
        json!(1),
        json!(null),
        json!([]),
        json!({}),
        json!(true),
    ]
}

/// Each action with valid arguments, and which of them to make hostile.
fn cases() -> Vec<(&'static str, Value, Vec<&'static str>)> {
    vec![
        (
            "renameiso",
            json!({"source": "a.iso", "target": "b.iso"}),
            vec!["source", "target"],
        ),
        ("rmiso", json!({"target": "a.iso"}), vec!["target"]),
        (
            "setup",
            json!({"pool": "tank", "nic": "re0"}),
            vec!["pool", "nic"],
        ),
        (
            "create",
            json!({"name": "g3", "size": "16M"}),
            vec!["name", "size"],
        ),
        ("delete", json!({"name": "g2"}), vec!["name"]),
        (
            "adddisk",
            json!({"name": "g1", "size": "16M", "pool": "tank"}),
            vec!["name", "size", "pool"],
        ),
        ("listdisks", json!({"name": "g1"}), vec!["name"]),
        (
            "resizedisk",
            json!({"name": "g1", "disk": "disk1", "size": "32M"}),
            vec!["name", "disk", "size"],
        ),
        (
            "deletedisk",
            json!({"name": "g1", "disk": "disk1"}),
            vec!["name", "disk"],
        ),
        ("getprops", json!({"name": "g1"}), vec!["name"]),
        (
            "setprop",
            json!({"name": "g1", "ram": "512M", "cpu": "2", "boot": "1", "persist": "0",
                   "loader": "grub-bhyve", "os": "debian", "tap": "tap9", "con": "nmdm9",
                   "mac": "52:54:00:00:00:09"}),
            vec![
                "name", "ram", "cpu", "boot", "persist", "loader", "os", "tap", "con", "mac",
            ],
        ),
    ]
}

/// Asserts an in-band error for `action` and returns its sentence.
fn action_error(reply: &Value, action: &str) -> String {
    assert_eq!(reply["name"], "response", "{reply}");
    let inner = &reply["args"][action];
    let obj = inner
        .as_object()
        .unwrap_or_else(|| panic!("no {action} in {reply}"));
    assert_eq!(obj.len(), 1, "{reply}");
    let msg = inner["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error in {reply}"));
    assert!(!msg.is_empty() && msg.len() < 400, "unclear error: {msg}");
    msg.to_string()
}

#[tokio::test]
async fn hostile_values_change_nothing() {
    let (dir, _server, c) = prepared().await;
    let before = snapshot(dir.path());
    let mut tried = 0;
    for (action, valid, keys) in cases() {
        for key in keys {
            for bad in hostile() {
                // An empty optional pool means "the guest's own pool", as
                // the original server read it: not an error.
                if key == "pool" && bad == json!("") {
                    continue;
                }
                let mut args = valid.clone();
                args[key] = bad.clone();
                args["action"] = json!(action);
                let reply = c.request("sysadm", "iohyve", args).await.unwrap();
                let msg = action_error(&reply, action);
                if !bad.is_string() {
                    assert!(
                        msg.contains("must be a string"),
                        "{action}.{key}={bad}: {msg}"
                    );
                }
                tried += 1;
            }
        }
    }
    // Hostile property names, and values only their own check refuses.
    for (k, v) in [
        ("../x", "1"),
        ("bhyve", "/bin/sh"),
        ("-rf", "1"),
        ("name", "other"),
        ("size", "1G"),
        ("install", "yes"),
        ("description", "line\nbreak"),
        ("bargs", "-s 0,virtio-blk,/etc/shadow"),
        ("autogrub", "tab\there"),
    ] {
        let reply = c
            .request(
                "sysadm",
                "iohyve",
                json!({"action": "setprop", "name": "g1", k: v}),
            )
            .await
            .unwrap();
        action_error(&reply, "setprop");
        tried += 1;
    }
    // One bad value among good ones: nothing of the request is applied.
    let reply = c
        .request(
            "sysadm",
            "iohyve",
            json!({"action": "setprop", "name": "g1", "ram": "1G", "cpu": "zero"}),
        )
        .await
        .unwrap();
    action_error(&reply, "setprop");
    assert_eq!(
        c.iohyve("getprops", json!({"name": "g1"})).await.unwrap()["g1"]["ram"],
        "256M"
    );
    assert!(tried > 350, "only {tried} requests tried");
    assert_unchanged(&before, &snapshot(dir.path()), "after hostile requests");
}

#[tokio::test]
async fn state_errors_are_clear_and_change_nothing() {
    let (dir, _server, c) = prepared().await;
    let before = snapshot(dir.path());
    let cases = [
        (
            "create",
            json!({"name": "g1", "size": "16M"}),
            "already exists",
        ),
        ("delete", json!({"name": "nope"}), "No such guest 'nope'"),
        ("getprops", json!({"name": "nope"}), "No such guest"),
        ("listdisks", json!({"name": "nope"}), "No such guest"),
        (
            "resizedisk",
            json!({"name": "g1", "disk": "disk0", "size": "8M"}),
            "can only grow",
        ),
        (
            "resizedisk",
            json!({"name": "g1", "disk": "disk0", "size": "16M"}),
            "can only grow",
        ),
        (
            "resizedisk",
            json!({"name": "g1", "disk": "disk7", "size": "1G"}),
            "no disk 'disk7'",
        ),
        (
            "deletedisk",
            json!({"name": "g1", "disk": "disk0"}),
            "disk0 cannot be removed!",
        ),
        (
            "deletedisk",
            json!({"name": "g1", "disk": "disk5"}),
            "no disk 'disk5'",
        ),
        (
            "adddisk",
            json!({"name": "g1", "size": "16M", "pool": "elsewhere"}),
            "not set up",
        ),
        (
            "create",
            json!({"name": "g9", "size": "20T"}),
            "larger than this server allows",
        ),
        (
            "renameiso",
            json!({"source": "nope.iso", "target": "b.iso"}),
            "No such ISO",
        ),
        ("rmiso", json!({"target": "nope.iso"}), "No such ISO"),
        (
            "setprop",
            json!({"name": "g1", "tap": "tap1"}),
            "already used by guest 'g2'",
        ),
        (
            "setprop",
            json!({"name": "g1", "con": "nmdm1"}),
            "already used by guest 'g2'",
        ),
        ("create", json!({"name": "ISO", "size": "16M"}), "reserved"),
        ("setup", json!({"pool": "hyve", "nic": "re0"}), "reserved"),
    ];
    for (action, mut args, want) in cases {
        args["action"] = json!(action);
        let reply = c.request("sysadm", "iohyve", args.clone()).await.unwrap();
        let msg = action_error(&reply, action);
        assert!(msg.contains(want), "{args}: {msg:?} lacks {want:?}");
    }
    std::fs::write(iso_dir(dir.path()).join("b.iso"), b"other").unwrap();
    let before_b = snapshot(dir.path());
    let reply = c
        .request(
            "sysadm",
            "iohyve",
            json!({"action": "renameiso", "source": "a.iso", "target": "b.iso"}),
        )
        .await
        .unwrap();
    assert!(action_error(&reply, "renameiso").contains("already exists"));
    assert_unchanged(
        &before_b,
        &snapshot(dir.path()),
        "after a clobbering rename",
    );
    std::fs::remove_file(iso_dir(dir.path()).join("b.iso")).unwrap();
    assert_unchanged(&before, &snapshot(dir.path()), "after state errors");
}

#[tokio::test]
async fn before_setup() {
    let dir = data_dir();
    let server = TestServer::start(dir.path());
    let c = server.client().await;
    let before = snapshot(dir.path());
    let reply = c
        .request(
            "sysadm",
            "iohyve",
            json!({"action": "create", "name": "g", "size": "1G"}),
        )
        .await
        .unwrap();
    assert!(action_error(&reply, "create").contains("not set up"));
    assert_eq!(c.iohyve("listvms", json!({})).await.unwrap(), json!({}));
    assert_eq!(c.iohyve("listisos", json!({})).await.unwrap(), json!([]));
    assert_unchanged(&before, &snapshot(dir.path()), "before setup");
}

#[tokio::test]
async fn missing_keys_use_the_original_wording() {
    let (_dir, server, c) = prepared().await;
    let cases = [
        (
            json!({"action": "create", "name": "x"}),
            "Missing required key(s) 'name/size'",
        ),
        (json!({"action": "delete"}), "Missing required key 'name'"),
        (
            json!({"action": "setup"}),
            "Missing required key(s) 'pool / nic'",
        ),
        (
            json!({"action": "setprop", "name": "g1"}),
            "No settings supplied!",
        ),
    ];
    for (args, want) in cases {
        let action = args["action"].as_str().unwrap().to_string();
        let reply = c.request("sysadm", "iohyve", args.clone()).await.unwrap();
        assert_eq!(action_error(&reply, &action), want);
        let (status, body) = server.rest("/sysadm/iohyve", &args.to_string()).await;
        assert_eq!(status, 400);
        assert_eq!(body, json!({"args": {action: {"error": want}}}));
    }
}

#[tokio::test]
async fn rest_statuses_say_the_class_of_failure() {
    let (_dir, server, _c) = prepared().await;
    let cases = [
        (r#"{"action":"getprops","name":"g1"}"#, 200),
        (r#"{"action":"getprops","name":"../x"}"#, 400),
        (r#"{"action":"getprops","name":"nope"}"#, 404),
        (r#"{"action":"create","name":"g1","size":"1G"}"#, 409),
        (r#"{"args":{"action":"version"}}"#, 200),
    ];
    for (body, status) in cases {
        assert_eq!(
            server.rest("/sysadm/iohyve", body).await.0,
            status,
            "{body}"
        );
    }
}

/// Asserts an error frame with `code` (and a detail sentence).
fn protocol_error(reply: &Value, code: &str) {
    assert_eq!(reply["name"], "error", "{reply}");
    assert_eq!(reply["namespace"], "error", "{reply}");
    assert_eq!(reply["args"]["code"], code, "{reply}");
    assert!(reply["args"]["message"].is_string());
    assert!(reply["args"]["detail"]
        .as_str()
        .is_some_and(|d| !d.is_empty()));
}

#[tokio::test]
async fn protocol_errors_over_websocket() {
    let (dir, server, _c) = prepared().await;
    let before = snapshot(dir.path());
    let mut ws = server.raw_ws("/").await;
    let deep = format!("{}{}", "[".repeat(5000), "]".repeat(5000));
    let cases: Vec<(String, &str, &str)> = vec![
        ("{not json".into(), "400", ""),
        ("[1,2]".into(), "400", ""),
        (deep, "400", ""),
        (
            r#"{"name":"iohyve","id":"m1","args":{"action":"listvms"}}"#.into(),
            "400",
            "m1",
        ),
        (
            r#"{"namespace":"sysadm","id":"m2","args":{"action":"listvms"}}"#.into(),
            "400",
            "m2",
        ),
        (
            r#"{"namespace":"","name":"iohyve","id":"m3","args":{}}"#.into(),
            "400",
            "m3",
        ),
        (
            r#"{"namespace":"sysadm","name":"nosuch","id":"u1","args":{}}"#.into(),
            "404",
            "u1",
        ),
        (
            r#"{"namespace":"sysadm","name":"iohyve","id":"u2","args":{"action":"frobnicate"}}"#
                .into(),
            "400",
            "u2",
        ),
        (
            r#"{"namespace":"sysadm","name":"iohyve","id":"u3","args":{"action":7}}"#.into(),
            "400",
            "u3",
        ),
        (
            r#"{"namespace":"sysadm","name":"iohyve","id":"u4","args":"listvms"}"#.into(),
            "400",
            "u4",
        ),
        (
            r#"{"namespace":"sysadm","name":"iohyve","id":"u5","args":{}}"#.into(),
            "400",
            "u5",
        ),
    ];
    for (text, code, id) in cases {
        let reply = roundtrip(&mut ws, &text).await;
        protocol_error(&reply, code);
        assert_eq!(reply["id"], id, "{text:.80}");
    }
    // The connection is still usable afterwards.
    let r = roundtrip(
        &mut ws,
        r#"{"namespace":"sysadm","name":"iohyve","id":"ok","args":{"action":"version"}}"#,
    )
    .await;
    assert_eq!(r["name"], "response");
    assert_unchanged(&before, &snapshot(dir.path()), "after protocol errors");
}

#[tokio::test]
async fn protocol_errors_over_rest() {
    let (_dir, server, _c) = prepared().await;
    let cases = [
        ("/sysadm/iohyve", "{not json", 400),
        ("/sysadm/iohyve", "[1]", 400),
        ("/sysadm/iohyve", r#"{"action":"frobnicate"}"#, 400),
        ("/sysadm/nosuch", r#"{"action":"listvms"}"#, 404),
        ("/sysadm", r#"{"action":"listvms"}"#, 404),
    ];
    for (path, body, status) in cases {
        let (s, reply) = server.rest(path, body).await;
        assert_eq!(s, status, "{path} {body}");
        assert_eq!(reply["args"]["code"], status.to_string());
        assert!(reply["args"]["detail"].is_string());
    }
}
