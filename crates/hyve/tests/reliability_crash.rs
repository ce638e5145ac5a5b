//! Fault suite 1, crash safety: rounds of random actions (create, adddisk,
//! resizedisk, deletedisk, setprop, delete, renameiso, rmiso, fetchiso,
//! install, start, stop) from several clients at once, with the server
//! killed by SIGKILL at a random moment of each round and started again.
//! After every restart the invariants of `common::reliability::check`
//! hold (every guest wholly there or wholly absent, guest.toml parses and
//! agrees with the API, disks the sizes listed, no partial file visible,
//! running guests re-adopted, no QEMU orphaned or doubled), and a guest
//! whose stop was acknowledged ends up off even if the server died before
//! it was.
//!
//! Short in CI; `HYVE_LONG=1` runs hundreds of rounds. `HYVE_SEED` replays
//! a run.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::guest::GuestDirs;
use common::origin::{File, Origin};
use common::reliability::{self as rel, check_settled, iso_bytes, iso_whole, pick};
use common::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

const GUESTS: [&str; 6] = ["g0", "g1", "g2", "g3", "g4", "g5"];
/// Guests running at once at most (each is a TCG QEMU on a 2-core machine).
const MAX_RUNNING: usize = 2;

fn config(root: &Path) -> PathBuf {
    let p = root.join("crash.toml");
    std::fs::write(
        &p,
        "[qemu]\naccel = \"tcg\"\n\n[vm]\nstop_timeout = 2\n\n[tasks]\nmax_concurrent = 2\n",
    )
    .unwrap();
    p
}

fn start(dirs: &GuestDirs) -> TestServer {
    let cfg = config(dirs.root.path());
    TestServer::start_with(&dirs.data(), &["--config", cfg.to_str().unwrap()])
}

/// What the test knows was acknowledged, per guest: the last of start,
/// install and stop.
#[derive(Default)]
struct Acks {
    last_power: BTreeMap<String, (Instant, &'static str)>,
    sent: usize,
    acked: usize,
    refused: usize,
    cut: usize,
    unexpected: Vec<String>,
}

/// One random action with random arguments.
fn random_action(
    rng: &mut StdRng,
    isos: &[String],
    origin: &Origin,
    n: &mut u64,
) -> (String, Value) {
    let g = GUESTS[rng.random_range(0..GUESTS.len())];
    let iso = isos
        .get(rng.random_range(0..isos.len().max(1)))
        .cloned()
        .unwrap_or_else(|| "none.iso".into());
    let pick_from = |rng: &mut StdRng, v: &[&str]| v[rng.random_range(0..v.len())].to_string();
    let a = match rng.random_range(0..100) {
        0..=14 => (
            "create",
            json!({"name": g, "size": pick_from(rng, &["16M", "32M", "64M"])}),
        ),
        15..=24 => (
            "adddisk",
            json!({"name": g, "size": pick_from(rng, &["8M", "16M"])}),
        ),
        25..=32 => (
            "resizedisk",
            json!({"name": g, "disk": pick_from(rng, &["disk0", "disk1", "disk2"]), "size": pick_from(rng, &["48M", "96M", "128M"])}),
        ),
        33..=39 => (
            "deletedisk",
            json!({"name": g, "disk": pick_from(rng, &["disk1", "disk2", "disk3"])}),
        ),
        40..=51 => {
            let mut args = json!({"name": g});
            match rng.random_range(0..6) {
                0 => args["ram"] = json!(pick_from(rng, &["32M", "64M", "128M"])),
                1 => args["cpu"] = json!(pick_from(rng, &["1", "2"])),
                2 => args["description"] = json!(format!("round text {}", rng.random::<u32>())),
                3 => args["persist"] = json!(pick_from(rng, &["0", "1"])),
                4 => args["tap"] = json!(format!("tap{}", rng.random_range(0..12))),
                _ => {
                    args["os"] = json!(pick_from(rng, &["freebsd", "debian", "default"]));
                    args["loader"] = json!(pick_from(rng, &["bhyveload", "grub-bhyve"]));
                }
            }
            ("setprop", args)
        }
        52..=58 => ("delete", json!({"name": g})),
        59..=63 => {
            *n += 1;
            (
                "renameiso",
                json!({"source": iso, "target": format!("r{}.iso", *n)}),
            )
        }
        64..=67 => ("rmiso", json!({"target": iso})),
        68..=75 => {
            *n += 1;
            let len = rng.random_range(64 * 1024..768 * 1024);
            let path = format!("/src{}.iso", *n);
            let url = origin.put(
                &path,
                File::new(iso_bytes(rng.random(), len))
                    .slowly(32 * 1024, Duration::from_millis(20)),
            );
            (
                "fetchiso",
                json!({"url": url, "name": format!("f{}.iso", *n)}),
            )
        }
        76..=79 => ("install", json!({"name": g, "iso": iso})),
        80..=89 => ("start", json!({"name": g})),
        _ => (
            "stop",
            json!({"name": g, "force": pick_from(rng, &["true", "false"])}),
        ),
    };
    (a.0.to_string(), a.1)
}

async fn run_action(c: Arc<Client>, action: String, args: Value, acks: Arc<Mutex<Acks>>) {
    let name = args["name"].as_str().unwrap_or("").to_string();
    let r = c.iohyve(&action, args).await;
    let mut a = acks.lock().unwrap();
    match r {
        Ok(_) => {
            a.acked += 1;
            let kind = match action.as_str() {
                "start" | "install" => Some("on"),
                "stop" => Some("off"),
                _ => None,
            };
            if let Some(k) = kind {
                a.last_power.insert(name, (Instant::now(), k));
            } else if action == "delete" {
                a.last_power.remove(&name);
            }
        }
        Err(hyve_client::ClientError::Action(m)) if rel::refused_by_rules(&m) => a.refused += 1,
        Err(hyve_client::ClientError::Closed) => {
            a.cut += 1;
            // A start the kill cut short may or may not have happened: the
            // guest's power state is unknown until a stop is acknowledged.
            if action == "start" || action == "install" {
                a.last_power.remove(&name);
            }
        }
        Err(e) => a.unexpected.push(format!("{action}: {e}")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn random_actions_survive_sigkill() {
    let rounds: usize = std::env::var("HYVE_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(pick(12, 300));
    let seed = rel::seed();
    let mut rng = StdRng::seed_from_u64(seed);
    let dirs = GuestDirs::new();
    let data = dirs.data();
    let pools = vec![data.join("tank")];
    let origin = Origin::http().await;
    let opaque = BTreeSet::new();
    let acks = Arc::new(Mutex::new(Acks::default()));
    let mut n = 0u64;
    let mut kills = 0;
    let mut max_seen = rel::Seen::default();
    let started = Instant::now();

    let mut server = start(&dirs);
    {
        let c = server.client().await;
        setup(&c).await;
    }
    for round in 0..=rounds {
        let c = Arc::new(server.client().await);
        let seen = check_settled(&c, &pools, dirs.root.path(), &opaque, 30)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "round {round} (HYVE_SEED={seed}): {e}\nserver log:\n{}",
                    server.log()
                )
            });
        max_seen.guests = max_seen.guests.max(seen.guests);
        max_seen.disks = max_seen.disks.max(seen.disks);
        max_seen.running = max_seen.running.max(seen.running);
        max_seen.isos = max_seen.isos.max(seen.isos);
        // A stop that was acknowledged is carried out, even by the next
        // server: the guest ends up off.
        let must_be_off: Vec<String> = acks
            .lock()
            .unwrap()
            .last_power
            .iter()
            .filter(|(_, (_, k))| *k == "off")
            .map(|(g, _)| g.clone())
            .collect();
        for g in &must_be_off {
            let end = Instant::now() + Duration::from_secs(40);
            loop {
                let vms = c.iohyve("listvms", json!({})).await.unwrap();
                if vms.get(g).is_none_or(|v| v["vmm"] == "NO") {
                    break;
                }
                assert!(
                    Instant::now() < end,
                    "round {round} (HYVE_SEED={seed}): guest {g}'s stop was acknowledged, but it still runs: {vms}\nserver log:\n{}",
                    server.log()
                );
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
        if round == rounds {
            break;
        }
        let isos: Vec<String> = c
            .iohyve("listisos", json!({}))
            .await
            .unwrap()
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect();
        let running = rel::qemu_by_guest(dirs.root.path()).len();
        let c2 = Arc::new(server.client().await);
        let mut tasks = Vec::new();
        let burst = rng.random_range(3..10);
        for i in 0..burst {
            let (mut action, mut args) = random_action(&mut rng, &isos, &origin, &mut n);
            if (action == "start" || action == "install") && running >= MAX_RUNNING {
                action = "stop".into();
                args = json!({"name": args["name"], "force": "true"});
            }
            acks.lock().unwrap().sent += 1;
            let client = if i % 2 == 0 { c.clone() } else { c2.clone() };
            tasks.push(tokio::spawn(run_action(client, action, args, acks.clone())));
        }
        // Most kills land within the first milliseconds, while the burst's
        // writes are under way; some later, in downloads and guest starts.
        let ms = match rng.random_range(0..10) {
            0..=4 => rng.random_range(0..25),
            5..=7 => rng.random_range(0..120),
            _ => rng.random_range(0..600),
        };
        tokio::time::sleep(Duration::from_millis(ms)).await;
        server.kill();
        kills += 1;
        for t in tasks {
            t.await.unwrap();
        }
        let unexpected = std::mem::take(&mut acks.lock().unwrap().unexpected);
        assert!(
            unexpected.is_empty(),
            "round {round} (HYVE_SEED={seed}): errors the rules do not call for: {unexpected:#?}\nserver log:\n{}",
            server.log()
        );
        drop((c, c2));
        server = start(&dirs);
    }

    // Every ISO in the store is whole, whatever the rounds did to it.
    for e in std::fs::read_dir(iso_dir(&data)).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.ends_with(".part") {
            assert!(iso_whole(&std::fs::read(e.path()).unwrap()), "{name}");
        }
    }
    let a = acks.lock().unwrap();
    rel::record(
        "crash",
        json!({
            "rounds": rounds,
            "sigkills": kills,
            "actions_sent": a.sent,
            "actions_acknowledged": a.acked,
            "actions_refused_by_rules": a.refused,
            "actions_cut_by_kill": a.cut,
            "most_guests": max_seen.guests,
            "most_disks": max_seen.disks,
            "most_running": max_seen.running,
            "most_isos": max_seen.isos,
            "seconds": started.elapsed().as_secs(),
            "seed": seed,
        }),
    );
    drop(server);
    rel::kill_qemus(dirs.root.path());
}

#[test]
fn iso_content_proves_itself() {
    let a = iso_bytes(7, 5000);
    assert!(iso_whole(&a));
    assert!(!iso_whole(&a[..4999]));
    let mut b = a.clone();
    b[4000] ^= 1;
    assert!(!iso_whole(&b));
    assert!(!iso_whole(b"garbage"));
}
