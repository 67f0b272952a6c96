//! The `node-agent` role (a DaemonSet): installs the cluster's seccomp and AppArmor profiles on its
//! node, reports where each stands in `ProfileNodeStatus` objects, removes a deleted profile once
//! no pod on the node uses it, and records profiles from the kernel's seccomp audit records.

pub mod apparmor;
pub mod install;
pub mod metrics;
mod profiles;
pub mod recorder;
mod report;
pub mod seccomp;

use std::path::PathBuf;
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::runtime::watcher;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::api::profiles::profiles_used;
use crate::role::Role;
use crate::runtime::controller::ErrorPolicy;
use crate::runtime::kube::KubeArgs;
use crate::runtime::reflect;
use crate::runtime::{Runtime, RuntimeArgs, names};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub runtime: RuntimeArgs,

    #[command(flatten)]
    pub kube: KubeArgs,

    #[command(flatten)]
    pub node: NodeArgs,
}

#[derive(Clone, Debug, clap::Args)]
#[command(next_help_heading = "Node")]
pub struct NodeArgs {
    /// This node's name (the DaemonSet passes spec.nodeName)
    #[arg(long, env = "NODE_NAME", value_parser = names::parse_object_name)]
    pub node_name: String,

    /// The kubelet's root directory; profiles go to <kubelet-root>/seccomp/phylax/<name>.json
    #[arg(long, value_name = "DIR", default_value = "/var/lib/kubelet")]
    pub kubelet_root: PathBuf,

    /// Where the kernel's seccomp audit records appear: /dev/kmsg or auditd's log
    /// (/var/log/audit/audit.log); `none` turns recording off. Syslog and journal text is not
    /// read: any process can write a record's words there
    #[arg(long, value_name = "PATH", default_value = "/dev/kmsg")]
    pub audit_source: PathBuf,

    /// The host's /proc (for /proc/<pid>/cgroup: which container made a syscall)
    #[arg(long, value_name = "DIR", default_value = "/proc")]
    pub proc_root: PathBuf,

    /// The host's /sys (AppArmor is detected through <sys-root>/kernel/security/apparmor)
    #[arg(long, value_name = "DIR", default_value = "/sys")]
    pub sys_root: PathBuf,

    /// apparmor_parser to load AppArmor profiles with
    #[arg(long, value_name = "PATH", default_value = "apparmor_parser")]
    pub apparmor_parser: PathBuf,

    /// Directory the AppArmor policies are written to before loading
    #[arg(long, value_name = "DIR", default_value = "/etc/apparmor.d/phylax")]
    pub apparmor_dir: PathBuf,

    /// API calls (finalizers, reports) in flight; profile files are written without waiting for them
    #[arg(long, value_name = "N", default_value_t = 16)]
    pub profile_concurrency: u16,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let rt = Runtime::start(Role::NodeAgent, &args.runtime).await?;
    let dir = install::ProfileDir::new(&args.node.kubelet_root);
    // An unusable kubelet root stops the agent with the path and the reason; the DaemonSet's
    // restarts and its logs show it, rather than every profile failing one by one.
    dir.prepare()?;
    let client = crate::runtime::kube::connect(&args.kube).await?;
    let metrics = metrics::ProfileMetrics::register(&rt.metrics, &args.node.node_name);
    let apparmor = apparmor::Support::detect(
        &args.node.sys_root,
        &args.node.apparmor_parser,
        &args.node.apparmor_dir,
    );
    if let apparmor::Support::Unsupported(why) = &apparmor {
        tracing::info!(reason = %why, "AppArmor profiles will be reported unsupported on this node");
    }
    let synced = rt.readiness.register("profiles-synced");
    let policy = ErrorPolicy::standard("node-profiles", &rt.metrics);
    let node = args.node.clone();

    rt.run(|shutdown| async move {
        let mut tasks = JoinSet::new();

        // This node's pods: which profiles are in use (deletion waits for them), who uses what,
        // and which containers are being recorded.
        let (seccomp_tx, seccomp_rx) = mpsc::unbounded_channel::<String>();
        let (apparmor_tx, apparmor_rx) = mpsc::unbounded_channel::<String>();
        let (pod_events_tx, pod_events_rx) = mpsc::unbounded_channel::<Arc<Pod>>();
        let pod_watch = watcher::Config::default().fields(&format!("spec.nodeName={}", node.node_name));
        let (pods, pod_changes) =
            reflect::store_and_changes("this node's pods", Api::<Pod>::all(client.clone()), pod_watch);
        {
            let (seccomp_tx, apparmor_tx) = (seccomp_tx.clone(), apparmor_tx.clone());
            tasks.spawn(async move {
                let mut stream = std::pin::pin!(pod_changes);
                while let Some(pod) = stream.next().await {
                    let (seccomp, apparmor) =
                        profiles_used(pod.spec.as_ref(), pod.metadata.annotations.as_ref());
                    for name in seccomp {
                        let _ = seccomp_tx.send(name);
                    }
                    for name in apparmor {
                        let _ = apparmor_tx.send(name);
                    }
                    let _ = pod_events_tx.send(Arc::new(pod));
                }
                Ok(())
            });
        }

        tasks.spawn(keep_recording_profile(client.clone(), dir.clone()));

        let shared = Arc::new(profiles::Shared {
            client: client.clone(),
            node: node.node_name.clone(),
            pods: pods.clone(),
            dir,
            apparmor,
            metrics: metrics.clone(),
            reports: report::Reports::new(client.clone(), node.node_name.clone()),
            api_slots: tokio::sync::Semaphore::new(node.profile_concurrency.max(1).into()),
            policy,
        });
        tasks.spawn(profiles::run_seccomp(
            shared.clone(),
            seccomp_tx,
            seccomp_rx,
            synced,
            shutdown.clone(),
        ));
        tasks.spawn(profiles::run_apparmor(
            shared.clone(),
            apparmor_rx,
            node.profile_concurrency,
            shutdown.clone(),
        ));
        if node.audit_source.as_os_str() != "none" {
            tasks.spawn(recorder::run(
                client.clone(),
                node.clone(),
                pods,
                pod_events_rx,
                metrics,
                shutdown.clone(),
            ));
        } else {
            tracing::info!("profile recording is off (--audit-source none)");
        }

        // Every task runs until shutdown; one ending early is a bug worth stopping for.
        let result = tokio::select! {
            done = tasks.join_next() => match done {
                Some(Ok(Err(e))) => Err(e),
                Some(Err(e)) => Err(anyhow::anyhow!("a node-agent task failed: {e}")),
                _ if shutdown.is_cancelled() => Ok(()),
                _ => Err(anyhow::anyhow!("a node-agent task stopped unexpectedly")),
            },
            _ = shutdown.cancelled() => Ok(()),
        };
        tasks.shutdown().await;
        result
    })
    .await
}

/// Keeps the log-everything profile on the node exactly while a ProfileRecording exists in the
/// cluster (a pod may be scheduled here from any of them).
async fn keep_recording_profile(client: kube::Client, dir: install::ProfileDir) -> anyhow::Result<()> {
    use crate::api::profiles::ProfileRecording;
    use kube::core::error_boundary::DeserializeGuard;

    let (recordings, changes) = reflect::store_and_changes(
        "ProfileRecordings",
        Api::<DeserializeGuard<ProfileRecording>>::all(client),
        watcher::Config::default(),
    );
    let (mut changed, _watch) = reflect::wake_on_change(changes);
    if !reflect::wait_listed(&recordings).await {
        return Ok(());
    }
    let mut present = None;
    loop {
        let wanted = !recordings.state().is_empty();
        if present != Some(wanted) {
            let done = if wanted {
                dir.write_recording_profile(&recorder::logging_profile())
                    .map(|_| ())
            } else {
                dir.remove_recording_profile().map(|_| ())
            };
            match done {
                Ok(()) => {
                    tracing::info!(present = wanted, "recording profile updated");
                    present = Some(wanted);
                }
                // Tried again on the next change; the error names the path.
                Err(e) => tracing::warn!(error = %e, "cannot update the recording profile"),
            }
        }
        if changed.recv().await.is_none() {
            return Ok(());
        }
    }
}
