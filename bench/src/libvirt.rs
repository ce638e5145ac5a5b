//! The libvirt peer: its daemons, domains of the same shape as hyve's
//! guests, and `virsh` run as a person or a script runs it.
//!
//! Every domain the suite makes is named `hyvebench-…` and undefined again.
//! Many domains are defined through one `virsh` session reading its
//! commands from standard input (one process, one connection to libvirtd,
//! every define a real `virDomainDefineXML` call), which is how a script
//! defining thousands of domains would do it; one `virsh define` process
//! per domain is measured separately (measurement 4).

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

pub const URI: &str = "qemu:///system";
pub const PREFIX: &str = "hyvebench-";

/// `virsh -c qemu:///system -q …`
pub fn virsh() -> Command {
    let mut c = Command::new("virsh");
    c.args(["-c", URI, "-q"]);
    c
}

fn answers() -> bool {
    virsh()
        .arg("version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Makes sure libvirtd (and virtlogd) run; starts them by hand when they
/// do not (no init system). Returns whether this call started them.
pub fn ensure_running() -> anyhow::Result<bool> {
    if answers() {
        return Ok(false);
    }
    for d in ["virtlogd", "libvirtd"] {
        let ok = Command::new(d)
            .arg("-d")
            .status()
            .with_context(|| format!("cannot run {d}"))?
            .success();
        if !ok {
            bail!("{d} -d failed");
        }
    }
    let t = Instant::now();
    while !answers() {
        if t.elapsed() > Duration::from_secs(30) {
            bail!("libvirtd does not answer on {URI}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(true)
}

/// libvirtd's pid, from its pidfile.
pub fn libvirtd_pid() -> Option<u32> {
    std::fs::read_to_string("/run/libvirtd.pid")
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Runs `lines` as commands of one `virsh` session; returns its time.
pub fn session(lines: &[String]) -> anyhow::Result<Duration> {
    let t = Instant::now();
    let mut child = virsh()
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot run virsh")?;
    {
        let mut stdin = child.stdin.take().expect("piped");
        let mut text = lines.join("\n");
        text.push('\n');
        stdin.write_all(text.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    let d = t.elapsed();
    let err = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() || err.contains("error:") {
        bail!("virsh session failed: {}", err.trim());
    }
    Ok(d)
}

/// The names of every domain (defined or running).
pub fn domains() -> anyhow::Result<Vec<String>> {
    let out = crate::proc::output(virsh().args(["list", "--all", "--name"]))?;
    Ok(out
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect())
}

/// Destroys and undefines every `hyvebench-` domain.
pub fn cleanup() -> anyhow::Result<()> {
    let ours: Vec<String> = domains()?
        .into_iter()
        .filter(|d| d.starts_with(PREFIX))
        .collect();
    if ours.is_empty() {
        return Ok(());
    }
    let running = crate::proc::output(virsh().args(["list", "--name"]))?;
    let mut lines: Vec<String> = running
        .lines()
        .map(str::trim)
        .filter(|d| d.starts_with(PREFIX))
        .map(|d| format!("destroy {d}"))
        .collect();
    lines.extend(ours.iter().map(|d| format!("undefine {d}")));
    // A destroy of a domain that stopped meanwhile is not worth failing on.
    let _ = session(&lines);
    let left = domains()?
        .into_iter()
        .filter(|d| d.starts_with(PREFIX))
        .count();
    if left > 0 {
        bail!("{left} {PREFIX} domains could not be undefined");
    }
    Ok(())
}

/// A TCG domain of a hyve guest's shape: q35, `ram_mib`, `cpus`, one raw
/// virtio disk, a virtio NIC on user-mode networking, one serial port, no
/// graphics, no USB controller, no balloon.
pub fn domain_xml(name: &str, disk: &Path, ram_mib: u64, cpus: u32) -> String {
    format!(
        "<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>{ram_mib}</memory>
  <vcpu>{cpus}</vcpu>
  <os><type arch='x86_64' machine='q35'>hvm</type><boot dev='hd'/></os>
  <features><acpi/></features>
  <on_poweroff>destroy</on_poweroff>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='{}'/><target dev='vda' bus='virtio'/></disk>
    <interface type='user'><model type='virtio'/></interface>
    <serial type='pty'/>
    <controller type='usb' model='none'/>
    <memballoon model='none'/>
  </devices>
</domain>
",
        disk.display()
    )
}
