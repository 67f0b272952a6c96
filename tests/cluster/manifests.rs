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
