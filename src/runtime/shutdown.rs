//! Graceful shutdown: SIGTERM or SIGINT cancels one token that every task of the role watches.
//! A second signal, or work that outlives the grace period, ends the process without waiting.

use std::time::Duration;

use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

/// Cancels `token` on the first SIGTERM/SIGINT. Returns an error only when signal handlers cannot
/// be installed, which leaves the role unable to stop cleanly.
pub fn watch_signals(token: CancellationToken) -> anyhow::Result<()> {
    let mut term = signal(SignalKind::terminate())
        .map_err(|e| anyhow::anyhow!("cannot install the SIGTERM handler: {e}"))?;
    let mut int = signal(SignalKind::interrupt())
        .map_err(|e| anyhow::anyhow!("cannot install the SIGINT handler: {e}"))?;
    tokio::spawn(async move {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
            _ = token.cancelled() => return,
        };
        tracing::info!(signal = name, "shutting down: finishing in-flight work");
        token.cancel();
    });
    Ok(())
}

/// Waits for `work` to finish after shutdown began, but no longer than `grace`, or until a second
/// signal arrives.
pub async fn drain<T>(
    work: impl Future<Output = T>,
    shutdown: &CancellationToken,
    grace: Duration,
) -> Option<T> {
    tokio::pin!(work);
    tokio::select! {
        out = &mut work => return Some(out),
        _ = shutdown.cancelled() => {}
    }
    let second_signal = async {
        match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
            (Ok(mut t), Ok(mut i)) => {
                tokio::select! { _ = t.recv() => {}, _ = i.recv() => {} }
            }
            _ => std::future::pending().await,
        }
    };
    tokio::select! {
        out = work => Some(out),
        _ = tokio::time::sleep(grace) => {
            tracing::warn!(grace_secs = grace.as_secs(), "shutdown grace period over; exiting without waiting further");
            None
        }
        _ = second_signal => {
            tracing::warn!("second signal; exiting without waiting further");
            None
        }
    }
}
