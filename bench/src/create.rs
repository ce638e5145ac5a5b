//! Measurement 4: creating and deleting guests with 10G sparse disks.
//!
//! Four ways, interleaved in blocks so that noise hits them alike:
//!
//! - hyve API: `create`/`delete` on one logged-in WebSocket, one at a time;
//! - hyve CLI: `hyve create NAME 10G` / `hyve delete -f NAME`, a process each;
//! - libvirt, a process each: `qemu-img create -f raw` then `virsh define`;
//!   `virsh undefine` then removing the image;
//! - libvirt, one session per block: the `qemu-img create` processes, then
//!   one `virsh` reading every `define` (and later every `undefine`, then
//!   the images removed).
//!
//! hyve writes each guest's folder, its `guest.toml` and a sparse disk0,
//! fsynced; libvirt writes the domain XML under /etc/libvirt.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::hyve::Hyve;
use crate::libvirt;
use crate::stats::Dist;

pub const SIZE: &str = "10G";

#[derive(Default)]
pub struct Ops {
    pub create: Dist,
    pub delete: Dist,
}

#[derive(Default)]
pub struct Creates {
    pub api: Ops,
    pub cli: Ops,
    pub virsh: Ops,
    /// Per guest: a block's whole time over its guests.
    pub session: Ops,
}

fn qemu_img(path: &Path) -> anyhow::Result<Duration> {
    crate::proc::timed(
        std::process::Command::new("qemu-img")
            .args(["create", "-q", "-f", "raw"])
            .arg(path)
            .arg(SIZE),
    )
}

/// `total` guests of each kind, in `blocks` blocks.
pub async fn run(h: &Hyve, work: &Path, total: usize, blocks: usize) -> anyhow::Result<Creates> {
    let c = h.client().await?;
    let dir = work.join("create");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let per = total / blocks;
    let mut r = Creates::default();
    for b in 0..blocks {
        let names = |kind: &str| -> Vec<String> {
            (0..per).map(|i| format!("{kind}{:02}x{i:03}", b)).collect()
        };
        let (api, cli, lv, ls) = (names("api"), names("cli"), names("lv"), names("ls"));
        let img = |n: &str| dir.join(format!("{n}.img"));
        let xml = |n: &str| dir.join(format!("{n}.xml"));
        for n in lv.iter().chain(&ls) {
            let dom = format!("{}{n}", libvirt::PREFIX);
            std::fs::write(xml(n), libvirt::domain_xml(&dom, &img(n), 256, 1))?;
        }
        // Creates.
        for n in &api {
            let t = Instant::now();
            c.iohyve("create", json!({"name": n, "size": SIZE})).await?;
            r.api.create.record(t.elapsed());
        }
        for n in &lv {
            let a = qemu_img(&img(n))?;
            let b = crate::proc::timed(libvirt::virsh().arg("define").arg(xml(n)))?;
            r.virsh.create.record(a + b);
        }
        for n in &cli {
            r.cli
                .create
                .record(crate::proc::timed(h.cli().args(["create", n, SIZE]))?);
        }
        let t = Instant::now();
        for n in &ls {
            qemu_img(&img(n))?;
        }
        let lines: Vec<String> = ls
            .iter()
            .map(|n| format!("define {}", xml(n).display()))
            .collect();
        libvirt::session(&lines)?;
        let each = t.elapsed() / per as u32;
        for _ in 0..per {
            r.session.create.record(each);
        }
        // Deletes.
        for n in &api {
            let t = Instant::now();
            c.iohyve("delete", json!({ "name": n })).await?;
            r.api.delete.record(t.elapsed());
        }
        for n in &lv {
            let t = Instant::now();
            crate::proc::timed(
                libvirt::virsh().args(["undefine", &format!("{}{n}", libvirt::PREFIX)]),
            )?;
            std::fs::remove_file(img(n))?;
            r.virsh.delete.record(t.elapsed());
        }
        for n in &cli {
            r.cli
                .delete
                .record(crate::proc::timed(h.cli().args(["delete", "-f", n]))?);
        }
        let t = Instant::now();
        let lines: Vec<String> = ls
            .iter()
            .map(|n| format!("undefine {}{n}", libvirt::PREFIX))
            .collect();
        libvirt::session(&lines)?;
        for n in &ls {
            std::fs::remove_file(img(n))?;
        }
        let each = t.elapsed() / per as u32;
        for _ in 0..per {
            r.session.delete.record(each);
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(r)
}
