//! Bridged networking, inside a network namespace this test makes: a veth
//! pair stands in for the host's nic. The whole server (and so QEMU and
//! `ip`) runs in the namespace: the test thread moves into it before
//! starting the server, and a forked process keeps its parent thread's
//! namespace.
//!
//! What it shows: the bridge is made and holds the nic, the guest's tap is
//! on it with the guest's stable MAC, the guest answers on the bridge (an
//! IPv6 link-local ping, nothing leaves the namespace), the tap is removed
//! at stop; and a nic that carries addresses is refused, not enslaved.

mod common;

use std::os::fd::AsFd;
use std::process::Command;

use common::guest::*;
use common::*;
use serde_json::{json, Value};

/// A network namespace, deleted on drop.
struct Netns(String);

impl Netns {
    fn new() -> Netns {
        let name = format!("hyvetest{}", std::process::id());
        ip(&["netns", "add", &name]);
        let ns = Netns(name);
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    fn ip(&self, args: &[&str]) -> String {
        let mut a = vec!["-n", self.0.as_str()];
        a.extend_from_slice(args);
        ip(&a)
    }

    fn link(&self, dev: &str) -> Option<Value> {
        let o = Command::new("ip")
            .args(["-n", &self.0, "-j", "-d", "link", "show", "dev", dev])
            .output()
            .unwrap();
        if !o.status.success() {
            return None;
        }
        let v: Value = serde_json::from_slice(&o.stdout).unwrap();
        v.get(0).cloned()
    }

    /// Moves the calling thread into the namespace.
    fn enter(&self) {
        let f = std::fs::File::open(format!("/var/run/netns/{}", self.0)).unwrap();
        rustix::thread::move_into_link_name_space(
            f.as_fd(),
            Some(rustix::thread::LinkNameSpaceType::Network),
        )
        .unwrap();
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn ip(args: &[&str]) -> String {
    let o = Command::new("ip").args(args).output().unwrap();
    assert!(
        o.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The IPv6 link-local address a Linux guest derives from its MAC (EUI-64).
fn link_local(mac: &str) -> String {
    let b: Vec<u8> = mac
        .split(':')
        .map(|h| u8::from_str_radix(h, 16).unwrap())
        .collect();
    format!(
        "fe80::{:x}:{:x}:{:x}:{:x}",
        u16::from_be_bytes([b[0] ^ 2, b[1]]),
        u16::from_be_bytes([b[2], 0xff]),
        u16::from_be_bytes([0xfe, b[3]]),
        u16::from_be_bytes([b[4], b[5]])
    )
}

#[test]
fn link_local_from_mac() {
    assert_eq!(link_local("52:54:00:12:34:56"), "fe80::5054:ff:fe12:3456");
}

#[tokio::test]
async fn guests_are_bridged_onto_the_setup_nic() {
    // Built (or found in the cache) before the thread enters the namespace:
    // building it downloads Debian packages, and the namespace has no way out.
    test_iso();
    let ns = Netns::new();
    ns.ip(&[
        "link", "add", "nic0", "type", "veth", "peer", "name", "wire0",
    ]);
    ns.ip(&[
        "link", "add", "nic1", "type", "veth", "peer", "name", "wire1",
    ]);
    ns.ip(&["addr", "add", "2001:db8::1/64", "dev", "nic1"]);
    ns.enter();
    let dirs = GuestDirs::new();
    let data = dirs.data();
    let server = start_server(&data, "");
    let c = server.client().await;

    // A nic that carries the host's addresses is not put on a bridge.
    c.iohyve("setup", json!({"pool": "tank", "nic": "nic1"}))
        .await
        .unwrap();
    c.iohyve("create", json!({"name": "net1", "size": "64M"}))
        .await
        .unwrap();
    std::fs::write(iso_dir(&data).join("blank.iso"), vec![0u8; 2048]).unwrap();
    let e = c
        .iohyve("install", json!({"name": "net1", "iso": "blank.iso"}))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("the setup nic nic1 carries this host's addresses (2001:db8::1/64)"),
        "{e}"
    );
    assert!(ns.link("hyvebr0").is_none());
    assert!(ns.link("nic1").unwrap().get("master").is_none());
    assert!(ns.link("tap0").is_none());
    assert_eq!(vm_state(&c, "net1").await["running"], "NO");
    c.iohyve("delete", json!({"name": "net1"})).await.unwrap();

    // The free nic is: bridge made, nic and tap on it.
    c.iohyve("setup", json!({"pool": "tank", "nic": "nic0"}))
        .await
        .unwrap();
    guest_with_iso(&c, &data, "nic0", "net0", "hyve-test.iso").await;
    c.iohyve("install", json!({"name": "net0", "iso": "hyve-test.iso"}))
        .await
        .unwrap();
    let br = ns.link("hyvebr0").expect("the bridge was made");
    assert_eq!(br["linkinfo"]["info_kind"], "bridge");
    assert_eq!(ns.link("nic0").unwrap()["master"], "hyvebr0");
    let tap = c.iohyve("getprops", json!({"name": "net0"})).await.unwrap()["net0"]["tap"]
        .as_str()
        .unwrap()
        .to_string();
    let t = ns.link(&tap).expect("the guest's tap");
    assert_eq!(t["master"], "hyvebr0");
    assert_eq!(t["linkinfo"]["info_kind"], "tun");
    let mac = c.iohyve("getprops", json!({"name": "net0"})).await.unwrap()["net0"]["mac"]
        .as_str()
        .unwrap()
        .to_string();
    // The guest's card has the stored MAC, and the guest answers on the bridge.
    wait_console(&c, "net0", &format!("HYVE-TEST-GUEST eth0 {mac}")).await;
    wait_console(&c, "net0", MARKER).await;
    let addr = format!("{}%hyvebr0", link_local(&mac));
    wait_for("the guest to answer a ping on the bridge", || async {
        let ok = Command::new("ping")
            .args(["-6", "-c", "1", "-W", "2", &addr])
            .output()
            .unwrap()
            .status
            .success();
        ok.then_some(())
    })
    .await;

    // Stop: the tap goes, the bridge and the nic stay.
    c.iohyve("stop", json!({"name": "net0"})).await.unwrap();
    wait_running(&c, "net0", "NO").await;
    wait_for("the tap to be removed", || async {
        ns.link(&tap).is_none().then_some(())
    })
    .await;
    assert_eq!(ns.link("nic0").unwrap()["master"], "hyvebr0");
    // The MAC is stable: the same at the next start.
    c.iohyve("install", json!({"name": "net0", "iso": "hyve-test.iso"}))
        .await
        .unwrap();
    let again = c.iohyve("getprops", json!({"name": "net0"})).await.unwrap()["net0"]["mac"].clone();
    assert_eq!(again, json!(mac));
    assert_eq!(ns.link(&tap).unwrap()["master"], "hyvebr0");
    c.iohyve("stop", json!({"name": "net0", "force": "true"}))
        .await
        .unwrap();
    wait_running(&c, "net0", "NO").await;
    wait_for("the tap to be removed", || async {
        ns.link(&tap).is_none().then_some(())
    })
    .await;
    drop(c);
    drop(server);
}
