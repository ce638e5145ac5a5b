//! ftp:// downloads (suppaftp), in passive mode and binary type, logging
//! in with the user and password of the URL (anonymous without them).
//! The size comes from `SIZE` when the server answers it. An interrupted
//! FTP transfer fails the task; the partial file is not resumed, since FTP
//! offers no validator to prove the file did not change meanwhile.

use std::net::SocketAddr;

use suppaftp::tokio::AsyncFtpStream;
use suppaftp::types::FileType;
use suppaftp::Mode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use super::http::of_total;
use super::{finish_part, io_failure, open_part, Failure, FetchConfig, Job, Reporter, BUF_SIZE};
use crate::validate::percent_decode;

/// Percent-decoding of the user, password or path of a URL.
fn decode(what: &str, s: &str) -> Result<String, Failure> {
    percent_decode(s).ok_or_else(|| Failure::Failed(format!("the {what} in the URL is not UTF-8")))
}

pub async fn download(
    cfg: &FetchConfig,
    job: &Job,
    cancel: &CancellationToken,
    report: &dyn Reporter,
) -> Result<u64, Failure> {
    tokio::select! {
        _ = cancel.cancelled() => Err(Failure::Cancelled),
        r = transfer(cfg, job, report) => r,
    }
}

async fn transfer(cfg: &FetchConfig, job: &Job, report: &dyn Reporter) -> Result<u64, Failure> {
    let url = &job.url;
    let host = url.host_str().unwrap_or("").to_string();
    let port = url.port().unwrap_or(21);
    let hp = format!("{host}:{port}");
    let fail = |what: &str, e: &dyn std::fmt::Display| {
        Failure::Failed(format!("FTP server {hp}: {what}: {}", e.to_string().trim()))
    };
    let addr: SocketAddr = tokio::net::lookup_host((host.as_str(), port))
        .await
        .map_err(|e| Failure::Failed(format!("cannot resolve {host}: {e}")))?
        .next()
        .ok_or_else(|| Failure::Failed(format!("{host} has no address")))?;
    let mut ftp = AsyncFtpStream::connect_timeout(addr, cfg.connect_timeout)
        .await
        .map_err(|e| Failure::Failed(format!("could not connect to {hp}: {e}")))?;
    ftp.set_mode(Mode::Passive);
    let (user, pass) = if url.username().is_empty() {
        ("anonymous".to_string(), "anonymous@".to_string())
    } else {
        (
            decode("user name", url.username())?,
            decode("password", url.password().unwrap_or(""))?,
        )
    };
    let stall = cfg.stall_timeout;
    let hp2 = hp.clone();
    let timed = move |what: &'static str| {
        let hp = hp2.clone();
        move |_| {
            Failure::Failed(format!(
                "FTP server {hp}: no answer to {what} within {} s",
                stall.as_secs()
            ))
        }
    };
    tokio::time::timeout(stall, ftp.login(&user, &pass))
        .await
        .map_err(timed("the login"))?
        .map_err(|e| fail(&format!("login as '{user}' refused"), &e))?;
    tokio::time::timeout(stall, ftp.transfer_type(FileType::Binary))
        .await
        .map_err(timed("TYPE I"))?
        .map_err(|e| fail("binary mode refused", &e))?;
    // As RFC 1738 reads an FTP URL, the path is relative to where the
    // login lands (`%2F` at its start makes it absolute).
    let path = decode("path", url.path().strip_prefix('/').unwrap_or(url.path()))?;
    if path.is_empty() || path.ends_with('/') {
        return Err(Failure::Failed(format!(
            "the URL names a folder of {hp}, not a file"
        )));
    }
    let total = match tokio::time::timeout(stall, ftp.size(&path)).await {
        Ok(Ok(n)) => Some(n as u64),
        _ => None,
    };
    let mut stream = tokio::time::timeout(stall, ftp.retr_as_stream(&path))
        .await
        .map_err(timed("RETR"))?
        .map_err(|e| fail(&format!("cannot fetch {path}"), &e))?;
    let part = job.part_path();
    let mut f = open_part(&part, 0).await?;
    let mut buf = vec![0u8; BUF_SIZE];
    let mut done = 0u64;
    report.progress(0, total);
    loop {
        let n = match tokio::time::timeout(stall, stream.read(&mut buf)).await {
            Err(_) => {
                return Err(Failure::Failed(format!(
                    "the download stalled: no data from {hp} for {} s, after {}",
                    stall.as_secs(),
                    of_total(done, total)
                )))
            }
            Ok(Err(e)) => {
                return Err(Failure::Failed(format!(
                    "the FTP data connection from {hp} failed after {}: {e}",
                    of_total(done, total)
                )))
            }
            Ok(Ok(0)) => break,
            Ok(Ok(n)) => n,
        };
        f.write_all(&buf[..n])
            .await
            .map_err(|e| io_failure("write", &part, e))?;
        done += n as u64;
        report.progress(done, total);
    }
    finish_part(&mut f, &part).await?;
    tokio::time::timeout(stall, stream.finish())
        .await
        .map_err(timed("the end of the transfer"))?
        .map_err(|e| fail("the transfer did not complete", &e))?;
    if let Some(t) = total {
        if done != t {
            return Err(Failure::Failed(format!(
                "FTP server {hp} closed the data connection after {}",
                of_total(done, Some(t))
            )));
        }
    }
    let _ = tokio::time::timeout(stall, ftp.quit()).await;
    Ok(done)
}
