//! Measurement 3: start latency, from the request to QMP reporting the
//! guest running.
//!
//! - hyve: the `start` request on a logged-in connection until its reply;
//!   the server answers only after QEMU's QMP `query-status` said running.
//! - raw QEMU: the very command line hyve ran (read back from the guest's
//!   `vm.log`), spawned by hand in a folder of its own; timed until its QMP
//!   socket answers `query-status` with running (polled every millisecond).
//! - libvirt: `virsh start` on a domain of the same shape (same image,
//!   RAM, vCPUs, disk and NIC models), as a process; virsh returns once the
//!   domain runs.
//!
//! Every run powers the guest off again (untimed) before the next; the
//! three are interleaved, and a first untimed start of each warms caches.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use serde_json::json;

use crate::hyve::Hyve;
use crate::libvirt;
use crate::stats::Dist;

pub const GUEST: &str = "startbench";
pub const DOMAIN: &str = "hyvebench-start";

/// Undoes the quoting of `vm.log`'s command line: words split on spaces,
/// `'…'` quoted with `'\''` for a quote.
fn unquote(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\'' if quoted => quoted = false,
            '\'' => {
                quoted = true;
                in_word = true;
            }
            '\\' if !quoted && chars.peek() == Some(&'\'') => {
                cur.push('\'');
                chars.next();
            }
            ' ' if !quoted => {
                if in_word {
                    out.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            c => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        out.push(cur);
    }
    out
}

/// The command line of the guest's last start, from its `vm.log`.
pub fn last_command(guest_dir: &Path) -> anyhow::Result<Vec<String>> {
    let log = std::fs::read_to_string(guest_dir.join("vm.log"))?;
    let line = log
        .lines()
        .rev()
        .find_map(|l| l.split_once(" start: ").map(|(_, r)| r.to_string()))
        .ok_or_else(|| anyhow!("no start line in vm.log"))?;
    Ok(unquote(&line))
}

/// The QMP socket path named in a QEMU command line.
fn qmp_path(argv: &[String]) -> anyhow::Result<String> {
    argv.iter()
        .filter(|a| a.contains("id=qmp"))
        .flat_map(|a| a.split(','))
        .find_map(|o| o.strip_prefix("path=").map(str::to_string))
        .ok_or_else(|| anyhow!("no QMP socket in the command line"))
}

struct QmpConn {
    r: BufReader<UnixStream>,
    w: UnixStream,
}

impl QmpConn {
    /// Reads lines until one holds `return` (events are skipped).
    fn reply(&mut self) -> anyhow::Result<serde_json::Value> {
        loop {
            let mut line = String::new();
            if self.r.read_line(&mut line)? == 0 {
                bail!("QMP closed");
            }
            let v: serde_json::Value = serde_json::from_str(&line)?;
            if v.get("return").is_some() || v.get("error").is_some() {
                return Ok(v);
            }
        }
    }

    fn exec(&mut self, cmd: &str) -> anyhow::Result<serde_json::Value> {
        writeln!(self.w, "{}", json!({ "execute": cmd }))?;
        self.reply()
    }
}

/// Spawns `argv` in `dir` and returns once QMP says the guest runs, with
/// the time that took and the QMP connection.
fn raw_start(
    argv: &[String],
    dir: &Path,
) -> anyhow::Result<(Duration, std::process::Child, QmpConn)> {
    let run = dir.join("run");
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(&run)?;
    let sock = run.join(qmp_path(argv)?);
    let t = Instant::now();
    let mut child = Command::new(&argv[0])
        .args(&argv[1..])
        .current_dir(&run)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("cannot run qemu-system-x86_64")?;
    let stream = loop {
        match UnixStream::connect(&sock) {
            Ok(s) => break s,
            Err(_) => {
                if let Some(st) = child.try_wait()? {
                    bail!("raw QEMU exited {st} before QMP answered");
                }
                if t.elapsed() > Duration::from_secs(60) {
                    let _ = child.kill();
                    bail!("raw QEMU's QMP never answered");
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    };
    let mut q = QmpConn {
        r: BufReader::new(stream.try_clone()?),
        w: stream,
    };
    let mut greeting = String::new();
    q.r.read_line(&mut greeting)?;
    q.exec("qmp_capabilities")?;
    loop {
        let s = q.exec("query-status")?;
        if s["return"]["running"] == true {
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok((t.elapsed(), child, q))
}

fn raw_stop(mut child: std::process::Child, mut q: QmpConn) -> anyhow::Result<()> {
    let _ = q.exec("quit");
    child.wait()?;
    Ok(())
}

/// Powers hyve's guest off and waits until listvms shows it gone.
async fn hyve_stop(c: &hyve_client::Client) -> anyhow::Result<()> {
    c.iohyve("stop", json!({"name": GUEST, "force": "true"}))
        .await?;
    let t = Instant::now();
    loop {
        let l = c.iohyve("listvms", json!({})).await?;
        if l[GUEST]["vmm"] == "NO" {
            return Ok(());
        }
        if t.elapsed() > Duration::from_secs(60) {
            bail!("the guest did not stop");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub struct Starts {
    pub hyve: Dist,
    pub raw: Dist,
    pub virsh: Dist,
}

/// Sets up the guest (a 64M disk0 holding the test image, hyve's default
/// 256M of RAM and one vCPU) and its libvirt twin, then measures `runs`
/// starts of each.
pub async fn run(h: &Hyve, iso: &Path, work: &Path, runs: usize) -> anyhow::Result<Starts> {
    let c = h.client().await?;
    c.iohyve("create", json!({"name": GUEST, "size": "64M"}))
        .await?;
    let props = c.iohyve("getprops", json!({"name": GUEST})).await?;
    let ram = props[GUEST]["ram"].as_str().unwrap_or("256M").to_string();
    let cpus: u32 = props[GUEST]["cpu"].as_str().unwrap_or("1").parse()?;
    let ram_mib: u64 = ram.trim_end_matches('M').parse().context("ram in MiB")?;
    let image = std::fs::read(iso)?;
    let disk0 = h.guest_dir(GUEST).join("disk0.img");
    write_into(&disk0, &image)?;
    // libvirt's twin: a copy of the same 64M image.
    let lv_disk = work.join("start-libvirt.img");
    std::fs::copy(&disk0, &lv_disk)?;
    let xml = work.join("start-libvirt.xml");
    std::fs::write(&xml, libvirt::domain_xml(DOMAIN, &lv_disk, ram_mib, cpus))?;
    crate::proc::output(libvirt::virsh().arg("define").arg(&xml))?;
    let raw_dir: PathBuf = work.join("raw");

    let mut s = Starts {
        hyve: Dist::default(),
        raw: Dist::default(),
        virsh: Dist::default(),
    };
    for i in 0..=runs {
        let keep = i > 0;
        // hyve
        let t = Instant::now();
        c.iohyve("start", json!({ "name": GUEST })).await?;
        let d = t.elapsed();
        hyve_stop(&c).await?;
        if keep {
            s.hyve.record(d);
        }
        // raw QEMU, with hyve's own command line
        let argv = last_command(&h.guest_dir(GUEST))?;
        let (d, child, q) = tokio::task::block_in_place(|| raw_start(&argv, &raw_dir))?;
        raw_stop(child, q)?;
        if keep {
            s.raw.record(d);
        }
        // libvirt
        let d = crate::proc::timed(libvirt::virsh().args(["start", DOMAIN]))?;
        crate::proc::output(libvirt::virsh().args(["destroy", DOMAIN]))?;
        if keep {
            s.virsh.record(d);
        }
    }
    crate::proc::output(libvirt::virsh().args(["undefine", DOMAIN]))?;
    let _ = std::fs::remove_file(&lv_disk);
    Ok(s)
}

/// Writes `data` at the start of `path`, keeping its size.
fn write_into(path: &Path, data: &[u8]) -> anyhow::Result<()> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(path)?;
    f.write_all_at(data, 0)?;
    f.sync_all()?;
    Ok(())
}
