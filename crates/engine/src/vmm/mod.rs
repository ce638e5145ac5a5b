//! Running guests: a hypervisor driver turns a guest's properties into a
//! process, and the [`supervisor`] keeps that process company for its whole
//! life (start, watch, stop, restart, re-adopt after a server restart).
//!
//! ```text
//! supervisor ──► Hypervisor (qemu.rs: argv from properties, accel.rs: kvm|tcg)
//!     │          qmp.rs: power button, quit, status and events
//!     ├────────► console.rs: serial console ring buffer, viewers, console.log
//!     ├────────► net.rs: tap on a bridge holding the setup nic, or user-mode
//!     └────────► procinfo.rs: is pid N really this guest's QEMU?
//! ```
//!
//! A bhyve driver would be a second implementation of [`Hypervisor`]: the
//! same properties, read differently (see the README's table).

use std::ffi::OsString;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;

use crate::error::Result;

pub mod accel;
pub mod console;
pub mod net;
pub mod procinfo;
pub mod qemu;
pub mod qmp;
pub mod runlog;
pub mod supervisor;
pub mod unixsock;

pub use supervisor::{Boot, Vmm, VmmConfig};

/// How a guest's firmware is chosen (the `loader` property).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Firmware {
    /// The hypervisor's own BIOS (SeaBIOS for QEMU).
    Bios,
    /// UEFI: read-only code plus this guest's own variable store.
    Uefi { vars: PathBuf },
}

/// The guest's network card.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetBackend {
    /// User-mode networking: NAT through the hypervisor process, no
    /// privileges, no inbound connections.
    User,
    /// A tap device (already made and on its bridge).
    Tap(String),
}

/// Everything a driver needs to launch one guest. Paths of the run folder
/// (sockets, pidfile) are relative: the process runs with the guest's run
/// folder as its working directory, which keeps unix socket paths short
/// whatever the depth of the data dir.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchSpec {
    pub name: String,
    pub ram_mib: u64,
    pub cpus: u32,
    /// Disk images, in disk order (disk0 first).
    pub disks: Vec<PathBuf>,
    /// Installation media, booted first when present.
    pub cdrom: Option<PathBuf>,
    pub firmware: Firmware,
    pub net: NetBackend,
    /// The card's MAC address (the `mac` property).
    pub mac: String,
}

/// File names inside a guest's run folder, which is the hypervisor's cwd.
pub mod run_files {
    pub const QMP: &str = "qmp.sock";
    pub const CONSOLE: &str = "console.sock";
    pub const PIDFILE: &str = "qemu.pid";
    /// What was launched (boot mode, ISO, tap), written before the spawn.
    pub const LAUNCH: &str = "launch.toml";
    /// Present when the guest was stopped on purpose (by `stop`, or by
    /// powering itself off); holds the host's boot id at that time and the
    /// kind of stop (`graceful`, `force`). Removed at each launch, so while
    /// the hypervisor runs it means a stop is under way.
    pub const STOPPED: &str = "stopped";
}

/// File names in a guest's folder.
pub mod guest_files {
    /// The run folder: sockets and pidfile of the running hypervisor.
    pub const RUN_DIR: &str = "run";
    /// Everything the serial console printed (bounded in size).
    pub const CONSOLE_LOG: &str = "console.log";
    /// Each launch's command line, start and exit, and the hypervisor's
    /// own messages.
    pub const VM_LOG: &str = "vm.log";
    /// UEFI variable store (`loader` = uefi).
    pub const UEFI_VARS: &str = "uefi-vars.fd";
}

/// A future a driver returns; boxed so that the trait stays object safe.
pub type DriverFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A hypervisor driver: QEMU on Linux now, bhyve on FreeBSD later.
pub trait Hypervisor: Send + Sync + 'static {
    /// A short name for logs ("qemu").
    fn name(&self) -> &'static str;

    /// Readies the driver before the first launch (for QEMU: chooses the
    /// accelerator, which may mean running a probe guest). Cached after
    /// the first call.
    fn prepare(&self) -> DriverFuture<'_, Result<()>>;

    /// The full argument vector (program first) that runs `spec`.
    fn command(&self, spec: &LaunchSpec) -> Result<Vec<OsString>>;

    /// Whether a process with this argument vector is the hypervisor of
    /// guest `name` (the caller has already checked its working directory
    /// is the guest's run folder).
    fn identifies(&self, argv: &[OsString], name: &str) -> bool;

    /// The firmware files a UEFI guest needs: (code, template of the vars).
    fn uefi_files(&self) -> (PathBuf, PathBuf);
}
