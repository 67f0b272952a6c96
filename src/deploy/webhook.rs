//! The admission webhook: its Deployment and Service, the webhook configurations through which the
//! API server calls it, and its RBAC.

use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhook, MutatingWebhookConfiguration, RuleWithOperations, ServiceReference, ValidatingWebhook,
    ValidatingWebhookConfiguration, WebhookClientConfig,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{
    ContainerPort, SecretVolumeSource, Service, ServicePort, ServiceSpec, Volume, VolumeMount,
};
use k8s_openapi::api::networking::v1::{
    IPBlock, NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{
    Access, WebhookScope, cluster_meta, cluster_role, meta, namespaced_role, object_name, rule,
    selector_labels, service_account, strings,
};
use crate::api::webhooks::{
    NAMESPACE_NAME_LABEL, NamespaceScope, OPT_IN_VALUE, OPT_OUT_LABEL, OPT_OUT_VALUE, TIMEOUT_SECONDS,
    WEBHOOKS, WebhookSpec,
};
use crate::role::Role;

/// The webhook's serving certificate (kubernetes.io/tls), re-read when the kubelet updates the
/// volume.
pub use crate::api::webhooks::TLS_SECRET as WEBHOOK_TLS_SECRET;
/// The Secrets the operator keeps for the webhook: its CA and the serving certificate.
pub(super) const WEBHOOK_SECRETS: [&str; 2] = [crate::api::webhooks::CA_SECRET, WEBHOOK_TLS_SECRET];
/// The name of both webhook configurations, whose caBundle the operator keeps current.
pub use crate::api::webhooks::CONFIGURATION_NAME;
const WEBHOOK_TLS_DIR: &str = "/etc/phylax/webhook-tls";
const WEBHOOK_PORT: i32 = 8443;
const SERVICE_PORT: i32 = 443;

/// It reads ProfileBindings, ProfileRecordings and the profiles' states to bind profiles to new
/// pods.
pub(super) fn access(ns: &str) -> Access {
    let role = Role::Webhook;
    Access {
        service_account: service_account(ns, role, true),
        // The node agents' pods: which node a node agent's request comes from.
        roles: vec![namespaced_role(
            ns,
            "phylax-webhook-node-agents",
            role,
            vec![rule("", &["pods"], &["list", "watch"])],
        )],
        cluster_roles: vec![cluster_role(
            ns,
            "phylax-webhook-profiles",
            role,
            vec![rule(
                "profiles.phylax.dev",
                &[
                    "profilebindings",
                    "profilerecordings",
                    "seccompprofiles",
                    "apparmorprofiles",
                ],
                &["list", "watch"],
            )],
        )],
    }
}

/// Two replicas serving HTTPS with the certificate mounted from [`WEBHOOK_TLS_SECRET`].
pub(super) fn deployment(ns: &str, image: &str) -> Deployment {
    let role = Role::Webhook;
    let listen = format!("--listen-addr=0.0.0.0:{WEBHOOK_PORT}");
    let tls_dir = format!("--tls-dir={WEBHOOK_TLS_DIR}");
    let agents = format!(
        "--node-agent-service-account={ns}:{}",
        object_name(Role::NodeAgent)
    );
    let mut d = super::deployment(ns, image, role, 2, &[&listen, &tls_dir, &agents]);
    if let Some(spec) = d.spec.as_mut().and_then(|s| s.template.spec.as_mut()) {
        // The kubelet writes Secret volume files as root; with fsGroup they belong to the pod's
        // group, so the non-root webhook can read its key through the 0440 mode (without it the
        // webhook exits at start and the fail-closed profile webhook blocks pod creation).
        if let Some(sc) = spec.security_context.as_mut() {
            sc.fs_group = Some(super::NON_ROOT_UID);
        }
        spec.volumes = Some(vec![Volume {
            name: "tls".into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(WEBHOOK_TLS_SECRET.into()),
                default_mode: Some(0o440),
                ..Default::default()
            }),
            ..Default::default()
        }]);
        // The kubelet writes the Secret's files root-owned; mode 0440 lets only their group read
        // them, so that group must be the container's (found on a real node: EACCES otherwise).
        if let Some(sc) = spec.security_context.as_mut() {
            sc.fs_group = Some(super::NON_ROOT_UID);
        }
        if let Some(c) = spec.containers.first_mut() {
            c.volume_mounts = Some(vec![VolumeMount {
                name: "tls".into(),
                mount_path: WEBHOOK_TLS_DIR.into(),
                read_only: Some(true),
                ..Default::default()
            }]);
            c.ports.get_or_insert_with(Vec::new).push(ContainerPort {
                name: Some("https".into()),
                container_port: WEBHOOK_PORT,
                protocol: Some("TCP".into()),
                ..Default::default()
            });
        }
    }
    d
}

/// The Service the API server calls the webhooks through.
pub(super) fn service(ns: &str) -> Service {
    let role = Role::Webhook;
    Service {
        metadata: meta(ns, &object_name(role), role),
        spec: Some(ServiceSpec {
            selector: Some(selector_labels(role)),
            ports: Some(vec![ServicePort {
                name: Some("https".into()),
                port: SERVICE_PORT,
                target_port: Some(IntOrString::String("https".into())),
                protocol: Some("TCP".into()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Admits only `allow_from` to the webhook's HTTPS port (anyone in the cluster could otherwise
/// flood the server every pod creation waits for); the admin port (probes, metrics) stays open.
pub(super) fn network_policy(ns: &str, allow_from: &[String]) -> NetworkPolicy {
    let role = Role::Webhook;
    let port = |name: &str| NetworkPolicyPort {
        port: Some(IntOrString::String(name.into())),
        protocol: Some("TCP".into()),
        ..Default::default()
    };
    NetworkPolicy {
        metadata: meta(ns, &object_name(role), role),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector {
                match_labels: Some(selector_labels(role)),
                ..Default::default()
            }),
            policy_types: Some(vec!["Ingress".into()]),
            ingress: Some(vec![
                NetworkPolicyIngressRule {
                    ports: Some(vec![port("https")]),
                    from: Some(
                        allow_from
                            .iter()
                            .map(|cidr| NetworkPolicyPeer {
                                ip_block: Some(IPBlock {
                                    cidr: cidr.clone(),
                                    except: None,
                                }),
                                ..Default::default()
                            })
                            .collect(),
                    ),
                },
                NetworkPolicyIngressRule {
                    ports: Some(vec![port("admin")]),
                    from: None,
                },
            ]),
            ..Default::default()
        }),
    }
}

/// The ValidatingWebhookConfiguration `phylax` for every validating webhook, called through the
/// `phylax-webhook` Service. It leaves out kube-system, Phylax's own namespace and namespaces
/// labelled `phylax.dev/webhooks: disabled`. There is no object selector: a pod's own labels are
/// its author's, and must not switch off the fail-closed profile binding. Its `caBundle` is filled in at run time (the operator,
/// or cert-manager's `cert-manager.io/inject-ca-from` annotation if you prefer).
pub(super) fn validating_configuration(
    ns: &str,
    scope: WebhookScope,
) -> Option<ValidatingWebhookConfiguration> {
    let webhooks: Vec<_> = WEBHOOKS
        .iter()
        .filter(|w| !w.mutating)
        .map(|w| webhook(ns, scope, w))
        .collect();
    (!webhooks.is_empty()).then(|| ValidatingWebhookConfiguration {
        metadata: cluster_meta(CONFIGURATION_NAME, Role::Webhook),
        webhooks: Some(webhooks),
    })
}

/// The MutatingWebhookConfiguration `phylax`: as the validating one, for every mutating webhook.
pub(super) fn mutating_configuration(ns: &str, scope: WebhookScope) -> Option<MutatingWebhookConfiguration> {
    let webhooks: Vec<_> = WEBHOOKS
        .iter()
        .filter(|w| w.mutating)
        .map(|w| mutating(webhook(ns, scope, w)))
        .collect();
    (!webhooks.is_empty()).then(|| MutatingWebhookConfiguration {
        metadata: cluster_meta(CONFIGURATION_NAME, Role::Webhook),
        webhooks: Some(webhooks),
    })
}

/// One webhook's entry, in the fields validating and mutating webhooks share.
fn webhook(ns: &str, scope: WebhookScope, spec: &WebhookSpec) -> ValidatingWebhook {
    let in_scope = match scope {
        WebhookScope::OptOut => requirement(OPT_OUT_LABEL, "NotIn", &[OPT_OUT_VALUE]),
        WebhookScope::OptIn => requirement(OPT_OUT_LABEL, "In", &[OPT_IN_VALUE]),
    };
    ValidatingWebhook {
        name: format!("{}.phylax.dev", spec.name),
        client_config: WebhookClientConfig {
            service: Some(ServiceReference {
                namespace: ns.to_owned(),
                name: object_name(Role::Webhook),
                path: Some(spec.path()),
                port: Some(SERVICE_PORT),
            }),
            ..Default::default()
        },
        rules: Some(
            spec.rules
                .iter()
                .map(|r| RuleWithOperations {
                    api_groups: Some(strings(r.groups)),
                    api_versions: Some(strings(r.versions)),
                    resources: Some(strings(r.resources)),
                    operations: Some(strings(r.operations)),
                    scope: Some("*".into()),
                })
                .collect(),
        ),
        failure_policy: Some(spec.failure_policy.into()),
        match_policy: Some("Equivalent".into()),
        side_effects: "None".into(),
        admission_review_versions: strings(&["v1"]),
        timeout_seconds: Some(TIMEOUT_SECONDS),
        namespace_selector: Some(LabelSelector {
            match_expressions: Some({
                let mut all = vec![
                    requirement(NAMESPACE_NAME_LABEL, "NotIn", &["kube-system", ns]),
                    in_scope,
                ];
                if spec.scoped {
                    // No namespace until the operator has read the cluster's bindings and
                    // recordings and set the real scope.
                    let (key, operator, values) = NamespaceScope::Only(Default::default()).requirement();
                    let values: Vec<&str> = values.iter().map(String::as_str).collect();
                    all.push(requirement(key, operator, &values));
                }
                all
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The same entry as a mutating webhook. Every field is named, so a field k8s-openapi adds to
/// either kind does not go missing here unnoticed.
fn mutating(hook: ValidatingWebhook) -> MutatingWebhook {
    let ValidatingWebhook {
        admission_review_versions,
        client_config,
        failure_policy,
        match_conditions,
        match_policy,
        name,
        namespace_selector,
        object_selector,
        rules,
        side_effects,
        timeout_seconds,
    } = hook;
    MutatingWebhook {
        admission_review_versions,
        client_config,
        failure_policy,
        match_conditions,
        match_policy,
        name,
        namespace_selector,
        object_selector,
        // Called again when a later webhook changes the pod; the patches are idempotent.
        reinvocation_policy: Some("IfNeeded".into()),
        rules,
        side_effects,
        timeout_seconds,
    }
}

fn requirement(key: &str, operator: &str, values: &[&str]) -> LabelSelectorRequirement {
    LabelSelectorRequirement {
        key: key.to_owned(),
        operator: operator.to_owned(),
        values: Some(strings(values)),
    }
}
