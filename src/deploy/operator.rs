//! The operator: secret sync, the profiles' status and the webhook's certificates, with one leader
//! among its replicas.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::PolicyRule;

use super::webhook::{CONFIGURATION_NAME, WEBHOOK_SECRETS};
use super::{Access, cluster_role, meta, namespaced_role, rule, service_account, strings};

/// The ServiceAccount whose short-lived tokens log the operator in to Vault
/// (`--vault-auth-service-account`'s default). It has no RBAC: a token sent to a wrong Vault
/// address is worth nothing in the cluster.
pub const VAULT_AUTH_ACCOUNT: &str = "phylax-vault-auth";

/// The Vault login identity: no token mounted anywhere, no role bound.
pub(super) fn vault_auth_account(ns: &str) -> ServiceAccount {
    ServiceAccount {
        metadata: meta(ns, VAULT_AUTH_ACCOUNT, Role::Operator),
        automount_service_account_token: Some(false),
        ..Default::default()
    }
}
use crate::role::Role;

/// The lease the operator replicas elect their leader on; the operator's `--lease-name` default.
pub use crate::runtime::ownership::OPERATOR_LEASE;

pub(super) fn access(ns: &str) -> Access {
    let role = Role::Operator;
    Access {
        service_account: service_account(ns, role, true),
        roles: vec![
            // It elects its leader on one Lease in its own namespace.
            namespaced_role(
                ns,
                "phylax-operator-leader-election",
                role,
                vec![
                    rule("coordination.k8s.io", &["leases"], &["create"]),
                    PolicyRule {
                        resource_names: Some(strings(&[OPERATOR_LEASE])),
                        ..rule("coordination.k8s.io", &["leases"], &["get", "update"])
                    },
                ],
            ),
            // Short-lived tokens of the Vault login account, and of no other.
            namespaced_role(
                ns,
                "phylax-operator-vault-auth",
                role,
                vec![PolicyRule {
                    resource_names: Some(strings(&[VAULT_AUTH_ACCOUNT])),
                    ..rule("", &["serviceaccounts/token"], &["create"])
                }],
            ),
            // The webhook's CA and serving certificate in its own namespace...
            namespaced_role(
                ns,
                "phylax-operator-webhook-certs",
                role,
                vec![
                    rule("", &["secrets"], &["create"]),
                    PolicyRule {
                        resource_names: Some(strings(&WEBHOOK_SECRETS)),
                        ..rule("", &["secrets"], &["get", "patch"])
                    },
                ],
            ),
        ],
        cluster_roles: vec![
            // ...and the caBundle of Phylax's webhook configurations.
            cluster_role(
                ns,
                "phylax-operator-webhook-ca-bundle",
                role,
                vec![PolicyRule {
                    resource_names: Some(strings(&[CONFIGURATION_NAME])),
                    ..rule(
                        "admissionregistration.k8s.io",
                        &["validatingwebhookconfigurations", "mutatingwebhookconfigurations"],
                        &["get", "patch"],
                    )
                }],
            ),
            // Secret sync. It watches pods (metadata only), workloads and namespaces across the
            // cluster, reads SecretProviders, and writes Secrets in the namespace of the pod that
            // asks: get/create/patch only (it never lists Secrets), and events on the pods and
            // workloads.
            cluster_role(
                ns,
                "phylax-operator-secret-sync",
                role,
                vec![
                    rule("", &["pods", "namespaces"], &["list", "watch"]),
                    rule(
                        "apps",
                        &["deployments", "statefulsets", "daemonsets"],
                        &["list", "watch"],
                    ),
                    rule("batch", &["jobs"], &["list", "watch"]),
                    rule("secrets.phylax.dev", &["secretproviders"], &["list", "watch"]),
                    rule("secrets.phylax.dev", &["secretproviders/status"], &["patch"]),
                    rule("", &["secrets"], &["get", "create", "patch"]),
                    rule("events.k8s.io", &["events"], &["create", "patch"]),
                ],
            ),
            // Profiles. It aggregates the node agents' reports into each profile's status, and
            // removes the finalizers and reports of nodes that are gone.
            cluster_role(
                ns,
                "phylax-operator-profiles",
                role,
                vec![
                    rule(
                        "profiles.phylax.dev",
                        &["seccompprofiles", "apparmorprofiles"],
                        &["list", "watch", "patch"],
                    ),
                    rule(
                        "profiles.phylax.dev",
                        &["seccompprofiles/status", "apparmorprofiles/status"],
                        &["patch"],
                    ),
                    rule(
                        "profiles.phylax.dev",
                        &["profilenodestatuses"],
                        &["list", "watch", "delete"],
                    ),
                    rule("", &["nodes"], &["list", "watch"]),
                    // Which namespaces the fail-closed profile webhook must see.
                    rule(
                        "profiles.phylax.dev",
                        &["profilebindings", "profilerecordings"],
                        &["list", "watch"],
                    ),
                ],
            ),
        ],
    }
}

pub(super) fn deployment(ns: &str, image: &str) -> Deployment {
    super::deployment(ns, image, Role::Operator, 2, &["--leader-elect=true"])
}
