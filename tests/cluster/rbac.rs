//! The RBAC in `phylax manifests` is enough for the operator to work and no more: the operator,
//! running with its ServiceAccount's token, elects itself, keeps the webhook's certificates, syncs
//! a secret into a pod's namespace, and cannot list Secrets.

use std::time::Duration;

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use kube::api::{DynamicObject, Patch, PatchParams, PostParams};
use kube::config::Kubeconfig;
use kube::core::GroupVersionKind;
use kube::discovery::{Scope, pinned_kind};
use kube::{Api, ResourceExt};

use crate::support::cluster::{TestNamespace, client_for, cluster};
use crate::support::process::{Phylax, binary, run};
use crate::support::wait::wait_for;

/// Installs the rendered manifests (less the Namespace, which the test owns) for real.
async fn install(client: &kube::Client, ns: &str) {
    let (code, out, err) = run(&binary(), &["manifests", "--namespace", ns]);
    assert_eq!(code, 0, "{err}");
    let ssa = PatchParams::apply("phylax-test").force();
    for doc in out.split("\n---\n").skip(1) {
        let mut obj: DynamicObject = serde_yaml::from_str(doc).expect("object");
        let gvk = GroupVersionKind::try_from(obj.types.as_ref().expect("types")).expect("gvk");
        // No webhook serves in this test: the profile binder's MutatingWebhookConfiguration and
        // the node-writes entry (both failurePolicy Fail) would refuse every pod, profile and node
        // report in the shared test cluster.
        if gvk.kind == "Namespace" || gvk.kind == "MutatingWebhookConfiguration" {
            continue;
        }
        if let Some(hooks) = obj.data.get_mut("webhooks").and_then(|w| w.as_array_mut()) {
            hooks.retain(|h| h["failurePolicy"] != "Fail");
        }
        let (resource, caps) = pinned_kind(client, &gvk).await.expect("served kind");
        let api: Api<DynamicObject> = match caps.scope {
            Scope::Cluster => Api::all_with(client.clone(), &resource),
            Scope::Namespaced => Api::namespaced_with(client.clone(), ns, &resource),
        };
        api.patch(&obj.name_any(), &ssa, &Patch::Apply(&obj))
            .await
            .expect("apply");
    }
}

/// A kubeconfig for the same cluster that authenticates as a ServiceAccount (TokenRequest API).
async fn service_account_kubeconfig(
    client: &kube::Client,
    ns: &str,
    sa: &str,
    dir: &std::path::Path,
) -> std::path::PathBuf {
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: vec![],
            expiration_seconds: Some(3600),
            ..Default::default()
        },
        ..Default::default()
    };
    let token: TokenRequest = sas
        .create_subresource("token", sa, &PostParams::default(), &request)
        .await
        .expect("token request");
    let token = token.status.expect("token status").token;

    let admin = Kubeconfig::read_from(&cluster().kubeconfig).expect("kubeconfig");
    let context = admin.current_context.clone().expect("current context");
    let cluster_name = admin
        .contexts
        .iter()
        .find(|c| c.name == context)
        .and_then(|c| c.context.as_ref())
        .map(|c| c.cluster.clone())
        .expect("context cluster");
    let named = admin
        .clusters
        .iter()
        .find(|c| c.name == cluster_name)
        .expect("cluster");
    let kc = serde_json::json!({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [named],
        "users": [{"name": sa, "user": {"token": token}}],
        "contexts": [{"name": sa, "context": {"cluster": cluster_name, "user": sa}}],
        "current-context": sa,
    });
    let path = dir.join(format!("{sa}.kubeconfig"));
    std::fs::write(&path, serde_yaml::to_string(&kc).expect("yaml")).expect("write kubeconfig");
    path
}

#[tokio::test]
async fn operator_works_with_exactly_its_manifest_rbac() {
    let cluster = cluster();
    let client = cluster.client().await;
    let ns = TestNamespace::create(cluster, "rbac").await;
    install(&client, &ns.name).await;

    let dir = tempfile::tempdir().unwrap();
    let kc = service_account_kubeconfig(&client, &ns.name, "phylax-operator", dir.path()).await;
    let mut op = Phylax::start(
        "operator",
        &[
            &format!("--namespace={}", ns.name),
            "--lease-duration=4s",
            "--renew-deadline=3s",
            "--retry-period=500ms",
        ],
        Some(&kc),
    );
    op.wait_ready(Duration::from_secs(30)).await;
    wait_for(
        "the operator to lead with its own ServiceAccount",
        Duration::from_secs(20),
        || async { op.metric("phylax_leader_is_leader").await.filter(|v| *v == 1.0) },
    )
    .await;
    assert!(
        !op.has_log("cannot read or write the leader lease"),
        "{:?}",
        op.logs()
    );

    // With exactly that RBAC it keeps the webhook's certificates: both Secrets in its namespace,
    // and the caBundle of the installed webhook configuration matches the CA it made.
    let admin_secrets: Api<Secret> = Api::namespaced(client.clone(), &ns.name);
    let tls = wait_for(
        "the operator to write the webhook's serving Secret",
        Duration::from_secs(30),
        || async { admin_secrets.get_opt("phylax-webhook-tls").await.ok().flatten() },
    )
    .await;
    let bundle = tls
        .data
        .as_ref()
        .and_then(|d| d.get("ca.crt"))
        .expect("ca.crt")
        .0
        .clone();
    let configs: Api<k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration> =
        Api::all(client.clone());
    wait_for("the caBundle to be injected", Duration::from_secs(30), || async {
        let config = configs.get("phylax").await.ok()?;
        config
            .webhooks?
            .iter()
            .all(|w| w.client_config.ca_bundle.as_ref().map(|b| &b.0) == Some(&bundle))
            .then_some(())
    })
    .await;
    assert!(
        !op.has_log("cannot reconcile the webhook certificates"),
        "{:?}",
        op.logs()
    );

    // With the same RBAC it syncs a secret into the namespace of a pod that asks (the `file`
    // store keeps the test free of cloud credentials), with its event on the pod.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("cfg.json"), br#"{"K":"v"}"#).unwrap();
    let app = TestNamespace::create(cluster, "rbac-app").await;
    let sp_gvk = GroupVersionKind::gvk("secrets.phylax.dev", "v1alpha1", "SecretProvider");
    let sp_api = wait_for(
        "the SecretProvider CRD to be served",
        Duration::from_secs(30),
        || async {
            let (ar, _) = pinned_kind(&client, &sp_gvk).await.ok()?;
            Some(Api::<DynamicObject>::all_with(client.clone(), &ar))
        },
    )
    .await;
    let provider = format!("rbac-{}", ns.name);
    let sp: DynamicObject = serde_json::from_value(serde_json::json!({
        "apiVersion": "secrets.phylax.dev/v1alpha1", "kind": "SecretProvider",
        "metadata": {"name": provider},
        "spec": {"file": {"directory": dir.path()}, "namespaces": {"names": [app.name]}, "paths": ["cfg"]},
    }))
    .unwrap();
    sp_api
        .patch(&provider, &PatchParams::apply("phylax-test"), &Patch::Apply(&sp))
        .await
        .expect("apply SecretProvider");
    let pod: k8s_openapi::api::core::v1::Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "app", "annotations": {
            "secrets.phylax.dev/sync": format!("{{provider: {provider}, path: cfg, secretName: cfg}}")}},
        "spec": {"containers": [{"name": "app", "image": "registry.example/app:1"}]},
    }))
    .unwrap();
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client.clone(), &app.name);
    wait_for("the pod to be admitted", Duration::from_secs(30), || async {
        pods.create(&PostParams::default(), &pod).await.ok().map(|_| ())
    })
    .await;
    let app_secrets: Api<Secret> = Api::namespaced(client.clone(), &app.name);
    let synced = wait_for("the synced Secret", Duration::from_secs(30), || async {
        app_secrets
            .get_opt("cfg")
            .await
            .ok()
            .flatten()
            .filter(|s| s.data.is_some())
    })
    .await;
    assert_eq!(synced.data.unwrap()["K"].0, b"v");
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client.clone(), &app.name);
    wait_for("the SecretSynced event", Duration::from_secs(30), || async {
        let list = events.list(&Default::default()).await.ok()?;
        list.items
            .iter()
            .any(|e| e.reason.as_deref() == Some("SecretSynced"))
            .then_some(())
    })
    .await;
    wait_for("the provider's status", Duration::from_secs(30), || async {
        let sp = sp_api.get(&provider).await.ok()?;
        (sp.data["status"]["conditions"].as_array()?.len() == 3).then_some(())
    })
    .await;
    for line in op.logs() {
        assert!(
            !line.contains("forbidden"),
            "the operator lacks a permission: {line}"
        );
    }
    sp_api.delete(&provider, &Default::default()).await.ok();

    // Least privilege: nothing beyond the lease and its own two Secrets.
    let as_operator = client_for(&kc).await;
    let secrets: Api<Secret> = Api::namespaced(as_operator.clone(), &ns.name);
    match secrets.list(&Default::default()).await {
        Err(kube::Error::Api(s)) => assert_eq!(s.code, 403, "{s:?}"),
        other => panic!("the operator's ServiceAccount may list Secrets: {other:?}"),
    }
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> = Api::namespaced(as_operator, &ns.name);
    match leases.get("someone-elses-lease").await {
        Err(kube::Error::Api(s)) => assert_eq!(s.code, 403, "get is pinned to the operator's lease: {s:?}"),
        other => panic!("the operator's ServiceAccount may read other leases: {other:?}"),
    }

    op.signal(libc::SIGTERM);
    assert!(op.wait_exit(Duration::from_secs(15)).await.success());
    assert!(op.has_log("released the leader lease"), "{:?}", op.logs());
}
