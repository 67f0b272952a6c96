//! Writing the synced Secret in the requester's namespace, without ever taking over a Secret
//! Phylax did not create.
//!
//! A new Secret is created with its data in one create (atomic: it fails if one appeared
//! meanwhile), so no version of it ever lacks its keys: a kubelet mounting it for a waiting pod, a
//! watch or a GitOps diff never sees an empty Secret. The same content is then applied once with
//! server-side apply, which makes the operator's one field manager the owner of its keys; every
//! later change is written that way too, with the resourceVersion just read as a precondition, so
//! a Secret replaced between read and write is read again instead of overwritten. Keys dropped from
//! the source are dropped from the Secret, as SSA removes fields its manager no longer applies.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::{ObjectMeta, Patch, PatchParams, PostParams};

use super::hash_key::ContentHasher;
use super::outcome::SyncError;
use super::render::Data;
use crate::runtime::ownership::{self, OPERATOR_MANAGER as MANAGER};

pub const PROVIDER: &str = "secrets.phylax.dev/provider";
pub const PATH: &str = "secrets.phylax.dev/path";
pub const CONTENT_HASH: &str = "secrets.phylax.dev/content-hash";
/// The keys Phylax wrote, comma-separated: a key the source drops is removed even when the
/// create (not the apply) put it there, which server-side apply alone would leave.
pub const KEYS: &str = "secrets.phylax.dev/keys";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    Created,
    Updated,
    Unchanged,
}

pub struct Target<'a> {
    pub api: &'a Api<Secret>,
    pub namespace: &'a str,
    pub name: &'a str,
    pub provider: &'a str,
    pub path: &'a str,
    pub hasher: &'a ContentHasher,
}

impl Target<'_> {
    fn metadata(&self, data: &Data, hash: Option<&str>, resource_version: Option<String>) -> ObjectMeta {
        let mut annotations = BTreeMap::from([
            (PROVIDER.to_owned(), self.provider.to_owned()),
            (PATH.to_owned(), self.path.to_owned()),
            (
                KEYS.to_owned(),
                data.keys().cloned().collect::<Vec<_>>().join(","),
            ),
        ]);
        if let Some(h) = hash {
            annotations.insert(CONTENT_HASH.to_owned(), h.to_owned());
        }
        ObjectMeta {
            name: Some(self.name.to_owned()),
            namespace: Some(self.namespace.to_owned()),
            labels: Some(ownership::managed_labels()),
            annotations: Some(annotations),
            resource_version,
            ..Default::default()
        }
    }

    pub async fn write(&self, data: &Data) -> Result<Written, SyncError> {
        let hash = self.hasher.hash(data);
        let secret_ref = format!("{}/{}", self.namespace, self.name);
        let mut created = false;
        // Each retry means someone changed the Secret between our read and our write.
        for _ in 0..4 {
            let current = self.api.get_opt(self.name).await.map_err(write_error)?;
            let current = match current {
                Some(s) => s,
                None => {
                    let whole = Secret {
                        metadata: self.metadata(data, Some(&hash), None),
                        type_: Some("Opaque".into()),
                        data: Some(data.clone()),
                        ..Default::default()
                    };
                    let pp = PostParams {
                        field_manager: Some(MANAGER.into()),
                        ..Default::default()
                    };
                    match self.api.create(&pp, &whole).await {
                        Ok(s) => {
                            created = true;
                            s
                        }
                        Err(kube::Error::Api(s)) if s.code == 409 => continue,
                        Err(e) => return Err(write_error(e)),
                    }
                }
            };
            if !ownership::is_managed(current.metadata.labels.as_ref()) {
                return Err(SyncError::NotManaged { secret: secret_ref });
            }
            let annotations = current.metadata.annotations.clone().unwrap_or_default();
            let (p, q) = (annotations.get(PROVIDER), annotations.get(PATH));
            if (p.map(String::as_str), q.map(String::as_str)) != (Some(self.provider), Some(self.path)) {
                return Err(SyncError::Conflict {
                    secret: secret_ref,
                    source: format!(
                        "SecretProvider {} path {:?}",
                        p.map(String::as_str).unwrap_or("?"),
                        q.map(String::as_str).unwrap_or("?")
                    ),
                });
            }
            // Our keys as we would write them, not only our annotation: a hand edit is put back.
            // Keys someone else added are theirs; server-side apply leaves them alone.
            let existing = current.data.clone().unwrap_or_default();
            let ours_intact = data.iter().all(|(k, v)| existing.get(k) == Some(v));
            if !created && ours_intact && annotations.get(CONTENT_HASH) == Some(&hash) {
                return Ok(Written::Unchanged);
            }
            // Keys we wrote that the source no longer has: removed first, under the version read.
            let mut resource_version = current.metadata.resource_version.clone();
            let dropped: Vec<&str> = annotations
                .get(KEYS)
                .map(|k| {
                    k.split(',')
                        .filter(|k| !k.is_empty() && !data.contains_key(*k))
                        .collect()
                })
                .unwrap_or_default();
            let dropped: Vec<&str> = dropped
                .into_iter()
                .filter(|k| existing.contains_key(*k))
                .collect();
            if !dropped.is_empty() {
                let mut ops = vec![
                    serde_json::json!({"op": "test", "path": "/metadata/resourceVersion", "value": resource_version}),
                ];
                for k in dropped {
                    ops.push(serde_json::json!({"op": "remove", "path": format!("/data/{}", k.replace('~', "~0").replace('/', "~1"))}));
                }
                let patch: json_patch::Patch = serde_json::from_value(serde_json::Value::Array(ops))
                    .map_err(|e| SyncError::Write(e.to_string()))?;
                match self
                    .api
                    .patch(self.name, &PatchParams::default(), &Patch::Json::<()>(patch))
                    .await
                {
                    Ok(s) => resource_version = s.metadata.resource_version,
                    Err(kube::Error::Api(s)) if s.code == 409 || s.code == 422 => continue,
                    Err(e) => return Err(write_error(e)),
                }
            }
            let desired = Secret {
                metadata: self.metadata(data, Some(&hash), resource_version),
                type_: current.type_.clone().or(Some("Opaque".into())),
                data: Some(data.clone()),
                ..Default::default()
            };
            let mut value = serde_json::to_value(&desired).map_err(|e| SyncError::Write(e.to_string()))?;
            value["apiVersion"] = "v1".into();
            value["kind"] = "Secret".into();
            let params = PatchParams::apply(MANAGER).force();
            match self.api.patch(self.name, &params, &Patch::Apply(&value)).await {
                Ok(_) => {
                    return Ok(if created {
                        Written::Created
                    } else {
                        Written::Updated
                    });
                }
                Err(kube::Error::Api(s)) if s.code == 409 => continue,
                Err(e) => return Err(write_error(e)),
            }
        }
        Err(SyncError::Write(format!(
            "Secret {secret_ref} kept changing while being written"
        )))
    }
}

/// The API server's answer, without anything of the request (which holds the values).
fn write_error(e: kube::Error) -> SyncError {
    match e {
        kube::Error::Api(s) => SyncError::Write(format!(
            "the API server answered {} {}: {}",
            s.code, s.reason, s.message
        )),
        other => SyncError::Write(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::api_mock::{self, ApiServer};
    use http::{Method, StatusCode};
    use k8s_openapi::ByteString;
    use serde_json::{Value, json};

    const PATH_URL: &str = "/api/v1/namespaces/shop/secrets/db";

    fn hasher() -> ContentHasher {
        ContentHasher::new(&[9; 32]).unwrap()
    }

    fn content_hash(data: &Data) -> String {
        hasher().hash(data)
    }

    fn data() -> Data {
        Data::from([("password".to_owned(), ByteString(b"s3cret".to_vec()))])
    }

    fn secret(labels: Value, annotations: Value, data: Value) -> Value {
        json!({
            "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": "db", "namespace": "shop", "resourceVersion": "7",
                         "labels": labels, "annotations": annotations},
            "data": data,
        })
    }

    fn ours(hash: &str, data: Value) -> Value {
        secret(
            json!({MANAGED_BY_LABEL: "phylax"}),
            json!({PROVIDER: "aws-prod", PATH: "/prod/db", CONTENT_HASH: hash}),
            data,
        )
    }

    const MANAGED_BY_LABEL: &str = ownership::MANAGED_BY.0;

    /// Runs a write against the scripted server; `script` plays the server's side.
    async fn write_with<F, Fut>(script: F) -> Result<Written, SyncError>
    where
        F: FnOnce(ApiServer) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let (client, server) = api_mock::client();
        let server = tokio::spawn(script(server));
        let api: Api<Secret> = Api::namespaced(client, "shop");
        let result = Target {
            api: &api,
            namespace: "shop",
            name: "db",
            provider: "aws-prod",
            path: "/prod/db",
            hasher: &hasher(),
        }
        .write(&data())
        .await;
        server.await.expect("the scripted server panicked");
        result
    }

    fn expect_apply(call: &api_mock::Call) {
        call.expect(Method::PATCH, PATH_URL);
        assert_eq!(call.content_type.as_deref(), Some("application/apply-patch+yaml"));
        assert_eq!(call.query("fieldManager").as_deref(), Some(MANAGER));
        assert_eq!(call.query("force").as_deref(), Some("true"));
    }

    #[tokio::test]
    async fn a_new_secret_is_created_with_its_data_then_owned_by_server_side_apply() {
        let written = write_with(|mut api| async move {
            let get = api.next().await;
            get.expect(Method::GET, PATH_URL);
            get.fail(404, "NotFound");

            let create = api.next().await;
            create.expect(Method::POST, "/api/v1/namespaces/shop/secrets");
            assert_eq!(create.body["metadata"]["labels"][MANAGED_BY_LABEL], "phylax");
            assert_eq!(create.body["metadata"]["annotations"][PROVIDER], "aws-prod");
            // The data is in the create: no version of the Secret lacks its keys.
            assert_eq!(create.body["data"]["password"], "czNjcmV0");
            let hash = content_hash(&data());
            assert_eq!(
                create.body["metadata"]["annotations"][CONTENT_HASH],
                hash.as_str()
            );
            let created = ours(&hash, json!({"password": "czNjcmV0"}));
            create.respond(StatusCode::CREATED, created);

            let apply = api.next().await;
            expect_apply(&apply);
            // The values go in the apply, with the resourceVersion just read as a precondition.
            assert_eq!(apply.body["data"]["password"], "czNjcmV0");
            assert_eq!(apply.body["metadata"]["resourceVersion"], "7");
            assert_eq!(
                apply.body["metadata"]["annotations"][CONTENT_HASH],
                content_hash(&data())
            );
            let body = apply.body.clone();
            apply.ok(body);
            api.no_more_calls().await;
        })
        .await;
        assert_eq!(written, Ok(Written::Created));
    }

    #[tokio::test]
    async fn a_secret_phylax_did_not_create_is_left_alone() {
        let written = write_with(|mut api| async move {
            let get = api.next().await;
            get.expect(Method::GET, PATH_URL);
            get.ok(secret(
                json!({"team": "shop"}),
                json!({}),
                json!({"password": "b3Vycw=="}),
            ));
            // Not a single write follows.
            api.no_more_calls().await;
        })
        .await;
        match written {
            Err(SyncError::NotManaged { secret }) => assert_eq!(secret, "shop/db"),
            other => panic!("expected NotManaged, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_secret_synced_from_another_source_is_not_overwritten() {
        let written = write_with(|mut api| async move {
            let get = api.next().await;
            get.ok(secret(
                json!({MANAGED_BY_LABEL: "phylax"}),
                json!({PROVIDER: "vault", PATH: "/other"}),
                json!({}),
            ));
            api.no_more_calls().await;
        })
        .await;
        assert!(
            matches!(&written, Err(SyncError::Conflict { source, .. }) if source.contains("vault")),
            "{written:?}"
        );
    }

    #[tokio::test]
    async fn conflicts_are_read_again_and_retried() {
        let written = write_with(|mut api| async move {
            // Another writer creates the Secret between our read and our create...
            api.next().await.fail(404, "NotFound");
            let create = api.next().await;
            create.expect(Method::POST, "/api/v1/namespaces/shop/secrets");
            create.fail(409, "AlreadyExists");
            // ...so it is read again, and our apply meets a changed resourceVersion once.
            let get = api.next().await;
            get.expect(Method::GET, PATH_URL);
            get.ok(ours("old", json!({"password": "b2xk"})));
            let apply = api.next().await;
            expect_apply(&apply);
            apply.fail(409, "Conflict");
            api.next().await.ok(ours("old", json!({"password": "b2xk"})));
            let apply = api.next().await;
            expect_apply(&apply);
            let body = apply.body.clone();
            apply.ok(body);
            api.no_more_calls().await;
        })
        .await;
        assert_eq!(written, Ok(Written::Updated));
    }

    #[tokio::test]
    async fn an_unchanged_secret_is_not_written() {
        let hash = content_hash(&data());
        let written = write_with(|mut api| async move {
            api.next().await.ok(ours(&hash, json!({"password": "czNjcmV0"})));
            api.no_more_calls().await;
        })
        .await;
        assert_eq!(written, Ok(Written::Unchanged));
    }

    #[tokio::test]
    async fn a_hand_edited_value_is_put_back() {
        let hash = content_hash(&data());
        let written = write_with(|mut api| async move {
            // Same hash annotation, but someone changed our key's value.
            api.next().await.ok(ours(&hash, json!({"password": "ZWRpdGVk"})));
            let apply = api.next().await;
            expect_apply(&apply);
            assert_eq!(apply.body["data"]["password"], "czNjcmV0");
            let body = apply.body.clone();
            apply.ok(body);
        })
        .await;
        assert_eq!(written, Ok(Written::Updated));
    }

    /// The create owns the keys it wrote (an Update manager, not the apply), so server-side apply
    /// alone would keep a key the source dropped: it is removed explicitly, under a version test.
    #[tokio::test]
    async fn a_key_the_source_dropped_is_removed_even_if_the_create_wrote_it() {
        let written = write_with(|mut api| async move {
            api.next().await.ok(secret(
                json!({MANAGED_BY_LABEL: "phylax"}),
                json!({PROVIDER: "aws-prod", PATH: "/prod/db", CONTENT_HASH: "old", KEYS: "old_key,password"}),
                json!({"password": "b2xk", "old_key": "eA==", "theirs": "eQ=="}),
            ));
            let remove = api.next().await;
            remove.expect(Method::PATCH, PATH_URL);
            assert_eq!(remove.content_type.as_deref(), Some("application/json-patch+json"));
            assert_eq!(
                remove.body,
                json!([
                    {"op": "test", "path": "/metadata/resourceVersion", "value": "7"},
                    {"op": "remove", "path": "/data/old_key"},
                ])
            );
            let mut after = ours("old", json!({"password": "b2xk", "theirs": "eQ=="}));
            after["metadata"]["resourceVersion"] = json!("8");
            remove.ok(after);
            let apply = api.next().await;
            expect_apply(&apply);
            assert_eq!(apply.body["metadata"]["resourceVersion"], "8");
            assert_eq!(apply.body["metadata"]["annotations"][KEYS], "password");
            let body = apply.body.clone();
            apply.ok(body);
            api.no_more_calls().await;
        })
        .await;
        assert_eq!(written, Ok(Written::Updated));
    }

    #[tokio::test]
    async fn api_errors_say_what_the_server_said_and_never_the_values() {
        let written = write_with(|mut api| async move {
            api.next().await.fail(403, "Forbidden");
        })
        .await;
        let Err(SyncError::Write(why)) = written else {
            panic!("expected a write error, got {written:?}")
        };
        assert!(why.contains("403") && why.contains("Forbidden"), "{why}");
        assert!(!why.contains("s3cret") && !why.contains("czNjcmV0"), "{why}");
    }

    #[tokio::test]
    async fn a_secret_that_keeps_changing_gives_up_after_four_tries() {
        let written = write_with(|mut api| async move {
            for _ in 0..4 {
                api.next().await.ok(ours("old", json!({})));
                api.next().await.fail(409, "Conflict");
            }
            api.no_more_calls().await;
        })
        .await;
        assert!(
            matches!(&written, Err(SyncError::Write(why)) if why.contains("kept changing")),
            "{written:?}"
        );
    }
}
