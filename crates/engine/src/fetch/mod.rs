//! Downloading installation ISOs into the ISO store.
//!
//! Every scheme writes to `<iso>.part` beside the finished ISOs (the store
//! never lists `*.part`), streaming with a fixed-size buffer. When the last
//! byte is in, the file is fsynced, its SHA-256 checked if one was given,
//! and only then renamed to its name, without replacing anything, under the
//! engine's registry lock so that it never races a `renameiso` or `rmiso`.
//! Any failure removes the partial file: a user never sees half an ISO.
//!
//! One module per scheme: [`http`] (http and https, with resume), [`ftp`]
//! (passive mode) and [`file`] (only below the configured folders).

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;

use crate::engine::Engine;
use crate::error::Error;
use crate::fsutil::{fsync_dir, rename_noreplace};
use crate::validate::PARTIAL_SUFFIX;

pub mod file;
pub mod ftp;
pub mod http;

/// How downloads behave, from the config's `[fetch]`.
#[derive(Debug, Clone)]
pub struct FetchConfig {
    /// Giving up on a connection that is not established within this.
    pub connect_timeout: Duration,
    /// Giving up when no byte arrives for this long.
    pub stall_timeout: Duration,
    /// Redirects followed at most, per request.
    pub max_redirects: usize,
    /// How often an interrupted http(s) download is resumed (with a Range
    /// request) before the task fails.
    pub retries: u32,
    /// `file://` URLs may only read below these folders (canonical paths).
    pub file_roots: Vec<PathBuf>,
    /// Extra certificate authorities (PEM) trusted for https.
    pub ca_pems: Vec<Vec<u8>>,
}

impl Default for FetchConfig {
    fn default() -> Self {
        FetchConfig {
            connect_timeout: Duration::from_secs(30),
            stall_timeout: Duration::from_secs(60),
            max_redirects: 5,
            retries: 3,
            file_roots: Vec::new(),
            ca_pems: Vec::new(),
        }
    }
}

/// What one download is to do.
#[derive(Debug, Clone)]
pub struct Job {
    pub url: url::Url,
    /// The ISO's name in the store.
    pub name: String,
    /// The expected SHA-256 (lower-case hex), checked before the rename.
    pub sha256: Option<String>,
    /// The ISO store it goes to.
    pub iso_dir: PathBuf,
    /// For an http(s) download resumed after a restart: the validator
    /// (ETag or Last-Modified) the partial file was fetched under.
    pub validator: Option<String>,
    /// For a download cut short while its complete file was being put in
    /// place: that file's [`file_identity`], recorded before the rename.
    pub placing: Option<String>,
}

impl Job {
    pub fn part_path(&self) -> PathBuf {
        self.iso_dir.join(format!("{}{PARTIAL_SUFFIX}", self.name))
    }

    pub fn dest_path(&self) -> PathBuf {
        self.iso_dir.join(&self.name)
    }
}

/// Where a download tells how it is going.
pub trait Reporter: Send + Sync {
    /// `done` bytes are in the partial file, of `total` if known.
    fn progress(&self, done: u64, total: Option<u64>);
    /// The http(s) validator of the content being fetched, to resume
    /// safely after a restart. Awaited before the first byte is written,
    /// so a partial file never exists without the validator on record.
    fn validator<'a>(&'a self, v: &'a str) -> BoxFuture<'a>;
    /// The [`file_identity`] of the complete, checked file, awaited just
    /// before it is renamed into place: a restart that finds the ISO with
    /// this identity knows the download ended, and does not run it again.
    fn placing<'a>(&'a self, identity: &'a str) -> BoxFuture<'a>;
}

/// `<device>:<inode>` of a file: what stays the same across a rename, and
/// tells our own complete download from an ISO someone else put there.
pub fn file_identity(meta: &std::fs::Metadata) -> String {
    use std::os::unix::fs::MetadataExt;
    format!("{}:{}", meta.dev(), meta.ino())
}

/// The file at `path` if it exists and has `identity`: its length.
async fn with_identity(path: &Path, identity: &str) -> Option<u64> {
    let meta = tokio::fs::symlink_metadata(path).await.ok()?;
    (meta.is_file() && file_identity(&meta) == identity).then_some(meta.len())
}

/// What [`Reporter::validator`] returns.
pub type BoxFuture<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'a>>;

/// Why a download ended without an ISO.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// Killed through the dispatcher.
    Cancelled,
    /// Anything else, with the sentence for the user.
    Failed(String),
}

impl Failure {
    pub fn message(&self) -> String {
        match self {
            Failure::Cancelled => "the task was killed before it finished".into(),
            Failure::Failed(m) => m.clone(),
        }
    }
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        Failure::Failed(e.message)
    }
}

pub(crate) fn io_failure(what: &str, path: &Path, e: io::Error) -> Failure {
    Failure::Failed(format!("could not {what} {}: {e}", path.display()))
}

/// The URL as it may be shown and logged: any password replaced by `***`.
pub fn redact(url: &url::Url) -> String {
    let mut u = url.clone();
    if u.password().is_some() {
        let _ = u.set_password(Some("***"));
    }
    u.to_string()
}

/// The downloaders, sharing one http client.
pub struct Fetcher {
    cfg: FetchConfig,
    http: reqwest::Client,
}

/// Bytes read from a source per write.
pub(crate) const BUF_SIZE: usize = 256 * 1024;

impl Fetcher {
    pub fn new(cfg: FetchConfig) -> Result<Fetcher, Error> {
        let http = http::client(&cfg)?;
        Ok(Fetcher { cfg, http })
    }

    pub fn config(&self) -> &FetchConfig {
        &self.cfg
    }

    /// Checks at request time what can be checked before any byte moves:
    /// for `file://`, that the path is an existing file below an allowed
    /// folder. The network schemes are checked when they connect.
    pub fn precheck(&self, url: &url::Url) -> Result<(), Error> {
        if url.scheme() == "file" {
            file::resolve(url, &self.cfg.file_roots).map_err(Error::invalid)?;
        }
        Ok(())
    }

    /// Runs `job` to the end: the ISO in place, or an error and no file.
    pub async fn run(
        &self,
        engine: &Engine,
        job: &Job,
        cancel: &CancellationToken,
        report: &dyn Reporter,
    ) -> Result<u64, Failure> {
        let part = job.part_path();
        let result = async {
            if let Some(identity) = &job.placing {
                // Cut short around the rename: the checked file is in
                // place, or still waiting beside it.
                if let Some(len) = with_identity(&job.dest_path(), identity).await {
                    tracing::info!(iso = %job.name, "the download was already in place");
                    return Ok(len);
                }
                if let Some(len) = with_identity(&part, identity).await {
                    self.install(engine, job).await?;
                    return Ok(len);
                }
            }
            let len = match job.url.scheme() {
                "http" | "https" => http::download(&self.http, &self.cfg, job, cancel, report).await?,
                "ftp" => ftp::download(&self.cfg, job, cancel, report).await?,
                "file" => file::download(&self.cfg, job, cancel, report).await?,
                other => {
                    return Err(Failure::Failed(format!(
                        "unsupported URL scheme '{other}'"
                    )))
                }
            };
            if let Some(want) = &job.sha256 {
                let got = sha256_of(&part).await?;
                if &got != want {
                    return Err(Failure::Failed(format!(
                        "checksum mismatch: {} has SHA-256 {got}, expected {want}; the download was discarded",
                        job.name
                    )));
                }
            }
            let meta = tokio::fs::metadata(&part)
                .await
                .map_err(|e| io_failure("inspect", &part, e))?;
            report.placing(&file_identity(&meta)).await;
            self.install(engine, job).await?;
            Ok(len)
        }
        .await;
        if result.is_err() {
            remove_part(&part).await;
        }
        result
    }

    /// Renames the complete partial file to its name, never over an ISO.
    async fn install(&self, engine: &Engine, job: &Job) -> Result<(), Failure> {
        let (part, dest) = (job.part_path(), job.dest_path());
        let _registry = engine.registry_lock().await;
        let (p2, d2) = (part.clone(), dest.clone());
        let r = tokio::task::spawn_blocking(move || {
            rename_noreplace(&p2, &d2)?;
            fsync_dir(d2.parent().expect("an ISO has a folder"))
        })
        .await
        .map_err(|e| Failure::Failed(format!("storage task failed: {e}")))?;
        r.map_err(|e| match e.kind() {
            io::ErrorKind::AlreadyExists => Failure::Failed(format!(
                "an ISO named '{}' appeared while downloading; the download was discarded, the existing ISO is untouched",
                job.name
            )),
            _ => io_failure("rename into place", &dest, e),
        })
    }
}

/// Opens the partial file for writing: appending from `offset` (which must
/// be its length) or, with `offset == 0`, new and empty.
pub(crate) async fn open_part(path: &Path, offset: u64) -> Result<tokio::fs::File, Failure> {
    let mut opts = tokio::fs::OpenOptions::new();
    opts.write(true).create(true);
    if offset == 0 {
        opts.truncate(true);
    }
    let mut f = opts
        .open(path)
        .await
        .map_err(|e| io_failure("create", path, e))?;
    if offset > 0 {
        use tokio::io::AsyncSeekExt;
        f.set_len(offset)
            .await
            .map_err(|e| io_failure("write", path, e))?;
        f.seek(io::SeekFrom::Start(offset))
            .await
            .map_err(|e| io_failure("write", path, e))?;
    }
    Ok(f)
}

/// Flushes and fsyncs the partial file.
pub(crate) async fn finish_part(f: &mut tokio::fs::File, path: &Path) -> Result<(), Failure> {
    f.flush().await.map_err(|e| io_failure("write", path, e))?;
    f.sync_all().await.map_err(|e| io_failure("sync", path, e))
}

/// Starts writing a download's pages to disk while it goes on, so that the
/// fsync before the rename finds little left to write: the download takes
/// about the longer of the transfer and the disk rather than their sum. On
/// Linux, every [`WRITEBACK_EVERY`] bytes `sync_file_range(WRITE)` queues
/// the file's dirty pages for writing without waiting for them or flushing
/// the device's cache; elsewhere an `fdatasync` does it. Either runs in a
/// blocking thread beside the download (on a second descriptor of the same
/// file), one at a time. Their errors are left to the final fsync, which
/// reports them.
pub(crate) struct Writeback {
    file: Option<std::sync::Arc<std::fs::File>>,
    pending: Option<tokio::task::JoinHandle<()>>,
    unsynced: u64,
}

/// Bytes written between two background writebacks.
#[cfg(target_os = "linux")]
pub(crate) const WRITEBACK_EVERY: u64 = 8 << 20;
#[cfg(not(target_os = "linux"))]
pub(crate) const WRITEBACK_EVERY: u64 = 64 << 20;

impl Writeback {
    pub(crate) async fn new(f: &tokio::fs::File) -> Writeback {
        let file = match f.try_clone().await {
            Ok(c) => Some(std::sync::Arc::new(c.into_std().await)),
            Err(_) => None,
        };
        Writeback {
            file,
            pending: None,
            unsynced: 0,
        }
    }

    /// Counts `n` bytes written; starts a writeback when enough are
    /// unwritten and none is running.
    pub(crate) fn wrote(&mut self, n: usize) {
        self.unsynced += n as u64;
        if self.unsynced < WRITEBACK_EVERY
            || self.pending.as_ref().is_some_and(|p| !p.is_finished())
        {
            return;
        }
        if let Some(file) = &self.file {
            let file = file.clone();
            self.unsynced = 0;
            self.pending = Some(tokio::task::spawn_blocking(move || start_writeback(&file)));
        }
    }
}

/// Queues every dirty page of `file` for writing, without waiting.
#[cfg(target_os = "linux")]
fn start_writeback(file: &std::fs::File) {
    use std::os::fd::AsRawFd;
    // SAFETY: a plain syscall on a descriptor `file` keeps open for the
    // call; offset 0 and length 0 mean the whole file.
    unsafe {
        libc::sync_file_range(file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE);
    }
}

#[cfg(not(target_os = "linux"))]
fn start_writeback(file: &std::fs::File) {
    let _ = rustix::fs::fdatasync(file);
}

/// Removes a partial file; a missing one is fine.
pub async fn remove_part(path: &Path) {
    match tokio::fs::remove_file(path).await {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "could not remove a partial download")
        }
    }
}

/// The SHA-256 of a file, read in chunks off the async threads.
async fn sha256_of(path: &Path) -> Result<String, Failure> {
    use sha2::{Digest, Sha256};
    use std::io::Read;
    let p = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let mut f = std::fs::File::open(&p).map_err(|e| io_failure("read", &p, e))?;
        let mut h = Sha256::new();
        let mut buf = vec![0u8; BUF_SIZE];
        loop {
            let n = f.read(&mut buf).map_err(|e| io_failure("read", &p, e))?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
        Ok(hex::encode(h.finalize()))
    })
    .await
    .map_err(|e| Failure::Failed(format!("checksum task failed: {e}")))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_hides_the_password_field_and_keeps_the_rest() {
        // From the urls fuzz target: the password's text also in the path.
        // The password field is hidden; the path is the path.
        let u = crate::validate::fetch_url("ftp:/:pw@fttp:/:pw@ftp.:.isoPw@ftpub/so").unwrap();
        assert_eq!(u.password(), Some("pw"));
        let shown = url::Url::parse(&redact(&u)).unwrap();
        assert_eq!(shown.password(), Some("***"));
        assert_eq!((shown.host_str(), shown.path()), (u.host_str(), u.path()));
        let plain = crate::validate::fetch_url("ftp://user:secret@h/pub/a.iso").unwrap();
        assert_eq!(redact(&plain), "ftp://user:***@h/pub/a.iso");
        let none = crate::validate::fetch_url("http://h/a.iso").unwrap();
        assert_eq!(redact(&none), "http://h/a.iso");
    }
}
