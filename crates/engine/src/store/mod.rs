//! Where guests, disks, ISOs and the setup state are kept.
//!
//! The engine decides *what* changes; a [`Store`] decides how that change
//! reaches the disk so that a crash at any instant leaves each guest either
//! wholly there or wholly absent. `dir` keeps everything in plain folders and
//! sparse files; a ZFS backend (datasets and zvols, as iohyve did) would be
//! a second module behind the same trait.

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::error::Result;
use crate::props::Props;

pub mod dir;

/// One disk of a guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskRecord {
    /// The size as shown (`10G`).
    pub size: String,
    /// The size in bytes: the image file's length.
    pub bytes: u64,
    /// The pool the image lives in.
    pub pool: String,
}

/// Everything stored about one guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestRecord {
    pub name: String,
    /// The pool that holds the guest's folder and properties.
    pub pool: String,
    pub props: Props,
    /// Disks by number: 0 is `disk0`.
    pub disks: BTreeMap<u32, DiskRecord>,
}

impl GuestRecord {
    pub fn prop(&self, key: &str) -> &str {
        self.props.get(key).map(String::as_str).unwrap_or("")
    }
}

/// What `setup` recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetupRecord {
    /// The pool new guests and ISOs go to.
    pub pool: String,
    /// The host interface guests are bridged to.
    pub nic: String,
    /// Every pool ever set up, the current one included; all are scanned.
    pub pools: Vec<String>,
}

/// A storage backend. Every method is blocking and is called with the
/// engine's locks held, so two calls never touch the same guest at once.
pub trait Store: Send + Sync + 'static {
    /// The setup record, if setup ran.
    fn load_setup(&self) -> Result<Option<SetupRecord>>;
    /// Prepares `rec.pool` (its `iohyve/`, `ISO/`, `Firmware/`) and records `rec`.
    fn save_setup(&self, rec: &SetupRecord) -> Result<()>;

    /// Reads every guest of `pools`, finishing or undoing what a crash
    /// interrupted.
    fn scan_guests(&self, pools: &[String]) -> Result<Vec<GuestRecord>>;
    /// Creates the guest with its disks, all at once.
    fn create_guest(&self, rec: &GuestRecord) -> Result<()>;
    /// Replaces the stored properties of an existing guest.
    fn save_guest(&self, rec: &GuestRecord) -> Result<()>;
    /// Removes the guest and all its disks, all at once.
    fn delete_guest(&self, rec: &GuestRecord) -> Result<()>;

    /// Creates disk `n` of `rec` (which already lists it) and records it.
    fn add_disk(&self, rec: &GuestRecord, n: u32) -> Result<()>;
    /// Grows disk `n` to the size `rec` lists and records it.
    fn grow_disk(&self, rec: &GuestRecord, n: u32) -> Result<()>;
    /// Records `rec` (which no longer lists `disk`) and removes the image.
    fn remove_disk(&self, rec: &GuestRecord, n: u32, disk: &DiskRecord) -> Result<()>;

    /// The guest's own folder: its runtime files (pidfile, sockets, logs) go here.
    fn guest_dir(&self, rec: &GuestRecord) -> PathBuf;
    /// The image of disk `n`.
    fn disk_path(&self, rec: &GuestRecord, n: u32) -> PathBuf;

    /// The folder (or mount point) of `pool`, for reporting its space.
    fn pool_dir(&self, pool: &str) -> PathBuf;
    /// The ISO store of `pool`.
    fn iso_dir(&self, pool: &str) -> PathBuf;
    /// The complete ISOs of `pools`, sorted, with the pool each is in.
    fn list_isos(&self, pools: &[String]) -> Result<Vec<(String, String)>>;
    /// Renames an ISO within `pool`; fails if `target` exists.
    fn rename_iso(&self, pool: &str, source: &str, target: &str) -> Result<()>;
    /// Removes an ISO of `pool`.
    fn remove_iso(&self, pool: &str, name: &str) -> Result<()>;
}
