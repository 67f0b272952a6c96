//! AWS Secrets Manager (moto's real API): secrets reach the namespaces the SecretProvider allows
//! and no other, each namespace gets its own copy, keys are selected, non-JSON sources become one
//! key, a missing secret or an unreachable store is an event saying what to do, and a store that
//! comes back (a relay cut and restored) is retried without a new pod.

use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use phylax::operator::secret_sync::hash_key;
use serde_json::json;

use crate::doubles::Relay;
use crate::support::cluster::cluster;
use crate::support::moto::Moto;
use crate::support::random_suffix;
use crate::support::wait::wait_for;
use crate::*;

const PLANTED: &str = "planted-aws-value-5d1c2e";

async fn put(sm: &aws_sdk_secretsmanager::Client, name: &str, value: &str) {
    sm.create_secret()
        .name(name)
        .secret_string(value)
        .send()
        .await
        .unwrap_or_else(|e| panic!("CreateSecret {name}: {e:?}"));
}

#[tokio::test]
async fn aws_secrets_reach_only_the_namespaces_and_paths_the_provider_allows() {
    let _one = serial().await;
    let client = cluster().client().await;
    install_crds(&client).await;
    let moto = Moto::start().await;
    let sm = moto.secrets_manager();
    // The operator reaches moto through a relay the test can cut.
    let mut relay = Relay::start(moto.port).await;
    let shop = namespace(&client, "shop", &[("team", "shop")]).await;
    let bank = namespace(&client, "bank", &[("team", "shop")]).await;
    let other = namespace(&client, "other", &[]).await;
    let op_ns = namespace(&client, "op", &[]).await;
    put(
        &sm,
        "/shared/db",
        &json!({"DB_HOST": "db.internal", "DB_PASSWORD": PLANTED, "PORT": 5432}).to_string(),
    )
    .await;
    put(&sm, &format!("/prod/{}/token", shop.name), "plain-token-value").await;

    let provider = format!("aws-{}", random_suffix());
    apply_provider(
        &client,
        &provider,
        json!({"aws": {"region": "eu-west-1", "endpoint": relay.url()},
               "namespaces": {"selector": {"matchLabels": {"team": "shop"}}},
               "paths": ["/shared/*", "/prod/{namespace}/*"]}),
    )
    .await;
    let mut op = operator(&op_ns.name, &[], &Moto::env());
    started(&mut op).await;
    provider_condition(&client, &provider, "Ready", "True").await;

    // Two namespaces asking for the same path get their own copies.
    let ann = format!("{{provider: {provider}, path: /shared/db, secretName: db}}");
    let shop_pod = create_pod(&client, &shop.name, "app", &ann).await;
    let bank_pod = create_pod(&client, &bank.name, "app", &ann).await;
    for (ns, uid) in [(&shop.name, &shop_pod), (&bank.name, &bank_pod)] {
        let secret = wait_secret(&client, ns, "db").await;
        let data = data_of(&secret);
        assert_eq!(data["DB_HOST"], "db.internal");
        assert_eq!(data["DB_PASSWORD"], PLANTED);
        assert_eq!(data["PORT"], "5432");
        assert_eq!(
            secret.metadata.labels.as_ref().unwrap()["app.kubernetes.io/managed-by"],
            "phylax"
        );
        let annotations = secret.metadata.annotations.as_ref().unwrap();
        assert_eq!(annotations["secrets.phylax.dev/provider"], provider);
        assert_eq!(annotations["secrets.phylax.dev/path"], "/shared/db");
        // The content hash is keyed with the operator's own key: whoever reads the annotation
        // cannot test guesses of the values without it.
        let key = Api::<Secret>::namespaced(client.clone(), &op_ns.name)
            .get(hash_key::KEY_SECRET)
            .await
            .unwrap();
        let key = &key.data.as_ref().unwrap()["key"].0;
        assert_eq!(key.len(), 32);
        let keyed = hash_key::ContentHasher::new(key).unwrap();
        assert_eq!(
            annotations["secrets.phylax.dev/content-hash"],
            keyed.hash(secret.data.as_ref().unwrap())
        );
        let note = wait_event(&client, ns, uid, "SecretSynced").await;
        assert!(note.contains("Secret db") && note.contains(&provider), "{note}");
    }

    // A subset of keys, and a non-JSON source as one key.
    let two = format!(
        "- {{provider: {provider}, path: /shared/db, secretName: db-host, keys: [DB_HOST]}}\n\
         - {{provider: {provider}, path: /prod/{}/token, secretName: token}}",
        shop.name
    );
    create_pod(&client, &shop.name, "app2", &two).await;
    let host = data_of(&wait_secret(&client, &shop.name, "db-host").await);
    assert_eq!(host.keys().collect::<Vec<_>>(), ["DB_HOST"]);
    let token = data_of(&wait_secret(&client, &shop.name, "token").await);
    assert_eq!(token["value"], "plain-token-value");

    // A namespace outside the selector gets nothing, and says why.
    let other_pod = create_pod(&client, &other.name, "app", &ann).await;
    let note = wait_event(&client, &other.name, &other_pod, "SecretSyncRefused").await;
    assert!(
        note.contains(&format!("namespace {}", other.name)) && note.contains("spec.namespaces"),
        "{note}"
    );
    // Nor may a namespace read another's path.
    let cross = format!(
        "{{provider: {provider}, path: /prod/{}/token, secretName: stolen}}",
        shop.name
    );
    let cross_pod = create_pod(&client, &bank.name, "cross", &cross).await;
    let note = wait_event(&client, &bank.name, &cross_pod, "SecretSyncRefused").await;
    // The pod's namespace is told the path is not allowed, not which paths the provider allows.
    assert!(note.contains("not among those its spec.paths allow"), "{note}");
    assert!(!note.contains("/shared/*"), "{note}");
    assert!(
        op.logs().iter().any(|l| l.contains("matches none of spec.paths")),
        "the log says which patterns were tried"
    );
    for (ns, name) in [(&other.name, "db"), (&bank.name, "stolen")] {
        let api: Api<Secret> = Api::namespaced(client.clone(), ns);
        assert!(
            api.get_opt(name).await.unwrap().is_none(),
            "{ns}/{name} was written"
        );
    }

    // Not found names the provider and the path.
    let missing = format!("{{provider: {provider}, path: /shared/missing, secretName: missing}}");
    let missing_pod = create_pod(&client, &shop.name, "missing", &missing).await;
    let note = wait_event(&client, &shop.name, &missing_pod, "SecretNotFound").await;
    assert!(
        note.contains("/shared/missing") && note.contains(&provider),
        "{note}"
    );

    // A provider that assumes a role first (STS AssumeRole, served by moto too).
    let assumed = format!("aws-role-{}", random_suffix());
    apply_provider(
        &client,
        &assumed,
        json!({"aws": {"region": "eu-west-1", "endpoint": relay.url(),
                       "roleArn": "arn:aws:iam::123456789012:role/phylax-sync"},
               "namespaces": {"names": [shop.name]}, "paths": ["/shared/*"]}),
    )
    .await;
    provider_condition(&client, &assumed, "Ready", "True").await;
    create_pod(
        &client,
        &shop.name,
        "assumed",
        &format!("{{provider: {assumed}, path: /shared/db, secretName: via-role}}"),
    )
    .await;
    assert_eq!(
        data_of(&wait_secret(&client, &shop.name, "via-role").await)["DB_HOST"],
        "db.internal"
    );

    let synced = op
        .metric_sum(
            "phylax_secret_sync_syncs_total",
            &[("provider", "aws"), ("result", "synced")],
        )
        .await
        .unwrap();
    assert!(synced >= 4.0, "{synced}");
    let calls = op
        .metric_sum("phylax_secret_sync_store_calls_total", &[("provider", "aws")])
        .await
        .unwrap();
    assert!(calls >= 3.0, "{calls}");

    // The store goes away: the pod's event says it will retry, the provider turns NotReady, and
    // when the store is back the Secret arrives without a new pod.
    relay.cut();
    let later = format!("{{provider: {provider}, path: /shared/later, secretName: later}}");
    let later_pod = create_pod(&client, &shop.name, "later", &later).await;
    let note = wait_event(&client, &shop.name, &later_pod, "SecretStoreUnavailable").await;
    assert!(note.contains("will retry"), "{note}");
    // The store's address and the SDK's error text stay in the operator's log.
    let address = relay.url();
    let port = address.rsplit(':').next().unwrap_or_default();
    assert!(!note.contains(port) && !note.contains("dispatch"), "{note}");
    provider_condition(&client, &provider, "Reachable", "False").await;
    put(&sm, "/shared/later", r#"{"A":"1"}"#).await;
    relay.restore().await;
    let later_secret = wait_for("the retried sync", Duration::from_secs(60), || async {
        Api::<Secret>::namespaced(client.clone(), &shop.name)
            .get_opt("later")
            .await
            .ok()
            .flatten()
    })
    .await;
    assert_eq!(data_of(&later_secret)["A"], "1");
    provider_condition(&client, &provider, "Reachable", "True").await;

    assert_never_leaked(&client, &op, &[&shop.name, &bank.name, &other.name], PLANTED).await;
}
