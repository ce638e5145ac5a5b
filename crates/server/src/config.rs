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
    pub qemu: QemuConfig,
    pub vm: VmConfig,
    pub tasks: TasksConfig,
    pub fetch: FetchConfig,
}

/// `[qemu]`: the QEMU driver.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QemuConfig {
    /// The emulator; a bare name is looked up in PATH.
    pub binary: PathBuf,
    /// `auto` (KVM when a probe guest proves it works, else TCG), `kvm`, `tcg`.
    pub accel: String,
    /// UEFI firmware code for `loader` = uefi (Debian package ovmf).
    pub ovmf_code: PathBuf,
    /// The template each UEFI guest's variable store is copied from.
    pub ovmf_vars: PathBuf,
}

impl Default for QemuConfig {
    fn default() -> Self {
        QemuConfig {
            binary: "qemu-system-x86_64".into(),
            accel: "auto".into(),
            ovmf_code: "/usr/share/OVMF/OVMF_CODE_4M.fd".into(),
            ovmf_vars: "/usr/share/OVMF/OVMF_VARS_4M.fd".into(),
        }
    }
}

/// `[tasks]`: background work (ISO downloads).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TasksConfig {
    /// Tasks running at once; more wait as pending.
    pub max_concurrent: usize,
    /// Finished tasks remembered for `rpc/dispatcher list`.
    pub history: usize,
}

impl Default for TasksConfig {
    fn default() -> Self {
        let d = hyve_engine::tasks::TaskLimits::default();
        TasksConfig {
            max_concurrent: d.max_concurrent,
            history: d.history,
        }
    }
}

/// `[vm]`: how guests are run, whatever the hypervisor.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VmConfig {
    /// Seconds `stop` waits after the ACPI power button before powering off.
    pub stop_timeout: u64,
    /// `persist`: at most this many restarts of a guest...
    pub restart_limit: u32,
    /// ...within this many seconds; then it stays down (crash-loop guard).
    pub restart_window: u64,
    /// Recent console output kept per guest (and the most `consolelog` returns).
    pub console_buffer: String,
    /// Each guest's `console.log` is cut back past this size.
    pub console_log_max: String,
    /// The bridge made for the setup nic when the nic is on no bridge.
    pub bridge: String,
}

impl Default for VmConfig {
    fn default() -> Self {
        VmConfig {
            stop_timeout: 60,
            restart_limit: 5,
            restart_window: 600,
            console_buffer: "64K".into(),
            console_log_max: "1M".into(),
            bridge: "hyvebr0".into(),
        }
    }
}

/// `[fetch]`: how `fetchiso` downloads.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FetchConfig {
    /// Seconds to wait for a connection.
    pub connect_timeout: u64,
    /// Seconds without a byte before a download counts as stalled.
    pub stall_timeout: u64,
    /// Redirects followed at most.
    pub max_redirects: usize,
    /// Times an interrupted http(s) download is resumed before it fails.
    pub retries: u32,
    /// Folders `file://` URLs may read below; none means no `file://`.
    pub file_roots: Vec<PathBuf>,
    /// PEM files of extra certificate authorities trusted for https.
    pub ca_files: Vec<PathBuf>,
}

impl Default for FetchConfig {
    fn default() -> Self {
        let d = hyve_engine::fetch::FetchConfig::default();
        FetchConfig {
            connect_timeout: d.connect_timeout.as_secs(),
            stall_timeout: d.stall_timeout.as_secs(),
            max_redirects: d.max_redirects,
            retries: d.retries,
            file_roots: Vec::new(),
            ca_files: Vec::new(),
        }
    }
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
    /// Open connections from one client address; more are answered 503, so
    /// that one client (slow, stuck or hostile) cannot take every slot.
    pub max_connections_per_address: usize,
    /// Seconds a client has to send a request head or a REST body, and to
    /// take a reply the server is writing; past it the connection is closed.
    pub client_timeout_secs: u64,
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
            max_connections_per_address: 64,
            client_timeout_secs: 30,
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
    pub max_connections_per_address: usize,
    pub client_timeout: std::time::Duration,
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
            qemu: QemuConfig::default(),
            vm: VmConfig::default(),
            tasks: TasksConfig::default(),
            fetch: FetchConfig::default(),
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
        self.vmm()?;
        self.accel()?;
        self.task_limits()?;
        for (what, v) in [
            ("connect_timeout", self.fetch.connect_timeout),
            ("stall_timeout", self.fetch.stall_timeout),
        ] {
            if v == 0 || v > 24 * 3600 {
                anyhow::bail!("[fetch] {what} must be between 1 and 86400 seconds");
            }
        }
        if self.fetch.max_redirects > 50 {
            anyhow::bail!("[fetch] max_redirects must be at most 50");
        }
        for p in self.fetch.file_roots.iter().chain(&self.fetch.ca_files) {
            if !p.is_absolute() {
                anyhow::bail!("[fetch] {}: paths must be absolute", p.display());
            }
        }
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

    /// The accelerator choice, from `[qemu] accel`.
    pub fn accel(&self) -> anyhow::Result<hyve_engine::vmm::accel::AccelChoice> {
        hyve_engine::vmm::accel::AccelChoice::parse(&self.qemu.accel)
            .map_err(|e| anyhow::anyhow!("[qemu] {e}"))
    }

    /// The supervisor's settings, from `[vm]`.
    pub fn vmm(&self) -> anyhow::Result<hyve_engine::VmmConfig> {
        let v = &self.vm;
        let size = |key: &str, s: &str, min: u64, max: u64| {
            let b = Size::parse(s)
                .map_err(|e| anyhow::anyhow!("[vm] {key}: {e}"))?
                .bytes();
            if b < min || b > max {
                anyhow::bail!(
                    "[vm] {key} must be from {} to {}",
                    Size::from_bytes(min),
                    Size::from_bytes(max)
                );
            }
            Ok(b)
        };
        if !(1..=3600).contains(&v.stop_timeout) {
            anyhow::bail!("[vm] stop_timeout must be from 1 to 3600 seconds");
        }
        if v.restart_window == 0 {
            anyhow::bail!("[vm] restart_window must be at least 1 second");
        }
        validate::nic_name(&v.bridge).map_err(|e| anyhow::anyhow!("[vm] bridge: {e}"))?;
        Ok(hyve_engine::VmmConfig {
            stop_timeout: std::time::Duration::from_secs(v.stop_timeout),
            restart_limit: v.restart_limit,
            restart_window: std::time::Duration::from_secs(v.restart_window),
            console_buffer: size("console_buffer", &v.console_buffer, 1 << 10, 16 << 20)? as usize,
            console_log_max: size("console_log_max", &v.console_log_max, 64 << 10, 1 << 30)?,
            bridge: v.bridge.clone(),
        })
    }

    /// The dispatcher's limits, from `[tasks]`.
    pub fn task_limits(&self) -> anyhow::Result<hyve_engine::tasks::TaskLimits> {
        if self.tasks.max_concurrent == 0 {
            anyhow::bail!("[tasks] max_concurrent must be at least 1");
        }
        Ok(hyve_engine::tasks::TaskLimits {
            max_concurrent: self.tasks.max_concurrent,
            history: self.tasks.history,
        })
    }

    /// The downloaders' settings, from `[fetch]`: reads the CA files and
    /// resolves the file roots, so a missing one stops the server at start
    /// rather than failing each download.
    pub fn fetch_config(&self) -> anyhow::Result<hyve_engine::fetch::FetchConfig> {
        let f = &self.fetch;
        let mut roots = Vec::new();
        for r in &f.file_roots {
            let c = std::fs::canonicalize(r).map_err(|e| {
                anyhow::anyhow!("[fetch] file_roots: cannot use {}: {e}", r.display())
            })?;
            if !c.is_dir() {
                anyhow::bail!("[fetch] file_roots: {} is not a folder", r.display());
            }
            roots.push(c);
        }
        let mut pems = Vec::new();
        for p in &f.ca_files {
            let pem = std::fs::read(p).map_err(|e| {
                anyhow::anyhow!("[fetch] ca_files: cannot read {}: {e}", p.display())
            })?;
            pems.push(pem);
        }
        Ok(hyve_engine::fetch::FetchConfig {
            connect_timeout: std::time::Duration::from_secs(f.connect_timeout),
            stall_timeout: std::time::Duration::from_secs(f.stall_timeout),
            max_redirects: f.max_redirects,
            retries: f.retries,
            file_roots: roots,
            ca_pems: pems,
        })
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
        if l.max_connections_per_address == 0 {
            anyhow::bail!("[limits] max_connections_per_address must be at least 1");
        }
        if !(1..=3600).contains(&l.client_timeout_secs) {
            anyhow::bail!("[limits] client_timeout_secs must be from 1 to 3600");
        }
        Ok(NetLimits {
            max_connections: l.max_connections,
            max_frame_bytes: bytes("max_frame_size", &l.max_frame_size)?,
            max_body_bytes: bytes("max_body_size", &l.max_body_size)?,
            max_in_flight: l.max_in_flight,
            max_connections_per_address: l.max_connections_per_address,
            client_timeout: std::time::Duration::from_secs(l.client_timeout_secs),
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
        assert_eq!(n.max_connections_per_address, 64);
        assert_eq!(n.client_timeout, std::time::Duration::from_secs(30));
        let mut bad = c.clone();
        bad.limits.max_connections_per_address = 0;
        assert!(bad.check().is_err());
        bad.limits.max_connections_per_address = 1;
        bad.limits.client_timeout_secs = 0;
        assert!(bad.check().is_err());
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
        assert!(Config::parse("[qemu]\naccel = \"xen\"")
            .unwrap()
            .check()
            .is_err());
        assert!(Config::parse("[vm]\nstop_timeout = 0")
            .unwrap()
            .check()
            .is_err());
        assert!(Config::parse("[vm]\nbridge = \"br 0\"")
            .unwrap()
            .check()
            .is_err());
        assert!(Config::parse("[vm]\nconsole_buffer = \"1G\"")
            .unwrap()
            .check()
            .is_err());
        let c = Config::parse("[qemu]\naccel = \"tcg\"\n[vm]\nstop_timeout = 5\n").unwrap();
        assert_eq!(c.vmm().unwrap().stop_timeout.as_secs(), 5);
        assert!(Config::parse("[fetch]\nstall_timeot = 3").is_err());
        let mut c = Config::default();
        c.tasks.max_concurrent = 0;
        assert!(c.check().is_err());
        let mut c = Config::default();
        c.fetch.file_roots = vec!["relative/isos".into()];
        assert!(c.check().is_err());
        let mut c = Config::default();
        c.fetch.file_roots = vec!["/nonexistent-hyve-root".into()];
        assert!(c
            .fetch_config()
            .unwrap_err()
            .to_string()
            .contains("file_roots"));
    }

    #[test]
    fn fetch_keys() {
        let c = Config::parse(
            "[tasks]\nmax_concurrent = 4\n[fetch]\nconnect_timeout = 5\nstall_timeout = 7\nmax_redirects = 2\nfile_roots = [\"/\"]\n",
        )
        .unwrap();
        c.check().unwrap();
        assert_eq!(c.task_limits().unwrap().max_concurrent, 4);
        let f = c.fetch_config().unwrap();
        assert_eq!(f.stall_timeout.as_secs(), 7);
        assert_eq!(f.max_redirects, 2);
        assert_eq!(f.file_roots, vec![PathBuf::from("/")]);
    }
}
