//! Support for tests with real guests: the test ISO, a TCG config, waiting
//! for a guest's state, and a guard that kills every QEMU a test left.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{Client, TestServer};

/// Deadline for anything a guest does (boot, power off). Generous: a TCG
/// guest that boots in 5 s alone may take many times that on a loaded
/// 2-core machine. Tests wait for behaviour; this only bounds a hang.
pub const GUEST_DEADLINE: Duration = Duration::from_secs(240);

/// The marker the test guest prints once its init runs.
pub const MARKER: &str = "HYVE-TEST-GUEST up boot=";

/// Builds (once, cached by content) the test ISO with scripts/test-guest
/// and returns its path.
pub fn test_iso() -> PathBuf {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/test-guest");
    let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("test-guest");
    let out = Command::new(&script)
        .arg(&cache)
        .output()
        .expect("run scripts/test-guest");
    assert!(
        out.status.success(),
        "scripts/test-guest failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let path = PathBuf::from(String::from_utf8(out.stdout).unwrap().trim());
    assert!(path.is_file(), "no ISO at {}", path.display());
    path
}

/// Writes a config that runs guests under TCG (KVM hangs on some hosts
/// that have /dev/kvm; tests must not depend on it) and returns its path.
pub fn tcg_config(dir: &Path, extra: &str) -> PathBuf {
    let p = dir.join("hyve-test.toml");
    std::fs::write(
        &p,
        format!("[qemu]\naccel = \"tcg\"\n\n[vm]\nstop_timeout = 120\n{extra}\n"),
    )
    .unwrap();
    p
}

/// Starts a server over `data` with the TCG config.
pub fn start_server(data: &Path, extra_config: &str) -> TestServer {
    let cfg = tcg_config(data.parent().unwrap(), extra_config);
    TestServer::start_with(data, &["--config", cfg.to_str().unwrap()])
}

/// A temp folder holding a data dir (`data`) and the config beside it; on
/// drop every QEMU working under it is killed.
pub struct GuestDirs {
    pub root: tempfile::TempDir,
}

impl GuestDirs {
    pub fn new() -> GuestDirs {
        let root = tempfile::Builder::new()
            .prefix("hyve-gtest-")
            .tempdir()
            .unwrap();
        std::fs::create_dir(root.path().join("data")).unwrap();
        GuestDirs { root }
    }

    pub fn data(&self) -> PathBuf {
        self.root.path().join("data")
    }
}

impl Drop for GuestDirs {
    fn drop(&mut self) {
        for pid in qemu_pids_under(self.root.path()) {
            let _ = rustix::process::kill_process(
                rustix::process::Pid::from_raw(pid).unwrap(),
                rustix::process::Signal::KILL,
            );
        }
    }
}

/// Live (non-zombie) processes whose working folder is under `dir`.
pub fn qemu_pids_under(dir: &Path) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if !alive(pid) {
            continue;
        }
        if let Ok(cwd) = std::fs::read_link(e.path().join("cwd")) {
            if cwd.starts_with(dir) {
                out.push(pid);
            }
        }
    }
    out
}

/// Whether `pid` is a live process (a zombie is not).
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => !matches!(
            s.rsplit_once(") ").and_then(|(_, r)| r.chars().next()),
            Some('Z') | Some('X') | None
        ),
        Err(_) => false,
    }
}

/// Sets up pool tank (nic `nic`), creates `name` (64M disk, 128M of RAM)
/// and puts the test ISO in the store as `iso`.
pub async fn guest_with_iso(c: &Client, data: &Path, nic: &str, name: &str, iso: &str) {
    c.iohyve("setup", json!({"pool": "tank", "nic": nic}))
        .await
        .unwrap();
    c.iohyve("create", json!({"name": name, "size": "64M"}))
        .await
        .unwrap();
    c.iohyve("setprop", json!({"name": name, "ram": "128M"}))
        .await
        .unwrap();
    std::fs::copy(test_iso(), super::iso_dir(data).join(iso)).unwrap();
}

/// The guest's folder in pool tank.
pub fn guest_dir(data: &Path, name: &str) -> PathBuf {
    data.join("tank/iohyve").join(name)
}

/// The pid in the guest's QEMU pidfile.
pub fn qemu_pid(data: &Path, name: &str) -> i32 {
    std::fs::read_to_string(guest_dir(data, name).join("run/qemu.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// Polls `f` until it returns `Some`, failing with `what` at the deadline.
pub async fn wait_for<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let end = Instant::now() + GUEST_DEADLINE;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < end, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The guest's listvms line.
pub async fn vm_state(c: &Client, name: &str) -> Value {
    c.iohyve("listvms", json!({})).await.unwrap()[name].clone()
}

/// Waits until listvms shows `running` (YES/NO) for the guest.
pub async fn wait_running(c: &Client, name: &str, running: &str) {
    wait_for(&format!("{name} running={running}"), || async {
        (vm_state(c, name).await["running"] == running).then_some(())
    })
    .await
}

/// Waits until the guest's consolelog contains `text`; returns the log.
pub async fn wait_console(c: &Client, name: &str, text: &str) -> String {
    wait_for(&format!("{text:?} on {name}'s console"), || async {
        let log = c
            .iohyve("consolelog", json!({ "name": name }))
            .await
            .unwrap()[name]
            .as_str()
            .unwrap()
            .to_string();
        log.contains(text).then_some(log)
    })
    .await
}

/// The boot device named in the last marker line of a console log.
pub fn last_boot(log: &str) -> String {
    let at = log.rfind(MARKER).expect("marker in the log") + MARKER.len();
    log[at..]
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_string()
}
