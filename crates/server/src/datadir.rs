//! The data dir: made on first start, and locked so that two servers never
//! manage the same guests.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;

use anyhow::Context;
use rustix::fs::{flock, FlockOperation};

use hyve_engine::validate::STATE_DIR;

/// Held for the server's life; the lock goes with the process.
pub struct DataDirLock {
    _file: File,
}

/// Creates the data dir and its state folder (mode 0700) and takes the lock.
pub fn prepare(data_dir: &Path) -> anyhow::Result<DataDirLock> {
    let state = data_dir.join(STATE_DIR);
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&state)
        .with_context(|| format!("cannot create {}", state.display()))?;
    let path = state.join("lock");
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    flock(&file, FlockOperation::NonBlockingLockExclusive).map_err(|_| {
        anyhow::anyhow!(
            "another hyve server is using {}; stop it first",
            data_dir.display()
        )
    })?;
    Ok(DataDirLock { _file: file })
}
