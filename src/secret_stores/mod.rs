//! External secret stores for secret sync, behind one trait: adding a store touches only its
//! own module and the match in [`build`].
//!
//! A store returns a secret's bytes or a [`StoreError`] that says what happened in terms a
//! cluster user can act on. Errors never carry a secret value: messages name paths, actions
//! and status codes, and bodies of responses are never quoted.

pub mod aws;
pub mod azure;
pub mod file;
pub mod vault;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client};
use zeroize::Zeroizing;

use crate::api::secret_provider::{SecretKeyRef, SecretProviderSpec};

/// A secret's value as the store returned it; wiped from memory when dropped.
#[derive(Clone)]
pub struct SecretBytes(pub Zeroizing<Vec<u8>>);

impl SecretBytes {
    pub fn new(v: Vec<u8>) -> Self {
        SecretBytes(Zeroizing::new(v))
    }
}

impl std::fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretBytes({} bytes)", self.0.len())
    }
}

#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum StoreError {
    #[error("{path:?} does not exist in the store")]
    NotFound { path: String },
    /// `need` names the permission to grant (IAM action, Vault capability, Azure role).
    #[error("access denied to {path:?}: grant {need}")]
    AccessDenied { path: String, need: String },
    #[error("the store is unreachable: {0}")]
    Unreachable(String),
    #[error("the store is throttling requests")]
    Throttled { retry_after: Option<Duration> },
    /// The store answered with something that is not a secret (never quoted).
    #[error("the store's answer is malformed: {0}")]
    Corrupt(String),
    /// The SecretProvider's settings or credentials are wrong.
    #[error("{0}")]
    Config(String),
    /// The path cannot name a secret in this store.
    #[error("{0}")]
    InvalidPath(String),
}

impl StoreError {
    /// Worth retrying later without anyone changing anything.
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Unreachable(_) | StoreError::Throttled { .. })
    }

    /// Metric label.
    pub fn outcome(&self) -> &'static str {
        match self {
            StoreError::NotFound { .. } => "not_found",
            StoreError::AccessDenied { .. } => "access_denied",
            StoreError::Unreachable(_) => "unreachable",
            StoreError::Throttled { .. } => "throttled",
            StoreError::Corrupt(_) => "corrupt",
            StoreError::Config(_) => "config",
            StoreError::InvalidPath(_) => "invalid_path",
        }
    }
}

#[async_trait]
pub trait Store: Send + Sync {
    /// `aws`, `vault`, `azure` or `file`.
    fn kind(&self) -> &'static str;

    /// Reads one secret.
    async fn fetch(&self, path: &str) -> Result<SecretBytes, StoreError>;

    /// Checks the store answers and the credentials work, without reading a secret. Answers that
    /// show the store is there (access denied to a listing, say) count as reachable.
    async fn check(&self) -> Result<(), StoreError>;
}

/// What stores need from the operator to start.
#[derive(Clone)]
pub struct Context {
    pub client: Client,
    /// The operator's namespace, where credential Secrets live.
    pub namespace: String,
    /// Deadline of one call to a store.
    pub timeout: Duration,
    /// The ServiceAccount (in `namespace`) whose short-lived tokens log in to Vault: it has no
    /// RBAC, so a token that leaks to a wrong Vault address is worth nothing in the cluster.
    pub vault_service_account: String,
}

/// The label a Secret of the operator's namespace needs before a SecretProvider may read a
/// credential from it: without it, any SecretProvider author could point `tokenSecretRef` at the
/// webhook CA's key or another Secret of the operator and have it sent to a server they choose.
pub const CREDENTIAL_LABEL: (&str, &str) = ("secrets.phylax.dev/credential", "true");

impl Context {
    /// A credential from a Secret in the operator's namespace.
    pub async fn read_secret_key(&self, r: &SecretKeyRef) -> Result<Zeroizing<String>, StoreError> {
        let api: Api<Secret> = Api::namespaced(self.client.clone(), &self.namespace);
        let ns = &self.namespace;
        let secret = api
            .get_opt(&r.name)
            .await
            .map_err(|e| StoreError::Config(format!("cannot read Secret {ns}/{}: {e}", r.name)))?;
        let secret =
            secret.ok_or_else(|| StoreError::Config(format!("Secret {ns}/{} does not exist", r.name)))?;
        let labelled = secret
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(CREDENTIAL_LABEL.0))
            .is_some_and(|v| v == CREDENTIAL_LABEL.1);
        if !labelled {
            return Err(StoreError::Config(format!(
                "Secret {ns}/{} is not labelled {}={}; label the Secrets meant as SecretProvider credentials \
                 (kubectl label secret -n {ns} {} {}={})",
                r.name,
                CREDENTIAL_LABEL.0,
                CREDENTIAL_LABEL.1,
                r.name,
                CREDENTIAL_LABEL.0,
                CREDENTIAL_LABEL.1
            )));
        }
        let bytes = secret
            .data
            .and_then(|mut d| d.remove(&r.key))
            .ok_or_else(|| StoreError::Config(format!("Secret {ns}/{} has no key {:?}", r.name, r.key)))?;
        let text = String::from_utf8(bytes.0).map_err(|_| {
            StoreError::Config(format!("key {:?} of Secret {ns}/{} is not UTF-8", r.key, r.name))
        })?;
        Ok(Zeroizing::new(text.trim().to_owned()))
    }
}

/// Builds the store a SecretProvider describes.
pub async fn build(spec: &SecretProviderSpec, ctx: &Context) -> Result<Arc<dyn Store>, StoreError> {
    spec.store_kind().map_err(StoreError::Config)?;
    if let Some(aws) = &spec.aws {
        return Ok(Arc::new(aws::AwsStore::new(aws, ctx).await?));
    }
    if let Some(vault) = &spec.vault {
        return Ok(Arc::new(vault::VaultStore::new(vault, ctx)?));
    }
    if let Some(azure) = &spec.azure {
        return Ok(Arc::new(azure::AzureStore::new(azure, ctx)?));
    }
    if let Some(file) = &spec.file {
        return Ok(Arc::new(file::FileStore::new(file)?));
    }
    Err(StoreError::Config("spec names no store".into()))
}

/// A store's URL: `https://`, or plain `http://` on loopback only (emulators and test doubles).
pub fn https_url(field: &str, value: &str) -> Result<url::Url, StoreError> {
    crate::outbound::secure_url(field, value).map_err(StoreError::Config)
}

/// When to renew a credential that the store says lives `lifetime_secs`: at two thirds of its
/// life, and at least once a day. The lifetime comes from the store's answer: a huge value must not
/// overflow the clock (it would panic the task) nor keep a token forever.
pub fn renew_at(lifetime_secs: u64) -> std::time::Instant {
    const MAX_LIFETIME: u64 = 24 * 3600;
    let life = Duration::from_secs(lifetime_secs.clamp(1, MAX_LIFETIME));
    let now = std::time::Instant::now();
    now.checked_add(life * 2 / 3).unwrap_or(now)
}

/// Seconds from a `Retry-After` header (delta-seconds form), capped at five minutes.
pub fn retry_after(value: Option<&str>) -> Option<Duration> {
    let secs: u64 = value?.trim().parse().ok()?;
    Some(Duration::from_secs(secs.min(300)))
}

/// The first `max` characters of an error text from a store, on one line.
pub fn brief(s: &str) -> String {
    let one_line: String = s.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    match one_line.char_indices().nth(200) {
        Some((i, _)) => format!("{}…", &one_line[..i]),
        None => one_line,
    }
}

/// A reqwest client that trusts the system roots and `ca_pem`, with a per-call deadline.
pub fn http_client(ca_pem: Option<&str>, timeout: Duration) -> Result<reqwest::Client, StoreError> {
    crate::outbound::https_client(ca_pem, timeout).map_err(StoreError::Config)
}

/// Maps a transport failure of reqwest.
pub fn transport_error(e: &reqwest::Error) -> StoreError {
    let why = if e.is_timeout() {
        "timed out".to_owned()
    } else if e.is_connect() {
        "cannot connect".to_owned()
    } else {
        "request failed".to_owned()
    };
    // reqwest's Display names the URL, not bodies; the source chain says why (TLS, DNS, refused).
    let mut detail = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        detail = format!("{detail}: {s}");
        source = s.source();
    }
    StoreError::Unreachable(format!("{why}: {}", brief(&detail)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_is_capped_and_lenient() {
        assert_eq!(retry_after(Some("3")), Some(Duration::from_secs(3)));
        assert_eq!(retry_after(Some("100000")), Some(Duration::from_secs(300)));
        assert_eq!(retry_after(Some("Wed, 21 Oct 2015 07:28:00 GMT")), None);
        assert_eq!(retry_after(None), None);
    }

    #[test]
    fn renewal_of_any_lifetime_is_within_a_day() {
        let now = std::time::Instant::now();
        for (lifetime, at_most) in [
            (0, 1),
            (3, 2),
            (3600, 2400),
            (u64::MAX, 16 * 3600),
            (86_400 * 365, 16 * 3600),
        ] {
            let at = renew_at(lifetime);
            assert!(at >= now, "{lifetime}");
            assert!(
                at <= std::time::Instant::now() + Duration::from_secs(at_most),
                "{lifetime}"
            );
        }
    }

    #[test]
    fn secret_bytes_debug_shows_no_value() {
        let s = SecretBytes::new(b"hunter2".to_vec());
        assert_eq!(format!("{s:?}"), "SecretBytes(7 bytes)");
    }

    #[test]
    fn transient_errors() {
        assert!(StoreError::Unreachable("x".into()).is_transient());
        assert!(StoreError::Throttled { retry_after: None }.is_transient());
        assert!(!StoreError::NotFound { path: "/a".into() }.is_transient());
        assert!(
            !StoreError::AccessDenied {
                path: "/a".into(),
                need: "x".into()
            }
            .is_transient()
        );
    }
}
