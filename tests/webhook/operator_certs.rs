//! TLS without cert-manager, end to end: the operator makes the CA and the serving certificate,
//! injects the caBundle, the webhook serves the certificate from the (kubelet-style) Secret
//! volume, and a CA rotation forced mid-traffic fails no admission request.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;

use crate::support::cluster::{TestNamespace, cluster};
use crate::support::process::Phylax;
use crate::support::wait::wait_for;
use crate::{SecretVolume, Traffic, handshake, register_as, start_webhook, wait_active};

fn pair(s: &Secret) -> Option<(String, String)> {
    let data = s.data.as_ref()?;
    let text = |k: &str| data.get(k).and_then(|b| String::from_utf8(b.0.clone()).ok());
    Some((text("tls.crt")?, text("tls.key")?))
}

fn bundle(s: &Secret) -> Option<String> {
    s.data
        .as_ref()?
        .get("ca.crt")
        .and_then(|b| String::from_utf8(b.0.clone()).ok())
}

#[tokio::test]
async fn operator_managed_certificates_serve_and_rotate_without_a_failed_request() {
    let cluster = cluster();
    let client = cluster.client().await;
    let ns = TestNamespace::create(cluster, "certs").await;
    // The operator fills in the caBundle of the configuration named `phylax`.
    let port = crate::support::free_port();
    register_as(&client, &ns, port, "phylax", None).await;

    let operator = Phylax::start(
        "operator",
        &[
            &format!("--namespace={}", ns.name),
            "--leader-elect=false",
            "--webhook-cert-extra-name=127.0.0.1",
            "--webhook-certs-resync=500ms",
        ],
        Some(&cluster.kubeconfig),
    );
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns.name);
    let tls = wait_for(
        "the operator's serving Secret",
        Duration::from_secs(30),
        || async { secrets.get_opt("phylax-webhook-tls").await.ok().flatten() },
    )
    .await;
    let first_bundle = bundle(&tls).expect("ca.crt");

    // The kubelet's part: the Secret mounted as a volume, updated when the Secret changes.
    let mut volume = SecretVolume::new(pair(&tls).expect("tls pair"));
    let (webhook, served_port) = start_webhook_on(&volume, port).await;
    assert_eq!(served_port, port);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    wait_active(&client, &ns, &pods).await;

    // Traffic, while the CA is made to look close to its expiry.
    let traffic = Traffic::start(&pods, 2);
    traffic.wait_for_more(20, "traffic before the rotation").await;
    let soon = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() + 120;
    secrets
        .patch(
            "phylax-webhook-ca",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"phylax.dev/not-after": soon.to_string()}}})),
        )
        .await
        .expect("age the CA");

    let rotated = wait_for(
        "the operator to rotate the CA",
        Duration::from_secs(30),
        || async {
            let s = secrets.get_opt("phylax-webhook-tls").await.ok().flatten()?;
            (bundle(&s)? != first_bundle).then_some(s)
        },
    )
    .await;
    let new_bundle = bundle(&rotated).expect("bundle");
    assert!(
        new_bundle.contains(first_bundle.trim()),
        "the old CA stays trusted during the overlap"
    );
    let configs: Api<ValidatingWebhookConfiguration> = Api::all(client.clone());
    wait_for(
        "the new bundle in the webhook configuration",
        Duration::from_secs(30),
        || async {
            let c = configs.get("phylax").await.ok()?;
            c.webhooks?
                .iter()
                .all(|w| {
                    w.client_config.ca_bundle.as_ref().map(|b| b.0.as_slice()) == Some(new_bundle.as_bytes())
                })
                .then_some(())
        },
    )
    .await;
    // The kubelet updates the volume; the webhook picks the new certificate up.
    volume.update(pair(&rotated).expect("rotated pair"));
    let new_ca = new_bundle.replace(first_bundle.trim(), "");
    wait_for(
        "the reissued certificate to be served",
        Duration::from_secs(30),
        || async { handshake(port, &new_ca).await.then_some(()) },
    )
    .await;
    traffic.wait_for_more(30, "traffic after the rotation").await;
    assert_eq!(traffic.stop().await, 0, "no admission request failed");
    assert!(
        operator.has_log("webhook certificates updated"),
        "{:?}",
        operator.logs()
    );
    assert!(
        webhook.has_log("serving certificate reloaded"),
        "{:?}",
        webhook.logs()
    );

    // A Secret of that name that Phylax did not create is never overwritten.
    let other = TestNamespace::create(cluster, "foreign").await;
    let foreign: Api<Secret> = Api::namespaced(client.clone(), &other.name);
    let mine: Secret = serde_json::from_value(json!({"metadata": {"name": "phylax-webhook-ca"},
        "stringData": {"ca.crt": "someone else's"}}))
    .expect("secret");
    foreign
        .create(&PostParams::default(), &mine)
        .await
        .expect("foreign secret");
    let settings = phylax::operator::webhook_ca::certs::Settings {
        ca_validity: Duration::from_secs(3600),
        cert_validity: Duration::from_secs(600),
        names: vec!["127.0.0.1".into()],
    };
    let err = phylax::operator::webhook_ca::reconcile(&client, &other.name, &settings)
        .await
        .expect_err("a foreign Secret is refused");
    assert!(err.to_string().contains("not created by Phylax"), "{err}");
    let still = foreign.get("phylax-webhook-ca").await.expect("get");
    assert_eq!(still.data.expect("data")["ca.crt"].0, b"someone else's");
    configs
        .delete("phylax", &DeleteParams::default())
        .await
        .expect("delete configuration");
}

async fn start_webhook_on(volume: &SecretVolume, port: u16) -> (Phylax, u16) {
    start_webhook(volume, Some(port)).await
}
