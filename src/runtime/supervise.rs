//! Long-running tasks under supervision: a panic in one task is logged and counted, and the task is
//! started again after a capped, jittered backoff, while the rest of the role keeps serving.
//!
//! Panic payloads are not logged: a panic raised by a library can carry a value it was handed
//! (`called Result::unwrap() on an Err(...)` prints the error, which may hold a secret). The
//! panic hook below logs where the panic happened instead.

use std::future::Future;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::backoff::Backoff;
use super::metrics::{Metrics, TaskLabels};

/// Replaces the default panic hook (which prints the payload to stderr) with one that logs the
/// location and thread only.
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let location = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let thread = std::thread::current().name().unwrap_or("unnamed").to_owned();
        tracing::error!(%location, %thread, "panic (message withheld: it may contain data)");
    }));
}

/// Runs `make_task()` until it returns or `shutdown` is cancelled, restarting it after a panic.
///
/// The task's own `Err` is not retried here: the task decides what is transient. It is returned to
/// the caller, which normally ends the role with it.
pub fn spawn_supervised<F, Fut>(
    name: &'static str,
    metrics: Metrics,
    shutdown: CancellationToken,
    mut make_task: F,
) -> JoinHandle<anyhow::Result<()>>
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    tokio::spawn(async move {
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(30));
        loop {
            let handle = tokio::spawn(make_task());
            let abort = handle.abort_handle();
            let joined = tokio::select! {
                joined = handle => joined,
                // The task is expected to watch `shutdown` itself; this is the backstop.
                _ = async { shutdown.cancelled().await; tokio::time::sleep(Duration::from_secs(30)).await } => {
                    abort.abort();
                    return Ok(());
                }
            };
            match joined {
                Ok(result) => return result,
                Err(e) if e.is_panic() => {
                    metrics
                        .task_panics
                        .get_or_create(&TaskLabels {
                            task: name.to_owned(),
                        })
                        .inc();
                    let delay = backoff.next_delay();
                    tracing::error!(
                        task = name,
                        restart_in_ms = delay.as_millis() as u64,
                        "task panicked; restarting it"
                    );
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = shutdown.cancelled() => return Ok(()),
                    }
                }
                Err(_) => return Ok(()), // cancelled: only happens when the runtime shuts down
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test(start_paused = true)]
    async fn a_panicking_task_is_restarted_and_counted() {
        let metrics = Metrics::new("test");
        let runs = Arc::new(AtomicU32::new(0));
        let r = runs.clone();
        let handle = spawn_supervised("flaky", metrics.clone(), CancellationToken::new(), move || {
            let r = r.clone();
            async move {
                if r.fetch_add(1, Ordering::SeqCst) < 2 {
                    panic!("boom");
                }
                Ok(())
            }
        });
        handle.await.unwrap().unwrap();
        assert_eq!(runs.load(Ordering::SeqCst), 3);
        let text = metrics.encode();
        assert!(
            text.contains("phylax_task_panics_total{task=\"flaky\"} 2"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn errors_are_returned_not_retried() {
        let runs = Arc::new(AtomicU32::new(0));
        let r = runs.clone();
        let handle = spawn_supervised(
            "failing",
            Metrics::new("test"),
            CancellationToken::new(),
            move || {
                r.fetch_add(1, Ordering::SeqCst);
                async { Err(anyhow::anyhow!("permanent")) }
            },
        );
        let err = handle.await.unwrap().unwrap_err();
        assert_eq!(err.to_string(), "permanent");
        assert_eq!(runs.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_stops_restarts() {
        let shutdown = CancellationToken::new();
        let s = shutdown.clone();
        let handle = spawn_supervised(
            "always-panics",
            Metrics::new("test"),
            shutdown.clone(),
            move || {
                s.cancel();
                async { panic!("boom") }
            },
        );
        assert!(handle.await.unwrap().is_ok());
        assert!(shutdown.is_cancelled());
    }
}
