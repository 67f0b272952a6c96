//! The ciphertext format of providers that hold their key-encryption key (KEK) locally — the
//! key-file provider, and the TPM provider once the TPM has unsealed its KEK:
//!
//! ```text
//! [0x01][key fingerprint, 8 bytes][nonce, 12 bytes][AES-256-GCM ciphertext || 16-byte tag]
//! ```
//!
//! The first 9 bytes are authenticated as associated data, so a ciphertext cannot be made to claim
//! another key. The fingerprint names the KEK without revealing anything about it, which is what
//! lets several keys be configured for rotation and lets KMS v1 (which sends no key id) decrypt.

use aes_gcm::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

pub const FORMAT_V1: u8 = 0x01;
const FP_LEN: usize = 8;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
const HEADER_LEN: usize = 1 + FP_LEN;
pub const OVERHEAD: usize = HEADER_LEN + NONCE_LEN + TAG_LEN;

/// A 256-bit key-encryption key held in memory. The cipher's key schedule is zeroized on drop
/// (aes-gcm's `zeroize` feature), and the raw key is never kept.
pub struct Kek {
    cipher: Aes256Gcm,
    fingerprint: [u8; FP_LEN],
}

impl std::fmt::Debug for Kek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kek")
            .field("fingerprint", &self.fingerprint_hex())
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EnvelopeError {
    #[error("ciphertext is empty")]
    Empty,
    #[error("ciphertext is {0} bytes, shorter than the {OVERHEAD}-byte minimum of this format")]
    TooShort(usize),
    #[error("unknown ciphertext format {0:#04x} (this plugin writes {FORMAT_V1:#04x})")]
    UnknownFormat(u8),
    #[error("ciphertext was made with key {0}, which is not configured")]
    UnknownKey(String),
    #[error("ciphertext failed authentication (corrupted, truncated or not made by this key)")]
    Authentication,
}

impl Kek {
    pub fn from_bytes(key: &Zeroizing<[u8; 32]>) -> Kek {
        let mut hasher = Sha256::new();
        hasher.update(b"phylax-kms-kek-fingerprint-v1");
        hasher.update(key.as_slice());
        let digest = hasher.finalize();
        let mut fingerprint = [0u8; FP_LEN];
        fingerprint.copy_from_slice(&digest[..FP_LEN]);
        Kek {
            cipher: Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(key.as_slice())),
            fingerprint,
        }
    }

    pub fn fingerprint_hex(&self) -> String {
        crate::runtime::hex::encode(&self.fingerprint)
    }

    pub fn seal(&self, plaintext: &[u8]) -> Vec<u8> {
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        let mut header = [0u8; HEADER_LEN];
        header[0] = FORMAT_V1;
        header[1..].copy_from_slice(&self.fingerprint);
        let mut out = Vec::with_capacity(OVERHEAD + plaintext.len());
        out.extend_from_slice(&header);
        out.extend_from_slice(&nonce);
        // Encryption with a valid key and nonce cannot fail for inputs under GCM's 64 GiB limit,
        // and callers cap plaintexts far below it.
        let body = self
            .cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: plaintext,
                    aad: &header,
                },
            )
            .unwrap_or_default();
        out.extend_from_slice(&body);
        out
    }

    fn open(&self, ciphertext: &[u8]) -> Result<Zeroizing<Vec<u8>>, EnvelopeError> {
        let (header, rest) = ciphertext.split_at(HEADER_LEN);
        let (nonce, body) = rest.split_at(NONCE_LEN);
        self.cipher
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: body,
                    aad: header,
                },
            )
            .map(Zeroizing::new)
            .map_err(|_| EnvelopeError::Authentication)
    }
}

/// The fingerprint a ciphertext names, after checking its format and length.
pub fn fingerprint_of(ciphertext: &[u8]) -> Result<String, EnvelopeError> {
    match ciphertext.first() {
        None => Err(EnvelopeError::Empty),
        Some(&v) if v != FORMAT_V1 => Err(EnvelopeError::UnknownFormat(v)),
        Some(_) if ciphertext.len() < OVERHEAD => Err(EnvelopeError::TooShort(ciphertext.len())),
        Some(_) => Ok(crate::runtime::hex::encode(&ciphertext[1..HEADER_LEN])),
    }
}

/// Decrypts with whichever configured key the ciphertext names.
pub fn open(keks: &[Kek], ciphertext: &[u8]) -> Result<Zeroizing<Vec<u8>>, EnvelopeError> {
    let fp = fingerprint_of(ciphertext)?;
    let kek = keks
        .iter()
        .find(|k| k.fingerprint_hex() == fp)
        .ok_or(EnvelopeError::UnknownKey(fp))?;
    kek.open(ciphertext)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kek(byte: u8) -> Kek {
        Kek::from_bytes(&Zeroizing::new([byte; 32]))
    }

    #[test]
    fn round_trip_with_rotation() {
        let (old, new) = (kek(1), kek(2));
        let c_old = old.seal(b"dek-under-old-key");
        let c_new = new.seal(b"dek-under-new-key");
        let keys = [new, old];
        assert_eq!(open(&keys, &c_old).unwrap().as_slice(), b"dek-under-old-key");
        assert_eq!(open(&keys, &c_new).unwrap().as_slice(), b"dek-under-new-key");
        assert_eq!(c_new.len(), OVERHEAD + 17);
    }

    #[test]
    fn nonces_differ_and_fingerprints_are_stable() {
        let k = kek(7);
        assert_ne!(k.seal(b"x"), k.seal(b"x"));
        assert_eq!(k.fingerprint_hex(), kek(7).fingerprint_hex());
        assert_ne!(k.fingerprint_hex(), kek(8).fingerprint_hex());
        assert_eq!(k.fingerprint_hex().len(), 16);
    }

    #[test]
    fn bad_ciphertexts_are_refused_precisely() {
        let k = kek(3);
        let good = k.seal(b"secret");
        let keys = [kek(3)];
        assert_eq!(open(&keys, &[]).unwrap_err(), EnvelopeError::Empty);
        assert_eq!(
            open(&keys, &[0x02; 40]).unwrap_err(),
            EnvelopeError::UnknownFormat(2)
        );
        assert_eq!(open(&keys, &good[..20]).unwrap_err(), EnvelopeError::TooShort(20));
        assert!(matches!(
            open(&[kek(4)], &good).unwrap_err(),
            EnvelopeError::UnknownKey(_)
        ));
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x40;
            let err = open(&keys, &bad).unwrap_err();
            // Flipping a header bit changes the key or format; anything else fails authentication.
            assert!(
                matches!(
                    err,
                    EnvelopeError::Authentication
                        | EnvelopeError::UnknownKey(_)
                        | EnvelopeError::UnknownFormat(_)
                ),
                "byte {i}: {err:?}"
            );
        }
        let mut truncated = good.clone();
        truncated.pop();
        assert_eq!(
            open(&keys, &truncated).unwrap_err(),
            EnvelopeError::Authentication
        );
    }

    #[test]
    fn errors_and_debug_never_show_key_material() {
        let k = kek(0xAB);
        let dbg = format!("{k:?}");
        assert!(
            !dbg.contains("171") && !dbg.to_lowercase().contains("abab"),
            "{dbg}"
        );
    }
}
