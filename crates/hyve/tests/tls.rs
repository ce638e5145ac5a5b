//! TLS as shipped: TLS 1.2 and newer only (checked with openssl s_client),
//! a self-signed certificate made once and kept, a configured certificate
//! served as is, and the CLI's trust: first use remembered, a changed
//! certificate refused, `--ca` for a real CA.

mod common;

use std::process::{Command, Stdio};

use common::*;
use serde_json::json;

fn port(url: &str) -> &str {
    url.rsplit(':').next().unwrap()
}

/// openssl s_client with one protocol version; (success, all output).
fn s_client(port: &str, version: &str) -> (bool, String) {
    let out = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &format!("127.0.0.1:{port}"),
            version,
        ])
        // Debian's OpenSSL refuses TLS 1.1 itself at its default security
        // level; level 0 makes it really offer 1.1, so the refusal seen is
        // the server's.
        .args(["-cipher", "DEFAULT@SECLEVEL=0"])
        .stdin(Stdio::null())
        .output()
        .expect("openssl (scripts/deps installs it)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn tls_1_1_is_refused_and_1_2_is_served_on_both_listeners() {
    let dir = data_dir();
    let server = TestServer::start(dir.path());
    for url in [&server.ws, &server.rest] {
        let p = port(url);
        let refusals = server.log().matches("TLS handshake failed").count();
        let (ok, text) = s_client(p, "-tls1_1");
        assert!(!ok, "TLS 1.1 handshake succeeded on {url}:\n{text}");
        assert!(text.contains("Cipher is (NONE)"), "{text}");
        assert!(
            text.contains("alert"),
            "the server answered with an alert: {text}"
        );
        // The refusal was the server's (its log says so), not openssl's.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while server.log().matches("TLS handshake failed").count() == refusals {
            assert!(std::time::Instant::now() < deadline, "{}", server.log());
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let (ok, text) = s_client(p, "-tls1_2");
        assert!(ok, "TLS 1.2 on {url}:\n{text}");
        assert!(text.contains("TLSv1.2"), "{text}");
        let (ok, text) = s_client(p, "-tls1_3");
        assert!(ok && text.contains("TLSv1.3"), "TLS 1.3 on {url}:\n{text}");
    }
}

#[tokio::test]
async fn the_self_signed_certificate_is_kept_across_restarts() {
    use std::os::unix::fs::PermissionsExt;
    let dir = data_dir();
    let mut server = TestServer::start(dir.path());
    let first = server.fingerprint.unwrap();
    let fp_text = hyve_client::fingerprint_text(&first);
    assert!(
        server.log().contains(&fp_text),
        "the log shows the fingerprint"
    );
    let key = dir.path().join("hyve/tls/key.pem");
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(server.stop().success());

    let server = TestServer::start(dir.path());
    assert_eq!(server.fingerprint.unwrap(), first, "same certificate");
    // Pinned to the first start's fingerprint, the client still connects.
    let o = server.options_as(USER, PASSWORD);
    assert!(matches!(o.trust, Trust::Fingerprint(Some(f)) if f == first));
    let c = Client::connect_with(&server.ws, &o).await.unwrap();
    c.iohyve("version", json!({})).await.unwrap();
}

fn openssl(args: &[&str], dir: &std::path::Path) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn a_certificate_from_a_real_ca_is_served() {
    // A CA, and a server certificate it signed, as an admin would install.
    let certs = tempfile::tempdir().unwrap();
    let d = certs.path();
    openssl(
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=hyve test CA",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        ],
        d,
    );
    openssl(
        &[
            "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=hyve", "-keyout", "key.pem",
            "-out", "req.csr",
        ],
        d,
    );
    std::fs::write(
        d.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    openssl(
        &[
            "x509",
            "-req",
            "-in",
            "req.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
            "-out",
            "cert.pem",
        ],
        d,
    );

    let dir = data_dir();
    let server = TestServer::start_with_config(
        dir.path(),
        &format!(
            "[tls]\ncert = \"{}\"\nkey = \"{}\"\n",
            d.join("cert.pem").display(),
            d.join("key.pem").display()
        ),
    );
    assert!(
        !dir.path().join("hyve/tls").exists(),
        "nothing self-signed made"
    );
    let o = ConnectOptions {
        trust: Trust::ca_file(&d.join("ca.pem")).unwrap(),
        credentials: Some(Credentials::Password {
            user: USER.into(),
            password: PASSWORD.into(),
        }),
        bearer: None,
    };
    let client = Client::connect_with(&server.ws, &o).await.unwrap();
    client.iohyve("version", json!({})).await.unwrap();
    // The CLI with --ca: no first-use trust needed.
    let home = tempfile::tempdir().unwrap();
    let out = cli(&server, home.path())
        .arg("--ca")
        .arg(d.join("ca.pem"))
        .arg("version")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!home.path().join("known_servers").exists());
}

#[test]
fn without_tls_only_loopback_is_served() {
    let dir = data_dir();
    let out = Command::new(HYVE)
        .args([
            "serve",
            "--no-tls",
            "--ws-listen",
            "0.0.0.0:0",
            "--rest-listen",
            "127.0.0.1:0",
        ])
        .arg("--data-dir")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not a loopback address"), "{err}");
}

/// The CLI with a config folder of its own (nothing known yet).
fn cli(server: &TestServer, home: &std::path::Path) -> Command {
    let mut cmd = Command::new(HYVE);
    cmd.env("HYVE_SERVER", &server.ws)
        .env("HYVE_CONFIG_DIR", home)
        .env("HYVE_USER", USER)
        .env("HYVE_PASSWORD", PASSWORD)
        .env_remove("HYVE_CA")
        .stdin(Stdio::null());
    cmd
}

#[test]
fn the_cli_trusts_on_first_use_and_refuses_a_changed_certificate() {
    let dir = data_dir();
    let server = TestServer::start(dir.path());
    let home = tempfile::tempdir().unwrap();
    let fp = hyve_client::fingerprint_text(&server.fingerprint.unwrap());

    let out = cli(&server, home.path()).arg("version").output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("first connection") && err.contains(&fp),
        "{err}"
    );
    let known = std::fs::read_to_string(home.path().join("known_servers")).unwrap();
    let key = server.ws.trim_start_matches("wss://");
    assert_eq!(known, format!("{key} {fp}\n"));

    // Known now: no notice.
    let out = cli(&server, home.path()).arg("version").output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).is_empty());

    // The server shows another certificate than the one remembered.
    let other = format!("{key} SHA256:{}\n", vec!["AB"; 32].join(":"));
    std::fs::write(home.path().join("known_servers"), &other).unwrap();
    let token_before = std::fs::read_dir(home.path().join("tokens"))
        .unwrap()
        .count();
    let out = cli(&server, home.path()).arg("version").output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("has CHANGED"), "{err}");
    assert!(err.contains(&fp), "the new fingerprint is shown: {err}");
    assert!(err.contains("known_servers"), "and what to do: {err}");
    assert_eq!(
        std::fs::read_to_string(home.path().join("known_servers")).unwrap(),
        other
    );
    assert_eq!(
        std::fs::read_dir(home.path().join("tokens"))
            .unwrap()
            .count(),
        token_before
    );
}

#[test]
fn the_cli_trusts_a_ca_file() {
    let dir = data_dir();
    let server = TestServer::start(dir.path());
    let home = tempfile::tempdir().unwrap();
    let ca = dir.path().join("hyve/tls/cert.pem");
    let out = cli(&server, home.path())
        .arg("--ca")
        .arg(&ca)
        .arg("version")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !home.path().join("known_servers").exists(),
        "no first-use trust with --ca"
    );
    // A CA that did not sign the server's certificate.
    let other = data_dir();
    let other_server = TestServer::start(other.path());
    let out = cli(&server, home.path())
        .arg("--ca")
        .arg(other.path().join("hyve/tls/cert.pem"))
        .arg("version")
        .output()
        .unwrap();
    assert!(!out.status.success());
    drop(other_server);
}
