//! The supervisor: one per server, watching every guest's hypervisor.
//!
//! - start/install: spawn the hypervisor in its own session (so it outlives
//!   the server and a terminal's Ctrl-C), with its pidfile, QMP and console
//!   sockets in the guest's run folder; wait until QMP answers.
//! - watch: a task per running guest follows QMP events (paused, resumed,
//!   reset, shutdown) and waits for the process to end (as our child, or
//!   through a pidfd for a re-adopted one).
//! - stop: the ACPI power button over QMP, `stop_timeout`, then `quit`, then
//!   SIGKILL through the pidfd; the caller gets its answer at once.
//! - persist: a hypervisor that ends without a shutdown (killed, crashed)
//!   is started again, at most `restart_limit` times per `restart_window`.
//! - recover: at server start, every guest whose pidfile names a live
//!   process whose working folder is the guest's run folder and whose
//!   arguments name the guest is re-adopted; nothing is ever started twice.
//!   Then guests with `boot` = 1 start, unless they were stopped on purpose
//!   since the host booted.
//!
//! Locking: start holds the engine's guest lock (so delete, resize and a
//! second start wait), and the registry lock while an ISO is looked up and
//! opened (so rmiso sees it in use). The per-guest state is a plain mutex
//! never held across an await.

use std::collections::{HashMap, VecDeque};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::io::unix::AsyncFd;
use tokio::sync::{mpsc, watch};
use tracing::{error, info, warn};

use super::console::{Console, Viewer};
use super::net::{HostNet, NetPlan};
use super::qmp::{Event, Qmp};
use super::runlog::RunLog;
use super::unixsock::unix_connect;
use super::{guest_files, procinfo, run_files, Firmware, Hypervisor, LaunchSpec, NetBackend};
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::keyed_lock::KeyedGuard;
use crate::props;
use crate::size::Size;
use crate::store::GuestRecord;
use crate::validate;

/// How often a starting hypervisor's QMP socket is tried.
const QMP_POLL: Duration = Duration::from_millis(2);

/// The supervisor's settings, from the server's config.
#[derive(Debug, Clone)]
pub struct VmmConfig {
    /// How long `stop` waits for the guest to power off before forcing it.
    pub stop_timeout: Duration,
    /// `persist`: at most this many restarts...
    pub restart_limit: u32,
    /// ...within this window.
    pub restart_window: Duration,
    /// Bytes of recent console output kept in memory (and the most
    /// `consolelog` returns).
    pub console_buffer: usize,
    /// `console.log` is cut back past this many bytes.
    pub console_log_max: u64,
    /// The bridge made for the setup nic when it is on none.
    pub bridge: String,
}

impl Default for VmmConfig {
    fn default() -> Self {
        VmmConfig {
            stop_timeout: Duration::from_secs(60),
            restart_limit: 5,
            restart_window: Duration::from_secs(600),
            console_buffer: 64 * 1024,
            console_log_max: 1 << 20,
            bridge: "hyvebr0".into(),
        }
    }
}

/// What a guest boots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Boot {
    /// `start`: disk0.
    Disk,
    /// `install`: this ISO as a CD, first.
    Cdrom(String),
}

/// What was launched, kept in the run folder for whoever adopts it.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
struct LaunchRecord {
    /// The ISO an install booted; none for a start.
    iso: Option<String>,
    /// The tap device made for the guest.
    tap: Option<String>,
    started: String,
}

impl LaunchRecord {
    fn boot(&self) -> Boot {
        match &self.iso {
            Some(i) => Boot::Cdrom(i.clone()),
            None => Boot::Disk,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum StopKind {
    Graceful,
    Force,
}

/// A running hypervisor.
struct Run {
    pid: i32,
    pidfd: Arc<OwnedFd>,
    launch: LaunchRecord,
    qmp: Option<Arc<Qmp>>,
    paused: bool,
    stop: Option<StopKind>,
    /// QMP reported a shutdown (the guest powered off, or QEMU was asked
    /// to quit): the exit that follows is no crash.
    shutdown: Option<String>,
    since: Instant,
}

struct Guest {
    name: String,
    guest_dir: PathBuf,
    console: Arc<Console>,
    log: RunLog,
    state: Mutex<Option<Run>>,
    /// Whether a hypervisor runs; waiters watch it.
    running: watch::Sender<bool>,
    restarts: Mutex<VecDeque<Instant>>,
}

impl Guest {
    fn run_dir(&self) -> PathBuf {
        self.guest_dir.join(guest_files::RUN_DIR)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Run>> {
        self.state.lock().expect("guest state poisoned")
    }

    fn is_running(&self) -> bool {
        self.lock().is_some()
    }
}

/// How the end of a hypervisor process is seen.
enum Exit {
    /// Our child: `wait` reaps it and gives its status.
    Child(tokio::process::Child),
    /// Adopted from an earlier server: its pidfd turns readable at exit.
    Pidfd(Arc<OwnedFd>, i32),
}

impl Exit {
    async fn wait(self) -> Option<ExitStatus> {
        match self {
            Exit::Child(mut c) => c.wait().await.ok(),
            Exit::Pidfd(fd, pid) => {
                // Our own duplicate, owned by the AsyncFd for as long as it
                // is registered.
                let registered = fd.try_clone().and_then(|own| {
                    // SAFETY: `own` is a fresh descriptor that the AsyncFd
                    // owns and closes; nothing else uses it.
                    unsafe { AsyncFd::register_with_interest(own, tokio::io::Interest::READABLE) }
                        .map_err(std::io::Error::from)
                });
                match registered {
                    Ok(a) => {
                        let _ = a.readable().await;
                    }
                    Err(e) => {
                        // Cannot happen on Linux >= 5.3; keep checking /proc.
                        warn!(error = %e, "cannot watch a pidfd; polling instead");
                        while procinfo::read(pid).is_some() {
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        }
                    }
                }
                None
            }
        }
    }
}

fn describe(status: Option<ExitStatus>) -> String {
    use std::os::unix::process::ExitStatusExt;
    match status {
        None => "(exit status unknown: it was started by an earlier server)".into(),
        Some(s) => match (s.code(), s.signal()) {
            (Some(c), _) => format!("with status {c}"),
            (_, Some(sig)) => format!("killed by signal {sig}"),
            _ => format!("{s}"),
        },
    }
}

async fn recv_event(rx: &mut Option<mpsc::UnboundedReceiver<Event>>) -> Option<Event> {
    match rx {
        Some(r) => r.recv().await,
        None => std::future::pending().await,
    }
}

fn conflict_running(name: &str, what: &str) -> Error {
    Error::conflict(format!("Guest '{name}' is running: stop it before {what}"))
}

pub struct Vmm {
    /// Persist restarts go through a queue served by one task: starting
    /// from inside a watcher would make start's future contain itself.
    restarts: mpsc::UnboundedSender<(String, Boot)>,
    engine: Arc<Engine>,
    hv: Arc<dyn Hypervisor>,
    cfg: VmmConfig,
    net: HostNet,
    guests: Mutex<HashMap<String, Arc<Guest>>>,
}

impl Vmm {
    /// Must be called inside a tokio runtime (it spawns the restart task).
    pub fn new(engine: Arc<Engine>, hv: Arc<dyn Hypervisor>, cfg: VmmConfig) -> Arc<Vmm> {
        let net = HostNet::new(cfg.bridge.clone());
        let (tx, mut rx) = mpsc::unbounded_channel::<(String, Boot)>();
        let vmm = Arc::new(Vmm {
            restarts: tx,
            engine,
            hv,
            cfg,
            net,
            guests: Mutex::new(HashMap::new()),
        });
        let weak = Arc::downgrade(&vmm);
        tokio::spawn(async move {
            while let Some((name, boot)) = rx.recv().await {
                let Some(me) = weak.upgrade() else { break };
                if let Err(e) = me.start(&name, boot).await {
                    error!(guest = %name, error = %e, "persist restart failed");
                    if let Some(g) = me.existing(&name) {
                        g.log.line(&format!("persist restart failed: {e}"));
                    }
                }
            }
        });
        vmm
    }

    pub fn config(&self) -> &VmmConfig {
        &self.cfg
    }

    /// The runtime handle of a guest, made on first use.
    fn handle(&self, rec: &GuestRecord) -> Arc<Guest> {
        let dir = self.engine.store().guest_dir(rec);
        let mut map = self.guests.lock().expect("guest map poisoned");
        if let Some(g) = map.get(&rec.name) {
            if g.guest_dir == dir {
                return g.clone();
            }
        }
        let g = Arc::new(Guest {
            name: rec.name.clone(),
            console: Console::new(
                dir.join(guest_files::CONSOLE_LOG),
                self.cfg.console_buffer,
                self.cfg.console_log_max,
            ),
            log: RunLog::new(dir.join(guest_files::VM_LOG)),
            guest_dir: dir,
            state: Mutex::new(None),
            running: watch::channel(false).0,
            restarts: Mutex::new(VecDeque::new()),
        });
        map.insert(rec.name.clone(), g.clone());
        g
    }

    fn existing(&self, name: &str) -> Option<Arc<Guest>> {
        self.guests
            .lock()
            .expect("guest map poisoned")
            .get(name)
            .cloned()
    }

    fn lookup(&self, name: &str) -> Result<(GuestRecord, Arc<Guest>)> {
        validate::guest_name(name).map_err(Error::invalid)?;
        let rec = self.engine.guest(name)?;
        let g = self.handle(&rec);
        Ok((rec, g))
    }

    // ---- state, for listvms and the busy checks -------------------------

    /// (running, loaded in the hypervisor): a process exists (`vmm`) and
    /// its CPUs run, not paused (`running`).
    pub fn state_of(&self, name: &str) -> (bool, bool) {
        match self.existing(name) {
            Some(g) => match &*g.lock() {
                Some(run) => (!run.paused, true),
                None => (false, false),
            },
            None => (false, false),
        }
    }

    /// Refuses `what` on a running guest.
    pub fn refuse_running(&self, name: &str, what: &str) -> Result<()> {
        if self.existing(name).is_some_and(|g| g.is_running()) {
            return Err(conflict_running(name, what));
        }
        Ok(())
    }

    /// Refuses to remove an ISO a running guest boots from.
    pub fn refuse_iso_in_use(&self, iso: &str) -> Result<()> {
        let map = self.guests.lock().expect("guest map poisoned");
        for g in map.values() {
            if let Some(run) = &*g.lock() {
                if run.launch.iso.as_deref() == Some(iso) {
                    return Err(Error::conflict(format!(
                        "ISO '{iso}' is in use by running guest '{}': stop the guest first",
                        g.name
                    )));
                }
            }
        }
        Ok(())
    }

    /// Drops a deleted guest's runtime handle.
    pub fn forget(&self, name: &str) {
        self.guests.lock().expect("guest map poisoned").remove(name);
    }

    /// The pid of a running guest's hypervisor.
    pub fn pid_of(&self, name: &str) -> Option<i32> {
        self.existing(name)
            .and_then(|g| g.lock().as_ref().map(|r| r.pid))
    }

    // ---- console ----------------------------------------------------------

    /// `consolelog`: the most recent output, at most `bytes` bytes.
    pub fn console_log(&self, name: &str, bytes: Option<&str>) -> Result<String> {
        let n = match bytes {
            Some(b) => {
                validate::console_bytes(b, self.cfg.console_buffer).map_err(Error::invalid)?
            }
            None => self.cfg.console_buffer,
        };
        let (_, g) = self.lookup(name)?;
        Ok(String::from_utf8_lossy(&g.console.recent(n)).into_owned())
    }

    /// Joins a guest's console as a viewer; also says whether it runs.
    pub fn console_viewer(&self, name: &str) -> Result<(Viewer, bool)> {
        let (_, g) = self.lookup(name)?;
        let v = g.console.viewer();
        Ok((v, g.console.attached()))
    }

    // ---- start ------------------------------------------------------------

    /// `install` (Boot::Cdrom) or `start` (Boot::Disk).
    pub async fn start(self: &Arc<Self>, name: &str, boot: Boot) -> Result<()> {
        validate::guest_name(name).map_err(Error::invalid)?;
        if let Boot::Cdrom(iso) = &boot {
            validate::iso_name(iso).map_err(Error::invalid)?;
        }
        let held = self.engine.guest_lock(name).await;
        let rec = self.engine.guest(name)?;
        let g = self.handle(&rec);
        if g.is_running() {
            return Err(Error::conflict(format!(
                "Guest '{name}' is already running"
            )));
        }
        // A hypervisor still running for this guest unwatched is adopted,
        // never doubled.
        if self.adopt(&g).await {
            return Err(Error::conflict(format!(
                "Guest '{name}' is already running"
            )));
        }
        match &boot {
            Boot::Disk => self.launch(&g, &rec, boot.clone(), None, &held).await,
            Boot::Cdrom(iso) => {
                let _r = self.engine.registry_lock().await;
                let path = self.engine.iso_path(iso).await?;
                self.launch(&g, &rec, boot.clone(), Some(path), &held).await
            }
        }
    }

    async fn launch(
        self: &Arc<Self>,
        g: &Arc<Guest>,
        rec: &GuestRecord,
        boot: Boot,
        iso_path: Option<PathBuf>,
        held: &KeyedGuard<'_>,
    ) -> Result<()> {
        let name = rec.name.as_str();
        self.hv.prepare().await?;
        let run_dir = g.run_dir();
        std::fs::DirBuilder::new()
            .recursive(true)
            .create(&run_dir)
            .map_err(|e| Error::io("create", &run_dir, e))?;
        clear_run_dir(&run_dir);

        let mut mac = rec.prop("mac").to_string();
        if mac.is_empty() {
            mac = loop {
                let m = props::random_mac();
                if !self.engine.prop_in_use("mac", &m, name) {
                    break m;
                }
            };
            self.engine
                .set_internal_props_held(held, name, &[("mac", mac.clone())])
                .await?;
        }

        let ram = Size::parse(rec.prop("ram"))
            .map_err(|e| Error::internal(format!("guest '{name}' has a bad ram property: {e}")))?;
        let cpus: u32 = rec
            .prop("cpu")
            .parse()
            .map_err(|_| Error::internal(format!("guest '{name}' has a bad cpu property")))?;
        let firmware = if rec.prop("loader") == "uefi" {
            Firmware::Uefi {
                vars: self.uefi_vars(g)?,
            }
        } else {
            Firmware::Bios
        };
        let disks = rec
            .disks
            .keys()
            .map(|n| self.engine.store().disk_path(rec, *n))
            .collect();

        let setup = self.engine.setup_record().ok_or_else(|| {
            Error::conflict("iohyve is not set up yet: run setup with a pool and a nic first")
        })?;
        let (net, tap) = match self.net.plan(&setup.nic).await? {
            NetPlan::User { reason } => {
                warn!(guest = name, "{reason}");
                g.log.line(&reason);
                (NetBackend::User, None)
            }
            NetPlan::Bridge { bridge } => {
                let tap = rec.prop("tap").to_string();
                self.net.add_tap(&tap, &bridge).await?;
                g.log.line(&format!("network: {tap} on bridge {bridge}"));
                (NetBackend::Tap(tap.clone()), Some(tap))
            }
        };
        let spec = LaunchSpec {
            name: name.to_string(),
            ram_mib: ram.bytes() >> 20,
            cpus,
            disks,
            cdrom: iso_path,
            firmware,
            net,
            mac,
        };
        let result = self.spawn(g, &spec, &boot, tap.clone()).await;
        if result.is_err() {
            if let Some(t) = &tap {
                self.net.remove_tap(t).await;
            }
            clear_run_dir(&run_dir);
            return result;
        }
        let install = if matches!(boot, Boot::Cdrom(_)) {
            "yes"
        } else {
            "no"
        };
        if rec.prop("install") != install {
            if let Err(e) = self
                .engine
                .set_internal_props_held(held, name, &[("install", install.to_string())])
                .await
            {
                warn!(guest = name, error = %e, "guest started, but its install property could not be saved");
            }
        }
        Ok(())
    }

    fn uefi_vars(&self, g: &Guest) -> Result<PathBuf> {
        let (code, template) = self.hv.uefi_files();
        for f in [&code, &template] {
            if !f.is_file() {
                return Err(Error::internal(format!(
                    "loader uefi needs the UEFI firmware {}, which is missing (Debian package ovmf; or set [qemu] ovmf_code and ovmf_vars)",
                    f.display()
                )));
            }
        }
        let vars = g.guest_dir.join(guest_files::UEFI_VARS);
        if !vars.exists() {
            let data = std::fs::read(&template).map_err(|e| Error::io("read", &template, e))?;
            crate::fsutil::write_atomic(&vars, &data).map_err(|e| Error::io("write", &vars, e))?;
        }
        Ok(vars)
    }

    async fn spawn(
        self: &Arc<Self>,
        g: &Arc<Guest>,
        spec: &LaunchSpec,
        boot: &Boot,
        tap: Option<String>,
    ) -> Result<()> {
        let name = spec.name.as_str();
        let run_dir = g.run_dir();
        let argv = self.hv.command(spec)?;
        let launch = LaunchRecord {
            iso: match boot {
                Boot::Cdrom(i) => Some(i.clone()),
                Boot::Disk => None,
            },
            tap,
            started: super::runlog::now(),
        };
        let launch_path = run_dir.join(run_files::LAUNCH);
        let text = toml::to_string(&launch).expect("launch record serializes");
        crate::fsutil::write_atomic(&launch_path, text.as_bytes())
            .map_err(|e| Error::io("write", &launch_path, e))?;
        let _ = std::fs::remove_file(run_dir.join(run_files::STOPPED));
        let what = match boot {
            Boot::Cdrom(iso) => format!("install from {iso}"),
            Boot::Disk => "start".to_string(),
        };
        let (out, offset) = g
            .log
            .launch(&what, &argv)
            .map_err(|e| Error::io("open", g.log.path(), e))?;
        let err = out
            .try_clone()
            .map_err(|e| Error::io("open", g.log.path(), e))?;
        let mut cmd = tokio::process::Command::new(&argv[0]);
        cmd.args(&argv[1..])
            .current_dir(&run_dir)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .kill_on_drop(false);
        // SAFETY: setsid is async-signal-safe and touches no memory of the
        // parent; it gives QEMU its own session so that it outlives the
        // server and never gets the server's terminal signals.
        unsafe {
            cmd.pre_exec(|| {
                rustix::process::setsid()
                    .map(|_| ())
                    .map_err(std::io::Error::from)
            });
        }
        let mut child = cmd.spawn().map_err(|e| {
            Error::internal(format!("cannot run {}: {e}", argv[0].to_string_lossy()))
        })?;
        let pid = child.id().unwrap_or(0) as i32;
        let pidfd = rustix::process::Pid::from_raw(pid)
            .ok_or_else(|| Error::internal("the hypervisor has no pid"))
            .and_then(|p| {
                rustix::process::pidfd_open(p, rustix::process::PidfdFlags::empty())
                    .map_err(|e| Error::internal(format!("pidfd_open failed: {e}")))
            })
            .map(Arc::new);
        let pidfd = match pidfd {
            Ok(fd) => fd,
            Err(e) => {
                let _ = child.start_kill();
                let _ = child.wait().await;
                return Err(e);
            }
        };
        // QEMU makes its sockets before the guest runs; wait for QMP.
        let deadline = Instant::now() + Duration::from_secs(60);
        let (qmp, events) = loop {
            if let Ok(Some(status)) = child.try_wait() {
                let why = g.log.since(offset);
                g.log.line(&format!(
                    "exited {} before it was up",
                    describe(Some(status))
                ));
                return Err(Error::internal(format!(
                    "{} could not start guest '{name}': {}",
                    self.hv.name(),
                    if why.is_empty() {
                        describe(Some(status))
                    } else {
                        why
                    }
                )));
            }
            match Qmp::connect(&run_dir, run_files::QMP).await {
                Ok(q) => break q,
                Err(e) if Instant::now() > deadline => {
                    let _ = child.start_kill();
                    let _ = child.wait().await;
                    g.log.line("killed: QMP never answered");
                    return Err(Error::internal(format!(
                        "{} for guest '{name}' never answered on QMP: {e}",
                        self.hv.name()
                    )));
                }
                // QEMU is up within some 50-500 ms; a failed connect costs
                // microseconds, so poll often: every poll interval is added
                // to the start's latency, half of it on average.
                Err(_) => tokio::time::sleep(QMP_POLL).await,
            }
        };
        let qmp = Arc::new(qmp);
        match unix_connect(&run_dir, run_files::CONSOLE).await {
            Ok(s) => {
                g.console.attach(s);
            }
            Err(e) => warn!(guest = name, error = %e, "cannot attach the console"),
        }
        let paused = !qmp.running().await.unwrap_or(true);
        *g.lock() = Some(Run {
            pid,
            pidfd,
            launch,
            qmp: Some(qmp),
            paused,
            stop: None,
            shutdown: None,
            since: Instant::now(),
        });
        g.running.send_replace(true);
        g.log.line(&format!("running, pid {pid}"));
        info!(guest = name, pid, "{what}");
        let me = self.clone();
        let g2 = g.clone();
        tokio::spawn(async move { me.watch(g2, Exit::Child(child), Some(events)).await });
        Ok(())
    }

    // ---- watching -----------------------------------------------------------

    async fn watch(
        self: Arc<Self>,
        g: Arc<Guest>,
        exit: Exit,
        mut events: Option<mpsc::UnboundedReceiver<Event>>,
    ) {
        let exit = exit.wait();
        tokio::pin!(exit);
        let status = loop {
            tokio::select! {
                s = &mut exit => break s,
                ev = recv_event(&mut events) => match ev {
                    Some(ev) => self.on_event(&g, ev),
                    None => events = None,
                },
            }
        };
        // A SHUTDOWN event may still be on its way from the reader.
        if let Some(mut rx) = events.take() {
            while let Ok(Some(ev)) = tokio::time::timeout(Duration::from_secs(2), rx.recv()).await {
                self.on_event(&g, ev);
            }
        }
        self.on_exit(&g, status).await;
    }

    fn on_event(&self, g: &Guest, ev: Event) {
        let mut st = g.lock();
        let Some(run) = st.as_mut() else { return };
        match ev.name.as_str() {
            "SHUTDOWN" => {
                let reason = ev.data["reason"].as_str().unwrap_or("shutdown").to_string();
                if ev.data["guest"] == true {
                    g.log.line(&format!("the guest shut down ({reason})"));
                }
                run.shutdown = Some(reason);
            }
            "STOP" => run.paused = true,
            "RESUME" => run.paused = false,
            "RESET" => g.log.line("the guest rebooted"),
            _ => {}
        }
    }

    async fn on_exit(self: &Arc<Self>, g: &Arc<Guest>, status: Option<ExitStatus>) {
        let Some(run) = g.lock().take() else { return };
        let name = g.name.clone();
        let secs = run.since.elapsed().as_secs_f64();
        let why = match (&run.stop, &run.shutdown) {
            (Some(StopKind::Force), _) => " (forced off by stop)".to_string(),
            (Some(StopKind::Graceful), Some(_)) => {
                " (powered off after the power button)".to_string()
            }
            (_, Some(r)) => format!(" ({r})"),
            (_, None) => " (unexpectedly)".to_string(),
        };
        g.log.line(&format!(
            "exited {}{why} after {secs:.1} s",
            describe(status)
        ));
        if let Some(tap) = &run.launch.tap {
            self.net.remove_tap(tap).await;
        }
        let run_dir = g.run_dir();
        clear_run_dir(&run_dir);
        let _ = std::fs::remove_file(run_dir.join(run_files::LAUNCH));
        let expected = run.stop.is_some() || run.shutdown.is_some();
        if expected {
            mark_stopped(&run_dir, run.stop.unwrap_or(StopKind::Graceful));
        }
        g.running.send_replace(false);
        g.console.trim();
        if expected {
            info!(guest = %name, "guest stopped{why}");
            return;
        }
        let persist = self
            .engine
            .guest(&name)
            .map(|r| r.prop("persist") == "1")
            .unwrap_or(false);
        if !persist {
            warn!(guest = %name, "guest's hypervisor ended {}; persist is off, so it stays down", describe(status));
            return;
        }
        let allowed = {
            let mut r = g.restarts.lock().expect("restarts poisoned");
            let now = Instant::now();
            while r
                .front()
                .is_some_and(|t| now.duration_since(*t) > self.cfg.restart_window)
            {
                r.pop_front();
            }
            if r.len() as u32 >= self.cfg.restart_limit {
                false
            } else {
                r.push_back(now);
                true
            }
        };
        if !allowed {
            let msg = format!(
                "not restarting: it ended unexpectedly {} times within {} s (persist crash-loop guard); start it by hand once the cause is fixed",
                self.cfg.restart_limit,
                self.cfg.restart_window.as_secs()
            );
            error!(guest = %name, "{msg}");
            g.log.line(&msg);
            return;
        }
        g.log.line("restarting it (persist is on)");
        warn!(guest = %name, "hypervisor ended unexpectedly; restarting it (persist)");
        let _ = self.restarts.send((name, run.launch.boot()));
    }

    // ---- stop -----------------------------------------------------------------

    /// `stop`: returns at once; the power-off runs on its own and its
    /// outcome goes to the logs (and shows in listvms).
    pub async fn stop(self: &Arc<Self>, name: &str, force: bool) -> Result<()> {
        let (_, g) = self.lookup(name)?;
        let kind = if force {
            StopKind::Force
        } else {
            StopKind::Graceful
        };
        let (qmp, pidfd, earlier) = {
            let mut st = g.lock();
            let run = st
                .as_mut()
                .ok_or_else(|| Error::conflict(format!("Guest '{name}' is not running")))?;
            let earlier = run.stop;
            run.stop = Some(earlier.map_or(kind, |e| e.max(kind)));
            (run.qmp.clone(), run.pidfd.clone(), earlier)
        };
        mark_stopped(&g.run_dir(), kind.max(earlier.unwrap_or(kind)));
        if earlier.is_some_and(|e| e >= kind) {
            g.log.line("stop requested again; already stopping");
            return Ok(());
        }
        let timeout = self.cfg.stop_timeout;
        let me = self.clone();
        tokio::spawn(async move {
            if kind == StopKind::Graceful {
                g.log.line(&format!(
                    "stop: pressing the ACPI power button, waiting up to {} s",
                    timeout.as_secs()
                ));
                let pressed = match &qmp {
                    Some(q) => q.execute("system_powerdown", None).await.map(|_| ()),
                    None => Err("no QMP connection".to_string()),
                };
                match pressed {
                    Ok(()) => {
                        if me.wait_stopped(&g, timeout).await {
                            return;
                        }
                        g.log.line(&format!(
                            "the guest did not power off within {} s; powering it off",
                            timeout.as_secs()
                        ));
                    }
                    Err(e) => g.log.line(&format!(
                        "cannot press the power button ({e}); powering off"
                    )),
                }
                if let Some(run) = g.lock().as_mut() {
                    run.stop = Some(StopKind::Force);
                }
            } else {
                g.log.line("stop: powering off at once (force)");
            }
            me.power_off(&g, qmp, pidfd).await;
        });
        Ok(())
    }

    /// Waits until the guest's hypervisor has ended; false on timeout.
    async fn wait_stopped(&self, g: &Guest, timeout: Duration) -> bool {
        let mut rx = g.running.subscribe();
        let stopped = tokio::time::timeout(timeout, rx.wait_for(|r| !*r))
            .await
            .is_ok();
        stopped
    }

    /// `quit` over QMP (QEMU flushes its disks), then SIGKILL.
    async fn power_off(&self, g: &Guest, qmp: Option<Arc<Qmp>>, pidfd: Arc<OwnedFd>) {
        if let Some(q) = qmp {
            if q.execute("quit", None).await.is_ok()
                && self.wait_stopped(g, Duration::from_secs(10)).await
            {
                return;
            }
        }
        g.log.line("sending SIGKILL");
        if let Err(e) = rustix::process::pidfd_send_signal(&*pidfd, rustix::process::Signal::KILL) {
            // ESRCH: it ended meanwhile.
            if e != rustix::io::Errno::SRCH {
                error!(guest = %g.name, error = %e, "cannot kill the hypervisor");
            }
        }
    }

    // ---- recovery -------------------------------------------------------------

    /// At server start: re-adopts every running guest and cleans what
    /// ended while no server watched.
    pub async fn recover(self: &Arc<Self>) {
        for name in &self.engine.guest_names() {
            let _held = self.engine.guest_lock(name).await;
            let Ok(rec) = self.engine.guest(name) else {
                continue;
            };
            let g = self.handle(&rec);
            g.console.load_log();
            if !self.adopt(&g).await {
                self.clean_stale(&g).await;
            }
        }
    }

    /// Starts the guests with `boot` = 1 that are not running, unless they
    /// were stopped on purpose since the host booted (so restarting the
    /// server does not undo an operator's stop).
    pub async fn autostart(self: &Arc<Self>) {
        let names = self.engine.guest_names();
        let boot_id = procinfo::boot_id();
        for name in &names {
            let Ok(rec) = self.engine.guest(name) else {
                continue;
            };
            if rec.prop("boot") != "1" {
                continue;
            }
            let g = self.handle(&rec);
            if g.is_running() {
                continue;
            }
            if !boot_id.is_empty() && stopped_this_boot(&g.run_dir()).is_some() {
                info!(guest = %name, "boot is 1, but the guest was stopped on purpose since the host booted; leaving it off");
                continue;
            }
            info!(guest = %name, "starting (boot is 1)");
            if let Err(e) = self.start(name, Boot::Disk).await {
                error!(guest = %name, error = %e, "could not start at server start");
                g.log.line(&format!("could not start at server start: {e}"));
            }
        }
    }

    /// Adopts the guest's hypervisor if one runs. True when it did (or
    /// the guest was already watched).
    async fn adopt(self: &Arc<Self>, g: &Arc<Guest>) -> bool {
        if g.is_running() {
            return true;
        }
        let run_dir = g.run_dir();
        let Ok(canonical) = std::fs::canonicalize(&run_dir) else {
            return false;
        };
        let ours = |pid: i32| {
            procinfo::read(pid)
                .is_some_and(|p| p.cwd == canonical && self.hv.identifies(&p.argv, &g.name))
        };
        let Some(pid) = self.find_hypervisor(&g.name, &run_dir, &canonical).await else {
            return false;
        };
        let is_ours = || ours(pid);
        let Some(p) = rustix::process::Pid::from_raw(pid) else {
            return false;
        };
        let Ok(pidfd) = rustix::process::pidfd_open(p, rustix::process::PidfdFlags::empty()) else {
            return false;
        };
        // Checked again now that the pidfd pins the process: the pid
        // cannot have been reused in between.
        if !is_ours() {
            return false;
        }
        let launch: LaunchRecord = std::fs::read_to_string(run_dir.join(run_files::LAUNCH))
            .ok()
            .and_then(|t| toml::from_str(&t).ok())
            .unwrap_or_default();
        // QEMU takes one QMP client at a time; the dead server's
        // connection is closed by the kernel, so a retry or two suffices.
        let mut qmp = None;
        for _ in 0..100 {
            match Qmp::connect(&run_dir, run_files::QMP).await {
                Ok(q) => {
                    qmp = Some(q);
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        let (qmp, events) = match qmp {
            Some((q, e)) => (Some(Arc::new(q)), Some(e)),
            None => {
                warn!(guest = %g.name, pid, "re-adopted, but QMP does not answer; stop will kill it");
                (None, None)
            }
        };
        if let Ok(s) = unix_connect(&run_dir, run_files::CONSOLE).await {
            g.console.attach(s);
        }
        let paused = match &qmp {
            Some(q) => !q.running().await.unwrap_or(true),
            None => false,
        };
        let pidfd = Arc::new(pidfd);
        *g.lock() = Some(Run {
            pid,
            pidfd: pidfd.clone(),
            launch,
            qmp,
            paused,
            stop: None,
            shutdown: None,
            since: Instant::now(),
        });
        g.running.send_replace(true);
        g.log
            .line(&format!("re-adopted by a starting server, pid {pid}"));
        info!(guest = %g.name, pid, "re-adopted a running guest");
        let me = self.clone();
        let g2 = g.clone();
        tokio::spawn(async move { me.watch(g2, Exit::Pidfd(pidfd, pid), events).await });
        // The marker is removed when a hypervisor is launched, so one here
        // is a stop of this very run that the last server acknowledged but
        // did not live to finish: finish it.
        if let Some(kind) = stopped_this_boot(&run_dir) {
            warn!(guest = %g.name, pid, "finishing a stop the last server did not live to finish");
            g.log
                .line("finishing a stop the last server did not live to finish");
            if let Err(e) = self.stop(&g.name, kind == StopKind::Force).await {
                warn!(guest = %g.name, error = %e, "cannot finish the stop");
            }
        }
        true
    }

    /// The pid of the guest's hypervisor, if one runs: the pidfile's when it
    /// names it, else the process working in the run folder that the
    /// driver recognises. A server killed just after spawning a hypervisor
    /// leaves one that has not written its pidfile yet; going by the
    /// pidfile alone, the next server would clear its sockets and later
    /// start a second one on the same disks.
    async fn find_hypervisor(&self, name: &str, run_dir: &Path, canonical: &Path) -> Option<i32> {
        let identifies =
            |p: &procinfo::ProcInfo| p.cwd == canonical && self.hv.identifies(&p.argv, name);
        if let Some(pid) = procinfo::read_pidfile(&run_dir.join(run_files::PIDFILE)) {
            if procinfo::read(pid).is_some_and(|p| identifies(&p)) {
                return Some(pid);
            }
        }
        // A process in the run folder that is not the hypervisor yet is one
        // between fork and exec: give it a moment to become it.
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            let procs = procinfo::working_in(canonical);
            if let Some(p) = procs.iter().find(|p| identifies(p)) {
                warn!(
                    guest = name,
                    pid = p.pid,
                    "found the guest's hypervisor without its pidfile"
                );
                return Some(p.pid);
            }
            if procs.is_empty() || Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Cleans the run folder of a hypervisor that ended while no server
    /// watched (its tap, sockets, pidfile).
    async fn clean_stale(&self, g: &Guest) {
        let run_dir = g.run_dir();
        let launch_path = run_dir.join(run_files::LAUNCH);
        let Ok(text) = std::fs::read_to_string(&launch_path) else {
            clear_run_dir(&run_dir);
            return;
        };
        let launch: LaunchRecord = toml::from_str(&text).unwrap_or_default();
        g.log
            .line("found ended while no server was watching; cleaning up");
        info!(guest = %g.name, "guest ended while no server was watching; cleaning up");
        if let Some(tap) = &launch.tap {
            self.net.remove_tap(tap).await;
        }
        clear_run_dir(&run_dir);
        let _ = std::fs::remove_file(&launch_path);
    }
}

/// Removes a run folder's sockets and pidfile.
fn clear_run_dir(dir: &Path) {
    for f in [run_files::QMP, run_files::CONSOLE, run_files::PIDFILE] {
        let _ = std::fs::remove_file(dir.join(f));
    }
}

/// Records that the guest was stopped on purpose during this host boot,
/// and how: written before `stop` answers, so that a server killed before
/// the hypervisor is off leaves the next one a stop to finish.
fn mark_stopped(dir: &Path, kind: StopKind) {
    let kind = match kind {
        StopKind::Graceful => "graceful",
        StopKind::Force => "force",
    };
    let _ = crate::fsutil::write_atomic(
        &dir.join(run_files::STOPPED),
        format!("{}\n{kind}\n", procinfo::boot_id()).as_bytes(),
    );
}

/// The kind of stop asked for during this host boot, if the guest's
/// marker says one was (its first line is the boot id; the second the
/// kind, graceful when absent).
fn stopped_this_boot(dir: &Path) -> Option<StopKind> {
    let text = std::fs::read_to_string(dir.join(run_files::STOPPED)).ok()?;
    let mut lines = text.lines();
    let boot = procinfo::boot_id();
    if boot.is_empty() || lines.next()?.trim() != boot {
        return None;
    }
    Some(match lines.next().map(str::trim) {
        Some("force") => StopKind::Force,
        _ => StopKind::Graceful,
    })
}
