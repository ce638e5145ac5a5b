//! The engine: the iohyve actions, over a [`Store`], with an in-memory
//! inventory so that reads never touch the disk.
//!
//! Locking: every change to a guest holds that guest's lock; changes that
//! must see all guests at once (create, delete, setup, unique properties,
//! ISOs) also hold the registry lock, always taken second. The inventory's
//! `RwLock` is only held for memory copies, never across I/O or `.await`.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use tracing::{info, warn};

use crate::error::{Error, Result};
use crate::keyed_lock::KeyedLock;
use crate::props::{self, Access, Props};
use crate::size::Size;
use crate::store::{DiskRecord, GuestRecord, SetupRecord, Store};
use crate::validate::{self, Limits};

/// The text of the `version` action.
pub const VERSION: &str = concat!("hyve ", env!("CARGO_PKG_VERSION"), " (iohyve v0.7.3 API)");

/// The highest disk number a guest may have.
const MAX_DISK: u32 = 999;

/// The most disks a guest may have: what a hypervisor can attach. Each
/// disk takes a PCI slot of the guest's one bus (QEMU's q35 and bhyve
/// alike have 32, a few of them taken by the chipset, the network card
/// and the install CD); a guest given more could never start again.
pub const MAX_DISKS: usize = 24;

/// One line of `listvms`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmSummary {
    pub description: String,
    /// Starts with the host (`boot` = 1).
    pub rcboot: bool,
    /// The guest is running.
    pub running: bool,
    /// The guest is loaded in the hypervisor (a process exists for it).
    pub vmm: bool,
}

#[derive(Default)]
struct Inventory {
    setup: Option<SetupRecord>,
    guests: BTreeMap<String, GuestRecord>,
}

pub struct Engine {
    store: Arc<dyn Store>,
    limits: Limits,
    inv: RwLock<Inventory>,
    registry: tokio::sync::Mutex<()>,
    guest_locks: KeyedLock,
}

/// Runs a blocking storage call off the async threads.
async fn blocking<T, F>(f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T> + Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::internal(format!("storage task failed: {e}")))?
}

fn invalid(msg: String) -> Error {
    Error::invalid(msg)
}

fn no_such_guest(name: &str) -> Error {
    Error::not_found(format!("No such guest '{name}'"))
}

fn not_set_up() -> Error {
    Error::conflict("iohyve is not set up yet: run setup with a pool and a nic first")
}

fn now_text() -> String {
    chrono::Utc::now()
        .format("%a %b %e %H:%M:%S UTC %Y")
        .to_string()
}

impl Engine {
    /// Opens the store: reads the setup record and every guest. Blocking.
    pub fn open(store: Arc<dyn Store>, limits: Limits) -> Result<Engine> {
        let setup = store.load_setup()?;
        let mut guests = BTreeMap::new();
        if let Some(s) = &setup {
            for rec in store.scan_guests(&s.pools)? {
                if guests.contains_key(&rec.name) {
                    warn!(guest = %rec.name, pool = %rec.pool, "a guest of this name is in another pool too; ignoring this one");
                    continue;
                }
                guests.insert(rec.name.clone(), rec);
            }
        }
        info!(
            guests = guests.len(),
            setup = setup.is_some(),
            "inventory loaded"
        );
        Ok(Engine {
            store,
            limits,
            inv: RwLock::new(Inventory { setup, guests }),
            registry: tokio::sync::Mutex::new(()),
            guest_locks: KeyedLock::default(),
        })
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inventory> {
        self.inv.read().expect("inventory lock poisoned")
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inventory> {
        self.inv.write().expect("inventory lock poisoned")
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// A copy of one guest's record.
    pub fn guest(&self, name: &str) -> Result<GuestRecord> {
        self.read()
            .guests
            .get(name)
            .cloned()
            .ok_or_else(|| no_such_guest(name))
    }

    /// The names of all guests.
    pub fn guest_names(&self) -> Vec<String> {
        self.read().guests.keys().cloned().collect()
    }

    pub fn setup_record(&self) -> Option<SetupRecord> {
        self.read().setup.clone()
    }

    // ---- listing -------------------------------------------------------

    /// `listvms`. `state` tells, for a guest name, whether it is
    /// (running, loaded in the hypervisor).
    pub fn list_vms(&self, state: impl Fn(&str) -> (bool, bool)) -> BTreeMap<String, VmSummary> {
        self.read()
            .guests
            .values()
            .map(|g| {
                let (running, vmm) = state(&g.name);
                (
                    g.name.clone(),
                    VmSummary {
                        description: g.prop("description").to_string(),
                        rcboot: g.prop("boot") == "1",
                        running,
                        vmm,
                    },
                )
            })
            .collect()
    }

    pub fn is_setup(&self) -> bool {
        self.read().setup.is_some()
    }

    pub fn version(&self) -> &'static str {
        VERSION
    }

    pub fn get_props(&self, name: &str) -> Result<Props> {
        validate::guest_name(name).map_err(invalid)?;
        Ok(self.guest(name)?.props)
    }

    /// `listdisks`: disk name to size.
    pub fn list_disks(&self, name: &str) -> Result<Vec<(String, String)>> {
        validate::guest_name(name).map_err(invalid)?;
        Ok(self
            .guest(name)?
            .disks
            .iter()
            .map(|(n, d)| (format!("disk{n}"), d.size.clone()))
            .collect())
    }

    // ---- setup ---------------------------------------------------------

    pub async fn setup(&self, pool: &str, nic: &str) -> Result<SetupRecord> {
        validate::pool_name(pool).map_err(invalid)?;
        validate::nic_name(nic).map_err(invalid)?;
        let _r = self.registry.lock().await;
        let old = self.read().setup.clone();
        let mut pools = old.as_ref().map(|s| s.pools.clone()).unwrap_or_default();
        let new_pool = !pools.iter().any(|p| p == pool);
        if new_pool {
            pools.push(pool.to_string());
        }
        let rec = SetupRecord {
            pool: pool.to_string(),
            nic: nic.to_string(),
            pools,
        };
        let store = self.store.clone();
        let (r2, p2) = (rec.clone(), pool.to_string());
        // A pool set up before (or by hand) may already hold guests.
        let found = blocking(move || {
            store.save_setup(&r2)?;
            if new_pool {
                store.scan_guests(&[p2])
            } else {
                Ok(Vec::new())
            }
        })
        .await?;
        let mut inv = self.write();
        for g in found {
            if inv.guests.contains_key(&g.name) {
                warn!(guest = %g.name, pool, "a guest of this name is in another pool; ignoring this one");
            } else {
                inv.guests.insert(g.name.clone(), g);
            }
        }
        inv.setup = Some(rec.clone());
        info!(pool, nic, "setup recorded");
        Ok(rec)
    }

    /// The setup record, or the error every action that needs setup gives.
    pub fn setup_or_err(&self) -> Result<SetupRecord> {
        self.read().setup.clone().ok_or_else(not_set_up)
    }

    // ---- guests --------------------------------------------------------

    /// The lowest number above every `<prefix>N` value of `prop` in use.
    fn next_device(inv: &Inventory, prop: &str, prefix: &str) -> u32 {
        inv.guests
            .values()
            .filter_map(|g| props::device_number(g.prop(prop), prefix))
            .max()
            .map_or(0, |n| n + 1)
    }

    /// `create`: a guest with iohyve's default properties and a sparse disk0.
    pub async fn create(&self, name: &str, size: &str) -> Result<GuestRecord> {
        validate::guest_name(name).map_err(invalid)?;
        let size = validate::disk_size(size, &self.limits).map_err(invalid)?;
        let _g = self.guest_locks.lock(name).await;
        let _r = self.registry.lock().await;
        let rec = {
            let inv = self.read();
            let setup = inv.setup.as_ref().ok_or_else(not_set_up)?;
            if inv.guests.contains_key(name) {
                return Err(Error::conflict(format!("Guest '{name}' already exists")));
            }
            let tap = Self::next_device(&inv, "tap", "tap");
            let con = Self::next_device(&inv, "con", "nmdm");
            let props = props::defaults(name, size.text(), tap, con, &now_text());
            let mut disks = BTreeMap::new();
            disks.insert(
                0,
                DiskRecord {
                    size: size.text().to_string(),
                    bytes: size.bytes(),
                    pool: setup.pool.clone(),
                },
            );
            GuestRecord {
                name: name.to_string(),
                pool: setup.pool.clone(),
                props,
                disks,
            }
        };
        let store = self.store.clone();
        let r2 = rec.clone();
        blocking(move || store.create_guest(&r2)).await?;
        self.write().guests.insert(name.to_string(), rec.clone());
        info!(guest = name, size = %size, "guest created");
        Ok(rec)
    }

    /// `delete`: the guest's folder and every disk. `busy` refuses with a
    /// reason (a running guest) before anything is touched.
    pub async fn delete(
        &self,
        name: &str,
        busy: impl Fn(&GuestRecord) -> Result<()>,
    ) -> Result<()> {
        validate::guest_name(name).map_err(invalid)?;
        let _g = self.guest_locks.lock(name).await;
        let _r = self.registry.lock().await;
        let rec = self.guest(name)?;
        busy(&rec)?;
        let store = self.store.clone();
        let r2 = rec.clone();
        blocking(move || store.delete_guest(&r2)).await?;
        self.write().guests.remove(name);
        info!(guest = name, "guest deleted");
        Ok(())
    }

    /// Runs `f` on a copy of the guest's record under its lock, stores the
    /// result with `save`, and commits it to memory.
    async fn modify<T: Send + 'static>(
        &self,
        name: &str,
        f: impl FnOnce(&mut GuestRecord) -> Result<T>,
        save: impl FnOnce(Arc<dyn Store>, &GuestRecord) -> Result<()> + Send + 'static,
    ) -> Result<(GuestRecord, T)> {
        let mut rec = self.guest(name)?;
        let out = f(&mut rec)?;
        let store = self.store.clone();
        let r2 = rec.clone();
        blocking(move || save(store, &r2)).await?;
        self.write().guests.insert(name.to_string(), rec.clone());
        Ok((rec, out))
    }

    /// `adddisk`: a new sparse disk numbered one above the highest.
    pub async fn add_disk(
        &self,
        name: &str,
        size: &str,
        pool: Option<&str>,
    ) -> Result<(String, Size)> {
        validate::guest_name(name).map_err(invalid)?;
        let size = validate::disk_size(size, &self.limits).map_err(invalid)?;
        if let Some(p) = pool {
            validate::pool_name(p).map_err(invalid)?;
        }
        let setup = self.setup_or_err()?;
        if let Some(p) = pool {
            if !setup.pools.iter().any(|k| k == p) {
                return Err(Error::not_found(format!(
                    "pool '{p}' is not set up; known pools: {}",
                    setup.pools.join(", ")
                )));
            }
        }
        let _g = self.guest_locks.lock(name).await;
        let current = self.guest(name)?;
        if current.disks.len() >= MAX_DISKS {
            return Err(Error::conflict(format!(
                "guest '{name}' has {} disks, the most a guest can have (each takes a slot of its PCI bus); remove one first",
                current.disks.len()
            )));
        }
        let n = current.disks.keys().max().map_or(0, |n| n + 1);
        if n > MAX_DISK {
            return Err(Error::conflict(format!(
                "guest '{name}' has no free disk number left"
            )));
        }
        let disk = DiskRecord {
            size: size.text().to_string(),
            bytes: size.bytes(),
            pool: pool.map_or_else(|| current.disks[&0].pool.clone(), str::to_string),
        };
        let disk_pool = disk.pool.clone();
        self.modify(
            name,
            move |rec| {
                rec.disks.insert(n, disk);
                Ok(())
            },
            move |store, rec| store.add_disk(rec, n),
        )
        .await?;
        info!(guest = name, disk = n, size = %size, "disk added");
        Ok((disk_pool, size))
    }

    /// `resizedisk`: grows a disk; shrinking is refused.
    pub async fn resize_disk(
        &self,
        name: &str,
        disk: &str,
        size: &str,
        busy: impl Fn(&GuestRecord) -> Result<()>,
    ) -> Result<Size> {
        validate::guest_name(name).map_err(invalid)?;
        let n = validate::disk_name(disk).map_err(invalid)?;
        let size = validate::disk_size(size, &self.limits).map_err(invalid)?;
        let _g = self.guest_locks.lock(name).await;
        busy(&self.guest(name)?)?;
        let sz = size.clone();
        let disk_s = disk.to_string();
        self.modify(
            name,
            move |rec| {
                let name = rec.name.clone();
                let d = rec.disks.get_mut(&n).ok_or_else(|| {
                    Error::not_found(format!("Guest '{name}' has no disk '{disk_s}'"))
                })?;
                if sz.bytes() <= d.bytes {
                    return Err(Error::invalid(format!(
                        "{sz} is not larger than {disk_s}'s current size {}: disks can only grow",
                        d.size
                    )));
                }
                d.bytes = sz.bytes();
                d.size = sz.text().to_string();
                if n == 0 {
                    rec.props.insert("size".into(), sz.text().to_string());
                }
                Ok(())
            },
            move |store, rec| store.grow_disk(rec, n),
        )
        .await?;
        info!(guest = name, disk, size = %size, "disk grown");
        Ok(size)
    }

    /// `deletedisk`: removes a disk other than disk0.
    pub async fn delete_disk(
        &self,
        name: &str,
        disk: &str,
        busy: impl Fn(&GuestRecord) -> Result<()>,
    ) -> Result<()> {
        validate::guest_name(name).map_err(invalid)?;
        let n = validate::disk_name(disk).map_err(invalid)?;
        if n == 0 {
            return Err(Error::invalid("disk0 cannot be removed!"));
        }
        let _g = self.guest_locks.lock(name).await;
        let current = self.guest(name)?;
        busy(&current)?;
        let removed = current
            .disks
            .get(&n)
            .cloned()
            .ok_or_else(|| Error::not_found(format!("Guest '{name}' has no disk '{disk}'")))?;
        self.modify(
            name,
            move |rec| {
                rec.disks.remove(&n);
                Ok(())
            },
            move |store, rec| store.remove_disk(rec, n, &removed),
        )
        .await?;
        info!(guest = name, disk, "disk removed");
        Ok(())
    }

    /// `setprop`: checks every value first, then stores them all at once.
    /// Returns the values as stored.
    pub async fn set_props(&self, name: &str, changes: &BTreeMap<String, String>) -> Result<Props> {
        validate::guest_name(name).map_err(invalid)?;
        let mut checked = Props::new();
        for (k, v) in changes {
            let v = props::check(k, v, &self.limits).map_err(invalid)?;
            checked.insert(k.clone(), v);
        }
        let _g = self.guest_locks.lock(name).await;
        let _r = self.registry.lock().await;
        {
            let inv = self.read();
            if !inv.guests.contains_key(name) {
                return Err(no_such_guest(name));
            }
            for (k, v) in &checked {
                if props::access(k) != Some(Access::Unique) {
                    continue;
                }
                if let Some(other) = inv
                    .guests
                    .values()
                    .find(|g| g.name != name && g.prop(k) == v)
                {
                    return Err(Error::conflict(format!(
                        "{k} {v} is already used by guest '{}'",
                        other.name
                    )));
                }
            }
        }
        let c2 = checked.clone();
        self.modify(
            name,
            move |rec| {
                rec.props.extend(c2);
                Ok(())
            },
            |store, rec| store.save_guest(rec),
        )
        .await?;
        info!(guest = name, props = ?checked.keys().collect::<Vec<_>>(), "properties set");
        Ok(checked)
    }

    /// Sets a property the server manages itself (install, mac), bypassing
    /// the read-only rule of `setprop`.
    pub async fn set_internal_prop(&self, name: &str, key: &str, value: &str) -> Result<()> {
        let _g = self.guest_locks.lock(name).await;
        let (k, v) = (key.to_string(), value.to_string());
        self.modify(
            name,
            move |rec| {
                rec.props.insert(k, v);
                Ok(())
            },
            |store, rec| store.save_guest(rec),
        )
        .await
        .map(|_| ())
    }

    /// Sets properties the server manages itself while the caller already
    /// holds the guest's lock (from [`Engine::guest_lock`]), as start does.
    pub async fn set_internal_props_held(
        &self,
        _held: &crate::keyed_lock::KeyedGuard<'_>,
        name: &str,
        changes: &[(&str, String)],
    ) -> Result<()> {
        let c: Vec<(String, String)> = changes
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        self.modify(
            name,
            move |rec| {
                rec.props.extend(c);
                Ok(())
            },
            |store, rec| store.save_guest(rec),
        )
        .await
        .map(|_| ())
    }

    /// Whether any guest but `except` has property `key` set to `value`.
    pub fn prop_in_use(&self, key: &str, value: &str, except: &str) -> bool {
        self.read()
            .guests
            .values()
            .any(|g| g.name != except && g.prop(key) == value)
    }

    // ---- ISOs ----------------------------------------------------------

    /// `listisos`: complete ISOs only, sorted.
    pub async fn list_isos(&self) -> Result<Vec<String>> {
        let Some(setup) = self.setup_record() else {
            return Ok(Vec::new());
        };
        let store = self.store.clone();
        let isos = blocking(move || store.list_isos(&setup.pools)).await?;
        Ok(isos.into_iter().map(|(n, _)| n).collect())
    }

    /// The pool holding ISO `name`, if any.
    async fn find_iso(&self, name: &str) -> Result<Option<String>> {
        let setup = self.setup_or_err()?;
        let store = self.store.clone();
        let isos = blocking(move || store.list_isos(&setup.pools)).await?;
        Ok(isos.into_iter().find(|(n, _)| n == name).map(|(_, p)| p))
    }

    /// The path of ISO `name`, which must exist.
    pub async fn iso_path(&self, name: &str) -> Result<std::path::PathBuf> {
        validate::iso_name(name).map_err(invalid)?;
        let pool = self
            .find_iso(name)
            .await?
            .ok_or_else(|| Error::not_found(format!("No such ISO '{name}'")))?;
        Ok(self.store.iso_dir(&pool).join(name))
    }

    pub async fn rename_iso(&self, source: &str, target: &str) -> Result<()> {
        validate::iso_name(source).map_err(invalid)?;
        validate::iso_name(target).map_err(invalid)?;
        let _r = self.registry.lock().await;
        let pool = self
            .find_iso(source)
            .await?
            .ok_or_else(|| Error::not_found(format!("No such ISO '{source}'")))?;
        if source != target && self.find_iso(target).await?.is_some() {
            return Err(Error::conflict(format!(
                "an ISO named '{target}' already exists"
            )));
        }
        if source == target {
            return Ok(());
        }
        let store = self.store.clone();
        let (s, t) = (source.to_string(), target.to_string());
        blocking(move || store.rename_iso(&pool, &s, &t)).await?;
        info!(source, target, "ISO renamed");
        Ok(())
    }

    pub async fn remove_iso(&self, target: &str, busy: impl Fn(&str) -> Result<()>) -> Result<()> {
        validate::iso_name(target).map_err(invalid)?;
        let _r = self.registry.lock().await;
        let pool = self
            .find_iso(target)
            .await?
            .ok_or_else(|| Error::not_found(format!("No such ISO '{target}'")))?;
        busy(target)?;
        let store = self.store.clone();
        let t = target.to_string();
        blocking(move || store.remove_iso(&pool, &t)).await?;
        info!(iso = target, "ISO removed");
        Ok(())
    }

    /// Holds the registry lock: ISO store changes (a finished download's
    /// rename) take it so they never race a rename or removal.
    pub async fn registry_lock(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.registry.lock().await
    }

    /// Holds one guest's lock, for callers that change the guest's runtime
    /// state (start, stop) and must not race a delete or resize.
    pub async fn guest_lock(&self, name: &str) -> crate::keyed_lock::KeyedGuard<'_> {
        self.guest_locks.lock(name).await
    }
}
