//! Connecting to a unix socket whose path may be too long.
//!
//! `sun_path` holds 108 bytes, and a guest's run folder under a deep data
//! dir can be longer. QEMU is given paths relative to its working directory
//! (the run folder), and the server connects through `/proc/self/fd/<dir
//! fd>/<name>` when the absolute path does not fit: the kernel resolves the
//! descriptor's folder, so the address stays short whatever the depth.

use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

use tokio::net::UnixStream;

/// The most bytes a socket path may have (without the trailing NUL).
const SUN_PATH_MAX: usize = 107;

/// Connects to the socket `name` in folder `dir`.
pub async fn unix_connect(dir: &Path, name: &str) -> io::Result<UnixStream> {
    let full = dir.join(name);
    if full.as_os_str().len() <= SUN_PATH_MAX {
        return UnixStream::connect(&full).await;
    }
    let dir_fd = std::fs::File::open(dir)?;
    let short = format!("/proc/self/fd/{}/{name}", dir_fd.as_raw_fd());
    let r = UnixStream::connect(&short).await;
    drop(dir_fd);
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn connects_below_a_very_deep_folder() {
        let base = tempfile::tempdir().unwrap();
        let deep = base.path().join("d".repeat(60)).join("e".repeat(60));
        std::fs::create_dir_all(&deep).unwrap();
        assert!(deep.join("s.sock").as_os_str().len() > SUN_PATH_MAX);
        // Bind through the folder's descriptor (QEMU binds a relative path
        // from its working folder; changing this process's cwd would race
        // other tests).
        let fd = std::fs::File::open(&deep).unwrap();
        let listener =
            tokio::net::UnixListener::bind(format!("/proc/self/fd/{}/s.sock", fd.as_raw_fd()))
                .unwrap();
        assert!(deep.join("s.sock").exists());
        let accept = tokio::spawn(async move { listener.accept().await.map(|_| ()) });
        unix_connect(&deep, "s.sock").await.unwrap();
        accept.await.unwrap().unwrap();
    }
}
