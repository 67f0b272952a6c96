//! TLS for webhook tests: a throw-away CA, serving certificates for 127.0.0.1 signed by it, and a
//! directory laid out like a mounted Secret volume.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};

pub struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        Ca {
            issuer: CertifiedIssuer::self_signed(params, KeyPair::generate().expect("key")).expect("ca"),
        }
    }

    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A serving certificate for 127.0.0.1: (certificate PEM, key PEM).
    pub fn serving(&self) -> (String, String) {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(vec!["127.0.0.1".to_owned()]).expect("params");
        params
            .distinguished_name
            .push(DnType::CommonName, "phylax-webhook");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params.signed_by(&key, &self.issuer).expect("sign");
        (cert.pem(), key.serialize_pem())
    }
}

/// A directory laid out like a Secret volume: `tls.crt -> ..data/tls.crt`, `..data -> ..<version>`.
pub struct SecretVolume {
    dir: tempfile::TempDir,
    version: usize,
}

impl SecretVolume {
    pub fn new(pair: (String, String)) -> SecretVolume {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut v = SecretVolume { dir, version: 0 };
        v.update(pair);
        for f in ["tls.crt", "tls.key"] {
            std::os::unix::fs::symlink(format!("..data/{f}"), v.path().join(f)).expect("symlink");
        }
        v
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes a new version and swaps `..data` to it atomically, as the kubelet does.
    pub fn update(&mut self, (cert, key): (String, String)) {
        self.version += 1;
        let version = PathBuf::from(format!("..v{}", self.version));
        std::fs::create_dir(self.path().join(&version)).expect("version dir");
        std::fs::write(self.path().join(&version).join("tls.crt"), cert).expect("cert");
        std::fs::write(self.path().join(&version).join("tls.key"), key).expect("key");
        let tmp = self.path().join("..data_tmp");
        std::os::unix::fs::symlink(&version, &tmp).expect("symlink");
        std::fs::rename(&tmp, self.path().join("..data")).expect("swap ..data");
    }
}

/// A TLS client configuration trusting only the certificates in `ca_pem`.
#[allow(dead_code)]
pub fn client_config(ca_pem: &str) -> rustls::ClientConfig {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.expect("ca pem")).expect("add root");
    }
    rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("protocols")
        .with_root_certificates(roots)
        .with_no_client_auth()
}
