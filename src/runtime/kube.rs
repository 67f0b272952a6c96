//! The Kubernetes client every API-facing role uses: in-cluster config, `KUBECONFIG` or
//! `--kubeconfig`, and a startup check that the API server answers, so a wrong address fails with
//! a clear message instead of a stream of retries.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Args;
use kube::Client;
use kube::config::{Config, KubeConfigOptions, Kubeconfig};

use super::backoff::Backoff;

#[derive(Clone, Debug, Args)]
#[command(next_help_heading = "Kubernetes API")]
pub struct KubeArgs {
    /// Kubeconfig file; default: $KUBECONFIG, ~/.kube/config, then the in-cluster service account
    #[arg(long, value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,

    /// Namespace of Phylax's own objects (leases, CA Secrets)
    #[arg(long, env = "POD_NAMESPACE", default_value = "phylax-system", value_parser = super::names::parse_namespace)]
    pub namespace: String,

    /// How long to wait at startup for the API server to answer before giving up
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = super::duration::parse)]
    pub api_timeout: Duration,
}

/// Builds the client and waits (with backoff, up to `--api-timeout`) until the API server answers.
pub async fn connect(args: &KubeArgs) -> anyhow::Result<Client> {
    let config = load_config(args).await?;
    let server = config.cluster_url.to_string();
    let client = Client::try_from(config)
        .map_err(|e| anyhow::anyhow!("cannot build a Kubernetes client for {server}: {e}"))?;

    let started = Instant::now();
    let mut backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(5));
    loop {
        let remaining = args.api_timeout.saturating_sub(started.elapsed());
        let attempt = tokio::time::timeout(
            remaining.max(Duration::from_millis(100)),
            client.apiserver_version(),
        );
        match attempt.await {
            Ok(Ok(version)) => {
                tracing::info!(server = %server, version = %version.git_version, "connected to the API server");
                return Ok(client);
            }
            Ok(Err(e)) if started.elapsed() + backoff.ceiling() / 2 < args.api_timeout => {
                tracing::warn!(server = %server, error = %e, "API server not answering yet; retrying");
                tokio::time::sleep(backoff.next_delay()).await;
            }
            Ok(Err(e)) => {
                anyhow::bail!(
                    "cannot reach the Kubernetes API server at {server} within {}s: {e}; check the kubeconfig's server address and that the API server is running (or raise --api-timeout)",
                    args.api_timeout.as_secs()
                )
            }
            Err(_) => anyhow::bail!(
                "the Kubernetes API server at {server} did not answer within {}s; check the address and network (or raise --api-timeout)",
                args.api_timeout.as_secs()
            ),
        }
    }
}

async fn load_config(args: &KubeArgs) -> anyhow::Result<Config> {
    match &args.kubeconfig {
        Some(path) => {
            let kubeconfig = Kubeconfig::read_from(path).map_err(|e| {
                anyhow::anyhow!(
                    "cannot read kubeconfig {}: {}; pass a readable file with --kubeconfig",
                    path.display(),
                    root_cause(&e)
                )
            })?;
            Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await.map_err(|e| {
                anyhow::anyhow!("kubeconfig {} is not usable: {e}; check its current-context, cluster and user", path.display())
            })
        }
        None => Config::infer().await.map_err(|e| {
            anyhow::anyhow!(
                "no Kubernetes configuration found: {e}; pass --kubeconfig, set KUBECONFIG, or run inside a cluster"
            )
        }),
    }
}

/// The innermost error: kube's errors wrap the I/O or parse error that says what is really wrong.
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn unreadable_kubeconfig_is_explained() {
        let args = KubeArgs {
            kubeconfig: Some("/nonexistent/kubeconfig".into()),
            namespace: "phylax-system".into(),
            api_timeout: Duration::from_secs(1),
        };
        let Err(err) = connect(&args).await else {
            panic!("connected without a kubeconfig")
        };
        let err = err.to_string();
        assert!(
            err.contains("cannot read kubeconfig /nonexistent/kubeconfig"),
            "{err}"
        );
        assert!(err.contains("--kubeconfig"), "{err}");
    }
}
