//! http:// and https:// downloads (reqwest over rustls).
//!
//! The body is streamed chunk by chunk into the partial file, each chunk
//! awaited under the stall timeout. An interrupted transfer (the server
//! closed the connection, a read failed or stalled) is resumed with a
//! `Range` request from the bytes already on disk, guarded by `If-Range`
//! with the first response's validator so that a file changed on the
//! server is fetched anew rather than spliced. A partial file left by a
//! restart is resumed the same way.

use reqwest::header::{
    ACCEPT_RANGES, CONTENT_RANGE, ETAG, IF_RANGE, LAST_MODIFIED, RANGE, USER_AGENT,
};
use reqwest::StatusCode;
use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;

use super::{
    finish_part, io_failure, open_part, redact, Failure, FetchConfig, Job, Reporter, Writeback,
    BUF_SIZE,
};
use crate::error::Error;

/// The http client every download shares: connect timeout, bounded
/// redirects, TLS 1.2 or newer, the configured extra CAs on top of the
/// built-in roots, and no proxy from the environment (a root daemon should
/// not change where it connects because of a variable it inherited).
pub fn client(cfg: &FetchConfig) -> Result<reqwest::Client, Error> {
    let mut b = reqwest::Client::builder()
        .use_rustls_tls()
        .min_tls_version(reqwest::tls::Version::TLS_1_2)
        .connect_timeout(cfg.connect_timeout)
        .redirect(reqwest::redirect::Policy::limited(cfg.max_redirects))
        .no_proxy();
    for pem in &cfg.ca_pems {
        let certs = reqwest::Certificate::from_pem_bundle(pem)
            .map_err(|e| Error::invalid(format!("a [fetch] ca_files entry is not PEM: {e}")))?;
        for c in certs {
            b = b.add_root_certificate(c);
        }
    }
    b.build()
        .map_err(|e| Error::internal(format!("cannot build the http client: {e}")))
}

/// The sentence for a failed request, with the innermost cause (reqwest's
/// own text stops at "error sending request").
fn describe(e: &reqwest::Error, url: &url::Url) -> String {
    let mut cause = String::new();
    let mut src: Option<&dyn std::error::Error> = std::error::Error::source(e);
    while let Some(s) = src {
        cause = s.to_string();
        src = s.source();
    }
    let host = url.host_str().unwrap_or("");
    let port = url.port_or_known_default().unwrap_or(0);
    if e.is_redirect() {
        return format!("too many redirects fetching {}", redact(url));
    }
    if e.is_connect() {
        if e.is_timeout() {
            return format!("could not connect to {host}:{port}: timed out");
        }
        if cause.contains("certificate") {
            return format!(
                "could not connect to {host}:{port}: {cause}; if a private CA signed its certificate, add that CA to the config's [fetch] ca_files"
            );
        }
        return format!("could not connect to {host}:{port}: {cause}");
    }
    if e.is_timeout() {
        return format!("{host}:{port} did not answer in time");
    }
    if cause.is_empty() {
        format!("the request to {host}:{port} failed: {e}")
    } else {
        format!("the request to {host}:{port} failed: {cause}")
    }
}

/// `bytes <start>-<end>/<total>` → (start, total).
fn content_range(v: &str) -> Option<(u64, Option<u64>)> {
    let rest = v.trim().strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let (start, _end) = range.split_once('-')?;
    let total = if total == "*" {
        None
    } else {
        Some(total.parse().ok()?)
    };
    Some((start.parse().ok()?, total))
}

/// A strong ETag, else Last-Modified: what `If-Range` may carry.
fn validator_of(resp: &reqwest::Response) -> Option<String> {
    let h = resp.headers();
    if let Some(e) = h.get(ETAG).and_then(|v| v.to_str().ok()) {
        if !e.starts_with("W/") {
            return Some(e.to_string());
        }
    }
    h.get(LAST_MODIFIED)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// Why one attempt stopped short.
enum Interrupted {
    /// Worth resuming: the connection dropped or stalled mid-body.
    Resumable(String),
    /// The partial file cannot be resumed: start over from the first byte.
    Restart(String),
    /// Not worth another try.
    Fatal(Failure),
}

impl From<Failure> for Interrupted {
    fn from(f: Failure) -> Self {
        Interrupted::Fatal(f)
    }
}

/// Downloads `job` into its partial file; returns its length.
pub async fn download(
    client: &reqwest::Client,
    cfg: &FetchConfig,
    job: &Job,
    cancel: &CancellationToken,
    report: &dyn Reporter,
) -> Result<u64, Failure> {
    let part = job.part_path();
    // A partial file is only resumed under a validator it was fetched with.
    let mut offset = match (&job.validator, tokio::fs::metadata(&part).await) {
        (Some(_), Ok(m)) if m.is_file() => m.len(),
        _ => 0,
    };
    let mut validator = job.validator.clone().filter(|_| offset > 0);
    let mut attempts = 0u32;
    loop {
        let r = attempt(client, cfg, job, cancel, report, offset, &mut validator).await;
        match r {
            Ok(len) => return Ok(len),
            Err(Interrupted::Fatal(f)) => return Err(f),
            Err(Interrupted::Restart(why)) => {
                if attempts >= cfg.retries {
                    return Err(Failure::Failed(why));
                }
                attempts += 1;
                tracing::info!(url = %redact(&job.url), reason = %why, "starting an interrupted download over");
                offset = 0;
                validator = None;
            }
            Err(Interrupted::Resumable(why)) => {
                let have = tokio::fs::metadata(&part)
                    .await
                    .map(|m| m.len())
                    .unwrap_or(0);
                if attempts >= cfg.retries || validator.is_none() {
                    return Err(Failure::Failed(why));
                }
                attempts += 1;
                tracing::info!(url = %redact(&job.url), have, attempt = attempts, reason = %why, "resuming an interrupted download");
                offset = have;
            }
        }
    }
}

async fn attempt(
    client: &reqwest::Client,
    cfg: &FetchConfig,
    job: &Job,
    cancel: &CancellationToken,
    report: &dyn Reporter,
    offset: u64,
    validator: &mut Option<String>,
) -> Result<u64, Interrupted> {
    let url = &job.url;
    let mut req = client
        .get(url.clone())
        .header(USER_AGENT, concat!("hyve/", env!("CARGO_PKG_VERSION")));
    if offset > 0 {
        req = req.header(RANGE, format!("bytes={offset}-"));
        if let Some(v) = validator.as_deref() {
            req = req.header(IF_RANGE, v);
        }
    }
    // The connect timeout is reqwest's; waiting for the headers after that
    // is a stall like any other.
    let send = tokio::time::timeout(cfg.connect_timeout + cfg.stall_timeout, req.send());
    let resp = tokio::select! {
        _ = cancel.cancelled() => return Err(Failure::Cancelled.into()),
        r = send => match r {
            Err(_) => return Err(Failure::Failed(format!(
                "{} sent no answer within {} s", host_port(url), (cfg.connect_timeout + cfg.stall_timeout).as_secs()
            )).into()),
            Ok(Err(e)) => return Err(Failure::Failed(describe(&e, url)).into()),
            Ok(Ok(r)) => r,
        },
    };
    let status = resp.status();
    let (start, total) = match status {
        StatusCode::OK => {
            let total = resp.content_length();
            (0, total)
        }
        StatusCode::PARTIAL_CONTENT if offset > 0 => {
            let cr = resp
                .headers()
                .get(CONTENT_RANGE)
                .and_then(|v| v.to_str().ok())
                .and_then(content_range);
            match cr {
                Some((s, t)) if s == offset => (s, t),
                _ => {
                    return Err(Failure::Failed(format!(
                        "{} answered the resume request with a range other than the one asked for",
                        host_port(url)
                    ))
                    .into())
                }
            }
        }
        StatusCode::RANGE_NOT_SATISFIABLE if offset > 0 => {
            // The partial file may hold the whole file already.
            let full = resp
                .headers()
                .get(CONTENT_RANGE)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().strip_prefix("bytes */"))
                .and_then(|t| t.parse::<u64>().ok());
            if full == Some(offset) {
                report.progress(offset, Some(offset));
                return Ok(offset);
            }
            return Err(Interrupted::Restart(
                "the server refused to resume the download".into(),
            ));
        }
        StatusCode::NOT_FOUND => {
            return Err(Failure::Failed(format!(
                "{} has no file at {} (404 Not Found)",
                host_port(url),
                redact(resp.url())
            ))
            .into())
        }
        s => {
            return Err(Failure::Failed(format!(
                "{} answered {} for {}",
                host_port(url),
                s,
                redact(resp.url())
            ))
            .into())
        }
    };
    // A 200 to a Range request means the file changed (If-Range) or the
    // server does not do ranges: start over.
    let fresh = validator_of(&resp);
    let ranges = resp
        .headers()
        .get(ACCEPT_RANGES)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("bytes"))
        || status == StatusCode::PARTIAL_CONTENT;
    *validator = if ranges { fresh } else { None };
    if let Some(v) = validator.as_deref() {
        report.validator(v).await;
    }
    let part = job.part_path();
    let mut f = open_part(&part, start).await?;
    let mut writeback = Writeback::new(&f).await;
    // Network chunks are small (a few KiB); each write to the file is a
    // trip to a blocking thread, so they are gathered first.
    let mut buf: Vec<u8> = Vec::with_capacity(BUF_SIZE * 2);
    let mut done = start;
    report.progress(done, total);
    let mut resp = resp;
    loop {
        let chunk = tokio::select! {
            _ = cancel.cancelled() => return Err(Failure::Cancelled.into()),
            c = tokio::time::timeout(cfg.stall_timeout, resp.chunk()) => c,
        };
        match chunk {
            Err(_) => {
                drain(&mut f, &mut buf, &part).await?;
                finish_part(&mut f, &part).await?;
                return Err(Interrupted::Resumable(format!(
                    "the download stalled: no data from {} for {} s, after {}",
                    host_port(url),
                    cfg.stall_timeout.as_secs(),
                    of_total(done, total)
                )));
            }
            Ok(Err(_)) => {
                drain(&mut f, &mut buf, &part).await?;
                finish_part(&mut f, &part).await?;
                return Err(Interrupted::Resumable(format!(
                    "{} closed the connection after {}",
                    host_port(url),
                    of_total(done, total)
                )));
            }
            Ok(Ok(None)) => break,
            Ok(Ok(Some(bytes))) => {
                buf.extend_from_slice(&bytes);
                if buf.len() >= BUF_SIZE {
                    drain(&mut f, &mut buf, &part).await?;
                }
                done += bytes.len() as u64;
                writeback.wrote(bytes.len());
                report.progress(done, total);
            }
        }
    }
    drain(&mut f, &mut buf, &part).await?;
    finish_part(&mut f, &part).await?;
    if let Some(t) = total {
        if done != t {
            return Err(Interrupted::Resumable(format!(
                "{} closed the connection after {}",
                host_port(url),
                of_total(done, t.into())
            )));
        }
    }
    Ok(done)
}

/// Writes the gathered bytes to the partial file.
async fn drain(
    f: &mut tokio::fs::File,
    buf: &mut Vec<u8>,
    part: &std::path::Path,
) -> Result<(), Failure> {
    if !buf.is_empty() {
        f.write_all(buf)
            .await
            .map_err(|e| io_failure("write", part, e))?;
        buf.clear();
    }
    Ok(())
}

fn host_port(url: &url::Url) -> String {
    format!(
        "{}:{}",
        url.host_str().unwrap_or(""),
        url.port_or_known_default().unwrap_or(0)
    )
}

/// "1048576 of 4194304 bytes" or "1048576 bytes".
pub(crate) fn of_total(done: u64, total: Option<u64>) -> String {
    match total {
        Some(t) => format!("{done} of {t} bytes"),
        None => format!("{done} bytes"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_ranges() {
        assert_eq!(content_range("bytes 100-199/200"), Some((100, Some(200))));
        assert_eq!(content_range("bytes 5-9/*"), Some((5, None)));
        assert_eq!(content_range("bytes */200"), None);
        assert_eq!(content_range("items 1-2/3"), None);
    }
}
