//! Measurements 1 and 2: listvms latency over WebSocket and REST on a
//! connection that is already logged in, `hyve list` against
//! `virsh list --all` as whole processes, and listvms throughput with many
//! WebSocket clients.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::hyve::{frame, Hyve, RawWs};
use crate::libvirt;
use crate::stats::Dist;

/// Waits for the next text frame.
async fn next_text(ws: &mut RawWs) -> anyhow::Result<String> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => return Ok(t.to_string()),
            Some(Ok(Message::Close(_))) | None => bail!("the server closed the connection"),
            Some(Ok(_)) => continue,
            Some(Err(e)) => bail!("read failed: {e}"),
        }
    }
}

/// The number of guests in a listvms reply frame.
fn guests_in(reply: &str) -> anyhow::Result<usize> {
    let v: Value = serde_json::from_str(reply)?;
    v["args"]["listvms"]
        .as_object()
        .map(|m| m.len())
        .ok_or_else(|| anyhow!("not a listvms reply: {}", &reply[..reply.len().min(200)]))
}

/// `samples` listvms round trips over one logged-in WebSocket (after a
/// warm-up), each from sending the frame to having the whole reply frame.
/// The reply is not parsed in the timed loop (the first is, to check it
/// lists `expect` guests).
pub async fn ws_latency(h: &Hyve, expect: usize, samples: usize) -> anyhow::Result<Dist> {
    let mut ws = h.raw().await?;
    let msg = Message::Text(frame("l", json!({"action": "listvms"})).into());
    ws.send(msg.clone()).await?;
    let n = guests_in(&next_text(&mut ws).await?)?;
    if n != expect {
        bail!("listvms lists {n} guests, expected {expect}");
    }
    let mut d = Dist::default();
    for i in 0..samples + samples / 10 + 10 {
        let t = Instant::now();
        ws.send(msg.clone()).await?;
        next_text(&mut ws).await?;
        if i >= samples / 10 + 10 {
            d.record(t.elapsed());
        }
    }
    Ok(d)
}

/// The same over REST: `PUT /sysadm/iohyve` on a kept-alive HTTPS
/// connection with a Bearer token.
pub async fn rest_latency(h: &Hyve, expect: usize, samples: usize) -> anyhow::Result<Dist> {
    let http = h.http()?;
    let url = format!("{}/sysadm/iohyve", h.rest);
    let body = json!({"action": "listvms"}).to_string();
    let send = || {
        http.put(&url)
            .bearer_auth(&h.token)
            .body(body.clone())
            .send()
    };
    let first: Value = send().await?.error_for_status()?.json().await?;
    let n = first["args"]["listvms"].as_object().map_or(0, |m| m.len());
    if n != expect {
        bail!("REST listvms lists {n} guests, expected {expect}");
    }
    let mut d = Dist::default();
    for i in 0..samples + samples / 10 + 10 {
        let t = Instant::now();
        let r = send().await?;
        if !r.status().is_success() {
            bail!("REST listvms answered {}", r.status());
        }
        r.bytes().await?;
        if i >= samples / 10 + 10 {
            d.record(t.elapsed());
        }
    }
    Ok(d)
}

/// `hyve list` and `virsh list --all` as whole processes, one after the
/// other, `runs` times each (after one untimed run of each).
pub fn processes(h: &Hyve, runs: usize) -> anyhow::Result<(Dist, Dist)> {
    let (mut ours, mut theirs) = (Dist::default(), Dist::default());
    for i in 0..=runs {
        let a = crate::proc::timed(h.cli().arg("list"))?;
        let b = crate::proc::timed(libvirt::virsh().args(["list", "--all"]))?;
        if i > 0 {
            ours.record(a);
            theirs.record(b);
        }
    }
    Ok((ours, theirs))
}

/// Throughput of one round.
pub struct Round {
    pub requests: u64,
    pub secs: f64,
    pub server_cpu: Duration,
    pub client_cpu: Duration,
}

impl Round {
    pub fn rps(&self) -> f64 {
        self.requests as f64 / self.secs
    }
}

/// `clients` WebSocket connections, each sending listvms and waiting for
/// its reply in a loop, for `secs`; one untimed warm-up round first.
pub async fn throughput(
    h: &Hyve,
    clients: usize,
    secs: f64,
    rounds: usize,
) -> anyhow::Result<Vec<Round>> {
    let mut conns = Vec::new();
    for _ in 0..clients {
        conns.push(h.raw().await?);
    }
    let msg = Message::Text(frame("t", json!({"action": "listvms"})).into());
    let mut out = Vec::new();
    for round in 0..=rounds {
        let stop = Arc::new(AtomicBool::new(false));
        let count = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for mut ws in conns.drain(..) {
            let (stop, count, msg) = (stop.clone(), count.clone(), msg.clone());
            tasks.push(tokio::spawn(async move {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    ws.send(msg.clone()).await?;
                    next_text(&mut ws).await?;
                    n += 1;
                }
                count.fetch_add(n, Ordering::Relaxed);
                anyhow::Ok(ws)
            }));
        }
        let (s0, c0) = (
            crate::proc::cpu_time(h.pid),
            crate::proc::cpu_time(std::process::id()),
        );
        let t = Instant::now();
        let len = if round == 0 { 1.0 } else { secs };
        tokio::time::sleep(Duration::from_secs_f64(len)).await;
        stop.store(true, Ordering::Relaxed);
        for task in tasks {
            conns.push(task.await??);
        }
        let r = Round {
            requests: count.load(Ordering::Relaxed),
            secs: t.elapsed().as_secs_f64(),
            server_cpu: crate::proc::cpu_time(h.pid).saturating_sub(s0),
            client_cpu: crate::proc::cpu_time(std::process::id()).saturating_sub(c0),
        };
        if round > 0 {
            out.push(r);
        }
    }
    Ok(out)
}

/// `hyve list` as a process must print one line per guest plus the head.
pub fn check_cli(h: &Hyve, expect: usize) -> anyhow::Result<()> {
    let out = crate::proc::output(h.cli().arg("list"))?;
    let lines = out.lines().count();
    if lines != expect + 1 {
        bail!("hyve list printed {lines} lines for {expect} guests");
    }
    Ok(())
}
