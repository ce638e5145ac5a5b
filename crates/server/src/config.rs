//! The server's configuration: embedded defaults, then a TOML file, then
//! command-line flags. Every flag has a key here; unknown keys are errors so
//! that a typo never silently falls back to a default.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use hyve_engine::{validate, Limits, Size};

/// The whole configuration, as read from TOML.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where the server keeps its state and the pools not named in `pools`.
    pub data_dir: PathBuf,
    /// WebSocket listener (`--ws-listen`).
    pub ws_listen: SocketAddr,
    /// REST listener (`--rest-listen`).
    pub rest_listen: SocketAddr,
    /// The log filter, as `RUST_LOG` takes it (`info`, `hyve_server=debug`).
    pub log: String,
    pub tls: TlsConfig,
    pub auth: AuthConfig,
    /// Pool name to folder. Pools not listed are folders under `data_dir`.
    pub pools: BTreeMap<String, PathBuf>,
    pub limits: LimitsConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// Serve wss:// and https:// (`--no-tls` turns it off, loopback only).
    pub enabled: bool,
    /// A certificate chain (PEM) to serve instead of the self-signed one the
    /// server makes on first start; `key` must be given with it.
    pub cert: Option<PathBuf>,
    /// The private key (PEM) of `cert`.
    pub key: Option<PathBuf>,
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            enabled: true,
            cert: None,
            key: None,
        }
    }
}

/// Where accounts come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// Users with argon2id hashes in `<data_dir>/hyve/users.toml`, managed
    /// with `hyve user`.
    File,
    /// The host's users, through PAM; access by group membership.
    Pam,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    pub backend: Backend,
    /// The PAM service (a file in /etc/pam.d) logins go through.
    pub pam_service: String,
    /// PAM backend: members of this group get full access (root always has).
    pub admin_group: String,
    /// PAM backend: members of this group get limited (read-only) access.
    pub operator_group: String,
    /// How long a token lives without being used; every use extends it.
    pub token_lifetime_secs: u64,
    /// How long a WebSocket may stay open without logging in.
    pub login_timeout_secs: u64,
    /// How long a logged-in WebSocket may stay open without a frame.
    pub idle_timeout_secs: u64,
    /// Failed logins from one address that get it blocked...
    pub max_failures: u32,
    /// ...when they fall within this many seconds...
    pub failure_window_secs: u64,
    /// ...for this many seconds (kept across restarts).
    pub block_secs: u64,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            backend: Backend::File,
            pam_service: "login".into(),
            admin_group: "wheel".into(),
            operator_group: "operator".into(),
            token_lifetime_secs: 900,
            login_timeout_secs: 30,
            idle_timeout_secs: 1800,
            max_failures: 5,
            failure_window_secs: 600,
            block_secs: 3600,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// The largest disk `create`, `adddisk` and `resizedisk` accept.
    pub max_disk_size: String,
    /// The most memory `setprop ram` accepts.
    pub max_ram: String,
    /// The most CPUs `setprop cpu` accepts.
    pub max_cpus: u32,
    /// Open connections, both listeners together; more are answered 503.
    pub max_connections: usize,
    /// The largest WebSocket message; a larger one closes the connection
    /// with code 1009.
    pub max_frame_size: String,
    /// The largest REST body; a larger one is answered 413.
    pub max_body_size: String,
    /// Requests one WebSocket may have running at once; more are answered 429.
    pub max_in_flight: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_disk_size: "16T".into(),
            max_ram: "1T".into(),
            max_cpus: 128,
            max_connections: 256,
            max_frame_size: "1M".into(),
            max_body_size: "1M".into(),
            max_in_flight: 32,
        }
    }
}

/// The transport limits of `[limits]`, checked and in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetLimits {
    pub max_connections: usize,
    pub max_frame_bytes: usize,
    pub max_body_bytes: usize,
    pub max_in_flight: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: default_data_dir(),
            ws_listen: "127.0.0.1:12150".parse().expect("valid"),
            rest_listen: "127.0.0.1:12151".parse().expect("valid"),
            log: "info".into(),
            tls: TlsConfig::default(),
            auth: AuthConfig::default(),
            pools: BTreeMap::new(),
            limits: LimitsConfig::default(),
        }
    }
}

/// `/var/lib/hyve` for root; `~/.local/share/hyve` for anyone else.
pub fn default_data_dir() -> PathBuf {
    if rustix::process::geteuid().is_root() {
        return PathBuf::from("/var/lib/hyve");
    }
    if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|x| !x.is_empty()) {
        return PathBuf::from(x).join("hyve");
    }
    match std::env::var_os("HOME") {
        Some(h) => PathBuf::from(h).join(".local/share/hyve"),
        None => PathBuf::from("/var/lib/hyve"),
    }
}

/// Values given on the command line; each overrides its config key.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub data_dir: Option<PathBuf>,
    pub ws_listen: Option<SocketAddr>,
    pub rest_listen: Option<SocketAddr>,
    pub no_tls: bool,
}

impl Config {
    /// Reads `file` (if any) over the defaults, then applies `o`, then checks.
    pub fn load(file: Option<&Path>, o: &Overrides) -> anyhow::Result<Config> {
        let mut cfg = match file {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .map_err(|e| anyhow::anyhow!("cannot read config {}: {e}", p.display()))?;
                Self::parse(&text).map_err(|e| anyhow::anyhow!("config {}: {e}", p.display()))?
            }
            None => Config::default(),
        };
        if let Some(d) = &o.data_dir {
            cfg.data_dir = d.clone();
        }
        if let Some(a) = o.ws_listen {
            cfg.ws_listen = a;
        }
        if let Some(a) = o.rest_listen {
            cfg.rest_listen = a;
        }
        if o.no_tls {
            cfg.tls.enabled = false;
        }
        cfg.check()?;
        Ok(cfg)
    }

    pub fn parse(text: &str) -> anyhow::Result<Config> {
        Ok(toml::from_str(text)?)
    }

    /// Checks what serde cannot: names, sizes, absolute paths, loopback.
    pub fn check(&self) -> anyhow::Result<()> {
        if !self.data_dir.is_absolute() {
            anyhow::bail!("data_dir must be an absolute path");
        }
        for (name, path) in &self.pools {
            validate::pool_name(name).map_err(|e| anyhow::anyhow!("[pools]: {e}"))?;
            if !path.is_absolute() {
                anyhow::bail!("[pools] {name}: the folder must be an absolute path");
            }
        }
        self.limits()?;
        self.net_limits()?;
        if self.tls.cert.is_some() != self.tls.key.is_some() {
            anyhow::bail!("[tls] cert and key go together: give both or neither");
        }
        for (what, p) in [("cert", &self.tls.cert), ("key", &self.tls.key)] {
            if p.as_ref().is_some_and(|p| !p.is_absolute()) {
                anyhow::bail!("[tls] {what} must be an absolute path");
            }
        }
        let a = &self.auth;
        for (what, group) in [
            ("admin_group", &a.admin_group),
            ("operator_group", &a.operator_group),
        ] {
            validate::user_name(group).map_err(|e| anyhow::anyhow!("[auth] {what}: {e}"))?;
        }
        if a.pam_service.is_empty()
            || !a
                .pam_service
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
            || a.pam_service.starts_with('.')
        {
            anyhow::bail!(
                "[auth] pam_service {:?} is not a PAM service name (a file name in /etc/pam.d)",
                a.pam_service
            );
        }
        for (what, v) in [
            ("token_lifetime_secs", a.token_lifetime_secs),
            ("login_timeout_secs", a.login_timeout_secs),
            ("idle_timeout_secs", a.idle_timeout_secs),
            ("failure_window_secs", a.failure_window_secs),
            ("block_secs", a.block_secs),
        ] {
            if v == 0 {
                anyhow::bail!("[auth] {what} must be at least 1");
            }
            if v > 10 * 365 * 24 * 3600 {
                anyhow::bail!("[auth] {what} is more than ten years");
            }
        }
        if a.max_failures == 0 {
            anyhow::bail!("[auth] max_failures must be at least 1");
        }
        if !self.tls.enabled {
            for (what, addr) in [
                ("ws_listen", self.ws_listen),
                ("rest_listen", self.rest_listen),
            ] {
                if !addr.ip().is_loopback() {
                    anyhow::bail!(
                        "{what} {addr} is not a loopback address: without TLS the server only listens on loopback"
                    );
                }
            }
        }
        Ok(())
    }

    /// The transport limits, from `[limits]`.
    pub fn net_limits(&self) -> anyhow::Result<NetLimits> {
        let l = &self.limits;
        let bytes = |key: &str, v: &str| -> anyhow::Result<usize> {
            let b = Size::parse(v)
                .map_err(|e| anyhow::anyhow!("[limits] {key}: {e}"))?
                .bytes();
            if !(1024..=(1 << 30)).contains(&b) {
                anyhow::bail!("[limits] {key} must be between 1K and 1G");
            }
            Ok(b as usize)
        };
        if l.max_connections == 0 {
            anyhow::bail!("[limits] max_connections must be at least 1");
        }
        if l.max_in_flight == 0 {
            anyhow::bail!("[limits] max_in_flight must be at least 1");
        }
        Ok(NetLimits {
            max_connections: l.max_connections,
            max_frame_bytes: bytes("max_frame_size", &l.max_frame_size)?,
            max_body_bytes: bytes("max_body_size", &l.max_body_size)?,
            max_in_flight: l.max_in_flight,
        })
    }

    /// The server's own folder in the data dir (state, users, TLS).
    pub fn state_dir(&self) -> PathBuf {
        self.data_dir.join(validate::STATE_DIR)
    }

    /// The engine's limits, from `[limits]`.
    pub fn limits(&self) -> anyhow::Result<Limits> {
        let size = |key: &str, v: &str| {
            Size::parse(v)
                .map(|s| s.bytes())
                .map_err(|e| anyhow::anyhow!("[limits] {key}: {e}"))
        };
        if self.limits.max_cpus == 0 {
            anyhow::bail!("[limits] max_cpus must be at least 1");
        }
        Ok(Limits {
            max_disk_bytes: size("max_disk_size", &self.limits.max_disk_size)?,
            max_ram_bytes: size("max_ram", &self.limits.max_ram)?,
            max_cpus: self.limits.max_cpus,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_need_no_file() {
        let c = Config::load(None, &Overrides::default()).unwrap();
        assert_eq!(c.ws_listen.port(), 12150);
        assert_eq!(c.rest_listen.port(), 12151);
        // Secure by default: TLS on, logins through the embedded account file.
        assert!(c.tls.enabled);
        assert_eq!(c.auth.backend, Backend::File);
        assert_eq!(c.auth.token_lifetime_secs, 900);
        assert_eq!(
            (
                c.auth.max_failures,
                c.auth.failure_window_secs,
                c.auth.block_secs
            ),
            (5, 600, 3600)
        );
        assert_eq!(
            (c.auth.login_timeout_secs, c.auth.idle_timeout_secs),
            (30, 1800)
        );
        let n = c.net_limits().unwrap();
        assert_eq!(n.max_frame_bytes, 1 << 20);
    }

    #[test]
    fn auth_and_tls_keys() {
        let c = Config::parse(
            "[tls]\ncert = \"/etc/hyve/c.pem\"\nkey = \"/etc/hyve/k.pem\"\n\
             [auth]\nbackend = \"pam\"\nadmin_group = \"sudo\"\ntoken_lifetime_secs = 60\n\
             [limits]\nmax_connections = 4\nmax_body_size = \"64K\"\n",
        )
        .unwrap();
        c.check().unwrap();
        assert_eq!(c.auth.backend, Backend::Pam);
        assert_eq!(c.auth.admin_group, "sudo");
        assert_eq!(c.auth.operator_group, "operator");
        assert_eq!(c.net_limits().unwrap().max_body_bytes, 64 << 10);
        assert_eq!(c.net_limits().unwrap().max_connections, 4);
    }

    #[test]
    fn file_then_flags() {
        let c = Config::parse(
            "data_dir = \"/srv/hyve\"\nws_listen = \"127.0.0.1:1\"\n[pools]\ntank = \"/tank\"\n[limits]\nmax_cpus = 8\n",
        )
        .unwrap();
        assert_eq!(c.data_dir, PathBuf::from("/srv/hyve"));
        assert_eq!(c.pools["tank"], PathBuf::from("/tank"));
        assert_eq!(c.limits().unwrap().max_cpus, 8);
    }

    #[test]
    fn mistakes_are_errors() {
        assert!(Config::parse("ws_lisen = \"127.0.0.1:1\"").is_err());
        assert!(Config::parse("[limits]\nmax_disk_size = 5").is_err());
        let mut c = Config {
            ws_listen: "0.0.0.0:12150".parse().unwrap(),
            ..Config::default()
        };
        c.check().unwrap();
        c.tls.enabled = false;
        assert!(c.check().unwrap_err().to_string().contains("loopback"));
        let mut c = Config::default();
        c.tls.cert = Some("/etc/hyve/cert.pem".into());
        assert!(c.check().unwrap_err().to_string().contains("both"));
        c.tls.key = Some("key.pem".into());
        assert!(c.check().unwrap_err().to_string().contains("absolute"));
        assert!(Config::parse("[auth]\nbackend = \"ldap\"").is_err());
        let mut c = Config::default();
        c.auth.admin_group = "-rf".into();
        assert!(c.check().is_err());
        let mut c = Config::default();
        c.auth.pam_service = "../shadow".into();
        assert!(c.check().is_err());
        let mut c = Config::default();
        c.auth.token_lifetime_secs = 0;
        assert!(c.check().is_err());
        let mut c = Config::default();
        c.limits.max_frame_size = "10".into();
        assert!(c.check().is_err());
        let mut c = Config::default();
        c.pools.insert("../x".into(), "/x".into());
        assert!(c.check().is_err());
        let mut c = Config::default();
        c.limits.max_ram = "lots".into();
        assert!(c.check().is_err());
    }
}
