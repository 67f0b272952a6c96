//! The webhook's TLS without cert-manager: the leading operator keeps a CA and a serving
//! certificate in two Secrets of its namespace and the `caBundle` of Phylax's webhook
//! configurations current, renewing before expiry with an overlap in which both CAs are trusted
//! (see `certs`). The webhook re-reads the mounted serving Secret, so nothing restarts.
//!
//! It reconciles on start and every `--webhook-certs-resync`; the Secrets are written with
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

use crate::deploy::WEBHOOK_CONFIGURATION;
use crate::deploy::WEBHOOK_TLS_SECRET;
use crate::runtime::duration;
use crate::runtime::ownership::{self, MANAGED_BY, OPERATOR_MANAGER as MANAGER};
use certs::{CaState, Pair, Serving};

pub const CA_SECRET: &str = "phylax-webhook-ca";
/// The webhook configurations whose caBundle the operator keeps current.
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
    loop {
        match reconcile(&client, &namespace, &settings).await {
            Ok(changes) if !changes.is_empty() => {
                tracing::info!(changes = ?changes, "webhook certificates updated")
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "cannot reconcile the webhook certificates; retrying")
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(args.webhook_certs_resync) => {}
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
