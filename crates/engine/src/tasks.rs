//! The dispatcher: background tasks (ISO downloads) with an id, a state, a
//! return code and a record on disk that outlives the server.
//!
//! A task is `pending` until one of the `max_concurrent` slots is free,
//! then `running`, then `finished` with a return code: [`RC_OK`],
//! [`RC_FAILED`] with an error sentence, or [`RC_KILLED`]. Every change of
//! state is written to `<data_dir>/hyve/tasks/<uuid>.toml` (atomically)
//! before it is announced, and announced on the [`EventBus`] as a
//! `dispatcher` event in the shape SysAdm clients know (PROTOCOL.md §4).
//! Progress is announced too, at most every [`PROGRESS_INTERVAL`], and
//! never written to disk: after a restart the partial file itself says how
//! far a download got.
//!
//! A task found pending or running at start was cut short by a stop or a
//! crash: it is queued again (an http(s) download resumes from its partial
//! file under the validator it recorded; the others start over), at most
//! [`MAX_RESTARTS`] times, after which it is finished as failed. One cut
//! short while its complete file was being renamed into place finds that
//! file by the identity it recorded first, and finishes without fetching.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::{watch, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::events::{Event, EventBus};
use crate::fetch::{self, Failure, Fetcher, Job, Reporter};
use crate::fsutil::{self, write_atomic};
use crate::validate::{self, PARTIAL_SUFFIX};

/// The event name clients subscribe to.
pub const EVENT_NAME: &str = "dispatcher";
/// `event_system` of every dispatcher event this class sends.
pub const EVENT_SYSTEM: &str = "sysadm/iohyve";
/// Return code of a task that did what it was asked.
pub const RC_OK: i32 = 0;
/// Return code of a task that failed (the `error` says why).
pub const RC_FAILED: i32 = 1;
/// Return code of a task killed through `rpc/dispatcher` (128 + SIGINT,
/// as a shell reports a command stopped with Ctrl-C).
pub const RC_KILLED: i32 = 130;
/// The least time between two progress events of one task.
pub const PROGRESS_INTERVAL: Duration = Duration::from_millis(250);
/// How often a task cut short by a stop or crash is queued again.
pub const MAX_RESTARTS: u32 = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskState {
    Pending,
    Running,
    Finished,
}

impl TaskState {
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Pending => "pending",
            TaskState::Running => "running",
            TaskState::Finished => "finished",
        }
    }
}

/// What a fetch task downloads. The URL is kept whole (an FTP password
/// included) since a restart needs it; the record file is readable by
/// root only, and everything shown to clients uses [`fetch::redact`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FetchSpec {
    pub url: String,
    pub name: String,
    pub pool: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// The http(s) validator the partial file was fetched under.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validator: Option<String>,
    /// Set just before the complete file is renamed into place: its
    /// `<device>:<inode>`, by which a restart knows the download ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placing: Option<String>,
}

/// Everything kept about one task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskRecord {
    /// `{<uuid>}`: the `queueid` of the reply and `process_id` of events.
    pub id: String,
    /// `iohyve fetch <url>`, as shown (no password).
    pub command: String,
    pub state: TaskState,
    /// When it was queued (RFC 3339).
    pub created: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub return_code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// How often a stop or crash cut it short.
    #[serde(default)]
    pub restarts: u32,
    pub fetch: FetchSpec,
}

/// How far a running download is, in memory only.
#[derive(Debug, Clone, Default)]
struct Progress {
    done: u64,
    total: Option<u64>,
    /// Bytes per second, measured over the last second or so.
    rate: Option<f64>,
    sample: Option<(Instant, u64)>,
    last_event: Option<Instant>,
}

impl Progress {
    fn percent(&self) -> Option<u64> {
        let total = self.total?;
        if total == 0 || self.done >= total {
            return Some(100);
        }
        Some((self.done.saturating_mul(100) / total).min(99))
    }

    fn update(&mut self, done: u64, total: Option<u64>, now: Instant) {
        match self.sample {
            Some((t, d)) if now.duration_since(t) >= Duration::from_secs(1) => {
                let secs = now.duration_since(t).as_secs_f64();
                self.rate = Some(done.saturating_sub(d) as f64 / secs);
                self.sample = Some((now, done));
            }
            Some((t, d)) if self.rate.is_none() && now.duration_since(t) >= PROGRESS_INTERVAL => {
                let secs = now.duration_since(t).as_secs_f64();
                self.rate = Some(done.saturating_sub(d) as f64 / secs);
            }
            Some(_) => {}
            None => self.sample = Some((now, done)),
        }
        self.done = done;
        self.total = total;
    }
}

/// A rate for people: `11.2 MB/s` (SI units).
pub fn human_rate(bytes_per_sec: f64) -> String {
    const UNITS: [&str; 4] = ["kB/s", "MB/s", "GB/s", "TB/s"];
    if bytes_per_sec < 1000.0 {
        return format!("{} B/s", bytes_per_sec.round() as u64);
    }
    let mut v = bytes_per_sec / 1000.0;
    let mut unit = UNITS[0];
    for u in &UNITS[1..] {
        if v < 1000.0 {
            break;
        }
        v /= 1000.0;
        unit = u;
    }
    format!("{v:.1} {unit}")
}

fn now_text() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

struct Entry {
    rec: TaskRecord,
    progress: Progress,
    cancel: CancellationToken,
    done: watch::Sender<bool>,
    /// The order in which finished tasks were announced (their `finished`
    /// event published); `None` until then. Only announced tasks may be
    /// forgotten, oldest first: recorded finish times have one-second
    /// resolution, and a task forgotten between its finish and its event
    /// would never tell its subscribers it finished.
    announced: Option<u64>,
}

impl Entry {
    fn new(rec: TaskRecord) -> Entry {
        // Tasks read at start that had finished were announced by an
        // earlier server; they are older than any finished since.
        let announced = (rec.state == TaskState::Finished).then_some(0);
        Entry {
            rec,
            progress: Progress::default(),
            cancel: CancellationToken::new(),
            done: watch::channel(false).0,
            announced,
        }
    }

    /// The dispatcher payload (PROTOCOL.md §4) for the task as it is now.
    fn payload(&self) -> Value {
        let r = &self.rec;
        let state = r.state.as_str();
        let mut details = json!({
            "process_id": r.id,
            "state": state,
            "cmd_list": [r.command],
        });
        if let Some(s) = &r.started {
            details["time_started"] = json!(s);
        }
        if let Some(f) = &r.finished {
            details["time_finished"] = json!(f);
        }
        if let Some(rc) = r.return_code {
            details[format!("return_codes/{}", r.command)] = json!(rc.to_string());
        }
        let mut p = json!({
            "event_system": EVENT_SYSTEM,
            "state": state,
            "filename": r.fetch.name,
            "process_details": details,
        });
        if r.state != TaskState::Pending {
            if let Some(pct) = self.progress.percent() {
                p["percent_done"] = json!(format!("{pct}%"));
            }
            if let Some(rate) = self.progress.rate {
                p["download_rate"] = json!(human_rate(rate));
            }
        }
        if let Some(e) = &r.error {
            p["error"] = json!(e);
        }
        p
    }

    fn event(&self, progress: bool) -> Event {
        Event {
            name: EVENT_NAME.into(),
            payload: self.payload(),
            progress_of: progress.then(|| self.rec.id.clone()),
        }
    }
}

/// Limits on tasks, from the config's `[tasks]`.
#[derive(Debug, Clone)]
pub struct TaskLimits {
    /// Tasks running at once; more wait as `pending`.
    pub max_concurrent: usize,
    /// Finished tasks remembered (in memory and on disk), newest first.
    pub history: usize,
}

impl Default for TaskLimits {
    fn default() -> Self {
        TaskLimits {
            max_concurrent: 2,
            history: 100,
        }
    }
}

pub struct Dispatcher {
    dir: PathBuf,
    engine: Arc<Engine>,
    bus: Arc<EventBus>,
    fetcher: Fetcher,
    slots: Arc<Semaphore>,
    history: usize,
    tasks: Mutex<BTreeMap<String, Entry>>,
    /// The last number given to an announced finished task.
    announced: std::sync::atomic::AtomicU64,
    /// Held by [`Dispatcher::commit`], the one way a known task's record
    /// changes, and by `prune`: record writes happen one at a time, each
    /// from the record as the last one left it.
    saving: tokio::sync::Mutex<()>,
}

fn record_file(dir: &std::path::Path, id: &str) -> PathBuf {
    dir.join(format!(
        "{}.toml",
        id.trim_start_matches('{').trim_end_matches('}')
    ))
}

fn encode(rec: &TaskRecord) -> Vec<u8> {
    let body = toml::to_string(rec).expect("task records serialize");
    format!("# A hyve background task. Kept by hyve; read at start.\n\n{body}").into_bytes()
}

impl Dispatcher {
    /// Reads the task records of `dir` (made if missing). Blocking. Tasks
    /// that were cut short are queued again by [`Dispatcher::start`].
    pub fn open(
        dir: PathBuf,
        engine: Arc<Engine>,
        bus: Arc<EventBus>,
        fetcher: Fetcher,
        limits: TaskLimits,
    ) -> Result<Arc<Dispatcher>> {
        {
            use std::os::unix::fs::DirBuilderExt;
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dir)
                .map_err(|e| Error::io("create", &dir, e))?;
        }
        let mut tasks = BTreeMap::new();
        for e in fs::read_dir(&dir)
            .map_err(|e| Error::io("read", &dir, e))?
            .flatten()
        {
            let name = e.file_name().to_string_lossy().into_owned();
            let path = e.path();
            if fsutil::is_atomic_temp(&name) {
                let _ = fs::remove_file(&path);
                continue;
            }
            let Some(stem) = name.strip_suffix(".toml") else {
                continue;
            };
            let rec: TaskRecord = match fs::read_to_string(&path)
                .map_err(|e| e.to_string())
                .and_then(|t| toml::from_str(&t).map_err(|e| e.to_string()))
            {
                Ok(r) => r,
                Err(err) => {
                    warn!(path = %path.display(), %err, "task record does not parse; skipping it (left untouched)");
                    continue;
                }
            };
            if validate::task_id(&rec.id).as_deref() != Ok(rec.id.as_str())
                || stem != rec.id.trim_start_matches('{').trim_end_matches('}')
            {
                warn!(path = %path.display(), "task record's id does not match its file; skipping it");
                continue;
            }
            tasks.insert(rec.id.clone(), Entry::new(rec));
        }
        info!(tasks = tasks.len(), "task records loaded");
        Ok(Arc::new(Dispatcher {
            dir,
            engine,
            bus,
            fetcher,
            slots: Arc::new(Semaphore::new(limits.max_concurrent.max(1))),
            history: limits.history,
            tasks: Mutex::new(tasks),
            announced: std::sync::atomic::AtomicU64::new(0),
            saving: tokio::sync::Mutex::new(()),
        }))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Entry>> {
        self.tasks.lock().expect("task table poisoned")
    }

    /// Queues again the tasks a stop or crash cut short, and removes
    /// partial files no task owns. Call once, inside the runtime.
    pub async fn start(self: &Arc<Self>) {
        let mut requeue = Vec::new();
        let mut give_up = Vec::new();
        let mut owned = Vec::new();
        for e in self.lock().values() {
            if e.rec.state == TaskState::Finished {
                continue;
            }
            if e.rec.restarts >= MAX_RESTARTS {
                give_up.push(e.rec.id.clone());
                continue;
            }
            owned.push(format!("{}{PARTIAL_SUFFIX}", e.rec.fetch.name));
            requeue.push(e.rec.id.clone());
        }
        if let Some(setup) = self.engine.setup_record() {
            for pool in &setup.pools {
                self.remove_orphans(self.engine.store().iso_dir(pool), &owned);
            }
        }
        for id in give_up {
            let msg = format!(
                "the server stopped {MAX_RESTARTS} times during this task; not trying again"
            );
            self.finish(&id, Err(Failure::Failed(msg))).await;
        }
        for id in requeue {
            info!(task = %id, "queueing again a task the last stop cut short");
            self.commit(&id, |r| {
                r.restarts += 1;
                r.state = TaskState::Pending;
                r.started = None;
            })
            .await;
            self.publish(&id, false);
            tokio::spawn(self.clone().run(id));
        }
    }

    fn remove_orphans(&self, dir: PathBuf, owned: &[String]) {
        let Ok(entries) = fs::read_dir(&dir) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.ends_with(PARTIAL_SUFFIX) && !owned.contains(&name) {
                info!(path = %e.path().display(), "removing a partial download no task owns");
                let _ = fs::remove_file(e.path());
            }
        }
    }

    /// `fetchiso`: checks everything that can be checked now, records the
    /// task and queues it. Errors come back at once and leave no task.
    pub async fn fetch_iso(
        self: &Arc<Self>,
        url: &str,
        name: Option<&str>,
        sha256: Option<&str>,
    ) -> Result<TaskRecord> {
        let parsed = validate::fetch_url(url).map_err(Error::invalid)?;
        let name = match name.filter(|n| !n.is_empty()) {
            Some(n) => {
                validate::iso_name(n).map_err(Error::invalid)?;
                n.to_string()
            }
            None => validate::iso_name_from_url(&parsed).map_err(Error::invalid)?,
        };
        let sha256 = sha256
            .filter(|s| !s.is_empty())
            .map(validate::sha256_hex)
            .transpose()
            .map_err(Error::invalid)?;
        let setup = self.engine.setup_or_err()?;
        self.fetcher.precheck(&parsed)?;
        if self.engine.list_isos().await?.contains(&name) {
            return Err(Error::conflict(format!(
                "an ISO named '{name}' already exists; remove or rename it first, or give this download another name"
            )));
        }
        // The URL as sent, unless it carries a password.
        let shown = if parsed.password().is_some() {
            fetch::redact(&parsed)
        } else {
            url.to_string()
        };
        let rec = TaskRecord {
            id: format!("{{{}}}", uuid::Uuid::new_v4().hyphenated()),
            command: format!("iohyve fetch {shown}"),
            state: TaskState::Pending,
            created: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            started: None,
            finished: None,
            return_code: None,
            error: None,
            restarts: 0,
            fetch: FetchSpec {
                url: parsed.to_string(),
                name: name.clone(),
                pool: setup.pool.clone(),
                sha256,
                validator: None,
                placing: None,
            },
        };
        {
            let mut t = self.lock();
            if let Some(other) = t
                .values()
                .find(|e| e.rec.state != TaskState::Finished && e.rec.fetch.name == name)
            {
                return Err(Error::conflict(format!(
                    "'{name}' is being downloaded already, by task {}",
                    other.rec.id
                )));
            }
            t.insert(rec.id.clone(), Entry::new(rec.clone()));
        }
        if let Err(e) = self.write_record(&rec).await {
            self.lock().remove(&rec.id);
            return Err(e);
        }
        info!(task = %rec.id, url = %shown, iso = %name, "download queued");
        self.publish(&rec.id, false);
        tokio::spawn(self.clone().run(rec.id.clone()));
        Ok(rec)
    }

    async fn write_record(&self, rec: &TaskRecord) -> Result<()> {
        let path = record_file(&self.dir, &rec.id);
        let data = encode(rec);
        tokio::task::spawn_blocking(move || {
            write_atomic(&path, &data).map_err(|e| Error::io("write", &path, e))
        })
        .await
        .map_err(|e| Error::internal(format!("storage task failed: {e}")))?
    }

    /// Applies `change` to the task's record on disk, and only then in
    /// memory, where `list` and events see it. False if there is no such
    /// task. Should the write fail, the change is still made in memory
    /// (the server goes on with what it knows) and the failure logged.
    async fn commit(&self, id: &str, change: impl FnOnce(&mut TaskRecord)) -> bool {
        let _g = self.saving.lock().await;
        let Some(mut rec) = self.record(id) else {
            return false;
        };
        change(&mut rec);
        if let Err(e) = self.write_record(&rec).await {
            warn!(task = %id, error = %e, "could not record the task's state");
        }
        match self.lock().get_mut(id) {
            Some(e) => {
                e.rec = rec;
                true
            }
            None => false,
        }
    }

    fn publish(&self, id: &str, progress: bool) {
        let ev = self.lock().get(id).map(|e| e.event(progress));
        if let Some(ev) = ev {
            self.bus.publish(ev);
        }
    }

    async fn run(self: Arc<Self>, id: String) {
        let Some((cancel, spec)) = self
            .lock()
            .get(&id)
            .map(|e| (e.cancel.clone(), e.rec.fetch.clone()))
        else {
            return;
        };
        let permit = tokio::select! {
            p = self.slots.clone().acquire_owned() => p.expect("the semaphore is never closed"),
            _ = cancel.cancelled() => {
                self.finish(&id, Err(Failure::Cancelled)).await;
                return;
            }
        };
        self.commit(&id, |r| {
            r.state = TaskState::Running;
            r.started = Some(now_text());
        })
        .await;
        self.publish(&id, false);
        let job = match url::Url::parse(&spec.url) {
            Ok(url) => Job {
                url,
                name: spec.name.clone(),
                sha256: spec.sha256.clone(),
                iso_dir: self.engine.store().iso_dir(&spec.pool),
                validator: spec.validator.clone(),
                placing: spec.placing.clone(),
            },
            Err(e) => {
                self.finish(
                    &id,
                    Err(Failure::Failed(format!(
                        "the recorded URL does not parse: {e}"
                    ))),
                )
                .await;
                return;
            }
        };
        let reporter = TaskReporter {
            d: self.clone(),
            id: id.clone(),
        };
        let result = self
            .fetcher
            .run(&self.engine, &job, &cancel, &reporter)
            .await;
        drop(permit);
        self.finish(&id, result).await;
    }

    async fn finish(&self, id: &str, result: std::result::Result<u64, Failure>) {
        let ok = result.is_ok();
        match &result {
            Ok(len) => {
                if let Some(e) = self.lock().get_mut(id) {
                    e.progress.update(*len, Some(*len), Instant::now());
                }
            }
            Err(_) => {
                // The download removes its partial file itself; this covers
                // a task killed while pending with a partial file from
                // before a restart.
                if let Some(rec) = self.record(id) {
                    let dir = self.engine.store().iso_dir(&rec.fetch.pool);
                    fetch::remove_part(&dir.join(format!("{}{PARTIAL_SUFFIX}", rec.fetch.name)))
                        .await;
                }
            }
        }
        let end = |r: &mut TaskRecord| {
            r.state = TaskState::Finished;
            r.finished = Some(now_text());
            match &result {
                Ok(_) => r.return_code = Some(RC_OK),
                Err(f) => {
                    r.return_code = Some(match f {
                        Failure::Cancelled => RC_KILLED,
                        Failure::Failed(_) => RC_FAILED,
                    });
                    r.error = Some(f.message());
                }
            }
            r.fetch.validator = None;
            r.fetch.placing = None;
        };
        // On disk first: a task anyone has seen finished stays finished
        // whenever the server dies, and is never run again.
        if !self.commit(id, end).await {
            return;
        }
        match &result {
            Ok(len) => info!(task = %id, bytes = len, "task finished"),
            Err(f) => info!(task = %id, error = %f.message(), "task failed"),
        }
        if ok {
            // The last figure, so that a bar ends at 100%.
            self.publish_progress_now(id);
        }
        self.publish(id, false);
        let order = self
            .announced
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1;
        if let Some(e) = self.lock().get_mut(id) {
            e.announced = Some(order);
            let _ = e.done.send(true);
        }
        self.prune().await;
    }

    fn publish_progress_now(&self, id: &str) {
        let ev = {
            let mut t = self.lock();
            t.get_mut(id).map(|e| {
                let mut ev = e.event(true);
                // Announced as running: `finished` follows at once.
                ev.payload["state"] = json!("running");
                ev.payload["process_details"]["state"] = json!("running");
                if let Some(obj) = ev.payload["process_details"].as_object_mut() {
                    obj.retain(|k, _| !k.starts_with("return_codes/") && k != "time_finished");
                }
                e.progress.last_event = Some(Instant::now());
                ev
            })
        };
        if let Some(ev) = ev {
            self.bus.publish(ev);
        }
    }

    /// Forgets the oldest finished tasks beyond the history limit.
    async fn prune(&self) {
        let gone: Vec<String> = {
            let mut t = self.lock();
            let mut finished: Vec<(u64, String, String)> = t
                .values()
                .filter_map(|e| {
                    let order = e.announced?;
                    let at = e.rec.finished.clone().unwrap_or_default();
                    Some((order, at, e.rec.id.clone()))
                })
                .collect();
            if finished.len() <= self.history {
                return;
            }
            finished.sort();
            let n = finished.len() - self.history;
            let gone: Vec<String> = finished.into_iter().take(n).map(|(_, _, id)| id).collect();
            for id in &gone {
                t.remove(id);
            }
            gone
        };
        let _g = self.saving.lock().await;
        for id in gone {
            let path = record_file(&self.dir, &id);
            if let Err(e) = fs::remove_file(&path) {
                if e.kind() != io::ErrorKind::NotFound {
                    warn!(path = %path.display(), error = %e, "could not remove an old task record");
                }
            }
        }
    }

    /// Every task, oldest first, each as its dispatcher payload.
    pub fn list(&self) -> Vec<(String, Value)> {
        let t = self.lock();
        let mut v: Vec<(&String, &Entry)> = t.iter().collect();
        v.sort_by(|a, b| a.1.rec.created.cmp(&b.1.rec.created).then(a.0.cmp(b.0)));
        v.into_iter()
            .map(|(id, e)| (id.clone(), e.payload()))
            .collect()
    }

    /// A copy of one task's record.
    pub fn record(&self, id: &str) -> Option<TaskRecord> {
        self.lock().get(id).map(|e| e.rec.clone())
    }

    /// Kills tasks: every id must name a task that has not finished, or
    /// nothing is killed. Returns once each has finished (its partial file
    /// removed), with the ids in their canonical form.
    pub async fn kill(&self, ids: &[String]) -> Result<Vec<String>> {
        if ids.is_empty() {
            return Err(Error::invalid("no task id given to kill"));
        }
        let mut canon = Vec::new();
        for id in ids {
            let c = validate::task_id(id).map_err(Error::invalid)?;
            if !canon.contains(&c) {
                canon.push(c);
            }
        }
        let waits = {
            let t = self.lock();
            for id in &canon {
                match t.get(id) {
                    None => return Err(Error::not_found(format!("No task '{id}'"))),
                    Some(e) if e.rec.state == TaskState::Finished => {
                        return Err(Error::conflict(format!("task {id} has finished already")))
                    }
                    Some(_) => {}
                }
            }
            canon
                .iter()
                .map(|id| {
                    let e = &t[id];
                    let rx = e.done.subscribe();
                    e.cancel.cancel();
                    rx
                })
                .collect::<Vec<_>>()
        };
        for mut rx in waits {
            let _ = tokio::time::timeout(Duration::from_secs(60), rx.wait_for(|d| *d)).await;
        }
        info!(tasks = ?canon, "tasks killed");
        Ok(canon)
    }

    fn on_progress(&self, id: &str, done: u64, total: Option<u64>) {
        let now = Instant::now();
        let ev = {
            let mut t = self.lock();
            let Some(e) = t.get_mut(id) else {
                return;
            };
            e.progress.update(done, total, now);
            let due = e
                .progress
                .last_event
                .is_none_or(|last| now.duration_since(last) >= PROGRESS_INTERVAL);
            if !due || done == 0 {
                return;
            }
            e.progress.last_event = Some(now);
            e.event(true)
        };
        self.bus.publish(ev);
    }
}

/// Relays a download's progress to its task.
struct TaskReporter {
    d: Arc<Dispatcher>,
    id: String,
}

impl Reporter for TaskReporter {
    fn progress(&self, done: u64, total: Option<u64>) {
        self.d.on_progress(&self.id, done, total);
    }

    fn validator<'a>(&'a self, v: &'a str) -> fetch::BoxFuture<'a> {
        Box::pin(async move {
            let changed = self
                .d
                .record(&self.id)
                .is_some_and(|r| r.fetch.validator.as_deref() != Some(v));
            if changed {
                self.d
                    .commit(&self.id, |r| r.fetch.validator = Some(v.to_string()))
                    .await;
            }
        })
    }

    fn placing<'a>(&'a self, identity: &'a str) -> fetch::BoxFuture<'a> {
        Box::pin(async move {
            self.d
                .commit(&self.id, |r| r.fetch.placing = Some(identity.to_string()))
                .await;
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::store::dir::DirStore;
    use crate::validate::Limits;

    /// An engine over a fresh dir store, set up with pool `tank`.
    async fn engine(root: &std::path::Path) -> Arc<Engine> {
        let store = Arc::new(DirStore::new(root, Default::default()));
        let e = Arc::new(Engine::open(store, Limits::default()).unwrap());
        e.setup("tank", "re0").await.unwrap();
        e
    }

    /// A folder under `root` holding `a.iso` ("the iso"): its file:// URL,
    /// and a fetcher allowed to read below that folder.
    fn file_source(root: &std::path::Path) -> (String, Fetcher) {
        let src = root.join("src");
        std::fs::create_dir_all(&src).unwrap();
        std::fs::write(src.join("a.iso"), b"the iso").unwrap();
        let url = url::Url::from_file_path(src.join("a.iso"))
            .unwrap()
            .to_string();
        let fetcher = Fetcher::new(crate::fetch::FetchConfig {
            file_roots: vec![std::fs::canonicalize(&src).unwrap()],
            ..Default::default()
        })
        .unwrap();
        (url, fetcher)
    }

    fn record(id: &str, state: TaskState, restarts: u32, url: &str, name: &str) -> TaskRecord {
        TaskRecord {
            id: id.into(),
            command: format!("iohyve fetch {url}"),
            state,
            created: "2026-01-01T00:00:00.000Z".into(),
            started: Some("2026-01-01T00:00:01Z".into()),
            finished: None,
            return_code: None,
            error: None,
            restarts,
            fetch: FetchSpec {
                url: url.into(),
                name: name.into(),
                pool: "tank".into(),
                sha256: None,
                validator: None,
                placing: None,
            },
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn tasks_cut_short_are_resumed_or_given_up() {
        let d = tempfile::tempdir().unwrap();
        let e = engine(d.path()).await;
        let (url, fetcher) = file_source(d.path());
        let tasks_dir = d.path().join("hyve/tasks");
        std::fs::create_dir_all(&tasks_dir).unwrap();
        let again = "{11111111-1111-4111-8111-111111111111}";
        let given_up = "{22222222-2222-4222-8222-222222222222}";
        for rec in [
            record(again, TaskState::Running, 0, &url, "again.iso"),
            record(given_up, TaskState::Running, MAX_RESTARTS, &url, "lost.iso"),
        ] {
            std::fs::write(record_file(&tasks_dir, &rec.id), encode(&rec)).unwrap();
        }
        let iso_dir = e.store().iso_dir("tank");
        std::fs::write(iso_dir.join("again.iso.part"), b"the").unwrap();
        std::fs::write(iso_dir.join("lost.iso.part"), b"th").unwrap();
        std::fs::write(iso_dir.join("stray.iso.part"), b"x").unwrap();
        let bus = EventBus::new();
        let sub = bus.subscribe();
        sub.add_names([EVENT_NAME]);
        let disp = Dispatcher::open(
            tasks_dir.clone(),
            e.clone(),
            bus.clone(),
            fetcher,
            TaskLimits::default(),
        )
        .unwrap();
        disp.start().await;
        // The one given up is finished at once, as failed; its file is gone.
        let r = disp.record(given_up).unwrap();
        assert_eq!(r.state, TaskState::Finished);
        assert_eq!(r.return_code, Some(RC_FAILED));
        assert!(r.error.unwrap().contains("stopped 3 times"));
        // The other runs again to the end.
        let mut states = Vec::new();
        loop {
            let ev = tokio::time::timeout(Duration::from_secs(60), sub.recv())
                .await
                .unwrap()
                .unwrap();
            if ev.payload["process_details"]["process_id"] != again {
                continue;
            }
            let s = ev.payload["state"].as_str().unwrap().to_string();
            if states.last() != Some(&s) {
                states.push(s.clone());
            }
            if s == "finished" {
                assert_eq!(
                    ev.payload["process_details"][format!("return_codes/iohyve fetch {url}")],
                    "0"
                );
                break;
            }
        }
        assert_eq!(states, ["pending", "running", "finished"]);
        assert_eq!(disp.record(again).unwrap().restarts, 1);
        let mut names: Vec<String> = std::fs::read_dir(&iso_dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["again.iso"]);
        assert_eq!(
            std::fs::read(iso_dir.join("again.iso")).unwrap(),
            b"the iso"
        );
        // Both records say how they ended.
        let text = std::fs::read_to_string(record_file(&tasks_dir, given_up)).unwrap();
        assert!(
            text.contains("state = \"finished\"") && text.contains("return_code = 1"),
            "{text}"
        );
    }

    /// A restart after a crash around the final rename: the complete file
    /// is found by the identity recorded before the rename (in place, or
    /// still beside it) and the task finishes without fetching again; an
    /// ISO by that name with another identity is someone else's, untouched.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_download_cut_short_at_its_rename_is_not_fetched_again() {
        use std::os::unix::fs::MetadataExt;
        let d = tempfile::tempdir().unwrap();
        let e = engine(d.path()).await;
        let (url, fetcher) = file_source(d.path());
        let tasks_dir = d.path().join("hyve/tasks");
        std::fs::create_dir_all(&tasks_dir).unwrap();
        let iso_dir = e.store().iso_dir("tank");
        let identity = |p: &std::path::Path| fetch::file_identity(&std::fs::metadata(p).unwrap());
        std::fs::write(iso_dir.join("placed.iso"), b"placed bytes").unwrap();
        std::fs::write(iso_dir.join("waiting.iso.part"), b"waiting bytes").unwrap();
        std::fs::write(iso_dir.join("foreign.iso"), b"someone else's").unwrap();
        let placed_ino = std::fs::metadata(iso_dir.join("placed.iso")).unwrap().ino();
        let cases = [
            (
                "{44444444-4444-4444-8444-444444444441}",
                "placed.iso",
                identity(&iso_dir.join("placed.iso")),
            ),
            (
                "{44444444-4444-4444-8444-444444444442}",
                "waiting.iso",
                identity(&iso_dir.join("waiting.iso.part")),
            ),
            (
                "{44444444-4444-4444-8444-444444444443}",
                "foreign.iso",
                "1:1".to_string(),
            ),
        ];
        for (id, name, placing) in &cases {
            let mut rec = record(id, TaskState::Running, 0, &url, name);
            rec.fetch.placing = Some(placing.clone());
            std::fs::write(record_file(&tasks_dir, id), encode(&rec)).unwrap();
        }
        let disp = Dispatcher::open(
            tasks_dir,
            e.clone(),
            EventBus::new(),
            fetcher,
            TaskLimits::default(),
        )
        .unwrap();
        disp.start().await;
        let deadline = Instant::now() + Duration::from_secs(30);
        let ended = |id: &str| {
            let r = disp.record(id).unwrap();
            (r.state == TaskState::Finished).then_some((r.return_code, r.error, r.fetch.placing))
        };
        while cases.iter().any(|(id, _, _)| ended(id).is_none()) {
            assert!(Instant::now() < deadline, "{:?}", disp.list());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(ended(cases[0].0), Some((Some(RC_OK), None, None)));
        assert_eq!(ended(cases[1].0), Some((Some(RC_OK), None, None)));
        let (rc, error, _) = ended(cases[2].0).unwrap();
        assert_eq!(rc, Some(RC_FAILED));
        assert!(error.unwrap().contains("appeared while downloading"));
        let read = |n: &str| std::fs::read(iso_dir.join(n)).unwrap();
        assert_eq!(read("placed.iso"), b"placed bytes");
        assert_eq!(
            std::fs::metadata(iso_dir.join("placed.iso")).unwrap().ino(),
            placed_ino
        );
        assert_eq!(read("waiting.iso"), b"waiting bytes");
        assert_eq!(read("foreign.iso"), b"someone else's");
        let mut names: Vec<String> = std::fs::read_dir(&iso_dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["foreign.iso", "placed.iso", "waiting.iso"]);
    }

    /// What `list` and the events say of a task is on disk first: a task
    /// seen finished stays finished however the server dies next. (A server
    /// killed just after a client saw "finished" once ran the task again.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_task_is_seen_finished_only_once_its_record_says_so() {
        let d = tempfile::tempdir().unwrap();
        let e = engine(d.path()).await;
        let (url, fetcher) = file_source(d.path());
        let tasks_dir = d.path().join("hyve/tasks");
        std::fs::create_dir_all(&tasks_dir).unwrap();
        let id = "{33333333-3333-4333-8333-333333333333}";
        let rec = record(id, TaskState::Running, MAX_RESTARTS, &url, "lost.iso");
        std::fs::write(record_file(&tasks_dir, id), encode(&rec)).unwrap();
        let disp = Dispatcher::open(
            tasks_dir.clone(),
            e.clone(),
            EventBus::new(),
            fetcher,
            TaskLimits::default(),
        )
        .unwrap();
        let on_disk = || std::fs::read_to_string(record_file(&tasks_dir, id)).unwrap();
        // Record writes wait while the test holds their lock.
        let writes = disp.saving.lock().await;
        let starting = tokio::spawn({
            let disp = disp.clone();
            async move { disp.start().await }
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(on_disk().contains("state = \"running\""));
        assert_eq!(disp.record(id).unwrap().state, TaskState::Running);
        assert_eq!(disp.list()[0].1["state"], "running");
        drop(writes);
        starting.await.unwrap();
        assert_eq!(disp.record(id).unwrap().state, TaskState::Finished);
        assert!(on_disk().contains("state = \"finished\""), "{}", on_disk());
    }

    /// Tasks finishing together, with a history shorter than their number:
    /// every one still announces `finished` (a task forgotten before its
    /// event would leave its subscribers waiting forever), and the ones kept
    /// are the last announced.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_task_announces_its_end_before_it_is_forgotten() {
        const TASKS: usize = 60;
        let d = tempfile::tempdir().unwrap();
        let e = engine(d.path()).await;
        let (url, fetcher) = file_source(d.path());
        let bus = EventBus::new();
        let sub = bus.subscribe();
        sub.add_names([EVENT_NAME]);
        let disp = Dispatcher::open(
            d.path().join("hyve/tasks"),
            e.clone(),
            bus.clone(),
            fetcher,
            TaskLimits {
                max_concurrent: 8,
                history: 2,
            },
        )
        .unwrap();
        disp.start().await;
        let mut ids = std::collections::BTreeSet::new();
        for i in 0..TASKS {
            let rec = disp
                .fetch_iso(&url, Some(&format!("n{i}.iso")), None)
                .await
                .unwrap();
            ids.insert(rec.id);
        }
        let mut order = Vec::new();
        while order.len() < TASKS {
            let ev = tokio::time::timeout(Duration::from_secs(20), sub.recv())
                .await
                .expect("a finished event never came")
                .unwrap();
            if ev.payload["state"] == "finished" {
                let id = ev.payload["process_details"]["process_id"]
                    .as_str()
                    .unwrap()
                    .to_string();
                assert!(ids.contains(&id), "{id}");
                assert!(!order.contains(&id), "{id} finished twice");
                order.push(id);
            }
        }
        // Let the last prune run, then only the last two announced remain.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let kept: std::collections::BTreeSet<String> =
            disp.list().into_iter().map(|(id, _)| id).collect();
        let last: std::collections::BTreeSet<String> = order[TASKS - 2..].iter().cloned().collect();
        assert_eq!(kept, last);
    }

    #[test]
    fn rates_for_people() {
        assert_eq!(human_rate(512.0), "512 B/s");
        assert_eq!(human_rate(11_200_000.0), "11.2 MB/s");
        assert_eq!(human_rate(1_500.0), "1.5 kB/s");
        assert_eq!(human_rate(2_000_000_000.0), "2.0 GB/s");
    }

    #[test]
    fn percent_never_claims_done_early() {
        let mut p = Progress::default();
        let t = Instant::now();
        p.update(999, Some(1000), t);
        assert_eq!(p.percent(), Some(99));
        p.update(1000, Some(1000), t);
        assert_eq!(p.percent(), Some(100));
        p.update(5, None, t);
        assert_eq!(p.percent(), None);
    }
}
