//! Every request of the API document for the implemented actions, sent over
//! WebSocket and over REST exactly as the document writes it, with each
//! reply checked against the document's shape: keys, nesting, values and the
//! envelope, and the serialization (compact, keys sorted).

mod common;

use common::*;
use futures_util::SinkExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

/// Checks `actual` against `tmpl`: objects must have exactly the same keys,
/// `"*"` stands for any string, anything else must be equal.
fn assert_shape(actual: &Value, tmpl: &Value, path: &str) {
    match tmpl {
        Value::String(s) if s == "*" => {
            assert!(
                actual.is_string(),
                "{path}: expected a string, got {actual}"
            )
        }
        Value::Object(t) => {
            let a = actual
                .as_object()
                .unwrap_or_else(|| panic!("{path}: expected an object, got {actual}"));
            let (ak, tk): (Vec<_>, Vec<_>) = (a.keys().collect(), t.keys().collect());
            assert_eq!(ak, tk, "{path}: keys differ in {actual}");
            for (k, v) in t {
                assert_shape(&a[k], v, &format!("{path}.{k}"));
            }
        }
        _ => assert_eq!(actual, tmpl, "{path}"),
    }
}

/// The document's requests (REST bodies) in an order that makes each
/// reply match the document's example, with the expected reply args.
fn sequence() -> Vec<(Value, Value)> {
    vec![
        (
            json!({"action": "issetup"}),
            json!({"issetup": {"setup": "false"}}),
        ),
        (
            json!({"nic": "re0", "pool": "tank", "action": "setup"}),
            json!({"setup": {"nic": "re0", "pool": "tank"}}),
        ),
        (
            json!({"action": "issetup"}),
            json!({"issetup": {"setup": "true"}}),
        ),
        (
            json!({"action": "create", "name": "bsdguest", "size": "10G"}),
            json!({"create": {"name": "bsdguest", "size": "10G"}}),
        ),
        (
            json!({"name": "bsdguest", "action": "listdisks"}),
            json!({"listdisks": {"disk0": "10G"}}),
        ),
        (
            json!({"action": "getprops", "name": "bsdguest"}),
            json!({"getprops": {"bsdguest": {
            "autogrub": "\\n", "bargs": "-A_-H_-P", "boot": "0", "con": "nmdm0", "cpu": "1",
            "description": "*", "install": "no", "loader": "bhyveload", "name": "bsdguest",
            "os": "default", "persist": "1", "ram": "256M", "size": "10G", "tap": "tap0"}}}),
        ),
        (
            json!({"ram": "512M", "name": "bsdguest", "action": "setprop"}),
            json!({"setprop": {"bsdguest": {"ram": "512M"}}}),
        ),
        (
            json!({"action": "listvms"}),
            json!({"listvms": {"bsdguest": {"description": "*", "rcboot": "NO", "running": "NO", "vmm": "NO"}}}),
        ),
        (
            json!({"name": "bsdguest", "action": "adddisk", "size": "10G"}),
            json!({"adddisk": {"bsdguest": {"size": "10G"}}}),
        ),
        (
            json!({"disk": "disk0", "name": "bsdguest", "action": "resizedisk", "size": "20G"}),
            json!({"resizedisk": {"disk": "disk0", "name": "bsdguest", "size": "20G"}}),
        ),
        (
            json!({"disk": "disk1", "name": "bsdguest", "action": "deletedisk"}),
            json!({"deletedisk": {"disk": "disk1", "name": "bsdguest"}}),
        ),
        (
            json!({"action": "listisos"}),
            json!({"listisos": ["FreeBSD-10.2-RELEASE-amd64-bootonly.iso", "TRUEOS10.2-RELEASE-08-19-2015-x64-netinstall.iso", "test.iso"]}),
        ),
        (
            json!({"source": "test.iso", "target": "102.iso", "action": "renameiso"}),
            json!({"renameiso": {"source": "test.iso", "target": "102.iso"}}),
        ),
        (
            json!({"action": "rmiso", "target": "FreeBSD-10.2-RELEASE-amd64-bootonly.iso"}),
            json!({"rmiso": {"target": "FreeBSD-10.2-RELEASE-amd64-bootonly.iso"}}),
        ),
        (
            json!({"action": "listisos"}),
            json!({"listisos": ["102.iso", "TRUEOS10.2-RELEASE-08-19-2015-x64-netinstall.iso"]}),
        ),
        (
            json!({"action": "version"}),
            json!({"version": {"version": "*"}}),
        ),
        (
            json!({"action": "delete", "name": "bsdguest"}),
            json!({"delete": {"name": "bsdguest"}}),
        ),
        (json!({"action": "listvms"}), json!({"listvms": {}})),
    ]
}

/// Puts the ISOs the document's examples name in the store, once setup has
/// made it (fetchiso has its own tests).
fn place_isos(data_dir: &std::path::Path) {
    for iso in [
        "test.iso",
        "FreeBSD-10.2-RELEASE-amd64-bootonly.iso",
        "TRUEOS10.2-RELEASE-08-19-2015-x64-netinstall.iso",
    ] {
        std::fs::write(iso_dir(data_dir).join(iso), b"iso").unwrap();
    }
}

/// Replies are compact with sorted keys: re-serializing the parsed value
/// (serde_json sorts) must give back the exact text.
fn assert_canonical(text: &str) {
    let v: Value = serde_json::from_str(text).unwrap();
    assert_eq!(v.to_string(), text, "reply is not compact with sorted keys");
}

#[tokio::test]
async fn every_documented_request_over_websocket() {
    let dir = data_dir();
    let server = TestServer::start(dir.path());
    let mut ws = server.raw_ws("/").await;
    for (body, expected) in sequence() {
        let frame = json!({"namespace": "sysadm", "name": "iohyve", "id": "fooid", "args": body});
        ws.send(Message::Text(frame.to_string().into()))
            .await
            .unwrap();
        let text = next_text(&mut ws).await;
        assert_canonical(&text);
        let reply: Value = serde_json::from_str(&text).unwrap();
        assert_shape(
            &reply,
            &json!({"args": expected, "id": "fooid", "name": "response", "namespace": "sysadm"}),
            &format!("ws {}", body["action"]),
        );
        if body["action"] == "setup" {
            place_isos(dir.path());
        }
    }
}

#[tokio::test]
async fn every_documented_request_over_rest() {
    let dir = data_dir();
    let server = TestServer::start(dir.path());
    for (body, expected) in sequence() {
        let r = server.rest_raw("/sysadm/iohyve", &body.to_string()).await;
        assert_eq!(r.status().as_u16(), 200, "{}", body["action"]);
        assert_eq!(r.headers()["content-type"], "application/json");
        let text = r.text().await.unwrap();
        assert_canonical(&text);
        let reply: Value = serde_json::from_str(&text).unwrap();
        assert_shape(
            &reply,
            &json!({ "args": expected }),
            &format!("rest {}", body["action"]),
        );
        if body["action"] == "setup" {
            place_isos(dir.path());
        }
    }
}

#[tokio::test]
async fn envelope_details() {
    let dir = data_dir();
    let server = TestServer::start(dir.path());
    let mut ws = server.raw_ws("/any/path").await;
    // Routing is case-insensitive and the namespace is echoed as sent.
    let r = roundtrip(
        &mut ws,
        r#"{"namespace":"SysAdm","name":"IOHYVE","id":"a1","args":{"action":"version"}}"#,
    )
    .await;
    assert_eq!(r["namespace"], "SysAdm");
    assert_eq!(r["name"], "response");
    // Without args, the whole object is the args.
    let r = roundtrip(
        &mut ws,
        r#"{"namespace":"sysadm","name":"iohyve","id":"a2","action":"issetup"}"#,
    )
    .await;
    assert_eq!(r["args"], json!({"issetup": {"setup": "false"}}));
    // Without an id the original put the request's name where "response" goes.
    let r = roundtrip(
        &mut ws,
        r#"{"namespace":"sysadm","name":"iohyve","args":{"action":"issetup"}}"#,
    )
    .await;
    assert_eq!(
        (r["id"].clone(), r["name"].clone()),
        (json!(""), json!("iohyve"))
    );
    // Binary frames are read as UTF-8 text.
    ws.send(Message::Binary(
        br#"{"namespace":"sysadm","name":"iohyve","id":"b","args":{"action":"issetup"}}"#
            .to_vec()
            .into(),
    ))
    .await
    .unwrap();
    let r = next_json(&mut ws).await;
    assert_eq!(r["id"], "b");
}

/// The document's install, start and stop requests, as WebSocket frames
/// written exactly as the document writes them, against a real (TCG) guest.
/// The ISO is the document's name for a blank image: QEMU runs it, its
/// firmware finds nothing to boot, which is all these replies need.
#[tokio::test]
async fn documented_guest_requests_over_websocket() {
    let dirs = guest::GuestDirs::new();
    let data = dirs.data();
    let server = guest::start_server(&data, "");
    let c = server.client().await;
    setup(&c).await;
    c.iohyve("create", json!({"name": "bsdguest", "size": "10G"}))
        .await
        .unwrap();
    c.iohyve("setprop", json!({"name": "bsdguest", "ram": "64M"}))
        .await
        .unwrap();
    std::fs::write(
        iso_dir(&data).join("FreeBSD-10.2-RELEASE-amd64-disc1.iso"),
        vec![0u8; 2048],
    )
    .unwrap();
    let mut ws = server.raw_ws("/").await;
    let frames = [
        (
            r#"{"namespace":"sysadm","name":"iohyve","id":"fooid","args":{"action":"install","iso":"FreeBSD-10.2-RELEASE-amd64-disc1.iso","name":"bsdguest"}}"#,
            json!({"install": {"iso": "FreeBSD-10.2-RELEASE-amd64-disc1.iso", "name": "bsdguest"}}),
        ),
        (
            r#"{"id":"fooid","args":{"action":"stop","name":"bsdguest","force":"true"},"name":"iohyve","namespace":"sysadm"}"#,
            json!({"stop": {"name": "bsdguest"}}),
        ),
        (
            r#"{"name":"iohyve","id":"fooid","args":{"action":"start","name":"bsdguest"},"namespace":"sysadm"}"#,
            json!({"start": {"name": "bsdguest"}}),
        ),
        (
            r#"{"id":"fooid","args":{"action":"stop","name":"bsdguest","force":"true"},"name":"iohyve","namespace":"sysadm"}"#,
            json!({"stop": {"name": "bsdguest"}}),
        ),
    ];
    for (frame, expected) in frames {
        ws.send(Message::Text(frame.to_string().into()))
            .await
            .unwrap();
        let text = next_text(&mut ws).await;
        assert_canonical(&text);
        let reply: Value = serde_json::from_str(&text).unwrap();
        assert_shape(
            &reply,
            &json!({"args": expected, "id": "fooid", "name": "response", "namespace": "sysadm"}),
            frame,
        );
        // stop answers at once; the next step waits for the guest to be off.
        if expected.get("stop").is_some() {
            guest::wait_running(&c, "bsdguest", "NO").await;
        }
    }
    assert!(guest::qemu_pids_under(dirs.root.path()).is_empty());
}
