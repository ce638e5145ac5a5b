//! Measurement 5: fetchiso of a large file over loopback HTTP against
//! `curl -o` from the same origin, and the server's memory meanwhile.
//!
//! hyve's time runs from the `fetchiso` request to the task's `finished`
//! event (the ISO fsynced, checked and renamed into place); curl's from
//! its start to its exit, and then, separately, the fsync of its file, so
//! that both a plain `curl -o` and one made as durable as hyve's download
//! are shown. The file systems are synced (untimed) before every run. The
//! server's VmRSS is sampled every 2 ms during its download.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use serde_json::json;

use crate::hyve::Hyve;
use crate::origin::Origin;

pub struct Fetch {
    pub bytes: u64,
    /// Seconds per run.
    pub hyve: Vec<f64>,
    pub curl: Vec<f64>,
    pub curl_fsync: Vec<f64>,
    /// Peak VmRSS above the RSS before the request, KiB, per run.
    pub growth_kib: Vec<u64>,
    pub rss_before_kib: Vec<u64>,
}

/// Waits for the task's `finished` event; errors unless it succeeded.
async fn finished(
    events: &mut tokio::sync::mpsc::UnboundedReceiver<serde_json::Value>,
    id: &str,
) -> anyhow::Result<()> {
    loop {
        let ev = tokio::time::timeout(Duration::from_secs(600), events.recv())
            .await
            .map_err(|_| anyhow!("no finished event within 10 minutes"))?
            .ok_or_else(|| anyhow!("the event stream ended"))?;
        let a = &ev["args"];
        if a["process_details"]["process_id"] != id || a["state"] != "finished" {
            continue;
        }
        let rc = a["process_details"]
            .as_object()
            .and_then(|d| d.iter().find(|(k, _)| k.starts_with("return_codes/")))
            .map(|(_, v)| v.clone());
        if rc != Some(json!("0")) {
            bail!("the download failed: {}", a["error"]);
        }
        return Ok(());
    }
}

pub async fn run(
    h: &Hyve,
    origin: &Origin,
    work: &Path,
    bytes: u64,
    rounds: usize,
) -> anyhow::Result<Fetch> {
    let c = h.client().await?;
    c.subscribe(&["dispatcher"]).await?;
    let mut events = c.take_events().ok_or_else(|| anyhow!("no event stream"))?;
    let dir = work.join("fetch");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let mut f = Fetch {
        bytes,
        hyve: vec![],
        curl: vec![],
        curl_fsync: vec![],
        growth_kib: vec![],
        rss_before_kib: vec![],
    };
    for round in 0..rounds {
        // hyve
        crate::proc::sync_all();
        let name = format!("fetch{round}.iso");
        let before = h.memory_kib().0;
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(before));
        let pid = h.pid;
        let sampler = {
            let (stop, peak) = (stop.clone(), peak.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if let Some((rss, _)) = crate::proc::memory_kib(pid) {
                        peak.fetch_max(rss, Ordering::Relaxed);
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
            })
        };
        let t = Instant::now();
        let r = c
            .iohyve(
                "fetchiso",
                json!({"url": origin.url(&format!("/big/{name}")), "name": name}),
            )
            .await?;
        let id = r["queueid"].as_str().unwrap_or_default().to_string();
        finished(&mut events, &id).await?;
        let secs = t.elapsed().as_secs_f64();
        stop.store(true, Ordering::Relaxed);
        let _ = sampler.join();
        f.hyve.push(secs);
        f.rss_before_kib.push(before);
        f.growth_kib
            .push(peak.load(Ordering::Relaxed).saturating_sub(before));
        let iso = h.data.join("tank/iohyve/ISO").join(&name);
        let len = std::fs::metadata(&iso)?.len();
        if len != bytes {
            bail!("the ISO has {len} bytes, expected {bytes}");
        }
        c.iohyve("rmiso", json!({ "target": name })).await?;
        // curl -o, then its fsync
        crate::proc::sync_all();
        let out = dir.join("curl.iso");
        let d = crate::proc::timed(
            std::process::Command::new("curl")
                .args(["-s", "-f", "-o"])
                .arg(&out)
                .arg(origin.url("/big/curl.iso")),
        )?;
        let t = Instant::now();
        std::fs::File::open(&out)?.sync_all()?;
        let sync = t.elapsed();
        f.curl.push(d.as_secs_f64());
        f.curl_fsync.push((d + sync).as_secs_f64());
        std::fs::remove_file(&out)?;
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(f)
}
