//! The controllers the leader runs. Each one runs until `term` is cancelled (leadership lost or
//! shutdown) and is started again on re-election.

use kube::Client;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::runtime::metrics::Metrics;

pub fn start(
    client: Client,
    metrics: Metrics,
    term: CancellationToken,
    settings: &super::Settings,
) -> JoinSet<anyhow::Result<()>> {
    let mut controllers = JoinSet::new();
    controllers.spawn(super::profiles::run(
        client.clone(),
        metrics.clone(),
        term.clone(),
    ));
    controllers.spawn(super::profiles::webhook_scope::run(
        client.clone(),
        metrics.clone(),
        term.clone(),
    ));
    controllers.spawn(super::secret_sync::run(
        client.clone(),
        settings.namespace.clone(),
        settings.secret_sync.clone(),
        settings.sync_metrics.clone(),
        metrics.clone(),
        term.clone(),
    ));
    controllers.spawn(super::webhook_ca::run(
        client,
        settings.namespace.clone(),
        settings.webhook_certs.clone(),
        metrics,
        term,
    ));
    tracing::info!(controllers = controllers.len(), "leading: controllers started");
    controllers
}
