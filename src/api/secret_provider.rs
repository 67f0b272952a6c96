//! `SecretProvider` (`secrets.phylax.dev/v1alpha1`, cluster-scoped): how to reach one external
//! secret store, and which namespaces may read which paths from it. Default is deny: a provider
//! without `namespaces` or `paths` serves nobody.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, Default, JsonSchema, PartialEq)]
#[kube(
    group = "secrets.phylax.dev",
    version = "v1alpha1",
    kind = "SecretProvider",
    status = "SecretProviderStatus",
    shortname = "sp",
    category = "phylax",
    printcolumn = r#"{"name":"Store","type":"string","jsonPath":".status.store"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct SecretProviderSpec {
    /// AWS Secrets Manager. Credentials come from the standard AWS chain (web identity/IRSA, EKS
    /// pod identity, environment).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aws: Option<AwsStore>,
    /// HashiCorp Vault's KV secrets engine (version 1 or 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vault: Option<VaultStore>,
    /// Azure Key Vault secrets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub azure: Option<AzureStore>,
    /// A directory of JSON files on the operator's filesystem. For development and demos only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<FileStore>,
    /// Namespaces allowed to use this provider: listed by name and/or chosen by labels. Neither
    /// set means none.
    #[serde(default)]
    pub namespaces: NamespaceRules,
    /// Paths a namespace may read: `*` matches any run of characters (including `/`) and
    /// `{namespace}` stands for the requesting namespace, e.g. `/prod/{namespace}/*`. Empty means none.
    #[serde(default)]
    pub paths: Vec<String>,
    /// Data key for a source that is not a JSON object (default `value`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw_key: Option<String>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NamespaceRules {
    /// Namespace names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub names: Vec<String>,
    /// Namespaces whose labels match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AwsStore {
    pub region: String,
    /// Endpoint URL for a VPC endpoint or an emulator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Role to assume (with the chain's credentials) before calling Secrets Manager.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role_arn: Option<String>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VaultStore {
    /// e.g. `https://vault.example:8200`
    pub address: String,
    /// PEM CA certificates to trust for `address`, besides the system roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_bundle: Option<String>,
    /// Mount path of the KV engine (default `secret`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mount: Option<String>,
    /// 1 or 2 (default 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kv_version: Option<u8>,
    /// Vault Enterprise namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub auth: VaultAuth,
}

/// Exactly one of `kubernetes` or `tokenSecretRef`.
#[derive(Deserialize, Serialize, Clone, Debug, Default, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VaultAuth {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<VaultKubernetesAuth>,
    /// A Vault token in a Secret of the operator's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_secret_ref: Option<SecretKeyRef>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VaultKubernetesAuth {
    pub role: String,
    /// Mount path of the auth method (default `kubernetes`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mount: Option<String>,
    /// The audience of the token the operator requests for Vault (default `vault`); the Vault
    /// role's `audience` must be the same.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
    /// Refused: Phylax no longer logs in with a token read from a file. The operator requests a
    /// short-lived token (TokenRequest API, 10 minutes, the audience above) for its dedicated
    /// ServiceAccount `phylax-vault-auth`, which has no RBAC; bind the Vault role to that account.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_path: Option<String>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AzureStore {
    /// e.g. `https://my-vault.vault.azure.net`
    pub vault_url: String,
    pub tenant_id: String,
    pub client_id: String,
    /// Default `https://login.microsoftonline.com/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authority_host: Option<String>,
    /// Client credentials: the client secret in a Secret of the operator's namespace. Without it,
    /// workload identity: the federated token file in `AZURE_FEDERATED_TOKEN_FILE`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_secret_ref: Option<SecretKeyRef>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FileStore {
    /// Absolute directory; a path `a/b` reads `<directory>/a/b.json`.
    pub directory: String,
}

/// A key of a Secret in the operator's namespace.
#[derive(Deserialize, Serialize, Clone, Debug, Default, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    pub name: String,
    pub key: String,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SecretProviderStatus {
    /// `aws`, `vault`, `azure` or `file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Configured` (the spec is valid and its credentials are found), `Reachable` (the store
    /// answered the last call) and `Ready` (both).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

impl SecretProviderSpec {
    /// The configured store's name, or why the spec does not name exactly one.
    pub fn store_kind(&self) -> Result<&'static str, String> {
        let set: Vec<&'static str> = [
            ("aws", self.aws.is_some()),
            ("vault", self.vault.is_some()),
            ("azure", self.azure.is_some()),
            ("file", self.file.is_some()),
        ]
        .into_iter()
        .filter_map(|(n, s)| s.then_some(n))
        .collect();
        match set.as_slice() {
            [one] => Ok(one),
            [] => Err("spec names no store; set exactly one of aws, vault, azure or file".into()),
            many => Err(format!(
                "spec names {} stores ({}); set exactly one",
                many.len(),
                many.join(", ")
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exactly_one_store() {
        let mut spec = SecretProviderSpec::default();
        assert!(spec.store_kind().unwrap_err().contains("no store"));
        spec.file = Some(FileStore {
            directory: "/d".into(),
        });
        assert_eq!(spec.store_kind(), Ok("file"));
        spec.aws = Some(AwsStore {
            region: "eu-west-1".into(),
            ..Default::default()
        });
        assert!(spec.store_kind().unwrap_err().contains("aws, file"));
    }

    #[test]
    fn the_issue_example_parses() {
        let spec: SecretProviderSpec = serde_yaml::from_str(
            "{aws: {region: eu-west-1}, namespaces: {selector: {matchLabels: {team: shop}}},
              paths: [\"/prod/{namespace}/*\"]}",
        )
        .unwrap();
        assert_eq!(spec.store_kind(), Ok("aws"));
        assert_eq!(spec.paths, ["/prod/{namespace}/*"]);
        assert!(spec.namespaces.selector.is_some());
    }
}
