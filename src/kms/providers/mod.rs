//! Where the key-encryption key lives. Every provider encrypts and decrypts the small payloads the
//! API server sends (its data-encryption keys or seeds) and names its current key.

#[cfg(feature = "aws")]
pub mod aws;
pub mod local;
pub mod software;
#[cfg(feature = "tpm")]
pub mod tpm;
#[cfg(feature = "vault")]
pub mod vault;

use async_trait::async_trait;
use zeroize::Zeroizing;

/// What went wrong, in the terms the gRPC answer needs: the caller's fault, or the provider's.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// The ciphertext is malformed, corrupted, or made by a key that is not configured.
    #[error("{0}")]
    InvalidCiphertext(String),
    /// The key service cannot be reached or refused to work; retrying may help.
    #[error("{0}")]
    Unavailable(String),
}

/// A sealed payload and the key that sealed it.
#[derive(Debug)]
pub struct Sealed {
    pub ciphertext: Vec<u8>,
    pub key_id: String,
}

#[async_trait]
pub trait KeyProvider: Send + Sync + 'static {
    /// Short name for metrics and annotations: `software`, `tpm`, `vault`, `aws`.
    fn name(&self) -> &'static str;

    /// Every key id this provider knows it can decrypt with (current first), for metrics. A key
    /// service that rotates on its own (Vault) reports what it has seen so far.
    fn key_ids(&self) -> Vec<String>;

    /// Encrypts with the current key and names it: the key id is stable while the key is
    /// unchanged, changes when it rotates, is at most 1 KiB and is never secret.
    async fn encrypt(&self, plaintext: &[u8]) -> Result<Sealed, ProviderError>;

    /// `key_id` is what Encrypt returned with this ciphertext (KMS v2), or None (KMS v1).
    async fn decrypt(
        &self,
        ciphertext: &[u8],
        key_id: Option<&str>,
    ) -> Result<Zeroizing<Vec<u8>>, ProviderError>;
}

/// The key id a remote key service (Vault, AWS) last encrypted with: such services rotate on
/// their own, and the plugin learns of it from the next Encrypt.
#[cfg(any(feature = "vault", feature = "aws"))]
#[derive(Debug, Default)]
pub(crate) struct LatestKeyId(std::sync::Mutex<Option<String>>);

#[cfg(any(feature = "vault", feature = "aws"))]
impl LatestKeyId {
    /// Records the key id an Encrypt reported, logging when it changes.
    pub(crate) fn observe(&self, key_id: &str) {
        let mut last = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if last.as_deref() != Some(key_id) {
            if last.is_some() {
                tracing::info!(key_id = %key_id, "the key service now encrypts with another key");
            }
            *last = Some(key_id.to_owned());
        }
    }

    pub(crate) fn ids(&self) -> Vec<String> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .into_iter()
            .collect()
    }
}

/// Plain HTTP to a key service is allowed only on loopback (tests, emulators, a local agent).
#[cfg(any(feature = "vault", feature = "aws"))]
pub(crate) fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(all(test, any(feature = "vault", feature = "aws")))]
mod tests {
    #[test]
    fn loopback_hosts() {
        use super::is_loopback;
        assert!(is_loopback("127.0.0.1") && is_loopback("[::1]") && is_loopback("localhost"));
        assert!(!is_loopback("vault.example") && !is_loopback("10.0.0.1") && !is_loopback("localhost.evil"));
    }
}
