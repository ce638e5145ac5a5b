//! What `/proc` says about a process: is it alive, where does it run, what
//! was it started with. Used to prove a pid is really a guest's hypervisor
//! before adopting or signalling it (pids are reused).

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

/// A live (not zombie) process's working folder and argument vector.
#[derive(Debug, Clone)]
pub struct ProcInfo {
    pub pid: i32,
    pub cwd: PathBuf,
    pub argv: Vec<OsString>,
}

/// Reads `/proc/<pid>`; `None` when the process is gone, a zombie, or not
/// readable.
pub fn read(pid: i32) -> Option<ProcInfo> {
    if pid <= 0 {
        return None;
    }
    let base = PathBuf::from(format!("/proc/{pid}"));
    let stat = std::fs::read_to_string(base.join("stat")).ok()?;
    // The state follows the command name, which is in parentheses and may
    // itself contain ") ".
    let state = stat.rsplit_once(") ")?.1.chars().next()?;
    if state == 'Z' || state == 'X' {
        return None;
    }
    let cwd = std::fs::read_link(base.join("cwd")).ok()?;
    let raw = std::fs::read(base.join("cmdline")).ok()?;
    let argv = raw
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| OsString::from_vec(s.to_vec()))
        .collect();
    Some(ProcInfo { pid, cwd, argv })
}

/// The live processes whose working folder is `dir` (canonical). A guest's
/// hypervisor always runs in its run folder, so this finds it even when
/// its pidfile is not written yet or was lost: the pidfile is a shortcut,
/// never the only way to know a guest runs.
pub fn working_in(dir: &Path) -> Vec<ProcInfo> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|cwd| cwd == dir))
        .filter_map(read)
        .collect()
}

/// Reads a pidfile: a decimal pid and a newline.
pub fn read_pidfile(path: &Path) -> Option<i32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// The host's boot id: changes at every boot of the host.
pub fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let me = read(std::process::id() as i32).unwrap();
        assert_eq!(me.cwd, std::env::current_dir().unwrap());
        assert!(!me.argv.is_empty());
        assert!(read(0).is_none());
        assert!(read(i32::MAX).is_none());
    }

    #[test]
    fn finds_processes_by_working_folder() {
        let d = tempfile::tempdir().unwrap();
        let dir = std::fs::canonicalize(d.path()).unwrap();
        assert!(working_in(&dir).is_empty());
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .current_dir(&dir)
            .spawn()
            .unwrap();
        // Between fork and exec the child already works in `dir` but its
        // command line is not yet sleep's (or reads empty): wait for it.
        let mut found = working_in(&dir);
        for _ in 0..200 {
            if found
                .first()
                .is_some_and(|p| p.argv.get(1).is_some_and(|a| a == "30"))
            {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
            found = working_in(&dir);
        }
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].pid, child.id() as i32);
        assert_eq!(found[0].argv[1], "30");
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(working_in(&dir).is_empty());
    }

    #[test]
    fn zombies_count_as_gone() {
        let child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id() as i32;
        // Not waited for: once it exits it stays a zombie until reaped.
        for _ in 0..500 {
            if read(pid).is_none() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(read(pid).is_none());
        drop(child);
    }
}
