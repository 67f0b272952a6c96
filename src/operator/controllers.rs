//! The controllers the leader runs. Each feature issue adds its controller here; each one runs
//! until `term` is cancelled (leadership lost or shutdown) and is started again on re-election.

use kube::Client;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::runtime::metrics::Metrics;

pub fn start(_client: Client, _metrics: Metrics, _term: CancellationToken) -> JoinSet<anyhow::Result<()>> {
    let controllers = JoinSet::new();
    // No controller is built yet: secret sync, profiles, ephemeral data, tokenization and the
    // webhook CA each arrive with their own issue.
    tracing::info!(controllers = controllers.len(), "leading: controllers started");
    controllers
}
