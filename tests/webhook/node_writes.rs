//! Node agents share one ServiceAccount, so RBAC lets any node write every other node's reports.
//! The `node-writes` webhook ties each agent's writes to the node its pod runs on, read from its
//! pod-bound token: shown with real tokens from the TokenRequest API, as an agent pod on one node
//! uses them against the real API server.

use std::time::Duration;

use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::config::{AuthInfo, KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use phylax::api::profiles::{ProfileKind, ProfileNodeStatus, node_status_name};
use serde_json::json;

use crate::support::cluster::{TestNamespace, cluster, install_crds};
use crate::support::process::Phylax;
use crate::support::tls::{Ca, SecretVolume};
use crate::support::wait::wait_for;

const TIMEOUT: Duration = Duration::from_secs(30);

/// A token for the agents' ServiceAccount, bound to `pod` (name, uid) when given.
async fn token(client: &Client, ns: &str, pod: Option<&Pod>) -> String {
    let mut spec = json!({"audiences": [], "expirationSeconds": 600});
    if let Some(p) = pod {
        spec["boundObjectRef"] = json!({"apiVersion": "v1", "kind": "Pod",
            "name": p.metadata.name, "uid": p.metadata.uid});
    }
    let request: k8s_openapi::api::authentication::v1::TokenRequest =
        serde_json::from_value(json!({"spec": spec})).expect("token request");
    let answer = Api::<ServiceAccount>::namespaced(client.clone(), ns)
        .create_token_request("phylax-node-agent", &PostParams::default(), &request)
        .await
        .expect("TokenRequest");
    answer.status.expect("token").token
}

/// A client of the test API server that authenticates with `token` only.
async fn client_with(token: String) -> Client {
    let kc = Kubeconfig::read_from(&cluster().kubeconfig).expect("kubeconfig");
    let mut config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .expect("config");
    config.auth_info = AuthInfo {
        token: Some(token.into()),
        ..Default::default()
    };
    Client::try_from(config).expect("client")
}

fn report(node: &str, label: &str) -> ProfileNodeStatus {
    serde_json::from_value(json!({"apiVersion": "profiles.phylax.dev/v1alpha1", "kind": "ProfileNodeStatus",
        "metadata": {"name": node_status_name(ProfileKind::SeccompProfile, "web", node), "labels": {label: "on"}},
        "spec": {"profileKind": "SeccompProfile", "profileName": "web", "nodeName": node}}))
    .expect("report")
}

#[tokio::test]
async fn a_node_agent_writes_only_its_own_nodes_reports() {
    let cluster = cluster();
    let admin = cluster.client().await;
    install_crds(&admin).await;
    let ns = TestNamespace::create(cluster, "agents").await;
    let suffix = crate::support::random_suffix();
    let (node_a, node_b) = (format!("node-a-{suffix}"), format!("node-b-{suffix}"));

    // The agents' identity and RBAC, as the manifests give them (reports only, for this test).
    Api::<ServiceAccount>::namespaced(admin.clone(), &ns.name)
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "phylax-node-agent"}})).expect("sa"),
        )
        .await
        .expect("service account");
    let rbac_name = format!("phylax-test-agents-{suffix}");
    Api::<ClusterRole>::all(admin.clone())
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": rbac_name}, "rules": [
                {"apiGroups": ["profiles.phylax.dev"], "resources": ["profilenodestatuses"],
                 "verbs": ["get", "create", "patch", "delete"]}]}))
            .expect("role"),
        )
        .await
        .expect("cluster role");
    Api::<ClusterRoleBinding>::all(admin.clone())
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": rbac_name},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": rbac_name},
                "subjects": [{"kind": "ServiceAccount", "name": "phylax-node-agent", "namespace": ns.name}]}))
            .expect("binding"),
        )
        .await
        .expect("cluster role binding");
    // One agent pod per node (no kubelet runs them: the API objects are what the webhook reads).
    let pods: Api<Pod> = Api::namespaced(admin.clone(), &ns.name);
    let mut agent_pods = Vec::new();
    for (i, node) in [&node_a, &node_b].into_iter().enumerate() {
        let pod = serde_json::from_value(json!({"metadata": {"name": format!("agent-{i}"),
            "labels": {"app.kubernetes.io/name": "phylax", "app.kubernetes.io/component": "node-agent"}},
            "spec": {"nodeName": node, "serviceAccountName": "phylax-node-agent",
                     "automountServiceAccountToken": false,
                     "containers": [{"name": "agent", "image": "phylax:test"}]}}))
        .expect("pod");
        agent_pods.push(
            pods.create(&PostParams::default(), &pod)
                .await
                .expect("agent pod"),
        );
    }

    let ca = Ca::new("node-writes-ca");
    let tls = SecretVolume::new(ca.serving());
    let port = crate::support::free_port();
    let args = [
        format!("--listen-addr=127.0.0.1:{port}"),
        format!("--tls-dir={}", tls.path().display()),
        format!("--node-agent-service-account={}:phylax-node-agent", ns.name),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut webhook = Phylax::start("webhook", &args, Some(&cluster.kubeconfig));
    webhook.wait_ready(TIMEOUT).await;
    // Registered for this test's reports only (by label), fail closed as in the manifests.
    let label = format!("phylax.dev/node-writes-test-{suffix}");
    let config: ValidatingWebhookConfiguration = serde_json::from_value(json!({
        "metadata": {"name": rbac_name},
        "webhooks": [{"name": "node-writes.phylax.dev",
            "clientConfig": {"url": format!("https://127.0.0.1:{port}/validate/node-writes"),
                             "caBundle": k8s_openapi::ByteString(ca.pem().into_bytes())},
            "rules": [{"apiGroups": ["profiles.phylax.dev"], "apiVersions": ["v1alpha1"],
                       "operations": ["CREATE", "UPDATE", "DELETE"],
                       "resources": ["profilenodestatuses", "profilenodestatuses/status"]}],
            "objectSelector": {"matchLabels": {label.clone(): "on"}},
            "failurePolicy": "Fail", "sideEffects": "None", "admissionReviewVersions": ["v1"], "timeoutSeconds": 5}]}))
    .expect("configuration");
    let configs: Api<ValidatingWebhookConfiguration> = Api::all(admin.clone());
    configs
        .create(&PostParams::default(), &config)
        .await
        .expect("register");

    let agent_a: Api<ProfileNodeStatus> =
        Api::all(client_with(token(&admin, &ns.name, Some(&agent_pods[0])).await).await);
    // Its own node's report goes through once the API server calls the webhook and the webhook
    // knows the agent pods.
    let own = report(&node_a, &label);
    wait_for("agent A's report on its own node", TIMEOUT, || async {
        match agent_a.create(&PostParams::default(), &own).await {
            Ok(_) => Some(()),
            Err(kube::Error::Api(e)) if e.code == 409 => Some(()),
            Err(_) => None,
        }
    })
    .await;
    // Another node's report: refused, whether created or taken over.
    let err = agent_a
        .create(&PostParams::default(), &report(&node_b, &label))
        .await
        .expect_err("agent A wrote node B's report")
        .to_string();
    assert!(err.contains("can only be written by that node's agent"), "{err}");
    let theirs = report(&node_b, &label);
    let theirs_name = theirs.metadata.name.clone().expect("name");
    Api::<ProfileNodeStatus>::all(admin.clone())
        .create(&PostParams::default(), &theirs)
        .await
        .expect("admin writes node B's report");
    let err = agent_a
        .patch(
            &theirs_name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"nodeName": node_a}})),
        )
        .await
        .expect_err("agent A took over node B's report")
        .to_string();
    assert!(err.contains("node agent on"), "{err}");
    let err = agent_a
        .delete(&theirs_name, &DeleteParams::default())
        .await
        .expect_err("agent A deleted node B's report")
        .to_string();
    assert!(err.contains("can only be written by that node's agent"), "{err}");
    // A token not bound to a pod cannot be tied to a node.
    let unbound: Api<ProfileNodeStatus> = Api::all(client_with(token(&admin, &ns.name, None).await).await);
    let mut another = report(&node_a, &label);
    another.spec.profile_name = "db".into();
    another.metadata.name = Some(node_status_name(ProfileKind::SeccompProfile, "db", &node_a));
    let err = unbound
        .create(&PostParams::default(), &another)
        .await
        .expect_err("an unbound token wrote a report")
        .to_string();
    assert!(err.contains("not bound to a pod"), "{err}");

    configs
        .delete(&rbac_name, &DeleteParams::default())
        .await
        .expect("unregister");
    let all: Api<ProfileNodeStatus> = Api::all(admin.clone());
    for name in [own.metadata.name.clone().expect("name"), theirs_name] {
        let _ = all.delete(&name, &DeleteParams::default()).await;
    }
    let _ = Api::<ClusterRoleBinding>::all(admin.clone())
        .delete(&rbac_name, &DeleteParams::default())
        .await;
    let _ = Api::<ClusterRole>::all(admin)
        .delete(&rbac_name, &DeleteParams::default())
        .await;
}
