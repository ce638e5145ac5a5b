//! `fetchiso` against real servers on loopback: the reply, the event
//! sequence, the bytes on disk, every way a download can fail, kill,
//! resume, restart, and hostile input.

mod common;

use std::path::Path;
use std::time::Duration;

use common::origin::{content, sha256_hex, write_config, Behaviour, File, FtpServer, Origin, ETAG};
use common::tasks::*;
use common::*;
use serde_json::{json, Value};

/// A server over `dir` with `config` (TOML), set up with pool `tank`.
async fn server_with(dir: &Path, config: &str) -> (TestServer, Client) {
    let cfg_dir = dir.join("config");
    std::fs::create_dir_all(&cfg_dir).unwrap();
    let cfg = write_config(&cfg_dir, config);
    let server = TestServer::start_with(&dir.join("data"), &["--config", cfg.to_str().unwrap()]);
    let c = server.client().await;
    setup(&c).await;
    (server, c)
}

fn isos(dir: &Path) -> std::path::PathBuf {
    iso_dir(&dir.join("data"))
}

fn is_task_id(s: &str) -> bool {
    s.len() == 38 && s.starts_with('{') && s.ends_with('}') && uuid_like(&s[1..37])
}

fn uuid_like(s: &str) -> bool {
    s.split('-').map(str::len).collect::<Vec<_>>() == [8, 4, 4, 4, 12]
        && s.chars().all(|c| c == '-' || c.is_ascii_hexdigit())
}

/// Checks a whole event sequence of a successful download: pending,
/// running, progress with non-decreasing percent up to 100%, finished 0.
/// `midway`: the download was slow enough that a figure between 0 and
/// 100% must have been seen (a fast one may show only its end, since a
/// newer progress figure replaces an unread older one).
fn assert_success_sequence(frames: &[Value], id: &str, name: &str, command: &str, midway: bool) {
    for f in frames {
        assert_eq!(f["id"], "none", "{f}");
        assert_eq!(f["name"], "dispatcher", "{f}");
        assert_eq!(f["namespace"], "events", "{f}");
        let a = &f["args"];
        assert_eq!(a["event_system"], "sysadm/iohyve");
        assert_eq!(a["filename"], name);
        assert_eq!(a["process_details"]["process_id"], id);
        assert_eq!(a["process_details"]["cmd_list"], json!([command]));
        assert_eq!(a["state"], a["process_details"]["state"]);
    }
    let args: Vec<&Value> = frames.iter().map(|f| &f["args"]).collect();
    // Exactly what a pending task shows.
    assert_eq!(
        *args[0],
        json!({
            "event_system": "sysadm/iohyve",
            "filename": name,
            "process_details": {"cmd_list": [command], "process_id": id, "state": "pending"},
            "state": "pending",
        })
    );
    assert_eq!(args[1]["state"], "running");
    assert!(args[1]["process_details"]["time_started"].is_string());
    let last = args.last().unwrap();
    assert_eq!(last["state"], "finished");
    assert_eq!(return_code(last), "0");
    assert_eq!(last["percent_done"], "100%");
    assert!(last.get("error").is_none(), "{last}");
    assert!(last["process_details"]["time_finished"].is_string());
    let running = &args[1..args.len() - 1];
    assert!(running.iter().all(|a| a["state"] == "running"));
    let percents: Vec<u64> = running
        .iter()
        .filter_map(|a| a["percent_done"].as_str())
        .map(|p| p.trim_end_matches('%').parse().unwrap())
        .collect();
    assert!(
        percents.windows(2).all(|w| w[0] <= w[1]),
        "percent went back: {percents:?}"
    );
    assert_eq!(percents.last(), Some(&100), "{percents:?}");
    assert!(
        !midway || percents.iter().any(|p| *p > 0 && *p < 100),
        "no progress between 0 and 100: {percents:?}"
    );
    assert!(running
        .iter()
        .filter(|a| a.get("percent_done").is_some())
        .all(|a| a["download_rate"]
            .as_str()
            .is_some_and(|r| r.ends_with("B/s"))
            || a.get("download_rate").is_none()));
}

/// The ISO store holds exactly `names` (no `.part` left behind).
fn assert_store(dir: &Path, names: &[&str]) {
    assert_eq!(names_in(&isos(dir)), names, "ISO store content");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_download_reply_events_and_bytes() {
    let dir = data_dir();
    let origin = Origin::http().await;
    let data = content(2 << 20);
    let url = origin.put(
        "/pub/FreeBSD-14.1-RELEASE-amd64-disc1.iso",
        File::new(data.clone()).slowly(64 * 1024, Duration::from_millis(40)),
    );
    let (server, c) = server_with(dir.path(), "").await;
    assert_eq!(c.subscribe(&["dispatcher"]).await.unwrap(), "dispatcher");
    let mut events = c.take_events().unwrap();
    // The reply, exactly as the API document shows it.
    let mut ws = server.raw_ws("/").await;
    let frame = json!({"namespace": "sysadm", "name": "iohyve", "id": "fooid",
        "args": {"url": url, "action": "fetchiso"}});
    let reply = roundtrip(&mut ws, &frame.to_string()).await;
    let id = reply["args"]["fetchiso"]["queueid"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(is_task_id(&id), "{id}");
    let command = format!("iohyve fetch {url}");
    assert_eq!(
        reply,
        json!({"args": {"fetchiso": {"command": command, "comment": "Task Queued", "queueid": id}},
            "id": "fooid", "name": "response", "namespace": "sysadm"})
    );
    let frames = events_until_finished(&mut events, &id, 120).await;
    let name = "FreeBSD-14.1-RELEASE-amd64-disc1.iso";
    assert_success_sequence(&frames, &id, name, &command, true);
    assert_eq!(std::fs::read(isos(dir.path()).join(name)).unwrap(), data);
    assert_store(dir.path(), &[name]);
    assert_eq!(
        c.iohyve("listisos", json!({})).await.unwrap(),
        json!([name])
    );
    // The task's record on disk says how it ended.
    let rec = std::fs::read_to_string(
        dir.path()
            .join("data/hyve/tasks")
            .join(format!("{}.toml", &id[1..37])),
    )
    .unwrap();
    assert!(
        rec.contains("state = \"finished\"") && rec.contains("return_code = 0"),
        "{rec}"
    );
    // And the dispatcher lists it, in the event's shape.
    let t = &list(&c).await[&id];
    assert_eq!(t["state"], "finished");
    assert_eq!(return_code(t), "0");
    // Over REST, the request as the API document writes it.
    let small = origin.put("/pub/rest.iso", File::new(content(1000)));
    let (status, body) = server
        .rest(
            "/sysadm/iohyve",
            &json!({"url": small, "action": "fetchiso"}).to_string(),
        )
        .await;
    assert_eq!(status, 200);
    let rid = body["args"]["fetchiso"]["queueid"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(is_task_id(&rid) && rid != id, "{rid}");
    assert_eq!(
        body,
        json!({"args": {"fetchiso": {"command": format!("iohyve fetch {small}"),
            "comment": "Task Queued", "queueid": rid}}})
    );
    events_until_finished(&mut events, &rid, 120).await;
    assert_store(dir.path(), &[name, "rest.iso"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_download_with_its_own_ca_and_checksum() {
    let dir = data_dir();
    let origin = Origin::https().await;
    let untrusted = Origin::https().await;
    let data = content(700_000);
    let url = origin.put("/a.iso", File::new(data.clone()));
    let bad_url = untrusted.put("/b.iso", File::new(data.clone()));
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, origin.ca_pem.as_ref().unwrap()).unwrap();
    let (_server, c) = server_with(
        dir.path(),
        &format!("[fetch]\nca_files = [{:?}]\n", ca.to_str().unwrap()),
    )
    .await;
    c.subscribe(&["dispatcher"]).await.unwrap();
    let mut events = c.take_events().unwrap();
    let id = fetch(
        &c,
        json!({"url": url, "sha256": sha256_hex(&data).to_uppercase()}),
    )
    .await;
    let frames = events_until_finished(&mut events, &id, 120).await;
    assert_success_sequence(&frames, &id, "a.iso", &format!("iohyve fetch {url}"), false);
    assert_eq!(std::fs::read(isos(dir.path()).join("a.iso")).unwrap(), data);
    // A server whose certificate no trusted CA signed is refused.
    let id = fetch(&c, json!({"url": bad_url})).await;
    let last = events_until_finished(&mut events, &id, 120)
        .await
        .pop()
        .unwrap();
    assert_eq!(return_code(&last["args"]), "1");
    let err = last["args"]["error"].as_str().unwrap();
    assert!(
        err.contains("invalid peer certificate: UnknownIssuer"),
        "{err}"
    );
    assert!(err.contains("[fetch] ca_files"), "{err}");
    assert_store(dir.path(), &["a.iso"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ftp_download_with_user_and_password() {
    let dir = data_dir();
    let root = dir.path().join("ftproot");
    std::fs::create_dir_all(root.join("pub")).unwrap();
    let data = content(1_500_000);
    std::fs::write(root.join("pub/netinst.iso"), &data).unwrap();
    let ftp = FtpServer::start(&root, "bob", "s3cr@t");
    let (_server, c) = server_with(dir.path(), "").await;
    c.subscribe(&["dispatcher"]).await.unwrap();
    let mut events = c.take_events().unwrap();
    let url = format!("ftp://bob:s3cr%40t@127.0.0.1:{}/pub/netinst.iso", ftp.port);
    let r = c.iohyve("fetchiso", json!({"url": url})).await.unwrap();
    // The password is never shown.
    let command = format!(
        "iohyve fetch ftp://bob:***@127.0.0.1:{}/pub/netinst.iso",
        ftp.port
    );
    assert_eq!(r["command"], command);
    let id = r["queueid"].as_str().unwrap().to_string();
    let frames = events_until_finished(&mut events, &id, 120).await;
    assert_eq!(
        return_code(&frames.last().unwrap()["args"]),
        "0",
        "{frames:#?}"
    );
    assert!(frames.iter().all(|f| !f.to_string().contains("s3cr")));
    assert_eq!(
        std::fs::read(isos(dir.path()).join("netinst.iso")).unwrap(),
        data
    );
    // A wrong password fails the task with the server's refusal.
    let url = format!("ftp://bob:wrong@127.0.0.1:{}/pub/netinst.iso", ftp.port);
    let id = fetch(&c, json!({"url": url, "name": "other.iso"})).await;
    let last = events_until_finished(&mut events, &id, 120)
        .await
        .pop()
        .unwrap();
    assert_eq!(return_code(&last["args"]), "1");
    let err = last["args"]["error"].as_str().unwrap();
    assert!(err.contains("login as 'bob' refused"), "{err}");
    assert_store(dir.path(), &["netinst.iso"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_urls_read_only_below_the_allowed_folders() {
    let dir = data_dir();
    let root = dir.path().join("isos");
    std::fs::create_dir_all(root.join("sub")).unwrap();
    let data = content(300_000);
    std::fs::write(root.join("sub/local.iso"), &data).unwrap();
    std::fs::write(dir.path().join("secret.iso"), b"secret").unwrap();
    std::os::unix::fs::symlink(dir.path().join("secret.iso"), root.join("escape.iso")).unwrap();
    let (server, c) = server_with(
        dir.path(),
        &format!("[fetch]\nfile_roots = [{:?}]\n", root.to_str().unwrap()),
    )
    .await;
    c.subscribe(&["dispatcher"]).await.unwrap();
    let mut events = c.take_events().unwrap();
    let url = format!("file://{}", root.join("sub/local.iso").display());
    let id = fetch(&c, json!({"url": url})).await;
    let frames = events_until_finished(&mut events, &id, 120).await;
    assert_eq!(return_code(&frames.last().unwrap()["args"]), "0");
    assert_eq!(
        std::fs::read(isos(dir.path()).join("local.iso")).unwrap(),
        data
    );

    let before = snapshot(dir.path());
    let tasks_before = list(&c).await.len();
    for (bad, why) in [
        (
            format!("file://{}/secret.iso", dir.path().display()),
            "outside the folders",
        ),
        (
            format!("file://{}", root.join("escape.iso").display()),
            "outside the folders",
        ),
        (
            format!("file://{}/sub/../../secret.iso", root.display()),
            "outside the folders",
        ),
        (
            format!("file://{}/missing.iso", root.display()),
            "there is no file",
        ),
        (
            format!("file://{}/sub", root.display()),
            "not a regular file",
        ),
    ] {
        let e = c
            .iohyve("fetchiso", json!({"url": bad, "name": "x.iso"}))
            .await
            .unwrap_err();
        assert!(e.to_string().contains(why), "{bad}: {e}");
    }
    assert_unchanged(&before, &snapshot(dir.path()), "refused file:// URLs");
    assert_eq!(
        list(&c).await.len(),
        tasks_before,
        "a refused request made a task"
    );
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_failure_finishes_with_an_error_and_no_file() {
    let dir = data_dir();
    let origin = Origin::http().await;
    let data = content(1 << 20);
    let refused = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let cases: Vec<(String, Value, &str)> = vec![
        (
            "404".into(),
            json!({"url": format!("{}/missing.iso", origin.base)}),
            "404 Not Found",
        ),
        (
            "refused".into(),
            json!({"url": format!("http://{refused}/r.iso")}),
            "could not connect",
        ),
        (
            "stall".into(),
            json!({"url": origin.put("/stall.iso", File::new(data.clone()).behaving(Behaviour::StallAfter(100_000)))}),
            "stalled",
        ),
        (
            "close".into(),
            json!({"url": origin.put("/close.iso", File::new(data.clone()).behaving(Behaviour::CloseAfter(200_000)))}),
            "closed the connection",
        ),
        (
            "checksum".into(),
            json!({"url": origin.put("/sum.iso", File::new(data.clone())), "sha256": "0".repeat(64)}),
            "checksum mismatch",
        ),
        (
            "redirect loop".into(),
            json!({"url": origin.put("/loop.iso", File::new(vec![]).behaving(Behaviour::Redirect("/loop.iso".into())))}),
            "too many redirects",
        ),
    ];
    let (_server, c) = server_with(
        dir.path(),
        "[tasks]\nmax_concurrent = 8\n[fetch]\nstall_timeout = 2\nretries = 1\nmax_redirects = 3\n",
    )
    .await;
    c.subscribe(&["dispatcher"]).await.unwrap();
    let mut events = c.take_events().unwrap();
    let mut ids = Vec::new();
    for (_, args, _) in &cases {
        ids.push(fetch(&c, args.clone()).await);
    }
    let all = events_until_all_finished(&mut events, &ids, 180).await;
    for (id, (what, _, why)) in ids.iter().zip(&cases) {
        let last = &all[id].last().unwrap()["args"];
        assert_eq!(return_code(last), "1", "{what}: {last}");
        let err = last["error"]
            .as_str()
            .unwrap_or_else(|| panic!("{what}: no error in {last}"));
        assert!(err.contains(why), "{what}: {err}");
        assert!(
            err.ends_with(|c: char| c.is_alphanumeric() || ".)'".contains(c)),
            "{what}: {err}"
        );
    }
    assert_store(dir.path(), &[]);
    // The interrupted one was resumed once with a Range request first.
    let seen = origin.seen();
    assert!(
        seen.iter()
            .any(|s| s.path == "/close.iso" && s.range.as_deref() == Some("bytes=200000-")),
        "{seen:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_download_resumes_with_a_range_request() {
    let dir = data_dir();
    let origin = Origin::http().await;
    let data = content(1_000_000);
    let url = origin.put(
        "/resume.iso",
        File::new(data.clone()).behaving(Behaviour::CloseOnceAfter(300_000)),
    );
    let (server, c) = server_with(dir.path(), "").await;
    c.subscribe(&["dispatcher"]).await.unwrap();
    let mut events = c.take_events().unwrap();
    let id = fetch(&c, json!({"url": url, "sha256": sha256_hex(&data)})).await;
    let frames = events_until_finished(&mut events, &id, 120).await;
    assert_eq!(
        return_code(&frames.last().unwrap()["args"]),
        "0",
        "{}",
        server.log()
    );
    assert_eq!(
        std::fs::read(isos(dir.path()).join("resume.iso")).unwrap(),
        data
    );
    let seen = origin.seen();
    assert_eq!(seen.len(), 2, "{seen:#?}");
    assert_eq!(seen[0].range, None);
    assert_eq!(seen[1].range.as_deref(), Some("bytes=300000-"));
    assert_eq!(seen[1].if_range.as_deref(), Some(ETAG));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_are_followed() {
    let dir = data_dir();
    let origin = Origin::http().await;
    let data = content(100_000);
    origin.put("/real/r.iso", File::new(data.clone()));
    let url = origin.put(
        "/moved/r.iso",
        File::new(vec![]).behaving(Behaviour::Redirect("/real/r.iso".into())),
    );
    let (_server, c) = server_with(dir.path(), "").await;
    c.subscribe(&["dispatcher"]).await.unwrap();
    let mut events = c.take_events().unwrap();
    let id = fetch(&c, json!({"url": url})).await;
    let frames = events_until_finished(&mut events, &id, 120).await;
    assert_eq!(return_code(&frames.last().unwrap()["args"]), "0");
    assert_eq!(std::fs::read(isos(dir.path()).join("r.iso")).unwrap(), data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_through_the_dispatcher() {
    let dir = data_dir();
    let origin = Origin::http().await;
    let url = origin.put(
        "/slow.iso",
        File::new(content(4 << 20)).slowly(32 * 1024, Duration::from_millis(50)),
    );
    let (server, c) = server_with(dir.path(), "").await;
    c.subscribe(&["dispatcher"]).await.unwrap();
    let mut events = c.take_events().unwrap();
    let id = fetch(&c, json!({"url": url})).await;
    wait_for_progress(&mut events, &id).await;
    assert!(names_in(&isos(dir.path())).contains(&"slow.iso.part".to_string()));
    // One download per name at a time.
    let e = c.iohyve("fetchiso", json!({"url": url})).await.unwrap_err();
    assert!(
        e.to_string().contains("being downloaded already, by task"),
        "{e}"
    );
    // Over REST, as any client could.
    let (status, body) = server
        .rest(
            "/rpc/dispatcher",
            &json!({"action": "kill", "job_id": id}).to_string(),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(body, json!({"args": {"killed": {"jobs": [id]}}}));
    // When kill answers, the partial file is gone.
    assert_store(dir.path(), &[]);
    let last = events_until_finished(&mut events, &id, 60)
        .await
        .pop()
        .unwrap();
    assert_eq!(return_code(&last["args"]), "130");
    assert_eq!(
        last["args"]["error"],
        "the task was killed before it finished"
    );
    assert_eq!(return_code(&list(&c).await[&id]), "130");
    // Killing it again, or an unknown or malformed id, is an error.
    for (job, status, msg) in [
        (json!(id), 409, "has finished already"),
        (
            json!("{b3a8b980-a564-4ff8-86a2-1971bd4f58d1}"),
            404,
            "No task",
        ),
        (json!("../etc"), 400, "invalid task id"),
        (json!(7), 400, "must be a task id"),
    ] {
        let (s, b) = server
            .rest(
                "/rpc/dispatcher",
                &json!({"action": "kill", "job_id": job}).to_string(),
            )
            .await;
        assert_eq!(s, status, "{b}");
        assert!(
            b["args"]["kill"]["error"].as_str().unwrap().contains(msg),
            "{b}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_beyond_the_limit_wait_as_pending() {
    let dir = data_dir();
    let origin = Origin::http().await;
    let slow = |n| File::new(content(n)).slowly(64 * 1024, Duration::from_millis(20));
    let a = origin.put("/a.iso", slow(600_000));
    let b = origin.put("/b.iso", slow(600_000));
    let (_server, c) = server_with(dir.path(), "[tasks]\nmax_concurrent = 1\n").await;
    c.subscribe(&["dispatcher"]).await.unwrap();
    let mut events = c.take_events().unwrap();
    let ida = fetch(&c, json!({"url": a})).await;
    let idb = fetch(&c, json!({"url": b})).await;
    assert_ne!(ida, idb);
    let mut order = Vec::new();
    let mut finished = 0;
    while finished < 2 {
        let f = tokio::time::timeout(Duration::from_secs(120), events.recv())
            .await
            .unwrap()
            .unwrap();
        let a = &f["args"];
        let who = if a["process_details"]["process_id"] == json!(ida) {
            "a"
        } else {
            "b"
        };
        let state = a["state"].as_str().unwrap().to_string();
        if state == "finished" {
            finished += 1;
            assert_eq!(return_code(a), "0");
        }
        if order.last() != Some(&(who, state.clone())) {
            order.push((who, state));
        }
    }
    let states: Vec<String> = order.iter().map(|(w, s)| format!("{w}:{s}")).collect();
    let pos = |s: &str| states.iter().position(|x| x == s).unwrap();
    assert!(pos("b:running") > pos("a:finished"), "{states:?}");
    assert_store(dir.path(), &["a.iso", "b.iso"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_mid_download_resumes_it() {
    let dir = data_dir();
    let origin = Origin::http().await;
    let data = content(3 << 20);
    let url = origin.put(
        "/big.iso",
        File::new(data.clone()).slowly(64 * 1024, Duration::from_millis(40)),
    );
    let (mut server, c) = server_with(dir.path(), "").await;
    c.subscribe(&["dispatcher"]).await.unwrap();
    let mut events = c.take_events().unwrap();
    let id = fetch(&c, json!({"url": url, "sha256": sha256_hex(&data)})).await;
    wait_for_progress(&mut events, &id).await;
    // A crash: no chance to clean up.
    server.kill();
    drop(c);
    let part = isos(dir.path()).join("big.iso.part");
    let had = std::fs::metadata(&part).unwrap().len();
    assert!(had > 0);
    // A partial file no task owns (a crash of some other kind) is cleared.
    std::fs::write(isos(dir.path()).join("stray.iso.part"), b"half").unwrap();
    let cfg = dir.path().join("config/hyve.toml");
    let server = TestServer::start_with(
        &dir.path().join("data"),
        &["--config", cfg.to_str().unwrap()],
    );
    let c = server.client().await;
    // The partial file is never listed as an ISO.
    assert_eq!(c.iohyve("listisos", json!({})).await.unwrap(), json!([]));
    let t = wait_finished(&c, &id, 180).await;
    assert_eq!(return_code(&t), "0", "{t}");
    assert_eq!(
        std::fs::read(isos(dir.path()).join("big.iso")).unwrap(),
        data
    );
    assert_store(dir.path(), &["big.iso"]);
    // It went on from where it was, guarded by the validator it recorded.
    let seen = origin.seen();
    let resumed = seen.last().unwrap();
    let from: u64 = resumed
        .range
        .as_deref()
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no Range on resume: {seen:#?}"));
    assert!(from >= had, "resumed from {from}, had {had}");
    assert_eq!(resumed.if_range.as_deref(), Some(ETAG));
    assert_eq!(
        c.iohyve("listisos", json!({})).await.unwrap(),
        json!(["big.iso"])
    );
    // A finished task is still listed after another restart.
    drop(c);
    drop(server);
    let server = TestServer::start_with(
        &dir.path().join("data"),
        &["--config", cfg.to_str().unwrap()],
    );
    let c = server.client().await;
    let t = &list(&c).await[&id];
    assert_eq!(
        (t["state"].clone(), return_code(t)),
        (json!("finished"), "0".to_string())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_input_is_refused_at_once_and_changes_nothing() {
    let dir = data_dir();
    let origin = Origin::http().await;
    let root = dir.path().join("allowed");
    std::fs::create_dir_all(&root).unwrap();
    let (_server, c) = server_with(
        dir.path(),
        &format!("[fetch]\nfile_roots = [{:?}]\n", root.to_str().unwrap()),
    )
    .await;
    std::fs::write(isos(dir.path()).join("taken.iso"), b"mine").unwrap();
    let ok = format!("{}/fine.iso", origin.base);
    let cases: Vec<(Value, &str)> = vec![
        (
            json!({"url": "gopher://example.org/a.iso"}),
            "unsupported URL scheme 'gopher'",
        ),
        (
            json!({"url": "javascript:alert(1)"}),
            "unsupported URL scheme",
        ),
        (
            json!({"url": "scp://host/a.iso"}),
            "unsupported URL scheme 'scp'",
        ),
        (json!({"url": "no url at all"}), "spaces"),
        (
            json!({"url": ok, "name": "../escape.iso"}),
            "invalid ISO name",
        ),
        (json!({"url": ok, "name": "a/b.iso"}), "invalid ISO name"),
        (json!({"url": ok, "name": ".."}), "invalid ISO name"),
        (json!({"url": ok, "name": "-rf.iso"}), "invalid ISO name"),
        (json!({"url": ok, "name": "x.iso.part"}), "reserved"),
        (
            json!({"url": format!("{}/..%2F..%2Fetc%2Fpasswd", origin.base)}),
            "invalid ISO name",
        ),
        (
            json!({"url": format!("{}/dir/", origin.base)}),
            "does not end in a file name",
        ),
        (json!({"url": "file:///etc/passwd"}), "outside the folders"),
        (json!({"url": ok, "name": "taken.iso"}), "already exists"),
        (
            json!({"url": format!("{}/taken.iso", origin.base)}),
            "already exists",
        ),
        (json!({"url": ok, "sha256": "abc"}), "not a SHA-256 digest"),
        (json!({"url": 5}), "must be a string"),
    ];
    let before = snapshot(dir.path());
    for (args, why) in &cases {
        let e = c
            .iohyve("fetchiso", args.clone())
            .await
            .expect_err(&format!("{args} was accepted"));
        assert!(e.to_string().contains(why), "{args}: {e}");
    }
    assert_unchanged(&before, &snapshot(dir.path()), "hostile fetchiso");
    assert!(list(&c).await.is_empty(), "a refused request made a task");
    assert!(
        origin.seen().is_empty(),
        "a refused request reached the network"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetchiso_needs_setup() {
    let dir = data_dir();
    let server = TestServer::start(dir.path());
    let (status, body) = server
        .rest(
            "/sysadm/iohyve",
            r#"{"action":"fetchiso","url":"http://127.0.0.1:9/a.iso"}"#,
        )
        .await;
    assert_eq!(status, 409);
    assert!(body["args"]["fetchiso"]["error"]
        .as_str()
        .unwrap()
        .contains("not set up"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_iso_that_appears_meanwhile_is_never_overwritten() {
    let dir = data_dir();
    let origin = Origin::http().await;
    let url = origin.put(
        "/race.iso",
        File::new(content(3 << 20)).slowly(64 * 1024, Duration::from_millis(30)),
    );
    let (_server, c) = server_with(dir.path(), "").await;
    c.subscribe(&["dispatcher"]).await.unwrap();
    let mut events = c.take_events().unwrap();
    let id = fetch(&c, json!({"url": url})).await;
    wait_for_progress(&mut events, &id).await;
    // While it downloads, an ISO of that name arrives by a rename.
    std::fs::write(isos(dir.path()).join("mine.iso"), b"precious").unwrap();
    c.iohyve(
        "renameiso",
        json!({"source": "mine.iso", "target": "race.iso"}),
    )
    .await
    .unwrap();
    let last = events_until_finished(&mut events, &id, 120)
        .await
        .pop()
        .unwrap();
    assert_eq!(return_code(&last["args"]), "1");
    let err = last["args"]["error"].as_str().unwrap();
    assert!(err.contains("appeared while downloading"), "{err}");
    assert_eq!(
        std::fs::read(isos(dir.path()).join("race.iso")).unwrap(),
        b"precious"
    );
    assert_store(dir.path(), &["race.iso"]);
}
