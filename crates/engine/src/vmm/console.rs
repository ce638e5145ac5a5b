//! A guest's serial console, kept by the server.
//!
//! QEMU writes everything the guest prints both to its console socket and
//! to `console.log` in the guest's folder (so nothing is lost while no
//! server is attached). The server reads the socket into an in-memory ring
//! buffer of recent output and fans it out to viewers; a viewer that joins
//! gets the ring first, then live output, with nothing missed or doubled
//! (both happen under one lock). Any number of viewers watch; one at a time
//! types: the first viewer to send input while nobody holds the keyboard
//! gets it until it leaves.
//!
//! `console.log` is kept bounded: past `log_max` bytes its head is cut off
//! (collapsed where the file system can, otherwise punched out so the disk
//! space is freed) while QEMU keeps appending.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::{broadcast, mpsc};
use tracing::{debug, warn};

/// What viewers receive.
#[derive(Debug, Clone)]
pub enum ConsoleEvent {
    /// Bytes the guest printed.
    Output(Arc<[u8]>),
    /// The guest's hypervisor process started (true) or ended (false).
    Running(bool),
}

struct Inner {
    ring: VecDeque<u8>,
    /// Where input goes while a hypervisor is attached.
    input: Option<mpsc::Sender<Vec<u8>>>,
    /// The viewer holding the keyboard.
    writer: Option<u64>,
    next_viewer: u64,
    /// Bytes read since the log's size was last checked.
    since_trim: u64,
}

pub struct Console {
    inner: Mutex<Inner>,
    live: broadcast::Sender<ConsoleEvent>,
    capacity: usize,
    log_path: PathBuf,
    log_max: u64,
}

/// Why input was not sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InputError {
    /// Another viewer holds the keyboard.
    Busy,
    /// No hypervisor is attached (the guest is stopped).
    NotRunning,
}

/// One viewer: the backlog at the moment it joined, then live events.
pub struct Viewer {
    id: u64,
    console: Arc<Console>,
    pub backlog: Vec<u8>,
    pub events: broadcast::Receiver<ConsoleEvent>,
}

impl Viewer {
    /// Sends input to the guest, taking the keyboard if it is free.
    pub async fn send(&self, data: Vec<u8>) -> Result<(), InputError> {
        let tx = {
            let mut g = self.console.lock();
            match g.writer {
                Some(w) if w != self.id => return Err(InputError::Busy),
                _ => g.writer = Some(self.id),
            }
            g.input.clone().ok_or(InputError::NotRunning)?
        };
        tx.send(data).await.map_err(|_| InputError::NotRunning)
    }

    /// Whether this viewer holds the keyboard.
    pub fn is_writer(&self) -> bool {
        self.console.lock().writer == Some(self.id)
    }
}

impl Drop for Viewer {
    fn drop(&mut self) {
        let mut g = self.console.lock();
        if g.writer == Some(self.id) {
            g.writer = None;
        }
    }
}

impl Console {
    /// A console whose ring keeps `capacity` bytes and whose log file
    /// (`log_path`, written by the hypervisor) is cut back past `log_max`.
    pub fn new(log_path: PathBuf, capacity: usize, log_max: u64) -> Arc<Console> {
        let (live, _) = broadcast::channel(1024);
        Arc::new(Console {
            inner: Mutex::new(Inner {
                ring: VecDeque::with_capacity(capacity),
                input: None,
                writer: None,
                next_viewer: 1,
                since_trim: 0,
            }),
            live,
            capacity,
            log_path,
            log_max: log_max.max(2 * capacity as u64),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("console lock poisoned")
    }

    fn push(&self, g: &mut Inner, data: &[u8]) {
        let data = if data.len() > self.capacity {
            &data[data.len() - self.capacity..]
        } else {
            data
        };
        let over = (g.ring.len() + data.len()).saturating_sub(self.capacity);
        g.ring.drain(..over);
        g.ring.extend(data);
    }

    /// Refills the ring from the tail of `console.log` (at server start,
    /// so output printed while no server watched is there).
    pub fn load_log(&self) {
        let tail = read_tail(&self.log_path, self.capacity as u64).unwrap_or_default();
        let mut g = self.lock();
        g.ring.clear();
        self.push(&mut g, &tail);
    }

    /// The most recent output, at most `max` bytes.
    pub fn recent(&self, max: usize) -> Vec<u8> {
        let g = self.lock();
        let skip = g.ring.len().saturating_sub(max);
        g.ring.iter().skip(skip).copied().collect()
    }

    /// Joins as a viewer.
    pub fn viewer(self: &Arc<Self>) -> Viewer {
        let mut g = self.lock();
        let id = g.next_viewer;
        g.next_viewer += 1;
        Viewer {
            id,
            console: self.clone(),
            backlog: g.ring.iter().copied().collect(),
            events: self.live.subscribe(),
        }
    }

    /// Whether a hypervisor is attached.
    pub fn attached(&self) -> bool {
        self.lock().input.is_some()
    }

    /// Attaches the hypervisor's console socket: output flows into the
    /// ring and to viewers, input from the keyboard holder flows back.
    /// Returns when the socket closes (the hypervisor ended).
    pub fn attach(self: &Arc<Self>, stream: UnixStream) -> tokio::task::JoinHandle<()> {
        let (mut r, mut w) = stream.into_split();
        let (tx, mut rx) = mpsc::channel::<Vec<u8>>(64);
        self.lock().input = Some(tx);
        let _ = self.live.send(ConsoleEvent::Running(true));
        let me = self.clone();
        tokio::spawn(async move {
            let writer = tokio::spawn(async move {
                while let Some(data) = rx.recv().await {
                    if w.write_all(&data).await.is_err() {
                        break;
                    }
                }
            });
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                match r.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => me.output(&buf[..n]),
                }
            }
            writer.abort();
            me.lock().input = None;
            let _ = me.live.send(ConsoleEvent::Running(false));
            debug!(log = %me.log_path.display(), "console detached");
        })
    }

    fn output(&self, data: &[u8]) {
        let trim = {
            let mut g = self.lock();
            self.push(&mut g, data);
            // Sent under the lock, so a viewer joining now sees these bytes
            // either in its backlog or live, never both.
            let _ = self.live.send(ConsoleEvent::Output(Arc::from(data)));
            g.since_trim += data.len() as u64;
            if g.since_trim > self.log_max / 4 {
                g.since_trim = 0;
                true
            } else {
                false
            }
        };
        if trim {
            if let Err(e) = trim_log(&self.log_path, self.log_max) {
                warn!(log = %self.log_path.display(), error = %e, "could not trim the console log");
            }
        }
    }

    /// Trims `console.log` now if it is over its bound.
    pub fn trim(&self) {
        if let Err(e) = trim_log(&self.log_path, self.log_max) {
            warn!(log = %self.log_path.display(), error = %e, "could not trim the console log");
        }
    }
}

/// The last `max` bytes of a file.
pub fn read_tail(path: &Path, max: u64) -> std::io::Result<Vec<u8>> {
    let mut f = File::open(path)?;
    let len = f.metadata()?.len();
    f.seek(SeekFrom::Start(len.saturating_sub(max)))?;
    let mut out = Vec::new();
    f.take(max).read_to_end(&mut out)?;
    Ok(out)
}

/// Cuts the head of a log another process appends to, keeping at least the
/// last `max / 2` bytes, once it holds more than `max` bytes of data.
/// Collapsing keeps the file dense; where the file system cannot collapse,
/// punching frees the space and leaves a sparse head.
pub fn trim_log(path: &Path, max: u64) -> std::io::Result<()> {
    use rustix::fs::{fallocate, FallocateFlags};
    let f = match std::fs::OpenOptions::new().write(true).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let m = f.metadata()?;
    let stored = m.blocks() * 512;
    if stored <= max && m.len() <= max {
        return Ok(());
    }
    let block = m.blksize().max(512);
    let keep = max / 2;
    let cut = (m.len().saturating_sub(keep)) / block * block;
    if cut == 0 {
        return Ok(());
    }
    match fallocate(&f, FallocateFlags::COLLAPSE_RANGE, 0, cut) {
        Ok(()) => Ok(()),
        Err(_) => {
            if stored <= max {
                return Ok(());
            }
            fallocate(
                &f,
                FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
                0,
                cut,
            )
            .map_err(std::io::Error::from)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn console(cap: usize) -> (tempfile::TempDir, Arc<Console>) {
        let d = tempfile::tempdir().unwrap();
        let c = Console::new(d.path().join("console.log"), cap, 1 << 20);
        (d, c)
    }

    #[test]
    fn the_ring_keeps_the_newest_bytes() {
        let (_d, c) = console(8);
        c.output(b"hello ");
        c.output(b"world");
        assert_eq!(c.recent(100), b"lo world");
        assert_eq!(c.recent(5), b"world");
        c.output(b"0123456789");
        assert_eq!(c.recent(100), b"23456789");
    }

    #[test]
    fn a_viewer_gets_backlog_then_live_without_gaps() {
        let (_d, c) = console(64);
        c.output(b"before ");
        let mut v = c.viewer();
        c.output(b"after");
        assert_eq!(v.backlog, b"before ");
        match v.events.try_recv().unwrap() {
            ConsoleEvent::Output(b) => assert_eq!(&b[..], b"after"),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn one_writer_at_a_time() {
        let (_d, c) = console(64);
        let (a, b) = (c.viewer(), c.viewer());
        assert_eq!(a.send(b"x".to_vec()).await, Err(InputError::NotRunning));
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        let _pump = c.attach(ours);
        a.send(b"ls\n".to_vec()).await.unwrap();
        assert!(a.is_writer());
        assert_eq!(b.send(b"rm\n".to_vec()).await, Err(InputError::Busy));
        let mut got = [0u8; 3];
        theirs.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"ls\n");
        drop(a);
        b.send(b"id\n".to_vec()).await.unwrap();
        theirs.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"id\n");
        // Output from the guest reaches the ring.
        theirs.write_all(b"uid=0\n").await.unwrap();
        for _ in 0..200 {
            if c.recent(100) == b"uid=0\n" {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        assert_eq!(c.recent(100), b"uid=0\n");
    }

    #[test]
    fn the_log_tail_reloads_and_the_log_stays_bounded() {
        let (d, c) = console(16);
        let log = d.path().join("console.log");
        let mut data = Vec::new();
        for i in 0..100_000u32 {
            data.extend_from_slice(format!("{i:08}\n").as_bytes());
        }
        std::fs::write(&log, &data).unwrap();
        c.load_log();
        assert_eq!(c.recent(100), &data[data.len() - 16..]);
        trim_log(&log, 64 * 1024).unwrap();
        let m = std::fs::metadata(&log).unwrap();
        assert!(
            m.blocks() * 512 <= 64 * 1024 + 8192,
            "{} bytes stored",
            m.blocks() * 512
        );
        // The newest data is still whole at the end.
        let tail = read_tail(&log, 9 * 1000).unwrap();
        assert_eq!(tail, &data[data.len() - 9000..]);
    }
}
