//! Secret sync against a real kube-apiserver and etcd: the operator run as a child process, AWS
//! Secrets Manager served by moto (its real HTTP API), the `file` store on a temporary directory,
//! and Vault and Azure Key Vault by test doubles of their documented HTTP APIs (no real server
//! can be had here; see `doubles.rs`).
//!
//! The operator watches every namespace, so the tests of this binary run one at a time
//! (`serial()`): two operators of two tests would both answer every pod.

#[path = "../support/mod.rs"]
mod support;

mod aws;
mod doubles;
mod failures;
mod lifecycle;
mod vault_azure;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Pod, Secret};
use k8s_openapi::api::events::v1::Event;
use kube::api::{DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::{Value, json};

use support::cluster::{TestNamespace, cluster};
use support::process::{Phylax, binary};
use support::wait::wait_for;

/// One operator at a time in this binary.
pub async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    SERIAL.lock().await
}

pub use support::cluster::install_crds;

pub fn providers(client: &Client) -> Api<DynamicObject> {
    let ar = kube::api::ApiResource::erase::<phylax::api::secret_provider::SecretProvider>(&());
    Api::all_with(client.clone(), &ar)
}

/// Creates (or replaces) a SecretProvider from its spec.
pub async fn apply_provider(client: &Client, name: &str, spec: Value) {
    let obj: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "secrets.phylax.dev/v1alpha1", "kind": "SecretProvider",
        "metadata": {"name": name}, "spec": spec,
    }))
    .expect("SecretProvider");
    providers(client)
        .patch(
            name,
            &PatchParams::apply("phylax-test").force(),
            &Patch::Apply(&obj),
        )
        .await
        .expect("apply SecretProvider");
}

/// Waits for a condition of a SecretProvider's status; returns (status, message).
pub async fn provider_condition(client: &Client, name: &str, type_: &str, status: &str) -> String {
    let api = providers(client);
    wait_for(
        &format!("SecretProvider {name} to report {type_}={status}"),
        Duration::from_secs(30),
        || async {
            let sp = api.get(name).await.ok()?;
            let c = sp.data["status"]["conditions"]
                .as_array()?
                .iter()
                .find(|c| c["type"] == type_ && c["status"] == status)?
                .clone();
            Some(c["message"].as_str().unwrap_or_default().to_owned())
        },
    )
    .await
}

/// A namespace with extra labels.
pub async fn namespace(client: &Client, prefix: &str, labels: &[(&str, &str)]) -> TestNamespace {
    let ns = TestNamespace::create(cluster(), prefix).await;
    if !labels.is_empty() {
        let labels: BTreeMap<&str, &str> = labels.iter().copied().collect();
        Api::<Namespace>::all(client.clone())
            .patch(
                &ns.name,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"labels": labels}})),
            )
            .await
            .expect("label namespace");
    }
    ns
}

pub fn pod(name: &str, annotation: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "annotations": {"secrets.phylax.dev/sync": annotation}},
        "spec": {"containers": [{"name": "app", "image": "registry.example/app:1"}]},
    }))
    .expect("pod")
}

/// Creates a pod, waiting for the namespace's default ServiceAccount and its token first (the
/// admission plugin refuses pods until the controller-manager made them). Returns the pod's uid.
pub async fn create_pod(client: &Client, ns: &str, name: &str, annotation: &str) -> String {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    wait_for("a pod to be admitted", Duration::from_secs(30), || async {
        match pods.create(&PostParams::default(), &pod(name, annotation)).await {
            Ok(p) => p.metadata.uid,
            // 1.20 admits pods only once the ServiceAccount and its token Secret exist.
            Err(kube::Error::Api(s))
                if s.message.contains("serviceaccount") || s.message.contains("service account") =>
            {
                None
            }
            Err(e) => panic!("create pod {ns}/{name}: {e}"),
        }
    })
    .await
}

/// The events about one object (by uid), as (reason, note).
pub async fn events_of(client: &Client, ns: &str, uid: &str) -> Vec<(String, String)> {
    let api: Api<Event> = Api::namespaced(client.clone(), ns);
    let list = api.list(&ListParams::default()).await.expect("list events");
    list.items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.uid.as_deref()) == Some(uid))
        .map(|e| (e.reason.unwrap_or_default(), e.note.unwrap_or_default()))
        .collect()
}

/// Waits for an event with `reason` about the object; returns its note.
pub async fn wait_event(client: &Client, ns: &str, uid: &str, reason: &str) -> String {
    wait_for(
        &format!("a {reason} event in {ns}"),
        Duration::from_secs(30),
        || async {
            events_of(client, ns, uid)
                .await
                .into_iter()
                .find(|(r, _)| r == reason)
                .map(|(_, n)| n)
        },
    )
    .await
}

pub async fn wait_secret(client: &Client, ns: &str, name: &str) -> Secret {
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    wait_for(
        &format!("Secret {ns}/{name}"),
        Duration::from_secs(30),
        || async {
            api.get_opt(name)
                .await
                .ok()
                .flatten()
                .filter(|s| s.data.is_some())
        },
    )
    .await
}

pub fn data_of(secret: &Secret) -> BTreeMap<String, String> {
    secret
        .data
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, String::from_utf8_lossy(&v.0).into_owned()))
        .collect()
}

/// The operator, leading alone unless told otherwise, with a short coalescing window so a test
/// can show that a later pod reads the store again.
pub fn operator(op_ns: &str, extra: &[&str], env: &std::collections::HashMap<&str, &str>) -> Phylax {
    let mut args = vec![
        format!("--namespace={op_ns}"),
        "--manage-webhook-certs=false".to_owned(),
    ];
    if !extra.iter().any(|a| a.starts_with("--sync-coalesce-window")) {
        args.push("--sync-coalesce-window=300ms".to_owned());
    }
    if !extra.iter().any(|a| a.starts_with("--leader-elect")) {
        args.push("--leader-elect=false".to_owned());
    }
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Phylax::start_with(binary(), "operator", &args, Some(&cluster().kubeconfig), env)
}

pub async fn started(op: &mut Phylax) {
    op.wait_ready(Duration::from_secs(30)).await;
    wait_for("secret sync to start", Duration::from_secs(30), || async {
        op.has_log("secret sync started").then_some(())
    })
    .await;
}

/// Asserts that no captured log line and no event in the namespaces holds `value`.
pub async fn assert_never_leaked(client: &Client, op: &Phylax, namespaces: &[&str], value: &str) {
    for line in op.logs() {
        assert!(!line.contains(value), "a secret value reached the logs: {line}");
    }
    for ns in namespaces {
        let api: Api<Event> = Api::namespaced(client.clone(), ns);
        for e in api.list(&ListParams::default()).await.expect("events").items {
            let text = serde_json::to_string(&e).expect("event json");
            assert!(!text.contains(value), "a secret value reached an event: {text}");
        }
    }
}

/// What the file-store tests start from: the CRDs, an app namespace, the operator's namespace, a
/// store directory, and a SecretProvider over it that lets the app namespace read `paths`.
pub struct FileSetup {
    pub client: Client,
    pub ns: TestNamespace,
    pub op_ns: TestNamespace,
    pub dir: tempfile::TempDir,
    pub provider: String,
}

pub async fn file_setup(prefix: &str, paths: &[&str]) -> FileSetup {
    let client = cluster().client().await;
    install_crds(&client).await;
    let ns = namespace(&client, prefix, &[]).await;
    let op_ns = namespace(&client, "op", &[]).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let provider = format!("file-{}", support::random_suffix());
    apply_provider(
        &client,
        &provider,
        json!({"file": {"directory": dir.path()}, "namespaces": {"names": [ns.name]}, "paths": paths}),
    )
    .await;
    FileSetup {
        client,
        ns,
        op_ns,
        dir,
        provider,
    }
}

pub fn write_json(dir: &Path, rel: &str, value: &Value) {
    let file = dir.join(format!("{rel}.json"));
    std::fs::create_dir_all(file.parent().expect("parent")).expect("mkdir");
    std::fs::write(file, serde_json::to_vec(value).expect("json")).expect("write");
}
