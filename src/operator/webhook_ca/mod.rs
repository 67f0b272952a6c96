//! The webhook's TLS without cert-manager: the leading operator keeps a CA and a serving
//! certificate in two Secrets of its namespace and the `caBundle` of Phylax's webhook
//! configurations current, renewing before expiry with an overlap in which both CAs are trusted
//! (see `certs`). The webhook re-reads the mounted serving Secret, so nothing restarts.
//!
//! It reconciles on start and every `--webhook-certs-resync` (after a failure, sooner, backing off
//! up to that period); the Secrets are written with
//! server-side apply, and Secrets of those names that Phylax did not create are left alone.

pub mod certs;

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::{Api, Client};
use tokio_util::sync::CancellationToken;

use crate::api::webhooks::{CONFIGURATION_NAME as WEBHOOK_CONFIGURATION, TLS_SECRET as WEBHOOK_TLS_SECRET};
use crate::runtime::backoff::Backoff;
use crate::runtime::duration;
use crate::runtime::metrics::{Metrics, ReconcileLabels};
use crate::runtime::ownership::{self, MANAGED_BY, OPERATOR_MANAGER as MANAGER};
use certs::{CaState, Pair, Serving};

pub use crate::api::webhooks::CA_SECRET;
const NOT_AFTER: &str = "phylax.dev/not-after";
const PREVIOUS_UNTIL: &str = "phylax.dev/previous-ca-until";
const ISSUER: &str = "phylax.dev/issuer";
const NAMES: &str = "phylax.dev/names";

#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Webhook certificates")]
pub struct WebhookCertArgs {
    /// Manage the webhook's CA, serving certificate and caBundle (turn off to let cert-manager
    /// do it, with its inject-ca-from annotation)
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub manage_webhook_certs: bool,

    /// Lifetime of the webhook CA; it is replaced when a third of it is left
    #[arg(long, value_name = "DURATION", default_value = "8760h", value_parser = duration::parse)]
    pub webhook_ca_validity: Duration,

    /// Lifetime of the serving certificate; it is reissued when a third of it is left
    #[arg(long, value_name = "DURATION", default_value = "720h", value_parser = duration::parse)]
    pub webhook_cert_validity: Duration,

    /// Extra DNS name or IP address for the serving certificate (repeatable), besides the
    /// phylax-webhook Service's names
    #[arg(long = "webhook-cert-extra-name", value_name = "NAME")]
    pub extra_names: Vec<String>,

    /// How often to check the certificates and the caBundle
    #[arg(long, value_name = "DURATION", default_value = "1m", value_parser = duration::parse)]
    pub webhook_certs_resync: Duration,
}

pub async fn run(
    client: Client,
    namespace: String,
    args: WebhookCertArgs,
    metrics: Metrics,
    term: CancellationToken,
) -> anyhow::Result<()> {
    if !args.manage_webhook_certs {
        return Ok(());
    }
    let service = "phylax-webhook";
    let mut names = vec![
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.cluster.local"),
    ];
    names.extend(args.extra_names.iter().cloned());
    let settings = certs::Settings {
        ca_validity: args.webhook_ca_validity,
        cert_validity: args.webhook_cert_validity,
        names,
    };
    // A failed pass is retried sooner than the next resync, backing off up to it.
    let retry = || Backoff::new(Duration::from_secs(1), args.webhook_certs_resync);
    let mut backoff = retry();
    loop {
        let wait = match reconcile(&client, &namespace, &settings).await {
            Ok(changes) => {
                if !changes.is_empty() {
                    tracing::info!(changes = ?changes, "webhook certificates updated");
                }
                backoff = retry();
                args.webhook_certs_resync
            }
            Err(e) => {
                let label = if e.downcast_ref::<kube::Error>().is_some() {
                    "kube"
                } else {
                    "certs"
                };
                metrics
                    .reconcile_errors
                    .get_or_create(&ReconcileLabels {
                        controller: "webhook-certs".into(),
                        error: label.into(),
                    })
                    .inc();
                let wait = backoff.next_delay();
                tracing::warn!(
                    error = %format!("{e:#}"),
                    retry_in_ms = wait.as_millis() as u64,
                    "cannot reconcile the webhook certificates; retrying"
                );
                wait
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = term.cancelled() => return Ok(()),
        }
    }
}

/// One pass; returns what changed.
pub async fn reconcile(
    client: &Client,
    ns: &str,
    settings: &certs::Settings,
) -> anyhow::Result<Vec<&'static str>> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let ca_secret = owned(secrets.get_opt(CA_SECRET).await?, ns, CA_SECRET)?;
    let tls_secret = owned(secrets.get_opt(WEBHOOK_TLS_SECRET).await?, ns, WEBHOOK_TLS_SECRET)?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let now = i64::try_from(now)?;
    let plan = certs::plan(
        settings,
        ca_secret.as_ref().and_then(read_ca),
        tls_secret.as_ref().and_then(read_serving),
        now,
    )?;
    let apply = PatchParams::apply(MANAGER).force();
    if !plan.changes.is_empty() {
        secrets
            .patch(CA_SECRET, &apply, &Patch::Apply(ca_secret_of(ns, &plan.ca)))
            .await?;
        secrets
            .patch(
                WEBHOOK_TLS_SECRET,
                &apply,
                &Patch::Apply(serving_secret_of(ns, &plan.ca, &plan.serving)),
            )
            .await?;
    }
    let mut changes = plan.changes;
    if inject_bundle(client, &plan.ca.bundle()).await? {
        changes.push("updated the caBundle");
    }
    Ok(changes)
}

/// A Secret of ours, or none; one someone else made under our name is refused, not overwritten.
fn owned(secret: Option<Secret>, ns: &str, name: &str) -> anyhow::Result<Option<Secret>> {
    match secret {
        Some(s) if !ownership::is_managed(s.metadata.labels.as_ref()) => {
            anyhow::bail!(
                "Secret {ns}/{name} exists but was not created by Phylax (no {}={} label); delete it, or \
                 run the operator with --manage-webhook-certs=false if another tool owns the certificates",
                MANAGED_BY.0,
                MANAGED_BY.1
            )
        }
        other => Ok(other),
    }
}

fn text(s: &Secret, key: &str) -> Option<String> {
    s.data
        .as_ref()?
        .get(key)
        .and_then(|b| String::from_utf8(b.0.clone()).ok())
}

fn annotation(s: &Secret, key: &str) -> Option<String> {
    s.metadata.annotations.as_ref()?.get(key).cloned()
}

fn read_ca(s: &Secret) -> Option<CaState> {
    let current = Pair {
        cert_pem: text(s, "ca.crt")?,
        key_pem: text(s, "ca.key")?,
        not_after: annotation(s, NOT_AFTER)?.parse().ok()?,
    };
    let previous = match (
        text(s, "previous-ca.crt"),
        annotation(s, PREVIOUS_UNTIL).and_then(|u| u.parse().ok()),
    ) {
        (Some(pem), Some(until)) => Some((pem, until)),
        _ => None,
    };
    Some(CaState { current, previous })
}

fn read_serving(s: &Secret) -> Option<Serving> {
    Some(Serving {
        pair: Pair {
            cert_pem: text(s, "tls.crt")?,
            key_pem: text(s, "tls.key")?,
            not_after: annotation(s, NOT_AFTER)?.parse().ok()?,
        },
        issuer: annotation(s, ISSUER)?,
        names: annotation(s, NAMES)?.split(',').map(str::to_owned).collect(),
    })
}

fn secret(
    ns: &str,
    name: &str,
    kind: &str,
    data: Vec<(&str, &str)>,
    annotations: Vec<(&str, String)>,
) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(ns.into()),
            labels: Some(BTreeMap::from([
                (MANAGED_BY.0.to_owned(), MANAGED_BY.1.to_owned()),
                ("app.kubernetes.io/part-of".to_owned(), "phylax".to_owned()),
            ])),
            annotations: Some(annotations.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()),
            ..Default::default()
        },
        type_: Some(kind.into()),
        data: Some(
            data.into_iter()
                .map(|(k, v)| (k.to_owned(), ByteString(v.as_bytes().to_vec())))
                .collect(),
        ),
        ..Default::default()
    }
}

fn ca_secret_of(ns: &str, ca: &CaState) -> Secret {
    let mut data = vec![
        ("ca.crt", ca.current.cert_pem.as_str()),
        ("ca.key", ca.current.key_pem.as_str()),
    ];
    let mut annotations = vec![(NOT_AFTER, ca.current.not_after.to_string())];
    if let Some((pem, until)) = &ca.previous {
        data.push(("previous-ca.crt", pem.as_str()));
        annotations.push((PREVIOUS_UNTIL, until.to_string()));
    }
    secret(ns, CA_SECRET, "Opaque", data, annotations)
}

fn serving_secret_of(ns: &str, ca: &CaState, s: &Serving) -> Secret {
    let bundle = ca.bundle();
    secret(
        ns,
        WEBHOOK_TLS_SECRET,
        "kubernetes.io/tls",
        vec![
            ("tls.crt", &s.pair.cert_pem),
            ("tls.key", &s.pair.key_pem),
            ("ca.crt", &bundle),
        ],
        vec![
            (NOT_AFTER, s.pair.not_after.to_string()),
            (ISSUER, s.issuer.clone()),
            (NAMES, s.names.join(",")),
        ],
    )
}

/// Sets the caBundle of every webhook in Phylax's Validating- and MutatingWebhookConfiguration
/// that lacks it; true if it changed anything.
async fn inject_bundle(client: &Client, bundle: &str) -> anyhow::Result<bool> {
    let encoded = base64::engine::general_purpose::STANDARD.encode(bundle);
    let mut changed = false;
    for kind in ["ValidatingWebhookConfiguration", "MutatingWebhookConfiguration"] {
        let gvk = GroupVersionKind::gvk("admissionregistration.k8s.io", "v1", kind);
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &ApiResource::from_gvk(&gvk));
        let Some(config) = api.get_opt(WEBHOOK_CONFIGURATION).await? else {
            continue;
        };
        let hooks = config
            .data
            .get("webhooks")
            .and_then(|w| w.as_array())
            .cloned()
            .unwrap_or_default();
        let mut ops = Vec::new();
        for (i, hook) in hooks.iter().enumerate() {
            if hook.pointer("/clientConfig/caBundle").and_then(|b| b.as_str()) != Some(encoded.as_str()) {
                // The test guards against the list changing between our read and this write.
                ops.push(serde_json::json!({"op": "test", "path": format!("/webhooks/{i}/name"), "value": hook["name"]}));
                ops.push(serde_json::json!({"op": "add", "path": format!("/webhooks/{i}/clientConfig/caBundle"), "value": encoded}));
            }
        }
        if ops.is_empty() {
            continue;
        }
        let patch: json_patch::Patch = serde_json::from_value(serde_json::Value::Array(ops))?;
        api.patch(
            WEBHOOK_CONFIGURATION,
            &PatchParams::default(),
            &Patch::Json::<()>(patch),
        )
        .await?;
        changed = true;
    }
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::api_mock::{self, ApiServer};
    use http::Method;
    use serde_json::json;

    const NS: &str = "phylax-system";

    fn settings() -> certs::Settings {
        certs::Settings {
            ca_validity: Duration::from_secs(365 * 86400),
            cert_validity: Duration::from_secs(30 * 86400),
            names: vec!["phylax-webhook.phylax-system.svc".into()],
        }
    }

    async fn run<F, Fut>(script: F) -> anyhow::Result<Vec<&'static str>>
    where
        F: FnOnce(ApiServer) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let (client, server) = api_mock::client();
        let server = tokio::spawn(script(server));
        let result = reconcile(&client, NS, &settings()).await;
        server.await.expect("the scripted server panicked");
        result
    }

    fn secret_url(name: &str) -> String {
        format!("/api/v1/namespaces/{NS}/secrets/{name}")
    }

    fn config_url(kind: &str) -> String {
        format!("/apis/admissionregistration.k8s.io/v1/{kind}/{WEBHOOK_CONFIGURATION}")
    }

    #[tokio::test]
    async fn a_fresh_cluster_gets_a_ca_a_serving_certificate_and_the_bundle() {
        let changes = run(|mut api| async move {
            for name in [CA_SECRET, WEBHOOK_TLS_SECRET] {
                let get = api.next().await;
                get.expect(Method::GET, &secret_url(name));
                get.fail(404, "NotFound");
            }
            for name in [CA_SECRET, WEBHOOK_TLS_SECRET] {
                let apply = api.next().await;
                apply.expect(Method::PATCH, &secret_url(name));
                assert_eq!(apply.content_type.as_deref(), Some("application/apply-patch+yaml"));
                assert_eq!(apply.query("fieldManager").as_deref(), Some(MANAGER));
                assert_eq!(apply.body["metadata"]["labels"][MANAGED_BY.0], MANAGED_BY.1);
                let keys: Vec<&str> = apply.body["data"]
                    .as_object()
                    .map(|d| d.keys().map(String::as_str).collect())
                    .unwrap_or_default();
                if name == CA_SECRET {
                    assert_eq!(keys, ["ca.crt", "ca.key"]);
                } else {
                    assert_eq!(apply.body["type"], "kubernetes.io/tls");
                    assert_eq!(keys, ["ca.crt", "tls.crt", "tls.key"]);
                }
                let body = apply.body.clone();
                apply.ok(body);
            }
            // The validating configuration lacks the bundle on its one webhook; the mutating one
            // is not installed.
            let get = api.next().await;
            get.expect(Method::GET, &config_url("validatingwebhookconfigurations"));
            get.ok(json!({
                "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingWebhookConfiguration",
                "metadata": {"name": "phylax"},
                "webhooks": [{"name": "sync.phylax.dev", "clientConfig": {}}],
            }));
            let patch = api.next().await;
            patch.expect(Method::PATCH, &config_url("validatingwebhookconfigurations"));
            assert_eq!(patch.content_type.as_deref(), Some("application/json-patch+json"));
            assert_eq!(patch.body[0], json!({"op": "test", "path": "/webhooks/0/name", "value": "sync.phylax.dev"}));
            assert_eq!(patch.body[1]["path"], "/webhooks/0/clientConfig/caBundle");
            let bundle = patch.body[1]["value"].as_str().unwrap_or_default().to_owned();
            assert!(!bundle.is_empty());
            patch.ok(json!({"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingWebhookConfiguration", "metadata": {"name": "phylax"}}));
            let get = api.next().await;
            get.expect(Method::GET, &config_url("mutatingwebhookconfigurations"));
            get.fail(404, "NotFound");
            api.no_more_calls().await;
        })
        .await
        .expect("reconcile");
        assert!(changes.contains(&"updated the caBundle"), "{changes:?}");
        assert!(changes.len() >= 2, "{changes:?}");
    }

    #[tokio::test]
    async fn a_secret_of_the_same_name_made_by_someone_else_is_refused_not_overwritten() {
        let result = run(|mut api| async move {
            api.next().await.ok(json!({
                "apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": CA_SECRET, "namespace": NS, "labels": {"owner": "cert-manager"}},
                "data": {"ca.crt": "eA=="},
            }));
            api.no_more_calls().await;
        })
        .await;
        let err = format!("{:#}", result.expect_err("a foreign Secret was accepted"));
        assert!(
            err.contains(CA_SECRET) && err.contains("--manage-webhook-certs=false"),
            "{err}"
        );
    }
}
