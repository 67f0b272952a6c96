//! Clients for services outside the cluster (secret stores, key services): one place for the rule
//! on where plain HTTP may go, for CA bundles, and for the ring-based HTTPS client the AWS SDK is
//! given instead of its default (which builds aws-lc from C and breaks the static musl build).

/// Whether a URL's host is this machine: the only place plain HTTP may go (emulators, test
/// doubles, a local agent). `localhost.evil` is not.
pub fn is_loopback(host: url::Host<&str>) -> bool {
    match host {
        url::Host::Domain(d) => d == "localhost",
        url::Host::Ipv4(ip) => ip.is_loopback(),
        url::Host::Ipv6(ip) => ip.is_loopback(),
    }
}

/// Parses the URL of an outside service named by `field` (a flag or a spec field): `https://`, or
/// plain `http://` on loopback only. The error says which field and why.
pub fn secure_url(field: &str, value: &str) -> Result<url::Url, String> {
    let url = url::Url::parse(value).map_err(|e| format!("{field} {value:?} is not a URL ({e})"))?;
    let loopback = url.host().is_some_and(is_loopback);
    if url.scheme() != "https" && !(url.scheme() == "http" && loopback) {
        return Err(format!(
            "{field} {value:?} must be https:// (plain http only on loopback, for emulators)"
        ));
    }
    Ok(url)
}

// The same type, re-exported by each SDK crate; name it through whichever this build has.
#[cfg(all(feature = "aws", not(feature = "operator")))]
use aws_sdk_kms::config::SharedHttpClient;
#[cfg(feature = "operator")]
use aws_sdk_secretsmanager::config::SharedHttpClient;

/// The AWS SDK's HTTPS client with rustls on ring, like the rest of the binary.
#[cfg(any(feature = "operator", feature = "aws"))]
pub fn aws_http_client() -> SharedHttpClient {
    use aws_smithy_http_client::tls;
    aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(tls::rustls_provider::CryptoMode::Ring))
        .build_https()
}

/// A reqwest client that trusts the system roots and `ca_pem` (a PEM bundle from a spec), with a
/// per-call deadline and no redirects (a redirect could carry a credential to another host).
#[cfg(feature = "operator")]
pub fn https_client(ca_pem: Option<&str>, timeout: std::time::Duration) -> Result<reqwest::Client, String> {
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .timeout(timeout)
        .connect_timeout(timeout.min(std::time::Duration::from_secs(5)))
        .redirect(reqwest::redirect::Policy::none());
    if let Some(pem) = ca_pem {
        let certs = reqwest::Certificate::from_pem_bundle(pem.as_bytes())
            .map_err(|e| format!("caBundle is not PEM certificates: {e}"))?;
        if certs.is_empty() {
            return Err("caBundle holds no certificate".into());
        }
        for c in certs {
            builder = builder.add_root_certificate(c);
        }
    }
    builder
        .build()
        .map_err(|e| format!("cannot build an HTTPS client: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn https_everywhere_plain_http_on_loopback_only() {
        for ok in [
            "https://vault.example",
            "https://10.0.0.1:8200",
            "http://127.0.0.1:8200",
            "http://127.1.2.3",
            "http://[::1]:8200",
            "http://localhost:1",
        ] {
            assert!(secure_url("f", ok).is_ok(), "{ok}");
        }
        for bad in [
            "http://kms.example",
            "http://localhost.evil",
            "http://10.0.0.1",
            "ftp://127.0.0.1",
            "not a url",
        ] {
            let e = secure_url("aws.endpoint", bad).unwrap_err();
            assert!(e.starts_with("aws.endpoint "), "{bad}: {e}");
        }
        assert!(
            secure_url("f", "http://kms.example")
                .unwrap_err()
                .contains("must be https://")
        );
    }

    #[cfg(feature = "operator")]
    #[test]
    fn ca_bundles_must_hold_certificates() {
        let timeout = std::time::Duration::from_secs(1);
        assert!(https_client(None, timeout).is_ok());
        assert_eq!(
            https_client(Some(""), timeout).unwrap_err(),
            "caBundle holds no certificate"
        );
        let cert = rcgen::generate_simple_self_signed(vec!["a.example".into()]).unwrap();
        assert!(https_client(Some(&cert.cert.pem()), timeout).is_ok());
    }
}
