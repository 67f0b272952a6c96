//! Key-encryption keys in local files: for development, for clusters without a TPM or external
//! KMS, and as the reference the other providers are tested against.
//!
//! A key file holds 32 random bytes, raw or base64-encoded, and must not be readable by group or
//! others. Several files enable rotation: the first encrypts, all of them decrypt.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use base64::Engine;
use zeroize::Zeroizing;

use super::envelope::Kek;
use super::local::LocalKeys;

/// The key-file provider: `LocalKeys` named `software`.
pub struct SoftwareProvider;

impl SoftwareProvider {
    /// Loads the key files; with `create`, writes a new random primary key first if the file does
    /// not exist (never overwriting one that does).
    pub fn load(files: &[PathBuf], create: bool) -> anyhow::Result<LocalKeys> {
        let Some(primary) = files.first() else {
            anyhow::bail!("the software provider needs at least one --key-file");
        };
        if create && !primary.exists() {
            create_key_file(primary)?;
            tracing::info!(path = %primary.display(), "created a new key-encryption key file");
        }
        let keys = files
            .iter()
            .map(|f| load_key_file(f))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let sources: Vec<String> = files
            .iter()
            .map(|f| format!("key file {}", f.display()))
            .collect();
        LocalKeys::new("software", keys, &sources)
    }
}

fn create_key_file(path: &Path) -> anyhow::Result<()> {
    let key = Zeroizing::new(rand::random::<[u8; 32]>());
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| anyhow::anyhow!("cannot create key file {}: {e}", path.display()))?;
    file.write_all(key.as_slice())
        .and_then(|()| file.sync_all())
        .map_err(|e| anyhow::anyhow!("cannot write key file {}: {e}", path.display()))
}

/// Reads a key file: exactly 32 bytes, or base64 of 32 bytes (surrounding whitespace allowed).
pub fn load_key_file(path: &Path) -> anyhow::Result<Kek> {
    let meta = std::fs::metadata(path).map_err(|e| {
        anyhow::anyhow!(
            "cannot read key file {}: {e}; create one with --create-key-file",
            path.display()
        )
    })?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        anyhow::bail!(
            "key file {} is accessible by group or others (mode {mode:04o}); run: chmod 600 {}",
            path.display(),
            path.display()
        );
    }
    let raw = Zeroizing::new(
        std::fs::read(path).map_err(|e| anyhow::anyhow!("cannot read key file {}: {e}", path.display()))?,
    );
    let key = parse_key(&raw).map_err(|why| anyhow::anyhow!("key file {} {why}", path.display()))?;
    Ok(Kek::from_bytes(&key))
}

/// The key in a key file's contents. The error never quotes the contents.
pub fn parse_key(raw: &[u8]) -> Result<Zeroizing<[u8; 32]>, String> {
    let mut key = Zeroizing::new([0u8; 32]);
    if raw.len() == 32 {
        key.copy_from_slice(raw);
        return Ok(key);
    }
    let text = raw.trim_ascii();
    let decoded = Zeroizing::new(
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(|_| format!("is neither 32 raw bytes nor base64 ({} bytes)", raw.len()))?,
    );
    if decoded.len() != 32 {
        return Err(format!(
            "holds a {}-byte key; a 256-bit key (32 bytes) is required",
            decoded.len()
        ));
    }
    key.copy_from_slice(&decoded);
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::KeyProvider;

    #[test]
    fn key_file_formats() {
        let raw = [9u8; 32];
        assert_eq!(*parse_key(&raw).unwrap(), raw);
        // base64 of 32 bytes of 9, with a trailing newline.
        assert_eq!(
            *parse_key(b"CQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQk=\n").unwrap(),
            raw
        );
        assert!(
            parse_key(b"short")
                .unwrap_err()
                .contains("neither 32 raw bytes nor base64")
        );
        assert!(parse_key(b"CQkJCQ==").unwrap_err().contains("4-byte key"));
        assert!(parse_key(b"====").is_err());
        assert!(parse_key(b"CQ=kJCQ=").is_err());
    }

    #[test]
    fn key_files_must_be_private_and_are_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kek");
        let p = SoftwareProvider::load(std::slice::from_ref(&path), true).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let before = std::fs::read(&path).unwrap();
        let again = SoftwareProvider::load(std::slice::from_ref(&path), true).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), before, "an existing key is kept");
        assert_eq!(p.key_ids(), again.key_ids());

        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = SoftwareProvider::load(std::slice::from_ref(&path), false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("chmod 600") && err.contains("0644"), "{err}");

        let err = SoftwareProvider::load(&[dir.path().join("missing")], false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("--create-key-file"), "{err}");
    }

    #[tokio::test]
    async fn rotation_keeps_old_ciphertexts_readable_and_changes_the_key_id() {
        let dir = tempfile::tempdir().unwrap();
        let (old, new) = (dir.path().join("old"), dir.path().join("new"));
        let before = SoftwareProvider::load(std::slice::from_ref(&old), true).unwrap();
        let sealed = before.encrypt(b"dek").await.unwrap();
        SoftwareProvider::load(std::slice::from_ref(&new), true).unwrap();
        let after = SoftwareProvider::load(&[new, old], false).unwrap();
        assert_ne!(after.key_ids()[0], sealed.key_id);
        assert_eq!(after.key_ids()[1], sealed.key_id);
        let plain = after
            .decrypt(&sealed.ciphertext, Some(&sealed.key_id))
            .await
            .unwrap();
        assert_eq!(plain.as_slice(), b"dek");
        let err = after
            .decrypt(&sealed.ciphertext, Some("software:0000000000000000"))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("does not match"), "{err}");
    }
}
