//! `phylax manifests`: everything `kubectl apply -f -` needs to run Phylax in a cluster.
//!
//! RBAC grants each role only what its code uses today; each feature adds its own rules next to
//! the code that needs them. The KMS plugin is not here: it runs as a static pod or systemd unit on
//! control-plane nodes, outside the cluster's own workloads.

use std::collections::BTreeMap;

use clap::Args;
use k8s_openapi::api::apps::v1::{DaemonSet, DaemonSetSpec, Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EnvVar, EnvVarSource, HTTPGetAction, HostPathVolumeSource,
    Namespace, ObjectFieldSelector, PodSecurityContext, PodSpec, PodTemplateSpec, Probe,
    ResourceRequirements, SeccompProfile, SecretVolumeSource, SecurityContext, Service, ServiceAccount,
    ServicePort, ServiceSpec, Toleration, Volume, VolumeMount,
};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role as RbacRole, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::Value;

use crate::role::Role;

#[derive(Debug, Args)]
pub struct ManifestArgs {
    /// Namespace to install into
    #[arg(long, short = 'n', default_value = "phylax-system", value_parser = crate::runtime::names::parse_namespace)]
    pub namespace: String,

    /// Container image holding the phylax binary (entrypoint `phylax`)
    #[arg(long, value_name = "REF", default_value_t = default_image())]
    pub image: String,

    /// Which namespaces and objects Phylax's webhooks review: every one not labelled
    /// `phylax.dev/webhooks=disabled` (opt-out), or only namespaces labelled
    /// `phylax.dev/webhooks=enabled` (opt-in)
    #[arg(long, value_enum, default_value_t = WebhookScope::OptOut)]
    pub webhooks: WebhookScope,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum WebhookScope {
    OptOut,
    OptIn,
}

pub fn default_image() -> String {
    format!("phylax:{}", crate::version::VERSION)
}

/// The lease the operator replicas elect their leader on; the operator's `--lease-name` default.
pub const OPERATOR_LEASE: &str = "phylax-operator";
const NON_ROOT_UID: i64 = 65532;

/// All objects, in apply order: namespace, CRDs, identities and RBAC, then workloads.
pub fn manifests(args: &ManifestArgs) -> anyhow::Result<Vec<Value>> {
    let ns = args.namespace.as_str();
    let mut out: Vec<Value> = Vec::new();
    let mut push = |v: serde_json::Result<Value>| -> anyhow::Result<()> {
        out.push(v?);
        Ok(())
    };
    push(serde_json::to_value(Namespace {
        metadata: ObjectMeta {
            name: Some(ns.to_owned()),
            labels: Some(labels(None)),
            ..Default::default()
        },
        ..Default::default()
    }))?;
    for crd in super::crds() {
        push(serde_json::to_value(crd))?;
    }

    // operator: elects its leader on one Lease in its own namespace.
    push(serde_json::to_value(service_account(ns, Role::Operator, true)))?;
    push(serde_json::to_value(RbacRole {
        metadata: meta(ns, "phylax-operator-leader-election", Role::Operator),
        rules: Some(vec![
            rule("coordination.k8s.io", "leases", &["create"], None),
            rule(
                "coordination.k8s.io",
                "leases",
                &["get", "update"],
                Some(OPERATOR_LEASE),
            ),
        ]),
    }))?;
    push(serde_json::to_value(role_binding(
        ns,
        "phylax-operator-leader-election",
        Role::Operator,
    )))?;
    // operator: the webhook's CA and serving certificate in its own namespace, and the caBundle
    // of Phylax's webhook configurations.
    push(serde_json::to_value(RbacRole {
        metadata: meta(ns, "phylax-operator-webhook-certs", Role::Operator),
        rules: Some(vec![
            rule("", "secrets", &["create"], None),
            PolicyRule {
                resource_names: Some(WEBHOOK_SECRETS.iter().map(|n| (*n).to_owned()).collect()),
                ..rule("", "secrets", &["get", "patch"], None)
            },
        ]),
    }))?;
    push(serde_json::to_value(role_binding(
        ns,
        "phylax-operator-webhook-certs",
        Role::Operator,
    )))?;
    push(Ok(serde_json::json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": "phylax-operator-webhook-ca-bundle", "labels": labels(Some(Role::Operator))},
        "rules": [{
            "apiGroups": ["admissionregistration.k8s.io"],
            "resources": ["validatingwebhookconfigurations", "mutatingwebhookconfigurations"],
            "verbs": ["get", "patch"],
            "resourceNames": ["phylax"],
        }],
    })))?;
    push(Ok(serde_json::json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": "phylax-operator-webhook-ca-bundle", "labels": labels(Some(Role::Operator))},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                    "name": "phylax-operator-webhook-ca-bundle"},
        "subjects": [{"kind": "ServiceAccount", "name": object_name(Role::Operator), "namespace": ns}],
    })))?;
    // operator: secret sync. It watches pods (metadata only), workloads and namespaces across the
    // cluster, reads SecretProviders, and writes Secrets in the namespace of the pod that asks:
    // get/create/patch only (it never lists Secrets), and events on the pods and workloads.
    push(Ok(serde_json::json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": "phylax-operator-secret-sync", "labels": labels(Some(Role::Operator))},
        "rules": [
            {"apiGroups": [""], "resources": ["pods", "namespaces"], "verbs": ["list", "watch"]},
            {"apiGroups": ["apps"], "resources": ["deployments", "statefulsets", "daemonsets"], "verbs": ["list", "watch"]},
            {"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["list", "watch"]},
            {"apiGroups": ["secrets.phylax.dev"], "resources": ["secretproviders"], "verbs": ["list", "watch"]},
            {"apiGroups": ["secrets.phylax.dev"], "resources": ["secretproviders/status"], "verbs": ["patch"]},
            {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "create", "patch"]},
            {"apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch"]},
        ],
    })))?;
    push(Ok(serde_json::json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": "phylax-operator-secret-sync", "labels": labels(Some(Role::Operator))},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                    "name": "phylax-operator-secret-sync"},
        "subjects": [{"kind": "ServiceAccount", "name": object_name(Role::Operator), "namespace": ns}],
    })))?;
    // operator: profiles. It aggregates the node agents' reports into each profile's status,
    // and removes the finalizers and reports of nodes that are gone.
    for obj in cluster_role(
        ns,
        "phylax-operator-profiles",
        Role::Operator,
        serde_json::json!([
            {"apiGroups": ["profiles.phylax.dev"], "resources": ["seccompprofiles", "apparmorprofiles"], "verbs": ["list", "watch", "patch"]},
            {"apiGroups": ["profiles.phylax.dev"], "resources": ["seccompprofiles/status", "apparmorprofiles/status"], "verbs": ["patch"]},
            {"apiGroups": ["profiles.phylax.dev"], "resources": ["profilenodestatuses"], "verbs": ["list", "watch", "delete"]},
            {"apiGroups": [""], "resources": ["nodes"], "verbs": ["list", "watch"]},
        ]),
    ) {
        push(Ok(obj))?;
    }
    push(serde_json::to_value(deployment(
        ns,
        &args.image,
        Role::Operator,
        2,
        &["--leader-elect=true"],
    )))?;
    push(serde_json::to_value(admin_service(ns, Role::Operator)))?;

    // webhook: reads ProfileBindings, ProfileRecordings and the profiles' states to bind
    // profiles to new pods. Its serving certificate comes from the Secret `phylax-webhook-tls`
    // (kubernetes.io/tls), re-read when the kubelet updates the volume.
    push(serde_json::to_value(service_account(ns, Role::Webhook, true)))?;
    for obj in cluster_role(
        ns,
        "phylax-webhook-profiles",
        Role::Webhook,
        serde_json::json!([
            {"apiGroups": ["profiles.phylax.dev"],
             "resources": ["profilebindings", "profilerecordings", "seccompprofiles", "apparmorprofiles"],
             "verbs": ["list", "watch"]},
        ]),
    ) {
        push(Ok(obj))?;
    }
    push(serde_json::to_value(webhook_deployment(ns, &args.image)))?;
    push(serde_json::to_value(webhook_service(ns)))?;
    for mutating in [false, true] {
        if let Some(config) = webhook_configuration(ns, args.webhooks, mutating) {
            push(Ok(config))?;
        }
    }
    push(serde_json::to_value(admin_service(ns, Role::Webhook)))?;

    // node-agent: one per node, including control-plane nodes. It watches its node's pods,
    // installs profiles (a finalizer per node), reports in ProfileNodeStatus objects, and writes
    // the SeccompProfiles recordings produce.
    push(serde_json::to_value(service_account(ns, Role::NodeAgent, true)))?;
    for obj in cluster_role(
        ns,
        "phylax-node-agent",
        Role::NodeAgent,
        serde_json::json!([
            {"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "watch"]},
            {"apiGroups": ["profiles.phylax.dev"], "resources": ["seccompprofiles", "apparmorprofiles"], "verbs": ["get", "list", "watch", "patch"]},
            {"apiGroups": ["profiles.phylax.dev"], "resources": ["seccompprofiles"], "verbs": ["create", "update"]},
            {"apiGroups": ["profiles.phylax.dev"], "resources": ["profilenodestatuses"], "verbs": ["create", "patch", "delete"]},
            {"apiGroups": ["profiles.phylax.dev"], "resources": ["profilenodestatuses/status"], "verbs": ["patch"]},
        ]),
    ) {
        push(Ok(obj))?;
    }
    push(serde_json::to_value(node_agent(ns, &args.image)))?;
    Ok(out)
}

pub fn render(args: &ManifestArgs) -> anyhow::Result<String> {
    super::to_yaml_stream(
        "Phylax: apply with `kubectl apply --server-side -f -`",
        &manifests(args)?,
    )
}

fn labels(role: Option<Role>) -> BTreeMap<String, String> {
    let mut l = BTreeMap::from([
        ("app.kubernetes.io/name".to_owned(), "phylax".to_owned()),
        ("app.kubernetes.io/part-of".to_owned(), "phylax".to_owned()),
        (
            "app.kubernetes.io/managed-by".to_owned(),
            "phylax-manifests".to_owned(),
        ),
    ]);
    if let Some(role) = role {
        l.insert("app.kubernetes.io/component".to_owned(), role.name().to_owned());
    }
    l
}

fn selector_labels(role: Role) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_owned(), "phylax".to_owned()),
        ("app.kubernetes.io/component".to_owned(), role.name().to_owned()),
    ])
}

fn meta(ns: &str, name: &str, role: Role) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        namespace: Some(ns.to_owned()),
        labels: Some(labels(Some(role))),
        ..Default::default()
    }
}

fn object_name(role: Role) -> String {
    format!("phylax-{}", role.name())
}

fn service_account(ns: &str, role: Role, uses_api: bool) -> ServiceAccount {
    ServiceAccount {
        metadata: meta(ns, &object_name(role), role),
        automount_service_account_token: Some(uses_api),
        ..Default::default()
    }
}

fn rule(group: &str, resource: &str, verbs: &[&str], name: Option<&str>) -> PolicyRule {
    PolicyRule {
        api_groups: Some(vec![group.to_owned()]),
        resources: Some(vec![resource.to_owned()]),
        verbs: verbs.iter().map(|v| (*v).to_owned()).collect(),
        resource_names: name.map(|n| vec![n.to_owned()]),
        ..Default::default()
    }
}

/// A ClusterRole and its binding to the role's ServiceAccount.
fn cluster_role(ns: &str, name: &str, role: Role, rules: Value) -> [Value; 2] {
    [
        serde_json::json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": name, "labels": labels(Some(role))},
            "rules": rules,
        }),
        serde_json::json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": name, "labels": labels(Some(role))},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
            "subjects": [{"kind": "ServiceAccount", "name": object_name(role), "namespace": ns}],
        }),
    ]
}

fn role_binding(ns: &str, name: &str, role: Role) -> RoleBinding {
    RoleBinding {
        metadata: meta(ns, name, role),
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "Role".into(),
            name: name.into(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: object_name(role),
            namespace: Some(ns.to_owned()),
            ..Default::default()
        }]),
    }
}

fn field_env(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.to_owned(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn probe(path: &str, period: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_owned()),
            port: IntOrString::String("admin".into()),
            ..Default::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(3),
        ..Default::default()
    }
}

fn container(image: &str, role: Role, extra_args: &[&str]) -> Container {
    let mut args = vec![role.name().to_owned(), "--log-format=json".to_owned()];
    args.extend(extra_args.iter().map(|a| (*a).to_owned()));
    let port = i32::from(role.default_admin_addr().port());
    Container {
        name: role.name().to_owned(),
        image: Some(image.to_owned()),
        image_pull_policy: Some("IfNotPresent".into()),
        args: Some(args),
        env: Some(vec![
            field_env("POD_NAMESPACE", "metadata.namespace"),
            field_env("POD_NAME", "metadata.name"),
            EnvVar {
                name: "RUST_LOG".into(),
                value: Some("info".into()),
                ..Default::default()
            },
        ]),
        ports: Some(vec![ContainerPort {
            name: Some("admin".into()),
            container_port: port,
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
        liveness_probe: Some(probe("/livez", 10)),
        readiness_probe: Some(probe("/readyz", 5)),
        resources: Some(ResourceRequirements {
            requests: Some(BTreeMap::from([
                ("cpu".to_owned(), Quantity("20m".into())),
                ("memory".to_owned(), Quantity("32Mi".into())),
            ])),
            limits: Some(BTreeMap::from([("memory".to_owned(), Quantity("256Mi".into()))])),
            ..Default::default()
        }),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            run_as_user: Some(NON_ROOT_UID),
            run_as_group: Some(NON_ROOT_UID),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn pod_template(image: &str, role: Role, extra_args: &[&str]) -> PodTemplateSpec {
    let mut template_labels = labels(Some(role));
    template_labels.extend(selector_labels(role));
    PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(template_labels),
            ..Default::default()
        }),
        spec: Some(PodSpec {
            service_account_name: Some(object_name(role)),
            containers: vec![container(image, role, extra_args)],
            termination_grace_period_seconds: Some(30),
            enable_service_links: Some(false),
            security_context: Some(PodSecurityContext {
                run_as_non_root: Some(true),
                seccomp_profile: Some(SeccompProfile {
                    type_: "RuntimeDefault".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    }
}

fn deployment(ns: &str, image: &str, role: Role, replicas: i32, extra_args: &[&str]) -> Deployment {
    Deployment {
        metadata: meta(ns, &object_name(role), role),
        spec: Some(DeploymentSpec {
            replicas: Some(replicas),
            selector: LabelSelector {
                match_labels: Some(selector_labels(role)),
                ..Default::default()
            },
            template: pod_template(image, role, extra_args),
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub const WEBHOOK_TLS_SECRET: &str = "phylax-webhook-tls";
/// The Secrets the operator keeps for the webhook: its CA and the serving certificate.
const WEBHOOK_SECRETS: [&str; 2] = ["phylax-webhook-ca", WEBHOOK_TLS_SECRET];
const WEBHOOK_TLS_DIR: &str = "/etc/phylax/webhook-tls";
const WEBHOOK_PORT: i32 = 8443;

fn webhook_deployment(ns: &str, image: &str) -> Deployment {
    let role = Role::Webhook;
    let listen = format!("--listen-addr=0.0.0.0:{WEBHOOK_PORT}");
    let tls_dir = format!("--tls-dir={WEBHOOK_TLS_DIR}");
    let mut d = deployment(ns, image, role, 2, &[&listen, &tls_dir]);
    if let Some(spec) = d.spec.as_mut().and_then(|s| s.template.spec.as_mut()) {
        spec.volumes = Some(vec![Volume {
            name: "tls".into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(WEBHOOK_TLS_SECRET.into()),
                default_mode: Some(0o440),
                ..Default::default()
            }),
            ..Default::default()
        }]);
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

/// The Validating- or MutatingWebhookConfiguration `phylax` for every webhook of that kind,
/// called through the `phylax-webhook` Service. It leaves out kube-system, Phylax's own namespace
/// and anything labelled `phylax.dev/webhooks: disabled`. Its `caBundle` is filled in at run time
/// (the operator, or cert-manager's `cert-manager.io/inject-ca-from` annotation if you prefer).
fn webhook_configuration(ns: &str, scope: WebhookScope, mutating: bool) -> Option<Value> {
    use super::webhooks::{OPT_IN_VALUE, OPT_OUT_LABEL, OPT_OUT_VALUE, TIMEOUT_SECONDS, WEBHOOKS};
    let in_scope = match scope {
        WebhookScope::OptOut => {
            serde_json::json!({"key": OPT_OUT_LABEL, "operator": "NotIn", "values": [OPT_OUT_VALUE]})
        }
        WebhookScope::OptIn => {
            serde_json::json!({"key": OPT_OUT_LABEL, "operator": "In", "values": [OPT_IN_VALUE]})
        }
    };
    let hooks: Vec<Value> = WEBHOOKS
        .iter()
        .filter(|w| w.mutating == mutating)
        .map(|w| {
            let rules: Vec<Value> = w
                .rules
                .iter()
                .map(|r| {
                    serde_json::json!({
                        "apiGroups": r.groups, "apiVersions": r.versions,
                        "resources": r.resources, "operations": r.operations, "scope": "*",
                    })
                })
                .collect();
            let mut hook = serde_json::json!({
                "name": format!("{}.phylax.dev", w.name),
                "clientConfig": {"service": {"namespace": ns, "name": object_name(Role::Webhook),
                                             "path": w.path(), "port": 443}},
                "rules": rules,
                "failurePolicy": w.failure_policy,
                "matchPolicy": "Equivalent",
                "sideEffects": "None",
                "admissionReviewVersions": ["v1"],
                "timeoutSeconds": TIMEOUT_SECONDS,
                "namespaceSelector": {"matchExpressions": [
                    {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["kube-system", ns]},
                    in_scope,
                ]},
                "objectSelector": {"matchExpressions": [
                    {"key": OPT_OUT_LABEL, "operator": "NotIn", "values": [OPT_OUT_VALUE]},
                ]},
            });
            if mutating {
                // Called again when a later webhook changes the pod; the patches are idempotent.
                hook["reinvocationPolicy"] = "IfNeeded".into();
            }
            hook
        })
        .collect();
    if hooks.is_empty() {
        return None;
    }
    Some(serde_json::json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": if mutating { "MutatingWebhookConfiguration" } else { "ValidatingWebhookConfiguration" },
        "metadata": {"name": "phylax", "labels": labels(Some(Role::Webhook))},
        "webhooks": hooks,
    }))
}

/// The Service the API server calls the webhooks through.
fn webhook_service(ns: &str) -> Service {
    let role = Role::Webhook;
    Service {
        metadata: meta(ns, &object_name(role), role),
        spec: Some(ServiceSpec {
            selector: Some(selector_labels(role)),
            ports: Some(vec![ServicePort {
                name: Some("https".into()),
                port: 443,
                target_port: Some(IntOrString::String("https".into())),
                protocol: Some("TCP".into()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn node_agent(ns: &str, image: &str) -> DaemonSet {
    let role = Role::NodeAgent;
    let mut template = pod_template(
        image,
        role,
        &[
            "--kubelet-root=/var/lib/kubelet",
            "--audit-source=/dev/kmsg",
            "--proc-root=/host/proc",
        ],
    );
    if let Some(spec) = template.spec.as_mut() {
        spec.tolerations = Some(vec![Toleration {
            operator: Some("Exists".into()),
            ..Default::default()
        }]);
        // Root without capabilities owns the kubelet's root-owned seccomp directory; CAP_SYSLOG
        // reads /dev/kmsg. Loading AppArmor profiles would also need CAP_MAC_ADMIN and
        // apparmor_parser in the image: without them the agent reports AppArmor unsupported.
        if let Some(sc) = spec.security_context.as_mut() {
            sc.run_as_non_root = Some(false);
        }
        let host = |name: &str, path: &str, kind: &str| Volume {
            name: name.into(),
            host_path: Some(HostPathVolumeSource {
                path: path.into(),
                type_: Some(kind.into()),
            }),
            ..Default::default()
        };
        spec.volumes = Some(vec![
            host("seccomp", "/var/lib/kubelet/seccomp", "DirectoryOrCreate"),
            host("kmsg", "/dev/kmsg", "CharDevice"),
            host("proc", "/proc", "Directory"),
        ]);
        let c = &mut spec.containers[0];
        if let Some(env) = c.env.as_mut() {
            env.push(field_env("NODE_NAME", "spec.nodeName"));
        }
        c.volume_mounts = Some(vec![
            VolumeMount {
                name: "seccomp".into(),
                mount_path: "/var/lib/kubelet/seccomp".into(),
                ..Default::default()
            },
            VolumeMount {
                name: "kmsg".into(),
                mount_path: "/dev/kmsg".into(),
                read_only: Some(true),
                ..Default::default()
            },
            VolumeMount {
                name: "proc".into(),
                mount_path: "/host/proc".into(),
                read_only: Some(true),
                ..Default::default()
            },
        ]);
        if let Some(sc) = c.security_context.as_mut() {
            sc.run_as_non_root = Some(false);
            sc.run_as_user = Some(0);
            sc.run_as_group = Some(0);
            sc.capabilities = Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                add: Some(vec!["SYSLOG".into()]),
            });
        }
    }
    DaemonSet {
        metadata: meta(ns, &object_name(role), role),
        spec: Some(DaemonSetSpec {
            selector: LabelSelector {
                match_labels: Some(selector_labels(role)),
                ..Default::default()
            },
            template,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A Service in front of a role's admin port, for metrics scraping.
fn admin_service(ns: &str, role: Role) -> Service {
    Service {
        metadata: meta(ns, &format!("{}-admin", object_name(role)), role),
        spec: Some(ServiceSpec {
            selector: Some(selector_labels(role)),
            ports: Some(vec![ServicePort {
                name: Some("admin".into()),
                port: i32::from(role.default_admin_addr().port()),
                target_port: Some(IntOrString::String("admin".into())),
                protocol: Some("TCP".into()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render_default() -> Vec<Value> {
        manifests(&ManifestArgs {
            namespace: "sec".into(),
            image: "reg/phylax:t".into(),
            webhooks: WebhookScope::OptOut,
        })
        .unwrap()
    }

    #[test]
    fn every_namespaced_object_is_in_the_chosen_namespace() {
        for obj in render_default() {
            let kind = obj["kind"].as_str().unwrap();
            if matches!(
                kind,
                "Namespace"
                    | "CustomResourceDefinition"
                    | "ValidatingWebhookConfiguration"
                    | "MutatingWebhookConfiguration"
                    | "ClusterRole"
                    | "ClusterRoleBinding"
            ) {
                continue;
            }
            assert_eq!(obj["metadata"]["namespace"], "sec", "{kind}");
        }
    }

    #[test]
    fn webhooks_skip_system_namespaces_and_call_the_service() {
        let objs = render_default();
        let config = objs
            .iter()
            .find(|o| o["kind"] == "ValidatingWebhookConfiguration")
            .expect("a validating webhook configuration");
        for hook in config["webhooks"].as_array().unwrap() {
            let excluded = &hook["namespaceSelector"]["matchExpressions"][0]["values"];
            assert_eq!(excluded, &serde_json::json!(["kube-system", "sec"]));
            assert_eq!(hook["clientConfig"]["service"]["namespace"], "sec");
            assert_eq!(hook["clientConfig"]["service"]["name"], "phylax-webhook");
            assert!(hook["timeoutSeconds"].as_i64().unwrap() <= 5);
            assert_eq!(hook["sideEffects"], "None");
            assert_eq!(
                hook["namespaceSelector"]["matchExpressions"][1]["operator"],
                "NotIn"
            );
        }
        let opt_in = manifests(&ManifestArgs {
            namespace: "sec".into(),
            image: "reg/phylax:t".into(),
            webhooks: WebhookScope::OptIn,
        })
        .unwrap();
        let config = opt_in
            .iter()
            .find(|o| o["kind"] == "ValidatingWebhookConfiguration")
            .unwrap();
        let selector = &config["webhooks"][0]["namespaceSelector"]["matchExpressions"][1];
        assert_eq!(
            selector,
            &serde_json::json!({"key": "phylax.dev/webhooks", "operator": "In", "values": ["enabled"]})
        );
    }

    #[test]
    fn workloads_run_as_non_root_with_read_only_root() {
        let objs = render_default();
        let workloads: Vec<_> = objs
            .iter()
            .filter(|o| ["Deployment", "DaemonSet"].contains(&o["kind"].as_str().unwrap()))
            .collect();
        assert_eq!(workloads.len(), 3);
        for w in workloads {
            let c = &w["spec"]["template"]["spec"]["containers"][0];
            assert_eq!(c["image"], "reg/phylax:t");
            if w["kind"] == "DaemonSet" {
                // The node agent writes into the kubelet's root-owned directory as root, with no
                // capability but CAP_SYSLOG (for /dev/kmsg), and is never privileged.
                assert_eq!(c["securityContext"]["runAsUser"], 0);
                assert_eq!(
                    c["securityContext"]["capabilities"]["add"],
                    serde_json::json!(["SYSLOG"])
                );
                assert!(c["securityContext"].get("privileged").is_none());
            } else {
                assert_eq!(c["securityContext"]["runAsNonRoot"], true);
            }
            assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
            assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
            assert_eq!(c["securityContext"]["capabilities"]["drop"][0], "ALL");
            let role = c["args"][0].as_str().unwrap();
            assert!(Role::from_name(role).is_some(), "{role}");
            assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
        }
    }

    #[test]
    fn each_role_gets_only_the_api_access_it_uses() {
        let objs = render_default();
        for sa in objs.iter().filter(|o| o["kind"] == "ServiceAccount") {
            let name = sa["metadata"]["name"].as_str().unwrap();
            assert_eq!(sa["automountServiceAccountToken"], true, "{name}");
        }
        let roles: Vec<_> = objs
            .iter()
            .filter(|o| o["kind"] == "Role" || o["kind"] == "ClusterRole")
            .collect();
        // Only the operator touches Secrets.
        for r in &roles {
            let name = r["metadata"]["name"].as_str().unwrap();
            let touches_secrets = r["rules"]
                .as_array()
                .unwrap()
                .iter()
                .any(|rule| rule["resources"].as_array().unwrap().contains(&"secrets".into()));
            assert!(!touches_secrets || name.starts_with("phylax-operator-"), "{name}");
        }
        let role =
            |name: &str| roles.iter().find(|r| r["metadata"]["name"] == name).unwrap()["rules"].clone();
        // get/update are pinned to the one lease; create cannot be pinned by name.
        let lease = role("phylax-operator-leader-election");
        assert_eq!(lease[1]["resourceNames"][0], OPERATOR_LEASE);
        assert!(
            lease
                .as_array()
                .unwrap()
                .iter()
                .all(|r| r["resources"][0] == "leases")
        );
        // Secrets: only its two webhook Secrets beyond create; webhook configurations: only Phylax's.
        let secrets = role("phylax-operator-webhook-certs");
        assert_eq!(
            secrets[1]["resourceNames"],
            serde_json::json!(["phylax-webhook-ca", "phylax-webhook-tls"])
        );
        let bundle = role("phylax-operator-webhook-ca-bundle");
        assert_eq!(bundle[0]["resourceNames"], serde_json::json!(["phylax"]));
        // Secret sync writes Secrets anywhere but can neither list nor watch nor delete them.
        let sync = role("phylax-operator-secret-sync");
        let on_secrets: Vec<_> = sync
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["resources"].as_array().unwrap().contains(&"secrets".into()))
            .collect();
        assert_eq!(on_secrets.len(), 1);
        assert_eq!(
            on_secrets[0]["verbs"],
            serde_json::json!(["get", "create", "patch"])
        );
        // The webhook only reads; the node agent writes profiles and its reports, nothing else.
        let webhook = role("phylax-webhook-profiles");
        assert_eq!(webhook[0]["verbs"], serde_json::json!(["list", "watch"]));
        let agent = role("phylax-node-agent");
        for rule in agent.as_array().unwrap() {
            let group = rule["apiGroups"][0].as_str().unwrap();
            assert!(
                group == "profiles.phylax.dev" || rule["resources"] == serde_json::json!(["pods"]),
                "{rule}"
            );
        }
        assert_eq!(roles.len(), 7);
    }
}
