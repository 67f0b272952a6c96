//! The webhook as users run it: two pods behind their Service, called by the API server through
//! kube-proxy with the certificate the operator issued (caBundle and Secret volume), nothing
//! rewritten by the test.

use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::PostParams;
use serde_json::json;

use crate::support::wait::wait_for;
use crate::{POD_TIMEOUT, client, finished, test_namespace};

const BAD: &str = "provider: aws-prod\npath: /prod/shop/config\n";

fn annotated(name: &str, annotation: &str) -> Pod {
    let mut p = serde_json::to_value(crate::busybox_pod(name, "echo admitted")).expect("json");
    p["metadata"]["annotations"] = json!({"secrets.phylax.dev/sync": annotation});
    serde_json::from_value(p).expect("pod")
}

#[tokio::test]
async fn a_pod_with_a_bad_sync_annotation_is_refused_through_the_service() {
    let client = client().await;
    let ns = test_namespace(&client, "webhook").await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);

    // failurePolicy is Ignore for this webhook: a refusal can only come from a webhook pod the
    // API server reached through the Service. The first call may precede the API server's
    // watch of the configuration, hence the wait.
    let refusal = wait_for("the webhook to refuse a bad annotation", POD_TIMEOUT, || async {
        match pods.create(&PostParams::default(), &annotated("bad", BAD)).await {
            Err(e) => Some(e.to_string()),
            Ok(_) => {
                let _ = pods.delete("bad", &Default::default()).await;
                None
            }
        }
    })
    .await;
    assert!(
        refusal.contains("denied the request") && refusal.contains("secretName is missing"),
        "{refusal}"
    );

    // A pod without the annotation is admitted and really runs.
    pods.create(
        &PostParams::default(),
        &crate::busybox_pod("plain", "echo admitted"),
    )
    .await
    .expect("a pod without the annotation is admitted");
    let (phase, log) = finished(&pods, "plain").await;
    assert_eq!(
        (phase.as_str(), log.trim()),
        ("Succeeded", "admitted"),
        "{}",
        crate::describe_pods(&client, &ns.name).await
    );
}
