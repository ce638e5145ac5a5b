//! Choosing QEMU's accelerator.
//!
//! `/dev/kvm` existing is not proof that KVM works: nested or sandboxed
//! hosts often expose it while KVM guests hang or abort. So `auto` runs a
//! probe: a guest whose whole firmware is a few bytes at the reset vector
//! that write to an `isa-debug-exit` port. Under working KVM QEMU exits at
//! once with the status that write asks for; anything else (no /dev/kvm,
//! an error, no exit within the timeout) means TCG, and the log says why.
//!
//! The probe proves KVM can run guest code at all; it cannot prove a full
//! operating system will run. Some nested hosts pass it and still hang
//! real kernels: `accel = "tcg"` is the setting for those.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;

/// The accelerator a guest runs under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

/// The config's choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccelChoice {
    Auto,
    Kvm,
    Tcg,
}

impl AccelChoice {
    pub fn parse(s: &str) -> Result<AccelChoice, String> {
        match s {
            "auto" => Ok(AccelChoice::Auto),
            "kvm" => Ok(AccelChoice::Kvm),
            "tcg" => Ok(AccelChoice::Tcg),
            other => Err(format!(
                "accel {:?} is not one of auto, kvm, tcg",
                crate::validate::quote(other)
            )),
        }
    }
}

/// The port the probe firmware writes to, and the byte it writes. QEMU
/// exits with `(byte << 1) | 1`.
const EXIT_PORT: u8 = 0xf4;
const EXIT_BYTE: u8 = 0x2a;
pub const PROBE_EXIT_STATUS: i32 = ((EXIT_BYTE as i32) << 1) | 1;

/// How long a working accelerator may take to run the probe. A real KVM
/// finishes in well under a second; the margin covers a loaded host.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(15);

/// The probe's firmware: 64 KiB (QEMU wants BIOS images in 64 KiB units)
/// whose last 16 bytes, at the x86 reset vector 0xFFFFFFF0, are:
/// `mov al, 0x2a; out 0xf4, al; hlt; jmp $-1`.
pub fn probe_firmware() -> Vec<u8> {
    let mut image = vec![0xf4u8; 64 * 1024]; // hlt everywhere else
    let code = [0xb0, EXIT_BYTE, 0xe6, EXIT_PORT, 0xf4, 0xeb, 0xfd];
    let at = image.len() - 16;
    image[at..at + code.len()].copy_from_slice(&code);
    image
}

/// Runs the probe guest under `accel`. `Ok` when QEMU ran the firmware to
/// its exit; otherwise the reason, for the log.
pub async fn probe(binary: &Path, accel: Accel, timeout: Duration) -> Result<(), String> {
    if accel == Accel::Kvm && !Path::new("/dev/kvm").exists() {
        return Err("/dev/kvm does not exist".into());
    }
    let dir = std::env::temp_dir().join(format!("hyve-probe-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let result = run_probe(binary, accel, timeout, &dir.join("probe.bin")).await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn run_probe(
    binary: &Path,
    accel: Accel,
    timeout: Duration,
    fw: &PathBuf,
) -> Result<(), String> {
    std::fs::write(fw, probe_firmware())
        .map_err(|e| format!("cannot write {}: {e}", fw.display()))?;
    let mut cmd = Command::new(binary);
    cmd.args([
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-machine",
        "pc",
    ])
    .args(["-accel", accel.as_str(), "-m", "16"])
    .arg("-bios")
    .arg(fw)
    .args([
        "-device",
        &format!("isa-debug-exit,iobase={EXIT_PORT:#x},iosize=1"),
    ])
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::piped())
    .kill_on_drop(true);
    let child = cmd
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", binary.display()))?;
    match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Err(_) => Err(format!(
            "a {} probe guest did not finish within {} s",
            accel.as_str(),
            timeout.as_secs()
        )),
        Ok(Err(e)) => Err(format!("waiting for the probe failed: {e}")),
        Ok(Ok(out)) if out.status.code() == Some(PROBE_EXIT_STATUS) => Ok(()),
        Ok(Ok(out)) => {
            let err = String::from_utf8_lossy(&out.stderr);
            Err(format!(
                "the probe guest ended with {} ({})",
                out.status,
                err.lines().last().unwrap_or("no message").trim()
            ))
        }
    }
}

/// Resolves the config's choice to an accelerator, probing for `auto`.
pub async fn resolve(binary: &Path, choice: AccelChoice) -> Accel {
    match choice {
        AccelChoice::Kvm => Accel::Kvm,
        AccelChoice::Tcg => Accel::Tcg,
        AccelChoice::Auto => match probe(binary, Accel::Kvm, PROBE_TIMEOUT).await {
            Ok(()) => {
                tracing::info!("accel auto: KVM runs guests here; using kvm");
                Accel::Kvm
            }
            Err(why) => {
                tracing::warn!("accel auto: using tcg (software emulation, slow) because KVM does not work here: {why}");
                Accel::Tcg
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn firmware_has_the_exit_at_the_reset_vector() {
        let fw = probe_firmware();
        assert_eq!(fw.len() % 65536, 0);
        assert_eq!(&fw[fw.len() - 16..fw.len() - 12], &[0xb0, 0x2a, 0xe6, 0xf4]);
        assert_eq!(PROBE_EXIT_STATUS, 85);
    }

    /// The probe firmware really runs to its exit under TCG, so a probe
    /// that fails under KVM says something about KVM, not about the probe.
    #[tokio::test]
    async fn probe_runs_under_tcg() {
        let qemu = Path::new("qemu-system-x86_64");
        probe(qemu, Accel::Tcg, Duration::from_secs(60))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn a_missing_binary_is_a_reason_not_a_panic() {
        let e = probe(Path::new("/nonexistent/qemu"), Accel::Tcg, PROBE_TIMEOUT)
            .await
            .unwrap_err();
        assert!(e.contains("cannot run /nonexistent/qemu"), "{e}");
    }
}
