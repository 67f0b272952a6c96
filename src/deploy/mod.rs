//! `phylax manifests`: everything `kubectl apply -f -` needs to run Phylax in a cluster.
//!
//! One file per role holds its workload and, beside it, its RBAC: each role is granted only what
//! its code uses today, and each feature adds its own rules next to the code that needs them. The
//! KMS plugin is not here: it runs as a static pod or systemd unit on control-plane nodes, outside
//! the cluster's own workloads.
//!
//! Every object is a typed k8s-openapi struct, so a misspelt field does not compile. `phylax
//! manifests` exists in every build, so nothing here depends on a role's feature.

mod admission_policy;
mod node_agent;
mod operator;
mod webhook;

use std::collections::BTreeMap;

use clap::Args;
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EnvVar, EnvVarSource, HTTPGetAction, Namespace,
    ObjectFieldSelector, PodSecurityContext, PodSpec, PodTemplateSpec, Probe, ResourceRequirements,
    SeccompProfile, SecurityContext, Service, ServiceAccount, ServicePort, ServiceSpec,
};
use k8s_openapi::api::rbac::v1::{
    ClusterRole, ClusterRoleBinding, PolicyRule, Role as RbacRole, RoleBinding, RoleRef, Subject,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Serialize;
use serde_json::Value;

use crate::role::Role;

pub use operator::OPERATOR_LEASE;

#[derive(Debug, Args)]
pub struct ManifestArgs {
    /// Namespace to install into
    #[arg(long, short = 'n', default_value = DEFAULT_NAMESPACE, value_parser = crate::runtime::names::parse_namespace)]
    pub namespace: String,

    /// Container image holding the phylax binary with every role (entrypoint `phylax`; the
    /// containers pass the role as the first argument): the flake's `image`, or kind/Dockerfile
    #[arg(long, value_name = "REF", default_value_t = default_image())]
    pub image: String,

    /// Image for the operator instead of --image, e.g. the flake's `image-operator`
    #[arg(long, value_name = "REF")]
    pub operator_image: Option<String>,

    /// Image for the webhook instead of --image, e.g. the flake's `image-webhook`
    #[arg(long, value_name = "REF")]
    pub webhook_image: Option<String>,

    /// Image for the node agent instead of --image, e.g. the flake's `image-node-agent`
    #[arg(long, value_name = "REF")]
    pub node_agent_image: Option<String>,

    /// Which namespaces and objects Phylax's webhooks review: every one not labelled
    /// `phylax.dev/webhooks=disabled` (opt-out), or only namespaces labelled
    /// `phylax.dev/webhooks=enabled` (opt-in)
    #[arg(long, value_enum, default_value_t = WebhookScope::OptOut)]
    pub webhooks: WebhookScope,

    /// Address range the API server calls webhooks from (repeatable), e.g. the control-plane
    /// nodes' subnet: renders a NetworkPolicy admitting only those to the webhook's HTTPS port.
    /// Where the API server's traffic comes from depends on the cluster (host network, a
    /// konnectivity tunnel, a managed control plane): see README, "Webhook: admission"
    #[arg(long = "webhook-allow-from", value_name = "CIDR", value_parser = parse_cidr)]
    pub webhook_allow_from: Vec<String>,

    /// Add a ValidatingAdmissionPolicy (API servers 1.30+) with which the API server refuses any
    /// Secret the operator writes unless it is Opaque and carries Phylax's managed-by label. Older
    /// API servers refuse the manifests with it
    #[arg(long)]
    pub admission_policy: bool,
}

/// `ADDRESS/PREFIX` for IPv4 or IPv6, normalised (`10.0.0.1/8` is refused: the host bits must be
/// zero, or the range is probably not what was meant).
pub fn parse_cidr(s: &str) -> Result<String, String> {
    let (addr, prefix) = s
        .split_once('/')
        .ok_or_else(|| format!("{s:?} is not ADDRESS/PREFIX (e.g. 10.0.0.0/24 or fd00::/64)"))?;
    let addr: std::net::IpAddr = addr
        .parse()
        .map_err(|e| format!("{s:?}: {addr:?} is not an IP address ({e})"))?;
    let bits: u32 = if addr.is_ipv4() { 32 } else { 128 };
    let prefix: u32 = prefix
        .parse()
        .ok()
        .filter(|p| *p <= bits)
        .ok_or_else(|| format!("{s:?}: the prefix length must be a number from 0 to {bits}"))?;
    let value: u128 = match addr {
        std::net::IpAddr::V4(a) => u32::from(a).into(),
        std::net::IpAddr::V6(a) => a.into(),
    };
    let host_bits = bits - prefix;
    let host_mask = if host_bits == 0 {
        0
    } else {
        (1u128 << host_bits) - 1
    };
    if value & host_mask != 0 {
        return Err(format!(
            "{s:?} has host bits set; the network is {}/{prefix}",
            match addr {
                std::net::IpAddr::V4(_) =>
                    std::net::IpAddr::from(std::net::Ipv4Addr::from((value & !host_mask) as u32)),
                std::net::IpAddr::V6(_) =>
                    std::net::IpAddr::from(std::net::Ipv6Addr::from(value & !host_mask)),
            }
        ));
    }
    Ok(format!("{addr}/{prefix}"))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum WebhookScope {
    OptOut,
    OptIn,
}

pub fn default_image() -> String {
    format!("phylax:{}", crate::version::VERSION)
}

pub const DEFAULT_NAMESPACE: &str = "phylax-system";

/// What `phylax manifests` renders without options.
impl Default for ManifestArgs {
    fn default() -> Self {
        ManifestArgs {
            namespace: DEFAULT_NAMESPACE.to_owned(),
            image: default_image(),
            operator_image: None,
            webhook_image: None,
            node_agent_image: None,
            webhooks: WebhookScope::OptOut,
            webhook_allow_from: Vec::new(),
            admission_policy: false,
        }
    }
}

impl ManifestArgs {
    /// The image a role's containers run: its own option, else `--image`. A per-role image must
    /// hold that role (the flake's `image-<role>`); the KMS plugin is not in the manifests.
    pub fn image_for(&self, role: Role) -> &str {
        let own = match role {
            Role::Operator => self.operator_image.as_deref(),
            Role::Webhook => self.webhook_image.as_deref(),
            Role::NodeAgent => self.node_agent_image.as_deref(),
            _ => None,
        };
        own.unwrap_or(&self.image)
    }
}

const NON_ROOT_UID: i64 = 65532;

/// All objects, in apply order: namespace, CRDs, then each role's identity and RBAC before its
/// workloads.
pub fn manifests(args: &ManifestArgs) -> anyhow::Result<Vec<Value>> {
    let ns = args.namespace.as_str();
    let mut out = Objects::default();
    out.push(&Namespace {
        metadata: ObjectMeta {
            name: Some(ns.to_owned()),
            labels: Some(labels(None)),
            ..Default::default()
        },
        ..Default::default()
    })?;
    for crd in crate::api::crds() {
        out.push(&crd)?;
    }

    out.access(operator::access(ns))?;
    out.push(&operator::vault_auth_account(ns))?;
    out.push(&operator::deployment(ns, args.image_for(Role::Operator)))?;
    if args.admission_policy {
        out.push(&admission_policy::policy(ns))?;
        out.push(&admission_policy::binding())?;
    }
    out.push(&admin_service(ns, Role::Operator))?;

    out.access(webhook::access(ns))?;
    out.push(&webhook::deployment(ns, args.image_for(Role::Webhook)))?;
    out.push(&webhook::service(ns))?;
    if let Some(config) = webhook::validating_configuration(ns, args.webhooks) {
        out.push(&config)?;
    }
    if let Some(config) = webhook::mutating_configuration(ns, args.webhooks) {
        out.push(&config)?;
    }
    out.push(&admin_service(ns, Role::Webhook))?;
    if !args.webhook_allow_from.is_empty() {
        out.push(&webhook::network_policy(ns, &args.webhook_allow_from))?;
    }

    out.access(node_agent::access(ns))?;
    out.push(&node_agent::daemon_set(ns, args.image_for(Role::NodeAgent)))?;
    Ok(out.0)
}

pub fn render(args: &ManifestArgs) -> anyhow::Result<String> {
    crate::api::to_yaml_stream(
        "Phylax: apply with `kubectl apply --server-side -f -`",
        &manifests(args)?,
    )
}

/// The rendered objects: each kind is its own type, the output one list.
#[derive(Default)]
struct Objects(Vec<Value>);

impl Objects {
    fn push(&mut self, object: &impl Serialize) -> serde_json::Result<()> {
        self.0.push(serde_json::to_value(object)?);
        Ok(())
    }

    fn access(&mut self, access: Access) -> serde_json::Result<()> {
        self.push(&access.service_account)?;
        for (role, binding) in &access.roles {
            self.push(role)?;
            self.push(binding)?;
        }
        for (role, binding) in &access.cluster_roles {
            self.push(role)?;
            self.push(binding)?;
        }
        Ok(())
    }
}

/// A role's identity and API access: its ServiceAccount, then each Role and ClusterRole beside the
/// binding that grants it to that ServiceAccount.
struct Access {
    service_account: ServiceAccount,
    roles: Vec<(RbacRole, RoleBinding)>,
    cluster_roles: Vec<(ClusterRole, ClusterRoleBinding)>,
}

fn labels(role: Option<Role>) -> BTreeMap<String, String> {
    let mut l = BTreeMap::from([
        ("app.kubernetes.io/name".to_owned(), "phylax".to_owned()),
        ("app.kubernetes.io/part-of".to_owned(), "phylax".to_owned()),
        (
            crate::runtime::ownership::MANAGED_BY.0.to_owned(),
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
        namespace: Some(ns.to_owned()),
        ..cluster_meta(name, role)
    }
}

/// Metadata of a cluster-scoped object.
fn cluster_meta(name: &str, role: Role) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        labels: Some(labels(Some(role))),
        ..Default::default()
    }
}

fn object_name(role: Role) -> String {
    format!("phylax-{}", role.name())
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

fn service_account(ns: &str, role: Role, uses_api: bool) -> ServiceAccount {
    ServiceAccount {
        metadata: meta(ns, &object_name(role), role),
        automount_service_account_token: Some(uses_api),
        ..Default::default()
    }
}

fn rule(group: &str, resources: &[&str], verbs: &[&str]) -> PolicyRule {
    PolicyRule {
        api_groups: Some(vec![group.to_owned()]),
        resources: Some(strings(resources)),
        verbs: strings(verbs),
        ..Default::default()
    }
}

/// A Role in the role's namespace and its binding to the role's ServiceAccount.
fn namespaced_role(ns: &str, name: &str, role: Role, rules: Vec<PolicyRule>) -> (RbacRole, RoleBinding) {
    (
        RbacRole {
            metadata: meta(ns, name, role),
            rules: Some(rules),
        },
        RoleBinding {
            metadata: meta(ns, name, role),
            role_ref: role_ref("Role", name),
            subjects: Some(vec![subject(ns, role)]),
        },
    )
}

/// A ClusterRole and its binding to the role's ServiceAccount.
fn cluster_role(
    ns: &str,
    name: &str,
    role: Role,
    rules: Vec<PolicyRule>,
) -> (ClusterRole, ClusterRoleBinding) {
    (
        ClusterRole {
            metadata: cluster_meta(name, role),
            rules: Some(rules),
            ..Default::default()
        },
        ClusterRoleBinding {
            metadata: cluster_meta(name, role),
            role_ref: role_ref("ClusterRole", name),
            subjects: Some(vec![subject(ns, role)]),
        },
    )
}

fn role_ref(kind: &str, name: &str) -> RoleRef {
    RoleRef {
        api_group: "rbac.authorization.k8s.io".into(),
        kind: kind.into(),
        name: name.into(),
    }
}

/// The role's ServiceAccount, as a binding names it.
fn subject(ns: &str, role: Role) -> Subject {
    Subject {
        kind: "ServiceAccount".into(),
        name: object_name(role),
        namespace: Some(ns.to_owned()),
        ..Default::default()
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
            ..Default::default()
        })
        .unwrap()
    }

    #[test]
    fn address_ranges_are_checked_and_admitted_only_to_the_https_port() {
        assert_eq!(parse_cidr("10.0.0.0/24"), Ok("10.0.0.0/24".into()));
        assert_eq!(parse_cidr("fd00::/64"), Ok("fd00::/64".into()));
        for (bad, says) in [
            ("10.0.0.0", "ADDRESS/PREFIX"),
            ("10.0.0/24", "not an IP address"),
            ("10.0.0.0/33", "0 to 32"),
            ("10.0.0.1/8", "the network is 10.0.0.0/8"),
        ] {
            let e = parse_cidr(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
        assert!(
            !render_default().iter().any(|o| o["kind"] == "NetworkPolicy"),
            "no policy unless asked: the API server's source is cluster-specific"
        );
        let objects = manifests(&ManifestArgs {
            namespace: "sec".into(),
            image: "reg/phylax:t".into(),
            webhook_allow_from: vec!["192.168.10.0/24".into()],
            admission_policy: true,
            ..Default::default()
        })
        .unwrap();
        let policy = objects.iter().find(|o| o["kind"] == "NetworkPolicy").unwrap();
        let ingress = &policy["spec"]["ingress"];
        assert_eq!(ingress[0]["ports"][0]["port"], "https");
        assert_eq!(
            ingress[0]["from"],
            serde_json::json!([{"ipBlock": {"cidr": "192.168.10.0/24"}}])
        );
        assert_eq!(ingress[1]["ports"][0]["port"], "admin");
        assert_eq!(
            policy["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/component"],
            "webhook"
        );
        // The Secret-write policy: only the operator's writes, only Opaque managed Secrets.
        let vap = objects
            .iter()
            .find(|o| o["kind"] == "ValidatingAdmissionPolicy")
            .unwrap();
        assert_eq!(
            vap["spec"]["matchConditions"][0]["expression"],
            "request.userInfo.username == 'system:serviceaccount:sec:phylax-operator'"
        );
        let rules = vap["spec"]["validations"].to_string();
        assert!(rules.contains("object.type == 'Opaque'"), "{rules}");
        assert!(
            rules.contains("oldObject.metadata.labels['app.kubernetes.io/managed-by'] == 'phylax'"),
            "{rules}"
        );
        assert!(
            rules.contains("'phylax-webhook-ca', 'phylax-webhook-tls'"),
            "{rules}"
        );
        let binding = objects
            .iter()
            .find(|o| o["kind"] == "ValidatingAdmissionPolicyBinding")
            .unwrap();
        assert_eq!(binding["spec"]["policyName"], vap["metadata"]["name"]);
        assert_eq!(binding["spec"]["validationActions"], serde_json::json!(["Deny"]));
        assert!(
            !render_default()
                .iter()
                .any(|o| o["kind"] == "ValidatingAdmissionPolicy"),
            "not rendered unless asked: API servers before 1.30 refuse it"
        );
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
            ..Default::default()
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

    /// Only namespace labels, which administrators control, take objects out of a webhook: a pod
    /// labelled `phylax.dev/webhooks: disabled` must still get its ProfileBinding's profile.
    #[test]
    fn no_webhook_can_be_switched_off_by_a_label_on_the_object() {
        for kind in ["ValidatingWebhookConfiguration", "MutatingWebhookConfiguration"] {
            let objs = render_default();
            let config = objs.iter().find(|o| o["kind"] == kind).expect(kind);
            for hook in config["webhooks"].as_array().unwrap() {
                assert!(hook.get("objectSelector").is_none(), "{kind}: {hook}");
            }
        }
    }

    fn workload<'a>(objs: &'a [Value], name: &str) -> &'a Value {
        objs.iter()
            .find(|o| {
                o["metadata"]["name"] == name
                    && ["Deployment", "DaemonSet"].contains(&o["kind"].as_str().unwrap())
            })
            .unwrap_or_else(|| panic!("no workload {name}"))
    }

    /// A non-root container reads a Secret volume's files (written by the kubelet as root) only
    /// through the group bits and the pod's fsGroup: the webhook's TLS key, today.
    #[test]
    fn non_root_pods_can_read_their_secret_volumes() {
        let objs = render_default();
        let mut secret_volumes = 0;
        for w in objs
            .iter()
            .filter(|o| ["Deployment", "DaemonSet"].contains(&o["kind"].as_str().unwrap()))
        {
            let pod = &w["spec"]["template"]["spec"];
            let c = &pod["containers"][0];
            for v in pod["volumes"].as_array().into_iter().flatten() {
                let Some(secret) = v.get("secret") else { continue };
                secret_volumes += 1;
                let uid = c["securityContext"]["runAsUser"].as_i64().unwrap();
                if uid == 0 {
                    continue;
                }
                let mode = secret["defaultMode"].as_i64().unwrap_or(0o644);
                let name = &w["metadata"]["name"];
                // Owner bits are root's (the kubelet's); others' bits would expose the key.
                assert_eq!(mode & 0o007, 0, "{name}: {v} is readable by others");
                assert_ne!(mode & 0o040, 0, "{name}: {v} is not group-readable");
                assert_eq!(
                    pod["securityContext"]["fsGroup"].as_i64(),
                    c["securityContext"]["runAsGroup"].as_i64(),
                    "{name}: the Secret volume's group must be the container's"
                );
            }
        }
        assert_eq!(secret_volumes, 1, "the webhook's TLS Secret");
        let webhook = workload(&objs, "phylax-webhook");
        assert_eq!(
            webhook["spec"]["template"]["spec"]["securityContext"]["fsGroup"],
            NON_ROOT_UID
        );
    }

    /// One image for every role by default (the all-roles image); a role's own image replaces it
    /// for that role only.
    #[test]
    fn each_role_can_have_its_own_image() {
        let args = |operator: Option<&str>, webhook: Option<&str>, agent: Option<&str>| ManifestArgs {
            namespace: "sec".into(),
            image: "reg/phylax:all".into(),
            operator_image: operator.map(str::to_owned),
            webhook_image: webhook.map(str::to_owned),
            node_agent_image: agent.map(str::to_owned),
            ..Default::default()
        };
        let image = |objs: &[Value], name: &str| {
            workload(objs, name)["spec"]["template"]["spec"]["containers"][0]["image"]
                .as_str()
                .unwrap()
                .to_owned()
        };
        let all = manifests(&args(None, None, None)).unwrap();
        for name in ["phylax-operator", "phylax-webhook", "phylax-node-agent"] {
            assert_eq!(image(&all, name), "reg/phylax:all");
        }
        let one = manifests(&args(None, Some("reg/phylax-webhook:1"), None)).unwrap();
        assert_eq!(image(&one, "phylax-webhook"), "reg/phylax-webhook:1");
        assert_eq!(image(&one, "phylax-operator"), "reg/phylax:all");
        assert_eq!(image(&one, "phylax-node-agent"), "reg/phylax:all");
        let each = manifests(&args(Some("o:1"), Some("w:1"), Some("n:1"))).unwrap();
        assert_eq!(
            ["phylax-operator", "phylax-webhook", "phylax-node-agent"].map(|n| image(&each, n)),
            ["o:1", "w:1", "n:1"]
        );
        // The container still names its role first: a per-role image's entrypoint is `phylax`.
        assert_eq!(
            workload(&each, "phylax-webhook")["spec"]["template"]["spec"]["containers"][0]["args"][0],
            "webhook"
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
                assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
                assert_eq!(c["securityContext"]["capabilities"]["drop"][0], "ALL");
            }
            assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
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
            // The Vault login account's tokens are requested one at a time, never mounted, and
            // no role is bound to it.
            let mounted = name != operator::VAULT_AUTH_ACCOUNT;
            assert_eq!(sa["automountServiceAccountToken"], mounted, "{name}");
        }
        assert!(
            objs.iter()
                .filter(|o| o["kind"] == "RoleBinding" || o["kind"] == "ClusterRoleBinding")
                .all(|b| b["subjects"][0]["name"] != operator::VAULT_AUTH_ACCOUNT)
        );
        // The operator may mint tokens for that account alone.
        let vault = objs
            .iter()
            .find(|o| o["metadata"]["name"] == "phylax-operator-vault-auth" && o["kind"] == "Role")
            .expect("the operator's vault-auth Role");
        assert_eq!(
            vault["rules"],
            serde_json::json!([{"apiGroups": [""], "resources": ["serviceaccounts/token"],
                                "verbs": ["create"], "resourceNames": [operator::VAULT_AUTH_ACCOUNT]}])
        );
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
        let agent_pods = role("phylax-webhook-node-agents");
        assert_eq!(
            agent_pods,
            serde_json::json!([{"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "watch"]}])
        );
        let agent = role("phylax-node-agent");
        for rule in agent.as_array().unwrap() {
            let group = rule["apiGroups"][0].as_str().unwrap();
            assert!(
                group == "profiles.phylax.dev" || rule["resources"] == serde_json::json!(["pods"]),
                "{rule}"
            );
        }
        assert_eq!(roles.len(), 9);
    }
}
