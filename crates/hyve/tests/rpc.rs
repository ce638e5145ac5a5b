//! The rest of the `rpc` namespace and the host classes the SysAdm GUI
//! needs: query, settings (keys for auth_ssl), auth_ssl's two stages with a
//! real RSA key, sysadm/network list-devices and sysadm/zfs list_pools.

mod common;

use base64::Engine as _;
use common::*;
use rsa::pkcs8::{EncodePublicKey, LineEnding};
use rsa::{Pkcs1v15Sign, RsaPrivateKey};
use serde_json::{json, Value};

fn frame(ns: &str, name: &str, id: &str, args: Value) -> String {
    json!({"namespace": ns, "name": name, "id": id, "args": args}).to_string()
}

/// A key pair as the SysAdm client makes one, and its public key as
/// register_ssl_cert takes it (base64 of the PEM).
fn client_key() -> (RsaPrivateKey, String) {
    let private = RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).unwrap();
    let pem = private
        .to_public_key()
        .to_public_key_pem(LineEnding::LF)
        .unwrap();
    (
        private,
        base64::engine::general_purpose::STANDARD.encode(pem),
    )
}

/// What the client does with a challenge: OpenSSL's RSA_private_encrypt
/// with PKCS#1 padding, base64.
fn answer(private: &RsaPrivateKey, challenge: &str) -> String {
    let sig = private
        .sign(Pkcs1v15Sign::new_unprefixed(), challenge.as_bytes())
        .unwrap();
    base64::engine::general_purpose::STANDARD.encode(sig)
}

#[tokio::test]
async fn query_lists_what_the_gui_needs() {
    let dir = data_dir();
    let server = TestServer::start(dir.path());
    let c = server.client().await;
    let q = c.call("rpc", "query", json!({})).await.unwrap();
    assert_eq!(q["sysadm/iohyve"], "read/write");
    assert_eq!(q["sysadm/network"], "read");
    assert_eq!(q["sysadm/zfs"], "read");
    assert_eq!(q["rpc/settings"], "read/write");
    // Before login, query is refused like any class.
    let a = server.anonymous_client().await;
    let r = a.request("rpc", "query", json!({})).await.unwrap();
    assert_eq!(r["args"]["code"], "401");
}

#[tokio::test]
async fn auth_ssl_with_a_registered_key() {
    let dir = data_dir();
    let server = TestServer::start(dir.path());
    let (private, pub_b64) = client_key();
    let c = server.client().await;
    let r = c
        .call(
            "rpc",
            "settings",
            json!({"action": "register_ssl_cert", "pub_key": pub_b64, "nickname": "laptop", "email": "t@example.org"}),
        )
        .await
        .unwrap();
    assert_eq!(r, json!({}));
    let listed = c
        .call("rpc", "settings", json!({"action": "list_ssl_certs"}))
        .await
        .unwrap();
    let details = listed[USER][&pub_b64].as_str().unwrap();
    assert!(
        details.starts_with("Nickname: laptop\nEmail: t@example.org\nDate Registered: "),
        "{details}"
    );
    let sums = c
        .call("rpc", "settings", json!({"action": "list_ssl_checksums"}))
        .await
        .unwrap();
    assert_eq!(sums["md5_keys"].as_array().unwrap().len(), 1);

    // Stage 1 and 2 on a fresh connection.
    let mut ws = server.raw_ws_anonymous("/").await;
    let r = roundtrip(&mut ws, &frame("rpc", "auth_ssl", "s1", json!(""))).await;
    let challenge = r["args"]["test_string"]
        .as_str()
        .expect("a challenge")
        .to_string();
    assert!(challenge.len() >= 22);
    let r = roundtrip(
        &mut ws,
        &frame(
            "rpc",
            "auth_ssl",
            "s2",
            json!({"encrypted_string": answer(&private, &challenge)}),
        ),
    )
    .await;
    assert_eq!(r["name"], "response", "{r}");
    assert!(r["args"][0].is_string());
    assert_eq!(r["args"][1], 900);
    let r = roundtrip(
        &mut ws,
        &frame("sysadm", "iohyve", "v", json!({"action": "version"})),
    )
    .await;
    assert_eq!(r["name"], "response", "logged in as {USER}: {r}");

    // A challenge is good once.
    let mut ws2 = server.raw_ws_anonymous("/").await;
    let r = roundtrip(
        &mut ws2,
        &frame(
            "rpc",
            "auth_ssl",
            "again",
            json!({"encrypted_string": answer(&private, &challenge)}),
        ),
    )
    .await;
    assert_eq!(r["args"]["code"], "401", "{r}");
    // Another key, or a string the server never handed out, does not log in.
    let (stranger, _) = client_key();
    let r = roundtrip(&mut ws2, &frame("rpc", "auth_ssl", "c", json!({}))).await;
    let fresh = r["args"]["test_string"].as_str().unwrap().to_string();
    let r = roundtrip(
        &mut ws2,
        &frame(
            "rpc",
            "auth_ssl",
            "x",
            json!({"encrypted_string": answer(&stranger, &fresh)}),
        ),
    )
    .await;
    assert_eq!(r["args"]["code"], "401", "{r}");
    let r = roundtrip(
        &mut ws2,
        &frame(
            "rpc",
            "auth_ssl",
            "y",
            json!({"encrypted_string": answer(&private, "made up")}),
        ),
    )
    .await;
    assert_eq!(r["args"]["code"], "401", "{r}");

    // Revoked: the key no longer logs in.
    let r = c
        .call(
            "rpc",
            "settings",
            json!({"action": "revoke_ssl_cert", "pub_key": pub_b64}),
        )
        .await
        .unwrap();
    assert_eq!(r, json!({}));
    let r = roundtrip(&mut ws2, &frame("rpc", "auth_ssl", "c2", json!({}))).await;
    let fresh = r["args"]["test_string"].as_str().unwrap().to_string();
    let r = roundtrip(
        &mut ws2,
        &frame(
            "rpc",
            "auth_ssl",
            "z",
            json!({"encrypted_string": answer(&private, &fresh)}),
        ),
    )
    .await;
    assert_eq!(r["args"]["code"], "401", "{r}");
}

#[tokio::test]
async fn settings_keep_users_apart() {
    let dir = data_dir();
    let server = TestServer::start(dir.path());
    add_user(dir.path(), None, "viewer", "limited", "view pw");
    let admin = server.client().await;
    let viewer = server.client_as("viewer", "view pw").await;
    let (_, admin_key) = client_key();
    let (_, viewer_key) = client_key();
    let reg = |k: &str| json!({"action": "register_ssl_cert", "pub_key": k});
    admin
        .call("rpc", "settings", reg(&admin_key))
        .await
        .unwrap();
    viewer
        .call("rpc", "settings", reg(&viewer_key))
        .await
        .unwrap();
    // A limited user sees their own keys; a full one sees everyone's.
    let mine = viewer
        .call("rpc", "settings", json!({"action": "list_ssl_certs"}))
        .await
        .unwrap();
    assert_eq!(
        mine.as_object().unwrap().keys().collect::<Vec<_>>(),
        vec!["viewer"]
    );
    let all = admin
        .call("rpc", "settings", json!({"action": "list_ssl_certs"}))
        .await
        .unwrap();
    assert_eq!(all.as_object().unwrap().len(), 2);
    // Nor may they revoke someone else's.
    let before = snapshot(dir.path());
    let r = viewer
        .request(
            "rpc",
            "settings",
            json!({"action": "revoke_ssl_cert", "pub_key": admin_key, "user": USER}),
        )
        .await
        .unwrap();
    assert_eq!(r["args"]["code"], "403", "{r}");
    // Bad input: 400 with a sentence, nothing stored.
    for args in [
        json!({"action": "register_ssl_cert", "pub_key": "bm90IGEga2V5"}),
        json!({"action": "register_ssl_cert"}),
        json!({"action": "revoke_ssl_cert", "pub_key": "never registered"}),
        json!({"action": "rename_everything"}),
        json!("register_ssl_cert"),
    ] {
        let r = admin
            .request("rpc", "settings", args.clone())
            .await
            .unwrap();
        assert_eq!(r["args"]["code"], "400", "{args}: {r}");
        assert!(r["args"]["detail"].is_string());
    }
    assert_unchanged(&before, &snapshot(dir.path()), "refused settings");
    admin
        .call(
            "rpc",
            "settings",
            json!({"action": "revoke_ssl_cert", "pub_key": viewer_key, "user": "viewer"}),
        )
        .await
        .unwrap();
    let mine = viewer
        .call("rpc", "settings", json!({"action": "list_ssl_certs"}))
        .await
        .unwrap();
    assert_eq!(mine, json!({}));
}

#[tokio::test]
async fn network_lists_the_hosts_interfaces() {
    let dir = data_dir();
    let server = TestServer::start(dir.path());
    let c = server.client().await;
    let devs = c
        .call("sysadm", "network", json!({"action": "list-devices"}))
        .await
        .unwrap();
    let devs = devs.as_object().unwrap();
    let lo = &devs["lo"];
    assert_eq!(lo["is_active"], "true");
    assert_eq!(lo["description"], "Loopback interface");
    assert_eq!(lo["ipv4"], "127.0.0.1");
    for (name, d) in devs {
        for key in [
            "description",
            "is_active",
            "is_wireless",
            "MAC",
            "ipv4",
            "ipv6",
            "netmask",
            "status",
        ] {
            assert!(d[key].is_string(), "{name}.{key}: {d}");
        }
    }
    // Every interface the kernel has, and no other.
    let mut kernel: Vec<String> = std::fs::read_dir("/sys/class/net")
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    kernel.sort();
    assert_eq!(devs.keys().cloned().collect::<Vec<_>>(), kernel);
    let r = c
        .request("sysadm", "network", json!({"action": "set-ip"}))
        .await
        .unwrap();
    assert_eq!(r["args"]["code"], "400");
}

#[tokio::test]
async fn zfs_lists_the_pools_this_server_knows() {
    let dir = data_dir();
    let server = TestServer::start(dir.path());
    let c = server.client().await;
    let r = c
        .call("sysadm", "zfs", json!({"action": "list_pools"}))
        .await
        .unwrap();
    assert_eq!(r, json!({}), "none before setup, as the original");
    setup(&c).await;
    let r = c
        .call("sysadm", "zfs", json!({"action": "list_pools"}))
        .await
        .unwrap();
    let tank = &r["list_pools"]["tank"];
    assert_eq!(tank["health"], "ONLINE");
    for key in [
        "size", "alloc", "free", "capacity", "frag", "expandsz", "dedup", "altroot",
    ] {
        assert!(tank[key].is_string(), "{key}: {r}");
    }
    assert!(tank["capacity"].as_str().unwrap().ends_with('%'));
    assert_eq!(r["list_pools"].as_object().unwrap().len(), 1, "{r}");
}
