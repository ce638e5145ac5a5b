//! The fault suite's shared parts (the `reliability_*` tests): short or
//! long runs, the invariants every suite checks after its faults, the QEMU
//! processes of a test, a server's memory and descriptors, ISOs whose
//! content proves itself whole, and the figures the suites leave for
//! RELIABILITY.md.
//!
//! Short runs are what CI does; `HYVE_LONG=1` (what `scripts/reliability`
//! sets) makes each suite run long. With `HYVE_RELIABILITY_OUT=<file>`
//! each suite appends one JSON line of figures to that file.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};

use super::Client;

/// Whether an action's error is one the rules call for when random
/// actions meet random state (a guest that exists, runs, or is gone; a disk
/// or ISO that is not there or in use; the disk limit). Any other refusal
/// is a failure of the suite.
pub fn refused_by_rules(msg: &str) -> bool {
    [
        "already exists",
        "No such guest",
        "already used by",
        "has no disk",
        "is running: stop it",
        "is already running",
        "is not running",
        "not larger than",
        "No such ISO",
        "in use by running guest",
        "is being downloaded already",
        "disk0 cannot be removed",
        "the most a guest can have",
    ]
    .iter()
    .any(|a| msg.contains(a))
}

/// Whether this is a long run (`HYVE_LONG=1`).
pub fn long() -> bool {
    std::env::var("HYVE_LONG").is_ok_and(|v| v == "1")
}

/// `short` in CI, `long` with `HYVE_LONG=1`.
pub fn pick<T>(short: T, long_: T) -> T {
    if long() {
        long_
    } else {
        short
    }
}

/// The seed of a randomised suite: `HYVE_SEED` to replay one, else fresh.
/// Printed so a failure can be replayed.
pub fn seed() -> u64 {
    let s = std::env::var("HYVE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("seed: HYVE_SEED={s}");
    s
}

/// Appends `figures` (with the suite's name and whether it ran long) as
/// one JSON line to `$HYVE_RELIABILITY_OUT`, if set.
pub fn record(suite: &str, figures: Value) {
    let line = json!({"suite": suite, "long": long(), "figures": figures});
    eprintln!("figures: {line}");
    if let Some(path) = std::env::var_os("HYVE_RELIABILITY_OUT") {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .expect("open HYVE_RELIABILITY_OUT");
        writeln!(f, "{line}").unwrap();
    }
}

// ---- processes --------------------------------------------------------------

/// The state letter of a process (`R`, `S`, `Z`...), if it exists.
fn proc_state(pid: i32) -> Option<char> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    s.rsplit_once(") ")?.1.chars().next()
}

/// Live QEMU processes working under `root`, by the guest their command
/// line names (`-name guest=<name>,...`). Zombies are left out: PID 1 of
/// some machines never reaps the orphans of a killed server.
pub fn qemu_by_guest(root: &Path) -> BTreeMap<String, Vec<i32>> {
    let root = std::fs::canonicalize(root).unwrap_or_else(|_| root.to_path_buf());
    let mut out: BTreeMap<String, Vec<i32>> = BTreeMap::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if matches!(proc_state(pid), None | Some('Z') | Some('X')) {
            continue;
        }
        let Ok(cwd) = std::fs::read_link(e.path().join("cwd")) else {
            continue;
        };
        if !cwd.starts_with(&root) {
            continue;
        }
        let Ok(raw) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let argv: Vec<String> = raw
            .split(|b| *b == 0)
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .collect();
        let guest = argv
            .windows(2)
            .find(|w| w[0] == "-name")
            .and_then(|w| w[1].strip_prefix("guest="))
            .map(|s| s.split(',').next().unwrap_or("").to_string());
        if let Some(g) = guest {
            out.entry(g).or_default().push(pid);
        }
    }
    out
}

/// Kills every QEMU working under `root`.
pub fn kill_qemus(root: &Path) {
    for pids in qemu_by_guest(root).values() {
        for &pid in pids {
            let _ = rustix::process::kill_process(
                rustix::process::Pid::from_raw(pid).unwrap(),
                rustix::process::Signal::KILL,
            );
        }
    }
}

/// A process's resident memory (kB) and open file descriptors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub rss_kb: u64,
    pub fds: usize,
}

pub fn usage(pid: u32) -> Usage {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let rss_kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS");
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    Usage { rss_kb, fds }
}

/// Waits (up to `secs`) until the server's descriptors are back to at
/// most `want`; returns the last count.
pub async fn fds_settle(pid: u32, want: usize, secs: u64) -> usize {
    let end = std::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let n = usage(pid).fds;
        if n <= want || std::time::Instant::now() > end {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

// ---- ISOs that prove themselves whole --------------------------------------

/// An ISO's content made from `seed`: a header naming the seed and the
/// length, then bytes derived from both. [`iso_whole`] recognises it, so a
/// check can tell a whole ISO from a partial or mixed one after any rename.
pub fn iso_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut out = format!("HYVEISO {seed:016x} {len:012}\n").into_bytes();
    let mut x = seed | 1;
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len.max(40));
    out
}

/// Whether `data` is exactly what [`iso_bytes`] makes for its header.
pub fn iso_whole(data: &[u8]) -> bool {
    let Some(end) = data.iter().take(64).position(|b| *b == b'\n') else {
        return false;
    };
    let Ok(head) = std::str::from_utf8(&data[..end]) else {
        return false;
    };
    let mut w = head.split_whitespace();
    let (Some("HYVEISO"), Some(seed), Some(len)) = (w.next(), w.next(), w.next()) else {
        return false;
    };
    let (Ok(seed), Ok(len)) = (u64::from_str_radix(seed, 16), len.parse::<usize>()) else {
        return false;
    };
    data.len() == len && iso_bytes(seed, len) == data
}

// ---- the invariants ----------------------------------------------------------

/// Files a guest's folder may hold besides its listed disk images.
const GUEST_FILES: [&str; 5] = ["guest.toml", "console.log", "vm.log", "run", "uefi-vars.fd"];

/// What a check saw, for the figures.
#[derive(Debug, Default, Clone)]
pub struct Seen {
    pub guests: usize,
    pub disks: usize,
    pub running: usize,
    pub isos: usize,
}

/// Checks, through the API and on disk, everything a crash, a race or a
/// fault of the host must never break:
///
/// - every guest is wholly there or wholly absent: the guests listed are
///   exactly the folders in the pools (no `.creating-`/`.deleting-`
///   leftover), each folder holds its `guest.toml`, its listed disks and
///   nothing else but its logs and run folder;
/// - `guest.toml` parses, and says what `getprops` and `listdisks` say;
/// - every disk image has the size its guest lists;
/// - no temporary or partial file is visible through the API, and every
///   ISO listed is whole (made by [`iso_bytes`], or named in `opaque`);
/// - QEMU processes: at most one per guest, none for a guest that does
///   not exist or that `listvms` does not show loaded, and one for every
///   guest it does show loaded.
///
/// `pools` are the pools' root folders; `root` is where the test's QEMUs
/// work (the data dir or above).
pub async fn check(
    c: &Client,
    pools: &[PathBuf],
    root: &Path,
    opaque: &BTreeSet<String>,
) -> Result<Seen, String> {
    let mut seen = Seen::default();
    let err = |e: hyve_client::ClientError| format!("API: {e}");
    let vms = c.iohyve("listvms", json!({})).await.map_err(err)?;
    let vms = vms.as_object().ok_or("listvms is not an object")?.clone();
    let listed: BTreeSet<String> = vms.keys().cloned().collect();
    seen.guests = listed.len();

    // Folders in the pools: exactly the guests, nothing half-made.
    let mut home: BTreeMap<String, PathBuf> = BTreeMap::new();
    for pool in pools {
        let dir = pool.join("iohyve");
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in rd.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if n == "ISO" || n == "Firmware" {
                continue;
            }
            let path = e.path();
            if n.starts_with('.') {
                return Err(format!("leftover in the pool: {}", path.display()));
            }
            if !path.join("guest.toml").exists() {
                // A second pool's folder of a guest's extra disks.
                if listed.contains(&n) {
                    continue;
                }
                return Err(format!("a folder of no guest: {}", path.display()));
            }
            if !listed.contains(&n) {
                return Err(format!(
                    "guest folder {} is not listed by listvms",
                    path.display()
                ));
            }
            if home.insert(n.clone(), path.clone()).is_some() {
                return Err(format!("guest {n} has a folder in two pools"));
            }
        }
    }
    for name in &listed {
        let Some(dir) = home.get(name) else {
            return Err(format!("guest {name} is listed but has no folder"));
        };
        let text = std::fs::read_to_string(dir.join("guest.toml"))
            .map_err(|e| format!("{name}: guest.toml: {e}"))?;
        let file: toml::Table =
            toml::from_str(&text).map_err(|e| format!("{name}: guest.toml does not parse: {e}"))?;
        let props = c
            .iohyve("getprops", json!({ "name": name }))
            .await
            .map_err(err)?;
        let mut fprops = file
            .get("props")
            .and_then(|p| p.as_table())
            .ok_or(format!("{name}: guest.toml has no [props]"))?
            .clone();
        fprops.insert("name".into(), toml::Value::String(name.clone()));
        let fprops: BTreeMap<String, String> = fprops
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("?").to_string()))
            .collect();
        let aprops: BTreeMap<String, String> = props[name]
            .as_object()
            .ok_or(format!("{name}: getprops: {props}"))?
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("?").to_string()))
            .collect();
        if fprops != aprops {
            return Err(format!(
                "{name}: getprops says {aprops:?}, guest.toml says {fprops:?}"
            ));
        }
        let disks = c
            .iohyve("listdisks", json!({ "name": name }))
            .await
            .map_err(err)?;
        let fdisks = file
            .get("disks")
            .and_then(|d| d.as_table())
            .cloned()
            .unwrap_or_default();
        let mut images = BTreeSet::new();
        for (d, size) in disks.as_object().ok_or("listdisks is not an object")? {
            let size = size.as_str().unwrap_or("");
            let entry = fdisks
                .get(d)
                .and_then(|e| e.as_table())
                .ok_or(format!("{name}: {d} is listed but not in guest.toml"))?;
            if entry.get("size").and_then(|s| s.as_str()) != Some(size) {
                return Err(format!("{name}: {d} is {size}, guest.toml says {entry}"));
            }
            let bytes = entry
                .get("bytes")
                .and_then(|b| b.as_integer())
                .unwrap_or(-1) as u64;
            let want = hyve_engine::Size::parse(size)
                .map_err(|e| format!("{name}: {d}: {e}"))?
                .bytes();
            if bytes != want {
                return Err(format!("{name}: {d} is {size} but {bytes} bytes"));
            }
            let img_dir = match entry.get("pool").and_then(|p| p.as_str()) {
                Some(p) => pools
                    .iter()
                    .find(|r| r.file_name().is_some_and(|f| f == p))
                    .ok_or(format!("{name}: {d} is in unknown pool {p}"))?
                    .join("iohyve")
                    .join(name),
                None => dir.clone(),
            };
            let img = img_dir.join(format!("{d}.img"));
            let len = std::fs::metadata(&img)
                .map_err(|e| format!("{name}: {}: {e}", img.display()))?
                .len();
            if len != want {
                return Err(format!(
                    "{name}: {} is {len} bytes, listed as {size}",
                    img.display()
                ));
            }
            images.insert(img);
            seen.disks += 1;
        }
        if fdisks.len() != images.len() {
            return Err(format!(
                "{name}: guest.toml lists {} disks, listdisks {}",
                fdisks.len(),
                images.len()
            ));
        }
        // Nothing in the guest's folders but its own files.
        for pool in pools {
            let gdir = pool.join("iohyve").join(name);
            let Ok(rd) = std::fs::read_dir(&gdir) else {
                continue;
            };
            for e in rd.flatten() {
                let n = e.file_name().to_string_lossy().into_owned();
                let ok = (gdir == *dir && GUEST_FILES.contains(&n.as_str()))
                    || images.contains(&e.path());
                if !ok {
                    return Err(format!(
                        "{name}: stray file {} (not a listed disk)",
                        e.path().display()
                    ));
                }
            }
        }
    }

    // ISOs: none partial, none temporary, each whole.
    let isos = c.iohyve("listisos", json!({})).await.map_err(err)?;
    for iso in isos.as_array().ok_or("listisos is not an array")? {
        let iso = iso.as_str().unwrap_or("");
        if iso.starts_with('.') || iso.ends_with(".part") || iso.ends_with(".tmp") {
            return Err(format!("listisos shows a partial file: {iso}"));
        }
        if opaque.contains(iso) {
            continue;
        }
        let path = pools
            .iter()
            .map(|p| p.join("iohyve/ISO").join(iso))
            .find(|p| p.exists())
            .ok_or(format!("ISO {iso} is listed but not on disk"))?;
        let data = std::fs::read(&path).map_err(|e| format!("{iso}: {e}"))?;
        if !iso_whole(&data) {
            return Err(format!("ISO {iso} is not whole ({} bytes)", data.len()));
        }
        seen.isos += 1;
    }

    // QEMU: one per loaded guest, none for anything else.
    let procs = qemu_by_guest(root);
    for (g, pids) in &procs {
        if pids.len() > 1 {
            return Err(format!(
                "guest {g} has {} QEMU processes: {pids:?}",
                pids.len()
            ));
        }
        match vms.get(g) {
            None => {
                return Err(format!(
                    "QEMU {pids:?} runs for guest {g}, which does not exist"
                ))
            }
            Some(v) if v["vmm"] != "YES" => {
                return Err(format!(
                    "QEMU {pids:?} runs for guest {g}, which listvms shows unloaded: {v}"
                ))
            }
            _ => {}
        }
    }
    for (g, v) in &vms {
        if v["vmm"] == "YES" {
            if !procs.contains_key(g) {
                return Err(format!("listvms shows {g} loaded, but no QEMU runs for it"));
            }
            seen.running += 1;
        }
    }
    Ok(seen)
}

/// [`check`], tried again for up to `secs` seconds while it fails (a guest
/// may be between two states when first asked); the last error if it never
/// holds.
pub async fn check_settled(
    c: &Client,
    pools: &[PathBuf],
    root: &Path,
    opaque: &BTreeSet<String>,
    secs: u64,
) -> Result<Seen, String> {
    let end = std::time::Instant::now() + Duration::from_secs(secs);
    loop {
        match check(c, pools, root, opaque).await {
            Ok(s) => return Ok(s),
            Err(e) if std::time::Instant::now() > end => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}
