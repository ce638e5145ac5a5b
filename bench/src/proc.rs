//! What the suite reads about processes: memory and CPU time from /proc,
//! and timed runs of commands.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// `VmRSS` and `VmHWM` of a process, in KiB.
pub fn memory_kib(pid: u32) -> Option<(u64, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |k: &str| {
        s.lines()
            .find_map(|l| l.strip_prefix(k))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// CPU time (user + system) a process has used so far.
pub fn cpu_time(pid: u32) -> Duration {
    let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return Duration::ZERO;
    };
    // Fields after the command (which may hold spaces) start at field 3.
    let rest = s.rsplit_once(") ").map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // utime and stime are fields 14 and 15, i.e. 11 and 12 after the state.
    let total = ticks(11) + ticks(12);
    let hz = rustix::param::clock_ticks_per_second().max(1);
    Duration::from_secs_f64(total as f64 / hz as f64)
}

/// Runs `cmd` to its end with no output kept, and times it (spawn to
/// exit); a failure is an error that names the command.
pub fn timed(cmd: &mut Command) -> anyhow::Result<Duration> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let t = Instant::now();
    let out = cmd
        .spawn()
        .with_context(|| format!("cannot run {:?}", cmd.get_program()))?
        .wait_with_output()?;
    let d = t.elapsed();
    succeeded(cmd, &out)?;
    Ok(d)
}

/// Runs `cmd` and returns its standard output; a failure is an error.
pub fn output(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {:?}", cmd.get_program()))?;
    succeeded(cmd, &out)?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Whether a program is on PATH.
pub fn have(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| Path::new(&d).join(program).is_file()))
}

/// Flushes every file system, so that one run's dirty pages are not
/// written back during the next one's timing.
pub fn sync_all() {
    rustix::fs::sync();
}

/// An error naming the command and its stderr unless it exited 0.
fn succeeded(cmd: &Command, out: &std::process::Output) -> anyhow::Result<()> {
    if !out.status.success() {
        bail!(
            "{:?} {:?} failed: {}",
            cmd.get_program(),
            cmd.get_args().collect::<Vec<_>>(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}
