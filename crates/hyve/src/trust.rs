//! What the CLI remembers per server, in `~/.config/hyve` (or
//! `$XDG_CONFIG_HOME/hyve`, or `$HYVE_CONFIG_DIR`), readable by its owner
//! only:
//!
//! - `known_servers`: one line per server, `host:port SHA256:…`, the
//!   fingerprint of the certificate it showed the first time, like ssh's
//!   `known_hosts` (new servers are accepted and remembered, as ssh's
//!   `StrictHostKeyChecking=accept-new`; a changed certificate is refused).
//! - `tokens/<host_port>`: the login token for that server.

use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;

use hyve_client::{fingerprint_text, parse_fingerprint, Fingerprint};
use hyve_engine::fsutil;

/// `host:port` of a `ws://` or `wss://` URL (default port 12150), the key
/// everything is remembered under.
pub fn server_key(url: &str) -> Result<String, String> {
    let rest = url
        .strip_prefix("wss://")
        .or_else(|| url.strip_prefix("ws://"))
        .ok_or_else(|| format!("{url:?} is not a server URL: use wss://host:port (or ws:// for a server run with --no-tls)"))?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let authority = authority.rsplit('@').next().unwrap_or("");
    if authority.is_empty() {
        return Err(format!("{url:?} names no host"));
    }
    let has_port = if authority.starts_with('[') {
        authority.contains("]:")
    } else {
        authority.contains(':')
    };
    let key = if has_port {
        authority.to_string()
    } else {
        format!("{authority}:12150")
    };
    if key.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("{url:?} is not a server URL"));
    }
    Ok(key.to_ascii_lowercase())
}

pub struct State {
    dir: PathBuf,
}

impl State {
    /// The CLI's folder, made (0700) if missing.
    pub fn open() -> Result<State, String> {
        let dir = if let Some(d) = std::env::var_os("HYVE_CONFIG_DIR").filter(|d| !d.is_empty()) {
            PathBuf::from(d)
        } else if let Some(d) = std::env::var_os("XDG_CONFIG_HOME").filter(|d| !d.is_empty()) {
            PathBuf::from(d).join("hyve")
        } else if let Some(h) = std::env::var_os("HOME").filter(|h| !h.is_empty()) {
            PathBuf::from(h).join(".config/hyve")
        } else {
            return Err("cannot tell where to keep logins: set HOME or HYVE_CONFIG_DIR".into());
        };
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir.join("tokens"))
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        Ok(State { dir })
    }

    pub fn known_servers_path(&self) -> PathBuf {
        self.dir.join("known_servers")
    }

    fn lines(&self) -> Result<Vec<String>, String> {
        let p = self.known_servers_path();
        match fs::read_to_string(&p) {
            Ok(t) => Ok(t.lines().map(str::to_string).collect()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(format!("cannot read {}: {e}", p.display())),
        }
    }

    /// The fingerprint remembered for `key`.
    pub fn known(&self, key: &str) -> Result<Option<Fingerprint>, String> {
        for line in self.lines()? {
            let mut it = line.split_whitespace();
            if it.next() == Some(key) {
                return match it.next().and_then(parse_fingerprint) {
                    Some(fp) => Ok(Some(fp)),
                    None => Err(format!(
                        "the line for {key} in {} is damaged: remove it",
                        self.known_servers_path().display()
                    )),
                };
            }
        }
        Ok(None)
    }

    /// Remembers `fp` for `key` (a new server).
    pub fn remember(&self, key: &str, fp: &Fingerprint) -> Result<(), String> {
        let mut lines = self.lines()?;
        lines.retain(|l| l.split_whitespace().next() != Some(key));
        lines.push(format!("{key} {}", fingerprint_text(fp)));
        let p = self.known_servers_path();
        fsutil::write_atomic_mode(&p, (lines.join("\n") + "\n").as_bytes(), 0o600)
            .map_err(|e| format!("cannot write {}: {e}", p.display()))
    }

    fn token_path(&self, key: &str) -> PathBuf {
        let name: String = key
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        self.dir.join("tokens").join(name)
    }

    pub fn token(&self, key: &str) -> Option<String> {
        let t = fs::read_to_string(self.token_path(key)).ok()?;
        let t = t.trim();
        (!t.is_empty()).then(|| t.to_string())
    }

    pub fn save_token(&self, key: &str, token: &str) -> Result<PathBuf, String> {
        let p = self.token_path(key);
        fsutil::write_atomic_mode(&p, format!("{token}\n").as_bytes(), 0o600)
            .map_err(|e| format!("cannot write {}: {e}", p.display()))?;
        Ok(p)
    }

    pub fn forget_token(&self, key: &str) {
        let _ = fs::remove_file(self.token_path(key));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_of_urls() {
        assert_eq!(
            server_key("wss://127.0.0.1:12150").unwrap(),
            "127.0.0.1:12150"
        );
        assert_eq!(
            server_key("wss://Host.example/").unwrap(),
            "host.example:12150"
        );
        assert_eq!(server_key("ws://[::1]:9/x").unwrap(), "[::1]:9");
        assert_eq!(server_key("wss://[::1]").unwrap(), "[::1]:12150");
        assert!(server_key("https://x").is_err());
        assert!(server_key("wss://").is_err());
    }
}
