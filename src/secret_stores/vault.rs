//! `vault`: HashiCorp Vault's KV secrets engine, version 1 or 2, through vaultrs. A path is the
//! secret's path under the mount (`shop/config` reads `<mount>/data/shop/config` on KV v2).
//!
//! Authentication by Vault's Kubernetes auth method (a short-lived token of the dedicated
//! `phylax-vault-auth` ServiceAccount, requested through the TokenRequest API for Vault's audience
//! at each login and exchanged for a Vault token that is renewed by logging in again) or by
//! a token in a Secret of the operator's namespace (re-read when Vault refuses it).
//! The role's policy needs the `read` capability on the paths.

use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::sync::Mutex;
use vaultrs::client::{VaultClient, VaultClientSettingsBuilder};
use vaultrs::error::ClientError;
use zeroize::Zeroizing;

use super::{Context, SecretBytes, Store, StoreError};
use crate::api::secret_provider::{self, VaultAuth};

/// The audience of the tokens requested for Vault when the provider names none.
pub const DEFAULT_AUDIENCE: &str = "vault";
/// Lifetime asked for a Vault login token: it is used once, at login.
const LOGIN_TOKEN_SECONDS: i64 = 600;

pub struct VaultStore {
    address: String,
    mount: String,
    kv_version: u8,
    namespace: Option<String>,
    auth: VaultAuth,
    http: reqwest::Client,
    ctx: Context,
    token: Mutex<Option<(Zeroizing<String>, Instant)>>,
}

/// A path Vault would read as one secret: no `.`/`..`/empty segments, nothing a URL would read
/// as a query or fragment.
pub fn check_path(path: &str) -> Result<&str, StoreError> {
    let rel = path.trim_matches('/');
    if rel.is_empty()
        || rel.split('/').any(|s| s.is_empty() || s == "." || s == "..")
        || rel
            .chars()
            .any(|c| c.is_control() || matches!(c, '?' | '#' | '%' | '\\'))
    {
        return Err(StoreError::InvalidPath(format!(
            "path {path:?} is not a Vault KV path: segments separated by '/', without '.', '..', \
             '?', '#', '%' or '\\'"
        )));
    }
    Ok(rel)
}

impl VaultStore {
    pub fn new(spec: &secret_provider::VaultStore, ctx: &Context) -> Result<VaultStore, StoreError> {
        // The login token and every secret cross this connection: https, or http on loopback only.
        super::https_url("vault.address", &spec.address)?;
        let kv_version = spec.kv_version.unwrap_or(2);
        if !matches!(kv_version, 1 | 2) {
            return Err(StoreError::Config(format!(
                "vault.kvVersion is {kv_version}; it must be 1 or 2"
            )));
        }
        match (&spec.auth.kubernetes, &spec.auth.token_secret_ref) {
            (Some(k8s), None) if k8s.token_path.is_some() => {
                return Err(StoreError::Config(format!(
                    "vault.auth.kubernetes.tokenPath is not accepted: the operator requests a short-lived \
                     token for ServiceAccount {}/{} (audience {:?}); remove tokenPath and bind the Vault \
                     role to that ServiceAccount",
                    ctx.namespace,
                    ctx.vault_service_account,
                    k8s.audience.as_deref().unwrap_or(DEFAULT_AUDIENCE)
                )));
            }
            (Some(_), None) | (None, Some(_)) => {}
            _ => {
                return Err(StoreError::Config(
                    "vault.auth needs exactly one of kubernetes (role) or tokenSecretRef".into(),
                ));
            }
        }
        let mount = spec.mount.clone().unwrap_or_else(|| "secret".into());
        let mount = mount.trim_matches('/').to_owned();
        if mount.is_empty() || mount.split('/').any(|s| s.is_empty() || s == "..") {
            return Err(StoreError::Config(format!(
                "vault.mount {mount:?} is not a mount path"
            )));
        }
        Ok(VaultStore {
            address: spec.address.trim_end_matches('/').to_owned(),
            mount,
            kv_version,
            namespace: spec.namespace.clone(),
            auth: spec.auth.clone(),
            http: super::http_client(spec.ca_bundle.as_deref(), ctx.timeout)?,
            ctx: ctx.clone(),
            token: Mutex::new(None),
        })
    }

    fn client(&self, token: &str) -> Result<VaultClient, StoreError> {
        let mut settings = VaultClientSettingsBuilder::default();
        settings
            .address(&self.address)
            .token(token)
            .verify(true)
            .ca_certs(vec![])
            .timeout(Some(self.ctx.timeout));
        if let Some(ns) = &self.namespace {
            settings.namespace(Some(ns.clone()));
        }
        let settings = settings
            .build()
            .map_err(|e| StoreError::Config(format!("Vault client settings: {e}")))?;
        let mut client =
            VaultClient::new(settings).map_err(|e| StoreError::Config(format!("Vault client: {e}")))?;
        // Our HTTP client: it trusts the provider's caBundle without a file on disk.
        client.http = rustify::clients::reqwest::Client::new(&self.address, self.http.clone());
        Ok(client)
    }

    /// A short-lived token of the dedicated ServiceAccount for `audience`, from the TokenRequest
    /// API: never the operator's own token, which can write Secrets cluster-wide.
    async fn login_token(&self, audience: &str) -> Result<Zeroizing<String>, StoreError> {
        use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
        use k8s_openapi::api::core::v1::ServiceAccount;
        let (ns, sa) = (&self.ctx.namespace, &self.ctx.vault_service_account);
        let api: kube::Api<ServiceAccount> = kube::Api::namespaced(self.ctx.client.clone(), ns);
        let request = TokenRequest {
            spec: TokenRequestSpec {
                audiences: vec![audience.to_owned()],
                expiration_seconds: Some(LOGIN_TOKEN_SECONDS),
                bound_object_ref: None,
            },
            ..Default::default()
        };
        let answer = api
            .create_token_request(sa, &Default::default(), &request)
            .await
            .map_err(|e| match e {
                kube::Error::Api(s) if s.code == 404 => StoreError::Config(format!(
                    "ServiceAccount {ns}/{sa} does not exist; create it (phylax manifests has it) to log in to Vault"
                )),
                kube::Error::Api(s) => StoreError::Config(format!(
                    "cannot request a token for ServiceAccount {ns}/{sa} (HTTP {} {}); the operator needs \
                     create on serviceaccounts/token for it",
                    s.code, s.reason
                )),
                other => StoreError::Unreachable(format!("the API server: {}", super::brief(&other.to_string()))),
            })?;
        let token = answer.status.map(|s| s.token).unwrap_or_default();
        if token.is_empty() {
            return Err(StoreError::Corrupt(
                "the TokenRequest answer holds no token".into(),
            ));
        }
        Ok(Zeroizing::new(token))
    }

    /// A token: the cached one while it lives, else a fresh login or the Secret's.
    async fn token(&self, fresh: bool) -> Result<Zeroizing<String>, StoreError> {
        let mut cached = self.token.lock().await;
        if !fresh
            && let Some((token, until)) = cached.as_ref()
            && Instant::now() < *until
        {
            return Ok(token.clone());
        }
        let (token, until) = match (&self.auth.kubernetes, &self.auth.token_secret_ref) {
            (Some(k8s), _) => {
                let jwt = self
                    .login_token(k8s.audience.as_deref().unwrap_or(DEFAULT_AUDIENCE))
                    .await?;
                let mount = k8s.mount.as_deref().unwrap_or("kubernetes");
                let login = vaultrs::auth::kubernetes::login(&self.client("")?, mount, &k8s.role, jwt.trim())
                    .await
                    .map_err(|e| match e {
                        ClientError::APIError { code: 400 | 403, .. } => StoreError::Config(format!(
                            "Vault refused the Kubernetes login for role {:?} at auth/{mount} (HTTP {}); \
                             bind the role to ServiceAccount {}/{} with this provider's audience",
                            k8s.role,
                            status(&e),
                            self.ctx.namespace,
                            self.ctx.vault_service_account,
                        )),
                        other => self.error("auth login", other),
                    })?;
                // Log in again at two thirds of the lease, before Vault forgets the token
                // (clamped: the number is Vault's).
                (
                    Zeroizing::new(login.client_token),
                    super::renew_at(login.lease_duration),
                )
            }
            (None, Some(r)) => (
                self.ctx.read_secret_key(r).await?,
                Instant::now() + Duration::from_secs(300),
            ),
            (None, None) => return Err(StoreError::Config("vault.auth is empty".into())),
        };
        *cached = Some((token.clone(), until));
        Ok(token)
    }

    fn error(&self, what: &str, e: ClientError) -> StoreError {
        match e {
            ClientError::APIError { code: 404, .. } => StoreError::NotFound { path: what.into() },
            ClientError::APIError { code: 403, .. } => StoreError::AccessDenied {
                path: what.into(),
                need: format!(
                    "the read capability on {} to the operator's Vault policy",
                    self.api_path(what)
                ),
            },
            ClientError::APIError { code: 429, .. } => StoreError::Throttled { retry_after: None },
            ClientError::APIError { code: 503, .. } => {
                StoreError::Unreachable("Vault is sealed or in maintenance (HTTP 503)".into())
            }
            ClientError::APIError { code, .. } if code >= 500 => {
                StoreError::Unreachable(format!("Vault answered HTTP {code}"))
            }
            ClientError::APIError { code, errors } => StoreError::Config(format!(
                "Vault refused the request (HTTP {code}): {}",
                super::brief(&errors.join("; "))
            )),
            ClientError::RestClientError { source } => {
                let mut detail = source.to_string();
                let mut s = std::error::Error::source(&source);
                while let Some(inner) = s {
                    detail = format!("{detail}: {inner}");
                    s = inner.source();
                }
                StoreError::Unreachable(super::brief(&detail))
            }
            ClientError::JsonParseError { .. } | ClientError::ResponseEmptyError => {
                StoreError::Corrupt(format!("Vault's answer for {what:?} is not a KV secret"))
            }
            other => StoreError::Config(super::brief(&other.to_string())),
        }
    }

    fn api_path(&self, path: &str) -> String {
        let rel = path.trim_matches('/');
        match self.kv_version {
            1 => format!("{}/{rel}", self.mount),
            _ => format!("{}/data/{rel}", self.mount),
        }
    }

    /// Reads with a client for `token`; a client that cannot be built is a settings problem.
    async fn read(
        &self,
        token: &str,
        rel: &str,
    ) -> Result<Result<serde_json::Value, ClientError>, StoreError> {
        let client = self.client(token)?;
        Ok(match self.kv_version {
            1 => vaultrs::kv1::get::<serde_json::Value>(&client, &self.mount, rel).await,
            _ => vaultrs::kv2::read::<serde_json::Value>(&client, &self.mount, rel).await,
        })
    }
}

fn status(e: &ClientError) -> u16 {
    match e {
        ClientError::APIError { code, .. } => *code,
        _ => 0,
    }
}

#[async_trait]
impl Store for VaultStore {
    fn kind(&self) -> &'static str {
        "vault"
    }

    async fn fetch(&self, path: &str) -> Result<SecretBytes, StoreError> {
        let rel = check_path(path)?;
        let deadline = self.ctx.timeout * 3;
        let work = async {
            let token = self.token(false).await?;
            let value = match self.read(&token, rel).await? {
                // A token Vault no longer accepts (expired, revoked, rotated Secret): once more
                // with a fresh one before calling it access denied.
                Err(ClientError::APIError { code: 403, .. }) => {
                    let token = self.token(true).await?;
                    self.read(&token, rel).await?
                }
                other => other,
            }
            .map_err(|e| self.error(path, e))?;
            if !value.is_object() {
                return Err(StoreError::Corrupt(format!(
                    "Vault's data for {path:?} is not a JSON object"
                )));
            }
            serde_json::to_vec(&value)
                .map(SecretBytes::new)
                .map_err(|e| StoreError::Corrupt(e.to_string()))
        };
        tokio::time::timeout(deadline, work)
            .await
            .map_err(|_| StoreError::Unreachable(format!("no answer within {deadline:?}")))?
    }

    async fn check(&self) -> Result<(), StoreError> {
        // sys/health needs no token: 200 active, 429 standby, 472/473 DR/performance standby.
        let url = format!("{}/v1/sys/health", self.address);
        let answer = self
            .http
            .get(&url)
            .send()
            .await
            .map_err(|e| super::transport_error(&e))?;
        match answer.status().as_u16() {
            200 | 429 | 472 | 473 => {}
            501 => {
                return Err(StoreError::Unreachable(
                    "Vault is not initialised (HTTP 501)".into(),
                ));
            }
            503 => return Err(StoreError::Unreachable("Vault is sealed (HTTP 503)".into())),
            code => {
                return Err(StoreError::Unreachable(format!(
                    "Vault's health check answered HTTP {code}"
                )));
            }
        }
        self.token(true).await.map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_that_are_not_one_kv_secret_are_refused() {
        assert_eq!(check_path("/shop/config").unwrap(), "shop/config");
        for bad in [
            "",
            "/",
            "a/../b",
            "a//b",
            "a?list=true",
            "a#b",
            "a%2e%2e",
            "./a",
            "a\\b",
            "a\nb",
        ] {
            assert!(
                matches!(check_path(bad), Err(StoreError::InvalidPath(_))),
                "{bad:?}"
            );
        }
    }
}
