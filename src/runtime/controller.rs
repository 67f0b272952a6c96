//! What every kube-runtime controller in Phylax shares: a per-object, capped and jittered backoff
//! for its error policy (reset when the object reconciles), one error counter
//! (`phylax_reconcile_errors_total{controller, error}`), and the logging of the controller's own
//! errors.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use kube::Resource;
use kube::runtime::controller::Action;

use super::backoff::Backoff;
use super::metrics::{Metrics, ReconcileLabels};

/// An error a reconciler returns: a bounded label for the metric, and how long the object must
/// wait at least before the next try (a store's or API server's Retry-After).
pub trait ReconcileError: std::error::Error {
    /// One of a few fixed words (`kube`, `io`, `store`, ...), never text from the error.
    fn label(&self) -> &'static str;

    fn retry_after(&self) -> Option<Duration> {
        None
    }
}

/// A controller's error policy: counts and logs each failure, and requeues the object after its
/// own backoff (base·2^failures, at most `cap`, drawn from [ceiling/2, ceiling]), so a cluster-wide
/// outage slows every object down instead of retrying all of them every few seconds.
pub struct ErrorPolicy {
    controller: &'static str,
    metrics: Metrics,
    base: Duration,
    cap: Duration,
    /// Failures in a row per object (by uid, or namespace/name when it has none).
    failing: Mutex<HashMap<String, Backoff>>,
}

impl ErrorPolicy {
    pub fn new(controller: &'static str, metrics: &Metrics, base: Duration, cap: Duration) -> ErrorPolicy {
        ErrorPolicy {
            controller,
            metrics: metrics.clone(),
            base,
            cap,
            failing: Mutex::new(HashMap::new()),
        }
    }

    /// The usual policy: 1 s doubling to 5 min.
    pub fn standard(controller: &'static str, metrics: &Metrics) -> ErrorPolicy {
        ErrorPolicy::new(
            controller,
            metrics,
            Duration::from_secs(1),
            Duration::from_secs(300),
        )
    }

    fn key<K: Resource>(obj: &K) -> String {
        let meta = obj.meta();
        match &meta.uid {
            Some(uid) => uid.clone(),
            None => format!(
                "{}/{}",
                meta.namespace.as_deref().unwrap_or_default(),
                meta.name.as_deref().unwrap_or_default()
            ),
        }
    }

    fn failing(&self) -> std::sync::MutexGuard<'_, HashMap<String, Backoff>> {
        self.failing.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The object reconciled: its next failure starts from the base delay again.
    pub fn succeeded<K: Resource>(&self, obj: &K) {
        let key = Self::key(obj);
        let mut failing = self.failing();
        if !failing.is_empty() {
            failing.remove(&key);
        }
    }

    /// Passes a reconcile's result through, resetting the object's backoff when it succeeded.
    pub fn track<K: Resource, T, E>(&self, obj: &K, result: Result<T, E>) -> Result<T, E> {
        if result.is_ok() {
            self.succeeded(obj);
        }
        result
    }

    /// For `Controller::run`'s error policy: counts, logs and schedules the retry.
    pub fn failed<K: Resource, E: ReconcileError>(&self, obj: &K, error: &E) -> Action {
        Action::requeue(self.retry_delay(obj, error))
    }

    /// Counts and logs a failure; how long the object waits before its next try.
    pub fn retry_delay<K: Resource, E: ReconcileError>(&self, obj: &K, error: &E) -> Duration {
        self.metrics
            .reconcile_errors
            .get_or_create(&ReconcileLabels {
                controller: self.controller.to_owned(),
                error: error.label().to_owned(),
            })
            .inc();
        let delay = {
            let mut failing = self.failing();
            failing
                .entry(Self::key(obj))
                .or_insert_with(|| Backoff::new(self.base, self.cap))
                .next_delay()
        };
        let delay = delay.max(error.retry_after().unwrap_or_default());
        let meta = obj.meta();
        tracing::warn!(
            controller = self.controller,
            namespace = meta.namespace.as_deref().unwrap_or_default(),
            name = meta.name.as_deref().unwrap_or_default(),
            error = %error,
            retry_in_ms = delay.as_millis() as u64,
            "reconcile failed; retrying"
        );
        delay
    }

    /// Objects currently backing off (for tests and debugging).
    pub fn backing_off(&self) -> usize {
        self.failing().len()
    }
}

/// For a controller's result stream: reconcile errors are logged by its error policy, so only
/// the controller's own are logged here (the watch failing, a trigger for an object that is gone).
pub fn log_controller_error<T, E, Q>(
    controller: &'static str,
) -> impl Fn(Result<T, kube::runtime::controller::Error<E, Q>>) -> std::future::Ready<()>
where
    E: std::error::Error + 'static,
    Q: std::error::Error + 'static,
{
    move |result| {
        if let Err(e) = result {
            match e {
                kube::runtime::controller::Error::ReconcilerFailed(..) => {}
                // The object was deleted between its trigger and its turn: nothing to do.
                kube::runtime::controller::Error::ObjectNotFound(..) => {
                    tracing::debug!(controller, error = %e, "object gone before its reconcile")
                }
                _ => tracing::warn!(controller, error = %e, "controller error"),
            }
        }
        std::future::ready(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::api::ObjectMeta;

    #[derive(Debug, thiserror::Error)]
    #[error("throttled")]
    struct Throttled(Option<Duration>);

    impl ReconcileError for Throttled {
        fn label(&self) -> &'static str {
            "store"
        }
        fn retry_after(&self) -> Option<Duration> {
            self.0
        }
    }

    fn object(uid: &str) -> ConfigMap {
        ConfigMap {
            metadata: ObjectMeta {
                name: Some("cm".into()),
                namespace: Some("ns".into()),
                uid: Some(uid.into()),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn each_object_backs_off_on_its_own_and_success_resets_it() {
        let metrics = Metrics::new("test");
        let policy = ErrorPolicy::new("things", &metrics, Duration::from_secs(1), Duration::from_secs(8));
        let (a, b) = (object("a"), object("b"));
        let mut ceilings = Vec::new();
        for _ in 0..5 {
            ceilings.push(policy.retry_delay(&a, &Throttled(None)));
        }
        for (d, ceiling) in ceilings.iter().zip([1, 2, 4, 8, 8]) {
            let ceiling = Duration::from_secs(ceiling);
            assert!(
                *d >= ceiling / 2 && *d <= ceiling,
                "{d:?} outside [{:?}, {ceiling:?}]",
                ceiling / 2
            );
        }
        // Another object starts from the base.
        assert!(policy.retry_delay(&b, &Throttled(None)) <= Duration::from_secs(1));
        assert_eq!(policy.backing_off(), 2);
        policy.succeeded(&a);
        assert_eq!(policy.backing_off(), 1);
        assert!(policy.retry_delay(&a, &Throttled(None)) <= Duration::from_secs(1));
        let text = metrics.encode();
        assert!(
            text.contains("phylax_reconcile_errors_total{controller=\"things\",error=\"store\"} 7"),
            "{text}"
        );
    }

    #[test]
    fn retry_after_is_a_floor() {
        let policy = ErrorPolicy::standard("things", &Metrics::new("test"));
        let d = policy.retry_delay(&object("a"), &Throttled(Some(Duration::from_secs(30))));
        assert_eq!(d, Duration::from_secs(30));
    }
}
