//! file:// downloads: copying a file of this host into the ISO store, but
//! only from below the folders the config's `[fetch] file_roots` allows.
//!
//! At request time the path is canonicalized (resolving `..` and every
//! symlink) and must lie below a canonical root, so `/srv/isos/../../etc`
//! and a symlink pointing out of the root are refused with a sentence. When
//! the copy starts, the file is opened relative to the root with
//! `openat2(RESOLVE_BENEATH)`, so a folder swapped for a symlink in between
//! cannot lead the read outside either.

use std::path::{Path, PathBuf};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use super::{finish_part, io_failure, open_part, Failure, FetchConfig, Job, Reporter, BUF_SIZE};
use crate::validate::quote;

/// The canonical path of the file `url` names and the root it is below;
/// an error sentence if it is not an existing file below an allowed root.
pub fn resolve(url: &url::Url, roots: &[PathBuf]) -> Result<(PathBuf, PathBuf), String> {
    if roots.is_empty() {
        return Err(
            "file:// URLs are not allowed on this server: its config lists no [fetch] file_roots"
                .into(),
        );
    }
    let path = url
        .to_file_path()
        .map_err(|_| format!("the URL {} is not a file path", quote(url.as_str())))?;
    let shown = path.display().to_string();
    let canon = std::fs::canonicalize(&path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => format!("there is no file {}", quote(&shown)),
        _ => format!("cannot read {}: {e}", quote(&shown)),
    })?;
    let root = roots
        .iter()
        .find(|r| canon.starts_with(r) && canon != **r)
        .ok_or_else(|| {
            format!(
                "{} is outside the folders file:// may read ({})",
                quote(&shown),
                roots
                    .iter()
                    .map(|r| r.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })?;
    let meta =
        std::fs::metadata(&canon).map_err(|e| format!("cannot read {}: {e}", quote(&shown)))?;
    if !meta.is_file() {
        return Err(format!("{} is not a regular file", quote(&shown)));
    }
    Ok((canon, root.clone()))
}

/// Opens `canon` (below `root`) so that the kernel refuses any path that
/// leaves `root` on the way.
fn open_beneath(root: &Path, canon: &Path) -> std::io::Result<std::fs::File> {
    let rel = canon.strip_prefix(root).map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            "outside the allowed folders",
        )
    })?;
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        use rustix::fs::{openat2, Mode, OFlags, ResolveFlags, CWD};
        let dir = rustix::fs::openat(
            CWD,
            root,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        match openat2(
            &dir,
            rel,
            OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOCTTY,
            Mode::empty(),
            ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS,
        ) {
            Ok(fd) => return Ok(std::fs::File::from(fd)),
            // Kernels before 5.6 lack openat2: the canonical path, opened
            // without following a final symlink, is the next best thing.
            Err(e) if e == rustix::io::Errno::NOSYS => {}
            Err(e) => return Err(e.into()),
        }
    }
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(root.join(rel))
}

pub async fn download(
    cfg: &FetchConfig,
    job: &Job,
    cancel: &CancellationToken,
    report: &dyn Reporter,
) -> Result<u64, Failure> {
    let (canon, root) = resolve(&job.url, &cfg.file_roots).map_err(Failure::Failed)?;
    let c2 = canon.clone();
    let src = tokio::task::spawn_blocking(move || open_beneath(&root, &c2))
        .await
        .map_err(|e| Failure::Failed(format!("open task failed: {e}")))?
        .map_err(|e| io_failure("open", &canon, e))?;
    let total = src.metadata().ok().map(|m| m.len());
    let mut src = tokio::fs::File::from_std(src);
    let part = job.part_path();
    let mut f = open_part(&part, 0).await?;
    let mut buf = vec![0u8; BUF_SIZE];
    let mut done = 0u64;
    report.progress(0, total);
    loop {
        let n = tokio::select! {
            _ = cancel.cancelled() => return Err(Failure::Cancelled),
            r = src.read(&mut buf) => r.map_err(|e| io_failure("read", &canon, e))?,
        };
        if n == 0 {
            break;
        }
        f.write_all(&buf[..n])
            .await
            .map_err(|e| io_failure("write", &part, e))?;
        done += n as u64;
        report.progress(done, total);
    }
    finish_part(&mut f, &part).await?;
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_files_below_the_roots() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("isos");
        let outside = d.path().join("secret");
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::write(root.join("sub/a.iso"), b"iso").unwrap();
        std::fs::write(&outside, b"no").unwrap();
        std::os::unix::fs::symlink(&outside, root.join("escape.iso")).unwrap();
        let roots = vec![std::fs::canonicalize(&root).unwrap()];
        let u = |p: &Path| url::Url::from_file_path(p).unwrap();
        let (canon, r) = resolve(&u(&root.join("sub/a.iso")), &roots).unwrap();
        assert_eq!(r, roots[0]);
        let f = open_beneath(&r, &canon).unwrap();
        assert_eq!(f.metadata().unwrap().len(), 3);
        for bad in [
            root.join("escape.iso"),
            root.join("sub/../../secret"),
            outside.clone(),
            root.join("sub"),
            root.join("missing.iso"),
        ] {
            assert!(resolve(&u(&bad), &roots).is_err(), "{}", bad.display());
        }
        assert!(resolve(&u(&root.join("sub/a.iso")), &[]).is_err());
        // A canonical path that a swap turned into an escape is refused by
        // the kernel at open time.
        std::fs::remove_dir_all(root.join("sub")).unwrap();
        std::os::unix::fs::symlink(d.path(), root.join("sub")).unwrap();
        assert!(open_beneath(&r, &roots[0].join("sub/secret")).is_err());
    }
}
