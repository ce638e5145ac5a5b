//! Test support: a real `hyve serve` process on loopback ports (TLS and
//! logins on, as shipped), clients for both transports that trust its
//! certificate and log in by themselves, and a snapshot of a data dir to
//! prove nothing changed.
#![allow(dead_code)]

pub mod guest;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustls_pki_types::pem::PemObject;
use serde_json::Value;
use sha2::Digest;

pub mod origin;
pub mod reliability;
pub mod tasks;

pub use hyve_client::Client;

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

pub type RawWs =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Sends one text frame and returns the next text frame, parsed.
pub async fn roundtrip(ws: &mut RawWs, text: &str) -> Value {
    ws.send(Message::Text(text.to_string().into()))
        .await
        .unwrap();
    next_json(ws).await
}

/// The next text (or binary) frame, parsed as JSON.
pub async fn next_json(ws: &mut RawWs) -> Value {
    next_text(ws).await.parse_json()
}

/// The next text (or binary) frame, as text.
pub async fn next_text(ws: &mut RawWs) -> String {
    loop {
        match tokio::time::timeout(Duration::from_secs(30), ws.next())
            .await
            .expect("no frame within 30 s")
            .expect("connection closed")
            .expect("read failed")
        {
            Message::Text(t) => return t.to_string(),
            Message::Binary(b) => return String::from_utf8_lossy(&b).into_owned(),
            _ => continue,
        }
    }
}

trait ParseJson {
    fn parse_json(&self) -> Value;
}

impl ParseJson for String {
    fn parse_json(&self) -> Value {
        serde_json::from_str(self).unwrap_or_else(|e| panic!("not JSON ({e}): {self}"))
    }
}

pub const HYVE: &str = env!("CARGO_BIN_EXE_hyve");

/// The full user every test server starts with.
pub const USER: &str = "tester";
pub const PASSWORD: &str = "correct horse battery staple";

pub use hyve_client::{ConnectOptions, Credentials, Fingerprint, Trust};

/// Adds a user to the account file of `data_dir` with `hyve user add`.
pub fn add_user(data_dir: &Path, config: Option<&Path>, user: &str, role: &str, password: &str) {
    let out = user_cmd(
        data_dir,
        config,
        &["add", user, "--role", role, "--password-stdin"],
        password,
    );
    assert!(
        out.status.success(),
        "hyve user add {user}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `hyve user <args>` on `data_dir`, `stdin` as its input.
pub fn user_cmd(
    data_dir: &Path,
    config: Option<&Path>,
    args: &[&str],
    stdin: &str,
) -> std::process::Output {
    use std::io::Write;
    let mut cmd = Command::new(HYVE);
    cmd.arg("user").args(args).arg("--data-dir").arg(data_dir);
    if let Some(c) = config {
        cmd.arg("--config").arg(c);
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn hyve user");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{stdin}\n").as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

thread_local! {
    /// The user id `TestServer::start_as` runs the server as.
    static SERVE_AS: std::cell::Cell<Option<u32>> = const { std::cell::Cell::new(None) };
}

/// A running server process.
pub struct TestServer {
    child: Child,
    pub ws: String,
    pub rest: String,
    pub data_dir: PathBuf,
    log: Arc<Mutex<String>>,
    /// The served certificate (PEM) and its fingerprint; `None` with --no-tls.
    pub cert_pem: Option<Vec<u8>>,
    pub fingerprint: Option<Fingerprint>,
    /// The config file the server was started with, if any.
    pub config: Option<PathBuf>,
    token: Mutex<Option<String>>,
    /// Where the CLI run by `cli()` keeps its logins.
    cli_home: tempfile::TempDir,
}

impl TestServer {
    /// Starts `hyve serve` (TLS, logins required: the defaults) on free
    /// loopback ports over `data_dir`, with the full user `USER`.
    pub fn start(data_dir: &Path) -> TestServer {
        Self::start_with(data_dir, &[])
    }

    pub fn start_with(data_dir: &Path, extra: &[&str]) -> TestServer {
        Self::launch(data_dir, extra, None)
    }

    /// Starts the server as user id `uid` (its group id the same), as a
    /// server run by a service account would be: file modes then bind it,
    /// as they do not bind root. The data dir is handed to that user.
    pub fn start_as(data_dir: &Path, extra: &[&str], uid: u32) -> TestServer {
        SERVE_AS.with(|u| u.set(Some(uid)));
        let s = Self::launch(data_dir, extra, None);
        SERVE_AS.with(|u| u.set(None));
        s
    }

    /// Starts with a config file holding `toml` (written beside the data
    /// dir's pools, in the data dir itself).
    pub fn start_with_config(data_dir: &Path, toml: &str) -> TestServer {
        let path = data_dir.join("test-config.toml");
        std::fs::write(&path, toml).unwrap();
        Self::launch(data_dir, &[], Some(path))
    }

    fn launch(data_dir: &Path, extra: &[&str], config: Option<PathBuf>) -> TestServer {
        let users = data_dir.join("hyve/users.toml");
        let has_tester = std::fs::read_to_string(&users)
            .map(|t| t.contains(&format!("[users.{USER}]")))
            .unwrap_or(false);
        let pam = config
            .as_ref()
            .map(|c| std::fs::read_to_string(c).unwrap().contains("\"pam\""))
            .unwrap_or(false);
        if !has_tester && !pam {
            add_user(data_dir, config.as_deref(), USER, "full", PASSWORD);
        }
        let serve_as = SERVE_AS.with(|u| u.get());
        if let Some(uid) = serve_as {
            // The data dir and the server's own state; pools are the
            // test's to hand over (one may be read-only by then).
            for (path, recursive) in [
                (data_dir.to_path_buf(), false),
                (data_dir.join("hyve"), true),
            ] {
                let mut chown = Command::new("chown");
                if recursive {
                    chown.arg("-R");
                }
                let st = chown
                    .arg(format!("{uid}:{uid}"))
                    .arg(&path)
                    .status()
                    .unwrap();
                assert!(st.success(), "chown {}", path.display());
            }
        }
        let mut cmd = Command::new(HYVE);
        cmd.args([
            "serve",
            "--ws-listen",
            "127.0.0.1:0",
            "--rest-listen",
            "127.0.0.1:0",
        ])
        .arg("--data-dir")
        .arg(data_dir)
        .args(extra)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
        if let Some(c) = &config {
            cmd.arg("--config").arg(c);
        }
        if let Some(uid) = serve_as {
            use std::os::unix::process::CommandExt;
            cmd.uid(uid).gid(uid);
        }
        let mut child = cmd.spawn().expect("spawn hyve serve");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let log2 = log.clone();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("listening ws=") {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(line.clone());
                    }
                }
                let mut l = log2.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        let line = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(l) => l,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                std::thread::sleep(Duration::from_millis(100));
                panic!("server did not start; its log:\n{}", log.lock().unwrap());
            }
        };
        let field = |key: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(key))
                .unwrap_or_else(|| panic!("no {key} in {line}"))
                .to_string()
        };
        let ws = field("ws=");
        let (cert_pem, fingerprint) = if ws.starts_with("wss://") {
            // The configured certificate, or the self-signed one.
            let configured = config.as_ref().and_then(|c| {
                std::fs::read_to_string(c).unwrap().lines().find_map(|l| {
                    let v = l.trim().strip_prefix("cert")?.trim().strip_prefix('=')?;
                    Some(PathBuf::from(v.trim().trim_matches('"')))
                })
            });
            let path = configured.unwrap_or_else(|| data_dir.join("hyve/tls/cert.pem"));
            let pem = std::fs::read(&path).expect("the served certificate");
            let der = rustls_pki_types::CertificateDer::from_pem_slice(&pem).unwrap();
            let fp: Fingerprint = sha2::Sha256::digest(der.as_ref()).into();
            (Some(pem), Some(fp))
        } else {
            (None, None)
        };
        TestServer {
            child,
            ws,
            rest: field("rest="),
            data_dir: data_dir.to_path_buf(),
            log,
            cert_pem,
            fingerprint,
            config,
            token: Mutex::new(None),
            cli_home: tempfile::tempdir().unwrap(),
        }
    }

    /// How tests trust this server: by its certificate's fingerprint.
    pub fn trust(&self) -> Trust {
        Trust::Fingerprint(self.fingerprint)
    }

    /// Options to connect as `user`.
    pub fn options_as(&self, user: &str, password: &str) -> ConnectOptions {
        ConnectOptions {
            trust: self.trust(),
            credentials: Some(Credentials::Password {
                user: user.into(),
                password: password.into(),
            }),
            bearer: None,
        }
    }

    /// A ready client, logged in as `USER` with rpc/auth (every test goes
    /// through here, so that connection details such as TLS and login live
    /// in one place).
    pub async fn client(&self) -> Client {
        self.client_as(USER, PASSWORD).await
    }

    /// A client logged in as `user`; panics if the login fails.
    pub async fn client_as(&self, user: &str, password: &str) -> Client {
        Client::connect_with(&self.ws, &self.options_as(user, password))
            .await
            .unwrap_or_else(|e| panic!("connect as {user}: {e}"))
    }

    /// A raw WebSocket on `path`, logged in, whose socket has the smallest
    /// receive buffer the kernel allows, so that a test which stops reading
    /// it makes the server's writes to it block after a few kilobytes.
    pub async fn raw_ws_tiny_window(&self, path: &str) -> RawWs {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let url = format!("{}{path}", self.ws);
        let addr: std::net::SocketAddr = self
            .ws
            .trim_start_matches("wss://")
            .trim_start_matches("ws://")
            .parse()
            .expect("ws address");
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.set_recv_buffer_size(1).unwrap();
        let tcp = sock.connect(addr).await.expect("connect");
        let mut request = url.as_str().into_client_request().unwrap();
        request.headers_mut().insert(
            "Authorization",
            format!("Bearer {}", self.token().await).parse().unwrap(),
        );
        let (config, _) = hyve_client::tls::client_config(&self.trust()).unwrap();
        let (ws, _) = tokio_tungstenite::client_async_tls_with_config(
            request,
            tcp,
            None,
            Some(tokio_tungstenite::Connector::Rustls(config)),
        )
        .await
        .expect("websocket handshake");
        ws
    }

    /// A client that has not logged in.
    pub async fn anonymous_client(&self) -> Client {
        let o = ConnectOptions {
            trust: self.trust(),
            ..Default::default()
        };
        Client::connect_with(&self.ws, &o).await.expect("connect")
    }

    /// A token of `USER`, from REST rpc/auth (fetched once).
    pub async fn token(&self) -> String {
        if let Some(t) = self.token.lock().unwrap().clone() {
            return t;
        }
        let r = self
            .http()
            .put(format!("{}/rpc/auth", self.rest))
            .body(serde_json::json!({"username": USER, "password": PASSWORD}).to_string())
            .send()
            .await
            .expect("rest rpc/auth");
        let v: Value = r.json().await.unwrap();
        let t = v["args"][0]
            .as_str()
            .unwrap_or_else(|| panic!("rpc/auth: {v}"))
            .to_string();
        *self.token.lock().unwrap() = Some(t.clone());
        t
    }

    /// A raw WebSocket on `path`, logged in (a Bearer token on the upgrade
    /// request), for tests that need to see or send exact frames.
    pub async fn raw_ws(&self, path: &str) -> RawWs {
        let o = ConnectOptions {
            trust: self.trust(),
            credentials: None,
            bearer: Some(self.token().await),
        };
        hyve_client::open(&format!("{}{path}", self.ws), &o)
            .await
            .expect("connect")
            .0
    }

    /// A raw WebSocket that has not logged in.
    pub async fn raw_ws_anonymous(&self, path: &str) -> RawWs {
        let o = ConnectOptions {
            trust: self.trust(),
            ..Default::default()
        };
        hyve_client::open(&format!("{}{path}", self.ws), &o)
            .await
            .expect("connect")
            .0
    }

    /// An HTTP client that trusts this server's certificate (no login).
    pub fn http(&self) -> reqwest::Client {
        let mut b = reqwest::Client::builder().use_rustls_tls();
        if let Some(pem) = &self.cert_pem {
            b = b
                .tls_built_in_root_certs(false)
                .add_root_certificate(reqwest::Certificate::from_pem(pem).unwrap());
        }
        b.build().unwrap()
    }

    /// `PUT <path>` with `body`, logged in as `USER` (Bearer).
    pub async fn rest_raw(&self, path: &str, body: &str) -> reqwest::Response {
        self.http()
            .put(format!("{}{path}", self.rest))
            .bearer_auth(self.token().await)
            .body(body.to_string())
            .send()
            .await
            .expect("rest request")
    }

    /// `PUT <path>` with `body`, logged in as `USER`: (status, reply body).
    pub async fn rest(&self, path: &str, body: &str) -> (u16, Value) {
        let r = self.rest_raw(path, body).await;
        let status = r.status().as_u16();
        assert_eq!(
            r.headers().get("content-type").map(|v| v.to_str().unwrap()),
            Some("application/json")
        );
        let text = r.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// The `hyve` CLI, pointed at this server and logged in through
    /// HYVE_USER/HYVE_PASSWORD, with its own config folder in which this
    /// server's certificate is already known.
    pub fn cli(&self) -> Command {
        let dir = self.cli_home.path();
        if let Some(fp) = &self.fingerprint {
            let key = self.ws.trim_start_matches("wss://").trim_end_matches('/');
            let line = format!("{key} {}\n", hyve_client::fingerprint_text(fp));
            std::fs::write(dir.join("known_servers"), line).unwrap();
        }
        let mut cmd = Command::new(HYVE);
        cmd.env("HYVE_SERVER", &self.ws)
            .env("HYVE_CONFIG_DIR", dir)
            .env("HYVE_USER", USER)
            .env("HYVE_PASSWORD", PASSWORD)
            .env_remove("HYVE_CA")
            .stdin(Stdio::null());
        cmd
    }

    /// The config folder of the CLI that `cli()` runs.
    pub fn cli_home(&self) -> &Path {
        self.cli_home.path()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait for a clean exit; returns the exit status.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let pid = rustix::process::Pid::from_raw(self.child.id() as i32).unwrap();
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            if Instant::now() > deadline {
                self.kill();
                panic!("server did not stop on SIGTERM; its log:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One entry of a data dir snapshot.
#[derive(Debug, PartialEq, Eq)]
pub enum Entry {
    Dir {
        mode: u32,
    },
    File {
        mode: u32,
        len: u64,
        ino: u64,
        mtime_ns: i128,
        content: Option<Vec<u8>>,
    },
    Link(PathBuf),
}

/// Every path under `root` with its type, mode, size, inode, mtime and
/// (for files up to 1 MiB) content: equal snapshots mean nothing was
/// written, replaced or touched.
pub fn snapshot(root: &Path) -> BTreeMap<PathBuf, Entry> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(root).unwrap().to_path_buf();
            let entry = if m.is_dir() {
                stack.push(p.clone());
                Entry::Dir { mode: m.mode() }
            } else if m.file_type().is_symlink() {
                Entry::Link(std::fs::read_link(&p).unwrap())
            } else {
                Entry::File {
                    mode: m.mode(),
                    len: m.len(),
                    ino: m.ino(),
                    mtime_ns: m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128,
                    content: (m.len() <= 1 << 20).then(|| std::fs::read(&p).unwrap()),
                }
            };
            out.insert(rel, entry);
        }
    }
    out
}

/// Asserts two snapshots are equal, naming the first difference.
pub fn assert_unchanged(
    before: &BTreeMap<PathBuf, Entry>,
    after: &BTreeMap<PathBuf, Entry>,
    what: &str,
) {
    for (p, e) in before {
        match after.get(p) {
            None => panic!("{what}: {} disappeared", p.display()),
            Some(a) if a != e => panic!("{what}: {} changed", p.display()),
            _ => {}
        }
    }
    for p in after.keys() {
        assert!(before.contains_key(p), "{what}: {} appeared", p.display());
    }
}

/// A fresh data dir (removed when the returned guard drops).
pub fn data_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("hyve-test-")
        .tempdir()
        .unwrap()
}

/// Makes the server set up with pool `tank` and nic `re0`.
pub async fn setup(c: &Client) {
    c.iohyve("setup", serde_json::json!({"pool": "tank", "nic": "re0"}))
        .await
        .unwrap();
}

/// The ISO store of pool `tank` under `data_dir`.
pub fn iso_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("tank/iohyve/ISO")
}
