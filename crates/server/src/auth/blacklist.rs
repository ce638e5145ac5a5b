//! Refusing an address after too many failed logins: `max_failures` within
//! `failure_window` block it for `block` (5, 10 min and 60 min by default).
//!
//! Blocks are written to `<data_dir>/hyve/blacklist.toml`, so restarting the
//! server does not let an attacker start over; failures short of a block are
//! kept in memory only. A successful login clears the address's failures.
//! To lift a block early, stop the server, remove its line, start again.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

use hyve_engine::fsutil;

pub const BLACKLIST_FILE: &str = "blacklist.toml";

/// At most this many addresses with failures short of a block are
/// remembered; past it the oldest are forgotten, so a flood of addresses
/// cannot eat the server's memory.
const MAX_TRACKED: usize = 10_000;

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct BlacklistFile {
    /// Address to the end of its block (RFC 3339, UTC).
    #[serde(default)]
    blocked: BTreeMap<String, String>,
}

struct State {
    failures: HashMap<IpAddr, VecDeque<SystemTime>>,
    blocked: BTreeMap<IpAddr, SystemTime>,
}

pub struct Blacklist {
    path: PathBuf,
    max_failures: usize,
    window: Duration,
    block: Duration,
    state: Mutex<State>,
}

/// The same address, however it reached us (`::ffff:10.0.0.1` is 10.0.0.1).
fn canonical(ip: IpAddr) -> IpAddr {
    ip.to_canonical()
}

pub fn utc_text(t: SystemTime) -> String {
    DateTime::<Utc>::from(t).to_rfc3339_opts(SecondsFormat::Secs, true)
}

impl Blacklist {
    /// Reads the blocks kept in `state_dir`; expired ones are dropped.
    pub fn open(
        state_dir: &Path,
        max_failures: u32,
        window: Duration,
        block: Duration,
    ) -> anyhow::Result<Blacklist> {
        let path = state_dir.join(BLACKLIST_FILE);
        let file: BlacklistFile = match std::fs::read_to_string(&path) {
            Ok(t) => {
                toml::from_str(&t).with_context(|| format!("{} is damaged", path.display()))?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BlacklistFile::default(),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        let now = SystemTime::now();
        let mut blocked = BTreeMap::new();
        for (addr, until) in file.blocked {
            let ip: IpAddr = addr
                .parse()
                .with_context(|| format!("{}: {addr:?} is not an address", path.display()))?;
            let until: SystemTime = DateTime::parse_from_rfc3339(&until)
                .with_context(|| format!("{}: {until:?} is not a time", path.display()))?
                .with_timezone(&Utc)
                .into();
            if until > now {
                blocked.insert(canonical(ip), until);
            }
        }
        Ok(Blacklist {
            path,
            max_failures: max_failures as usize,
            window,
            block,
            state: Mutex::new(State {
                failures: HashMap::new(),
                blocked,
            }),
        })
    }

    /// `Err(until)` while `ip` is blocked.
    pub fn check(&self, ip: IpAddr) -> Result<(), SystemTime> {
        self.check_at(ip, SystemTime::now())
    }

    fn check_at(&self, ip: IpAddr, now: SystemTime) -> Result<(), SystemTime> {
        let st = self.state.lock().unwrap();
        match st.blocked.get(&canonical(ip)) {
            Some(&until) if until > now => Err(until),
            _ => Ok(()),
        }
    }

    /// Counts a failed login; returns the end of the block it started, if
    /// it was the one too many.
    pub fn fail(&self, ip: IpAddr) -> Option<SystemTime> {
        self.fail_at(ip, SystemTime::now())
    }

    fn fail_at(&self, ip: IpAddr, now: SystemTime) -> Option<SystemTime> {
        let ip = canonical(ip);
        let mut st = self.state.lock().unwrap();
        let window = self.window;
        let recent = |t: &SystemTime| now.duration_since(*t).map_or(true, |age| age < window);
        if st.failures.len() >= MAX_TRACKED && !st.failures.contains_key(&ip) {
            st.failures.retain(|_, q| q.back().is_some_and(recent));
            if st.failures.len() >= MAX_TRACKED {
                let oldest = st
                    .failures
                    .iter()
                    .min_by_key(|(_, q)| q.back().copied())
                    .map(|(ip, _)| *ip);
                if let Some(o) = oldest {
                    st.failures.remove(&o);
                }
            }
        }
        let q = st.failures.entry(ip).or_default();
        q.retain(recent);
        q.push_back(now);
        if q.len() < self.max_failures {
            return None;
        }
        st.failures.remove(&ip);
        let until = now + self.block;
        st.blocked.insert(ip, until);
        st.blocked.retain(|_, u| *u > now);
        let file = BlacklistFile {
            blocked: st
                .blocked
                .iter()
                .map(|(ip, u)| (ip.to_string(), utc_text(*u)))
                .collect(),
        };
        drop(st);
        let text = format!(
            "# Addresses refused after too many failed logins, until the time shown (UTC).\n\
             # To lift a block early: stop the server, remove the line, start it again.\n\n{}",
            toml::to_string(&file).expect("the blacklist always serializes")
        );
        if let Err(e) = fsutil::write_atomic_mode(&self.path, text.as_bytes(), 0o600) {
            tracing::error!(path = %self.path.display(), error = %e, "cannot save the blacklist; the block holds until the server stops");
        }
        Some(until)
    }

    /// A successful login: the address's failures are forgiven.
    pub fn succeed(&self, ip: IpAddr) {
        self.state.lock().unwrap().failures.remove(&canonical(ip));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(dir: &Path) -> Blacklist {
        Blacklist::open(dir, 5, Duration::from_secs(600), Duration::from_secs(3600)).unwrap()
    }

    #[test]
    fn five_failures_in_ten_minutes_block_for_an_hour_across_restarts() {
        let d = tempfile::tempdir().unwrap();
        let b = open(d.path());
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        let other: IpAddr = "192.0.2.8".parse().unwrap();
        let t0 = SystemTime::now();
        for i in 0..4 {
            assert_eq!(b.fail_at(ip, t0 + Duration::from_secs(i * 60)), None);
        }
        assert!(b.check_at(ip, t0).is_ok());
        let until = b.fail_at(ip, t0 + Duration::from_secs(300)).expect("5th");
        assert_eq!(until, t0 + Duration::from_secs(300 + 3600));
        assert_eq!(b.check_at(ip, t0 + Duration::from_secs(301)), Err(until));
        assert!(b.check_at(other, t0).is_ok(), "only that address");
        // The v4-mapped form of the address is the same address.
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert!(b.check_at(mapped, t0 + Duration::from_secs(301)).is_err());
        assert!(b.check_at(ip, until + Duration::from_secs(1)).is_ok());

        let again = open(d.path());
        assert!(again.check(ip).is_err(), "the block survives a restart");
        let text = std::fs::read_to_string(d.path().join(BLACKLIST_FILE)).unwrap();
        assert!(text.contains("\"192.0.2.7\""), "{text}");
    }

    #[test]
    fn old_failures_and_successes_do_not_count() {
        let d = tempfile::tempdir().unwrap();
        let b = open(d.path());
        let ip: IpAddr = "2001:db8::1".parse().unwrap();
        let t0 = SystemTime::now();
        for i in 0..4 {
            b.fail_at(ip, t0 + Duration::from_secs(i));
        }
        // Eleven minutes later the first four are outside the window.
        assert_eq!(b.fail_at(ip, t0 + Duration::from_secs(660)), None);
        for i in 0..3 {
            b.fail_at(ip, t0 + Duration::from_secs(661 + i));
        }
        b.succeed(ip);
        assert_eq!(b.fail_at(ip, t0 + Duration::from_secs(670)), None);
        assert!(b.check_at(ip, t0 + Duration::from_secs(670)).is_ok());
        assert!(!d.path().join(BLACKLIST_FILE).exists());
    }

    #[test]
    fn a_damaged_file_stops_the_start() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join(BLACKLIST_FILE), "[blocked]\nx = \"y\"\n").unwrap();
        let e = Blacklist::open(d.path(), 5, Duration::from_secs(1), Duration::from_secs(1));
        assert!(e.is_err());
    }
}
