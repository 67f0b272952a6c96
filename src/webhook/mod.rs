//! The `webhook` role: an HTTPS admission server (AdmissionReview v1) whose webhooks are pure
//! functions (`review::Handler`), with a serving certificate re-read on rotation.

pub mod review;
pub mod server;
pub mod tls;
pub mod validate;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio_rustls::TlsAcceptor;

use crate::cli::Role;
use crate::runtime::{Runtime, RuntimeArgs, duration};
use review::{FailurePolicy, Handler};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub runtime: RuntimeArgs,

    /// Address of the HTTPS admission server
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:8443")]
    pub listen_addr: SocketAddr,

    /// Directory holding tls.crt and tls.key (a mounted Secret); re-read when they change
    #[arg(long, value_name = "DIR", default_value = "/etc/phylax/webhook-tls")]
    pub tls_dir: PathBuf,

    /// Deadline for one handler; past it the webhook's failure policy answers. Keep it below the
    /// webhook configuration's timeoutSeconds
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = duration::parse)]
    pub handler_timeout: Duration,

    /// What a failing handler answers, per webhook: NAME=closed (refuse) or NAME=open (admit with a
    /// warning). Repeatable
    #[arg(long = "failure-policy", value_name = "NAME=POLICY", value_parser = parse_policy)]
    pub failure_policies: Vec<(String, FailurePolicy)>,
}

fn parse_policy(s: &str) -> Result<(String, FailurePolicy), String> {
    let (name, policy) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not NAME=closed or NAME=open"))?;
    let policy = match policy {
        "closed" => FailurePolicy::Closed,
        "open" => FailurePolicy::Open,
        other => return Err(format!("failure policy {other:?} is neither closed nor open")),
    };
    Ok((name.to_owned(), policy))
}

/// Every webhook this build serves.
pub fn handlers() -> Vec<Arc<dyn Handler>> {
    vec![Arc::new(validate::secret_sync::SecretSyncAnnotation)]
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let rt = Runtime::start(Role::Webhook, &args.runtime).await?;
    let cert = tls::ReloadingCert::load(&args.tls_dir).map_err(|e| {
        anyhow::anyhow!(
            "{e}; mount the webhook's TLS Secret at --tls-dir (now {})",
            args.tls_dir.display()
        )
    })?;
    let acceptor = TlsAcceptor::from(Arc::new(cert.server_config()?));
    let webhooks = server::Webhooks::new(
        handlers(),
        &args.failure_policies,
        args.handler_timeout,
        &rt.metrics,
    )?;
    let app = server::router(webhooks);
    let listener = tokio::net::TcpListener::bind(args.listen_addr)
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot listen on {} ({e}); choose another address with --listen-addr",
                args.listen_addr
            )
        })?;
    let listening = rt.readiness.register("admission-server-listening");
    listening.set(true);
    tracing::info!(addr = %args.listen_addr, tls_dir = %args.tls_dir.display(), "serving admission webhooks");

    rt.run(|shutdown| async move {
        let graceful = GracefulShutdown::new();
        let builder = auto::Builder::new(TokioExecutor::new());
        loop {
            let (tcp, _) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot accept a connection");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
                _ = shutdown.cancelled() => break,
            };
            let (acceptor, app, builder) = (acceptor.clone(), app.clone(), builder.clone());
            let watcher = graceful.watcher();
            tokio::spawn(async move {
                let tls = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(e)) => {
                        tracing::debug!(error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => return,
                };
                let conn = builder.serve_connection(TokioIo::new(tls), TowerToHyperService::new(app));
                if let Err(e) = watcher.watch(conn.into_owned()).await {
                    tracing::debug!(error = %e, "admission connection closed");
                }
            });
        }
        // Finish the reviews in flight; the API server retries or applies its policy for the rest.
        let _ = tokio::time::timeout(Duration::from_secs(10), graceful.shutdown()).await;
        Ok(())
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::webhooks::WEBHOOKS;

    #[test]
    fn every_served_webhook_is_registered_and_every_registered_one_served() {
        let served = handlers();
        for h in &served {
            let spec = WEBHOOKS.iter().find(|w| w.name == h.name());
            assert!(
                spec.is_some_and(|s| s.mutating == h.mutating()),
                "{} is not in api::webhooks",
                h.name()
            );
        }
        for spec in WEBHOOKS {
            assert!(
                served.iter().any(|h| h.name() == spec.name),
                "no handler for {}",
                spec.name
            );
        }
    }
}
