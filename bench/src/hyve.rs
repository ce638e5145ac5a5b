//! A `hyve serve` process run the way an operator runs it (TLS, logins, a
//! config file), and the ways the suite talks to it: WebSocket and REST
//! connections that are logged in, and the `hyve` CLI with its config
//! folder (pinned certificate and kept token) prepared as `hyve login`
//! leaves it.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use hyve_client::{fingerprint_text, Client, ConnectOptions, Credentials, Fingerprint, Trust};
use rustls_pki_types::pem::PemObject;
use serde_json::{json, Value};

pub const USER: &str = "bench";
pub const PASSWORD: &str = "bench password, not a secret";

pub type RawWs =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

pub struct Hyve {
    child: Child,
    pub pid: u32,
    pub ws: String,
    pub rest: String,
    pub fingerprint: Fingerprint,
    pub cert_pem: Vec<u8>,
    pub data: PathBuf,
    pub cli_dir: PathBuf,
    pub token: String,
    bin: PathBuf,
}

impl Hyve {
    /// Starts `bin serve` over `root/data` with `config` as its config file,
    /// on free loopback ports, with the full user `USER`; logs in once and
    /// keeps the token.
    pub async fn start(bin: &Path, root: &Path, config: &str) -> anyhow::Result<Hyve> {
        let data = root.join("data");
        std::fs::create_dir_all(&data)?;
        let cfg = root.join("hyve.toml");
        std::fs::write(&cfg, config)?;
        // `bin <args>` on this data dir and config, as the server runs.
        let on_data = |args: &[&str]| {
            let mut c = Command::new(bin);
            c.args(args)
                .arg("--data-dir")
                .arg(&data)
                .arg("--config")
                .arg(&cfg);
            c
        };
        let mut add = on_data(&["user", "add", USER, "--role", "full", "--password-stdin"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("cannot run hyve user add")?;
        writeln!(add.stdin.take().expect("piped"), "{PASSWORD}")?;
        let out = add.wait_with_output()?;
        if !out.status.success() {
            bail!("hyve user add: {}", String::from_utf8_lossy(&out.stderr));
        }
        let log_path = root.join("server.log");
        let mut child = on_data(&[
            "serve",
            "--ws-listen",
            "127.0.0.1:0",
            "--rest-listen",
            "127.0.0.1:0",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot run hyve serve")?;
        let stderr = child.stderr.take().expect("piped");
        let (tx, rx) = std::sync::mpsc::channel();
        // The log is drained to a file all along, so the server never
        // blocks on a full pipe.
        std::thread::spawn(move || {
            let mut log = std::fs::File::create(&log_path).ok();
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("listening ws=") {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(line.clone());
                    }
                }
                if let Some(f) = log.as_mut() {
                    let _ = writeln!(f, "{line}");
                }
            }
        });
        let line = rx.recv_timeout(Duration::from_secs(60)).map_err(|_| {
            anyhow!(
                "hyve serve did not start; see its log under {}",
                root.display()
            )
        })?;
        let field = |key: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(key))
                .map(str::to_string)
                .ok_or_else(|| anyhow!("no {key} in {line:?}"))
        };
        let (ws, rest) = (field("ws=")?, field("rest=")?);
        let cert_pem = std::fs::read(data.join("hyve/tls/cert.pem"))?;
        let der = rustls_pki_types::CertificateDer::from_pem_slice(&cert_pem)
            .map_err(|e| anyhow!("the server's certificate: {e}"))?;
        let fingerprint = hyve_client::tls::fingerprint_of(der.as_ref());
        let pid = child.id();
        let options = ConnectOptions {
            trust: Trust::Fingerprint(Some(fingerprint)),
            credentials: Some(Credentials::Password {
                user: USER.into(),
                password: PASSWORD.into(),
            }),
            bearer: None,
        };
        let c = Client::connect_with(&ws, &options).await?;
        let (token, _) = c.token().ok_or_else(|| anyhow!("no token"))?;
        // The CLI's folder as `hyve login` leaves it.
        let cli_dir = root.join("cli");
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(cli_dir.join("tokens"))?;
        let key = ws.trim_start_matches("wss://").to_string();
        std::fs::write(
            cli_dir.join("known_servers"),
            format!("{key} {}\n", fingerprint_text(&fingerprint)),
        )?;
        std::fs::write(
            cli_dir.join("tokens").join(key.replace(':', "_")),
            format!("{token}\n"),
        )?;
        let _ = child.try_wait();
        Ok(Hyve {
            child,
            pid,
            ws,
            rest,
            fingerprint,
            cert_pem,
            data,
            cli_dir,
            token,
            bin: bin.to_path_buf(),
        })
    }

    /// Connect options that log in with the kept token.
    pub fn options(&self) -> ConnectOptions {
        ConnectOptions {
            trust: Trust::Fingerprint(Some(self.fingerprint)),
            credentials: Some(Credentials::Token(self.token.clone())),
            bearer: None,
        }
    }

    /// A client logged in with `rpc/auth_token`.
    pub async fn client(&self) -> anyhow::Result<Client> {
        Ok(Client::connect_with(&self.ws, &self.options()).await?)
    }

    /// A raw WebSocket, logged in by `Authorization: Bearer` on the upgrade.
    pub async fn raw(&self) -> anyhow::Result<RawWs> {
        let o = ConnectOptions {
            trust: Trust::Fingerprint(Some(self.fingerprint)),
            credentials: None,
            bearer: Some(self.token.clone()),
        };
        Ok(hyve_client::open(&self.ws, &o).await?.0)
    }

    /// An HTTPS client that trusts the server's certificate.
    pub fn http(&self) -> anyhow::Result<reqwest::Client> {
        Ok(reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(&self.cert_pem)?)
            .build()?)
    }

    /// The `hyve` CLI pointed at this server, logged in as `hyve login`
    /// leaves it.
    pub fn cli(&self) -> Command {
        let mut c = Command::new(&self.bin);
        c.env("HYVE_SERVER", &self.ws)
            .env("HYVE_CONFIG_DIR", &self.cli_dir)
            .env("HYVE_USER", USER)
            .env("HYVE_PASSWORD", PASSWORD)
            .env_remove("HYVE_CA");
        c
    }

    /// VmRSS and VmHWM in KiB.
    pub fn memory_kib(&self) -> (u64, u64) {
        crate::proc::memory_kib(self.pid).unwrap_or((0, 0))
    }

    /// The folder of a guest in pool `tank`.
    pub fn guest_dir(&self, name: &str) -> PathBuf {
        self.data.join("tank/iohyve").join(name)
    }

    /// SIGTERM, then wait (SIGKILL after 30 s).
    pub fn stop(&mut self) {
        if let Some(pid) = rustix::process::Pid::from_raw(self.pid as i32) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        for _ in 0..300 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Hyve {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.stop();
        }
    }
}

/// The frame of one `sysadm/iohyve` request.
pub fn frame(id: &str, args: Value) -> String {
    json!({"namespace": "sysadm", "name": "iohyve", "id": id, "args": args}).to_string()
}

/// Creates guests `names` (sparse disk0 of `size`) over one connection,
/// `parallel` requests in flight at once.
pub async fn create_guests(
    c: &Client,
    names: &[String],
    size: &str,
    parallel: usize,
) -> anyhow::Result<()> {
    use futures_util::stream::{self, TryStreamExt};
    stream::iter(names.iter().map(Ok::<_, anyhow::Error>))
        .try_for_each_concurrent(parallel, |n| async move {
            c.iohyve("create", json!({"name": n, "size": size}))
                .await
                .map(|_| ())
                .map_err(|e| anyhow!("create {n}: {e}"))
        })
        .await?;
    Ok(())
}
