//! The fail-closed profile webhook is called only where profiles are in use: the operator scopes
//! the MutatingWebhookConfiguration to namespaces holding ProfileBindings, and widens it to every
//! namespace while a ProfileRecording exists. Shown with the real API server calling a webhook
//! that is down: pods in scope are refused (fail closed), pods elsewhere are created.
//!
//! This binary's other tests create no bindings or recordings, so the scope is this test's alone.

use std::time::Duration;

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, PostParams};
use kube::{Api, Client};
use phylax::api::profiles::{ProfileBinding, ProfileRecording};
use serde_json::json;

use crate::support::cluster::{TestNamespace, cluster, install_crds};
use crate::support::process::Phylax;
use crate::support::wait::wait_for;

const TIMEOUT: Duration = Duration::from_secs(60);

/// Whether a dry-run pod creation in `ns` gets past admission; the error text when it does not.
async fn admitted(client: &Client, ns: &str) -> Result<(), String> {
    let pod: Pod = serde_json::from_value(json!({"metadata": {"name": "probe"},
        "spec": {"containers": [{"name": "c", "image": "registry.local/app:1"}]}}))
    .expect("pod");
    let dry = PostParams {
        dry_run: true,
        ..Default::default()
    };
    Api::<Pod>::namespaced(client.clone(), ns)
        .create(&dry, &pod)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Waits until pods in `ns` are refused because the (unreachable) webhook is called.
async fn wait_guarded(client: &Client, ns: &str, guarded: bool) {
    let what = format!(
        "pods in {ns} to be {}",
        if guarded {
            "sent to the webhook"
        } else {
            "left alone"
        }
    );
    wait_for(&what, TIMEOUT, || async {
        match admitted(client, ns).await {
            Err(e) if guarded && e.contains("profiles.phylax.dev") => Some(()),
            Ok(()) if !guarded => Some(()),
            _ => None,
        }
    })
    .await;
}

#[tokio::test]
async fn the_fail_closed_profile_webhook_sees_only_namespaces_that_use_profiles() {
    let cluster = cluster();
    let client = cluster.client().await;
    install_crds(&client).await;
    let (bound, plain, other) = (
        TestNamespace::create(cluster, "scope-bound").await,
        TestNamespace::create(cluster, "scope-plain").await,
        TestNamespace::create(cluster, "scope-other").await,
    );
    // The rendered configuration, pointed at a port where nothing listens: a call fails, and the
    // profile webhook fails closed.
    let rendered = phylax::deploy::manifests(&phylax::deploy::ManifestArgs {
        image: "phylax:test".into(),
        ..Default::default()
    })
    .expect("render");
    let mut config = rendered
        .into_iter()
        .find(|o| o["kind"] == "MutatingWebhookConfiguration")
        .expect("the mutating configuration");
    let closed = crate::support::free_port();
    for hook in config["webhooks"].as_array_mut().expect("webhooks") {
        hook["clientConfig"] = json!({"url": format!("https://127.0.0.1:{closed}/mutate/profiles")});
    }
    let configs: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let _ = configs.delete("phylax", &DeleteParams::default()).await;
    configs
        .create(
            &PostParams::default(),
            &serde_json::from_value(config).expect("configuration"),
        )
        .await
        .expect("create the configuration");

    let operator_ns = TestNamespace::create(cluster, "scope-operator").await;
    let mut operator = Phylax::start(
        "operator",
        &[
            &format!("--namespace={}", operator_ns.name),
            "--leader-elect=false",
            "--manage-webhook-certs=false",
            "--secret-sync=false",
        ],
        Some(&cluster.kubeconfig),
    );
    operator.wait_ready(TIMEOUT).await;

    // No bindings, no recordings: no namespace waits for the webhook.
    for ns in [&bound, &plain, &other] {
        wait_guarded(&client, &ns.name, false).await;
    }

    let bindings: Api<ProfileBinding> = Api::namespaced(client.clone(), &bound.name);
    bindings
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"apiVersion": "profiles.phylax.dev/v1alpha1", "kind": "ProfileBinding",
                "metadata": {"name": "web"},
                "spec": {"profileRef": {"kind": "SeccompProfile", "name": "web"}, "image": "registry.local/app:1"}}))
            .expect("binding"),
        )
        .await
        .expect("create binding");
    wait_guarded(&client, &bound.name, true).await;
    assert_eq!(
        admitted(&client, &plain.name).await,
        Ok(()),
        "a namespace without bindings is not held up"
    );

    // While a recording exists anywhere, every namespace is guarded (the log-everything profile
    // is on the nodes and only the webhook keeps pods from naming it).
    let recordings: Api<ProfileRecording> = Api::namespaced(client.clone(), &plain.name);
    recordings
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"apiVersion": "profiles.phylax.dev/v1alpha1", "kind": "ProfileRecording",
                "metadata": {"name": "trace"},
                "spec": {"kind": "SeccompProfile", "recorder": "logs", "podSelector": {"matchLabels": {"app": "x"}}}}))
            .expect("recording"),
        )
        .await
        .expect("create recording");
    wait_guarded(&client, &other.name, true).await;
    wait_guarded(&client, &plain.name, true).await;

    recordings
        .delete("trace", &DeleteParams::default())
        .await
        .expect("delete recording");
    wait_guarded(&client, &other.name, false).await;
    assert!(
        admitted(&client, &bound.name).await.is_err(),
        "the bound namespace stays guarded"
    );

    bindings
        .delete("web", &DeleteParams::default())
        .await
        .expect("delete binding");
    wait_guarded(&client, &bound.name, false).await;
    configs
        .delete("phylax", &DeleteParams::default())
        .await
        .expect("delete configuration");
}
