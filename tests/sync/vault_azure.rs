//! Vault (KV v2, Kubernetes auth or a token from a Secret) and Azure Key Vault (client
//! credentials) against the test doubles of their HTTP APIs in `doubles.rs`.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::{ObjectMeta, PostParams};
use serde_json::json;

use crate::doubles::{AzureDouble, VaultBinding, VaultDouble};
use crate::support::cluster::cluster;
use crate::support::random_suffix;
use crate::*;

const VAULT_PLANTED: &str = "planted-vault-value-0c77aa";
const AZURE_PLANTED: &str = "planted-azure-value-e2a5f1";
const CLIENT_SECRET: &str = "planted-client-secret-44b0";

/// A Secret of the operator's namespace meant as a SecretProvider credential (labelled so).
async fn credential_secret(client: &kube::Client, ns: &str, name: &str, key: &str, value: &str) {
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some(BTreeMap::from([(
                "secrets.phylax.dev/credential".to_owned(),
                "true".to_owned(),
            )])),
            ..Default::default()
        },
        data: Some(BTreeMap::from([(
            key.to_owned(),
            ByteString(value.as_bytes().to_vec()),
        )])),
        ..Default::default()
    };
    Api::<Secret>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
}

/// The Vault double with role `shop` bound, as the README says to bind it, to the operator's
/// `phylax-vault-auth` account and the audience `vault`.
async fn vault_for_operator(client: &kube::Client, op_ns: &str) -> VaultDouble {
    VaultDouble::start(
        VaultBinding {
            reviewer: client.clone(),
            namespace: op_ns.to_owned(),
            service_account: "phylax-vault-auth".into(),
            audience: "vault".into(),
        },
        "shop",
    )
    .await
}

#[tokio::test]
async fn vault_kv2_with_kubernetes_auth_denials_and_a_sealed_vault() {
    let _one = serial().await;
    let client = cluster().client().await;
    install_crds(&client).await;
    let ns = namespace(&client, "vault", &[]).await;
    let op_ns = namespace(&client, "op", &[]).await;
    // The account the operator logs in to Vault as (the manifests create it).
    let accounts: Api<k8s_openapi::api::core::v1::ServiceAccount> =
        Api::namespaced(client.clone(), &op_ns.name);
    accounts
        .create(
            &PostParams::default(),
            &serde_json::from_value(
                json!({"metadata": {"name": "phylax-vault-auth"}, "automountServiceAccountToken": false}),
            )
            .unwrap(),
        )
        .await
        .unwrap();
    let vault = vault_for_operator(&client, &op_ns.name).await;
    vault.state.secrets.lock().unwrap().insert(
        "shop/db".into(),
        json!({"user": "app", "password": VAULT_PLANTED}),
    );
    vault.state.denied.lock().unwrap().insert("shop/admin".into());
    let provider = format!("vault-{}", random_suffix());
    apply_provider(
        &client,
        &provider,
        json!({"vault": {"address": vault.url, "mount": "secret", "kvVersion": 2,
                         "auth": {"kubernetes": {"role": "shop"}}},
               "namespaces": {"names": [ns.name]}, "paths": ["shop/*"]}),
    )
    .await;
    // A second provider: a static token from a Secret in the operator's namespace.
    credential_secret(
        &client,
        &op_ns.name,
        "vault-token",
        "token",
        "hvs.test-double-token",
    )
    .await;
    let by_token = format!("vault-token-{}", random_suffix());
    apply_provider(
        &client,
        &by_token,
        json!({"vault": {"address": vault.url, "auth": {"tokenSecretRef": {"name": "vault-token", "key": "token"}}},
               "namespaces": {"names": [ns.name]}, "paths": ["shop/*"]}),
    )
    .await;
    // A third whose role Vault refuses: not configured, says why.
    let wrong = format!("vault-wrong-{}", random_suffix());
    apply_provider(
        &client,
        &wrong,
        json!({"vault": {"address": vault.url, "auth": {"kubernetes": {"role": "bank"}}},
               "namespaces": {"names": [ns.name]}, "paths": ["*"]}),
    )
    .await;

    let mut op = operator(&op_ns.name, &[], &Default::default());
    started(&mut op).await;
    provider_condition(&client, &provider, "Ready", "True").await;
    let why = provider_condition(&client, &wrong, "Configured", "False").await;
    assert!(why.contains("role \"bank\""), "{why}");
    // A pod using it is told the provider is not usable, not what Vault said about its role.
    let refused = create_pod(
        &client,
        &ns.name,
        "wrong",
        &format!("{{provider: {wrong}, path: shop/db, secretName: wr}}"),
    )
    .await;
    let note = wait_event(&client, &ns.name, &refused, "SecretProviderNotReady").await;
    assert!(note.contains("is not usable") && note.contains(&wrong), "{note}");
    assert!(!note.contains("bank") && !note.contains("127.0.0.1"), "{note}");

    let both = format!(
        "- {{provider: {provider}, path: shop/db, secretName: db}}\n- {{provider: {by_token}, path: shop/db, secretName: db2}}"
    );
    create_pod(&client, &ns.name, "app", &both).await;
    for name in ["db", "db2"] {
        let data = data_of(&wait_secret(&client, &ns.name, name).await);
        assert_eq!(data["password"], VAULT_PLANTED);
        assert_eq!(data["user"], "app");
    }

    let denied = create_pod(
        &client,
        &ns.name,
        "denied",
        &format!("{{provider: {provider}, path: shop/admin, secretName: adm}}"),
    )
    .await;
    let note = wait_event(&client, &ns.name, &denied, "SecretAccessDenied").await;
    assert!(
        note.contains("read capability on secret/data/shop/admin"),
        "{note}"
    );

    // Sealed: unavailable, retried; unsealed: served without a new pod.
    vault.state.sealed.store(true, Ordering::SeqCst);
    vault
        .state
        .secrets
        .lock()
        .unwrap()
        .insert("shop/later".into(), json!({"k": "v"}));
    let later = create_pod(
        &client,
        &ns.name,
        "later",
        &format!("{{provider: {provider}, path: shop/later, secretName: later}}"),
    )
    .await;
    let note = wait_event(&client, &ns.name, &later, "SecretStoreUnavailable").await;
    assert!(
        note.contains("unreachable") && note.contains("will retry"),
        "{note}"
    );
    // Vault's address and state are for the provider's owner: the log has them, the event not.
    let port = vault.url.rsplit(':').next().unwrap_or_default().to_owned();
    assert!(!note.contains(&port) && !note.contains("sealed"), "{note}");
    assert!(op.logs().iter().any(|l| l.contains("sealed")));
    vault.state.sealed.store(false, Ordering::SeqCst);
    assert_eq!(data_of(&wait_secret(&client, &ns.name, "later").await)["k"], "v");

    // Vault saw only the dedicated account's short-lived token, never the operator's own.
    let logins = vault.state.logged_in_as.lock().unwrap().clone();
    assert!(!logins.is_empty());
    for user in &logins {
        assert_eq!(
            user,
            &format!("system:serviceaccount:{}:phylax-vault-auth", op_ns.name)
        );
    }

    assert_never_leaked(&client, &op, &[&ns.name, &op_ns.name], VAULT_PLANTED).await;
    for line in op.logs() {
        assert!(
            !line.contains("hvs.test-double-token") && !line.contains("eyJ"),
            "{line}"
        );
    }
}

/// Attacks of a SecretProvider author on the operator's credentials: plain http to another host,
/// a token file of their choosing, a credential reference to a Secret of the operator that is not
/// a credential (here standing for the webhook CA's key), an Entra authority of their own. Each is
/// refused in the provider's status, and nothing is sent.
#[tokio::test]
async fn a_secret_provider_cannot_make_the_operator_send_its_credentials_elsewhere() {
    let _one = serial().await;
    let client = cluster().client().await;
    install_crds(&client).await;
    let ns = namespace(&client, "steal", &[]).await;
    let op_ns = namespace(&client, "op", &[]).await;
    // An operator Secret that is not a credential: no label.
    let ca_key = "ca-key-planted-5c1e";
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &op_ns.name);
    secrets
        .create(
            &PostParams::default(),
            &serde_json::from_value(
                json!({"metadata": {"name": "webhook-ca"}, "stringData": {"ca.key": ca_key}}),
            )
            .unwrap(),
        )
        .await
        .unwrap();
    let vault = vault_for_operator(&client, &op_ns.name).await;
    let base = |auth: serde_json::Value, address: &str| json!({"vault": {"address": address, "auth": auth}, "namespaces": {"names": [ns.name]}, "paths": ["*"]});
    let cases = [
        (
            base(
                json!({"kubernetes": {"role": "shop"}}),
                "http://vault.example:8200",
            ),
            "must be https://",
        ),
        (
            base(
                json!({"kubernetes": {"role": "shop", "tokenPath": "/etc/hostname"}}),
                &vault.url,
            ),
            "tokenPath is not accepted",
        ),
        (
            base(
                json!({"tokenSecretRef": {"name": "webhook-ca", "key": "ca.key"}}),
                &vault.url,
            ),
            "is not labelled secrets.phylax.dev/credential=true",
        ),
        (
            json!({"azure": {"vaultUrl": vault.url, "tenantId": "t", "clientId": "c",
                             "authorityHost": "https://login.attacker.example/",
                             "clientSecretRef": {"name": "webhook-ca", "key": "ca.key"}},
                   "namespaces": {"names": [ns.name]}, "paths": ["*"]}),
            "is not an Entra ID authority",
        ),
    ];
    let mut names = Vec::new();
    for (spec, _) in &cases {
        let name = format!("steal-{}", random_suffix());
        apply_provider(&client, &name, spec.clone()).await;
        names.push(name);
    }
    let mut op = operator(&op_ns.name, &[], &Default::default());
    started(&mut op).await;
    for (name, (_, why)) in names.iter().zip(&cases) {
        let message = provider_condition(&client, name, "Configured", "False").await;
        assert!(message.contains(why), "{name}: {message}");
    }
    assert!(vault.state.logged_in_as.lock().unwrap().is_empty());
    assert!(
        !vault
            .state
            .tokens_seen
            .lock()
            .unwrap()
            .iter()
            .any(|t| t.contains(ca_key)),
        "the CA key reached the store"
    );
    assert!(!op.logs().iter().any(|l| l.contains(ca_key)));
}

#[tokio::test]
async fn azure_key_vault_with_client_credentials_throttling_and_denials() {
    let _one = serial().await;
    let client = cluster().client().await;
    install_crds(&client).await;
    let ns = namespace(&client, "azure", &[]).await;
    let op_ns = namespace(&client, "op", &[]).await;
    let azure = AzureDouble::start("tenant-1", "client-1", CLIENT_SECRET).await;
    {
        let mut s = azure.state.secrets.lock().unwrap();
        s.insert("db-password".into(), AZURE_PLANTED.into());
        s.insert(
            "app-config".into(),
            json!({"URL": "https://x", "MODE": "prod"}).to_string(),
        );
    }
    azure.state.denied.lock().unwrap().insert("admin".into());
    credential_secret(&client, &op_ns.name, "azure-cred", "clientSecret", CLIENT_SECRET).await;
    let spec = |secret_ref: &str| {
        json!({"azure": {"vaultUrl": azure.url, "tenantId": "tenant-1", "clientId": "client-1",
                         "authorityHost": format!("{}/", azure.url),
                         "clientSecretRef": {"name": secret_ref, "key": "clientSecret"}},
               "namespaces": {"names": [ns.name]}, "paths": ["*"], "rawKey": "password"})
    };
    let provider = format!("azure-{}", random_suffix());
    apply_provider(&client, &provider, spec("azure-cred")).await;
    credential_secret(&client, &op_ns.name, "azure-wrong", "clientSecret", "not-it").await;
    let wrong = format!("azure-wrong-{}", random_suffix());
    apply_provider(&client, &wrong, spec("azure-wrong")).await;

    let mut op = operator(&op_ns.name, &[], &Default::default());
    started(&mut op).await;
    provider_condition(&client, &provider, "Ready", "True").await;
    let why = provider_condition(&client, &wrong, "Configured", "False").await;
    assert!(why.contains("client-1") && why.contains("tenant-1"), "{why}");

    let ann = format!(
        "- {{provider: {provider}, path: db-password, secretName: db}}\n- {{provider: {provider}, path: app-config, secretName: cfg}}"
    );
    create_pod(&client, &ns.name, "app", &ann).await;
    assert_eq!(
        data_of(&wait_secret(&client, &ns.name, "db").await)["password"],
        AZURE_PLANTED
    );
    assert_eq!(
        data_of(&wait_secret(&client, &ns.name, "cfg").await)["MODE"],
        "prod"
    );

    let denied = create_pod(
        &client,
        &ns.name,
        "denied",
        &format!("{{provider: {provider}, path: admin, secretName: adm}}"),
    )
    .await;
    let note = wait_event(&client, &ns.name, &denied, "SecretAccessDenied").await;
    assert!(
        note.contains("Key Vault Secrets User") && note.contains("client-1"),
        "{note}"
    );
    let missing = create_pod(
        &client,
        &ns.name,
        "missing",
        &format!("{{provider: {provider}, path: nope, secretName: nope}}"),
    )
    .await;
    wait_event(&client, &ns.name, &missing, "SecretNotFound").await;
    azure.state.garbled.lock().unwrap().insert("garbled".into());
    let garbled = create_pod(
        &client,
        &ns.name,
        "garbled",
        &format!("{{provider: {provider}, path: garbled, secretName: garbled}}"),
    )
    .await;
    let note = wait_event(&client, &ns.name, &garbled, "SecretSourceInvalid").await;
    assert!(
        note.contains("not a secret") && !note.contains("gateway"),
        "{note}"
    );

    // Throttled twice: an event, then the Secret once Key Vault lets the retry through.
    azure
        .state
        .secrets
        .lock()
        .unwrap()
        .insert("later".into(), "v".into());
    azure.state.throttle.store(2, Ordering::SeqCst);
    let later = create_pod(
        &client,
        &ns.name,
        "later",
        &format!("{{provider: {provider}, path: later, secretName: later}}"),
    )
    .await;
    let note = wait_event(&client, &ns.name, &later, "SecretStoreUnavailable").await;
    assert!(note.contains("throttling"), "{note}");
    assert_eq!(
        data_of(&wait_secret(&client, &ns.name, "later").await)["password"],
        "v"
    );

    assert_never_leaked(&client, &op, &[&ns.name, &op_ns.name], AZURE_PLANTED).await;
    assert_never_leaked(&client, &op, &[], CLIENT_SECRET).await;
}
