//! The KMS v2 and v1beta1 gRPC services, sharing one core: request checks, the provider call
//! with a deadline, metrics, audit records and the cached health round trip.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use sha2::{Digest, Sha256};
use tonic::{Request, Response, Status};

use super::audit::{Audit, Record};
use super::proto::{v1beta1, v2};
use crate::keys::{KeyProvider, ProviderError};
use crate::runtime::admin::ReadyFlag;
use crate::runtime::metrics::Metrics;

/// KMS v2 limits (k8s.io/kms): key ids and ciphertexts at most 1 KiB, annotations under 32 KiB.
pub const MAX_KEY_ID: usize = 1024;
pub const MAX_CIPHERTEXT: usize = 1024;
pub const MAX_ANNOTATIONS: usize = 32 * 1024;
/// The API server sends 32-byte keys or seeds; anything much larger is not a KMS request.
pub const MAX_PLAINTEXT: usize = 4096;
pub const ANNOTATION_PROVIDER: &str = "kms.phylax.dev/provider";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpLabels {
    method: &'static str,
    provider: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    method: &'static str,
    provider: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KeyLabels {
    provider: &'static str,
    /// A short hash of the key id: identifies rotation without spreading key ids into metrics.
    key_id_hash: String,
    state: &'static str,
}

pub struct Core {
    provider: Arc<dyn KeyProvider>,
    audit: Audit,
    timeout: Duration,
    health_ttl: Duration,
    health: tokio::sync::Mutex<Option<(Instant, Result<String, String>)>>,
    healthy: ReadyFlag,
    ops: Family<OpLabels, Counter>,
    latency: Family<MethodLabels, Histogram>,
    keys: Family<KeyLabels, Gauge>,
}

pub fn key_id_hash(key_id: &str) -> String {
    crate::runtime::hex::encode(&Sha256::digest(key_id.as_bytes())[..6])
}

impl Core {
    pub fn new(
        provider: Arc<dyn KeyProvider>,
        audit: Audit,
        timeout: Duration,
        health_ttl: Duration,
        healthy: ReadyFlag,
        metrics: &Metrics,
    ) -> Arc<Core> {
        let ops = Family::<OpLabels, Counter>::default();
        metrics.register(
            "kms_operations",
            "KMS operations by method, provider and result",
            ops.clone(),
        );
        let latency = Family::<MethodLabels, Histogram>::new_with_constructor(|| {
            Histogram::new([
                0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.1, 0.5, 1.0, 3.0,
            ])
        });
        metrics.register(
            "kms_operation_duration_seconds",
            "KMS operation latency",
            latency.clone(),
        );
        let keys = Family::<KeyLabels, Gauge>::default();
        metrics.register(
            "kms_key_info",
            "Configured keys (1 each): the primary encrypts, all decrypt",
            keys.clone(),
        );
        let core = Arc::new(Core {
            provider,
            audit,
            timeout,
            health_ttl,
            health: tokio::sync::Mutex::new(None),
            healthy,
            ops,
            latency,
            keys,
        });
        core.publish_keys();
        core
    }

    /// Sets `kms_key_info` from the provider's keys; called again after each health round trip,
    /// so a rotation inside the key service (Vault) shows up.
    fn publish_keys(&self) {
        let provider = self.provider.name();
        self.keys.clear();
        for (i, id) in self.provider.key_ids().iter().enumerate() {
            let state = if i == 0 { "primary" } else { "decrypt-only" };
            self.keys
                .get_or_create(&KeyLabels {
                    provider,
                    key_id_hash: key_id_hash(id),
                    state,
                })
                .set(1);
        }
    }

    pub fn provider_name(&self) -> &'static str {
        self.provider.name()
    }

    /// Runs a provider call under the deadline; a slow provider fails fast with UNAVAILABLE rather
    /// than holding the API server past its own 3 s timeout.
    async fn call<T>(&self, fut: impl Future<Output = Result<T, ProviderError>>) -> Result<T, Status> {
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(ProviderError::InvalidCiphertext(m))) => Err(Status::invalid_argument(m)),
            Ok(Err(ProviderError::Unavailable(m))) => Err(Status::unavailable(m)),
            Err(_) => Err(Status::unavailable(format!(
                "the {} key provider did not answer within {:?}",
                self.provider.name(),
                self.timeout
            ))),
        }
    }

    fn finish<T>(
        &self,
        method: &'static str,
        uid: &str,
        key_id: &str,
        started: Instant,
        result: &Result<T, Status>,
    ) {
        let provider = self.provider.name();
        let outcome = match result {
            Ok(_) => "ok",
            Err(s) => match s.code() {
                tonic::Code::InvalidArgument => "invalid_argument",
                tonic::Code::Unavailable => "unavailable",
                _ => "error",
            },
        };
        let elapsed = started.elapsed();
        self.ops
            .get_or_create(&OpLabels {
                method,
                provider,
                result: outcome,
            })
            .inc();
        self.latency
            .get_or_create(&MethodLabels { method, provider })
            .observe(elapsed.as_secs_f64());
        self.audit.record(&Record {
            time: k8s_openapi::jiff::Timestamp::now().to_string(),
            method,
            uid,
            key_id,
            provider,
            result: outcome,
            duration_us: elapsed.as_micros() as u64,
        });
    }

    /// The current key id after a real encrypt/decrypt round trip, cached for `health_ttl` so the
    /// API server's polling stays cheap; Err carries a short reason for `healthz`.
    pub async fn health(&self) -> Result<String, String> {
        let mut cached = self.health.lock().await;
        if let Some((at, result)) = cached.as_ref()
            && at.elapsed() < self.health_ttl
        {
            return result.clone();
        }
        let result = self.round_trip().await;
        self.healthy.set(result.is_ok());
        if let Err(reason) = &result {
            tracing::warn!(provider = self.provider.name(), reason = %reason, "KMS provider unhealthy");
        }
        *cached = Some((Instant::now(), result.clone()));
        result
    }

    async fn round_trip(&self) -> Result<String, String> {
        let probe: [u8; 32] = rand::random();
        let sealed = self
            .call(self.provider.encrypt(&probe))
            .await
            .map_err(|s| s.message().to_owned())?;
        let plain = self
            .call(self.provider.decrypt(&sealed.ciphertext, Some(&sealed.key_id)))
            .await
            .map_err(|s| s.message().to_owned())?;
        if plain.as_slice() != probe {
            return Err("round trip returned different data".into());
        }
        // Status reports the key that just encrypted, which is what Encrypt will return.
        check_key_id(&sealed.key_id).map_err(|s| s.message().to_owned())?;
        self.publish_keys();
        Ok(sealed.key_id)
    }
}

fn check_key_id(key_id: &str) -> Result<(), Status> {
    if key_id.is_empty() {
        return Err(Status::invalid_argument(
            "key_id is empty; send the key_id that Encrypt returned",
        ));
    }
    if key_id.len() > MAX_KEY_ID {
        return Err(Status::invalid_argument(format!(
            "key_id is {} bytes; at most {MAX_KEY_ID}",
            key_id.len()
        )));
    }
    Ok(())
}

fn check_plaintext(p: &[u8]) -> Result<(), Status> {
    if p.is_empty() {
        return Err(Status::invalid_argument("plaintext is empty"));
    }
    if p.len() > MAX_PLAINTEXT {
        return Err(Status::invalid_argument(format!(
            "plaintext is {} bytes; this plugin encrypts data-encryption keys of at most {MAX_PLAINTEXT} bytes",
            p.len()
        )));
    }
    Ok(())
}

fn check_ciphertext(c: &[u8]) -> Result<(), Status> {
    if c.is_empty() {
        return Err(Status::invalid_argument("ciphertext is empty"));
    }
    if c.len() > MAX_CIPHERTEXT {
        return Err(Status::invalid_argument(format!(
            "ciphertext is {} bytes; at most {MAX_CIPHERTEXT}",
            c.len()
        )));
    }
    Ok(())
}

/// Annotation keys must be domain-qualified (`example.com` or `example.com/name`) and the whole
/// map under 32 KiB; our own provider annotation must name this plugin's provider.
pub fn check_annotations(annotations: &HashMap<String, Vec<u8>>, provider: &str) -> Result<(), Status> {
    let size: usize = annotations.iter().map(|(k, v)| k.len() + v.len()).sum();
    if size >= MAX_ANNOTATIONS {
        return Err(Status::invalid_argument(format!(
            "annotations total {size} bytes; they must stay under 32 KiB"
        )));
    }
    for (key, value) in annotations {
        let domain = key.split_once('/').map_or(key.as_str(), |(d, _)| d);
        let qualified = domain.contains('.')
            && crate::runtime::names::parse_object_name(domain).is_ok()
            && key
                .split_once('/')
                .is_none_or(|(_, n)| !n.is_empty() && n.len() <= 63);
        if !qualified {
            return Err(Status::invalid_argument(format!(
                "annotation key {key:?} is not domain-qualified (e.g. kms.phylax.dev/provider)"
            )));
        }
        if key == ANNOTATION_PROVIDER && value.as_slice() != provider.as_bytes() {
            return Err(Status::invalid_argument(format!(
                "the ciphertext was made by the {:?} provider; this plugin runs {provider:?}",
                String::from_utf8_lossy(&value[..value.len().min(32)])
            )));
        }
    }
    Ok(())
}

#[derive(Clone)]
pub struct V2(pub Arc<Core>);

#[tonic::async_trait]
impl v2::key_management_service_server::KeyManagementService for V2 {
    async fn status(&self, _: Request<v2::StatusRequest>) -> Result<Response<v2::StatusResponse>, Status> {
        let started = Instant::now();
        let (healthz, key_id) = match self.0.health().await {
            Ok(key_id) => ("ok".to_owned(), key_id),
            Err(reason) => (reason, String::new()),
        };
        let result = Ok(());
        self.0.finish("v2.Status", "", &key_id, started, &result);
        Ok(Response::new(v2::StatusResponse {
            version: "v2".into(),
            healthz,
            key_id,
        }))
    }

    async fn encrypt(
        &self,
        req: Request<v2::EncryptRequest>,
    ) -> Result<Response<v2::EncryptResponse>, Status> {
        let started = Instant::now();
        let req = req.into_inner();
        let result = async {
            check_plaintext(&req.plaintext)?;
            let sealed = self.0.call(self.0.provider.encrypt(&req.plaintext)).await?;
            if sealed.ciphertext.len() > MAX_CIPHERTEXT || check_key_id(&sealed.key_id).is_err() {
                return Err(Status::internal(
                    "the key provider returned a ciphertext or key id over the KMS v2 limits",
                ));
            }
            let annotations = HashMap::from([(
                ANNOTATION_PROVIDER.to_owned(),
                self.0.provider_name().as_bytes().to_vec(),
            )]);
            Ok(v2::EncryptResponse {
                ciphertext: sealed.ciphertext,
                key_id: sealed.key_id,
                annotations,
            })
        }
        .await;
        let key_id = result.as_ref().map(|r| r.key_id.as_str()).unwrap_or_default();
        self.0.finish("v2.Encrypt", &req.uid, key_id, started, &result);
        result.map(Response::new)
    }

    async fn decrypt(
        &self,
        req: Request<v2::DecryptRequest>,
    ) -> Result<Response<v2::DecryptResponse>, Status> {
        let started = Instant::now();
        let req = req.into_inner();
        let result = async {
            check_ciphertext(&req.ciphertext)?;
            check_key_id(&req.key_id)?;
            check_annotations(&req.annotations, self.0.provider_name())?;
            let plain = self
                .0
                .call(self.0.provider.decrypt(&req.ciphertext, Some(&req.key_id)))
                .await?;
            Ok(v2::DecryptResponse {
                plaintext: plain.to_vec(),
            })
        }
        .await;
        self.0
            .finish("v2.Decrypt", &req.uid, &req.key_id, started, &result);
        result.map(Response::new)
    }
}

#[derive(Clone)]
pub struct V1(pub Arc<Core>);

const V1_VERSION: &str = "v1beta1";

fn check_v1_version(v: &str) -> Result<(), Status> {
    if v == V1_VERSION {
        Ok(())
    } else {
        Err(Status::invalid_argument(format!(
            "unsupported KMS API version {v:?}; this service speaks {V1_VERSION}"
        )))
    }
}

#[tonic::async_trait]
impl v1beta1::key_management_service_server::KeyManagementService for V1 {
    async fn version(
        &self,
        req: Request<v1beta1::VersionRequest>,
    ) -> Result<Response<v1beta1::VersionResponse>, Status> {
        check_v1_version(&req.get_ref().version)?;
        Ok(Response::new(v1beta1::VersionResponse {
            version: V1_VERSION.into(),
            runtime_name: "phylax".into(),
            runtime_version: crate::version::VERSION.into(),
        }))
    }

    async fn encrypt(
        &self,
        req: Request<v1beta1::EncryptRequest>,
    ) -> Result<Response<v1beta1::EncryptResponse>, Status> {
        let started = Instant::now();
        let req = req.into_inner();
        let result = async {
            check_v1_version(&req.version)?;
            check_plaintext(&req.plain)?;
            self.0.call(self.0.provider.encrypt(&req.plain)).await
        }
        .await;
        let key_id = result.as_ref().map(|s| s.key_id.clone()).unwrap_or_default();
        let result = result.map(|s| v1beta1::EncryptResponse { cipher: s.ciphertext });
        self.0.finish("v1.Encrypt", "", &key_id, started, &result);
        result.map(Response::new)
    }

    async fn decrypt(
        &self,
        req: Request<v1beta1::DecryptRequest>,
    ) -> Result<Response<v1beta1::DecryptResponse>, Status> {
        let started = Instant::now();
        let req = req.into_inner();
        let result = async {
            check_v1_version(&req.version)?;
            check_ciphertext(&req.cipher)?;
            let plain = self.0.call(self.0.provider.decrypt(&req.cipher, None)).await?;
            Ok(v1beta1::DecryptResponse {
                plain: plain.to_vec(),
            })
        }
        .await;
        self.0.finish("v1.Decrypt", "", "", started, &result);
        result.map(Response::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn annotation_rules() {
        let ok = HashMap::from([(ANNOTATION_PROVIDER.to_owned(), b"software".to_vec())]);
        assert!(check_annotations(&ok, "software").is_ok());
        assert!(check_annotations(&HashMap::new(), "software").is_ok());
        let other = HashMap::from([("example.com".to_owned(), b"x".to_vec())]);
        assert!(check_annotations(&other, "software").is_ok());
        for bad in [
            "provider",
            "kms/provider",
            "Bad.Domain/x",
            "kms.phylax.dev/",
            ".com/x",
        ] {
            let a = HashMap::from([(bad.to_owned(), b"x".to_vec())]);
            let err = check_annotations(&a, "software").unwrap_err();
            assert!(
                err.message().contains("domain-qualified"),
                "{bad}: {}",
                err.message()
            );
        }
        let wrong = HashMap::from([(ANNOTATION_PROVIDER.to_owned(), b"aws".to_vec())]);
        assert!(
            check_annotations(&wrong, "software")
                .unwrap_err()
                .message()
                .contains("\"aws\" provider")
        );
        let huge = HashMap::from([("a.example.com/x".to_owned(), vec![0u8; MAX_ANNOTATIONS])]);
        assert!(
            check_annotations(&huge, "software")
                .unwrap_err()
                .message()
                .contains("32 KiB")
        );
    }

    #[test]
    fn request_limits() {
        assert!(check_plaintext(b"").is_err());
        assert!(check_plaintext(&[0; MAX_PLAINTEXT + 1]).is_err());
        assert!(check_plaintext(&[0; 32]).is_ok());
        assert!(check_ciphertext(&[0; MAX_CIPHERTEXT + 1]).is_err());
        assert!(check_key_id("").is_err());
        assert!(check_key_id(&"k".repeat(MAX_KEY_ID + 1)).is_err());
        assert!(check_v1_version("v2").is_err());
    }

    #[test]
    fn key_id_hashes_are_short_and_stable() {
        assert_eq!(key_id_hash("software:abc"), key_id_hash("software:abc"));
        assert_ne!(key_id_hash("software:abc"), key_id_hash("software:abd"));
        assert_eq!(key_id_hash("x").len(), 12);
    }
}
