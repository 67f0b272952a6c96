//! The `operator` role: every controller, run by the elected leader only.

mod controllers;


use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use tokio_util::sync::CancellationToken;

use crate::cli::Role;
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
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    args.leader.validate()?;
    let rt = Runtime::start(Role::Operator, &args.runtime).await?;
    let client = crate::runtime::kube::connect(&args.kube).await?;
    let leader_known = rt.readiness.register("leader-known");
    let metrics = rt.metrics.clone();

    // Without election the sender is kept here so the channel stays open for the role's life.
    let (mut leadership, _static_leader) = if args.leader.leader_elect {
        let elector = LeaderElector::new(
            Api::<Lease>::namespaced(client.clone(), &args.kube.namespace),
            args.leader.clone(),
            &rt.metrics,
        );
        let leadership = elector.subscribe();
        let shutdown = rt.shutdown.clone();
        // A panic restarts the campaign with the same identity and the same state channel.
        spawn_supervised("leader-election", rt.metrics.clone(), rt.shutdown.clone(), move || {
            elector.clone().run(shutdown.clone())
        });
        (leadership, None)
    } else {
        tracing::warn!("leader election is off: this replica acts as the leader; run exactly one");
        let (tx, rx) = tokio::sync::watch::channel(Leadership::Leading);
        (rx, Some(tx))
    };

    rt.run(|shutdown| async move {
        loop {
            // Wait until we lead.
            loop {
                let state = leadership.borrow_and_update().clone();
                leader_known.set(state != Leadership::Unknown);
                if state == Leadership::Leading {
                    break;
                }
                tokio::select! {
                    changed = leadership.changed() => if changed.is_err() { return Ok(()) },
                    _ = shutdown.cancelled() => return Ok(()),
                }
            }
            let term = CancellationToken::new();
            let mut running = controllers::start(client.clone(), metrics.clone(), term.clone());
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
                return Ok(());
            }
        }
    })
    .await
}
