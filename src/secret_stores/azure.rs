//! `azure`: Azure Key Vault secrets over its REST API (`GET {vaultUrl}/secrets/{name}[/{version}]`,
//! api-version 7.4). A path is `name` or `name/version`.
//!
//! Tokens come from Microsoft Entra ID's v2.0 token endpoint by the client-credentials grant:
//! with a client secret from a Secret of the operator's namespace, or with workload identity's
//! federated token (`AZURE_FEDERATED_TOKEN_FILE`, re-read at each token request) as the client
//! assertion. The identity needs the "Key Vault Secrets User" role (or a `get` secret access policy).

use std::time::Instant;

use async_trait::async_trait;
use serde::Deserialize;
use tokio::sync::Mutex;
use zeroize::Zeroizing;

use super::{Context, SecretBytes, Store, StoreError};
use crate::api::secret_provider;

const API_VERSION: &str = "7.4";
const DEFAULT_AUTHORITY: &str = "https://login.microsoftonline.com/";
/// Entra ID's authority hosts: the public cloud, US Government and China.
const ENTRA_AUTHORITIES: [&str; 3] = [
    "login.microsoftonline.com",
    "login.microsoftonline.us",
    "login.chinacloudapi.cn",
];

pub struct AzureStore {
    vault_url: String,
    token_url: String,
    scope: String,
    spec: secret_provider::AzureStore,
    http: reqwest::Client,
    ctx: Context,
    token: Mutex<Option<(Zeroizing<String>, Instant)>>,
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
    #[serde(default)]
    expires_in: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct SecretAnswer {
    value: Option<String>,
}

/// `name` or `name/version`, as Key Vault names them.
pub fn check_path(path: &str) -> Result<&str, StoreError> {
    let rel = path.trim_matches('/');
    let mut parts = rel.split('/');
    let name = parts.next().unwrap_or("");
    let version = parts.next();
    let name_ok =
        !name.is_empty() && name.len() <= 127 && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    let version_ok = version
        .is_none_or(|v| !v.is_empty() && v.len() <= 64 && v.bytes().all(|b| b.is_ascii_alphanumeric()));
    if !name_ok || !version_ok || parts.next().is_some() {
        return Err(StoreError::InvalidPath(format!(
            "path {path:?} is not an Azure Key Vault secret: NAME or NAME/VERSION, the name of letters, \
             digits and '-' (at most 127)"
        )));
    }
    Ok(rel)
}

impl AzureStore {
    pub fn new(spec: &secret_provider::AzureStore, ctx: &Context) -> Result<AzureStore, StoreError> {
        let vault = super::https_url("azure.vaultUrl", &spec.vault_url)?;
        let ok_id = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.'))
        };
        if !ok_id(&spec.tenant_id) || !ok_id(&spec.client_id) {
            return Err(StoreError::Config(
                "azure.tenantId and azure.clientId must be IDs (GUIDs or domain names)".into(),
            ));
        }
        let authority = spec
            .authority_host
            .clone()
            .or_else(|| std::env::var("AZURE_AUTHORITY_HOST").ok())
            .unwrap_or_else(|| DEFAULT_AUTHORITY.into());
        // The client secret or the operator's federated token goes there: only Entra ID's own
        // authorities (or loopback, for test doubles), never a host the provider's author chose.
        let authority = super::https_url("azure.authorityHost", &authority)?;
        let known = authority
            .host_str()
            .is_some_and(|h| ENTRA_AUTHORITIES.contains(&h));
        if !known && !authority.host().is_some_and(crate::outbound::is_loopback) {
            return Err(StoreError::Config(format!(
                "azure.authorityHost {:?} is not an Entra ID authority ({}); credentials are sent only there",
                authority.as_str(),
                ENTRA_AUTHORITIES.join(", ")
            )));
        }
        let token_url = authority
            .join(&format!("{}/oauth2/v2.0/token", spec.tenant_id))
            .map_err(|e| StoreError::Config(format!("azure.authorityHost: {e}")))?
            .to_string();
        // The token's audience is the vault's DNS suffix: vault.azure.net, vault.azure.cn, ...
        let scope = match vault.host_str().and_then(|h| h.split_once('.')) {
            Some((_, suffix)) if suffix.starts_with("vault.") => format!("https://{suffix}/.default"),
            _ => "https://vault.azure.net/.default".into(),
        };
        Ok(AzureStore {
            vault_url: spec.vault_url.trim_end_matches('/').to_owned(),
            token_url,
            scope,
            spec: spec.clone(),
            http: super::http_client(None, ctx.timeout)?,
            ctx: ctx.clone(),
            token: Mutex::new(None),
        })
    }

    async fn token(&self, fresh: bool) -> Result<Zeroizing<String>, StoreError> {
        let mut cached = self.token.lock().await;
        if !fresh
            && let Some((token, until)) = cached.as_ref()
            && Instant::now() < *until
        {
            return Ok(token.clone());
        }
        let mut form: Vec<(&str, String)> = vec![
            ("grant_type", "client_credentials".into()),
            ("client_id", self.spec.client_id.clone()),
            ("scope", self.scope.clone()),
        ];
        let credential = match &self.spec.client_secret_ref {
            Some(r) => {
                let secret = self.ctx.read_secret_key(r).await?;
                form.push(("client_secret", secret.to_string()));
                "client secret"
            }
            None => {
                let file = std::env::var("AZURE_FEDERATED_TOKEN_FILE").map_err(|_| {
                    StoreError::Config(
                        "azure has no clientSecretRef and AZURE_FEDERATED_TOKEN_FILE is not set: label the \
                         operator's pod for Azure workload identity or give a client secret"
                            .into(),
                    )
                })?;
                let assertion = tokio::fs::read_to_string(&file).await.map_err(|e| {
                    StoreError::Config(format!("cannot read the federated token {file}: {e}"))
                })?;
                form.push((
                    "client_assertion_type",
                    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer".into(),
                ));
                form.push(("client_assertion", assertion.trim().to_owned()));
                "federated token"
            }
        };
        let answer = self.http.post(&self.token_url).form(&form).send().await;
        for (_, v) in form.iter_mut() {
            zeroize::Zeroize::zeroize(v);
        }
        let answer = answer.map_err(|e| super::transport_error(&e))?;
        let code = answer.status();
        if code.is_server_error() || code.as_u16() == 429 {
            return Err(StoreError::Unreachable(format!(
                "the token endpoint answered HTTP {code}"
            )));
        }
        if !code.is_success() {
            return Err(StoreError::Config(format!(
                "Entra ID refused the {credential} of client {} in tenant {} (HTTP {code}); check the app \
                 registration and its credential",
                self.spec.client_id, self.spec.tenant_id
            )));
        }
        let body: TokenAnswer = answer
            .json()
            .await
            .map_err(|_| StoreError::Corrupt("the token endpoint's answer is not a token".into()))?;
        let lifetime = match body.expires_in {
            Some(serde_json::Value::Number(n)) => n.as_u64(),
            Some(serde_json::Value::String(s)) => s.parse().ok(),
            _ => None,
        }
        .unwrap_or(300);
        let token = Zeroizing::new(body.access_token);
        // Refresh at two thirds of its life (clamped: the number is the token endpoint's).
        let until = super::renew_at(lifetime);
        *cached = Some((token.clone(), until));
        Ok(token)
    }

    async fn get(&self, url: &str, token: &str) -> Result<reqwest::Response, StoreError> {
        self.http
            .get(url)
            .bearer_auth(token)
            .send()
            .await
            .map_err(|e| super::transport_error(&e))
    }
}

#[async_trait]
impl Store for AzureStore {
    fn kind(&self) -> &'static str {
        "azure"
    }

    async fn fetch(&self, path: &str) -> Result<SecretBytes, StoreError> {
        let rel = check_path(path)?;
        let url = format!("{}/secrets/{rel}?api-version={API_VERSION}", self.vault_url);
        let mut answer = self.get(&url, &self.token(false).await?).await?;
        if answer.status().as_u16() == 401 {
            // An expired or revoked token: once more with a fresh one.
            answer = self.get(&url, &self.token(true).await?).await?;
        }
        let code = answer.status().as_u16();
        match code {
            200 => {}
            404 => return Err(StoreError::NotFound { path: path.into() }),
            401 | 403 => {
                return Err(StoreError::AccessDenied {
                    path: path.into(),
                    need: format!(
                        "the \"Key Vault Secrets User\" role (or a get secret access policy) on the vault \
                         to client {}",
                        self.spec.client_id
                    ),
                });
            }
            429 => {
                return Err(StoreError::Throttled {
                    retry_after: super::retry_after(
                        answer.headers().get("retry-after").and_then(|v| v.to_str().ok()),
                    ),
                });
            }
            c if c >= 500 => return Err(StoreError::Unreachable(format!("Key Vault answered HTTP {c}"))),
            c => {
                return Err(StoreError::Config(format!(
                    "Key Vault refused the request (HTTP {c})"
                )));
            }
        }
        let body = Zeroizing::new(
            answer
                .bytes()
                .await
                .map_err(|e| super::transport_error(&e))?
                .to_vec(),
        );
        let secret: SecretAnswer = serde_json::from_slice(&body).map_err(|_| {
            StoreError::Corrupt(format!("Key Vault's answer for {path:?} is not a secret bundle"))
        })?;
        let value = secret
            .value
            .ok_or_else(|| StoreError::Corrupt(format!("Key Vault's answer for {path:?} has no value")))?;
        Ok(SecretBytes::new(value.into_bytes()))
    }

    async fn check(&self) -> Result<(), StoreError> {
        let token = self.token(true).await?;
        let url = format!(
            "{}/secrets?maxresults=1&api-version={API_VERSION}",
            self.vault_url
        );
        match self.get(&url, &token).await?.status().as_u16() {
            // A refused listing still shows the vault is there and took the token.
            200 | 403 => Ok(()),
            c if c >= 500 || c == 429 => Err(StoreError::Unreachable(format!("Key Vault answered HTTP {c}"))),
            c => Err(StoreError::Config(format!(
                "Key Vault answered HTTP {c} to a listing"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_key_vault_names() {
        assert_eq!(check_path("db-password").unwrap(), "db-password");
        assert_eq!(
            check_path("/db-password/0123abcd").unwrap(),
            "db-password/0123abcd"
        );
        for bad in ["", "a_b", "a/b/c", "a//b", "../x", "a?x", &"x".repeat(128)] {
            assert!(
                matches!(check_path(bad), Err(StoreError::InvalidPath(_))),
                "{bad:?}"
            );
        }
    }
}
