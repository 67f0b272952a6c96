//! Writing the synced Secret in the requester's namespace, without ever taking over a Secret
//! Phylax did not create.
//!
//! A new Secret is created (atomically: it fails if one appeared meanwhile) as an empty shell
//! carrying Phylax's label; its data, and every later change, is written by server-side apply with
//! the operator's one field manager and the resourceVersion just read as a precondition, so a
//! Secret replaced between read and write is read again instead of overwritten. Keys dropped from
//! the source are dropped from the Secret, as SSA removes fields its manager no longer applies.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::{ObjectMeta, Patch, PatchParams, PostParams};

use super::outcome::SyncError;
use super::render::{Data, content_hash};
use crate::runtime::ownership::{self, OPERATOR_MANAGER as MANAGER};

pub const PROVIDER: &str = "secrets.phylax.dev/provider";
pub const PATH: &str = "secrets.phylax.dev/path";
pub const CONTENT_HASH: &str = "secrets.phylax.dev/content-hash";

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
}

impl Target<'_> {
    fn metadata(&self, hash: Option<&str>, resource_version: Option<String>) -> ObjectMeta {
        let mut annotations = BTreeMap::from([
            (PROVIDER.to_owned(), self.provider.to_owned()),
            (PATH.to_owned(), self.path.to_owned()),
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
        let hash = content_hash(data);
        let secret_ref = format!("{}/{}", self.namespace, self.name);
        let mut created = false;
        // Each retry means someone changed the Secret between our read and our write.
        for _ in 0..4 {
            let current = self.api.get_opt(self.name).await.map_err(write_error)?;
            let current = match current {
                Some(s) => s,
                None => {
                    let shell = Secret {
                        metadata: self.metadata(None, None),
                        type_: Some("Opaque".into()),
                        ..Default::default()
                    };
                    let pp = PostParams {
                        field_manager: Some(MANAGER.into()),
                        ..Default::default()
                    };
                    match self.api.create(&pp, &shell).await {
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
            let desired = Secret {
                metadata: self.metadata(Some(&hash), current.metadata.resource_version.clone()),
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
