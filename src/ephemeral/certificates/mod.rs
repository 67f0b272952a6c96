//! Destruction certificates: a signed, append-only record of every destruction of sensitive data,
//! which an auditor verifies offline with the published public keys, without trusting the cluster.
//!
//! The shape follows EFSF's (`version`, `certificate_id`, `resource`, `destruction`,
//! `chain_of_custody`, `signature`). What is signed is the RFC 8785 canonical form of the
//! certificate without its `signature` member, with Ed25519. Certificates form one hash chain:
//! each carries its index and the SHA-256 of its predecessor's canonical form (signature
//! included), so a deleted, altered, replaced or reordered certificate is found by
//! [`verify_chain`]. Certificates never carry a secret value: only names, classifications, times
//! and methods.

pub mod jcs;
mod keys;
mod verify;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use keys::{KeyError, PublicKeys, SigningKey};
pub use verify::{ChainReport, Problem, verify_chain, verify_one};

/// The format version this build writes and reads.
pub const VERSION: &str = "1";
pub const ALGORITHM: &str = "Ed25519";
/// `previous` of the first certificate of a chain.
pub const GENESIS: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000000";

/// How the data was destroyed. Honest about what an operator can do: a Kubernetes Secret is
/// deleted through the API (its bytes in etcd are not shredded by Phylax); `crypto_shred` only
/// where the key that encrypted the data was destroyed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    Delete,
    CryptoShred,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resource {
    /// What kind of thing was destroyed, e.g. `kubernetes.secret`.
    #[serde(rename = "type")]
    pub type_: String,
    /// Which one, e.g. `shop/db-password` and its uid.
    pub id: String,
    /// EFSF classification (`TRANSIENT`, `SHORT_LIVED`, `RETENTION_BOUND`, `PERSISTENT`).
    pub classification: String,
    /// Names only (owner, key names, reason): never values.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Destruction {
    pub method: Method,
    /// RFC 3339, UTC.
    pub timestamp: String,
    /// Who destroyed and checked it is gone, e.g. `phylax-operator/<pod>`.
    pub verified_by: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HashChain {
    /// Position in the chain, from 0.
    pub index: u64,
    /// `sha256:<hex>` of the predecessor's canonical form, or [`GENESIS`] at index 0.
    pub previous: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChainOfCustody {
    pub created_at: String,
    pub created_by: String,
    /// Reads of the data, where the holder counts them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_count: Option<u64>,
    pub hash_chain: HashChain,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Signature {
    pub algorithm: String,
    pub key_id: String,
    /// Base64 (standard, padded) of the 64-byte Ed25519 signature.
    pub value: String,
}

/// A certificate before it is signed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Unsigned {
    pub version: String,
    pub certificate_id: String,
    pub resource: Resource,
    pub destruction: Destruction,
    pub chain_of_custody: ChainOfCustody,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Certificate {
    pub version: String,
    pub certificate_id: String,
    pub resource: Resource,
    pub destruction: Destruction,
    pub chain_of_custody: ChainOfCustody,
    pub signature: Signature,
}

impl Certificate {
    pub fn index(&self) -> u64 {
        self.chain_of_custody.hash_chain.index
    }

    /// The part the signature covers.
    pub fn unsigned(&self) -> Unsigned {
        Unsigned {
            version: self.version.clone(),
            certificate_id: self.certificate_id.clone(),
            resource: self.resource.clone(),
            destruction: self.destruction.clone(),
            chain_of_custody: self.chain_of_custody.clone(),
        }
    }

    /// `sha256:<hex>` of the whole certificate's canonical form: what its successor names.
    pub fn chain_hash(&self) -> Result<String, jcs::CanonicalError> {
        Ok(sha256_hex(&canonical(self)?))
    }
}

/// Canonical bytes of any certificate part.
pub fn canonical<T: Serialize>(value: &T) -> Result<Vec<u8>, jcs::CanonicalError> {
    // Serializing these plain structs to a Value cannot fail.
    let value = serde_json::to_value(value).unwrap_or(serde_json::Value::Null);
    jcs::canonicalize(&value)
}

fn sha256_hex(bytes: &[u8]) -> String {
    format!("sha256:{}", crate::runtime::hex::encode(&Sha256::digest(bytes)))
}

/// Appends certificates to one chain: knows the last index and hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainHead {
    /// Index the next certificate gets.
    pub next_index: u64,
    /// What the next certificate names as `previous`.
    pub previous: String,
}

impl ChainHead {
    pub fn genesis() -> ChainHead {
        ChainHead {
            next_index: 0,
            previous: GENESIS.to_owned(),
        }
    }

    /// The head after `last`, the newest certificate of a chain.
    pub fn after(last: &Certificate) -> Result<ChainHead, jcs::CanonicalError> {
        Ok(ChainHead {
            next_index: last.index() + 1,
            previous: last.chain_hash()?,
        })
    }
}

/// What is known about a destruction; [`issue`] turns it into the chain's next certificate.
#[derive(Debug, Clone)]
pub struct Facts {
    pub certificate_id: String,
    pub resource: Resource,
    pub method: Method,
    pub destroyed_at: String,
    pub verified_by: String,
    pub created_at: String,
    pub created_by: String,
    pub access_count: Option<u64>,
}

/// Signs the next certificate of the chain and moves the head past it.
pub fn issue(
    facts: Facts,
    head: &mut ChainHead,
    key: &SigningKey,
) -> Result<Certificate, jcs::CanonicalError> {
    let unsigned = Unsigned {
        version: VERSION.to_owned(),
        certificate_id: facts.certificate_id,
        resource: facts.resource,
        destruction: Destruction {
            method: facts.method,
            timestamp: facts.destroyed_at,
            verified_by: facts.verified_by,
        },
        chain_of_custody: ChainOfCustody {
            created_at: facts.created_at,
            created_by: facts.created_by,
            access_count: facts.access_count,
            hash_chain: HashChain {
                index: head.next_index,
                previous: head.previous.clone(),
            },
        },
    };
    let signature = key.sign(&canonical(&unsigned)?);
    let cert = Certificate {
        version: unsigned.version,
        certificate_id: unsigned.certificate_id,
        resource: unsigned.resource,
        destruction: unsigned.destruction,
        chain_of_custody: unsigned.chain_of_custody,
        signature,
    };
    *head = ChainHead::after(&cert)?;
    Ok(cert)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn facts(n: u64) -> Facts {
        Facts {
            certificate_id: format!("dc-{n:032x}"),
            resource: Resource {
                type_: "kubernetes.secret".into(),
                id: format!("shop/session-{n}"),
                classification: "TRANSIENT".into(),
                metadata: BTreeMap::from([("reason".to_owned(), "expired".to_owned())]),
            },
            method: Method::Delete,
            destroyed_at: "2026-11-29T10:00:00Z".into(),
            verified_by: "phylax-operator/test".into(),
            created_at: "2026-11-29T09:00:00Z".into(),
            created_by: "phylax-operator".into(),
            access_count: None,
        }
    }

    pub fn chain(key: &SigningKey, n: u64) -> Vec<Certificate> {
        let mut head = ChainHead::genesis();
        (0..n).map(|i| issue(facts(i), &mut head, key).unwrap()).collect()
    }

    #[test]
    fn issued_certificates_link_and_verify() {
        let key = SigningKey::generate().unwrap();
        let certs = chain(&key, 3);
        assert_eq!(certs[0].chain_of_custody.hash_chain.previous, GENESIS);
        assert_eq!(
            certs[2].chain_of_custody.hash_chain.previous,
            certs[1].chain_hash().unwrap()
        );
        let keys = PublicKeys::from_signing(&[&key]);
        for c in &certs {
            verify_one(c, &keys).unwrap();
        }
        assert!(verify_chain(&certs, &keys).problems.is_empty());
        // The wire form has EFSF's member names.
        let wire = serde_json::to_value(&certs[0]).unwrap();
        assert_eq!(wire["resource"]["type"], "kubernetes.secret");
        assert_eq!(wire["destruction"]["method"], "delete");
        assert!(wire["chain_of_custody"].get("access_count").is_none());
    }
}
