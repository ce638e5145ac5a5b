//! Test support: a real `hyve serve` process on loopback ports, clients for
//! both transports, and a snapshot of a data dir to prove nothing changed.
#![allow(dead_code)]

pub mod guest;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

pub mod origin;
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

/// A running server process.
pub struct TestServer {
    child: Child,
    pub ws: String,
    pub rest: String,
    pub data_dir: PathBuf,
    log: Arc<Mutex<String>>,
}

impl TestServer {
    /// Starts `hyve serve --no-tls` on free loopback ports over `data_dir`.
    pub fn start(data_dir: &Path) -> TestServer {
        Self::start_with(data_dir, &[])
    }

    pub fn start_with(data_dir: &Path, extra: &[&str]) -> TestServer {
        let mut cmd = Command::new(HYVE);
        cmd.args([
            "serve",
            "--no-tls",
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
        let line = match rx.recv_timeout(Duration::from_secs(30)) {
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
        TestServer {
            child,
            ws: field("ws="),
            rest: field("rest="),
            data_dir: data_dir.to_path_buf(),
            log,
        }
    }

    /// A ready client (every test goes through here, so that connection
    /// details such as TLS and login live in one place).
    pub async fn client(&self) -> Client {
        Client::connect(&self.ws).await.expect("connect")
    }

    /// A raw WebSocket on `path`, ready for requests, for tests that need
    /// to see or send exact frames.
    pub async fn raw_ws(&self, path: &str) -> RawWs {
        let (ws, _) = tokio_tungstenite::connect_async(format!("{}{path}", self.ws))
            .await
            .expect("connect");
        ws
    }

    /// A raw WebSocket on `path` whose socket has the smallest receive
    /// buffer the kernel allows, so that a test which stops reading it
    /// makes the server's writes to it block after a few kilobytes.
    pub async fn raw_ws_tiny_window(&self, path: &str) -> RawWs {
        let addr: std::net::SocketAddr = self
            .ws
            .trim_start_matches("ws://")
            .parse()
            .expect("ws address");
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.set_recv_buffer_size(1).unwrap();
        let tcp = sock.connect(addr).await.expect("connect");
        let (ws, _) = tokio_tungstenite::client_async(
            format!("{}{path}", self.ws),
            tokio_tungstenite::MaybeTlsStream::Plain(tcp),
        )
        .await
        .expect("websocket handshake");
        ws
    }

    /// `PUT /sysadm/iohyve` with `body`: (status, reply body).
    pub async fn rest(&self, path: &str, body: &str) -> (u16, Value) {
        let r = reqwest::Client::new()
            .put(format!("{}{path}", self.rest))
            .body(body.to_string())
            .send()
            .await
            .expect("rest request");
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
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            if Instant::now() > deadline {
                self.kill();
                panic!("server did not stop on SIGTERM");
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
