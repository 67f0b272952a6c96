//! Ed25519 keys for destruction certificates (ring). A key's id is derived from its public key
//! (`ed25519-` and 16 hex digits of its SHA-256), so a published id cannot be pointed at another
//! key, and it is a valid ConfigMap data key.

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ring::rand::SystemRandom;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::{ALGORITHM, Signature};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("cannot generate an Ed25519 key: the system's random source failed")]
    Random,
    #[error("the signing key is not an Ed25519 PKCS#8 document")]
    NotPkcs8,
    #[error("public key {id:?}: {why}")]
    Public { id: String, why: String },
    #[error(
        "no public keys given: pass the ConfigMap Phylax publishes them in (or a JSON object of id: base64 key)"
    )]
    NoKeys,
    #[error("the public keys are not JSON: {0}")]
    NotJson(String),
}

pub fn key_id(public: &[u8]) -> String {
    format!(
        "ed25519-{}",
        crate::runtime::hex::encode(&Sha256::digest(public)[..8])
    )
}

/// The operator's signing key. The PKCS#8 document is what the key Secret stores.
pub struct SigningKey {
    id: String,
    pair: Ed25519KeyPair,
    pkcs8: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigningKey({})", self.id)
    }
}

impl SigningKey {
    pub fn generate() -> Result<SigningKey, KeyError> {
        let doc = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).map_err(|_| KeyError::Random)?;
        SigningKey::from_pkcs8(doc.as_ref())
    }

    pub fn from_pkcs8(pkcs8: &[u8]) -> Result<SigningKey, KeyError> {
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8).map_err(|_| KeyError::NotPkcs8)?;
        Ok(SigningKey {
            id: key_id(pair.public_key().as_ref()),
            pair,
            pkcs8: Zeroizing::new(pkcs8.to_vec()),
        })
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn pkcs8(&self) -> &[u8] {
        &self.pkcs8
    }

    pub fn public_key(&self) -> &[u8] {
        self.pair.public_key().as_ref()
    }

    pub fn sign(&self, message: &[u8]) -> Signature {
        Signature {
            algorithm: ALGORITHM.to_owned(),
            key_id: self.id.clone(),
            value: STANDARD.encode(self.pair.sign(message).as_ref()),
        }
    }
}

/// The public keys a verifier trusts, current and retired, by id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PublicKeys(BTreeMap<String, Vec<u8>>);

impl PublicKeys {
    pub fn from_signing(keys: &[&SigningKey]) -> PublicKeys {
        PublicKeys(
            keys.iter()
                .map(|k| (k.id.clone(), k.public_key().to_vec()))
                .collect(),
        )
    }

    /// `id → base64 public key`: the `data` of the published ConfigMap. Each id must be the one
    /// its key derives, so a mapping edited to pass off another key is refused.
    pub fn from_map(map: &BTreeMap<String, String>) -> Result<PublicKeys, KeyError> {
        if map.is_empty() {
            return Err(KeyError::NoKeys);
        }
        let mut keys = BTreeMap::new();
        for (id, b64) in map {
            let bad = |why: &str| KeyError::Public {
                id: id.clone(),
                why: why.to_owned(),
            };
            let key = STANDARD.decode(b64.trim()).map_err(|_| bad("not base64"))?;
            if key.len() != 32 {
                return Err(bad("not a 32-byte Ed25519 public key"));
            }
            if key_id(&key) != *id {
                return Err(bad(&format!(
                    "the key's id is {}, not {id}: the mapping was altered",
                    key_id(&key)
                )));
            }
            keys.insert(id.clone(), key);
        }
        Ok(PublicKeys(keys))
    }

    /// A ConfigMap (`kubectl get configmap … -o json`, or YAML) or a plain JSON object.
    pub fn parse(text: &str) -> Result<PublicKeys, KeyError> {
        let value: serde_json::Value =
            serde_yaml::from_str(text).map_err(|e| KeyError::NotJson(e.to_string()))?;
        let map = value.get("data").unwrap_or(&value);
        let map: BTreeMap<String, String> =
            serde_json::from_value(map.clone()).map_err(|e| KeyError::NotJson(e.to_string()))?;
        PublicKeys::from_map(&map)
    }

    pub fn to_map(&self) -> BTreeMap<String, String> {
        self.0
            .iter()
            .map(|(id, k)| (id.clone(), STANDARD.encode(k)))
            .collect()
    }

    pub fn contains(&self, id: &str) -> bool {
        self.0.contains_key(id)
    }

    /// Whether `signature` is `key_id`'s over `message`; None when the key is unknown.
    pub fn verify(&self, key_id: &str, message: &[u8], signature: &[u8]) -> Option<bool> {
        let key = self.0.get(key_id)?;
        Some(
            UnparsedPublicKey::new(&ED25519, key)
                .verify(message, signature)
                .is_ok(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_ids_bind_their_keys() {
        let key = SigningKey::generate().unwrap();
        let again = SigningKey::from_pkcs8(key.pkcs8()).unwrap();
        assert_eq!(key.id(), again.id());
        assert!(key.id().starts_with("ed25519-") && key.id().len() == 24);
        let other = SigningKey::generate().unwrap();
        let published = PublicKeys::from_signing(&[&key, &other]).to_map();
        let parsed =
            PublicKeys::parse(&serde_json::json!({"kind": "ConfigMap", "data": published}).to_string())
                .unwrap();
        assert!(parsed.contains(key.id()) && parsed.contains(other.id()));
        // Another key under a known id is refused.
        let mut swapped = published.clone();
        swapped.insert(key.id().to_owned(), published[other.id()].clone());
        let err = PublicKeys::from_map(&swapped).unwrap_err().to_string();
        assert!(err.contains("altered"), "{err}");
        assert_eq!(PublicKeys::from_map(&BTreeMap::new()), Err(KeyError::NoKeys));
        assert!(SigningKey::from_pkcs8(b"not a key").is_err());
    }
}
