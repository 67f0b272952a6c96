//! The `operator` role: every controller, run by the elected leader only.

mod controllers;
pub mod profiles;
pub mod secret_sync;
pub mod webhook_ca;

use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use tokio_util::sync::CancellationToken;

use crate::role::Role;
use crate::runtime::kube::KubeArgs;
use crate::runtime::leader::{LeaderArgs, LeaderElector, Leadership};
use crate::runtime::supervise::spawn_supervised;
use crate::runtime::{Runtime, RuntimeArgs};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub runtime: RuntimeArgs,
    #[command(flatten)]
    pub kube: KubeArgs,
    #[command(flatten)]
    pub leader: LeaderArgs,
    #[command(flatten)]
    pub webhook_certs: webhook_ca::WebhookCertArgs,
    #[command(flatten)]
    pub secret_sync: secret_sync::SyncArgs,
}

/// What the controllers need from the command line.
pub struct Settings {
    pub namespace: String,
    pub webhook_certs: webhook_ca::WebhookCertArgs,
    pub secret_sync: secret_sync::SyncArgs,
    /// Registered once per process: the controllers restart on every election.
    pub sync_metrics: secret_sync::SyncMetrics,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    args.leader.validate()?;
    let rt = Runtime::start(Role::Operator, &args.runtime).await?;
    let client = crate::runtime::kube::connect(&args.kube).await?;
    let leader_known = rt.readiness.register("leader-known");
    let metrics = rt.metrics.clone();

    // The campaign stops only after the controllers have: releasing the lease earlier would let a
    // successor start while this replica still acts.
    let election_stop = CancellationToken::new();
    // Without election the sender is kept here so the channel stays open for the role's life.
    let mut _static_leader = None;
    let (mut leadership, election) = if args.leader.leader_elect {
        let elector = LeaderElector::new(
            Api::<Lease>::namespaced(client.clone(), &args.kube.namespace),
            args.leader.clone(),
            &rt.metrics,
        );
        let leadership = elector.subscribe();
        let stop = election_stop.clone();
        // A panic restarts the campaign with the same identity and the same state channel.
        let task = spawn_supervised(
            "leader-election",
            rt.metrics.clone(),
            election_stop.clone(),
            move || elector.clone().run(stop.clone()),
        );
        (leadership, Some(task))
    } else {
        tracing::warn!("leader election is off: this replica acts as the leader; run exactly one");
        let (tx, rx) = tokio::sync::watch::channel(Leadership::Leading);
        _static_leader = Some(tx);
        (rx, None)
    };

    let settings = Settings {
        namespace: args.kube.namespace.clone(),
        webhook_certs: args.webhook_certs.clone(),
        secret_sync: args.secret_sync.clone(),
        sync_metrics: secret_sync::SyncMetrics::register(&rt.metrics),
    };
    rt.run(|shutdown| async move {
        lead_while_elected(
            &mut leadership,
            &leader_known,
            &client,
            &metrics,
            &settings,
            &shutdown,
        )
        .await;
        election_stop.cancel();
        match election {
            Some(task) => task
                .await
                .unwrap_or_else(|e| Err(anyhow::anyhow!("leader election task failed: {e}"))),
            None => Ok(()),
        }
    })
    .await
}

/// Runs the controllers whenever this replica leads, stopping them when it stops leading, until
/// shutdown.
async fn lead_while_elected(
    leadership: &mut tokio::sync::watch::Receiver<Leadership>,
    leader_known: &crate::runtime::admin::ReadyFlag,
    client: &kube::Client,
    metrics: &crate::runtime::metrics::Metrics,
    settings: &Settings,
    shutdown: &CancellationToken,
) {
    loop {
        // Wait until we lead.
        loop {
            let state = leadership.borrow_and_update().clone();
            leader_known.set(state != Leadership::Unknown);
            if state == Leadership::Leading {
                break;
            }
            tokio::select! {
                changed = leadership.changed() => if changed.is_err() { return },
                _ = shutdown.cancelled() => return,
            }
        }
        let term = CancellationToken::new();
        let mut running = controllers::start(client.clone(), metrics.clone(), term.clone(), settings);
        // Lead until we stop leading or shut down.
        loop {
            tokio::select! {
                changed = leadership.changed() => {
                    let state = leadership.borrow_and_update().clone();
                    leader_known.set(state != Leadership::Unknown);
                    if changed.is_err() || state != Leadership::Leading { break; }
                }
                _ = shutdown.cancelled() => break,
            }
        }
        term.cancel();
        while let Some(done) = running.join_next().await {
            if let Ok(Err(e)) = done {
                tracing::error!(error = format!("{e:#}"), "controller stopped with an error");
            }
        }
        tracing::info!("controllers stopped");
        if shutdown.is_cancelled() {
            return;
        }
    }
}
