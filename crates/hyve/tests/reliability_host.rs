//! Fault suite 3, faults of the host: the pool's file system full, then
//! read-only, then with wrong permissions (the server run by a service
//! account, as file modes do not bind root); the QEMU binary missing or
//! failing; QEMU dying under a running guest; a download's server
//! vanishing mid-file. Each gives a clear error naming the cause, and
//! nothing already stored is damaged: the API shows the same state and
//! the pool's files are byte for byte what they were.
//!
//! The file systems are tmpfs mounts made by the test in a mount namespace
//! of its own (so nothing is left mounted, whatever happens): the test
//! needs root, as CI runs.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::guest::GuestDirs;
use common::origin::{File, Origin};
use common::reliability::{self as rel, check_settled, iso_bytes};
use common::tasks::{fetch, return_code, wait_finished};
use common::*;
use serde_json::{json, Value};

const NOBODY: u32 = 65534;

fn run(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn need_root() {
    assert!(
        rustix::process::geteuid().is_root(),
        "the host fault tests mount file systems: run them as root (CI does)"
    );
}

/// Gives this thread (and the processes it starts) a mount namespace of
/// its own, private, so the test's mounts are seen by nobody else and
/// vanish with it.
fn private_mounts() {
    // SAFETY: NEWNS shares no file descriptors; only this thread's view of
    // the mounts changes.
    unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWNS) }
        .expect("unshare(CLONE_NEWNS)");
    run("mount", &["--make-rprivate", "/"]);
}

/// What a client sees of the store: guests, their properties and disks,
/// ISOs.
async fn state(c: &Client) -> Value {
    let vms = c.iohyve("listvms", json!({})).await.unwrap();
    let mut guests = serde_json::Map::new();
    for name in vms.as_object().unwrap().keys() {
        guests.insert(
            name.clone(),
            json!([
                c.iohyve("getprops", json!({"name": name})).await.unwrap(),
                c.iohyve("listdisks", json!({"name": name})).await.unwrap(),
            ]),
        );
    }
    json!({"vms": vms, "guests": guests, "isos": c.iohyve("listisos", json!({})).await.unwrap()})
}

/// The pool's files as [`snapshot`] sees them, but for the filler and the
/// modification times of disk images: a grow refused after the image was
/// lengthened shrinks it back (so a crash in between never loses the
/// grow), which leaves its length and data as they were but its mtime new.
fn snap(pool: &Path) -> std::collections::BTreeMap<PathBuf, Entry> {
    let mut s = snapshot(pool);
    s.remove(Path::new("filler"));
    for (p, e) in s.iter_mut() {
        if let Entry::File { mtime_ns, .. } = e {
            if p.extension().is_some_and(|x| x == "img") {
                *mtime_ns = 0;
            }
        }
    }
    s
}

/// The fault suite's bookkeeping for one kind of fault.
struct Faults<'a> {
    c: &'a Client,
    pool: PathBuf,
    before: Value,
    files: std::collections::BTreeMap<PathBuf, Entry>,
    injected: usize,
}

impl<'a> Faults<'a> {
    async fn new(c: &'a Client, pool: &Path) -> Faults<'a> {
        Faults {
            c,
            pool: pool.to_path_buf(),
            before: state(c).await,
            files: snap(pool),
            injected: 0,
        }
    }

    /// `action` must fail with an error containing `cause`, and leave the
    /// store as it was.
    async fn refused(&mut self, action: &str, args: Value, cause: &str) {
        let e = match self.c.iohyve(action, args.clone()).await {
            Ok(v) => panic!("{action} {args} succeeded under the fault: {v}"),
            Err(e) => e.to_string(),
        };
        assert!(
            e.contains(cause),
            "{action} {args}: the error does not say {cause:?}: {e}"
        );
        self.unchanged(action).await;
    }

    /// A fetchiso that is queued, then fails saying `cause`.
    async fn download_fails(&mut self, url: &str, name: &str, cause: &str) {
        let id = fetch(self.c, json!({"url": url, "name": name})).await;
        let t = wait_finished(self.c, &id, 120).await;
        assert_eq!(return_code(&t), "1", "{t}");
        let e = t["error"].as_str().unwrap_or("");
        assert!(
            e.contains(cause),
            "fetchiso: the error does not say {cause:?}: {t}"
        );
        self.unchanged("fetchiso").await;
    }

    async fn unchanged(&mut self, what: &str) {
        self.injected += 1;
        assert_eq!(state(self.c).await, self.before, "{what} changed the state");
        assert_unchanged(&self.files, &snap(&self.pool), what);
    }
}

/// Fills the file system of `dir` to the last byte.
fn fill(dir: &Path) {
    use std::io::Write;
    let mut f = std::fs::File::create(dir.join("filler")).unwrap();
    let chunk = vec![0u8; 4096];
    loop {
        if let Err(e) = f.write_all(&chunk).and_then(|_| f.sync_all()) {
            assert_eq!(e.raw_os_error(), Some(28), "{e}");
            return;
        }
    }
}

#[tokio::test(flavor = "current_thread")]
async fn pool_full_read_only_and_wrong_permissions() {
    need_root();
    private_mounts();
    let dir = data_dir();
    let data = dir.path();
    let pool = data.join("tank");
    std::fs::create_dir(&pool).unwrap();
    let mount = format!("size=8m,uid={NOBODY},gid={NOBODY},mode=0755");
    run(
        "mount",
        &["-t", "tmpfs", "-o", &mount, "tmpfs", pool.to_str().unwrap()],
    );
    let origin = Origin::http().await;
    let url = origin.put("/a.iso", File::new(iso_bytes(3, 1 << 20)));
    let big = origin.put("/big.iso", File::new(iso_bytes(4, 12 << 20)));

    let mut server = TestServer::start_as(data, &[], NOBODY);
    let c = server.client().await;
    setup(&c).await;
    c.iohyve("create", json!({"name": "g1", "size": "16M"}))
        .await
        .unwrap();
    c.iohyve("adddisk", json!({"name": "g1", "size": "8M"}))
        .await
        .unwrap();
    c.iohyve("setprop", json!({"name": "g1", "description": "kept"}))
        .await
        .unwrap();
    let id = fetch(&c, json!({"url": url, "name": "a.iso"})).await;
    assert_eq!(return_code(&wait_finished(&c, &id, 60).await), "0");
    let pools = vec![pool.clone()];
    let opaque = BTreeSet::new();
    check_settled(&c, &pools, data, &opaque, 10).await.unwrap();
    let mut injected = 0;

    // The pool's file system full.
    fill(&pool);
    let mut f = Faults::new(&c, &pool).await;
    let full = "No space left on device";
    f.refused("create", json!({"name": "g2", "size": "16M"}), full)
        .await;
    f.refused(
        "setprop",
        json!({"name": "g1", "description": "lost?"}),
        full,
    )
    .await;
    f.refused("adddisk", json!({"name": "g1", "size": "8M"}), full)
        .await;
    f.refused(
        "resizedisk",
        json!({"name": "g1", "disk": "disk0", "size": "32M"}),
        full,
    )
    .await;
    f.refused("deletedisk", json!({"name": "g1", "disk": "disk1"}), full)
        .await;
    f.download_fails(&big, "big.iso", full).await;
    injected += f.injected;
    std::fs::remove_file(pool.join("filler")).unwrap();
    // A download that fills it on the way.
    let mut f = Faults::new(&c, &pool).await;
    f.download_fails(&big, "big.iso", full).await;
    injected += f.injected;

    // Read-only.
    run("mount", &["-o", "remount,ro", pool.to_str().unwrap()]);
    let mut f = Faults::new(&c, &pool).await;
    let ro = "Read-only file system";
    f.refused("create", json!({"name": "g2", "size": "16M"}), ro)
        .await;
    f.refused("setprop", json!({"name": "g1", "description": "lost?"}), ro)
        .await;
    f.refused("adddisk", json!({"name": "g1", "size": "8M"}), ro)
        .await;
    f.refused(
        "resizedisk",
        json!({"name": "g1", "disk": "disk0", "size": "32M"}),
        ro,
    )
    .await;
    f.refused("deletedisk", json!({"name": "g1", "disk": "disk1"}), ro)
        .await;
    f.refused("delete", json!({"name": "g1"}), ro).await;
    f.refused(
        "renameiso",
        json!({"source": "a.iso", "target": "b.iso"}),
        ro,
    )
    .await;
    f.refused("rmiso", json!({"target": "a.iso"}), ro).await;
    f.download_fails(&url, "c.iso", ro).await;
    injected += f.injected;
    // A crash and a start on the read-only pool: everything is there.
    let before = state(&c).await;
    drop(c);
    server.kill();
    let mut server = TestServer::start_as(data, &[], NOBODY);
    let c = server.client().await;
    assert_eq!(state(&c).await, before, "restarted on a read-only pool");
    run("mount", &["-o", "remount,rw", pool.to_str().unwrap()]);

    // Wrong permissions (the server is not root here).
    let io = pool.join("iohyve");
    let g1 = io.join("g1");
    let isos = io.join("ISO");
    let chmod = |p: &Path, mode: u32| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    };
    let denied = "Permission denied";
    chmod(&io, 0o555);
    let mut f = Faults::new(&c, &pool).await;
    f.refused("create", json!({"name": "g2", "size": "16M"}), denied)
        .await;
    f.refused("delete", json!({"name": "g1"}), denied).await;
    injected += f.injected;
    chmod(&io, 0o755);
    chmod(&g1, 0o555);
    let mut f = Faults::new(&c, &pool).await;
    f.refused(
        "setprop",
        json!({"name": "g1", "description": "lost?"}),
        denied,
    )
    .await;
    f.refused("adddisk", json!({"name": "g1", "size": "8M"}), denied)
        .await;
    f.refused(
        "resizedisk",
        json!({"name": "g1", "disk": "disk1", "size": "32M"}),
        denied,
    )
    .await;
    f.refused("deletedisk", json!({"name": "g1", "disk": "disk1"}), denied)
        .await;
    injected += f.injected;
    chmod(&g1, 0o755);
    chmod(&isos, 0o555);
    let mut f = Faults::new(&c, &pool).await;
    f.refused(
        "renameiso",
        json!({"source": "a.iso", "target": "b.iso"}),
        denied,
    )
    .await;
    f.refused("rmiso", json!({"target": "a.iso"}), denied).await;
    f.download_fails(&url, "c.iso", denied).await;
    injected += f.injected;
    chmod(&isos, 0o755);
    // A guest folder the server cannot read: at its next start the guest
    // is left out (the log says why), its files untouched, and its name
    // cannot be taken over; with the owner put right it is back whole.
    let before = state(&c).await;
    let files = snap(&pool);
    drop(c);
    server.kill();
    run("chown", &["root:root", g1.to_str().unwrap()]);
    chmod(&g1, 0o700);
    let mut server = TestServer::start_as(data, &[], NOBODY);
    let c = server.client().await;
    assert!(
        server.log().contains("cannot read guest"),
        "{}",
        server.log()
    );
    assert!(c.iohyve("getprops", json!({"name": "g1"})).await.is_err());
    let e = c
        .iohyve("create", json!({"name": "g1", "size": "16M"}))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("already exists on disk"), "{e}");
    injected += 2;
    drop(c);
    server.kill();
    run(
        "chown",
        &[&format!("{NOBODY}:{NOBODY}"), g1.to_str().unwrap()],
    );
    chmod(&g1, 0o755);
    let server = TestServer::start_as(data, &[], NOBODY);
    let c = server.client().await;
    assert_eq!(state(&c).await, before, "g1 after its owner was put right");
    assert_unchanged(&files, &snap(&pool), "the unreadable guest");

    // Everything works again.
    c.iohyve("setprop", json!({"name": "g1", "description": "after"}))
        .await
        .unwrap();
    c.iohyve("create", json!({"name": "g2", "size": "16M"}))
        .await
        .unwrap();
    c.iohyve("adddisk", json!({"name": "g1", "size": "8M"}))
        .await
        .unwrap();
    let id = fetch(&c, json!({"url": url, "name": "c.iso"})).await;
    assert_eq!(return_code(&wait_finished(&c, &id, 60).await), "0");
    check_settled(&c, &pools, data, &opaque, 10).await.unwrap();
    rel::record(
        "host-storage",
        json!({"faults_injected": injected, "kinds": ["pool full", "download filling the pool", "read-only pool", "restart on a read-only pool", "pool folder not writable", "guest folder not writable", "ISO folder not writable", "guest folder unreadable at start"]}),
    );
}

fn qemu_config(dir: &Path, binary: &str) -> PathBuf {
    let p = dir.join("q.toml");
    std::fs::write(
        &p,
        format!("[qemu]\nbinary = \"{binary}\"\naccel = \"tcg\"\n[vm]\nstop_timeout = 2\n"),
    )
    .unwrap();
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_missing_failing_and_dying() {
    let dirs = GuestDirs::new();
    let data = dirs.data();
    let root = dirs.root.path();
    let pools = vec![data.join("tank")];
    let opaque = BTreeSet::new();
    let start = |binary: &str| {
        let cfg = qemu_config(root, binary);
        TestServer::start_with(&data, &["--config", cfg.to_str().unwrap()])
    };
    let mut injected = 0;

    let mut server = start("/nonexistent/qemu-system-x86_64");
    let c = server.client().await;
    setup(&c).await;
    c.iohyve("create", json!({"name": "g1", "size": "64M"}))
        .await
        .unwrap();
    // The MAC a guest is given at its first start is stored before the
    // launch (so a running guest always has its MAC on record): give it
    // one now, so that the failed starts below must change nothing at all.
    c.iohyve(
        "setprop",
        json!({"name": "g1", "ram": "64M", "persist": "0", "mac": "52:54:00:00:00:01"}),
    )
    .await
    .unwrap();
    std::fs::write(iso_dir(&data).join("a.iso"), iso_bytes(5, 1 << 20)).unwrap();
    let mut f = Faults::new(&c, &data.join("tank")).await;
    for (a, args) in [
        ("start", json!({"name": "g1"})),
        ("install", json!({"name": "g1", "iso": "a.iso"})),
    ] {
        let e = c.iohyve(a, args).await.unwrap_err().to_string();
        assert!(
            e.contains("/nonexistent/qemu-system-x86_64") && e.contains("No such file"),
            "{a}: {e}"
        );
        // Only its logs changed: the guest's record, disks and ISOs not.
        f.files = snap(&data.join("tank"))
            .into_iter()
            .filter(|(p, _)| !p.to_string_lossy().contains("/run") && !p.ends_with("vm.log"))
            .collect();
        f.injected += 1;
        assert_eq!(state(&c).await, f.before, "{a}");
    }
    assert!(rel::qemu_by_guest(root).is_empty());
    check_settled(&c, &pools, root, &opaque, 10).await.unwrap();
    injected += f.injected;
    drop(c);
    server.kill();

    // A binary that runs but is no hypervisor.
    let mut server = start("/bin/false");
    let c = server.client().await;
    let e = c
        .iohyve("start", json!({"name": "g1"}))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("could not start guest 'g1'"), "{e}");
    injected += 1;
    check_settled(&c, &pools, root, &opaque, 10).await.unwrap();
    drop(c);
    server.kill();

    // QEMU killed under a running guest: persist 0 leaves it off, persist 1
    // starts it again; its disks are untouched either way.
    let server = start("qemu-system-x86_64");
    let c = server.client().await;
    let img = data.join("tank/iohyve/g1/disk0.img");
    for persist in ["0", "1"] {
        c.iohyve("setprop", json!({"name": "g1", "persist": persist}))
            .await
            .unwrap();
        c.iohyve("start", json!({"name": "g1"})).await.unwrap();
        let pid = rel::qemu_by_guest(root)["g1"][0];
        let _ = rustix::process::kill_process(
            rustix::process::Pid::from_raw(pid).unwrap(),
            rustix::process::Signal::KILL,
        );
        injected += 1;
        let end = Instant::now() + Duration::from_secs(60);
        loop {
            let now = rel::qemu_by_guest(root)
                .get("g1")
                .cloned()
                .unwrap_or_default();
            let vm = c.iohyve("listvms", json!({})).await.unwrap()["g1"].clone();
            let settled = if persist == "0" {
                now.is_empty() && vm["vmm"] == "NO"
            } else {
                now.len() == 1 && now[0] != pid && vm["vmm"] == "YES"
            };
            if settled {
                break;
            }
            assert!(Instant::now() < end, "persist={persist}: {now:?} {vm}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let log = std::fs::read_to_string(data.join("tank/iohyve/g1/vm.log")).unwrap();
        assert!(log.contains("killed by signal 9"), "{log}");
        assert_eq!(std::fs::metadata(&img).unwrap().len(), 64 << 20);
        check_settled(&c, &pools, root, &opaque, 20).await.unwrap();
    }
    c.iohyve("stop", json!({"name": "g1", "force": "true"}))
        .await
        .unwrap();
    check_settled(&c, &pools, root, &opaque, 30).await.unwrap();
    rel::record(
        "host-qemu",
        json!({"faults_injected": injected, "kinds": ["QEMU binary missing (start, install)", "binary that is no hypervisor", "QEMU killed, persist 0", "QEMU killed, persist 1"]}),
    );
    drop(server);
    rel::kill_qemus(root);
}

/// An origin that answers one request with part of a file, then closes
/// the connection and stops listening: the server is gone.
async fn vanishing_origin(total: usize, sent: usize) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        drop(l);
        let mut head = Vec::new();
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = s.read(&mut buf).await.unwrap();
            if n == 0 {
                return;
            }
            head.extend_from_slice(&buf[..n]);
        }
        let data = iso_bytes(9, total);
        let h = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {total}\r\nETag: \"v1\"\r\nAccept-Ranges: bytes\r\n\r\n"
        );
        let _ = s.write_all(h.as_bytes()).await;
        let _ = s.write_all(&data[..sent]).await;
        let _ = s.flush().await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        // Gone: the socket reset, the port closed.
        drop(s);
    });
    format!("http://{addr}/vanish.iso")
}

#[tokio::test]
async fn a_download_whose_server_vanishes() {
    let dir = data_dir();
    let server = TestServer::start_with_config(
        dir.path(),
        "[fetch]\nretries = 2\nconnect_timeout = 2\nstall_timeout = 5\n",
    );
    let c = server.client().await;
    setup(&c).await;
    std::fs::write(iso_dir(dir.path()).join("kept.iso"), iso_bytes(8, 1 << 20)).unwrap();
    let pool = dir.path().join("tank");
    let mut f = Faults::new(&c, &pool).await;
    let url = vanishing_origin(4 << 20, 256 << 10).await;
    let id = fetch(&c, json!({"url": url})).await;
    let t = wait_finished(&c, &id, 120).await;
    assert_eq!(return_code(&t), "1", "{t}");
    let e = t["error"].as_str().unwrap_or("");
    assert!(
        e.contains("vanish.iso") || e.contains("connect") || e.contains("refused"),
        "{t}"
    );
    f.unchanged("a vanished origin").await;
    assert_eq!(tasks::names_in(&iso_dir(dir.path())), ["kept.iso"]);
    check_settled(&c, &[pool], dir.path(), &BTreeSet::new(), 10)
        .await
        .unwrap();
    rel::record(
        "host-download",
        json!({"faults_injected": 1, "kinds": ["the server vanishing mid-file"], "error": e}),
    );
}
