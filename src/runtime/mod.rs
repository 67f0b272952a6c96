//! What every role shares: logging, metrics, the admin server, graceful shutdown, panic
//! supervision, the Kubernetes client, leader election, and the pieces every controller uses
//! (reflectors, error policy, conditions, finalizers, the names Phylax owns objects by).
//!
//! The ground floor: it imports nothing of Phylax but `role` and `version`.

pub mod admin;
#[cfg(all(test, feature = "k8s-client"))]
pub mod api_mock;
pub mod backoff;
pub mod conditions;
#[cfg(feature = "k8s-client")]
pub mod controller;
pub mod duration;
#[cfg(any(feature = "operator", feature = "node-agent"))]
pub mod finalizers;
pub mod hex;
#[cfg(feature = "k8s-client")]
pub mod kube;
#[cfg(feature = "k8s-client")]
pub mod leader;
pub mod metrics;
pub mod names;
pub mod ownership;
#[cfg(feature = "k8s-client")]
pub mod reflect;
pub mod shutdown;
pub mod supervise;
pub mod telemetry;

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use clap::Args;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::role::Role;
use admin::Readiness;
use metrics::Metrics;
use telemetry::LogFormat;

/// Flags every role takes.
#[derive(Clone, Debug, Args)]
#[command(next_help_heading = "Runtime")]
pub struct RuntimeArgs {
    /// Log format: JSON lines for log pipelines, text for people (level from RUST_LOG, default info)
    #[arg(long, env = "PHYLAX_LOG_FORMAT", value_enum, default_value_t = LogFormat::Json)]
    pub log_format: LogFormat,

    /// Address of the admin server (/livez, /readyz, /metrics) [default: operator 0.0.0.0:9090,
    /// webhook 0.0.0.0:9091, kms-plugin 127.0.0.1:9092, node-agent 0.0.0.0:9093, tokenizer 0.0.0.0:9094]
    #[arg(long, value_name = "ADDR")]
    pub admin_addr: Option<SocketAddr>,

    /// How long to let in-flight work finish after SIGTERM before exiting anyway
    #[arg(long, value_name = "DURATION", default_value = "25s", value_parser = duration::parse)]
    pub shutdown_grace: Duration,
}

/// A started role: its metrics registry, readiness checks and shutdown token, with the admin server
/// already listening.
pub struct Runtime {
    pub role: Role,
    pub metrics: Metrics,
    pub readiness: Readiness,
    /// Cancelled on SIGTERM/SIGINT. Every task of the role watches it.
    pub shutdown: CancellationToken,
    admin_stop: CancellationToken,
    admin: JoinHandle<std::io::Result<()>>,
    grace: Duration,
}

impl Runtime {
    /// Sets up logging, binds the admin port (failing fast if it is taken) and starts serving it.
    pub async fn start(role: Role, args: &RuntimeArgs) -> anyhow::Result<Runtime> {
        telemetry::init(args.log_format)?;
        supervise::install_panic_hook();
        let metrics = Metrics::new(role.name());
        let readiness = Readiness::default();
        let addr = args.admin_addr.unwrap_or_else(|| role.default_admin_addr());
        let listener = admin::bind(addr).await?;
        let admin_stop = CancellationToken::new();
        let admin = tokio::spawn(admin::serve(
            listener,
            admin::router(readiness.clone(), metrics.clone()),
            admin_stop.clone(),
        ));
        let shutdown = CancellationToken::new();
        shutdown::watch_signals(shutdown.clone())?;
        tracing::info!(
            role = role.name(),
            version = crate::version::VERSION,
            commit = crate::version::GIT_COMMIT,
            admin_addr = %addr,
            "starting"
        );
        Ok(Runtime {
            role,
            metrics,
            readiness,
            shutdown,
            admin_stop,
            admin,
            grace: args.shutdown_grace,
        })
    }

    /// Runs the role's work until it ends or shutdown is requested, then gives it the grace
    /// period to finish. The admin server keeps answering `/livez` while the role drains, and
    /// `/readyz` says "shutting-down" so no new traffic is sent.
    pub async fn run<F, Fut>(self, work: F) -> anyhow::Result<()>
    where
        F: FnOnce(CancellationToken) -> Fut,
        Fut: Future<Output = anyhow::Result<()>>,
    {
        let shutting_down = self.readiness.register("not-shutting-down");
        shutting_down.set(true);
        let shutdown = self.shutdown.clone();
        let watcher = {
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                shutdown.cancelled().await;
                shutting_down.set(false);
            })
        };
        let result = match shutdown::drain(work(shutdown.clone()), &shutdown, self.grace).await {
            Some(result) => result,
            None => Err(anyhow::anyhow!(
                "in-flight work did not finish within the shutdown grace period ({}s)",
                self.grace.as_secs()
            )),
        };
        watcher.abort();
        self.admin_stop.cancel();
        match self.admin.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "admin server stopped with an error"),
            Err(e) => tracing::warn!(error = %e, "admin server task failed"),
        }
        match &result {
            Ok(()) => tracing::info!(role = self.role.name(), "stopped"),
            Err(e) => tracing::error!(
                role = self.role.name(),
                error = format!("{e:#}"),
                "stopped with an error"
            ),
        }
        result
    }
}

/// For roles whose function has not been built yet: the shared runtime (admin server, readiness,
/// shutdown) runs, and the role says plainly that it does nothing else.
pub async fn run_without_function(role: Role, args: &RuntimeArgs, missing: &str) -> anyhow::Result<()> {
    let rt = Runtime::start(role, args).await?;
    tracing::warn!(role = role.name(), "{missing}");
    rt.readiness.register("started").set(true);
    rt.run(|shutdown| async move {
        shutdown.cancelled().await;
        Ok(())
    })
    .await
}
