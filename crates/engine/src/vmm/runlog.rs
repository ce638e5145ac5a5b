//! The per-guest log, `vm.log` in the guest's folder: each launch's command
//! line, when it started and ended and how, and in between whatever the
//! hypervisor itself wrote to stderr (it gets the same file). Kept to about
//! 1 MiB: past that, a start moves it to `vm.log.1`.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use tracing::warn;

const ROTATE_AT: u64 = 1 << 20;

pub struct RunLog {
    path: PathBuf,
}

/// An argument as a person would type it: quoted when it holds anything
/// but plain characters (for reading only; nothing ever runs it).
fn shown(arg: &OsString) -> String {
    let s = arg.to_string_lossy();
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_=,.:/+@".contains(&b))
    {
        s.into_owned()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

pub fn now() -> String {
    chrono::Utc::now()
        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string()
}

impl RunLog {
    pub fn new(path: PathBuf) -> RunLog {
        RunLog { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn open(&self) -> std::io::Result<File> {
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
    }

    /// Appends one line, with the time. Failures are logged, not fatal: a
    /// full disk must not stop a guest from being stopped.
    pub fn line(&self, text: &str) {
        let r = self
            .open()
            .and_then(|mut f| writeln!(f, "{} {text}", now()));
        if let Err(e) = r {
            warn!(log = %self.path.display(), error = %e, "cannot write the guest's log");
        }
    }

    /// Records a launch and returns the file the hypervisor's stdout and
    /// stderr go to, with the length it had before (its messages start
    /// there).
    pub fn launch(&self, what: &str, argv: &[OsString]) -> std::io::Result<(File, u64)> {
        if std::fs::metadata(&self.path).map(|m| m.len()).unwrap_or(0) > ROTATE_AT {
            let _ = std::fs::rename(&self.path, self.path.with_extension("log.1"));
        }
        let cmd: Vec<String> = argv.iter().map(shown).collect();
        self.line(&format!("{what}: {}", cmd.join(" ")));
        let f = self.open()?;
        let at = f.metadata()?.len();
        Ok((f, at))
    }

    /// What the hypervisor wrote since offset `from`, last lines first cut
    /// to a sentence's worth (for an error reply).
    pub fn since(&self, from: u64) -> String {
        let text = std::fs::read(&self.path).unwrap_or_default();
        let text = String::from_utf8_lossy(text.get(from as usize..).unwrap_or_default());
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        let start = lines.len().saturating_sub(3);
        lines[start..].join(" / ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn launches_and_lines() {
        let d = tempfile::tempdir().unwrap();
        let log = RunLog::new(d.path().join("vm.log"));
        let argv: Vec<OsString> = ["qemu", "-name", "guest=a b"]
            .iter()
            .map(OsString::from)
            .collect();
        let (mut f, at) = log.launch("start", &argv).unwrap();
        writeln!(f, "qemu: could not open disk").unwrap();
        assert_eq!(log.since(at), "qemu: could not open disk");
        log.line("exited with status 1");
        let text = std::fs::read_to_string(log.path()).unwrap();
        assert!(text.contains("start: qemu -name 'guest=a b'\n"), "{text}");
        assert!(text.ends_with(" exited with status 1\n"));
    }
}
