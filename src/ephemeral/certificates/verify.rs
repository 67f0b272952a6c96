//! Offline verification of one certificate or a whole chain. Every problem is named with the
//! certificate it concerns and what it means (altered, deleted, replaced, unknown key).

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use super::{ALGORITHM, Certificate, GENESIS, PublicKeys, VERSION, canonical};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    #[error("certificate {id}: version {version:?} is not one this build reads ({VERSION})")]
    Version { id: String, version: String },
    #[error("certificate {id}: algorithm {algorithm:?} is not {ALGORITHM}")]
    Algorithm { id: String, algorithm: String },
    #[error("certificate {id}: signed by key {key_id}, which is not among the public keys given")]
    UnknownKey { id: String, key_id: String },
    #[error("certificate {id}: the signature does not match its content (altered after signing)")]
    BadSignature { id: String },
    #[error("certificate {id}: {why}")]
    Malformed { id: String, why: String },
    #[error("the chain starts at index {first}: certificates 0..{first} are missing")]
    MissingStart { first: u64 },
    #[error("certificates {from}..{to} are missing between {before} and {after} (deleted?)")]
    Gap {
        from: u64,
        to: u64,
        before: String,
        after: String,
    },
    #[error("certificates {a} and {b} both claim index {index}")]
    Duplicate { index: u64, a: String, b: String },
    #[error(
        "certificate {id} (index {index}) does not follow {previous_id}: it names predecessor {named}, \
         but {previous_id} hashes to {actual} (a certificate was altered or replaced)"
    )]
    BrokenLink {
        id: String,
        index: u64,
        previous_id: String,
        named: String,
        actual: String,
    },
    #[error("certificate {id} is first (index 0) but names predecessor {named}, not the genesis value")]
    NotGenesis { id: String, named: String },
}

/// Checks one certificate's version, algorithm and signature.
pub fn verify_one(cert: &Certificate, keys: &PublicKeys) -> Result<(), Problem> {
    let id = || cert.certificate_id.clone();
    if cert.version != VERSION {
        return Err(Problem::Version {
            id: id(),
            version: cert.version.clone(),
        });
    }
    if cert.signature.algorithm != ALGORITHM {
        return Err(Problem::Algorithm {
            id: id(),
            algorithm: cert.signature.algorithm.clone(),
        });
    }
    let signature = STANDARD
        .decode(&cert.signature.value)
        .map_err(|_| Problem::Malformed {
            id: id(),
            why: "the signature is not base64".into(),
        })?;
    let message = canonical(&cert.unsigned()).map_err(|e| Problem::Malformed {
        id: id(),
        why: e.to_string(),
    })?;
    match keys.verify(&cert.signature.key_id, &message, &signature) {
        None => Err(Problem::UnknownKey {
            id: id(),
            key_id: cert.signature.key_id.clone(),
        }),
        Some(false) => Err(Problem::BadSignature { id: id() }),
        Some(true) => Ok(()),
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChainReport {
    /// Certificates whose signature verified.
    pub verified: usize,
    pub problems: Vec<Problem>,
}

/// Verifies every certificate and the links between them, in index order whatever the input's
/// order (`kubectl get` sorts by name).
pub fn verify_chain(certs: &[Certificate], keys: &PublicKeys) -> ChainReport {
    let mut report = ChainReport::default();
    for c in certs {
        match verify_one(c, keys) {
            Ok(()) => report.verified += 1,
            Err(p) => report.problems.push(p),
        }
    }
    let mut ordered: Vec<&Certificate> = certs.iter().collect();
    ordered.sort_by_key(|c| c.index());
    let Some(first) = ordered.first() else {
        return report;
    };
    if first.index() != 0 {
        report
            .problems
            .push(Problem::MissingStart { first: first.index() });
    } else if first.chain_of_custody.hash_chain.previous != GENESIS {
        report.problems.push(Problem::NotGenesis {
            id: first.certificate_id.clone(),
            named: first.chain_of_custody.hash_chain.previous.clone(),
        });
    }
    for pair in ordered.windows(2) {
        let (prev, next) = (pair[0], pair[1]);
        if next.index() == prev.index() {
            report.problems.push(Problem::Duplicate {
                index: next.index(),
                a: prev.certificate_id.clone(),
                b: next.certificate_id.clone(),
            });
            continue;
        }
        if next.index() > prev.index() + 1 {
            report.problems.push(Problem::Gap {
                from: prev.index() + 1,
                to: next.index() - 1,
                before: prev.certificate_id.clone(),
                after: next.certificate_id.clone(),
            });
            continue;
        }
        let actual = match prev.chain_hash() {
            Ok(h) => h,
            Err(e) => {
                report.problems.push(Problem::Malformed {
                    id: prev.certificate_id.clone(),
                    why: e.to_string(),
                });
                continue;
            }
        };
        if next.chain_of_custody.hash_chain.previous != actual {
            report.problems.push(Problem::BrokenLink {
                id: next.certificate_id.clone(),
                index: next.index(),
                previous_id: prev.certificate_id.clone(),
                named: next.chain_of_custody.hash_chain.previous.clone(),
                actual,
            });
        }
    }
    report
}

#[cfg(test)]
mod tests {
    use super::super::tests::chain;
    use super::super::{ChainHead, SigningKey, issue};
    use super::*;

    fn problems(certs: &[Certificate], keys: &PublicKeys) -> Vec<String> {
        verify_chain(certs, keys)
            .problems
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn tampering_deleting_and_reordering_are_caught() {
        let key = SigningKey::generate().unwrap();
        let keys = PublicKeys::from_signing(&[&key]);
        let certs = chain(&key, 5);

        // Input order does not matter.
        let mut shuffled = certs.clone();
        shuffled.reverse();
        assert!(problems(&shuffled, &keys).is_empty());

        // Altered content.
        let mut altered = certs.clone();
        altered[2].resource.classification = "PERSISTENT".into();
        let p = problems(&altered, &keys);
        assert!(p.iter().any(|m| m.contains("altered after signing")), "{p:?}");
        assert!(p.iter().any(|m| m.contains("does not follow")), "{p:?}");

        // Deleted.
        let mut deleted = certs.clone();
        deleted.remove(2);
        let p = problems(&deleted, &keys);
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].contains("2..2 are missing"), "{p:?}");
        let p = problems(&certs[1..], &keys);
        assert!(p[0].contains("starts at index 1"), "{p:?}");

        // Reordered: two certificates swap their places in the chain (re-signed by a thief
        // without the key, they fail; with indexes swapped but unsigned, the signatures fail).
        let mut swapped = certs.clone();
        swapped[1].chain_of_custody.hash_chain.index = 2;
        swapped[2].chain_of_custody.hash_chain.index = 1;
        let p = problems(&swapped, &keys);
        assert!(
            p.iter().filter(|m| m.contains("altered after signing")).count() == 2,
            "{p:?}"
        );

        // Replaced by a validly signed certificate from another chain (same key).
        let mut other_head = ChainHead::genesis();
        let mut replaced = certs.clone();
        let mut forged_facts = super::super::tests::facts(99);
        forged_facts.resource.id = "shop/other".into();
        other_head.next_index = 3;
        replaced[3] = issue(forged_facts, &mut other_head, &key).unwrap();
        let p = problems(&replaced, &keys);
        assert!(p.iter().any(|m| m.contains("does not follow")), "{p:?}");

        // Duplicate index.
        let mut dup = certs.clone();
        dup.push(certs[4].clone());
        assert!(
            problems(&dup, &keys)
                .iter()
                .any(|m| m.contains("both claim index 4"))
        );
    }

    #[test]
    fn unknown_keys_and_rotation() {
        let old = SigningKey::generate().unwrap();
        let new = SigningKey::generate().unwrap();
        let mut head = ChainHead::genesis();
        let mut certs = Vec::new();
        for i in 0..2 {
            certs.push(issue(super::super::tests::facts(i), &mut head, &old).unwrap());
        }
        // The key rotates; the chain continues under the new key.
        for i in 2..4 {
            certs.push(issue(super::super::tests::facts(i), &mut head, &new).unwrap());
        }
        let both = PublicKeys::from_signing(&[&old, &new]);
        assert!(problems(&certs, &both).is_empty());
        let only_new = PublicKeys::from_signing(&[&new]);
        let p = problems(&certs, &only_new);
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(p[0].contains(old.id()) && p[0].contains("not among the public keys"));
    }
}
