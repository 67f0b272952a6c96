//! `file`: a directory of JSON files on the operator's filesystem — for development and demos
//! only (no access control beyond the SecretProvider's, no audit, values on disk in clear).
//! A path `shop/config` reads `<directory>/shop/config.json`; `..`, `.` and empty segments are
//! refused, and symlinks may not lead out of the directory.

use std::path::{Component, Path, PathBuf};

use async_trait::async_trait;

use super::{SecretBytes, Store, StoreError};
use crate::api::secret_provider;

/// Larger files are refused rather than read (a Secret holds at most 1 MiB anyway).
const MAX_FILE: u64 = 2 * 1024 * 1024;

pub struct FileStore {
    root: PathBuf,
}

impl FileStore {
    pub fn new(spec: &secret_provider::FileStore) -> Result<FileStore, StoreError> {
        let root = PathBuf::from(&spec.directory);
        if !root.is_absolute() {
            return Err(StoreError::Config(format!(
                "file.directory {:?} must be an absolute path",
                spec.directory
            )));
        }
        tracing::warn!(
            directory = %root.display(),
            "a SecretProvider uses the file store: for development and demos only"
        );
        Ok(FileStore { root })
    }

    /// The file a path names, checked to stay under the root.
    pub fn file_for(&self, path: &str) -> Result<PathBuf, StoreError> {
        let rel = path.trim_start_matches('/');
        let bad = || {
            StoreError::InvalidPath(format!(
                "path {path:?} must be segments of letters, digits, '-', '_' or '.' separated by '/', \
                 without '.' or '..' segments"
            ))
        };
        if rel.is_empty() || rel.split('/').any(|s| s.is_empty() || s == "." || s == "..") {
            return Err(bad());
        }
        if !rel
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'/'))
        {
            return Err(bad());
        }
        let file = self.root.join(format!("{rel}.json"));
        debug_assert!(file.components().all(|c| !matches!(c, Component::ParentDir)));
        Ok(file)
    }
}

fn canonical_under(root: &Path, file: &Path) -> Result<PathBuf, std::io::Error> {
    let root = std::fs::canonicalize(root)?;
    let file = std::fs::canonicalize(file)?;
    if file.starts_with(&root) {
        Ok(file)
    } else {
        Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            "leads out of the directory",
        ))
    }
}

#[async_trait]
impl Store for FileStore {
    fn kind(&self) -> &'static str {
        "file"
    }

    async fn fetch(&self, path: &str) -> Result<SecretBytes, StoreError> {
        let file = self.file_for(path)?;
        let root = self.root.clone();
        let path = path.to_owned();
        tokio::task::spawn_blocking(move || {
            let real = match canonical_under(&root, &file) {
                Ok(real) => real,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err(StoreError::NotFound { path });
                }
                Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                    return Err(StoreError::AccessDenied {
                        path,
                        need: format!("read access to {} for the operator ({e})", file.display()),
                    });
                }
                Err(e) => return Err(StoreError::Unreachable(format!("{}: {e}", file.display()))),
            };
            let meta = std::fs::metadata(&real).map_err(|e| StoreError::Unreachable(e.to_string()))?;
            if !meta.is_file() {
                return Err(StoreError::NotFound { path });
            }
            if meta.len() > MAX_FILE {
                return Err(StoreError::Corrupt(format!(
                    "{} is {} bytes; at most {MAX_FILE}",
                    file.display(),
                    meta.len()
                )));
            }
            std::fs::read(&real)
                .map(SecretBytes::new)
                .map_err(|e| StoreError::Unreachable(format!("{}: {e}", file.display())))
        })
        .await
        .map_err(|e| StoreError::Unreachable(format!("file read task failed: {e}")))?
    }

    async fn check(&self) -> Result<(), StoreError> {
        match tokio::fs::metadata(&self.root).await {
            Ok(m) if m.is_dir() => Ok(()),
            Ok(_) => Err(StoreError::Config(format!(
                "{} is not a directory",
                self.root.display()
            ))),
            Err(e) => Err(StoreError::Unreachable(format!("{}: {e}", self.root.display()))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(dir: &Path) -> FileStore {
        FileStore::new(&secret_provider::FileStore {
            directory: dir.display().to_string(),
        })
        .unwrap()
    }

    #[tokio::test]
    async fn reads_files_under_the_root_only() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("shop")).unwrap();
        std::fs::write(dir.path().join("shop/config.json"), br#"{"a":"1"}"#).unwrap();
        let s = store(dir.path());
        assert_eq!(&s.fetch("/shop/config").await.unwrap().0[..], br#"{"a":"1"}"#);
        assert!(matches!(
            s.fetch("shop/other").await,
            Err(StoreError::NotFound { .. })
        ));
        for bad in [
            "../etc/passwd",
            "shop/../x",
            "shop//x",
            "",
            "/",
            "a b",
            "shop/./config",
        ] {
            assert!(
                matches!(s.fetch(bad).await, Err(StoreError::InvalidPath(_))),
                "{bad:?}"
            );
        }
        // A symlink out of the directory is not followed.
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("x.json"), b"{}").unwrap();
        std::os::unix::fs::symlink(outside.path().join("x.json"), dir.path().join("escape.json")).unwrap();
        assert!(matches!(
            s.fetch("escape").await,
            Err(StoreError::AccessDenied { .. })
        ));
        assert!(s.check().await.is_ok());
    }

    #[test]
    fn relative_directory_is_refused() {
        let e = FileStore::new(&secret_provider::FileStore {
            directory: "rel".into(),
        });
        assert!(matches!(e, Err(StoreError::Config(m)) if m.contains("absolute")));
    }
}
