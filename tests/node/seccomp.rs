//! A SeccompProfile installed by the node-agent pod into the kubelet's seccomp directory, bound
//! by a ProfileBinding to busybox pods, and enforced by runc: the bound pod gets the profile's
//! errno on the denied call, an unbound pod's call succeeds.

use k8s_openapi::api::core::v1::Pod;
use kube::api::{DynamicObject, Patch, PatchParams, PostParams};
use kube::discovery::ApiResource;
use kube::{Api, Client};
use serde_json::{Value, json};

use crate::support::real_node::BUSYBOX_IMAGE;
use crate::support::wait::wait_for;
use crate::{POD_TIMEOUT, busybox_pod, client, describe_pods, finished, test_namespace};

async fn apply(client: &Client, ns: Option<&str>, kind: &str, name: &str, spec: Value) {
    let ar = ApiResource {
        group: "profiles.phylax.dev".into(),
        version: "v1alpha1".into(),
        api_version: "profiles.phylax.dev/v1alpha1".into(),
        kind: kind.into(),
        plural: format!("{}s", kind.to_lowercase()),
    };
    let api: Api<DynamicObject> = match ns {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &ar),
        None => Api::all_with(client.clone(), &ar),
    };
    let obj = json!({"apiVersion": ar.api_version, "kind": kind, "metadata": {"name": name}, "spec": spec});
    api.patch(
        name,
        &PatchParams::apply("phylax-node-test").force(),
        &Patch::Apply(&obj),
    )
    .await
    .unwrap_or_else(|e| panic!("apply {kind} {name}: {e}"));
}

const SCRIPT: &str = "mkdir /tmp/x && echo MKDIR-OK || echo MKDIR-FAILED";

#[tokio::test]
#[ignore = "work in progress: the profile does not reach Installed within 90 s on the real node yet (issue 16)"]
async fn a_bound_profile_is_enforced_on_the_bound_pod_only() {
    let client = client().await;
    let ns = test_namespace(&client, "seccomp").await;
    let profile = format!("deny-mkdir-{}", crate::support::random_suffix());
    // ENOTSUP (95): not what mkdir fails with on its own, so the message proves the profile.
    apply(
        &client,
        None,
        "SeccompProfile",
        &profile,
        json!({"defaultAction": "SCMP_ACT_ALLOW",
               "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 95}]}),
    )
    .await;
    let profiles = Api::<DynamicObject>::all_with(
        client.clone(),
        &ApiResource {
            group: "profiles.phylax.dev".into(),
            version: "v1alpha1".into(),
            api_version: "profiles.phylax.dev/v1alpha1".into(),
            kind: "SeccompProfile".into(),
            plural: "seccompprofiles".into(),
        },
    );
    wait_for(
        "the node agent pod to install the profile",
        POD_TIMEOUT,
        || async {
            let p = profiles.get(&profile).await.ok()?;
            (p.data["status"]["state"] == "Installed").then_some(())
        },
    )
    .await;
    let file =
        std::path::Path::new(crate::support::real_node::SECCOMP_ROOT).join(format!("phylax/{profile}.json"));
    assert!(file.exists(), "{} is missing", file.display());

    apply(
        &client,
        Some(&ns.name),
        "ProfileBinding",
        "busybox",
        json!({"profileRef": {"kind": "SeccompProfile", "name": profile}, "image": BUSYBOX_IMAGE}),
    )
    .await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    // The operator opens the webhook to this namespace once it sees the binding: wait until a
    // dry run comes back with the profile set.
    let dry = PostParams {
        dry_run: true,
        ..Default::default()
    };
    wait_for("the webhook to bind the profile", POD_TIMEOUT, || async {
        let pod = pods.create(&dry, &busybox_pod("bound", SCRIPT)).await.ok()?;
        let sc = pod.spec?.containers[0]
            .security_context
            .clone()?
            .seccomp_profile?;
        (sc.localhost_profile? == format!("phylax/{profile}.json")).then_some(())
    })
    .await;
    pods.create(&PostParams::default(), &busybox_pod("bound", SCRIPT))
        .await
        .expect("create the bound pod");
    let (phase, log) = finished(&pods, "bound").await;
    assert!(
        log.contains("Not supported") && log.contains("MKDIR-FAILED"),
        "{phase}: {log}\n{}",
        describe_pods(&client, &ns.name).await
    );

    // The same image in another namespace has no binding: mkdir works.
    let other = test_namespace(&client, "unbound").await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &other.name);
    pods.create(&PostParams::default(), &busybox_pod("unbound", SCRIPT))
        .await
        .expect("create the unbound pod");
    let (phase, log) = finished(&pods, "unbound").await;
    assert_eq!((phase.as_str(), log.trim()), ("Succeeded", "MKDIR-OK"));
}
