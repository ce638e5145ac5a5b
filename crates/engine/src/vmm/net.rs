//! Guest networking on the host: a tap device on a bridge that holds the
//! nic named at `setup`, or user-mode networking.
//!
//! All changes go through `ip` (iproute2) with explicit argument vectors,
//! and every question is asked through `ip -j` (netlink), so the answers
//! are right inside a network namespace too (`/sys/class/net` shows the
//! namespace sysfs was mounted in, not the caller's).
//!
//! The decisions, in order:
//! - the nic does not exist on this host (the API document's `re0` is a
//!   FreeBSD name): user-mode networking, with a warning in the log and the
//!   guest's `vm.log` saying so;
//! - the nic is a bridge: taps go on it;
//! - the nic is a port of a bridge: taps go on that bridge;
//! - otherwise the configured bridge (`hyvebr0`) is made if missing and the
//!   nic added to it, unless the nic carries the host's own addresses:
//!   enslaving it would cut the host off the network, so the start is
//!   refused with what to do instead.

use std::time::Duration;

use serde_json::Value;
use tokio::process::Command;
use tracing::{info, warn};

use crate::error::{Error, Result};

/// Where a guest's network card goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetPlan {
    /// User-mode networking, and why (for the log).
    User { reason: String },
    /// A tap on this bridge.
    Bridge { bridge: String },
}

/// Runs `ip` with `args`; the output on success, the error text otherwise.
async fn ip(args: &[&str]) -> std::result::Result<String, String> {
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        Command::new("ip").args(args).kill_on_drop(true).output(),
    )
    .await
    .map_err(|_| format!("ip {} did not finish within 30 s", args.join(" ")))?
    .map_err(|e| format!("cannot run ip (iproute2): {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

async fn ip_change(args: &[&str]) -> Result<()> {
    ip(args)
        .await
        .map(|_| ())
        .map_err(|e| Error::internal(format!("ip {} failed: {e}", args.join(" "))))
}

/// `ip -j -d link show dev <name>`: the link's JSON, `None` if it does not
/// exist.
pub async fn link(name: &str) -> Result<Option<Value>> {
    if !exists_here(name) {
        return Ok(None);
    }
    match ip(&["-j", "-d", "link", "show", "dev", name]).await {
        Ok(text) => {
            let v: Value = serde_json::from_str(&text)
                .map_err(|e| Error::internal(format!("ip -j gave unreadable output: {e}")))?;
            Ok(v.as_array().and_then(|a| a.first()).cloned())
        }
        Err(e) if e.contains("does not exist") || e.contains("Cannot find device") => Ok(None),
        Err(e) => Err(Error::internal(format!(
            "cannot look up interface {name}: {e}"
        ))),
    }
}

/// Whether the server's own network namespace has an interface `name`,
/// asked of the kernel on a socket (`SIOCGIFINDEX`), which answers for the
/// namespace of the socket rather than the one sysfs was mounted in. Saves
/// a process per start in the usual case of a setup nic the host does not
/// have (the API document's `re0` on Linux). Any answer but "no such
/// device" is left to `ip`.
fn exists_here(name: &str) -> bool {
    use rustix::net::{socket, AddressFamily, SocketType};
    let Ok(sock) = socket(AddressFamily::INET, SocketType::DGRAM, None) else {
        return true;
    };
    !matches!(
        rustix::net::netdevice::name_to_index(&sock, name),
        Err(rustix::io::Errno::NODEV)
    )
}

fn kind(link: &Value) -> &str {
    link["linkinfo"]["info_kind"].as_str().unwrap_or("")
}

/// The host's global addresses on `dev`, as `addr/prefix`.
async fn global_addresses(dev: &str) -> Result<Vec<String>> {
    let text = ip(&["-j", "addr", "show", "dev", dev])
        .await
        .map_err(|e| Error::internal(format!("cannot read the addresses of {dev}: {e}")))?;
    let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    let mut out = Vec::new();
    for l in v.as_array().into_iter().flatten() {
        for a in l["addr_info"].as_array().into_iter().flatten() {
            if a["scope"] == "global" {
                out.push(format!(
                    "{}/{}",
                    a["local"].as_str().unwrap_or("?"),
                    a["prefixlen"]
                ));
            }
        }
    }
    Ok(out)
}

/// The host side of guest networking.
pub struct HostNet {
    /// The bridge made for the nic when it is on none.
    bridge_name: String,
    /// Serializes bridge creation between guests starting at once.
    lock: tokio::sync::Mutex<()>,
}

impl HostNet {
    pub fn new(bridge_name: String) -> HostNet {
        HostNet {
            bridge_name,
            lock: tokio::sync::Mutex::new(()),
        }
    }

    /// Decides where guests' cards go for setup nic `nic`, making the
    /// bridge if needed.
    pub async fn plan(&self, nic: &str) -> Result<NetPlan> {
        let _l = self.lock.lock().await;
        let Some(l) = link(nic).await? else {
            return Ok(NetPlan::User {
                reason: format!(
                    "the setup nic {nic} does not exist on this host, so the guest gets user-mode networking (outbound NAT only); run setup with an existing nic or bridge to bridge guests"
                ),
            });
        };
        if kind(&l) == "bridge" {
            return Ok(NetPlan::Bridge {
                bridge: nic.to_string(),
            });
        }
        if let Some(master) = l["master"].as_str() {
            match link(master).await? {
                Some(m) if kind(&m) == "bridge" => {
                    return Ok(NetPlan::Bridge { bridge: master.to_string() })
                }
                _ => {
                    return Err(Error::conflict(format!(
                        "the setup nic {nic} belongs to {master}, which is not a bridge; guests cannot be attached there"
                    )))
                }
            }
        }
        let addrs = global_addresses(nic).await?;
        if !addrs.is_empty() {
            return Err(Error::conflict(format!(
                "the setup nic {nic} carries this host's addresses ({}); putting it on a bridge would cut the host off the network. Make a bridge that holds {nic} with the addresses on the bridge, then run setup with that bridge as the nic",
                addrs.join(", ")
            )));
        }
        let br = self.bridge_name.as_str();
        match link(br).await? {
            Some(b) if kind(&b) == "bridge" => {}
            Some(_) => {
                return Err(Error::conflict(format!(
                    "an interface named {br} exists and is not a bridge; set [vm] bridge to another name"
                )))
            }
            None => {
                info!(bridge = br, "making the guests' bridge");
                ip_change(&["link", "add", "name", br, "type", "bridge"]).await?;
            }
        }
        ip_change(&["link", "set", "dev", br, "up"]).await?;
        info!(bridge = br, nic, "adding the setup nic to the bridge");
        ip_change(&["link", "set", "dev", nic, "master", br]).await?;
        ip_change(&["link", "set", "dev", nic, "up"]).await?;
        Ok(NetPlan::Bridge {
            bridge: br.to_string(),
        })
    }

    /// Makes tap `tap` on `bridge`, replacing a stale tap of that name (left
    /// by a guest that ended while no server watched it).
    pub async fn add_tap(&self, tap: &str, bridge: &str) -> Result<()> {
        if let Some(l) = link(tap).await? {
            if kind(&l) != "tun" {
                return Err(Error::conflict(format!(
                    "an interface named {tap} exists and is not a tap device; set the guest's tap property to another tapN"
                )));
            }
            warn!(tap, "removing a stale tap device");
            ip_change(&["link", "del", "dev", tap]).await?;
        }
        ip_change(&["tuntap", "add", "dev", tap, "mode", "tap"]).await?;
        let r = async {
            ip_change(&["link", "set", "dev", tap, "master", bridge]).await?;
            ip_change(&["link", "set", "dev", tap, "up"]).await
        }
        .await;
        if r.is_err() {
            let _ = ip(&["link", "del", "dev", tap]).await;
        }
        r
    }

    /// Removes tap `tap` if it is there and is a tap.
    pub async fn remove_tap(&self, tap: &str) {
        match link(tap).await {
            Ok(Some(l)) if kind(&l) == "tun" => {
                if let Err(e) = ip_change(&["link", "del", "dev", tap]).await {
                    warn!(tap, error = %e, "could not remove tap device");
                }
            }
            Ok(_) => {}
            Err(e) => warn!(tap, error = %e, "could not look up tap device"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_missing_nic_is_known_without_ip_and_a_present_one_is_asked() {
        assert!(exists_here("lo"));
        assert!(!exists_here("hyvenone0"));
        assert_eq!(link("hyvenone0").await.unwrap(), None);
        let lo = link("lo").await.unwrap().expect("lo exists");
        assert_eq!(lo["ifname"], "lo");
    }
}
