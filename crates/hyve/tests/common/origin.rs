//! Servers to download from, all real and on loopback: an HTTP server and
//! an HTTPS one (axum, rustls with a certificate made by rcgen for the
//! test) whose files can be told to misbehave, and an FTP server
//! (pyftpdlib, the Debian package scripts/deps installs) started per test.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;

/// How a file of the origin answers.
#[derive(Debug, Clone, PartialEq)]
pub enum Behaviour {
    /// The whole file (or the asked range), in chunks.
    Serve,
    /// Headers, then `n` bytes, then nothing ever again.
    StallAfter(usize),
    /// Headers, then `n` bytes, then the connection is cut.
    CloseAfter(usize),
    /// The first request is cut after `n` bytes; later ones are served.
    CloseOnceAfter(usize),
    /// A 302 to another path of the same origin.
    Redirect(String),
}

#[derive(Clone)]
pub struct File {
    pub data: Bytes,
    pub behaviour: Behaviour,
    /// Bytes per chunk and the pause before each.
    pub chunk: usize,
    pub pause: Duration,
}

impl File {
    pub fn new(data: Vec<u8>) -> File {
        File {
            data: data.into(),
            behaviour: Behaviour::Serve,
            chunk: 64 * 1024,
            pause: Duration::ZERO,
        }
    }

    pub fn behaving(mut self, b: Behaviour) -> File {
        self.behaviour = b;
        self
    }

    /// Sends `chunk` bytes at a time with `pause` before each, so that a
    /// download lasts long enough to watch, kill or interrupt.
    pub fn slowly(mut self, chunk: usize, pause: Duration) -> File {
        self.chunk = chunk;
        self.pause = pause;
        self
    }
}

/// One request as the origin saw it: the path and its Range header.
#[derive(Debug, Clone, PartialEq)]
pub struct Seen {
    pub path: String,
    pub range: Option<String>,
    pub if_range: Option<String>,
}

#[derive(Default)]
struct OriginState {
    files: Mutex<HashMap<String, File>>,
    seen: Mutex<Vec<Seen>>,
    cut_once: Mutex<Vec<String>>,
}

/// A running HTTP or HTTPS origin.
pub struct Origin {
    state: Arc<OriginState>,
    pub base: String,
    /// The CA certificate (PEM) of an HTTPS origin.
    pub ca_pem: Option<String>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub const ETAG: &str = "\"hyve-test-v1\"";

/// Test content: `len` bytes that are not all alike.
pub fn content(len: usize) -> Vec<u8> {
    let mut x: u32 = 0x1234_5678;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

pub fn sha256_hex(data: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(data))
}

fn parse_range(h: &str, len: usize) -> Option<usize> {
    let start: usize = h.strip_prefix("bytes=")?.strip_suffix('-')?.parse().ok()?;
    (start < len).then_some(start)
}

async fn serve_file(State(st): State<Arc<OriginState>>, uri: Uri, headers: HeaderMap) -> Response {
    let path = uri.path().to_string();
    let hv = |n: header::HeaderName| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    st.seen.lock().unwrap().push(Seen {
        path: path.clone(),
        range: hv(header::RANGE),
        if_range: hv(header::IF_RANGE),
    });
    let Some(file) = st.files.lock().unwrap().get(&path).cloned() else {
        return (StatusCode::NOT_FOUND, "no such file").into_response();
    };
    if let Behaviour::Redirect(to) = &file.behaviour {
        return (StatusCode::FOUND, [(header::LOCATION, to.clone())]).into_response();
    }
    let len = file.data.len();
    let range_ok = hv(header::IF_RANGE).is_none_or(|v| v == ETAG);
    let start = match hv(header::RANGE) {
        Some(r) if range_ok => match parse_range(&r, len) {
            Some(s) => Some(s),
            None => {
                return (
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    [(header::CONTENT_RANGE, format!("bytes */{len}"))],
                )
                    .into_response()
            }
        },
        _ => None,
    };
    let limit = match &file.behaviour {
        Behaviour::StallAfter(n) | Behaviour::CloseAfter(n) => Some(*n),
        Behaviour::CloseOnceAfter(n) => {
            let mut cut = st.cut_once.lock().unwrap();
            if cut.contains(&path) {
                None
            } else {
                cut.push(path.clone());
                Some(*n)
            }
        }
        _ => None,
    };
    let stall = matches!(file.behaviour, Behaviour::StallAfter(_));
    let body = file.data.slice(start.unwrap_or(0)..);
    let (chunk, pause) = (file.chunk.max(1), file.pause);
    let stream = futures_util::stream::unfold(0usize, move |sent| {
        let body = body.clone();
        async move {
            if let Some(n) = limit {
                if sent >= n {
                    if stall {
                        std::future::pending::<()>().await;
                    }
                    // Let hyper write out what was sent before the cut, as
                    // a server that dies mid-body would have.
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    return Some((Err(std::io::Error::other("cut by the test")), usize::MAX));
                }
            }
            if sent >= body.len() {
                return None;
            }
            if !pause.is_zero() {
                tokio::time::sleep(pause).await;
            }
            let mut end = (sent + chunk).min(body.len());
            if let Some(n) = limit {
                end = end.min(n);
            }
            Some((Ok::<Bytes, std::io::Error>(body.slice(sent..end)), end))
        }
    });
    let mut resp = Response::new(Body::from_stream(stream));
    if start.is_some() {
        *resp.status_mut() = StatusCode::PARTIAL_CONTENT;
    }
    let h = resp.headers_mut();
    h.insert(header::ACCEPT_RANGES, "bytes".parse().unwrap());
    h.insert(header::ETAG, ETAG.parse().unwrap());
    h.insert(
        header::CONTENT_TYPE,
        "application/octet-stream".parse().unwrap(),
    );
    match start {
        Some(s) => {
            h.insert(
                header::CONTENT_RANGE,
                format!("bytes {s}-{}/{len}", len - 1).parse().unwrap(),
            );
            h.insert(header::CONTENT_LENGTH, (len - s).into());
        }
        None => {
            h.insert(header::CONTENT_LENGTH, len.into());
        }
    }
    resp
}

impl Origin {
    fn router(state: Arc<OriginState>) -> Router {
        Router::new().fallback(serve_file).with_state(state)
    }

    /// A plain HTTP origin on 127.0.0.1.
    pub async fn http() -> Origin {
        let state = Arc::new(OriginState::default());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = Self::router(state.clone());
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Origin {
            state,
            base: format!("http://{addr}"),
            ca_pem: None,
            task,
        }
    }

    /// An HTTPS origin on 127.0.0.1 with a certificate for that address,
    /// signed by a CA made for this test ([`Origin::ca_pem`]).
    pub async fn https() -> Origin {
        let (ca_pem, config) = tls_config();
        let state = Arc::new(OriginState::default());
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let app = Self::router(state.clone());
        let server = axum_server::tls_rustls::from_tcp_rustls(
            listener,
            axum_server::tls_rustls::RustlsConfig::from_config(Arc::new(config)),
        )
        .unwrap();
        let task = tokio::spawn(async move {
            server.serve(app.into_make_service()).await.unwrap();
        });
        Origin {
            state,
            base: format!("https://{addr}"),
            ca_pem: Some(ca_pem),
            task,
        }
    }

    /// Serves `file` at `path` (from now on).
    pub fn put(&self, path: &str, file: File) -> String {
        self.state
            .files
            .lock()
            .unwrap()
            .insert(path.to_string(), file);
        format!("{}{path}", self.base)
    }

    /// Every request so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }
}

/// A CA and a server certificate for 127.0.0.1 signed by it: the CA's PEM
/// and the server's rustls config.
fn tls_config() -> (String, rustls::ServerConfig) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    // A name of its own, as two real CAs would have.
    ca.distinguished_name.push(
        DnType::CommonName,
        format!("hyve test CA {}", rand_suffix()),
    );
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &issuer)
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
        )
        .unwrap();
    (ca_cert.pem(), config)
}

fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(std::process::id() as u64);
    h.finish()
}

/// A real FTP server (pyftpdlib) serving `root` read-only to one user.
pub struct FtpServer {
    child: Child,
    pub port: u16,
}

/// The Python that has Debian's pyftpdlib (`python3-pyftpdlib`).
const SYSTEM_PYTHON: &str = "/usr/bin/python3";

impl FtpServer {
    pub fn start(root: &Path, user: &str, password: &str) -> FtpServer {
        let mut child = Command::new(SYSTEM_PYTHON)
            .args(["-m", "pyftpdlib", "-i", "127.0.0.1", "-p", "0", "-d"])
            .arg(root)
            .args(["-u", user, "-P", password])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start pyftpdlib (scripts/deps installs python3-pyftpdlib)");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            let mut all = String::new();
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                all.push_str(&line);
                all.push('\n');
                // ">>> starting FTP server on 127.0.0.1:PORT, pid=N <<<"
                if let Some(rest) = line.split("starting FTP server on ").nth(1) {
                    let port = rest
                        .split(',')
                        .next()
                        .and_then(|a| a.rsplit(':').next())
                        .and_then(|p| p.parse::<u16>().ok());
                    if let (Some(tx), Some(p)) = (tx.take(), port) {
                        let _ = tx.send(Ok(p));
                    }
                }
            }
            if let Some(tx) = tx.take() {
                let _ = tx.send(Err(all));
            }
        });
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(Ok(port)) => FtpServer { child, port },
            Ok(Err(log)) => panic!("pyftpdlib did not start:\n{log}"),
            Err(_) => {
                let _ = child.kill();
                panic!("pyftpdlib did not start within 60 s");
            }
        }
    }
}

impl Drop for FtpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes a server config with `toml` (the `[fetch]`/`[tasks]` sections a
/// test needs) into `dir`; pass it as `--config`.
pub fn write_config(dir: &Path, toml: &str) -> PathBuf {
    let p = dir.join("hyve.toml");
    std::fs::write(&p, toml).unwrap();
    p
}
