//! hyve's benchmark suite: each figure measured side by side with what
//! people use instead (libvirt, raw QEMU, curl) in the same run, and
//! printed with the goal it is held to. Run it through `scripts/bench`,
//! which installs the peers, builds in release mode and starts it; see
//! BENCHMARKS.md for the method.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Parser;
use serde_json::{json, Value};

mod create;
mod events;
mod fetch;
mod hyve;
mod libvirt;
mod listvms;
mod origin;
mod proc;
mod report;
mod start;
mod stats;

use hyve::Hyve;
use report::{times, Report};
use stats::{median, ms, round};

#[derive(Parser)]
#[command(name = "hyve-bench", about = "hyve against libvirt, raw QEMU and curl")]
struct Args {
    /// The hyve binary to measure (a release build).
    #[arg(long)]
    hyve: PathBuf,
    /// The test guest image (scripts/test-guest prints its path).
    #[arg(long)]
    iso: PathBuf,
    /// Working folder: data dirs, disk images. It must be one libvirt's
    /// QEMU user can reach; it is emptied first.
    #[arg(long, default_value = "/var/tmp/hyve-bench/work")]
    work: PathBuf,
    /// Where to write the JSON results.
    #[arg(long, default_value = "bench/results/latest.json")]
    out: PathBuf,
    /// Small counts, to try the suite out (the figures mean little).
    #[arg(long)]
    quick: bool,
    /// Only these measurements (1-7, comma-separated).
    #[arg(long, value_delimiter = ',')]
    only: Vec<u32>,
}

/// How much of everything a run does.
struct Sizes {
    inventories: Vec<(usize, usize, usize)>, // guests, latency samples, process runs
    rps_clients: usize,
    rps_secs: f64,
    rps_rounds: usize,
    starts: usize,
    creates: usize,
    create_blocks: usize,
    fetch_bytes: u64,
    fetch_rounds: usize,
    subscribers: usize,
    event_chunks: usize,
    event_rounds: usize,
}

impl Sizes {
    fn full() -> Sizes {
        Sizes {
            inventories: vec![(10, 2000, 20), (1000, 1000, 20), (10_000, 200, 10)],
            rps_clients: 64,
            rps_secs: 5.0,
            rps_rounds: 3,
            starts: 10,
            creates: 100,
            create_blocks: 4,
            fetch_bytes: 1 << 30,
            fetch_rounds: 3,
            subscribers: 1000,
            event_chunks: 100,
            event_rounds: 2,
        }
    }

    fn quick() -> Sizes {
        Sizes {
            inventories: vec![(10, 200, 5), (100, 100, 5), (300, 50, 3)],
            rps_clients: 64,
            rps_secs: 2.0,
            rps_rounds: 1,
            starts: 2,
            creates: 8,
            create_blocks: 2,
            fetch_bytes: 64 << 20,
            fetch_rounds: 1,
            subscribers: 100,
            event_chunks: 100,
            event_rounds: 1,
        }
    }
}

const CONFIG: &str = "# The benchmark's server: the defaults, but guests under TCG (KVM does
# not run guests on every host) and room for 1,000 event subscribers, all
# from this host's loopback address.
[qemu]
accel = \"tcg\"

[limits]
max_connections = 1200
max_connections_per_address = 1200
";

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(run(args))
}

fn first_line(cmd: &mut std::process::Command) -> String {
    proc::output(cmd)
        .map(|s| s.lines().next().unwrap_or("").trim().to_string())
        .unwrap_or_default()
}

fn machine() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_default();
    let mem = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    json!({
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "cpu_model": model,
        "memory_mib": mem / 1024,
        "kernel": first_line(std::process::Command::new("uname").arg("-r")),
        "os": std::fs::read_to_string("/etc/os-release").unwrap_or_default().lines()
            .find_map(|l| l.strip_prefix("PRETTY_NAME=")).unwrap_or("").trim_matches('"'),
        "qemu": first_line(std::process::Command::new("qemu-system-x86_64").arg("--version")),
        "libvirt": proc::output(libvirt::virsh().args(["version", "--daemon"]))
            .unwrap_or_default()
            .lines()
            .find(|l| l.contains("daemon"))
            .unwrap_or("")
            .trim(),
        "curl": first_line(std::process::Command::new("curl").arg("--version")),
        "date": chrono::Utc::now().format("%Y-%m-%d %H:%M UTC").to_string(),
    })
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

fn guest_names(from: usize, to: usize) -> Vec<String> {
    (from..to).map(|i| format!("g{i:05}")).collect()
}

/// Grows libvirt's inventory of `hyvebench-g…` domains to `to`.
fn grow_libvirt(work: &Path, from: usize, to: usize) -> anyhow::Result<Duration> {
    let dir = work.join("lvxml");
    std::fs::create_dir_all(&dir)?;
    let mut lines = Vec::new();
    for n in guest_names(from, to) {
        let path = dir.join(format!("{n}.xml"));
        let disk = work.join("lvdisks").join(format!("{n}.img"));
        std::fs::write(
            &path,
            libvirt::domain_xml(&format!("{}{n}", libvirt::PREFIX), &disk, 256, 1),
        )?;
        lines.push(format!("define {}", path.display()));
    }
    let mut total = Duration::ZERO;
    for chunk in lines.chunks(2000) {
        total += libvirt::session(chunk)?;
    }
    Ok(total)
}

async fn run(args: Args) -> anyhow::Result<()> {
    let sizes = if args.quick {
        Sizes::quick()
    } else {
        Sizes::full()
    };
    let want = |m: u32| args.only.is_empty() || args.only.contains(&m);
    for tool in ["virsh", "qemu-img", "curl", "qemu-system-x86_64"] {
        if !proc::have(tool) {
            bail!("{tool} is not installed: run scripts/bench, which installs the peers");
        }
    }
    let hyve_bin = std::fs::canonicalize(&args.hyve).context("the hyve binary")?;
    let iso = std::fs::canonicalize(&args.iso).context("the test guest image")?;
    let started_libvirt = libvirt::ensure_running()?;
    libvirt::cleanup()?;
    let work = args.work.clone();
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    let mut rep = Report::default();
    rep.set("machine", machine());
    rep.set("quick", json!(args.quick));
    rep.set(
        "hyve_version",
        json!(first_line(
            std::process::Command::new(&hyve_bin).arg("--version")
        )),
    );
    eprintln!("hyve-bench: {}", rep.data["machine"]);

    // ---- 1, 2, 7: one server whose inventory grows -------------------------
    if want(1) || want(2) || want(7) {
        let lv_idle = libvirt::libvirtd_pid().and_then(proc::memory_kib);
        let mut h = Hyve::start(&hyve_bin, &work.join("a"), CONFIG).await?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let fresh = h.memory_kib().0;
        let c = h.client().await?;
        c.iohyve("setup", json!({"pool": "tank", "nic": "re0"}))
            .await?;
        c.iohyve("listvms", json!({})).await?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let after_login = h.memory_kib().0;
        let mut mem = json!({
            "hyve_idle_fresh_kib": fresh,
            "hyve_idle_after_login_kib": after_login,
            "libvirtd_idle_kib": lv_idle.map(|m| m.0),
            "libvirtd_started_by_bench": started_libvirt,
        });
        let mut inv = Vec::new();
        let mut have = 0;
        for &(n, samples, runs) in &sizes.inventories {
            eprintln!("hyve-bench: inventory of {n} guests");
            let t = std::time::Instant::now();
            hyve::create_guests(&c, &guest_names(have, n), "1G", 16).await?;
            let hyve_fill = t.elapsed();
            let lv_fill = grow_libvirt(&work, have, n)?;
            have = n;
            listvms::check_cli(&h, n)?;
            let mut entry = json!({
                "guests": n,
                "fill_secs": {"hyve_api_16_in_flight": hyve_fill.as_secs_f64(), "virsh_session": lv_fill.as_secs_f64()},
            });
            if want(1) {
                let ws = listvms::ws_latency(&h, n, samples).await?;
                let rest = listvms::rest_latency(&h, n, samples).await?;
                let (cli, virsh) = tokio::task::block_in_place(|| listvms::processes(&h, runs))?;
                let goal = n == 1000;
                for (transport, lat) in [("WebSocket", &ws), ("REST", &rest)] {
                    rep.row(
                        1,
                        format!("listvms over {transport}, {n} guests"),
                        lat.text(),
                        format!("virsh list --all p50 {}", ms(virsh.p50())),
                        format!("{} (virsh p50 / hyve p99)", times(virsh.p50() / lat.p99())),
                        if goal {
                            "p99 <= 2 ms; >= 10x virsh"
                        } else {
                            ""
                        },
                        goal.then_some(lat.p99() <= 2.0 && virsh.p50() / lat.p99() >= 10.0),
                    );
                }
                rep.row(
                    1,
                    format!("`hyve list` vs `virsh list --all` (processes), {n}"),
                    cli.text(),
                    virsh.text(),
                    format!("{} (p50s)", times(virsh.p50() / cli.p50())),
                    "",
                    None,
                );
                entry["ws"] = ws.json();
                entry["rest"] = rest.json();
                entry["hyve_list_process"] = cli.json();
                entry["virsh_list_all_process"] = virsh.json();
            }
            if want(2) && n == sizes.inventories[0].0 {
                eprintln!("hyve-bench: throughput, {} clients", sizes.rps_clients);
                let rounds =
                    listvms::throughput(&h, sizes.rps_clients, sizes.rps_secs, sizes.rps_rounds)
                        .await?;
                let rps: Vec<f64> = rounds.iter().map(|r| r.rps()).collect();
                let req: u64 = rounds.iter().map(|r| r.requests).sum();
                let server_cpu: f64 = rounds.iter().map(|r| r.server_cpu.as_secs_f64()).sum();
                let client_cpu: f64 = rounds.iter().map(|r| r.client_cpu.as_secs_f64()).sum();
                let m = median(&rps);
                let per_req_us = server_cpu * 1e6 / req.max(1) as f64;
                rep.row(
                    2,
                    format!(
                        "listvms/s, {} WebSocket clients, {n} guests",
                        sizes.rps_clients
                    ),
                    format!("{m:.0}/s"),
                    "",
                    "",
                    ">= 20,000/s on 2 cores",
                    Some(m >= 20_000.0),
                );
                rep.row(
                    2,
                    "  server CPU per listvms (load generator on the same cores)",
                    format!("{per_req_us:.1} µs"),
                    format!("client {:.1} µs", client_cpu * 1e6 / req.max(1) as f64),
                    format!("{:.0}/s on 2 cores for the server alone", 2e6 / per_req_us),
                    "",
                    None,
                );
                rep.set(
                    "throughput",
                    json!({
                        "clients": sizes.rps_clients, "guests": n, "round_secs": sizes.rps_secs,
                        "rps_per_round": rps, "rps_median": m,
                        "server_cpu_us_per_request": per_req_us,
                        "client_cpu_us_per_request": client_cpu * 1e6 / req.max(1) as f64,
                    }),
                );
            }
            inv.push(entry);
        }
        c.iohyve("listvms", json!({})).await?;
        let (rss, hwm) = h.memory_kib();
        let lv_full = libvirt::libvirtd_pid().and_then(proc::memory_kib);
        mem["hyve_with_guests_kib"] = json!(rss);
        mem["hyve_with_guests_hwm_kib"] = json!(hwm);
        mem["guests"] = json!(have);
        mem["libvirtd_with_domains_kib"] = json!(lv_full.map(|m| m.0));
        if want(7) {
            let idle = fresh.max(after_login);
            rep.row(
                7,
                "server memory idle (VmRSS)",
                format!("{} fresh, {} after a login", mib(fresh), mib(after_login)),
                lv_idle
                    .map(|m| format!("libvirtd {}", mib(m.0)))
                    .unwrap_or_default(),
                "",
                "< 20 MiB",
                Some(idle < 20 * 1024),
            );
            rep.row(
                7,
                format!("server memory with {have} guests (VmRSS)"),
                mib(rss),
                lv_full
                    .map(|m| format!("libvirtd {}", mib(m.0)))
                    .unwrap_or_default(),
                lv_full
                    .map(|m| format!("{} (libvirtd / hyve)", times(m.0 as f64 / rss as f64)))
                    .unwrap_or_default(),
                "",
                None,
            );
        }
        rep.set("inventory", json!(inv));
        rep.set("memory", mem);
        drop(c);
        h.stop();
        libvirt::cleanup()?;
        let _ = std::fs::remove_dir_all(work.join("a"));
        let _ = std::fs::remove_dir_all(work.join("lvxml"));
    }

    // ---- 3-6: a fresh server ---------------------------------------------
    if want(3) || want(4) || want(5) || want(6) {
        let h = Hyve::start(&hyve_bin, &work.join("b"), CONFIG).await?;
        let c = h.client().await?;
        c.iohyve("setup", json!({"pool": "tank", "nic": "re0"}))
            .await?;
        if want(3) {
            eprintln!("hyve-bench: start latency");
            let s = start::run(&h, &iso, &work, sizes.starts).await?;
            let over = s.hyve.p50() - s.raw.p50();
            rep.row(
                3,
                "start until QMP says running",
                s.hyve.text(),
                format!("raw QEMU {}", s.raw.text()),
                format!("+{} over raw QEMU (p50s)", ms(over)),
                "<= 15 ms slower than raw QEMU",
                Some(over <= 15.0),
            );
            rep.row(
                3,
                "",
                "",
                format!("virsh start {}", s.virsh.text()),
                format!(
                    "{} (virsh p50 / hyve p50)",
                    times(s.virsh.p50() / s.hyve.p50())
                ),
                "<= half of virsh start",
                Some(s.hyve.p50() <= s.virsh.p50() / 2.0),
            );
            rep.set(
                "start",
                json!({"hyve": s.hyve.json(), "raw_qemu": s.raw.json(), "virsh_start": s.virsh.json()}),
            );
        }
        if want(4) {
            eprintln!("hyve-bench: create and delete");
            let r = create::run(&h, &work, sizes.creates, sizes.create_blocks).await?;
            for (what, a, b, c2, d) in [
                (
                    "create",
                    &r.api.create,
                    &r.cli.create,
                    &r.virsh.create,
                    &r.session.create,
                ),
                (
                    "delete",
                    &r.api.delete,
                    &r.cli.delete,
                    &r.virsh.delete,
                    &r.session.delete,
                ),
            ] {
                rep.row(
                    4,
                    format!("{what} (10G sparse), one process per guest"),
                    format!("hyve {what}: {}", b.text()),
                    format!("virsh + qemu-img: {}", c2.text()),
                    format!("{} (p50s)", times(c2.p50() / b.p50())),
                    "",
                    None,
                );
                rep.row(
                    4,
                    format!("{what} (10G sparse), one connection / session"),
                    format!("API: {}", a.text()),
                    format!("virsh session: {} per guest", ms(d.mean())),
                    format!("{} (per guest)", times(d.mean() / a.mean())),
                    "",
                    None,
                );
            }
            rep.set(
                "create_delete",
                json!({
                    "guests_per_way": sizes.creates,
                    "hyve_api": {"create": r.api.create.json(), "delete": r.api.delete.json()},
                    "hyve_cli": {"create": r.cli.create.json(), "delete": r.cli.delete.json()},
                    "virsh_processes": {"create": r.virsh.create.json(), "delete": r.virsh.delete.json()},
                    "virsh_session_per_guest": {"create_ms": round(r.session.create.mean()), "delete_ms": round(r.session.delete.mean())},
                }),
            );
        }
        let origin = origin::Origin::start(
            sizes.fetch_bytes,
            origin::Pace {
                chunks: sizes.event_chunks,
                chunk: 4096,
                interval: Duration::from_millis(300),
            },
        )
        .await?;
        if want(5) {
            eprintln!("hyve-bench: fetchiso");
            let f = fetch::run(&h, &origin, &work, sizes.fetch_bytes, sizes.fetch_rounds).await?;
            let mbs = |s: f64| f.bytes as f64 / s / 1e6;
            let (hy, cu, cf) = (median(&f.hyve), median(&f.curl), median(&f.curl_fsync));
            let growth = f.growth_kib.iter().copied().max().unwrap_or(0);
            rep.row(
                5,
                format!("fetchiso {} MiB over loopback HTTP", f.bytes >> 20),
                format!("{:.0} MB/s", mbs(hy)),
                format!("curl -o {:.0} MB/s", mbs(cu)),
                format!("{:.2} (hyve / curl)", cu / hy),
                ">= 0.9 of curl",
                Some(cu / hy >= 0.9),
            );
            rep.row(
                5,
                "",
                "",
                format!("curl -o + fsync {:.0} MB/s", mbs(cf)),
                format!("{:.2} (hyve / curl+fsync)", cf / hy),
                "",
                None,
            );
            rep.row(
                5,
                "  server memory growth during the download",
                mib(growth),
                "",
                "",
                "<= 32 MiB",
                Some(growth <= 32 * 1024),
            );
            rep.set(
                "fetch",
                json!({
                    "bytes": f.bytes, "hyve_secs": f.hyve, "curl_secs": f.curl,
                    "curl_fsync_secs": f.curl_fsync, "rss_growth_kib": f.growth_kib,
                    "rss_before_kib": f.rss_before_kib,
                }),
            );
        }
        if want(6) {
            eprintln!("hyve-bench: events, {} subscribers", sizes.subscribers);
            let e = events::run(&h, &origin, sizes.subscribers, sizes.event_rounds).await?;
            rep.row(
                6,
                format!(
                    "progress event to the last of {} subscribers",
                    e.subscribers
                ),
                e.last.text(),
                format!("first subscriber {}", e.first.text()),
                "",
                "p99 <= 50 ms",
                Some(e.last.p99() <= 50.0),
            );
            rep.set(
                "events",
                json!({
                    "subscribers": e.subscribers, "events": e.events, "missing": e.missing,
                    "to_last_subscriber": e.last.json(), "to_first_subscriber": e.first.json(),
                    "every_arrival": e.all.json(),
                }),
            );
        }
        drop(c);
        drop(h);
        let _ = std::fs::remove_dir_all(work.join("b"));
    }

    let table = rep.table();
    println!("{table}");
    if let Some(dir) = args.out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&args.out, serde_json::to_string_pretty(&rep.json())? + "\n")?;
    eprintln!("hyve-bench: results written to {}", args.out.display());
    Ok(())
}
