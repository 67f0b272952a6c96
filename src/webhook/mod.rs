//! The `webhook` role: an HTTPS admission server (AdmissionReview v1) whose webhooks are pure
//! functions (`review::Handler`), with a serving certificate re-read on rotation.

pub mod mutate;
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

use crate::role::Role;
use crate::runtime::{Runtime, RuntimeArgs, duration};
use review::{FailurePolicy, Handler};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub runtime: RuntimeArgs,

    #[command(flatten)]
    pub kube: crate::runtime::kube::KubeArgs,

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

    /// Reviews read or decided at once; past it a review waits, and is answered 503 (the webhook
    /// configuration's failure policy) if its deadline passes first
    #[arg(long, value_name = "N", default_value_t = 128)]
    pub max_concurrent_reviews: usize,

    /// Memory that reviews over 64 KiB may hold at once, in MiB; ordinary Pod reviews never wait for
    /// it, so a flood of large bodies cannot delay them. At least 5 (the largest review accepted)
    #[arg(long, value_name = "MIB", default_value_t = 32)]
    pub max_review_memory_mib: usize,

    /// Connections served at once; more wait in the listen queue
    #[arg(long, value_name = "N", default_value_t = 1024)]
    pub max_connections: usize,

    /// The node agents' ServiceAccount, NAMESPACE:NAME: its writes to profiles and node reports are
    /// tied to the node the calling pod runs on
    #[arg(long, value_name = "NAMESPACE:NAME", default_value = "phylax-system:phylax-node-agent", value_parser = parse_service_account)]
    pub node_agent_service_account: (String, String),

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

/// Every webhook this build serves; `profiles` is the cluster state the profile binder reads.
pub fn handlers(
    profiles: mutate::profiles::ProfileIndex,
    agents: validate::node_writes::NodeAgents,
) -> Vec<Arc<dyn Handler>> {
    vec![
        Arc::new(validate::secret_sync::SecretSyncAnnotation),
        Arc::new(mutate::profiles::ProfileBinder { index: profiles }),
        Arc::new(validate::node_writes::NodeWrites { agents }),
        Arc::new(validate::recording_claims::RecordingClaims),
    ]
}

/// `NAMESPACE:NAME` of a ServiceAccount.
fn parse_service_account(s: &str) -> Result<(String, String), String> {
    let (ns, name) = s
        .split_once(':')
        .ok_or_else(|| format!("{s:?} is not NAMESPACE:NAME"))?;
    let ns = crate::runtime::names::parse_namespace(ns)?;
    if name.is_empty() || name.contains(':') {
        return Err(format!("{s:?}: the ServiceAccount name is empty or holds a ':'"));
    }
    Ok((ns, name.to_owned()))
}

/// Watches the node agents' pods, to tell from a request's pod-bound token which node it comes
/// from.
fn watch_node_agents(
    client: kube::Client,
    service_account: &(String, String),
    recordings: kube::runtime::reflector::Store<
        kube::core::error_boundary::DeserializeGuard<crate::api::profiles::ProfileRecording>,
    >,
    tasks: &mut tokio::task::JoinSet<()>,
) -> validate::node_writes::NodeAgents {
    let (ns, name) = service_account;
    let (pods, keep_current) = crate::runtime::reflect::store(
        "node agent pods",
        kube::Api::<k8s_openapi::api::core::v1::Pod>::namespaced(client, ns),
        kube::runtime::watcher::Config::default().labels(&format!(
            "app.kubernetes.io/name=phylax,app.kubernetes.io/component={}",
            Role::NodeAgent.name()
        )),
    );
    tasks.spawn(keep_current);
    validate::node_writes::NodeAgents {
        username: format!("system:serviceaccount:{ns}:{name}"),
        namespace: ns.clone(),
        pods,
        recordings,
    }
}

/// Watches what the profile binder decides on. The role is ready once every store has listed.
fn watch_profiles(
    client: kube::Client,
    synced: crate::runtime::admin::ReadyFlag,
) -> (mutate::profiles::ProfileIndex, tokio::task::JoinSet<()>) {
    use kube::runtime::{reflector, watcher};

    fn watch<K>(
        what: &'static str,
        client: &kube::Client,
        tasks: &mut tokio::task::JoinSet<()>,
    ) -> reflector::Store<K>
    where
        K: kube::Resource<DynamicType = ()>
            + Clone
            + std::fmt::Debug
            + serde::de::DeserializeOwned
            + Send
            + Sync
            + 'static,
    {
        let (reader, keep_current) = crate::runtime::reflect::store(
            what,
            kube::Api::<K>::all(client.clone()),
            watcher::Config::default(),
        );
        tasks.spawn(keep_current);
        reader
    }

    let mut tasks = tokio::task::JoinSet::new();
    let index = mutate::profiles::ProfileIndex {
        bindings: watch("ProfileBindings", &client, &mut tasks),
        recordings: watch("ProfileRecordings", &client, &mut tasks),
        seccomp: watch("SeccompProfiles", &client, &mut tasks),
        apparmor: watch("AppArmorProfiles", &client, &mut tasks),
        synced: Default::default(),
    };
    let waiting = index.clone();
    tasks.spawn(async move {
        use crate::runtime::reflect::wait_listed;
        let all = futures::future::join4(
            wait_listed(&waiting.bindings),
            wait_listed(&waiting.recordings),
            wait_listed(&waiting.seccomp),
            wait_listed(&waiting.apparmor),
        )
        .await;
        if all.0 && all.1 && all.2 && all.3 {
            waiting.synced.store(true, std::sync::atomic::Ordering::SeqCst);
            synced.set(true);
        }
    });
    (index, tasks)
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
    let client = crate::runtime::kube::connect(&args.kube).await?;
    let (profiles, mut watches) =
        watch_profiles(client.clone(), rt.readiness.register("profile-index-synced"));
    let agents = watch_node_agents(
        client,
        &args.node_agent_service_account,
        profiles.recordings.clone(),
        &mut watches,
    );
    let limits = server::Limits {
        timeout: args.handler_timeout,
        max_concurrent: args.max_concurrent_reviews,
        large_body_budget: args.max_review_memory_mib.saturating_mul(1024 * 1024),
    };
    let webhooks = server::Webhooks::new(
        handlers(profiles, agents),
        &args.failure_policies,
        limits,
        &rt.metrics,
    )?;
    if args.max_connections == 0 {
        anyhow::bail!("--max-connections must be at least 1");
    }
    let connections = Arc::new(tokio::sync::Semaphore::new(args.max_connections));
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
        let mut builder = auto::Builder::new(TokioExecutor::new());
        // A client that opens a connection and sends nothing, or a header a byte at a time, must not
        // hold a connection slot for long.
        builder
            .http1()
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(Duration::from_secs(10));
        loop {
            // Waiting here leaves further connections in the kernel's listen queue.
            let slot = tokio::select! {
                slot = connections.clone().acquire_owned() => match slot {
                    Ok(slot) => slot,
                    Err(_) => break,
                },
                _ = shutdown.cancelled() => break,
            };
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
                let _slot = slot;
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
        let served = handlers(
            mutate::profiles::ProfileIndex::empty(),
            validate::node_writes::NodeAgents::empty(),
        );
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
