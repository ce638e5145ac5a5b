//! The event bus: background work publishes, every subscribed connection
//! receives, and nobody waits for anybody.
//!
//! Each subscriber has its own bounded queue. Publishing only appends to
//! those queues under a short lock, so a subscriber that never reads cannot
//! slow the publisher (a download) or the other subscribers. What a slow
//! subscriber loses is bounded and harmless:
//!
//! - progress events of one task replace that task's older progress event
//!   still in the queue (the reader only ever wants the latest figure), and
//!   past [`PROGRESS_LIMIT`] queued progress events the oldest is dropped;
//! - state events (pending, running, finished) are never dropped. If
//!   [`STATE_LIMIT`] of them pile up unread, the subscriber is cut off
//!   ([`Lagged`]) rather than silently missing one: its connection is then
//!   closed, and a client that reconnects lists the tasks again.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use serde_json::Value;
use tokio::sync::Notify;

/// Queued progress events a subscriber may hold (across all tasks).
pub const PROGRESS_LIMIT: usize = 64;
/// Queued state events a subscriber may hold before it is cut off.
pub const STATE_LIMIT: usize = 4096;

/// One event: its name (what clients subscribe to, e.g. `dispatcher`) and
/// its payload, the `args` of the frame.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub name: String,
    pub payload: Value,
    /// For a progress event, the key of what progresses (the task id):
    /// a newer progress event with the same key replaces a queued one.
    /// `None` for state events, which are always delivered.
    pub progress_of: Option<String>,
}

/// The subscriber fell so far behind that state events would have been lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lagged;

#[derive(Default)]
struct Queue {
    names: BTreeSet<String>,
    items: VecDeque<Arc<Event>>,
    progress: usize,
    lagged: bool,
}

impl Queue {
    fn offer(&mut self, ev: &Arc<Event>) -> bool {
        if self.lagged || !self.names.contains(&ev.name) {
            return false;
        }
        match &ev.progress_of {
            Some(key) => {
                let same =
                    |e: &Arc<Event>| e.name == ev.name && e.progress_of.as_ref() == Some(key);
                if let Some(slot) = self.items.iter_mut().rev().find(|e| same(e)) {
                    // Progress of one task sits after its `running` event and
                    // before its `finished` one, so replacing in place keeps order.
                    *slot = ev.clone();
                    return true;
                }
                if self.progress >= PROGRESS_LIMIT {
                    if let Some(i) = self.items.iter().position(|e| e.progress_of.is_some()) {
                        self.items.remove(i);
                        self.progress -= 1;
                    }
                }
                self.items.push_back(ev.clone());
                self.progress += 1;
            }
            None => {
                if self.items.len() - self.progress >= STATE_LIMIT {
                    self.lagged = true;
                    self.items.clear();
                    self.progress = 0;
                } else {
                    self.items.push_back(ev.clone());
                }
            }
        }
        true
    }
}

struct Shared {
    queue: Mutex<Queue>,
    notify: Notify,
}

/// Delivers events to subscribers. Cheap to share (`Arc`).
#[derive(Default)]
pub struct EventBus {
    subs: Mutex<(u64, HashMap<u64, Arc<Shared>>)>,
}

impl EventBus {
    pub fn new() -> Arc<EventBus> {
        Arc::new(EventBus::default())
    }

    /// Hands `ev` to every subscriber of its name. Never waits.
    pub fn publish(&self, ev: Event) {
        let ev = Arc::new(ev);
        let subs: Vec<Arc<Shared>> = {
            let g = self.subs.lock().expect("event bus poisoned");
            g.1.values().cloned().collect()
        };
        for s in subs {
            let queued = s.queue.lock().expect("event queue poisoned").offer(&ev);
            if queued {
                s.notify.notify_one();
            }
        }
    }

    /// A new subscriber, subscribed to nothing yet. It leaves the bus when
    /// dropped.
    pub fn subscribe(self: &Arc<Self>) -> Subscriber {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            notify: Notify::new(),
        });
        let id = {
            let mut g = self.subs.lock().expect("event bus poisoned");
            g.0 += 1;
            let id = g.0;
            g.1.insert(id, shared.clone());
            id
        };
        Subscriber {
            bus: self.clone(),
            id,
            shared,
        }
    }

    /// How many subscribers there are.
    pub fn subscriber_count(&self) -> usize {
        self.subs.lock().expect("event bus poisoned").1.len()
    }
}

/// One subscriber's end: the names it wants and its queue.
pub struct Subscriber {
    bus: Arc<EventBus>,
    id: u64,
    shared: Arc<Shared>,
}

impl Subscriber {
    /// Adds event names to what this subscriber receives.
    pub fn add_names<'a>(&self, names: impl IntoIterator<Item = &'a str>) {
        let mut q = self.shared.queue.lock().expect("event queue poisoned");
        q.names.extend(names.into_iter().map(str::to_string));
    }

    /// Stops receiving these names; queued events of them are dropped too.
    pub fn remove_names<'a>(&self, names: impl IntoIterator<Item = &'a str>) {
        let mut q = self.shared.queue.lock().expect("event queue poisoned");
        for n in names {
            q.names.remove(n);
        }
        let keep = q.names.clone();
        q.items.retain(|e| keep.contains(&e.name));
        q.progress = q.items.iter().filter(|e| e.progress_of.is_some()).count();
    }

    /// The names subscribed to.
    pub fn names(&self) -> BTreeSet<String> {
        self.shared
            .queue
            .lock()
            .expect("event queue poisoned")
            .names
            .clone()
    }

    /// The next event, waiting for one; `Err(Lagged)` once the subscriber
    /// has been cut off.
    pub async fn recv(&self) -> Result<Arc<Event>, Lagged> {
        loop {
            {
                let mut q = self.shared.queue.lock().expect("event queue poisoned");
                if q.lagged {
                    return Err(Lagged);
                }
                if let Some(ev) = q.items.pop_front() {
                    if ev.progress_of.is_some() {
                        q.progress -= 1;
                    }
                    return Ok(ev);
                }
            }
            // `notify_one` keeps a permit when nobody waits, so an event
            // published between the check above and this await is not missed.
            self.shared.notify.notified().await;
        }
    }

    /// The next event if one is queued, without waiting.
    pub fn try_recv(&self) -> Option<Result<Arc<Event>, Lagged>> {
        let mut q = self.shared.queue.lock().expect("event queue poisoned");
        if q.lagged {
            return Some(Err(Lagged));
        }
        let ev = q.items.pop_front()?;
        if ev.progress_of.is_some() {
            q.progress -= 1;
        }
        Some(Ok(ev))
    }

    /// How many events wait in the queue.
    pub fn queued(&self) -> usize {
        self.shared
            .queue
            .lock()
            .expect("event queue poisoned")
            .items
            .len()
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        if let Ok(mut g) = self.bus.subs.lock() {
            g.1.remove(&self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn state(task: &str, n: u64) -> Event {
        Event {
            name: "dispatcher".into(),
            payload: json!({"task": task, "state": n}),
            progress_of: None,
        }
    }

    fn progress(task: &str, n: u64) -> Event {
        Event {
            name: "dispatcher".into(),
            payload: json!({"task": task, "progress": n}),
            progress_of: Some(task.into()),
        }
    }

    fn drain(s: &Subscriber) -> Vec<Value> {
        std::iter::from_fn(|| s.try_recv())
            .map(|r| r.unwrap().payload.clone())
            .collect()
    }

    #[test]
    fn only_subscribed_names_arrive() {
        let bus = EventBus::new();
        let s = bus.subscribe();
        bus.publish(state("a", 0));
        assert_eq!(s.queued(), 0);
        s.add_names(["dispatcher"]);
        bus.publish(state("a", 1));
        bus.publish(Event {
            name: "other".into(),
            ..state("a", 2)
        });
        assert_eq!(drain(&s), vec![json!({"task": "a", "state": 1})]);
        s.remove_names(["dispatcher"]);
        bus.publish(state("a", 3));
        assert_eq!(s.queued(), 0);
        drop(s);
        assert_eq!(bus.subscriber_count(), 0);
    }

    #[test]
    fn a_stuck_subscriber_costs_the_others_nothing() {
        let bus = EventBus::new();
        let stuck = bus.subscribe();
        let live = bus.subscribe();
        stuck.add_names(["dispatcher"]);
        live.add_names(["dispatcher"]);
        let mut got = Vec::new();
        // Ten tasks, each pending, running, 1000 progress events, finished.
        for t in 0..10 {
            let task = format!("t{t}");
            bus.publish(state(&task, 0));
            bus.publish(state(&task, 1));
            for p in 0..1000 {
                bus.publish(progress(&task, p));
                got.extend(drain(&live));
            }
            bus.publish(state(&task, 2));
        }
        got.extend(drain(&live));
        // The reader that keeps up sees everything, in order.
        assert_eq!(got.len(), 10 * 1003);
        // The stuck one holds every state event, in order, and only the
        // latest progress of each task.
        let held = drain(&stuck);
        assert_eq!(held.len(), 10 * 4);
        for (t, chunk) in held.chunks(4).enumerate() {
            let task = format!("t{t}");
            assert_eq!(
                chunk,
                [
                    json!({"task": task, "state": 0}),
                    json!({"task": task, "state": 1}),
                    json!({"task": task, "progress": 999}),
                    json!({"task": task, "state": 2}),
                ]
            );
        }
    }

    #[test]
    fn progress_of_many_tasks_is_bounded() {
        let bus = EventBus::new();
        let s = bus.subscribe();
        s.add_names(["dispatcher"]);
        for t in 0..(PROGRESS_LIMIT + 10) {
            bus.publish(progress(&format!("t{t}"), 1));
        }
        assert_eq!(s.queued(), PROGRESS_LIMIT);
        assert_eq!(
            drain(&s)[0],
            json!({"task": "t10", "progress": 1}),
            "the oldest progress went first"
        );
    }

    #[test]
    fn too_many_state_events_cut_the_subscriber_off() {
        let bus = EventBus::new();
        let s = bus.subscribe();
        s.add_names(["dispatcher"]);
        for i in 0..STATE_LIMIT as u64 {
            bus.publish(state("a", i));
        }
        assert_eq!(s.queued(), STATE_LIMIT);
        bus.publish(state("a", u64::MAX));
        assert_eq!(s.try_recv(), Some(Err(Lagged)));
    }

    #[tokio::test]
    async fn recv_wakes_on_publish() {
        let bus = EventBus::new();
        let s = bus.subscribe();
        s.add_names(["dispatcher"]);
        let b2 = bus.clone();
        let t = tokio::spawn(async move {
            tokio::task::yield_now().await;
            b2.publish(state("a", 7));
        });
        let ev = s.recv().await.unwrap();
        assert_eq!(ev.payload, json!({"task": "a", "state": 7}));
        t.await.unwrap();
    }
}
