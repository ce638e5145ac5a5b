//! Fault suite 2, concurrency: 50 clients issuing random actions (create,
//! delete, adddisk, resizedisk, deletedisk, setprop, start, stop and the
//! reads) against the same 10 guests for a fixed time. Only the errors the
//! rules call for come back (conflicts, a guest running or not, a name or
//! disk that another client just removed), and at the end the invariants
//! of `common::reliability::check` hold, before and after a SIGKILL.
//!
//! Short in CI; `HYVE_LONG=1` runs for minutes. `HYVE_SEED` replays.

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::guest::GuestDirs;
use common::reliability::{self as rel, check_settled, pick};
use common::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

const CLIENTS: usize = 50;
const GUESTS: usize = 10;

#[derive(Default)]
struct Counts {
    actions: AtomicUsize,
    refused: AtomicUsize,
}

fn action(rng: &mut StdRng) -> (&'static str, Value) {
    let g = format!("g{}", rng.random_range(0..GUESTS));
    let one = |rng: &mut StdRng, v: &[&str]| v[rng.random_range(0..v.len())].to_string();
    match rng.random_range(0..100) {
        0..=11 => (
            "create",
            json!({"name": g, "size": one(rng, &["16M", "32M"])}),
        ),
        12..=17 => ("delete", json!({"name": g})),
        18..=27 => ("adddisk", json!({"name": g, "size": "8M"})),
        28..=35 => (
            "resizedisk",
            json!({"name": g, "disk": one(rng, &["disk0", "disk1", "disk2"]), "size": one(rng, &["40M", "64M", "96M"])}),
        ),
        36..=43 => (
            "deletedisk",
            json!({"name": g, "disk": one(rng, &["disk1", "disk2", "disk3"])}),
        ),
        44..=59 => {
            let mut a = json!({"name": g});
            match rng.random_range(0..4) {
                0 => a["tap"] = json!(format!("tap{}", rng.random_range(0..15))),
                1 => a["description"] = json!(format!("by {}", rng.random::<u16>())),
                2 => a["cpu"] = json!(one(rng, &["1", "2"])),
                _ => a["ram"] = json!(one(rng, &["32M", "64M"])),
            }
            ("setprop", a)
        }
        60..=67 => ("getprops", json!({"name": g})),
        68..=74 => ("listdisks", json!({"name": g})),
        75..=81 => ("listvms", json!({})),
        82..=90 => ("start", json!({"name": g})),
        _ => ("stop", json!({"name": g, "force": "true"})),
    }
}

async fn worker(c: Client, seed: u64, until: Instant, counts: Arc<Counts>) -> Result<(), String> {
    let mut rng = StdRng::seed_from_u64(seed);
    while Instant::now() < until {
        let (a, args) = action(&mut rng);
        counts.actions.fetch_add(1, Ordering::Relaxed);
        match c.iohyve(a, args.clone()).await {
            Ok(_) => {}
            Err(hyve_client::ClientError::Action(m)) if rel::refused_by_rules(&m) => {
                counts.refused.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => return Err(format!("{a} {args}: {e}")),
        }
    }
    Ok(())
}

async fn state(c: &Client) -> Value {
    let vms = c.iohyve("listvms", json!({})).await.unwrap();
    let mut all = serde_json::Map::new();
    for name in vms.as_object().unwrap().keys() {
        all.insert(
            name.clone(),
            json!([
                c.iohyve("getprops", json!({"name": name})).await.unwrap(),
                c.iohyve("listdisks", json!({"name": name})).await.unwrap(),
            ]),
        );
    }
    Value::Object(all)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_clients_ten_guests_random_actions() {
    let secs = pick(20, 300);
    let seed = rel::seed();
    let dirs = GuestDirs::new();
    let cfg = dirs.root.path().join("c.toml");
    std::fs::write(&cfg, "[qemu]\naccel = \"tcg\"\n[vm]\nstop_timeout = 2\n").unwrap();
    let mut server = TestServer::start_with(&dirs.data(), &["--config", cfg.to_str().unwrap()]);
    let pools = vec![dirs.data().join("tank")];
    let c = server.client().await;
    setup(&c).await;
    let counts = Arc::new(Counts::default());
    let until = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for i in 0..CLIENTS {
        let w = server.client().await;
        tasks.push(tokio::spawn(worker(
            w,
            seed.wrapping_add(i as u64),
            until,
            counts.clone(),
        )));
    }
    for t in tasks {
        if let Err(e) = t.await.unwrap() {
            panic!(
                "HYVE_SEED={seed}: an error the rules do not call for: {e}\nserver log:\n{}",
                server.log()
            );
        }
    }
    let actions = counts.actions.load(Ordering::Relaxed);
    let refused = counts.refused.load(Ordering::Relaxed);
    assert!(refused > 0, "the guests were never contended");

    let opaque = BTreeSet::new();
    let seen = check_settled(&c, &pools, dirs.root.path(), &opaque, 20)
        .await
        .unwrap_or_else(|e| panic!("HYVE_SEED={seed}: {e}\nserver log:\n{}", server.log()));
    // The same after a SIGKILL, running guests re-adopted.
    let before = state(&c).await;
    let running_before = c.iohyve("listvms", json!({})).await.unwrap();
    drop(c);
    server.kill();
    let server = TestServer::start_with(&dirs.data(), &["--config", cfg.to_str().unwrap()]);
    let c = server.client().await;
    check_settled(&c, &pools, dirs.root.path(), &opaque, 20)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "HYVE_SEED={seed}, after SIGKILL: {e}\nserver log:\n{}",
                server.log()
            )
        });
    assert_eq!(
        state(&c).await,
        before,
        "the state changed across a SIGKILL"
    );
    let vmm = |v: &Value| -> BTreeSet<String> {
        v.as_object()
            .unwrap()
            .iter()
            .filter(|(_, s)| s["vmm"] == "YES")
            .map(|(n, _)| n.clone())
            .collect()
    };
    assert_eq!(
        vmm(&c.iohyve("listvms", json!({})).await.unwrap()),
        vmm(&running_before),
        "running guests were not all re-adopted"
    );
    rel::record(
        "concurrency",
        json!({
            "clients": CLIENTS, "guests": GUESTS, "seconds": secs,
            "actions": actions, "refused_by_rules": refused,
            "guests_at_end": seen.guests, "disks_at_end": seen.disks, "running_at_end": seen.running,
            "seed": seed,
        }),
    );
    drop(server);
    rel::kill_qemus(dirs.root.path());
}
