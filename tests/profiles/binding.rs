//! The webhook binding profiles to new pods, called by the real API server: a pod is refused
//! while its bound profile is not installed everywhere and admitted with it once it is;
//! privileged pods are left alone; recorded pods get the logging profile.

use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use k8s_openapi::api::core::v1::Namespace;
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;

use super::support::cluster::TestNamespace;
use super::support::tls::{Ca, SecretVolume};
use super::support::wait::wait_for;
use super::*;
use phylax::api::profiles::{BOUND_ANNOTATION, RECORDING_ANNOTATION};

/// The webhook role serving on loopback, registered (by URL) for pods in `ns` only.
pub struct Webhook {
    pub process: Phylax,
    config: String,
    _tls: SecretVolume,
}

impl Webhook {
    pub async fn start(client: &Client, ns: &TestNamespace) -> Webhook {
        let ca = Ca::new("profiles-webhook-ca");
        let tls = SecretVolume::new(ca.serving());
        let port = super::support::free_port();
        let args = [
            format!("--listen-addr=127.0.0.1:{port}"),
            format!("--tls-dir={}", tls.path().display()),
            "--namespace=default".to_owned(),
        ];
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut process = Phylax::start("webhook", &args, Some(&cluster().kubeconfig));
        process.wait_ready(TIMEOUT).await;

        let label = format!("phylax.dev/profiles-test-{}", super::support::random_suffix());
        Api::<Namespace>::all(client.clone())
            .patch(
                &ns.name,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"labels": {label.clone(): "on"}}})),
            )
            .await
            .expect("label namespace");
        let config = format!("phylax-profiles-test-{}", super::support::random_suffix());
        // The object selector the shipped manifests give the profile webhook (none, today): a
        // test of the bypass a pod label would open must use what users install.
        let rendered = phylax::deploy::manifests(&phylax::deploy::ManifestArgs {
            image: "phylax:test".into(),
            ..Default::default()
        })
        .expect("render manifests");
        let object_selector = rendered
            .iter()
            .find(|o| o["kind"] == "MutatingWebhookConfiguration")
            .and_then(|c| c["webhooks"][0].get("objectSelector").cloned());
        let webhook: MutatingWebhookConfiguration = serde_json::from_value(json!({
            "metadata": {"name": config},
            "webhooks": [{
                "name": "profiles.phylax.dev",
                "clientConfig": {"url": format!("https://127.0.0.1:{port}/mutate/profiles"),
                                 "caBundle": k8s_openapi::ByteString(ca.pem().into_bytes())},
                "rules": rules_of("profiles"),
                "namespaceSelector": {"matchLabels": {label.clone(): "on"}},
                "objectSelector": object_selector,
                "failurePolicy": "Fail",
                "sideEffects": "None",
                "reinvocationPolicy": "IfNeeded",
                "admissionReviewVersions": ["v1"],
                "timeoutSeconds": 5,
            }],
        }))
        .expect("configuration");
        Api::<MutatingWebhookConfiguration>::all(client.clone())
            .create(&PostParams::default(), &webhook)
            .await
            .expect("register the webhook");
        // The check that pod updates do not claim a recording, as shipped (fail open).
        let claims: ValidatingWebhookConfiguration = serde_json::from_value(json!({
            "metadata": {"name": config},
            "webhooks": [{
                "name": "recording-claims.phylax.dev",
                "clientConfig": {"url": format!("https://127.0.0.1:{port}/validate/recording-claims"),
                                 "caBundle": k8s_openapi::ByteString(ca.pem().into_bytes())},
                "rules": rules_of("recording-claims"),
                "namespaceSelector": {"matchLabels": {label: "on"}},
                "failurePolicy": "Ignore",
                "sideEffects": "None",
                "admissionReviewVersions": ["v1"],
                "timeoutSeconds": 5,
            }],
        }))
        .expect("configuration");
        Api::<ValidatingWebhookConfiguration>::all(client.clone())
            .create(&PostParams::default(), &claims)
            .await
            .expect("register the validating webhook");
        Webhook {
            process,
            config,
            _tls: tls,
        }
    }

    pub async fn stop(mut self, client: &Client) {
        let _ = Api::<MutatingWebhookConfiguration>::all(client.clone())
            .delete(&self.config, &DeleteParams::default())
            .await;
        let _ = Api::<ValidatingWebhookConfiguration>::all(client.clone())
            .delete(&self.config, &DeleteParams::default())
            .await;
        self.process.signal(libc::SIGTERM);
        let _ = self.process.wait_exit(TIMEOUT).await;
    }
}

/// A shipped webhook's rules, as the manifests render them.
fn rules_of(name: &str) -> Value {
    let spec = phylax::api::webhooks::WEBHOOKS
        .iter()
        .find(|w| w.name == name)
        .expect("a shipped webhook");
    spec.rules
        .iter()
        .map(|r| {
            json!({"apiGroups": r.groups, "apiVersions": r.versions,
                   "operations": r.operations, "resources": r.resources})
        })
        .collect()
}

pub async fn apply_namespaced(client: &Client, ns: &str, kind: &str, name: &str, spec: Value) {
    let ar = kube::api::ApiResource {
        group: "profiles.phylax.dev".into(),
        version: "v1alpha1".into(),
        api_version: "profiles.phylax.dev/v1alpha1".into(),
        kind: kind.into(),
        plural: format!("{}s", kind.to_lowercase()),
    };
    let obj = json!({"apiVersion": "profiles.phylax.dev/v1alpha1", "kind": kind,
        "metadata": {"name": name, "namespace": ns}, "spec": spec});
    Api::<DynamicObject>::namespaced_with(client.clone(), ns, &ar)
        .patch(
            name,
            &PatchParams::apply("phylax-test").force(),
            &Patch::Apply(&obj),
        )
        .await
        .unwrap_or_else(|e| panic!("apply {kind} {name}: {e}"));
}

/// Adds an ephemeral container through the subresource (the EphemeralContainers object of this
/// 1.20 API server) and returns it as stored, or the API server's refusal.
async fn add_ephemeral_container(c: &Client, pod: &Pod, image: &str) -> Result<Value, String> {
    let (ns, name) = (pod.namespace().unwrap_or_default(), pod.name_any());
    let url = format!("/api/v1/namespaces/{ns}/pods/{name}/ephemeralcontainers");
    let body = json!({"apiVersion": "v1", "kind": "EphemeralContainers",
        "metadata": {"name": name, "namespace": ns},
        "ephemeralContainers": [{"name": "debug", "image": image, "stdin": true, "tty": true,
                                 "terminationMessagePolicy": "File"}]});
    let request = http::Request::put(url)
        .header("content-type", "application/json")
        .body(serde_json::to_vec(&body).expect("body"))
        .expect("request");
    match c.request::<Value>(request).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) => return Err(s.message),
        Err(e) => panic!("add an ephemeral container: {e}"),
    }
    let stored = Api::<Pod>::namespaced(c.clone(), &ns)
        .get(&name)
        .await
        .expect("get the pod");
    let added = &stored
        .spec
        .expect("spec")
        .ephemeral_containers
        .expect("ephemeral containers")[0];
    Ok(serde_json::to_value(added).expect("json"))
}

fn seccomp_of(pod: &Pod, container: usize) -> Option<String> {
    pod.spec.as_ref()?.containers[container]
        .security_context
        .as_ref()?
        .seccomp_profile
        .as_ref()?
        .localhost_profile
        .clone()
}

#[tokio::test]
async fn bindings_apply_installed_profiles_to_new_pods_and_refuse_the_rest() {
    let _serial = serial().await;
    let s = Setup::start("none").await;
    let c = &s.client;
    let ns = TestNamespace::create(cluster(), "binding").await;
    let webhook = Webhook::start(c, &ns).await;

    apply_namespaced(
        c,
        &ns.name,
        "ProfileBinding",
        "web",
        json!({
        "profileRef": {"kind": "SeccompProfile", "name": "web-bound"},
        "image": "registry.local/web:*"}),
    )
    .await;
    let web_pod = |name: &str| {
        json!({"metadata": {"name": name, "labels": {"app": "web"}}, "spec": {"containers": [
        {"name": "web", "image": "registry.local/web:2.1"},
        {"name": "sidecar", "image": "envoy:1.30"}]}})
    };

    // Not there yet: refused, with what to wait for. (The first tries may meet a webhook the API
    // server has not loaded yet; wait for the refusal.)
    let refusal = wait_for("the webhook to refuse the pod", TIMEOUT, || async {
        create_pod(c, &ns.name, web_pod("early")).await.err()
    })
    .await;
    assert!(
        refusal.contains("ProfileBinding web") && refusal.contains("SeccompProfile web-bound does not exist"),
        "{refusal}"
    );

    // Created but failing on the nodes: still refused.
    apply_profile(c, "web-bound", json!({"defaultAction": "SCMP_ACT_NOPE"})).await;
    wait_state(c, "web-bound", "Error").await;
    let refusal = wait_for("the webhook to see the Error", TIMEOUT, || async {
        create_pod(c, &ns.name, web_pod("erroring"))
            .await
            .err()
            .filter(|m| m.contains("is Error"))
    })
    .await;
    assert!(
        refusal.contains("kubectl get seccompprofile web-bound"),
        "{refusal}"
    );

    // Installed everywhere: admitted with the profile on the matching container only.
    apply_profile(
        c,
        "web-bound",
        json!({"defaultAction": "SCMP_ACT_ERRNO",
        "syscalls": [{"names": ["read", "write"], "action": "SCMP_ACT_ALLOW"}]}),
    )
    .await;
    wait_state(c, "web-bound", "Installed").await;
    let pod = wait_for("the pod to be admitted", TIMEOUT, || async {
        create_pod(c, &ns.name, web_pod("bound")).await.ok()
    })
    .await;
    assert_eq!(seccomp_of(&pod, 0).as_deref(), Some("phylax/web-bound.json"));
    assert_eq!(
        pod.spec.as_ref().unwrap().containers[0]
            .security_context
            .as_ref()
            .unwrap()
            .seccomp_profile
            .as_ref()
            .unwrap()
            .type_,
        "Localhost"
    );
    assert_eq!(seccomp_of(&pod, 1), None);
    assert_eq!(
        pod.annotations().get(BOUND_ANNOTATION).map(String::as_str),
        Some("web=SeccompProfile/web-bound")
    );

    // Attack: the pod's author labels it to opt out of the (fail-closed) profile webhook.
    let opted_out = create_pod(
        c,
        &ns.name,
        json!({"metadata": {"name": "opted-out", "labels": {"app": "web", "phylax.dev/webhooks": "disabled"}},
        "spec": {"containers": [{"name": "web", "image": "registry.local/web:2.1"}]}}),
    )
    .await
    .expect("admitted");
    assert_eq!(
        seccomp_of(&opted_out, 0).as_deref(),
        Some("phylax/web-bound.json")
    );

    // Attack: a pod names Phylax's log-everything recording profile itself.
    let refusal = create_pod(
        c,
        &ns.name,
        json!({"metadata": {"name": "log-all"}, "spec": {"containers": [{"name": "c", "image": "busybox",
        "securityContext": {"seccompProfile": {"type": "Localhost", "localhostProfile": "./phylax-recording.json"}}}]}}),
    )
    .await
    .expect_err("a pod naming the recording profile was admitted");
    assert!(refusal.contains("recording profile"), "{refusal}");
    // The same through the deprecated annotation, which this API server turns into the field.
    let refusal = create_pod(
        c,
        &ns.name,
        json!({"metadata": {"name": "log-all-annotated", "annotations":
            {"seccomp.security.alpha.kubernetes.io/pod": "localhost/phylax-recording.json"}},
        "spec": {"containers": [{"name": "c", "image": "busybox"}]}}),
    )
    .await
    .expect_err("a pod naming the recording profile by annotation was admitted");
    assert!(refusal.contains("recording profile"), "{refusal}");

    // Attack: a pod claims a recording, so the node agent would write a profile from its syscalls.
    let refusal = create_pod(
        c,
        &ns.name,
        json!({"metadata": {"name": "claims", "annotations": {RECORDING_ANNOTATION: "rec"}},
        "spec": {"containers": [{"name": "c", "image": "busybox"}]}}),
    )
    .await
    .expect_err("a pod claiming a recording was admitted");
    assert!(refusal.contains("set by Phylax only"), "{refusal}");

    // Attack: a privileged container beside the bound one no longer exempts the pod. The
    // privileged container itself gets nothing (the runtime applies no profile to it).
    let privileged = create_pod(
        c,
        &ns.name,
        json!({"metadata": {"name": "priv"}, "spec": {"containers": [
        {"name": "root", "image": "busybox", "securityContext": {"privileged": true}},
        {"name": "web", "image": "registry.local/web:2.1"}]}}),
    )
    .await
    .expect("privileged pod admitted");
    assert_eq!(seccomp_of(&privileged, 0), None);
    assert_eq!(
        seccomp_of(&privileged, 1).as_deref(),
        Some("phylax/web-bound.json")
    );

    // Attack: the bound image under another spelling of the same reference.
    apply_namespaced(
        c,
        &ns.name,
        "ProfileBinding",
        "nginx",
        json!({"profileRef": {"kind": "SeccompProfile", "name": "web-bound"}, "image": "nginx:1.25"}),
    )
    .await;
    let spelled = wait_for("the nginx binding to apply", TIMEOUT, || async {
        let p = create_pod(
            c,
            &ns.name,
            json!({"metadata": {"name": format!("spelled-{}", super::support::random_suffix())},
                   "spec": {"containers": [{"name": "c", "image": "index.docker.io/library/nginx:1.25"}]}}),
        )
        .await
        .ok()?;
        seccomp_of(&p, 0).is_some().then_some(p)
    })
    .await;
    assert_eq!(seccomp_of(&spelled, 0).as_deref(), Some("phylax/web-bound.json"));

    // Attack: a bound image run as an ephemeral container in a running pod (`kubectl debug`).
    // This 1.20 API server gives ephemeral containers no securityContext, so the webhook cannot
    // bind it and refuses it; an image no binding covers is added.
    let debugged = create_pod(
        c,
        &ns.name,
        json!({"metadata": {"name": "debugged"}, "spec": {"containers": [{"name": "c", "image": "busybox"}]}}),
    )
    .await
    .expect("admitted");
    let refusal = add_ephemeral_container(c, &debugged, "registry.local/web:2.1")
        .await
        .expect_err("an unbindable ephemeral container was admitted");
    assert!(
        refusal.contains("ProfileBinding web") && refusal.contains("ephemeral container"),
        "{refusal}"
    );
    let added = add_ephemeral_container(c, &debugged, "busybox")
        .await
        .expect("an unbound ephemeral container is admitted");
    assert_eq!(added["image"], "busybox");

    // Attack: an update adds the recording annotation to a running pod.
    let refusal = Api::<Pod>::namespaced(c.clone(), &ns.name)
        .patch(
            "debugged",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {RECORDING_ANNOTATION: "rec"}}})),
        )
        .await
        .expect_err("an update claiming a recording was admitted");
    assert!(refusal.to_string().contains("set by Phylax only"), "{refusal}");

    // A recording takes the containers it selects that no binding covers: the logging profile,
    // and the mark for the recorder. The bound container keeps its binding's profile.
    apply_namespaced(
        c,
        &ns.name,
        "ProfileRecording",
        "rec",
        json!({
        "kind": "SeccompProfile", "recorder": "logs", "podSelector": {"matchLabels": {"app": "web"}}}),
    )
    .await;
    let recorded = wait_for("the recording to apply", TIMEOUT, || async {
        let p = create_pod(
            c,
            &ns.name,
            web_pod(&format!("rec-{}", super::support::random_suffix())),
        )
        .await
        .ok()?;
        p.annotations().contains_key(RECORDING_ANNOTATION).then_some(p)
    })
    .await;
    assert_eq!(seccomp_of(&recorded, 0).as_deref(), Some("phylax/web-bound.json"));
    assert_eq!(seccomp_of(&recorded, 1).as_deref(), Some("phylax-recording.json"));
    assert_eq!(recorded.annotations()[RECORDING_ANNOTATION], "rec");
    // A recorder Phylax does not have is refused by the API server, by name.
    let ar = kube::api::ApiResource::erase::<phylax::api::profiles::ProfileRecording>(&());
    let bpf = serde_json::from_value(
        json!({"apiVersion": "profiles.phylax.dev/v1alpha1", "kind": "ProfileRecording",
        "metadata": {"name": "bpf", "namespace": ns.name},
        "spec": {"kind": "SeccompProfile", "recorder": "bpf", "podSelector": {}}}),
    )
    .expect("object");
    let err = Api::<DynamicObject>::namespaced_with(c.clone(), &ns.name, &ar)
        .create(&PostParams::default(), &bpf)
        .await
        .expect_err("recorder bpf is refused");
    assert!(
        err.to_string().contains("spec.recorder") && err.to_string().contains("logs"),
        "{err}"
    );
    // While a recording exists, the agents keep the logging profile beside the profiles'
    // directory; once none does, it leaves every node (no pod can name it any more).
    for node in &s.nodes {
        let path = node.root.path().join("seccomp/phylax-recording.json");
        let file = wait_for("the logging profile on the node", TIMEOUT, || async {
            std::fs::read_to_string(&path).ok()
        })
        .await;
        assert!(file.contains("SCMP_ACT_LOG"));
    }
    Api::<DynamicObject>::namespaced_with(c.clone(), &ns.name, &ar)
        .delete("rec", &Default::default())
        .await
        .expect("delete the recording");
    for node in &s.nodes {
        let path = node.root.path().join("seccomp/phylax-recording.json");
        wait_for("the logging profile to leave the node", TIMEOUT, || async {
            (!path.exists()).then_some(())
        })
        .await;
    }

    webhook.stop(c).await;
    s.assert_no_panic();
    s.finish().await;
}
