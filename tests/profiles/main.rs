//! Security profiles against the real kernel and a real kube-apiserver + etcd: two registered
//! Node objects, each with a node agent on its own temporary kubelet root; the operator keeping
//! the profiles' status; the webhook binding profiles to new pods; the recorder reading this
//! kernel's audit records from /dev/kmsg.
//!
//! The agents and the operator watch the whole cluster, so the cluster tests of this binary run
//! one at a time (`serial()`) and remove what they created.

#[path = "../support/mod.rs"]
mod support;

mod binding;
mod kernel;
mod lifecycle;
mod recording;

use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde_json::{Value, json};

use phylax::api::profiles::{ProfileNodeStatus, SeccompProfile};
use support::cluster::{cluster, install_crds};
use support::process::Phylax;
use support::wait::wait_for;

pub const TIMEOUT: Duration = Duration::from_secs(30);

pub async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    SERIAL.lock().await
}

/// A node: its Node object, its kubelet root and its agent.
pub struct TestNode {
    pub name: String,
    pub root: tempfile::TempDir,
    pub agent: Option<Phylax>,
}

impl TestNode {
    pub fn file(&self, profile: &str) -> PathBuf {
        self.root
            .path()
            .join("seccomp/phylax")
            .join(format!("{profile}.json"))
    }

    pub fn agent(&self) -> &Phylax {
        self.agent.as_ref().expect("the node's agent runs")
    }

    /// Starts (or restarts) this node's agent and waits until it is ready.
    pub async fn start_agent(&mut self, audit_source: &str, proc_root: &Path) {
        let args = [
            format!("--node-name={}", self.name),
            format!("--kubelet-root={}", self.root.path().display()),
            format!("--audit-source={audit_source}"),
            format!("--proc-root={}", proc_root.display()),
            "--namespace=default".to_owned(),
        ];
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut agent = Phylax::start("node-agent", &args, Some(&cluster().kubeconfig));
        agent.wait_ready(TIMEOUT).await;
        self.agent = Some(agent);
    }

    pub async fn stop_agent(&mut self) {
        if let Some(mut agent) = self.agent.take() {
            agent.signal(libc::SIGTERM);
            assert!(agent.wait_exit(TIMEOUT).await.success(), "{:?}", agent.logs());
        }
    }
}

/// Two Nodes with agents, and the operator. `audit_source`: `none` or `/dev/kmsg`.
pub struct Setup {
    pub client: Client,
    pub nodes: Vec<TestNode>,
    pub proc_root: tempfile::TempDir,
    pub operator: Phylax,
}

impl Setup {
    pub async fn start(audit_source: &str) -> Setup {
        let client = cluster().client().await;
        install_crds(&client).await;
        reset(&client).await;
        let proc_root = tempfile::tempdir().expect("proc root");
        let mut nodes = Vec::new();
        for i in 1..=2 {
            let name = format!("node-{i}-{}", support::random_suffix());
            create_node(&client, &name).await;
            let mut node = TestNode {
                name,
                root: tempfile::tempdir().expect("kubelet root"),
                agent: None,
            };
            node.start_agent(audit_source, proc_root.path()).await;
            nodes.push(node);
        }
        let mut operator = Phylax::start(
            "operator",
            &[
                "--namespace=default",
                "--leader-elect=false",
                "--manage-webhook-certs=false",
                "--secret-sync=false",
            ],
            Some(&cluster().kubeconfig),
        );
        operator.wait_ready(TIMEOUT).await;
        Setup {
            client,
            nodes,
            proc_root,
            operator,
        }
    }

    /// Deletes every profile (the agents remove their files and finalizers) and the Nodes.
    pub async fn finish(mut self) {
        let api = profiles(&self.client);
        for p in api.list(&ListParams::default()).await.expect("list").items {
            let _ = api.delete(&p.name_any(), &DeleteParams::default()).await;
        }
        wait_for("every SeccompProfile to be gone", TIMEOUT, || async {
            api.list(&ListParams::default())
                .await
                .ok()?
                .items
                .is_empty()
                .then_some(())
        })
        .await;
        for node in &mut self.nodes {
            node.stop_agent().await;
            let _ = Api::<Node>::all(self.client.clone())
                .delete(&node.name, &DeleteParams::default())
                .await;
        }
        self.operator.signal(libc::SIGTERM);
        let _ = self.operator.wait_exit(TIMEOUT).await;
    }

    /// Asserts that no agent logged a panic.
    pub fn assert_no_panic(&self) {
        for agent in self.nodes.iter().filter_map(|n| n.agent.as_ref()) {
            for line in agent.logs() {
                assert!(!line.contains("panicked"), "{line}");
            }
        }
    }
}

/// Removes what an earlier test that failed half-way left behind (its Nodes, and profiles held by
/// the finalizers of agents that no longer run), so one failure does not fail the tests after it.
async fn reset(client: &Client) {
    let nodes: Api<Node> = Api::all(client.clone());
    let ours = ListParams::default().labels("phylax.dev/test=profiles");
    for node in nodes.list(&ours).await.expect("list nodes").items {
        let _ = nodes.delete(&node.name_any(), &DeleteParams::default()).await;
    }
    for ar in [
        kube::api::ApiResource::erase::<SeccompProfile>(&()),
        kube::api::ApiResource::erase::<phylax::api::profiles::AppArmorProfile>(&()),
    ] {
        let api = Api::<DynamicObject>::all_with(client.clone(), &ar);
        for p in api
            .list(&ListParams::default())
            .await
            .expect("list profiles")
            .items
        {
            let _ = api
                .patch(
                    &p.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(json!({"metadata": {"finalizers": null}})),
                )
                .await;
            let _ = api.delete(&p.name_any(), &DeleteParams::default()).await;
        }
        wait_for("leftover profiles to be gone", TIMEOUT, || async {
            api.list(&ListParams::default())
                .await
                .ok()?
                .items
                .is_empty()
                .then_some(())
        })
        .await;
    }
}

pub async fn create_node(client: &Client, name: &str) {
    let node: Node = serde_json::from_value(
        json!({"metadata": {"name": name, "labels": {"phylax.dev/test": "profiles"}}}),
    )
    .expect("node");
    Api::<Node>::all(client.clone())
        .create(&PostParams::default(), &node)
        .await
        .expect("create node");
}

pub fn profiles(client: &Client) -> Api<SeccompProfile> {
    Api::all(client.clone())
}

/// Creates or replaces a SeccompProfile from its spec (server-side apply).
pub async fn apply_profile(client: &Client, name: &str, spec: Value) {
    let obj = json!({
        "apiVersion": "profiles.phylax.dev/v1alpha1", "kind": "SeccompProfile",
        "metadata": {"name": name}, "spec": spec,
    });
    Api::<DynamicObject>::all_with(
        client.clone(),
        &kube::api::ApiResource::erase::<SeccompProfile>(&()),
    )
    .patch(
        name,
        &PatchParams::apply("phylax-test").force(),
        &Patch::Apply(&obj),
    )
    .await
    .unwrap_or_else(|e| panic!("apply SeccompProfile {name}: {e}"));
}

/// Waits for the profile's overall state; returns the profile. On timeout the message shows the
/// profile's last status, so a failure says where it stood.
pub async fn wait_state(client: &Client, name: &str, state: &str) -> SeccompProfile {
    let api = profiles(client);
    let deadline = std::time::Instant::now() + TIMEOUT;
    let mut last = None;
    loop {
        if let Ok(Some(p)) = api.get_opt(name).await {
            if p.status.as_ref().and_then(|s| s.state.as_deref()) == Some(state) {
                return p;
            }
            last = Some(serde_json::to_string(&p.status).unwrap_or_default());
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out after {TIMEOUT:?} waiting for SeccompProfile {name} to be {state}; last status: {last:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub async fn wait_gone(client: &Client, name: &str) {
    let api = profiles(client);
    wait_for(&format!("SeccompProfile {name} to be gone"), TIMEOUT, || async {
        api.get_opt(name).await.ok()?.is_none().then_some(())
    })
    .await;
}

/// Waits until the file exists and satisfies `check`; returns its JSON.
pub async fn wait_file(path: &Path, check: impl Fn(&Value) -> bool) -> Value {
    wait_for(&format!("{}", path.display()), TIMEOUT, || async {
        let json: Value = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
        check(&json).then_some(json)
    })
    .await
}

pub async fn wait_no_file(path: &Path) {
    wait_for(&format!("{} to be removed", path.display()), TIMEOUT, || async {
        (!path.exists()).then_some(())
    })
    .await;
}

/// The syscall names a profile file allows.
pub fn allowed(profile: &Value) -> Vec<String> {
    profile["syscalls"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["action"] == "SCMP_ACT_ALLOW")
        .flat_map(|r| r["names"].as_array().cloned().unwrap_or_default())
        .filter_map(|n| n.as_str().map(str::to_owned))
        .collect()
}

pub async fn node_statuses(client: &Client, profile: &str) -> Vec<ProfileNodeStatus> {
    Api::<ProfileNodeStatus>::all(client.clone())
        .list(&ListParams::default())
        .await
        .expect("list ProfileNodeStatus")
        .items
        .into_iter()
        .filter(|s| s.spec.profile_name == profile)
        .collect()
}

/// Creates a pod (retrying until 1.20's ServiceAccount admission accepts it).
pub async fn create_pod(client: &Client, ns: &str, pod: Value) -> Result<Pod, String> {
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let pod: Pod = serde_json::from_value(pod).expect("pod");
    wait_for("the pod to be admitted or refused", TIMEOUT, || async {
        match api.create(&PostParams::default(), &pod).await {
            Ok(p) => Some(Ok(p)),
            Err(kube::Error::Api(s))
                if s.message.contains("serviceaccount") || s.message.contains("service account") =>
            {
                None
            }
            Err(kube::Error::Api(s)) => Some(Err(s.message.clone())),
            Err(e) => panic!("create pod: {e}"),
        }
    })
    .await
}

/// Deletes a pod at once (no kubelet here to confirm a graceful stop).
pub async fn delete_pod(client: &Client, ns: &str, name: &str) {
    Api::<Pod>::namespaced(client.clone(), ns)
        .delete(
            name,
            &DeleteParams {
                grace_period_seconds: Some(0),
                ..Default::default()
            },
        )
        .await
        .expect("delete pod");
}
