//! Defence in depth for the operator's cluster-wide Secret writes (API servers 1.30+, where
//! ValidatingAdmissionPolicy is GA): the API server itself refuses any Secret the operator creates
//! or updates unless it is an `Opaque` Secret carrying Phylax's managed-by label (and, on update,
//! already carried it), besides its own two webhook Secrets. A stolen operator token can then no
//! longer mint a `kubernetes.io/service-account-token` Secret or take over another Secret. CEL,
//! evaluated in the API server: no webhook on every Secret write of the cluster.

use k8s_openapi::api::admissionregistration::v1::{
    MatchCondition, MatchResources, NamedRuleWithOperations, ValidatingAdmissionPolicy,
    ValidatingAdmissionPolicyBinding, ValidatingAdmissionPolicyBindingSpec, ValidatingAdmissionPolicySpec,
    Validation,
};

use super::webhook::WEBHOOK_SECRETS;
use super::{cluster_meta, object_name, strings};
use crate::role::Role;
use crate::runtime::ownership::MANAGED_BY;

pub const POLICY_NAME: &str = "phylax-operator-secret-writes";

/// `object` (or `oldObject`) carries Phylax's managed-by label.
fn managed(object: &str) -> String {
    let (key, value) = MANAGED_BY;
    format!(
        "has({object}.metadata.labels) && '{key}' in {object}.metadata.labels && \
         {object}.metadata.labels['{key}'] == '{value}'"
    )
}

pub(super) fn policy(ns: &str) -> ValidatingAdmissionPolicy {
    let operator = format!("system:serviceaccount:{ns}:{}", object_name(Role::Operator));
    let own = WEBHOOK_SECRETS
        .iter()
        .map(|n| format!("'{n}'"))
        .collect::<Vec<_>>()
        .join(", ");
    // The operator's own webhook CA and serving certificate (type kubernetes.io/tls).
    let own_secret = format!("(request.namespace == '{ns}' && object.metadata.name in [{own}])");
    ValidatingAdmissionPolicy {
        metadata: cluster_meta(POLICY_NAME, Role::Operator),
        spec: Some(ValidatingAdmissionPolicySpec {
            failure_policy: Some("Fail".into()),
            match_constraints: Some(MatchResources {
                resource_rules: Some(vec![NamedRuleWithOperations {
                    api_groups: Some(strings(&[""])),
                    api_versions: Some(strings(&["v1"])),
                    operations: Some(strings(&["CREATE", "UPDATE"])),
                    resources: Some(strings(&["secrets"])),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            match_conditions: Some(vec![MatchCondition {
                name: "the-phylax-operator".into(),
                expression: format!("request.userInfo.username == '{operator}'"),
            }]),
            validations: Some(vec![
                Validation {
                    expression: format!(
                        "{own_secret} || ((!has(object.type) || object.type == 'Opaque') && {})",
                        managed("object")
                    ),
                    message: Some(format!(
                        "the Phylax operator writes only Opaque Secrets labelled {}={}",
                        MANAGED_BY.0, MANAGED_BY.1
                    )),
                    reason: Some("Forbidden".into()),
                    ..Default::default()
                },
                Validation {
                    expression: format!(
                        "{own_secret} || request.operation != 'UPDATE' || ({})",
                        managed("oldObject")
                    ),
                    message: Some("the Phylax operator does not take over Secrets it did not create".into()),
                    reason: Some("Forbidden".into()),
                    ..Default::default()
                },
            ]),
            ..Default::default()
        }),
        status: None,
    }
}

pub(super) fn binding() -> ValidatingAdmissionPolicyBinding {
    ValidatingAdmissionPolicyBinding {
        metadata: cluster_meta(POLICY_NAME, Role::Operator),
        spec: Some(ValidatingAdmissionPolicyBindingSpec {
            policy_name: Some(POLICY_NAME.into()),
            validation_actions: Some(strings(&["Deny"])),
            ..Default::default()
        }),
    }
}
