//! Measurement 6: event fan-out to many subscribed WebSocket clients.
//!
//! `subscribers` connections log in (Bearer token on the upgrade) and
//! subscribe to `dispatcher`. A `fetchiso` then downloads from the origin's
//! paced URL: 100 chunks, one every 300 ms (longer than the server's
//! 250 ms between two progress events of a task), so each chunk makes
//! exactly one progress event, whose `percent_done` is the chunk's number.
//! The origin records when it hands chunk k to the connection; every
//! subscriber records when the frame with `percent_done` k% arrives. The
//! figure per event is the time from the chunk leaving the origin to the
//! frame's arrival at the last subscriber: the server's whole path (read
//! the chunk, write it to the partial file, publish, render, encrypt, send
//! 1,000 frames) plus the reading in this process, an upper bound on the
//! fan-out alone. The first subscriber's arrival is reported too.

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use futures_util::stream::{self, StreamExt, TryStreamExt};
use futures_util::SinkExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use crate::hyve::{Hyve, RawWs};
use crate::origin::Origin;
use crate::stats::Dist;

pub struct Fanout {
    pub subscribers: usize,
    pub events: usize,
    /// Chunk sent to arrival at the last subscriber, per event.
    pub last: Dist,
    /// ...at the first subscriber.
    pub first: Dist,
    /// Every (subscriber, event) arrival.
    pub all: Dist,
    /// Progress frames expected but not seen.
    pub missing: u64,
}

/// `"percent_done":"37%"` in a running progress frame → 37.
fn percent(frame: &str) -> Option<usize> {
    if !frame.contains("\"state\":\"running\"") {
        return None;
    }
    let at = frame.find("\"percent_done\":\"")? + "\"percent_done\":\"".len();
    let end = frame[at..].find('%')?;
    frame[at..at + end].parse().ok()
}

/// Reads frames until the task's `finished` event; returns (percent,
/// arrival) of every progress frame.
async fn listen(mut ws: RawWs) -> anyhow::Result<(RawWs, Vec<(usize, Instant)>)> {
    let mut seen = Vec::new();
    loop {
        let m = tokio::time::timeout(Duration::from_secs(120), ws.next())
            .await
            .map_err(|_| anyhow!("no event within 120 s"))?;
        let now = Instant::now();
        match m {
            Some(Ok(Message::Text(t))) => {
                if let Some(p) = percent(&t) {
                    seen.push((p, now));
                } else if t.contains("\"state\":\"finished\"") {
                    return Ok((ws, seen));
                }
            }
            Some(Ok(_)) => continue,
            _ => bail!("a subscriber's connection closed"),
        }
    }
}

pub async fn run(
    h: &Hyve,
    origin: &Origin,
    subscribers: usize,
    rounds: usize,
) -> anyhow::Result<Fanout> {
    // Connect and subscribe, 16 at a time.
    let mut subs: Vec<RawWs> = stream::iter(0..subscribers)
        .map(|_| async {
            let mut ws = h.raw().await?;
            let sub = json!({"namespace": "events", "name": "subscribe", "id": "s", "args": "dispatcher"});
            ws.send(Message::Text(sub.to_string().into())).await?;
            loop {
                match ws.next().await {
                    Some(Ok(Message::Text(t))) if t.contains("\"subscribe\"") => break,
                    Some(Ok(_)) => continue,
                    _ => bail!("subscribe failed"),
                }
            }
            anyhow::Ok(ws)
        })
        .buffer_unordered(16)
        .try_collect()
        .await?;
    let c = h.client().await?;
    let mut f = Fanout {
        subscribers,
        events: 0,
        last: Dist::default(),
        first: Dist::default(),
        all: Dist::default(),
        missing: 0,
    };
    for round in 0..rounds {
        let tasks: Vec<_> = subs.drain(..).map(|ws| tokio::spawn(listen(ws))).collect();
        let name = format!("paced{round}.iso");
        c.iohyve(
            "fetchiso",
            json!({"url": origin.url(&format!("/paced/{name}")), "name": name}),
        )
        .await?;
        let mut arrivals: Vec<Vec<(usize, Instant)>> = Vec::new();
        for t in tasks {
            let (ws, seen) = t.await??;
            subs.push(ws);
            arrivals.push(seen);
        }
        let sent = origin.sent.lock().unwrap().clone();
        // Chunk k (1-based) makes k% for k < 100; 100% is the end.
        for k in 1..sent.len().min(100) {
            let t0 = sent[k - 1];
            let mut got: Vec<Duration> = arrivals
                .iter()
                .filter_map(|a| {
                    a.iter()
                        .find(|(p, _)| *p == k)
                        .map(|(_, t)| t.saturating_duration_since(t0))
                })
                .collect();
            f.missing += (subscribers - got.len()) as u64;
            if got.is_empty() {
                continue;
            }
            got.sort();
            f.first.record(got[0]);
            f.last.record(*got.last().expect("not empty"));
            for d in &got {
                f.all.record(*d);
            }
            f.events += 1;
        }
        c.iohyve("rmiso", json!({ "target": name })).await?;
    }
    Ok(f)
}
