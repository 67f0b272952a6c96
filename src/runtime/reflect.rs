//! Watches that feed an in-memory index: one helper instead of a copy per controller of "run a
//! reflector with backoff and log its errors". The watch restarts itself after errors (with
//! kube-runtime's default backoff); errors are logged with what was being watched.

use std::fmt::Debug;
use std::future::Future;
use std::hash::Hash;

use futures::{Stream, StreamExt};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Resource};
use serde::de::DeserializeOwned;

/// A store of `api`'s objects and the stream of objects the watch touched (applied or deleted);
/// the store is filled only while the stream is polled. Watch errors are logged as `what` and
/// dropped from the stream. During the initial list, objects are yielded before the store holds
/// them (it is swapped in whole once the list is complete).
pub fn store_and_changes<K>(
    what: &'static str,
    api: Api<K>,
    config: watcher::Config,
) -> (Store<K>, impl Stream<Item = K> + Send + 'static)
where
    K: Resource + Clone + Debug + DeserializeOwned + Send + Sync + 'static,
    K::DynamicType: Default + Eq + Hash + Clone + Send + Sync,
{
    let (reader, events) = watched(api, config);
    (reader, logged(what, events.touched_objects()))
}

/// Like [`store_and_changes`], but only objects created or updated (deletions are not yielded).
pub fn store_and_applied<K>(
    what: &'static str,
    api: Api<K>,
    config: watcher::Config,
) -> (Store<K>, impl Stream<Item = K> + Send + 'static)
where
    K: Resource + Clone + Debug + DeserializeOwned + Send + Sync + 'static,
    K::DynamicType: Default + Eq + Hash + Clone + Send + Sync,
{
    let (reader, events) = watched(api, config);
    (reader, logged(what, events.applied_objects()))
}

fn watched<K>(
    api: Api<K>,
    config: watcher::Config,
) -> (
    Store<K>,
    impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
)
where
    K: Resource + Clone + Debug + DeserializeOwned + Send + Sync + 'static,
    K::DynamicType: Default + Eq + Hash + Clone + Send + Sync,
{
    let (reader, writer) = reflector::store();
    let events = reflector::reflector(writer, watcher(api, config)).default_backoff();
    (reader, events)
}

fn logged<K: Send + 'static>(
    what: &'static str,
    objects: impl Stream<Item = Result<K, watcher::Error>> + Send + 'static,
) -> impl Stream<Item = K> + Send + 'static {
    objects.filter_map(move |item| {
        std::future::ready(match item {
            Ok(obj) => Some(obj),
            Err(e) => {
                tracing::warn!(watch = what, error = %e, "watch failed; retrying");
                None
            }
        })
    })
}

/// A store of `api`'s objects and the future that keeps it current (run it for as long as the
/// store is used).
pub fn store<K>(
    what: &'static str,
    api: Api<K>,
    config: watcher::Config,
) -> (Store<K>, impl Future<Output = ()> + Send + 'static)
where
    K: Resource + Clone + Debug + DeserializeOwned + Send + Sync + 'static,
    K::DynamicType: Default + Eq + Hash + Clone + Send + Sync,
{
    let (reader, changes) = store_and_changes(what, api, config);
    (reader, changes.for_each(|_| std::future::ready(())))
}

/// Waits until a reflector store has listed once; `false` if its writer is gone. kube's readiness
/// signal wakes a single waiter per store (a oneshot channel underneath), and a controller's own
/// store already has one, the controller itself: so the wait is renewed every 100 ms.
pub async fn wait_listed<K>(store: &Store<K>) -> bool
where
    K: Resource + Clone + 'static,
    K::DynamicType: Hash + Eq + Clone,
{
    loop {
        match tokio::time::timeout(std::time::Duration::from_millis(100), store.wait_until_ready()).await {
            Ok(Ok(())) => return true,
            Ok(Err(_)) => return false,
            Err(_) => continue,
        }
    }
}

/// Drives `changes` (keeping its store filled) on a task of its own and turns them into a wake-up
/// signal: a burst of changes is one wake-up. For loops that recompute from the store rather than
/// per object. The task ends when the returned guard is dropped.
pub fn wake_on_change<S>(changes: S) -> (tokio::sync::mpsc::Receiver<()>, AbortOnDrop)
where
    S: Stream + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let task = tokio::spawn(changes.for_each(move |_| {
        // Full means a wake-up is already pending.
        let _ = tx.try_send(());
        std::future::ready(())
    }));
    (rx, AbortOnDrop(task))
}

/// Aborts the task when dropped.
pub struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
