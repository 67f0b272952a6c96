//! The serving certificate, re-read when its files change, so a rotated certificate is used
//! without a restart.
//!
//! A Secret volume updates by swapping a `..data` symlink, which replaces the files' inodes: a
//! watch on the old inode would miss it. Instead every TLS handshake looks at the files' metadata
//! (following symlinks) and reloads when it changed. A half-written or mismatched pair is refused
//! and the previous certificate keeps serving.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

pub const CERT_FILE: &str = "tls.crt";
pub const KEY_FILE: &str = "tls.key";

type Stamp = [(SystemTime, u64, u64); 2];

#[derive(Debug)]
pub struct ReloadingCert {
    dir: PathBuf,
    provider: Arc<CryptoProvider>,
    current: RwLock<(Option<Stamp>, Arc<CertifiedKey>)>,
}

impl ReloadingCert {
    /// Loads `tls.crt` and `tls.key` from `dir`; they must be usable now.
    pub fn load(dir: &Path) -> anyhow::Result<Arc<ReloadingCert>> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let stamp = stamp(dir);
        let key = load_pair(dir, &provider).map_err(|why| anyhow::anyhow!("{why}"))?;
        Ok(Arc::new(ReloadingCert {
            dir: dir.to_owned(),
            provider,
            current: RwLock::new((stamp, key)),
        }))
    }

    /// The certificate to serve, reloaded first if the files changed.
    pub fn current(&self) -> Arc<CertifiedKey> {
        let now = stamp(&self.dir);
        {
            let cur = self.current.read().unwrap_or_else(|p| p.into_inner());
            if cur.0 == now || now.is_none() {
                return cur.1.clone();
            }
        }
        let mut cur = self.current.write().unwrap_or_else(|p| p.into_inner());
        if cur.0 != now {
            // Record the stamp either way: a bad pair is reported once, and retried on the next change.
            cur.0 = now;
            match load_pair(&self.dir, &self.provider) {
                Ok(key) => {
                    cur.1 = key;
                    tracing::info!(dir = %self.dir.display(), "serving certificate reloaded");
                }
                Err(why) => tracing::warn!(error = %why, "keeping the previous serving certificate"),
            }
        }
        cur.1.clone()
    }

    pub fn server_config(self: &Arc<Self>) -> anyhow::Result<rustls::ServerConfig> {
        let mut config = rustls::ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(config)
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

fn stamp(dir: &Path) -> Option<Stamp> {
    let one = |name: &str| {
        let m = std::fs::metadata(dir.join(name)).ok()?;
        Some((m.modified().ok()?, m.ino(), m.len()))
    };
    Some([one(CERT_FILE)?, one(KEY_FILE)?])
}

fn load_pair(dir: &Path, provider: &CryptoProvider) -> Result<Arc<CertifiedKey>, String> {
    let (cert_path, key_path) = (dir.join(CERT_FILE), dir.join(KEY_FILE));
    let read = |p: &Path| std::fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display()));
    let certs = CertificateDer::pem_slice_iter(&read(&cert_path)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{} is not a PEM certificate chain: {e}", cert_path.display()))?;
    if certs.is_empty() {
        return Err(format!("{} holds no certificate", cert_path.display()));
    }
    let key = PrivateKeyDer::from_pem_slice(&read(&key_path)?)
        .map_err(|e| format!("{} is not a PEM private key: {e}", key_path.display()))?;
    CertifiedKey::from_der(certs, key, provider)
        .map(Arc::new)
        .map_err(|e| {
            format!(
                "{} and {} do not make a usable pair ({e}); is the key the certificate's?",
                cert_path.display(),
                key_path.display()
            )
        })
}
