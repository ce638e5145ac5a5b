//! Fault suite 4, load: a soak of mixed requests (reads, property writes,
//! guests made and deleted, subscriptions, REST with tokens and with
//! passwords) from many connections, some kept and some opened and closed
//! all the time. The server's memory (VmRSS) and open descriptors are
//! sampled after a warm-up and again once the soak is over and its
//! connections closed: nothing grows that does not come back.
//!
//! Short in CI; `HYVE_LONG=1` soaks for ten minutes.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::reliability::{self as rel, pick};
use common::*;
use serde_json::json;

const KEPT: usize = 16;
const CHURNING: usize = 8;
const REST: usize = 4;

#[derive(Default)]
struct Counts {
    requests: AtomicUsize,
    connections: AtomicUsize,
}

/// One client's mixed requests until `until`; `churn`: a new connection
/// every 20 requests.
async fn client_load(
    server: Arc<TestServer>,
    i: usize,
    until: Instant,
    churn: bool,
    counts: Arc<Counts>,
) -> Result<(), String> {
    let mut c = server.client().await;
    counts.connections.fetch_add(1, Ordering::Relaxed);
    let mine = format!("load{i}");
    let mut n = 0u64;
    while Instant::now() < until {
        n += 1;
        if churn && n.is_multiple_of(20) {
            c = server.client().await;
            counts.connections.fetch_add(1, Ordering::Relaxed);
        }
        let shared = format!("base{}", n % 5);
        let r = match n % 10 {
            0 => {
                c.iohyve("create", json!({"name": mine, "size": "4M"}))
                    .await
            }
            1 => {
                c.iohyve(
                    "setprop",
                    json!({"name": shared, "description": format!("n{n}")}),
                )
                .await
            }
            2 => c.iohyve("getprops", json!({"name": shared})).await,
            3 => c.iohyve("listdisks", json!({"name": shared})).await,
            4 => c.call("events", "subscribe", json!(["dispatcher"])).await,
            5 => c.call("rpc", "dispatcher", json!({"action": "list"})).await,
            6 => c.iohyve("consolelog", json!({"name": shared})).await,
            7 => c.iohyve("listisos", json!({})).await,
            8 => c.iohyve("delete", json!({"name": mine})).await,
            _ => c.iohyve("listvms", json!({})).await,
        };
        counts.requests.fetch_add(1, Ordering::Relaxed);
        match r {
            Ok(_) => {}
            Err(hyve_client::ClientError::Action(m))
                if m.contains("already exists") || m.contains("No such guest") => {}
            Err(e) => return Err(format!("client {i} request {n}: {e}")),
        }
    }
    Ok(())
}

async fn rest_load(
    server: Arc<TestServer>,
    i: usize,
    until: Instant,
    counts: Arc<Counts>,
) -> Result<(), String> {
    let http = server.http();
    let token = server.token().await;
    let mut n = 0u64;
    while Instant::now() < until {
        n += 1;
        let req = http.put(format!("{}/sysadm/iohyve", server.rest));
        // Now and then a password instead of a token: the slow path.
        let req = if n.is_multiple_of(25) {
            req.basic_auth(USER, Some(PASSWORD))
        } else {
            req.bearer_auth(&token)
        };
        let body = match n % 3 {
            0 => json!({"action": "listvms"}),
            1 => json!({"action": "getprops", "name": format!("base{}", n % 5)}),
            _ => json!({"action": "version"}),
        };
        let r = req
            .body(body.to_string())
            .send()
            .await
            .map_err(|e| format!("rest {i}: {e}"))?;
        counts.requests.fetch_add(1, Ordering::Relaxed);
        if r.status() != 200 {
            return Err(format!("rest {i} request {n}: {}", r.status()));
        }
        r.bytes().await.map_err(|e| e.to_string())?;
    }
    Ok(())
}

async fn soak(server: &Arc<TestServer>, secs: u64, counts: &Arc<Counts>) {
    let until = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for i in 0..KEPT + CHURNING {
        tasks.push(tokio::spawn(client_load(
            server.clone(),
            i,
            until,
            i >= KEPT,
            counts.clone(),
        )));
    }
    for i in 0..REST {
        tasks.push(tokio::spawn(rest_load(
            server.clone(),
            i,
            until,
            counts.clone(),
        )));
    }
    for t in tasks {
        if let Err(e) = t.await.unwrap() {
            panic!("{e}\nserver log:\n{}", server.log());
        }
    }
}

/// Memory and descriptors once the connections of a soak are gone.
async fn at_rest(server: &TestServer, want_fds: Option<usize>) -> rel::Usage {
    tokio::time::sleep(Duration::from_secs(2)).await;
    if let Some(w) = want_fds {
        rel::fds_settle(server.pid(), w, 20).await;
    }
    rel::usage(server.pid())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_soak_gives_back_what_it_takes() {
    let secs = pick(20, 600);
    let dir = data_dir();
    let server = Arc::new(TestServer::start(dir.path()));
    {
        let c = server.client().await;
        setup(&c).await;
        for i in 0..5 {
            c.iohyve("create", json!({"name": format!("base{i}"), "size": "4M"}))
                .await
                .unwrap();
        }
        std::fs::write(iso_dir(dir.path()).join("a.iso"), b"iso").unwrap();
    }
    let counts = Arc::new(Counts::default());
    // A warm-up, so that caches, pools and the allocator reach their size.
    soak(&server, pick(6, 60), &counts).await;
    let warm = at_rest(&server, None).await;
    let started = Instant::now();
    soak(&server, secs, &counts).await;
    let peak = rel::usage(server.pid());
    let after = at_rest(&server, Some(warm.fds)).await;
    assert!(
        after.fds <= warm.fds + 1,
        "descriptors: {} after the warm-up, {} after the soak",
        warm.fds,
        after.fds
    );
    assert!(
        after.rss_kb <= warm.rss_kb + 16 * 1024,
        "memory: {} kB after the warm-up, {} kB after a {secs} s soak",
        warm.rss_kb,
        after.rss_kb
    );
    // Still serving, and the store is as the soak left it.
    let c = server.client().await;
    let seen = rel::check_settled(
        &c,
        &[dir.path().join("tank")],
        dir.path(),
        &["a.iso".to_string()].into_iter().collect(),
        10,
    )
    .await
    .unwrap();
    assert!(seen.guests >= 5);
    rel::record(
        "load",
        json!({
            "seconds": started.elapsed().as_secs(),
            "kept_connections": KEPT, "churning_clients": CHURNING, "rest_clients": REST,
            "requests": counts.requests.load(Ordering::Relaxed),
            "connections_opened": counts.connections.load(Ordering::Relaxed),
            "rss_kb_after_warmup": warm.rss_kb, "rss_kb_end_of_soak": peak.rss_kb, "rss_kb_after": after.rss_kb,
            "fds_after_warmup": warm.fds, "fds_end_of_soak": peak.fds, "fds_after": after.fds,
        }),
    );
}
