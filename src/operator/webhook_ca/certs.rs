//! The webhook's CA and serving certificate, and when to renew them — no I/O, so every case is a
//! unit test.
//!
//! Rotation keeps an overlap: a new CA is added to the trust bundle next to the old one, the
//! serving certificate is then reissued by the new CA, and the old CA leaves the bundle only when
//! it expires, so an API server that still sees the old certificate keeps trusting it.

use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use sha2::{Digest, Sha256};

const CA_COMMON_NAME: &str = "phylax-webhook-ca";

/// Renew once less than this fraction of a certificate's lifetime is left.
const RENEW_FRACTION: u32 = 3;

/// A certificate with its key, as stored (PEM) and when it stops being valid (Unix seconds).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pair {
    pub cert_pem: String,
    pub key_pem: String,
    pub not_after: i64,
}

/// What the CA Secret holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaState {
    pub current: Pair,
    /// The CA being retired, trusted until it expires.
    pub previous: Option<(String, i64)>,
}

impl CaState {
    /// The PEM bundle API servers must trust.
    pub fn bundle(&self) -> String {
        let mut b = self.current.cert_pem.clone();
        if let Some((pem, _)) = &self.previous {
            b.push_str(pem);
        }
        b
    }
}

/// What the serving Secret holds, and which CA signed it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Serving {
    pub pair: Pair,
    pub issuer: String,
    pub names: Vec<String>,
}

#[derive(Clone, Debug)]
pub struct Settings {
    pub ca_validity: Duration,
    pub cert_validity: Duration,
    /// DNS names and IP addresses the serving certificate covers.
    pub names: Vec<String>,
}

/// The outcome: the state to store (changed or not) and why it changed.
#[derive(Debug)]
pub struct Plan {
    pub ca: CaState,
    pub serving: Serving,
    pub changes: Vec<&'static str>,
}

fn due(not_after: i64, validity: Duration, now: i64) -> bool {
    let lifetime = i64::try_from(validity.as_secs()).unwrap_or(i64::MAX);
    not_after - now < lifetime / i64::from(RENEW_FRACTION)
}

/// A short fingerprint of a CA certificate, to tell which CA signed a serving certificate.
pub fn fingerprint(pem: &str) -> String {
    crate::runtime::hex::encode(&Sha256::digest(pem.as_bytes())[..8])
}

pub fn plan(
    settings: &Settings,
    ca: Option<CaState>,
    serving: Option<Serving>,
    now: i64,
) -> anyhow::Result<Plan> {
    let mut changes = Vec::new();
    let mut ca = match ca {
        Some(ca) if KeyPair::from_pem(&ca.current.key_pem).is_ok() && ca.current.not_after > now => ca,
        _ => {
            changes.push("created the CA");
            CaState {
                current: new_ca(settings.ca_validity, now)?,
                previous: None,
            }
        }
    };
    if due(ca.current.not_after, settings.ca_validity, now) {
        changes.push("rotated the CA (the old one stays trusted until it expires)");
        let old = std::mem::replace(&mut ca.current, new_ca(settings.ca_validity, now)?);
        ca.previous = Some((old.cert_pem, old.not_after));
    }
    if ca.previous.as_ref().is_some_and(|(_, until)| *until <= now) {
        changes.push("dropped the expired previous CA");
        ca.previous = None;
    }
    let issuer = fingerprint(&ca.current.cert_pem);
    let serving = match serving {
        Some(s)
            if s.issuer == issuer
                && s.names == settings.names
                && s.pair.not_after > now
                && !due(s.pair.not_after, settings.cert_validity, now) =>
        {
            s
        }
        _ => {
            changes.push("issued the serving certificate");
            Serving {
                pair: issue(&ca.current, &settings.names, settings.cert_validity, now)?,
                issuer,
                names: settings.names.clone(),
            }
        }
    };
    Ok(Plan { ca, serving, changes })
}

fn time(unix: i64) -> anyhow::Result<time::OffsetDateTime> {
    time::OffsetDateTime::from_unix_timestamp(unix).map_err(|e| anyhow::anyhow!("time out of range: {e}"))
}

fn ca_params(not_before: i64, not_after: i64) -> anyhow::Result<CertificateParams> {
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    p.distinguished_name.push(DnType::CommonName, CA_COMMON_NAME);
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p.not_before = time(not_before)?;
    p.not_after = time(not_after)?;
    Ok(p)
}

fn new_ca(validity: Duration, now: i64) -> anyhow::Result<Pair> {
    let key = KeyPair::generate()?;
    let not_after = now + i64::try_from(validity.as_secs())?;
    // Back-dated a little: clocks in a cluster disagree.
    let cert = ca_params(now - 300, not_after)?.self_signed(&key)?;
    Ok(Pair {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        not_after,
    })
}

fn issue(ca: &Pair, names: &[String], validity: Duration, now: i64) -> anyhow::Result<Pair> {
    let ca_key = KeyPair::from_pem(&ca.key_pem)?;
    // Same subject and key as the stored CA certificate, so what is signed here chains to it.
    let issuer = Issuer::new(ca_params(now - 300, ca.not_after)?, ca_key);
    let key = KeyPair::generate()?;
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    p.subject_alt_names = names
        .iter()
        .map(|n| match n.parse::<std::net::IpAddr>() {
            Ok(ip) => Ok(SanType::IpAddress(ip)),
            Err(_) => Ok(SanType::DnsName(n.clone().try_into()?)),
        })
        .collect::<Result<_, rcgen::Error>>()?;
    p.distinguished_name.push(
        DnType::CommonName,
        names.first().map_or("phylax-webhook", String::as_str),
    );
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    p.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    // Never outlive the CA.
    let not_after = (now + i64::try_from(validity.as_secs())?).min(ca.not_after);
    p.not_before = time(now - 300)?;
    p.not_after = time(not_after)?;
    let cert = p.signed_by(&key, &issuer)?;
    Ok(Pair {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        not_after,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400;

    fn settings() -> Settings {
        Settings {
            ca_validity: Duration::from_secs(300 * DAY as u64),
            cert_validity: Duration::from_secs(30 * DAY as u64),
            names: vec!["phylax-webhook.sec.svc".into(), "127.0.0.1".into()],
        }
    }

    /// Verifies with rustls' WebPKI verifier that `cert` chains to a CA in `bundle` at `now`.
    fn trusted(bundle: &str, cert: &str, now: i64) -> bool {
        use rustls::client::danger::ServerCertVerifier;
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(bundle.as_bytes()) {
            roots.add(c.unwrap()).unwrap();
        }
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            roots.into(),
            std::sync::Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()
        .unwrap();
        let leaf = CertificateDer::from_pem_slice(cert.as_bytes()).unwrap();
        verifier
            .verify_server_cert(
                &leaf,
                &[],
                &ServerName::try_from("phylax-webhook.sec.svc").unwrap(),
                &[],
                UnixTime::since_unix_epoch(Duration::from_secs(now as u64)),
            )
            .is_ok()
    }

    #[test]
    fn a_fresh_install_gets_a_ca_and_a_certificate_it_signed() {
        let now = 1_800_000_000;
        let p = plan(&settings(), None, None, now).unwrap();
        assert_eq!(p.changes, ["created the CA", "issued the serving certificate"]);
        assert!(trusted(&p.ca.bundle(), &p.serving.pair.cert_pem, now));
        // Nothing to do the next time.
        let again = plan(
            &settings(),
            Some(p.ca.clone()),
            Some(p.serving.clone()),
            now + DAY,
        )
        .unwrap();
        assert!(again.changes.is_empty(), "{:?}", again.changes);
        assert_eq!(again.serving, p.serving);
    }

    #[test]
    fn rotation_overlaps_and_the_old_ca_leaves_when_it_expires() {
        let start = 1_800_000_000;
        let first = plan(&settings(), None, None, start).unwrap();
        // 250 days on, less than a third of the CA's 300 days is left.
        let later = start + 250 * DAY;
        let rotated = plan(
            &settings(),
            Some(first.ca.clone()),
            Some(first.serving.clone()),
            later,
        )
        .unwrap();
        assert!(
            rotated
                .changes
                .contains(&"rotated the CA (the old one stays trusted until it expires)")
        );
        assert_ne!(rotated.ca.current, first.ca.current);
        let bundle = rotated.ca.bundle();
        assert!(
            trusted(&bundle, &first.serving.pair.cert_pem, later) || first.serving.pair.not_after <= later
        );
        assert!(
            trusted(&bundle, &rotated.serving.pair.cert_pem, later),
            "the new certificate chains to the new CA"
        );
        assert!(
            bundle.contains(&first.ca.current.cert_pem),
            "the old CA is still trusted"
        );
        // After the old CA's expiry it leaves the bundle.
        let gone = plan(
            &settings(),
            Some(rotated.ca.clone()),
            Some(rotated.serving.clone()),
            start + 301 * DAY,
        )
        .unwrap();
        assert!(gone.changes.contains(&"dropped the expired previous CA"));
        assert!(gone.ca.previous.is_none());
    }

    #[test]
    fn the_certificate_is_reissued_when_due_renamed_or_signed_by_another_ca() {
        let now = 1_800_000_000;
        let p = plan(&settings(), None, None, now).unwrap();
        let due = plan(
            &settings(),
            Some(p.ca.clone()),
            Some(p.serving.clone()),
            now + 25 * DAY,
        )
        .unwrap();
        assert_eq!(due.changes, ["issued the serving certificate"]);
        let mut renamed = settings();
        renamed.names.push("phylax-webhook.sec.svc.cluster.local".into());
        let r = plan(&renamed, Some(p.ca.clone()), Some(p.serving.clone()), now).unwrap();
        assert_eq!(r.changes, ["issued the serving certificate"]);
        let other = plan(&settings(), None, None, now).unwrap();
        let mixed = plan(&settings(), Some(p.ca.clone()), Some(other.serving), now).unwrap();
        assert_eq!(mixed.changes, ["issued the serving certificate"]);
        assert!(trusted(&mixed.ca.bundle(), &mixed.serving.pair.cert_pem, now));
    }

    #[test]
    fn a_broken_ca_secret_is_replaced() {
        let now = 1_800_000_000;
        let mut p = plan(&settings(), None, None, now).unwrap();
        p.ca.current.key_pem = "not a key".into();
        let fixed = plan(&settings(), Some(p.ca), Some(p.serving), now).unwrap();
        assert_eq!(
            fixed.changes,
            ["created the CA", "issued the serving certificate"]
        );
    }
}
