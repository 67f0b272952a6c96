//! Phylax as pods on a real node (tests/support/real_node.rs): `phylax manifests --image <the
//! image built from this checkout's static binary>` applied unchanged, every role running as the
//! kubelet runs it, and what users do in their first hour checked end to end.
//!
//! One node and one installation per test binary (started by the first test, stopped at exit);
//! each test works in a namespace of its own. Needs root, the node's binaries
//! (tests/real-node/build.sh) and the static binary (scripts/build-static.sh, `PHYLAX_STATIC_BIN`).

#[path = "../support/mod.rs"]
mod support;

mod pods;
mod seccomp;
mod webhook;

use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{DynamicObject, LogParams, Patch, PatchParams};
use kube::core::GroupVersionKind;
use kube::discovery::{Scope, pinned_kind};
use kube::{Api, Client, ResourceExt};
use serde_json::json;

use support::cluster::TestNamespace;
use support::real_node::{PHYLAX_IMAGE, RealNode};
use support::wait::wait_for;

pub const NS: &str = "phylax-system";
pub const POD_TIMEOUT: Duration = Duration::from_secs(90);

/// What the tests need of the shared node; the node itself lives in `REAL` until exit.
pub struct Shared {
    pub kubeconfig: PathBuf,
    pub ready_after: Duration,
    pub installed_after: Duration,
}

static REAL: Mutex<Option<RealNode>> = Mutex::new(None);

extern "C" fn stop_node_at_exit() {
    if let Ok(mut node) = REAL.lock()
        && let Some(mut node) = node.take()
    {
        node.stop();
    }
}

/// The node, with Phylax installed from its manifests and every role Ready.
pub fn shared() -> &'static Shared {
    static SHARED: OnceLock<Shared> = OnceLock::new();
    SHARED.get_or_init(|| {
        // Its own runtime: the node outlives any one test's.
        std::thread::spawn(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime")
                .block_on(async {
                    let node = RealNode::start().await;
                    let kubeconfig = node.cp.kubeconfig.clone();
                    let ready_after = node.ready_after;
                    *REAL.lock().expect("node") = Some(node);
                    // SAFETY: registers a plain function; it runs once, when the test binary exits.
                    unsafe {
                        libc::atexit(stop_node_at_exit);
                    }
                    eprintln!("node Ready after {ready_after:?}");
                    let t = Instant::now();
                    let client = support::cluster::client_for(&kubeconfig).await;
                    install_phylax(&client).await;
                    let installed_after = t.elapsed();
                    eprintln!("Phylax installed and Ready after {installed_after:?}");
                    Shared {
                        kubeconfig,
                        ready_after,
                        installed_after,
                    }
                })
        })
        .join()
        .unwrap_or_else(|_| panic!("the real node did not start (see the message above)"))
    })
}

pub async fn client() -> Client {
    support::cluster::client_for(&shared().kubeconfig).await
}

/// `phylax manifests --image <local image>`, applied as it is printed, then every workload Ready.
async fn install_phylax(client: &Client) {
    let (code, out, err) = support::process::run(
        &support::process::binary(),
        &["manifests", "--image", PHYLAX_IMAGE],
    );
    assert_eq!(code, 0, "{err}");
    let docs: Vec<DynamicObject> = out
        .split("\n---\n")
        .skip(1)
        .map(|d| serde_yaml::from_str(d).unwrap_or_else(|e| panic!("{e}:\n{d}")))
        .collect();
    let pp = PatchParams::apply("phylax-node-test").force();
    for obj in &docs {
        let gvk = GroupVersionKind::try_from(obj.types.as_ref().expect("types")).expect("gvk");
        // A CRD just created is served a moment later; wait for what the next objects need.
        let (resource, caps) = wait_for(&format!("{gvk:?} to be served"), Duration::from_secs(30), || {
            let (client, gvk) = (client.clone(), gvk.clone());
            async move { pinned_kind(&client, &gvk).await.ok() }
        })
        .await;
        let api: Api<DynamicObject> = match caps.scope {
            Scope::Cluster => Api::all_with(client.clone(), &resource),
            Scope::Namespaced => Api::namespaced_with(
                client.clone(),
                obj.namespace().as_deref().unwrap_or("default"),
                &resource,
            ),
        };
        api.patch(&obj.name_any(), &pp, &Patch::Apply(obj))
            .await
            .unwrap_or_else(|e| panic!("apply {} {}: {e}", gvk.kind, obj.name_any()));
    }
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), NS);
    let daemonsets: Api<DaemonSet> = Api::namespaced(client.clone(), NS);
    let deadline = Instant::now() + POD_TIMEOUT;
    loop {
        let mut ready = true;
        for name in ["phylax-operator", "phylax-webhook"] {
            let s = deployments.get(name).await.ok().and_then(|d| d.status);
            ready &= s.is_some_and(|s| s.replicas.unwrap_or(0) > 0 && s.ready_replicas == s.replicas);
        }
        let s = daemonsets
            .get("phylax-node-agent")
            .await
            .ok()
            .and_then(|d| d.status);
        ready &=
            s.is_some_and(|s| s.desired_number_scheduled > 0 && s.number_ready == s.desired_number_scheduled);
        if ready {
            return;
        }
        if Instant::now() > deadline {
            panic!(
                "Phylax not Ready after {POD_TIMEOUT:?}:\n{}",
                describe_pods(client, NS).await
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Each pod's phase, container states and last log lines: what a failed wait shows.
pub async fn describe_pods(client: &Client, ns: &str) -> String {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let mut out = String::new();
    for pod in pods
        .list(&Default::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default()
    {
        let name = pod.name_any();
        let status = pod.status.unwrap_or_default();
        out += &format!("pod {name}: {:?}\n", status.phase);
        for c in status.container_statuses.unwrap_or_default() {
            out += &format!(
                "  {}: ready={} restarts={} {:?} last={:?}\n",
                c.name, c.ready, c.restart_count, c.state, c.last_state
            );
            let lp = LogParams {
                container: Some(c.name.clone()),
                tail_lines: Some(15),
                ..Default::default()
            };
            if let Ok(log) = pods.logs(&name, &lp).await {
                out += &format!("  log:\n{log}\n");
            }
        }
    }
    out
}

/// A namespace for one test, deleted when the test ends, once pods can be admitted in it.
pub async fn test_namespace(client: &Client, prefix: &str) -> TestNamespace {
    let ns = TestNamespace::create_with(client, &shared().kubeconfig, prefix).await;
    // Pods are admitted once the namespace's default ServiceAccount has its token: on 1.20 the
    // token controller adds the token Secret to the account after the account appears.
    let sas: Api<k8s_openapi::api::core::v1::ServiceAccount> = Api::namespaced(client.clone(), &ns.name);
    wait_for(
        "the namespace's default ServiceAccount token",
        POD_TIMEOUT,
        || {
            let sas = sas.clone();
            async move {
                let sa = sas.get_opt("default").await.ok().flatten()?;
                sa.secrets.is_some_and(|s| !s.is_empty()).then_some(())
            }
        },
    )
    .await;
    ns
}

/// Waits until the pod has finished (Succeeded or Failed) and returns its phase and log.
pub async fn finished(pods: &Api<Pod>, name: &str) -> (String, String) {
    let phase = wait_for(&format!("pod {name} to finish"), POD_TIMEOUT, || async move {
        let phase = pods.get(name).await.ok()?.status?.phase?;
        matches!(phase.as_str(), "Succeeded" | "Failed").then_some(phase)
    })
    .await;
    let log = pods
        .logs(name, &LogParams::default())
        .await
        .unwrap_or_else(|e| panic!("logs of {name}: {e}"));
    (phase, log)
}

/// A busybox pod that runs `script` once.
pub fn busybox_pod(name: &str, script: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 1,
            "containers": [{
                "name": "c",
                "image": support::real_node::BUSYBOX_IMAGE,
                "imagePullPolicy": "Never",
                "command": ["sh", "-c", script],
            }]
        }
    }))
    .expect("pod")
}
