//! One provider call for many concurrent requests of the same (provider, path).
//!
//! Callers asking while a call is in flight wait for it; callers arriving within `window` after
//! it finished take its result. So a burst of pods becomes one or two store calls, and a pod
//! created later than `window` after the last call gets a fresh read.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::OnceCell;
use tokio::time::Instant;

struct Entry<V> {
    cell: Arc<OnceCell<(V, Instant)>>,
}

pub struct Coalescer<K, V> {
    window: Duration,
    entries: Mutex<HashMap<K, Entry<V>>>,
}

impl<K: Eq + Hash + Clone, V: Clone> Coalescer<K, V> {
    pub fn new(window: Duration) -> Self {
        Coalescer {
            window,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// The shared result for `key`, running `call` only if no call is in flight or fresh.
    pub async fn get<F, Fut>(&self, key: K, call: F) -> V
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = V>,
    {
        let cell = {
            let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            // Finished results past the window are dropped (they may hold secret values).
            entries.retain(|_, e| match e.cell.get() {
                Some((_, done)) => now.duration_since(*done) < self.window,
                None => true,
            });
            entries
                .entry(key)
                .or_insert_with(|| Entry {
                    cell: Arc::new(OnceCell::new()),
                })
                .cell
                .clone()
        };
        // If the caller running `call` is cancelled, the next waiter runs its own.
        let (value, _) = cell
            .get_or_init(|| async move { (call().await, Instant::now()) })
            .await;
        value.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn concurrent_callers_share_one_call_and_later_ones_call_again() {
        let c = Arc::new(Coalescer::<&str, usize>::new(Duration::from_millis(200)));
        let calls = Arc::new(AtomicUsize::new(0));
        let gate = Arc::new(tokio::sync::Notify::new());
        let mut tasks = Vec::new();
        for _ in 0..50 {
            let (c, calls, gate) = (c.clone(), calls.clone(), gate.clone());
            tasks.push(tokio::spawn(async move {
                c.get("k", || async move {
                    gate.notified().await;
                    calls.fetch_add(1, Ordering::SeqCst) + 1
                })
                .await
            }));
        }
        // A stored permit: the one call finishes whenever it starts.
        gate.notify_one();
        for t in tasks {
            assert_eq!(t.await.unwrap(), 1);
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        // Another key is its own call.
        assert_eq!(c.get("other", || async { 7 }).await, 7);
    }

    #[tokio::test(start_paused = true)]
    async fn results_expire_after_the_window() {
        let c = Coalescer::<&str, u32>::new(Duration::from_secs(1));
        assert_eq!(c.get("k", || async { 1 }).await, 1);
        assert_eq!(c.get("k", || async { 2 }).await, 1, "fresh result reused");
        tokio::time::advance(Duration::from_millis(1100)).await;
        assert_eq!(c.get("k", || async { 3 }).await, 3, "expired result replaced");
    }
}
