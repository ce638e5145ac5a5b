//! `sysadm/network` and `sysadm/zfs`: the little of them the SysAdm GUI's
//! iohyve page needs (it picks the nic and the pool for `setup` from these),
//! with the original's reply shapes.
//!
//! - `sysadm/network` `list-devices`: `{"<if>": {"description", "is_active",
//!   "is_wireless", "MAC", "ipv4", "ipv6", "netmask", "status"}}`, values
//!   strings as the original's. Its `is_dhcp` is left out: nothing on the
//!   host says reliably whether a DHCP client manages an interface.
//! - `sysadm/zfs` `list_pools`: `{"list_pools": {"<pool>": {"size", "alloc",
//!   "free", "capacity", "health", "frag", "expandsz", "dedup", "altroot"}}}`
//!   for the pools this server knows (set up, configured, or holding a disk),
//!   measured on the file system that holds each; like the original, `{}`
//!   when there are none. Pools here are folders, so `frag`, `expandsz` and
//!   `altroot` are `-` and `dedup` `1.00x`, as `zpool list` shows them for a
//!   pool without those features.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use nix::net::if_::InterfaceFlags;
use serde_json::{json, Map, Value};

use hyve_proto::ProtocolError;

use super::Outcome;
use crate::App;

fn action(args: &Value) -> Option<&str> {
    args.get("action").and_then(Value::as_str)
}

fn yes(b: bool) -> &'static str {
    if b {
        "true"
    } else {
        "false"
    }
}

#[derive(Default)]
struct Device {
    flags: Option<InterfaceFlags>,
    mac: String,
    ipv4: String,
    netmask: String,
    ipv6: String,
}

/// A name the kernel gave an interface, safe to put in a /sys path.
fn plain_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains('/')
}

/// A line for people: the interface's alias if the admin set one, else
/// what kind of device it is.
fn describe(name: &str, flags: Option<InterfaceFlags>) -> String {
    let sys = Path::new("/sys/class/net").join(name);
    if let Ok(alias) = std::fs::read_to_string(sys.join("ifalias")) {
        let alias = alias.trim();
        if !alias.is_empty() {
            return alias.to_string();
        }
    }
    if flags.is_some_and(|f| f.contains(InterfaceFlags::IFF_LOOPBACK)) {
        return "Loopback interface".into();
    }
    if let Ok(driver) = std::fs::read_link(sys.join("device/driver")) {
        if let Some(d) = driver.file_name().and_then(|d| d.to_str()) {
            return format!("Ethernet interface ({d})");
        }
    }
    let uevent = std::fs::read_to_string(sys.join("uevent")).unwrap_or_default();
    match uevent.lines().find_map(|l| l.strip_prefix("DEVTYPE=")) {
        Some(kind) => format!("Virtual interface ({kind})"),
        None => "Virtual interface".into(),
    }
}

fn list_devices() -> Result<Map<String, Value>, String> {
    let addrs = nix::ifaddrs::getifaddrs()
        .map_err(|e| format!("cannot list the network interfaces: {e}"))?;
    let mut devs: BTreeMap<String, Device> = BTreeMap::new();
    for a in addrs {
        if !plain_name(&a.interface_name) {
            continue;
        }
        let d = devs.entry(a.interface_name.clone()).or_default();
        d.flags = Some(a.flags);
        let Some(addr) = a.address else { continue };
        if let Some(v4) = addr.as_sockaddr_in() {
            if d.ipv4.is_empty() {
                d.ipv4 = v4.ip().to_string();
                d.netmask = a
                    .netmask
                    .and_then(|m| m.as_sockaddr_in().map(|m| m.ip().to_string()))
                    .unwrap_or_default();
            }
        } else if let Some(v6) = addr.as_sockaddr_in6() {
            if d.ipv6.is_empty() {
                d.ipv6 = v6.ip().to_string();
            }
        } else if let Some(mac) = addr.as_link_addr().and_then(|l| l.addr()) {
            d.mac = mac
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(":");
        }
    }
    Ok(devs
        .into_iter()
        .map(|(name, d)| {
            let flags = d.flags.unwrap_or(InterfaceFlags::empty());
            let sys = Path::new("/sys/class/net").join(&name);
            let wireless = sys.join("wireless").exists() || sys.join("phy80211").exists();
            let v = json!({
                "description": describe(&name, d.flags),
                "is_active": yes(flags.contains(InterfaceFlags::IFF_UP)),
                "is_wireless": yes(wireless),
                "MAC": d.mac,
                "ipv4": d.ipv4,
                "ipv6": d.ipv6,
                "netmask": d.netmask,
                "status": if flags.contains(InterfaceFlags::IFF_RUNNING) { "active" } else { "no carrier" },
            });
            (name, v)
        })
        .collect())
}

pub async fn network(args: &Value) -> Outcome {
    match action(args) {
        Some("list-devices") => match tokio::task::spawn_blocking(list_devices).await {
            Ok(Ok(m)) => Outcome::Ok(Value::Object(m)),
            Ok(Err(e)) => {
                Outcome::Protocol(ProtocolError::new(hyve_proto::ErrorCode::BadRequest, e))
            }
            Err(e) => Outcome::Protocol(ProtocolError::bad_request(e.to_string())),
        },
        _ => Outcome::Protocol(ProtocolError::bad_request(
            "sysadm/network takes {\"action\": \"list-devices\"}",
        )),
    }
}

/// A size as `zpool list` prints it: three significant digits and a unit.
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 7] = ["", "K", "M", "G", "T", "P", "E"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes}")
    } else if v < 10.0 {
        format!("{v:.2}{}", UNITS[u])
    } else if v < 100.0 {
        format!("{v:.1}{}", UNITS[u])
    } else {
        format!("{v:.0}{}", UNITS[u])
    }
}

fn pool_stats(dir: &Path) -> Value {
    match rustix::fs::statvfs(dir) {
        Ok(s) => {
            let frsize = s.f_frsize.max(1);
            let size = s.f_blocks * frsize;
            let free = s.f_bavail * frsize;
            let alloc = s.f_blocks.saturating_sub(s.f_bfree) * frsize;
            let cap = (alloc * 100).checked_div(size).unwrap_or(0);
            json!({
                "size": human(size), "alloc": human(alloc), "free": human(free),
                "capacity": format!("{cap}%"), "health": "ONLINE",
                "frag": "-", "expandsz": "-", "dedup": "1.00x", "altroot": "-",
            })
        }
        Err(_) => json!({
            "size": "-", "alloc": "-", "free": "-", "capacity": "-", "health": "UNAVAIL",
            "frag": "-", "expandsz": "-", "dedup": "1.00x", "altroot": "-",
        }),
    }
}

/// The pools this server knows, with their folders.
fn known_pools(app: &App) -> Vec<(String, std::path::PathBuf)> {
    let engine = &app.engine;
    let mut pools: BTreeSet<String> = app.config.pools.keys().cloned().collect();
    if let Some(s) = engine.setup_record() {
        pools.extend(s.pools);
    }
    for g in engine.guest_names() {
        if let Ok(rec) = engine.guest(&g) {
            pools.insert(rec.pool.clone());
            pools.extend(rec.disks.values().map(|d| d.pool.clone()));
        }
    }
    let store = engine.store().clone();
    pools
        .into_iter()
        .map(|p| {
            let dir = store.pool_dir(&p);
            (p, dir)
        })
        .collect()
}

pub async fn zfs(app: &App, args: &Value) -> Outcome {
    match action(args) {
        Some("list_pools") => {
            let known = known_pools(app);
            // statvfs can hang on a dead network file system: not on the
            // async threads.
            let pools: Map<String, Value> = tokio::task::spawn_blocking(move || {
                known
                    .into_iter()
                    .map(|(p, dir)| (p, pool_stats(&dir)))
                    .collect()
            })
            .await
            .unwrap_or_default();
            if pools.is_empty() {
                Outcome::Ok(json!({}))
            } else {
                Outcome::Ok(json!({ "list_pools": pools }))
            }
        }
        _ => Outcome::Protocol(ProtocolError::bad_request(
            "sysadm/zfs takes {\"action\": \"list_pools\"}",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_like_zpool_list() {
        assert_eq!(human(512), "512");
        assert_eq!(human(10 << 30), "10.0G");
        assert_eq!(human(9 << 30), "9.00G");
        assert_eq!(human(476 << 30), "476G");
        assert_eq!(human((3 << 40) + (1 << 39)), "3.50T");
    }

    #[test]
    fn loopback_is_listed_up() {
        let devs = list_devices().unwrap();
        let lo = &devs["lo"];
        assert_eq!(lo["is_active"], "true");
        assert_eq!(lo["description"], "Loopback interface");
        assert_eq!(lo["ipv4"], "127.0.0.1");
        assert_eq!(lo["netmask"], "255.0.0.0");
    }
}
