//! Guest properties: the fixed list, iohyve 0.7.3's defaults, and the check
//! each settable property's value must pass.
//!
//! The list is closed on purpose: the original `setprop` accepted any name,
//! including ones that chose the hypervisor binary. Here nothing names a
//! binary, and the one property that holds hypervisor flags (`bargs`) only
//! takes flags from a short list.

use std::collections::BTreeMap;

use crate::validate::{self, quote, Limits};

/// Properties of a guest, name to value; every value is a string.
pub type Props = BTreeMap<String, String>;

/// Loaders a guest may name.
pub const LOADERS: [&str; 3] = ["bhyveload", "grub-bhyve", "uefi"];

/// Guest OS kinds iohyve knows (they pick grub-bhyve's boot recipe).
pub const OSES: [&str; 14] = [
    "default",
    "freebsd",
    "openbsd",
    "openbsd57",
    "openbsd58",
    "openbsd59",
    "openbsd60",
    "netbsd",
    "debian",
    "d8lvm",
    "centos6",
    "centos7",
    "arch",
    "custom",
];

/// bhyve flags `bargs` may hold, separated by `_` as iohyve writes them.
pub const BHYVE_FLAGS: [&str; 7] = ["-A", "-H", "-P", "-w", "-u", "-S", "-W"];

/// How a property may be changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Set by the server (name, size, install); `setprop` refuses it.
    ReadOnly,
    /// Any valid value.
    Settable,
    /// Settable, but no two guests may share a value (tap, con, mac).
    Unique,
}

/// Every property a guest has, with how it may be set.
pub const PROPERTIES: [(&str, Access); 15] = [
    ("autogrub", Access::Settable),
    ("bargs", Access::Settable),
    ("boot", Access::Settable),
    ("con", Access::Unique),
    ("cpu", Access::Settable),
    ("description", Access::Settable),
    ("install", Access::ReadOnly),
    ("loader", Access::Settable),
    ("mac", Access::Unique),
    ("name", Access::ReadOnly),
    ("os", Access::Settable),
    ("persist", Access::Settable),
    ("ram", Access::Settable),
    ("size", Access::ReadOnly),
    ("tap", Access::Unique),
];

pub fn access(prop: &str) -> Option<Access> {
    PROPERTIES.iter().find(|(p, _)| *p == prop).map(|(_, a)| *a)
}

fn settable_list() -> String {
    PROPERTIES
        .iter()
        .filter(|(_, a)| *a != Access::ReadOnly)
        .map(|(p, _)| *p)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The default properties of a new guest (iohyve 0.7.3's `create`).
pub fn defaults(name: &str, size: &str, tap: u32, con: u32, created: &str) -> Props {
    let mut p = Props::new();
    for (k, v) in [
        ("name", name),
        ("size", size),
        ("ram", "256M"),
        ("cpu", "1"),
        ("persist", "1"),
        ("boot", "0"),
        ("loader", "bhyveload"),
        ("os", "default"),
        ("bargs", "-A_-H_-P"),
        ("autogrub", "\\n"),
        ("install", "no"),
        ("description", created),
    ] {
        p.insert(k.into(), v.into());
    }
    p.insert("tap".into(), format!("tap{tap}"));
    p.insert("con".into(), format!("nmdm{con}"));
    p
}

/// The number in a `tapN` / `nmdmN` value.
pub fn device_number(value: &str, prefix: &str) -> Option<u32> {
    value
        .strip_prefix(prefix)
        .filter(|n| !n.is_empty() && n.len() <= 4 && n.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|n| n.parse().ok())
}

fn one_of(prop: &str, value: &str, allowed: &[&str]) -> Result<String, String> {
    if allowed.contains(&value) {
        Ok(value.to_string())
    } else {
        Err(format!(
            "invalid {prop} {}: expected one of {}",
            quote(value),
            allowed.join(", ")
        ))
    }
}

/// Checks a value for `setprop` and returns it as it will be stored.
pub fn check(prop: &str, value: &str, limits: &Limits) -> Result<String, String> {
    match access(prop) {
        None => {
            return Err(format!(
                "unknown property {}: settable properties are {}",
                quote(prop),
                settable_list()
            ))
        }
        Some(Access::ReadOnly) => {
            return Err(format!(
                "property '{prop}' cannot be set{}",
                match prop {
                    "size" => ": use resizedisk to grow disk0",
                    "install" => ": it is managed by install and start",
                    _ => "",
                }
            ))
        }
        _ => {}
    }
    match prop {
        "ram" => validate::ram_size(value, limits).map(|s| s.text().to_string()),
        "cpu" => {
            let n: u32 = value
                .parse()
                .ok()
                .filter(|_| value.len() <= 4 && value.bytes().all(|b| b.is_ascii_digit()))
                .ok_or_else(|| format!("invalid cpu {}: expected a whole number", quote(value)))?;
            if n == 0 || n > limits.max_cpus {
                return Err(format!(
                    "invalid cpu {}: expected 1 to {}",
                    quote(value),
                    limits.max_cpus
                ));
            }
            Ok(n.to_string())
        }
        "boot" | "persist" => one_of(prop, value, &["0", "1"]),
        "loader" => one_of(prop, value, &LOADERS),
        "os" => one_of(prop, value, &OSES),
        "description" => {
            validate::printable_text("the description", value, 256).map(|_| value.to_string())
        }
        "autogrub" => {
            if value.len() > 512 || !value.bytes().all(|b| (0x20..0x7f).contains(&b)) {
                return Err(format!(
                    "invalid autogrub {}: printable ASCII only, at most 512 characters",
                    quote(value)
                ));
            }
            Ok(value.to_string())
        }
        "bargs" => {
            if value.is_empty() {
                return Ok(String::new());
            }
            for flag in value.split('_') {
                if !BHYVE_FLAGS.contains(&flag) {
                    return Err(format!(
                        "invalid bargs {}: flags are separated by '_' and may only be {}",
                        quote(value),
                        BHYVE_FLAGS.join(" ")
                    ));
                }
            }
            Ok(value.to_string())
        }
        "tap" => device_number(value, "tap")
            .map(|n| format!("tap{n}"))
            .ok_or_else(|| format!("invalid tap {}: expected tapN, such as tap0", quote(value))),
        "con" => device_number(value, "nmdm")
            .map(|n| format!("nmdm{n}"))
            .ok_or_else(|| {
                format!(
                    "invalid con {}: expected nmdmN, such as nmdm0",
                    quote(value)
                )
            }),
        "mac" => mac(value),
        _ => unreachable!("every settable property has a check"),
    }
}

/// A fresh MAC address in QEMU's locally administered range 52:54:00,
/// from a random source.
pub fn random_mac() -> String {
    let b = uuid::Uuid::new_v4().into_bytes();
    format!("52:54:00:{:02x}:{:02x}:{:02x}", b[0], b[1], b[2])
}

/// A unicast Ethernet address, stored in lower case with colons.
pub fn mac(value: &str) -> Result<String, String> {
    let bad = || {
        format!(
            "invalid mac {}: expected six hex pairs such as 52:54:00:12:34:56, unicast",
            quote(value)
        )
    };
    let parts: Vec<&str> = value.split(':').collect();
    if parts.len() != 6 || parts.iter().any(|p| p.len() != 2) {
        return Err(bad());
    }
    let bytes: Vec<u8> = parts
        .iter()
        .map(|p| u8::from_str_radix(p, 16))
        .collect::<Result<_, _>>()
        .map_err(|_| bad())?;
    if bytes[0] & 1 == 1 || bytes.iter().all(|b| *b == 0) {
        return Err(bad());
    }
    Ok(value.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(p: &str, v: &str) -> String {
        check(p, v, &Limits::default()).unwrap()
    }
    fn bad(p: &str, v: &str) -> String {
        check(p, v, &Limits::default()).unwrap_err()
    }

    #[test]
    fn defaults_match_iohyve() {
        let p = defaults("bsdguest", "10G", 0, 0, "Tue");
        assert_eq!(p["tap"], "tap0");
        assert_eq!(p["con"], "nmdm0");
        assert_eq!(p["autogrub"], "\\n");
        assert_eq!(p["bargs"], "-A_-H_-P");
        assert_eq!(p.len(), 14);
    }

    #[test]
    fn values_are_checked_and_normalized() {
        assert_eq!(ok("ram", "512m"), "512M");
        assert_eq!(ok("cpu", "02"), "2");
        assert_eq!(ok("tap", "tap7"), "tap7");
        assert_eq!(ok("bargs", "-A_-H_-P_-w"), "-A_-H_-P_-w");
        assert_eq!(ok("mac", "52:54:00:AB:cd:01"), "52:54:00:ab:cd:01");
        let m = random_mac();
        assert_eq!(mac(&m), Ok(m.clone()));
        assert!(m.starts_with("52:54:00:"));
        assert_eq!(
            ok("description", "web server, rack 4"),
            "web server, rack 4"
        );
    }

    #[test]
    fn refusals() {
        assert!(bad("bhyve", "/bin/sh").starts_with("unknown property 'bhyve'"));
        assert!(bad("name", "x").contains("cannot be set"));
        assert!(bad("size", "20G").contains("resizedisk"));
        for (p, v) in [
            ("ram", "lots"),
            ("cpu", "0"),
            ("cpu", "-1"),
            ("cpu", "1000"),
            ("boot", "yes"),
            ("persist", "2"),
            ("loader", "/usr/sbin/bhyve"),
            ("os", "$(id)"),
            ("bargs", "-s_0,virtio-blk,/etc/shadow"),
            ("description", "a\nb"),
            ("autogrub", "é"),
            ("tap", "eth0"),
            ("con", "nmdm"),
            ("mac", "01:00:00:00:00:01"),
            ("mac", "zz:00:00:00:00:01"),
        ] {
            bad(p, v);
        }
    }
}
