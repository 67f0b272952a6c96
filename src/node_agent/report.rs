//! What this node tells the cluster: one `ProfileNodeStatus` per profile (owned by the profile, so
//! it goes when the profile goes).

use std::collections::HashMap;
use std::sync::Mutex;

use kube::api::{DeleteParams, Patch, PatchParams};
use kube::core::ObjectMeta;
use kube::{Api, Client};
use serde_json::json;

use crate::api::profiles::{NodeReport, ProfileKind, ProfileNodeStatus, node_status_name};

use crate::runtime::ownership::{MANAGED_BY, NODE_AGENT_MANAGER as FIELD_MANAGER};

pub struct Reports {
    api: Api<ProfileNodeStatus>,
    node: String,
    /// The last report written per profile: an unchanged report is not written again.
    last: Mutex<HashMap<(ProfileKind, String), NodeReport>>,
}

impl Reports {
    pub fn new(client: Client, node: String) -> Reports {
        Reports {
            api: Api::all(client),
            node,
            last: Mutex::new(HashMap::new()),
        }
    }

    fn last(&self) -> std::sync::MutexGuard<'_, HashMap<(ProfileKind, String), NodeReport>> {
        self.last.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes this node's report on `profile` (its metadata gives the owner reference).
    pub async fn write(
        &self,
        kind: ProfileKind,
        profile: &ObjectMeta,
        report: NodeReport,
    ) -> Result<(), kube::Error> {
        let profile_name = profile.name.clone().unwrap_or_default();
        let key = (kind, profile_name.clone());
        let known = self.last().get(&key).cloned();
        if known.as_ref() == Some(&report) {
            return Ok(());
        }
        let name = node_status_name(kind, &profile_name, &self.node);
        let params = PatchParams::apply(FIELD_MANAGER).force();
        if known.is_none() {
            let mut owner = json!({
                "apiVersion": "profiles.phylax.dev/v1alpha1",
                "kind": kind.as_str(),
                "name": profile_name,
            });
            if let Some(uid) = &profile.uid {
                owner["uid"] = json!(uid);
            }
            let labels = json!({
                MANAGED_BY.0: MANAGED_BY.1,
                "profiles.phylax.dev/kind": kind.as_str(),
                "profiles.phylax.dev/node": label_value(&self.node),
                "profiles.phylax.dev/profile": label_value(&profile_name),
            });
            let object = json!({
                "apiVersion": "profiles.phylax.dev/v1alpha1",
                "kind": "ProfileNodeStatus",
                "metadata": {
                    "name": name,
                    "labels": labels,
                    "ownerReferences": if profile.uid.is_some() { json!([owner]) } else { json!([]) },
                },
                "spec": {"profileKind": kind.as_str(), "profileName": profile_name, "nodeName": self.node},
            });
            self.api.patch(&name, &params, &Patch::Apply(object)).await?;
        }
        let status = json!({
            "apiVersion": "profiles.phylax.dev/v1alpha1",
            "kind": "ProfileNodeStatus",
            "status": report,
        });
        self.api
            .patch_status(&name, &params, &Patch::Apply(status))
            .await?;
        self.last().insert(key, report);
        Ok(())
    }

    /// Deletes this node's report on a profile that is gone.
    pub async fn forget(&self, kind: ProfileKind, profile: &str) -> Result<(), kube::Error> {
        self.last().remove(&(kind, profile.to_owned()));
        let name = node_status_name(kind, profile, &self.node);
        match self.api.delete(&name, &DeleteParams::default()).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// A label value (at most 63 characters); longer names are cut (the spec holds the whole name).
fn label_value(s: &str) -> String {
    let cut: String = s.chars().take(63).collect();
    cut.trim_end_matches(['-', '.', '_']).to_owned()
}
