//! Everything `phylax crd` and `phylax manifests` print is accepted by a real API server.

use kube::api::{DynamicObject, PostParams};
use kube::core::GroupVersionKind;
use kube::discovery::{Scope, pinned_kind};
use kube::{Api, ResourceExt};

use crate::support::cluster::{TestNamespace, cluster};
use crate::support::process::{binary, run};

fn documents(out: &str) -> Vec<DynamicObject> {
    out.split("\n---\n")
        .skip(1) // the title comment
        .map(|d| serde_yaml::from_str(d).unwrap_or_else(|e| panic!("not a valid object ({e}):\n{d}")))
        .collect()
}

#[tokio::test]
async fn every_crd_and_manifest_object_is_accepted_by_the_api_server() {
    let cluster = cluster();
    let client = cluster.client().await;
    // The manifests create their namespace; a throw-away one stands in for it, created for real so
    // the namespaced objects can be checked (dry-run objects in a dry-run namespace would be refused).
    let ns = TestNamespace::create(cluster, "manifests").await;

    let (code, crds, err) = run(&binary(), &["crd"]);
    assert_eq!(code, 0, "{err}");
    let (code, manifests, err) = run(
        &binary(),
        &["manifests", "--namespace", &ns.name, "--image", "phylax:test"],
    );
    assert_eq!(code, 0, "{err}");

    let crd_docs = documents(&crds);
    let docs = documents(&manifests);
    assert!(
        docs.len() >= 10,
        "expected the full set of objects, got {}",
        docs.len()
    );
    let dry_run = PostParams {
        dry_run: true,
        field_manager: Some("phylax-test".into()),
    };
    let mut checked = 0;
    for obj in crd_docs.iter().chain(&docs) {
        let types = obj.types.as_ref().expect("apiVersion and kind");
        let gvk = GroupVersionKind::try_from(types).expect("gvk");
        if gvk.kind == "Namespace" {
            assert_eq!(obj.name_any(), ns.name);
            continue;
        }
        let (resource, caps) = pinned_kind(&client, &gvk)
            .await
            .unwrap_or_else(|e| panic!("the API server does not serve {gvk:?}: {e}"));
        let api: Api<DynamicObject> = match caps.scope {
            Scope::Cluster => Api::all_with(client.clone(), &resource),
            Scope::Namespaced => {
                assert_eq!(
                    obj.namespace().as_deref(),
                    Some(ns.name.as_str()),
                    "{} {}",
                    gvk.kind,
                    obj.name_any()
                );
                Api::namespaced_with(client.clone(), &ns.name, &resource)
            }
        };
        api.create(&dry_run, obj)
            .await
            .unwrap_or_else(|e| panic!("{} {} refused by the API server: {e}", gvk.kind, obj.name_any()));
        checked += 1;
    }
    assert_eq!(checked, crd_docs.len() + docs.len() - 1);
}

/// kind's KMS plugin static pod (with the swtpm host kind/up.sh fills in) is a valid Pod, and the
/// kubeadm patch applies to an API server pod with the paths it adds.
#[tokio::test]
async fn the_kind_static_pod_and_kubeadm_patch_are_valid() {
    let cluster = cluster();
    let client = cluster.client().await;
    let ns = TestNamespace::create(cluster, "kind").await;
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("kind");
    let text = std::fs::read_to_string(root.join("kms-plugin.yaml"))
        .expect("kind/kms-plugin.yaml")
        .replace("SWTPM_HOST", "172.18.0.1");
    let mut pod: k8s_openapi::api::core::v1::Pod = serde_yaml::from_str(&text).expect("a Pod");
    let args = pod.spec.as_ref().unwrap().containers[0].args.clone().unwrap();
    assert_eq!(
        args[0], "kms-plugin",
        "the image's entrypoint is phylax; the role comes first"
    );
    pod.metadata.namespace = Some(ns.name.clone());
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client.clone(), &ns.name);
    let dry_run = PostParams {
        dry_run: true,
        field_manager: Some("phylax-test".into()),
    };
    // The ServiceAccount admission plugin refuses pods until the namespace's default account exists.
    crate::support::wait::wait_for(
        "kind/kms-plugin.yaml accepted by the API server",
        std::time::Duration::from_secs(30),
        || async {
            match pods.create(&dry_run, &pod).await {
                Ok(_) => Some(()),
                Err(kube::Error::Api(s))
                    if s.message.contains("service account") || s.message.contains("serviceaccount") =>
                {
                    None
                }
                Err(e) => panic!("kind/kms-plugin.yaml refused by the API server: {e}"),
            }
        },
    )
    .await;

    // The patch, applied to the shape of a kubeadm API server pod, gives the flag and mounts.
    let patch: json_patch::Patch = serde_yaml::from_str(
        &std::fs::read_to_string(root.join("patches/kube-apiserver+json.yaml")).expect("patch"),
    )
    .expect("a JSON patch");
    let mut apiserver = serde_json::json!({"spec": {
        "containers": [{"name": "kube-apiserver", "command": ["kube-apiserver"], "volumeMounts": []}],
        "volumes": []}});
    json_patch::patch(&mut apiserver, &patch).expect("the patch applies");
    assert_eq!(
        apiserver["spec"]["containers"][0]["command"][1],
        "--encryption-provider-config=/etc/phylax/encryption.yaml"
    );
    assert_eq!(apiserver["spec"]["volumes"].as_array().unwrap().len(), 2);
    // And the EncryptionConfiguration names the socket the static pod listens on.
    let config = std::fs::read_to_string(root.join("encryption.yaml")).expect("encryption.yaml");
    let config: serde_json::Value = serde_yaml::from_str(&config).expect("yaml");
    let endpoint = config["resources"][0]["providers"][0]["kms"]["endpoint"]
        .as_str()
        .unwrap();
    assert!(
        args.iter().any(|a| a == &format!("--listen={endpoint}")),
        "{endpoint} vs {args:?}"
    );
}
