//! The key of the content-hash annotation on synced Secrets.
//!
//! The annotation tells people and tools (a rollout on change, a GitOps diff) that a Secret's
//! content changed without showing it. An unkeyed digest of the values would let anyone who can
//! read the annotation (metadata-only readers, diffs, backups of manifests) test guesses of a
//! low-entropy value offline; an HMAC under a key that only the operator reads does not. The key
//! lives in a Secret in the operator's namespace, created on first use by whichever replica leads.

use hmac::{Hmac, Mac};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use rand::RngCore;
use sha2::Sha256;
use zeroize::Zeroizing;

use super::render::Data;
use crate::runtime::ownership::{self, OPERATOR_MANAGER};

/// The Secret (in the operator's namespace) holding the key.
pub const KEY_SECRET: &str = "phylax-content-hash-key";
const KEY_FIELD: &str = "key";
const KEY_LEN: usize = 32;
/// Prefix of the annotation's value; a different prefix (an older unkeyed `sha256:`) never
/// compares equal, so such Secrets are rewritten once with the keyed hash.
const PREFIX: &str = "hmac-sha256:";

#[derive(Clone)]
pub struct ContentHasher {
    mac: Hmac<Sha256>,
}

impl std::fmt::Debug for ContentHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ContentHasher(..)")
    }
}

impl ContentHasher {
    pub fn new(key: &[u8]) -> Result<Self, String> {
        if key.len() < KEY_LEN {
            return Err(format!(
                "the content-hash key has {} bytes, at least {KEY_LEN} are needed",
                key.len()
            ));
        }
        let mac = Hmac::<Sha256>::new_from_slice(key).map_err(|e| e.to_string())?;
        Ok(Self { mac })
    }

    /// `hmac-sha256:` and the hex MAC of the data (keys and values, length-prefixed).
    pub fn hash(&self, data: &Data) -> String {
        let mut mac = self.mac.clone();
        mac.update(b"phylax secret-sync v2\0");
        for (k, v) in data {
            mac.update(&(k.len() as u64).to_be_bytes());
            mac.update(k.as_bytes());
            mac.update(&(v.0.len() as u64).to_be_bytes());
            mac.update(&v.0);
        }
        let tag = mac.finalize().into_bytes();
        format!("{PREFIX}{}", crate::runtime::hex::encode(&tag))
    }
}

/// Reads the key Secret, creating it with a fresh random key if it does not exist. Two replicas
/// racing to create it both end up with the one that won. A Secret of that name without a usable
/// key is never overwritten: it is reported, and sync waits for a person.
pub async fn load_or_create(client: Client, namespace: &str) -> anyhow::Result<ContentHasher> {
    let api: Api<Secret> = Api::namespaced(client, namespace);
    for _ in 0..3 {
        if let Some(existing) = api.get_opt(KEY_SECRET).await? {
            return from_secret(&existing).map_err(|why| {
                anyhow::anyhow!(
                    "Secret {namespace}/{KEY_SECRET} cannot key the synced Secrets' content hash: {why}; \
                     delete it and the operator creates a new one (each synced Secret is then rewritten once)"
                )
            });
        }
        let mut key = Zeroizing::new(vec![0u8; KEY_LEN]);
        rand::rng().fill_bytes(&mut key);
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some(KEY_SECRET.into()),
                namespace: Some(namespace.into()),
                labels: Some(ownership::managed_labels()),
                ..Default::default()
            },
            type_: Some("Opaque".into()),
            data: Some([(KEY_FIELD.to_owned(), ByteString(key.to_vec()))].into()),
            ..Default::default()
        };
        let pp = PostParams {
            field_manager: Some(OPERATOR_MANAGER.into()),
            ..Default::default()
        };
        match api.create(&pp, &secret).await {
            Ok(_) => {
                tracing::info!(secret = KEY_SECRET, namespace, "created the content-hash key");
                return ContentHasher::new(&key).map_err(anyhow::Error::msg);
            }
            // Another replica created it meanwhile: read theirs.
            Err(kube::Error::Api(s)) if s.code == 409 => continue,
            Err(e) => return Err(e.into()),
        }
    }
    anyhow::bail!("Secret {namespace}/{KEY_SECRET} kept appearing and disappearing; will retry")
}

fn from_secret(secret: &Secret) -> Result<ContentHasher, String> {
    let key = secret
        .data
        .as_ref()
        .and_then(|d| d.get(KEY_FIELD))
        .ok_or_else(|| format!("it has no data key {KEY_FIELD:?}"))?;
    ContentHasher::new(&key.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::api_mock;
    use http::Method;
    use serde_json::json;

    fn data(pairs: &[(&str, &[u8])]) -> Data {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), ByteString(v.to_vec())))
            .collect()
    }

    #[test]
    fn keyed_changes_with_content_and_key_only() {
        let one = ContentHasher::new(&[1; 32]).unwrap();
        let two = ContentHasher::new(&[2; 32]).unwrap();
        let a = data(&[("password", b"1234")]);
        let b = data(&[("password", b"1234")]);
        let c = data(&[("password", b"1235")]);
        assert_eq!(one.hash(&a), one.hash(&b));
        assert_ne!(one.hash(&a), one.hash(&c));
        assert!(one.hash(&a).starts_with(PREFIX));
        // Another cluster (another key) cannot test a guess against this cluster's annotation.
        assert_ne!(one.hash(&a), two.hash(&a));
        // Keys and values are framed: moving bytes between them changes the hash.
        assert_ne!(one.hash(&data(&[("ab", b"c")])), one.hash(&data(&[("a", b"bc")])));
        assert!(ContentHasher::new(&[0; 16]).unwrap_err().contains("at least 32"));
    }

    #[tokio::test]
    async fn creates_the_key_once_and_reads_the_winner_after_a_race() {
        let (client, mut api) = api_mock::client();
        let url = format!("/api/v1/namespaces/phylax-system/secrets/{KEY_SECRET}");
        let script = tokio::spawn(async move {
            let get = api.next().await;
            get.expect(Method::GET, &url);
            get.fail(404, "NotFound");
            let create = api.next().await;
            create.expect(Method::POST, "/api/v1/namespaces/phylax-system/secrets");
            assert_eq!(
                create.body["metadata"]["labels"]["app.kubernetes.io/managed-by"],
                "phylax"
            );
            assert_eq!(create.body["type"], "Opaque");
            create.fail(409, "AlreadyExists");
            let get = api.next().await;
            get.expect(Method::GET, &url);
            get.ok(json!({"apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": KEY_SECRET, "namespace": "phylax-system"},
                "data": {"key": "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE="}}));
            api.no_more_calls().await;
        });
        let hasher = load_or_create(client, "phylax-system").await.unwrap();
        script.await.unwrap();
        let theirs = ContentHasher::new(&[1; 32]).unwrap();
        let d = data(&[("k", b"v")]);
        assert_eq!(hasher.hash(&d), theirs.hash(&d));
    }

    #[tokio::test]
    async fn a_secret_without_a_usable_key_is_reported_not_replaced() {
        let (client, mut api) = api_mock::client();
        let script = tokio::spawn(async move {
            let get = api.next().await;
            get.expect(
                Method::GET,
                &format!("/api/v1/namespaces/phylax-system/secrets/{KEY_SECRET}"),
            );
            get.ok(json!({"apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": KEY_SECRET, "namespace": "phylax-system"},
                "data": {"key": "c2hvcnQ="}}));
            api.no_more_calls().await;
        });
        let err = load_or_create(client, "phylax-system")
            .await
            .unwrap_err()
            .to_string();
        script.await.unwrap();
        assert!(err.contains("at least 32") && err.contains("delete it"), "{err}");
    }
}
