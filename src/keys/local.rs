//! Providers whose key-encryption keys end up in this process's memory: the key file, and the TPM
//! once it has unsealed its KEK. Both use the `envelope` format, so both support several keys for
//! rotation (the first encrypts, all decrypt) and name a key by its fingerprint.

use async_trait::async_trait;
use zeroize::Zeroizing;

use super::envelope::{self, EnvelopeError, Kek};
use super::{KeyProvider, ProviderError, Sealed};

#[derive(Debug)]
pub struct LocalKeys {
    name: &'static str,
    /// Primary first; never empty.
    keys: Vec<Kek>,
}

impl LocalKeys {
    /// `sources` names where each key came from, for the duplicate-key error.
    pub fn new(name: &'static str, keys: Vec<Kek>, sources: &[String]) -> anyhow::Result<LocalKeys> {
        if keys.is_empty() {
            anyhow::bail!("the {name} provider needs at least one key");
        }
        for (i, k) in keys.iter().enumerate() {
            if let Some(j) = keys[..i]
                .iter()
                .position(|o| o.fingerprint_hex() == k.fingerprint_hex())
            {
                let source = |n: usize| sources.get(n).map(String::as_str).unwrap_or("?");
                anyhow::bail!(
                    "{} holds the same key as {}; each configured key must be distinct",
                    source(i),
                    source(j)
                );
            }
        }
        Ok(LocalKeys { name, keys })
    }

    fn key_id_of(&self, kek: &Kek) -> String {
        format!("{}:{}", self.name, kek.fingerprint_hex())
    }
}

fn envelope_error(e: EnvelopeError) -> ProviderError {
    ProviderError::InvalidCiphertext(e.to_string())
}

#[async_trait]
impl KeyProvider for LocalKeys {
    fn name(&self) -> &'static str {
        self.name
    }

    fn key_ids(&self) -> Vec<String> {
        self.keys.iter().map(|k| self.key_id_of(k)).collect()
    }

    async fn encrypt(&self, plaintext: &[u8]) -> Result<Sealed, ProviderError> {
        Ok(Sealed {
            ciphertext: self.keys[0].seal(plaintext),
            key_id: self.key_id_of(&self.keys[0]),
        })
    }

    async fn decrypt(
        &self,
        ciphertext: &[u8],
        key_id: Option<&str>,
    ) -> Result<Zeroizing<Vec<u8>>, ProviderError> {
        if let Some(id) = key_id {
            let named = envelope::fingerprint_of(ciphertext).map_err(envelope_error)?;
            let expected = format!("{}:{named}", self.name);
            if id != expected {
                return Err(ProviderError::InvalidCiphertext(format!(
                    "key_id {:?} does not match the key the ciphertext was made with ({expected})",
                    clip(id)
                )));
            }
        }
        envelope::open(&self.keys, ciphertext).map_err(envelope_error)
    }
}

/// At most 64 characters of a caller-supplied id, for error messages.
fn clip(s: &str) -> &str {
    match s.char_indices().nth(64) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}
