//! The webhook role called by the real kube-apiserver over HTTPS (registered by
//! `clientConfig.url` on loopback, as the test control plane has no cluster network): bad
//! annotations refused at apply time, good ones admitted, dry runs without side effects, and the
//! serving certificate rotated (Secret-volume style `..data` swap) under continuous traffic.

#[path = "../support/mod.rs"]
mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;

use support::cluster::{TestNamespace, cluster};
use support::process::Phylax;
use support::tls::{Ca, SecretVolume};
use support::wait::wait_for;

mod flood;
mod node_writes;
mod operator_certs;

async fn start_webhook(tls: &SecretVolume, port: Option<u16>) -> (Phylax, u16) {
    let port = port.unwrap_or_else(support::free_port);
    let args = [
        format!("--listen-addr=127.0.0.1:{port}"),
        format!("--tls-dir={}", tls.path().display()),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    // The webhook reads ProfileBindings and profiles: it is ready once it has listed them.
    support::cluster::install_crds(&cluster().client().await).await;
    let mut p = Phylax::start("webhook", &args, Some(&cluster().kubeconfig));
    p.wait_ready(Duration::from_secs(20)).await;
    (p, port)
}

/// Registers the secret-sync validation for pods and deployments of `ns` only.
async fn register(client: &kube::Client, ns: &TestNamespace, port: u16, ca_bundle: &str) -> String {
    let name = format!("phylax-test-{}", support::random_suffix());
    register_as(client, ns, port, &name, Some(ca_bundle)).await;
    name
}

/// Registers a configuration named `name`, with a caBundle or (for the operator to fill) none.
async fn register_as(
    client: &kube::Client,
    ns: &TestNamespace,
    port: u16,
    name: &str,
    ca_bundle: Option<&str>,
) {
    let label = format!("phylax.dev/webhook-test-{}", support::random_suffix());
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .patch(
            &ns.name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {label.clone(): "on"}}})),
        )
        .await
        .expect("label namespace");
    let mut config: ValidatingWebhookConfiguration = serde_json::from_value(json!({
        "metadata": {"name": name},
        "webhooks": [{
            "name": "secret-sync.phylax.dev",
            "clientConfig": {
                "url": format!("https://127.0.0.1:{port}/validate/secret-sync"),
            },
            "rules": [
                {"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE", "UPDATE"], "resources": ["pods"]},
                {"apiGroups": ["apps"], "apiVersions": ["v1"], "operations": ["CREATE", "UPDATE"], "resources": ["deployments"]},
            ],
            "namespaceSelector": {"matchLabels": {label: "on"}},
            "failurePolicy": "Fail",
            "sideEffects": "None",
            "admissionReviewVersions": ["v1"],
            "timeoutSeconds": 5,
        }],
    }))
    .expect("webhook configuration");
    for webhook in config.webhooks.iter_mut().flatten() {
        webhook.client_config.ca_bundle = ca_bundle.map(|b| k8s_openapi::ByteString(b.as_bytes().to_vec()));
    }
    Api::<ValidatingWebhookConfiguration>::all(client.clone())
        .create(&PostParams::default(), &config)
        .await
        .expect("create webhook configuration");
}

fn pod(name: &str, annotation: Option<&str>) -> Pod {
    let mut p = json!({"metadata": {"name": name},
        "spec": {"containers": [{"name": "app", "image": "registry.example/app:1"}]}});
    if let Some(a) = annotation {
        p["metadata"]["annotations"] = json!({"secrets.phylax.dev/sync": a});
    }
    serde_json::from_value(p).expect("pod")
}

const GOOD: &str = "{provider: aws-prod, path: /prod/shop/config, secretName: shop-config}";
const BAD: &str = "provider: aws-prod\npath: /prod/shop/config\n";

/// Waits until the namespace can hold pods (its default ServiceAccount exists) and the API server
/// has picked up the configuration (it loads it from a watch): a bad annotation is then refused
/// by the webhook itself.
async fn wait_active(client: &kube::Client, ns: &TestNamespace, pods: &Api<Pod>) {
    let accounts: Api<k8s_openapi::api::core::v1::ServiceAccount> = Api::namespaced(client.clone(), &ns.name);
    wait_for(
        "the namespace's default ServiceAccount",
        Duration::from_secs(30),
        || async { accounts.get_opt("default").await.ok().flatten().map(|_| ()) },
    )
    .await;
    let dry = PostParams {
        dry_run: true,
        ..Default::default()
    };
    wait_for(
        "the API server to call the webhook",
        Duration::from_secs(30),
        || async {
            match pods.create(&dry, &pod("probe", Some(BAD))).await {
                Err(e) if e.to_string().contains("secretName is missing") => Some(()),
                _ => None,
            }
        },
    )
    .await;
}

#[tokio::test]
async fn the_api_server_refuses_bad_annotations_and_admits_good_ones() {
    let cluster = cluster();
    let client = cluster.client().await;
    let ns = TestNamespace::create(cluster, "webhook").await;
    let ca = Ca::new("webhook-ca");
    let tls = SecretVolume::new(ca.serving());
    let (webhook, port) = start_webhook(&tls, None).await;
    let config = register(&client, &ns, port, &ca.pem()).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    wait_active(&client, &ns, &pods).await;

    let err = pods
        .create(&PostParams::default(), &pod("bad", Some(BAD)))
        .await
        .expect_err("a bad annotation is refused");
    let text = err.to_string();
    assert!(
        text.contains("denied the request") && text.contains("secretName is missing"),
        "{text}"
    );

    pods.create(&PostParams::default(), &pod("good", Some(GOOD)))
        .await
        .expect("a good annotation is admitted");
    pods.create(&PostParams::default(), &pod("plain", None))
        .await
        .expect("a pod without the annotation is admitted");

    // A dry run is reviewed and leaves nothing behind.
    let dry = PostParams {
        dry_run: true,
        ..Default::default()
    };
    pods.create(&dry, &pod("dry", Some(GOOD)))
        .await
        .expect("dry run admitted");
    assert!(
        pods.get_opt("dry").await.expect("get").is_none(),
        "a dry run stores nothing"
    );

    // Workload templates are checked at apply time too.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    let deployment: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "shop"},
        "spec": {"selector": {"matchLabels": {"app": "shop"}},
                 "template": {"metadata": {"labels": {"app": "shop"},
                                           "annotations": {"secrets.phylax.dev/sync": "[]"}},
                              "spec": {"containers": [{"name": "app", "image": "registry.example/app:1"}]}}}
    }))
    .expect("deployment");
    let err = deployments
        .create(&PostParams::default(), &deployment)
        .await
        .expect_err("a bad template annotation is refused");
    assert!(err.to_string().contains("pod template:"), "{err}");

    let metrics = webhook.admin_get("/metrics").await.expect("metrics").1;
    assert!(
        metrics.contains("phylax_webhook_reviews_total{webhook=\"secret-sync\",result=\"denied\"}"),
        "{metrics}"
    );
    Api::<ValidatingWebhookConfiguration>::all(client)
        .delete(&config, &DeleteParams::default())
        .await
        .expect("delete configuration");
}

/// A pod admitted before the webhook was registered (or before Phylax was installed) with a
/// malformed annotation must stay manageable: updates that leave the annotation as it is (a label,
/// a finalizer removed) are admitted with a warning; changing it to another bad value is refused.
#[tokio::test]
async fn updates_that_keep_a_malformed_annotation_are_not_blocked() {
    let cluster = cluster();
    let client = cluster.client().await;
    let ns = TestNamespace::create(cluster, "webhook-upd").await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let accounts: Api<k8s_openapi::api::core::v1::ServiceAccount> = Api::namespaced(client.clone(), &ns.name);
    wait_for("the default ServiceAccount", Duration::from_secs(30), || async {
        accounts.get_opt("default").await.ok().flatten().map(|_| ())
    })
    .await;
    wait_for("the old pod to be created", Duration::from_secs(30), || async {
        pods.create(&PostParams::default(), &pod("old", Some(BAD)))
            .await
            .ok()
            .map(|_| ())
    })
    .await;

    let ca = Ca::new("webhook-ca");
    let tls = SecretVolume::new(ca.serving());
    let (_webhook, port) = start_webhook(&tls, None).await;
    let config = register(&client, &ns, port, &ca.pem()).await;
    wait_active(&client, &ns, &pods).await;

    let relabelled = pods
        .patch(
            "old",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"tier": "web"}}})),
        )
        .await
        .expect("an update that keeps the annotation is admitted");
    assert_eq!(
        relabelled
            .metadata
            .labels
            .unwrap_or_default()
            .get("tier")
            .map(String::as_str),
        Some("web")
    );
    let err = pods
        .patch(
            "old",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"metadata": {"annotations": {"secrets.phylax.dev/sync": "provider: other"}}}),
            ),
        )
        .await
        .expect_err("changing it to another malformed value is refused");
    assert!(
        err.to_string().contains("denied the request") && err.to_string().contains("is missing"),
        "{err}"
    );
    Api::<ValidatingWebhookConfiguration>::all(client)
        .delete(&config, &DeleteParams::default())
        .await
        .expect("delete configuration");
}

#[tokio::test]
async fn a_rotated_certificate_is_served_without_restart_and_no_request_fails() {
    let cluster = cluster();
    let client = cluster.client().await;
    let ns = TestNamespace::create(cluster, "rotate").await;
    let (old_ca, new_ca) = (Ca::new("webhook-ca-1"), Ca::new("webhook-ca-2"));
    let mut tls = SecretVolume::new(old_ca.serving());
    let (webhook, port) = start_webhook(&tls, None).await;
    // The overlap period: the API server trusts both CAs while the serving certificate changes.
    let bundle = format!("{}{}", old_ca.pem(), new_ca.pem());
    let config = register(&client, &ns, port, &bundle).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    wait_active(&client, &ns, &pods).await;

    let traffic = Traffic::start(&pods, 4);
    traffic.wait_for_more(50, "traffic before the rotation").await;

    tls.update(new_ca.serving());
    // The new certificate is what a fresh TLS client now gets: one that trusts only the new CA
    // connects.
    wait_for(
        "the new certificate to be served",
        Duration::from_secs(30),
        || async { handshake(port, &new_ca.pem()).await.then_some(()) },
    )
    .await;
    traffic.wait_for_more(50, "traffic after the rotation").await;
    assert_eq!(
        traffic.stop().await,
        0,
        "no admission request failed during the rotation"
    );
    assert!(
        !handshake(port, &old_ca.pem()).await,
        "the old certificate is no longer served"
    );
    assert!(
        webhook.has_log("serving certificate reloaded"),
        "{:?}",
        webhook.logs()
    );
    Api::<ValidatingWebhookConfiguration>::all(client)
        .delete(&config, &DeleteParams::default())
        .await
        .expect("delete configuration");
}

/// Dry-run Pod creations with a good annotation from `workers` concurrent writers, counting
/// admissions and failures, until stopped.
struct Traffic {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Traffic {
    fn start(pods: &Api<Pod>, workers: usize) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let tasks = (0..workers)
            .map(|worker| {
                let (pods, stop, ok, failed) = (pods.clone(), stop.clone(), ok.clone(), failed.clone());
                tokio::spawn(async move {
                    let dry = PostParams {
                        dry_run: true,
                        ..Default::default()
                    };
                    let mut i = 0;
                    while !stop.load(Ordering::Relaxed) {
                        i += 1;
                        match pods
                            .create(&dry, &pod(&format!("w{worker}-{i}"), Some(GOOD)))
                            .await
                        {
                            Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                            Err(e) => {
                                eprintln!("admission failed: {e}");
                                failed.fetch_add(1, Ordering::Relaxed)
                            }
                        };
                    }
                })
            })
            .collect();
        Traffic {
            stop,
            ok,
            failed,
            tasks,
        }
    }

    /// Waits until `n` more requests than now have been admitted.
    async fn wait_for_more(&self, n: usize, what: &str) {
        let target = self.ok.load(Ordering::Relaxed) + n;
        wait_for(what, Duration::from_secs(30), || async {
            (self.ok.load(Ordering::Relaxed) >= target).then_some(())
        })
        .await;
    }

    /// Stops the writers; returns how many requests failed.
    async fn stop(self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.expect("traffic task");
        }
        self.failed.load(Ordering::Relaxed)
    }
}

/// Whether a TLS client trusting only `ca_pem` completes a handshake with the webhook.
async fn handshake(port: u16, ca_pem: &str) -> bool {
    let config = support::tls::client_config(ca_pem);
    let Ok(tcp) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
        return false;
    };
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").expect("server name");
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .is_ok()
}
