//! The QEMU driver: a guest's properties as a `qemu-system-x86_64`
//! command line.
//!
//! | property | QEMU |
//! |---|---|
//! | ram | `-m <MiB>` |
//! | cpu | `-smp <n>` |
//! | disks | one `virtio-blk-pci` per image, raw, in disk order |
//! | loader | `uefi`: OVMF code (read-only pflash) + the guest's own vars; anything else: SeaBIOS |
//! | con | the first serial port, kept by the server (socket + `console.log`) |
//! | tap / mac | `virtio-net-pci` with that MAC, on the tap (bridged) or user-mode networking |
//! | install | the ISO as an AHCI CD, booted first |
//!
//! No shell is involved: the argument vector is handed to `execve`. Paths
//! inside `-drive` options have their commas doubled, QEMU's escaping.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use tokio::sync::OnceCell;

use super::accel::{self, Accel, AccelChoice};
use super::{run_files, DriverFuture, Firmware, Hypervisor, LaunchSpec, NetBackend};
use crate::error::{Error, Result};

pub struct QemuDriver {
    binary: PathBuf,
    choice: AccelChoice,
    accel: OnceCell<Accel>,
    ovmf_code: PathBuf,
    ovmf_vars: PathBuf,
}

impl QemuDriver {
    pub fn new(
        binary: PathBuf,
        choice: AccelChoice,
        ovmf_code: PathBuf,
        ovmf_vars: PathBuf,
    ) -> Self {
        QemuDriver {
            binary,
            choice,
            accel: OnceCell::new(),
            ovmf_code,
            ovmf_vars,
        }
    }

    /// The accelerator in use, once chosen.
    pub fn accel(&self) -> Option<Accel> {
        self.accel.get().copied()
    }
}

/// A path as a value inside a QEMU option list: `,` doubled.
pub(crate) fn opt_path(p: &Path) -> OsString {
    let mut out = Vec::new();
    for &b in p.as_os_str().as_bytes() {
        out.push(b);
        if b == b',' {
            out.push(b',');
        }
    }
    OsString::from_vec(out)
}

fn join(parts: &[&OsStr]) -> OsString {
    let mut s = OsString::new();
    for p in parts {
        s.push(p);
    }
    s
}

impl Hypervisor for QemuDriver {
    fn name(&self) -> &'static str {
        "qemu"
    }

    fn prepare(&self) -> DriverFuture<'_, Result<()>> {
        Box::pin(async move {
            self.accel
                .get_or_init(|| accel::resolve(&self.binary, self.choice, &self.ovmf_code))
                .await;
            Ok(())
        })
    }

    fn command(&self, spec: &LaunchSpec) -> Result<Vec<OsString>> {
        let accel = self
            .accel
            .get()
            .copied()
            .ok_or_else(|| Error::internal("the QEMU driver was not prepared"))?;
        let mut a: Vec<OsString> = vec![self.binary.clone().into_os_string()];
        let mut push = |parts: &[&str]| a.extend(parts.iter().map(OsString::from));
        push(&["-name", &format!("guest={},debug-threads=on", spec.name)]);
        push(&["-nodefaults", "-no-user-config", "-display", "none"]);
        push(&["-machine", "q35", "-accel", accel.as_str()]);
        if accel == Accel::Kvm {
            push(&["-cpu", "host"]);
        }
        push(&[
            "-m",
            &spec.ram_mib.to_string(),
            "-smp",
            &spec.cpus.to_string(),
        ]);
        push(&["-pidfile", run_files::PIDFILE]);
        // The console's socket is made before QMP's: once QMP answers, the
        // console is there too.
        push(&[
            "-chardev",
            &format!(
                "socket,id=serial0,path={},server=on,wait=off,logfile=../{},logappend=on",
                run_files::CONSOLE,
                super::guest_files::CONSOLE_LOG
            ),
            "-serial",
            "chardev:serial0",
        ]);
        push(&[
            "-chardev",
            &format!("socket,id=qmp,path={},server=on,wait=off", run_files::QMP),
            "-mon",
            "chardev=qmp,mode=control",
        ]);
        if let Firmware::Uefi { vars } = &spec.firmware {
            a.push("-drive".into());
            a.push(join(&[
                OsStr::new("if=pflash,format=raw,unit=0,readonly=on,file="),
                &opt_path(&self.ovmf_code),
            ]));
            a.push("-drive".into());
            a.push(join(&[
                OsStr::new("if=pflash,format=raw,unit=1,file="),
                &opt_path(vars),
            ]));
        }
        let mut boot = 0;
        if let Some(iso) = &spec.cdrom {
            a.push("-drive".into());
            a.push(join(&[
                OsStr::new("if=none,id=cd0,media=cdrom,readonly=on,format=raw,file="),
                &opt_path(iso),
            ]));
            a.push("-device".into());
            a.push("ide-cd,drive=cd0,bus=ide.0,bootindex=0".into());
            boot = 1;
        }
        for (i, disk) in spec.disks.iter().enumerate() {
            a.push("-drive".into());
            a.push(join(&[
                OsStr::new(&format!(
                    "if=none,id=disk{i},format=raw,discard=unmap,file="
                )),
                &opt_path(disk),
            ]));
            a.push("-device".into());
            let mut dev = format!("virtio-blk-pci,drive=disk{i}");
            if i == 0 {
                dev.push_str(&format!(",bootindex={boot}"));
            }
            a.push(dev.into());
        }
        let netdev = match &spec.net {
            NetBackend::User => "user,id=net0".to_string(),
            NetBackend::Tap(tap) => format!("tap,id=net0,ifname={tap},script=no,downscript=no"),
        };
        a.push("-netdev".into());
        a.push(netdev.into());
        a.push("-device".into());
        a.push(format!("virtio-net-pci,netdev=net0,mac={}", spec.mac).into());
        Ok(a)
    }

    fn identifies(&self, argv: &[OsString], name: &str) -> bool {
        let want = format!("guest={name},");
        argv.windows(2)
            .any(|w| w[0] == "-name" && w[1].to_str().is_some_and(|v| v.starts_with(&want)))
    }

    fn uefi_files(&self) -> (PathBuf, PathBuf) {
        (self.ovmf_code.clone(), self.ovmf_vars.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn driver(accel: Accel) -> QemuDriver {
        let d = QemuDriver::new(
            "qemu-system-x86_64".into(),
            AccelChoice::Tcg,
            "/usr/share/OVMF/OVMF_CODE_4M.fd".into(),
            "/usr/share/OVMF/OVMF_VARS_4M.fd".into(),
        );
        d.accel.set(accel).unwrap();
        d
    }

    fn spec() -> LaunchSpec {
        LaunchSpec {
            name: "web01".into(),
            ram_mib: 512,
            cpus: 2,
            disks: vec!["/p/web01/disk0.img".into(), "/q,x/web01/disk1.img".into()],
            cdrom: None,
            firmware: Firmware::Bios,
            net: NetBackend::User,
            mac: "52:54:00:12:34:56".into(),
        }
    }

    fn args(d: &QemuDriver, s: &LaunchSpec) -> Vec<String> {
        d.command(s)
            .unwrap()
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect()
    }

    fn after<'a>(a: &'a [String], flag: &str) -> Vec<&'a str> {
        a.windows(2)
            .filter(|w| w[0] == flag)
            .map(|w| w[1].as_str())
            .collect()
    }

    #[test]
    fn properties_become_options() {
        let a = args(&driver(Accel::Tcg), &spec());
        assert_eq!(a[0], "qemu-system-x86_64");
        assert_eq!(after(&a, "-m"), ["512"]);
        assert_eq!(after(&a, "-smp"), ["2"]);
        assert_eq!(after(&a, "-accel"), ["tcg"]);
        assert!(after(&a, "-cpu").is_empty());
        assert_eq!(after(&a, "-name"), ["guest=web01,debug-threads=on"]);
        assert_eq!(
            after(&a, "-drive"),
            [
                "if=none,id=disk0,format=raw,discard=unmap,file=/p/web01/disk0.img",
                "if=none,id=disk1,format=raw,discard=unmap,file=/q,,x/web01/disk1.img"
            ]
        );
        assert_eq!(
            after(&a, "-device"),
            [
                "virtio-blk-pci,drive=disk0,bootindex=0",
                "virtio-blk-pci,drive=disk1",
                "virtio-net-pci,netdev=net0,mac=52:54:00:12:34:56"
            ]
        );
        assert_eq!(after(&a, "-netdev"), ["user,id=net0"]);
        assert!(driver(Accel::Tcg).identifies(&d_os(&a), "web01"));
        assert!(!driver(Accel::Tcg).identifies(&d_os(&a), "web0"));
    }

    fn d_os(a: &[String]) -> Vec<OsString> {
        a.iter().map(OsString::from).collect()
    }

    #[test]
    fn install_boots_the_cd_first_and_uefi_uses_ovmf() {
        let mut s = spec();
        s.cdrom = Some("/p/ISO/fbsd.iso".into());
        s.firmware = Firmware::Uefi {
            vars: "/p/web01/uefi-vars.fd".into(),
        };
        s.net = NetBackend::Tap("tap3".into());
        let a = args(&driver(Accel::Kvm), &s);
        let drives = after(&a, "-drive");
        assert_eq!(
            drives[..3],
            [
                "if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd",
                "if=pflash,format=raw,unit=1,file=/p/web01/uefi-vars.fd",
                "if=none,id=cd0,media=cdrom,readonly=on,format=raw,file=/p/ISO/fbsd.iso",
            ]
        );
        let devs = after(&a, "-device");
        assert_eq!(devs[0], "ide-cd,drive=cd0,bus=ide.0,bootindex=0");
        assert_eq!(devs[1], "virtio-blk-pci,drive=disk0,bootindex=1");
        assert_eq!(
            after(&a, "-netdev"),
            ["tap,id=net0,ifname=tap3,script=no,downscript=no"]
        );
        assert_eq!(after(&a, "-cpu"), ["host"]);
    }

    #[test]
    fn unprepared_driver_refuses() {
        let d = QemuDriver::new("q".into(), AccelChoice::Auto, "c".into(), "v".into());
        assert!(d.command(&spec()).is_err());
    }
}
