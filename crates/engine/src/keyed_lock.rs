//! One async mutex per key (per guest name), made on demand and dropped
//! when nobody holds or waits for it, so the map never outgrows the guests
//! in use.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{Mutex as AsyncMutex, OwnedMutexGuard};

#[derive(Default)]
pub struct KeyedLock {
    map: Mutex<HashMap<String, Arc<AsyncMutex<()>>>>,
}

pub struct KeyedGuard<'a> {
    owner: &'a KeyedLock,
    key: String,
    guard: Option<OwnedMutexGuard<()>>,
}

impl KeyedLock {
    pub async fn lock(&self, key: &str) -> KeyedGuard<'_> {
        let m = {
            let mut map = self.map.lock().expect("lock map poisoned");
            map.entry(key.to_string()).or_default().clone()
        };
        let guard = m.lock_owned().await;
        KeyedGuard {
            owner: self,
            key: key.to_string(),
            guard: Some(guard),
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.map.lock().unwrap().len()
    }
}

impl Drop for KeyedGuard<'_> {
    fn drop(&mut self) {
        let mut map = self.owner.map.lock().expect("lock map poisoned");
        // Release first, then drop the entry if only the map still holds it.
        drop(self.guard.take());
        if let Some(m) = map.get(&self.key) {
            if Arc::strong_count(m) == 1 {
                map.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn serializes_per_key_and_cleans_up() {
        let lock = Arc::new(KeyedLock::default());
        let inside = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..32 {
            let (lock, inside) = (lock.clone(), inside.clone());
            tasks.push(tokio::spawn(async move {
                let _g = lock.lock("g").await;
                assert_eq!(inside.fetch_add(1, Ordering::SeqCst), 0);
                tokio::task::yield_now().await;
                inside.fetch_sub(1, Ordering::SeqCst);
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(lock.len(), 0);
    }
}
