//! The `dir` storage backend: a pool is a folder.
//!
//! ```text
//! <pool>/iohyve/ISO/<iso>                 installation media
//! <pool>/iohyve/Firmware/                 UEFI firmware
//! <pool>/iohyve/<guest>/guest.toml        properties and disk list
//! <pool>/iohyve/<guest>/disk0.img         sparse raw images
//! <data_dir>/hyve/setup.toml              what setup recorded
//! ```
//!
//! A pool named in the config lives where the config says; any other pool is
//! the folder of that name under the data dir.
//!
//! Crash safety: a guest is built under `.creating-<name>-<id>` and renamed
//! into place; a deleted guest is first renamed to `.deleting-<name>-<id>`;
//! `guest.toml` is replaced atomically; disk images are created under a
//! temporary name and listed only once whole, and unlisted before it is
//! removed. `scan_guests` clears whatever a crash left half-done: the
//! `.creating-`/`.deleting-` folders, temporary files, and disk images the
//! guest does not list.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::{DiskRecord, GuestRecord, SetupRecord, Store};
use crate::error::{Error, Result};
use crate::fsutil::{self, create_sparse, fsync_dir, fsync_parent, rename_noreplace, write_atomic};
use crate::size::Size;
use crate::validate;

const GUEST_FILE: &str = "guest.toml";
const SETUP_FILE: &str = "setup.toml";
const CREATING: &str = ".creating-";
const DELETING: &str = ".deleting-";

pub struct DirStore {
    data_dir: PathBuf,
    configured: BTreeMap<String, PathBuf>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct GuestFile {
    props: BTreeMap<String, String>,
    #[serde(default)]
    disks: BTreeMap<String, DiskEntry>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct DiskEntry {
    size: String,
    bytes: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pool: Option<String>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SetupFile {
    pool: String,
    nic: String,
    pools: Vec<String>,
}

fn io_err<'a>(what: &'a str, path: &'a Path) -> impl FnOnce(io::Error) -> Error + 'a {
    move |e| Error::io(what, path, e)
}

impl DirStore {
    /// `configured` maps pool names to folders, from the config.
    pub fn new(data_dir: impl Into<PathBuf>, configured: BTreeMap<String, PathBuf>) -> Self {
        DirStore {
            data_dir: data_dir.into(),
            configured,
        }
    }

    /// The server's own folder in the data dir.
    pub fn state_dir(&self) -> PathBuf {
        self.data_dir.join(validate::STATE_DIR)
    }

    fn pool_root(&self, pool: &str) -> PathBuf {
        self.configured
            .get(pool)
            .cloned()
            .unwrap_or_else(|| self.data_dir.join(pool))
    }

    fn iohyve_dir(&self, pool: &str) -> PathBuf {
        self.pool_root(pool).join("iohyve")
    }

    /// The folder that holds `guest`'s files in `pool` (its home, or a
    /// second pool with some of its disks).
    fn folder_in(&self, pool: &str, guest: &str) -> PathBuf {
        self.iohyve_dir(pool).join(guest)
    }

    fn encode(rec: &GuestRecord) -> Vec<u8> {
        let file = GuestFile {
            props: rec.props.clone(),
            disks: rec
                .disks
                .iter()
                .map(|(n, d)| {
                    (
                        format!("disk{n}"),
                        DiskEntry {
                            size: d.size.clone(),
                            bytes: d.bytes,
                            pool: (d.pool != rec.pool).then(|| d.pool.clone()),
                        },
                    )
                })
                .collect(),
        };
        let body = toml::to_string(&file).expect("guest records always serialize");
        format!(
            "# Guest '{}', kept by hyve. Change it through the API or `hyve set`;\n\
             # the server reads this file at start and rewrites it whole.\n\n{body}",
            rec.name
        )
        .into_bytes()
    }

    fn decode(name: &str, pool: &str, text: &str) -> Result<GuestRecord, String> {
        let file: GuestFile = toml::from_str(text).map_err(|e| e.to_string())?;
        let mut disks = BTreeMap::new();
        for (k, d) in file.disks {
            let n = validate::disk_name(&k)?;
            disks.insert(
                n,
                DiskRecord {
                    size: d.size,
                    bytes: d.bytes,
                    pool: d.pool.unwrap_or_else(|| pool.to_string()),
                },
            );
        }
        let mut props = file.props;
        props.insert("name".into(), name.to_string());
        Ok(GuestRecord {
            name: name.to_string(),
            pool: pool.to_string(),
            props,
            disks,
        })
    }

    fn write_guest_file(&self, dir: &Path, rec: &GuestRecord) -> Result<()> {
        let path = dir.join(GUEST_FILE);
        write_atomic(&path, &Self::encode(rec)).map_err(io_err("write", &path))
    }

    /// Removes what a crash left in a pool's iohyve folder.
    fn clean_leftovers(&self, dir: &Path) {
        let Ok(entries) = fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let path = e.path();
            if name.starts_with(CREATING) || name.starts_with(DELETING) {
                info!(path = %path.display(), "removing what an interrupted create or delete left");
                if let Err(err) = fs::remove_dir_all(&path) {
                    warn!(path = %path.display(), %err, "could not remove leftover");
                }
            }
        }
    }

    fn clean_temp_files(dir: &Path) {
        let Ok(entries) = fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if fsutil::is_atomic_temp(&name) {
                let _ = fs::remove_file(e.path());
            }
        }
    }

    fn load_guest(&self, pool: &str, name: &str, dir: &Path) -> Option<GuestRecord> {
        let path = dir.join(GUEST_FILE);
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return None,
            Err(err) => {
                warn!(path = %path.display(), %err, "cannot read guest; skipping it");
                return None;
            }
        };
        Self::clean_temp_files(dir);
        let mut rec = match Self::decode(name, pool, &text) {
            Ok(r) => r,
            Err(err) => {
                warn!(path = %path.display(), %err, "guest file does not parse; skipping it (left untouched)");
                return None;
            }
        };
        // A grow that reached the image but not guest.toml completed: adopt it.
        let mut changed = false;
        for (n, d) in rec.disks.iter_mut() {
            let img = self.folder_in(&d.pool, name).join(format!("disk{n}.img"));
            Self::clean_temp_files(img.parent().expect("image has a folder"));
            match fs::metadata(&img) {
                Ok(m) if m.len() > d.bytes => {
                    info!(guest = name, disk = n, "finishing an interrupted resize");
                    let s = Size::from_bytes(m.len());
                    d.bytes = m.len();
                    d.size = s.text().to_string();
                    changed = true;
                }
                Ok(m) if m.len() < d.bytes => {
                    warn!(
                        guest = name,
                        disk = n,
                        "disk image is shorter than recorded"
                    )
                }
                Ok(_) => {}
                Err(err) => warn!(guest = name, disk = n, %err, "disk image is missing"),
            }
        }
        if changed {
            if let Some(d0) = rec.disks.get(&0) {
                rec.props.insert("size".into(), d0.size.clone());
            }
            if let Err(err) = self.write_guest_file(dir, &rec) {
                warn!(guest = name, %err, "could not record the finished resize");
            }
        }
        self.remove_unlisted_images(&rec);
        Some(rec)
    }

    /// Removes the disk images in the guest's folders that its record does
    /// not list. `guest.toml` is the one truth about a guest's disks and an
    /// image is made before it is listed and unlisted before it is removed,
    /// so an unlisted image is what a crash left in the middle of
    /// `adddisk` (never acknowledged, holding nothing) or `deletedisk`
    /// (acknowledged: its data must not linger, nor its space stay taken).
    fn remove_unlisted_images(&self, rec: &GuestRecord) {
        let mut pools: Vec<&str> = vec![rec.pool.as_str()];
        for d in rec.disks.values() {
            if !pools.contains(&d.pool.as_str()) {
                pools.push(&d.pool);
            }
        }
        for pool in pools {
            let folder = self.folder_in(pool, &rec.name);
            let Ok(entries) = fs::read_dir(&folder) else {
                continue;
            };
            for e in entries.flatten() {
                let file = e.file_name().to_string_lossy().into_owned();
                let Some(n) = file
                    .strip_suffix(".img")
                    .and_then(|stem| validate::disk_name(stem).ok())
                else {
                    continue;
                };
                if rec.disks.get(&n).is_some_and(|d| d.pool == pool) {
                    continue;
                }
                let path = e.path();
                info!(guest = %rec.name, path = %path.display(), "removing a disk image the guest does not list (an interrupted adddisk or deletedisk)");
                match fs::remove_file(&path) {
                    Ok(()) => {
                        let _ = fsync_dir(&folder);
                    }
                    Err(err) => {
                        warn!(path = %path.display(), %err, "could not remove an unlisted disk image")
                    }
                }
            }
        }
    }

    fn image_path(&self, guest: &str, n: u32, d: &DiskRecord) -> PathBuf {
        self.folder_in(&d.pool, guest).join(format!("disk{n}.img"))
    }
}

impl Store for DirStore {
    fn load_setup(&self) -> Result<Option<SetupRecord>> {
        let path = self.state_dir().join(SETUP_FILE);
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io("read", &path, e)),
        };
        let f: SetupFile = toml::from_str(&text)
            .map_err(|e| Error::internal(format!("{} does not parse: {e}", path.display())))?;
        Ok(Some(SetupRecord {
            pool: f.pool,
            nic: f.nic,
            pools: f.pools,
        }))
    }

    fn save_setup(&self, rec: &SetupRecord) -> Result<()> {
        let root = self.pool_root(&rec.pool);
        if self.configured.contains_key(&rec.pool) {
            if !root.is_dir() {
                return Err(Error::conflict(format!(
                    "pool '{}' is configured at {}, which is not a folder",
                    rec.pool,
                    root.display()
                )));
            }
        } else {
            fs::create_dir_all(&root).map_err(io_err("create", &root))?;
        }
        let io = self.iohyve_dir(&rec.pool);
        for sub in ["ISO", "Firmware"] {
            let p = io.join(sub);
            fs::create_dir_all(&p).map_err(io_err("create", &p))?;
        }
        let state = self.state_dir();
        fs::create_dir_all(&state).map_err(io_err("create", &state))?;
        let body = toml::to_string(&SetupFile {
            pool: rec.pool.clone(),
            nic: rec.nic.clone(),
            pools: rec.pools.clone(),
        })
        .expect("setup serializes");
        let path = state.join(SETUP_FILE);
        let text = format!("# What `setup` recorded. Kept by hyve.\n\n{body}");
        write_atomic(&path, text.as_bytes()).map_err(io_err("write", &path))
    }

    fn scan_guests(&self, pools: &[String]) -> Result<Vec<GuestRecord>> {
        let mut out = Vec::new();
        for pool in pools {
            let dir = self.iohyve_dir(pool);
            self.clean_leftovers(&dir);
            let entries = match fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    warn!(pool, path = %dir.display(), "pool folder is missing");
                    continue;
                }
                Err(e) => return Err(Error::io("read", &dir, e)),
            };
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if validate::guest_name(&name).is_err() || !e.path().is_dir() {
                    continue;
                }
                if let Some(rec) = self.load_guest(pool, &name, &e.path()) {
                    out.push(rec);
                }
            }
        }
        Ok(out)
    }

    fn create_guest(&self, rec: &GuestRecord) -> Result<()> {
        let root = self.iohyve_dir(&rec.pool);
        if !root.is_dir() {
            return Err(Error::conflict(format!(
                "pool '{}' has no iohyve folder at {}: run setup",
                rec.pool,
                root.display()
            )));
        }
        let dest = root.join(&rec.name);
        if fs::symlink_metadata(&dest).is_ok() {
            return Err(Error::conflict(format!(
                "{} already exists on disk but is not a guest; move it away first",
                dest.display()
            )));
        }
        let tmp = root.join(format!(
            "{CREATING}{}-{}",
            rec.name,
            uuid::Uuid::new_v4().simple()
        ));
        let result = (|| {
            fs::create_dir(&tmp).map_err(io_err("create", &tmp))?;
            for (n, d) in &rec.disks {
                let img = tmp.join(format!("disk{n}.img"));
                create_sparse(&img, d.bytes).map_err(io_err("create", &img))?;
            }
            self.write_guest_file(&tmp, rec)?;
            fsync_dir(&tmp).map_err(io_err("sync", &tmp))?;
            rename_noreplace(&tmp, &dest).map_err(|e| {
                if e.kind() == io::ErrorKind::AlreadyExists {
                    Error::conflict(format!("{} appeared while creating", dest.display()))
                } else {
                    Error::io("rename into place", &dest, e)
                }
            })?;
            fsync_dir(&root).map_err(io_err("sync", &root))
        })();
        if result.is_err() {
            let _ = fs::remove_dir_all(&tmp);
        }
        result
    }

    fn save_guest(&self, rec: &GuestRecord) -> Result<()> {
        self.write_guest_file(&self.guest_dir(rec), rec)
    }

    fn delete_guest(&self, rec: &GuestRecord) -> Result<()> {
        let root = self.iohyve_dir(&rec.pool);
        let dir = root.join(&rec.name);
        let trash = root.join(format!(
            "{DELETING}{}-{}",
            rec.name,
            uuid::Uuid::new_v4().simple()
        ));
        // The rename is the moment the guest is gone; what follows is cleanup
        // that a restart would finish.
        fs::rename(&dir, &trash).map_err(io_err("remove", &dir))?;
        fsync_dir(&root).map_err(io_err("sync", &root))?;
        for (n, d) in rec.disks.iter().filter(|(_, d)| d.pool != rec.pool) {
            let img = self.image_path(&rec.name, *n, d);
            if let Err(err) = fs::remove_file(&img) {
                warn!(path = %img.display(), %err, "could not remove disk image");
            }
            let _ = fs::remove_dir(self.folder_in(&d.pool, &rec.name));
        }
        if let Err(err) = fs::remove_dir_all(&trash) {
            warn!(path = %trash.display(), %err, "could not remove deleted guest's files; they are cleared at the next start");
        }
        Ok(())
    }

    fn add_disk(&self, rec: &GuestRecord, n: u32) -> Result<()> {
        let d = &rec.disks[&n];
        let img = self.image_path(&rec.name, n, d);
        let folder = img.parent().expect("image has a folder");
        fs::create_dir_all(folder).map_err(io_err("create", folder))?;
        // An image the record does not list is what an interrupted add left.
        if fs::symlink_metadata(&img).is_ok() {
            warn!(path = %img.display(), "replacing an unlisted disk image");
            fs::remove_file(&img).map_err(io_err("remove", &img))?;
        }
        create_sparse(&img, d.bytes).map_err(io_err("create", &img))?;
        if let Err(e) = self.save_guest(rec) {
            let _ = fs::remove_file(&img);
            return Err(e);
        }
        Ok(())
    }

    fn grow_disk(&self, rec: &GuestRecord, n: u32) -> Result<()> {
        let d = &rec.disks[&n];
        let img = self.image_path(&rec.name, n, d);
        let f = fs::OpenOptions::new()
            .write(true)
            .open(&img)
            .map_err(io_err("open", &img))?;
        let old = f.metadata().map_err(io_err("read", &img))?.len();
        if old > d.bytes {
            return Err(Error::conflict(format!(
                "{} is already larger than {}",
                img.display(),
                d.size
            )));
        }
        f.set_len(d.bytes).map_err(io_err("grow", &img))?;
        f.sync_all().map_err(io_err("sync", &img))?;
        if let Err(e) = self.save_guest(rec) {
            // Nothing was written past the old end yet: shrinking back is safe.
            let _ = f.set_len(old).and_then(|_| f.sync_all());
            return Err(e);
        }
        Ok(())
    }

    fn remove_disk(&self, rec: &GuestRecord, n: u32, disk: &DiskRecord) -> Result<()> {
        self.save_guest(rec)?;
        let img = self.image_path(&rec.name, n, disk);
        if let Err(err) = fs::remove_file(&img) {
            warn!(path = %img.display(), %err, "disk removed from the guest, but its image could not be deleted");
        } else {
            let _ = fsync_parent(&img);
        }
        if disk.pool != rec.pool {
            let _ = fs::remove_dir(self.folder_in(&disk.pool, &rec.name));
        }
        Ok(())
    }

    fn guest_dir(&self, rec: &GuestRecord) -> PathBuf {
        self.folder_in(&rec.pool, &rec.name)
    }

    fn disk_path(&self, rec: &GuestRecord, n: u32) -> PathBuf {
        match rec.disks.get(&n) {
            Some(d) => self.image_path(&rec.name, n, d),
            None => self.guest_dir(rec).join(format!("disk{n}.img")),
        }
    }

    fn pool_dir(&self, pool: &str) -> PathBuf {
        self.pool_root(pool)
    }

    fn iso_dir(&self, pool: &str) -> PathBuf {
        self.iohyve_dir(pool).join("ISO")
    }

    fn list_isos(&self, pools: &[String]) -> Result<Vec<(String, String)>> {
        let mut out: BTreeMap<String, String> = BTreeMap::new();
        for pool in pools {
            let dir = self.iso_dir(pool);
            let entries = match fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::io("read", &dir, e)),
            };
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let is_file = e.file_type().map(|t| t.is_file()).unwrap_or(false);
                if is_file && validate::iso_name(&name).is_ok() {
                    out.entry(name).or_insert_with(|| pool.clone());
                }
            }
        }
        Ok(out.into_iter().collect())
    }

    fn rename_iso(&self, pool: &str, source: &str, target: &str) -> Result<()> {
        let dir = self.iso_dir(pool);
        let (from, to) = (dir.join(source), dir.join(target));
        rename_noreplace(&from, &to).map_err(|e| match e.kind() {
            io::ErrorKind::AlreadyExists => {
                Error::conflict(format!("an ISO named '{target}' already exists"))
            }
            io::ErrorKind::NotFound => Error::not_found(format!("No such ISO '{source}'")),
            _ => Error::io("rename", &from, e),
        })?;
        fsync_dir(&dir).map_err(io_err("sync", &dir))
    }

    fn remove_iso(&self, pool: &str, name: &str) -> Result<()> {
        let path = self.iso_dir(pool).join(name);
        fs::remove_file(&path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => Error::not_found(format!("No such ISO '{name}'")),
            _ => Error::io("remove", &path, e),
        })?;
        fsync_parent(&path).map_err(io_err("sync", &path))
    }
}
