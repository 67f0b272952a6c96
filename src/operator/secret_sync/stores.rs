//! The SecretProviders, as watched (one malformed object cannot break the watch), the store each
//! describes (built on first use and rebuilt when its spec changes), and their status conditions:
//! `Configured` and `Reachable` are checked when a provider's spec changes and `Reachable` follows
//! the outcome of real sync calls afterwards — the operator never polls a store.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{ApiResource, DynamicObject, Patch, PatchParams};
use kube::core::DeserializeGuard;
use kube::runtime::reflector::{ObjectRef, Store as Reflection};
use kube::{Api, Client, Resource};

use super::outcome::SyncError;
use crate::api::secret_provider::SecretProvider;
use crate::runtime::conditions;
use crate::runtime::ownership::OPERATOR_MANAGER as MANAGER;
use crate::secret_stores::{self, Store, StoreError};

pub type Guarded = DeserializeGuard<SecretProvider>;

/// Provider name → (spec version, store).
type Built = HashMap<String, (String, Arc<dyn Store>)>;

pub struct Stores {
    reflection: Reflection<Guarded>,
    ctx: secret_stores::Context,
    built: tokio::sync::Mutex<Built>,
    /// Last `Reachable` written per provider (status, message), to write only on change.
    reported: Mutex<HashMap<String, (bool, String)>>,
    /// Generation last reported for objects that do not match the schema: their status cannot be
    /// read back, and writing it again on every event would answer our own writes forever.
    invalid_reported: Mutex<HashMap<String, Option<i64>>>,
    client: Client,
}

/// The spec's identity: a new uid or generation means a new store.
fn version_of(sp: &SecretProvider) -> String {
    format!(
        "{}/{}",
        sp.metadata.uid.as_deref().unwrap_or(""),
        sp.metadata.generation.unwrap_or(0)
    )
}

impl Stores {
    pub fn new(reflection: Reflection<Guarded>, ctx: secret_stores::Context) -> Self {
        Stores {
            client: ctx.client.clone(),
            reflection,
            ctx,
            built: Default::default(),
            reported: Default::default(),
            invalid_reported: Default::default(),
        }
    }

    /// The SecretProvider named in an annotation.
    pub fn get(&self, name: &str) -> Result<Arc<Guarded>, SyncError> {
        self.reflection
            .get(&ObjectRef::new(name))
            .ok_or_else(|| SyncError::ProviderMissing(name.to_owned()))
    }

    /// Its store, built once per spec version. Build failures are not kept: the next use retries.
    pub async fn store(&self, sp: &SecretProvider) -> Result<Arc<dyn Store>, StoreError> {
        let name = sp.metadata.name.clone().unwrap_or_default();
        let version = version_of(sp);
        let mut built = self.built.lock().await;
        if let Some((v, store)) = built.get(&name)
            && *v == version
        {
            return Ok(store.clone());
        }
        let store = secret_stores::build(&sp.spec, &self.ctx).await?;
        built.insert(name, (version, store.clone()));
        Ok(store)
    }

    /// Checks a provider whose spec this operator has not yet checked, and writes its status.
    pub async fn check(&self, guarded: &Guarded) {
        let sp = match &guarded.0 {
            Ok(sp) => sp,
            Err(invalid) => {
                let name = invalid.metadata.name.clone().unwrap_or_default();
                let generation = invalid.metadata.generation;
                {
                    let mut seen = self.invalid_reported.lock().unwrap_or_else(|p| p.into_inner());
                    if seen.get(&name) == Some(&generation) {
                        return;
                    }
                    seen.insert(name.clone(), generation);
                }
                let why = format!("the object does not match the schema: {}", invalid.error);
                self.write_status(&name, None, generation, (false, "InvalidSpec", &why), None)
                    .await;
                return;
            }
        };
        let name = sp.metadata.name.clone().unwrap_or_default();
        let generation = sp.metadata.generation;
        if sp.status.as_ref().and_then(|s| s.observed_generation) == generation && generation.is_some() {
            return;
        }
        let kind = sp.spec.store_kind().ok();
        let store = match super::access::check_patterns(&sp.spec.paths) {
            Ok(()) => self.store(sp).await,
            Err(why) => Err(StoreError::Config(why)),
        };
        let (configured, reachable) = match store {
            Err(e) => ((false, "InvalidSpec", e.to_string()), None),
            Ok(store) => match store.check().await {
                Ok(()) => (
                    (true, "Valid", "the spec is valid".to_owned()),
                    Some((true, "the store answered".to_owned())),
                ),
                Err(StoreError::Config(why)) => ((false, "CredentialsRejected", why), None),
                Err(e) => (
                    (true, "Valid", "the spec is valid".to_owned()),
                    Some((false, e.to_string())),
                ),
            },
        };
        if let Some(r) = &reachable {
            self.reported
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(name.clone(), r.clone());
        }
        let (ok, reason, why) = configured;
        self.write_status(&name, kind, generation, (ok, reason, &why), reachable)
            .await;
    }

    /// Records what a real call showed; writes `Reachable` when it changed.
    pub async fn observe(&self, sp: &SecretProvider, result: &Result<(), StoreError>) {
        let reachable = match result {
            Ok(()) => (true, "the store answered".to_owned()),
            Err(e) if e.is_transient() => (false, e.to_string()),
            // The store answered (not found, denied, ...): it is reachable.
            Err(_) => (true, "the store answered".to_owned()),
        };
        let name = sp.metadata.name.clone().unwrap_or_default();
        {
            let mut reported = self.reported.lock().unwrap_or_else(|p| p.into_inner());
            if reported.get(&name).map(|r| r.0) == Some(reachable.0) {
                return;
            }
            reported.insert(name.clone(), reachable.clone());
        }
        self.write_status(
            &name,
            sp.spec.store_kind().ok(),
            sp.metadata.generation,
            (true, "Valid", "the spec is valid"),
            Some(reachable),
        )
        .await;
    }

    async fn write_status(
        &self,
        name: &str,
        kind: Option<&str>,
        generation: Option<i64>,
        configured: (bool, &str, &str),
        reachable: Option<(bool, String)>,
    ) {
        let previous: Vec<Condition> = self
            .reflection
            .get(&ObjectRef::new(name))
            .and_then(|g| g.0.as_ref().ok().and_then(|sp| sp.status.clone()))
            .map(|s| s.conditions)
            .unwrap_or_default();
        let reachable_status = match &reachable {
            Some((true, _)) => "True",
            Some((false, _)) => "False",
            None => "Unknown",
        };
        let ready = configured.0 && reachable_status == "True";
        let conditions = vec![
            condition(
                &previous,
                "Configured",
                if configured.0 { "True" } else { "False" },
                configured.1,
                configured.2,
                generation,
            ),
            condition(
                &previous,
                "Reachable",
                reachable_status,
                match reachable_status {
                    "True" => "Answered",
                    "False" => "Unreachable",
                    _ => "NotChecked",
                },
                reachable
                    .as_ref()
                    .map(|r| r.1.as_str())
                    .unwrap_or("not checked: the spec is not usable"),
                generation,
            ),
            condition(
                &previous,
                "Ready",
                if ready { "True" } else { "False" },
                if ready { "Ready" } else { "NotReady" },
                if ready {
                    "syncs can use this provider"
                } else {
                    "see the Configured and Reachable conditions"
                },
                generation,
            ),
        ];
        let ar = ApiResource::erase::<SecretProvider>(&());
        let api: Api<DynamicObject> = Api::all_with(self.client.clone(), &ar);
        let body = serde_json::json!({
            "apiVersion": SecretProvider::api_version(&()),
            "kind": SecretProvider::kind(&()),
            "metadata": {"name": name},
            "status": {"store": kind, "observedGeneration": generation, "conditions": conditions},
        });
        if let Err(e) = api
            .patch_status(name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(&body))
            .await
        {
            tracing::warn!(provider = name, error = %e, "cannot write the SecretProvider's status");
        }
    }
}

/// A condition by the meta/v1 rule, with the store's message kept short and on one line.
fn condition(
    previous: &[Condition],
    type_: &str,
    status: &str,
    reason: &str,
    message: &str,
    generation: Option<i64>,
) -> Condition {
    conditions::condition(
        previous,
        type_,
        status,
        reason,
        &crate::secret_stores::brief(message),
        generation,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::api_mock;
    use http::Method;
    use kube::runtime::reflector;
    use serde_json::json;

    fn stores(client: Client) -> Stores {
        Stores::new(
            reflector::store().0,
            crate::secret_stores::Context {
                client,
                namespace: "phylax-system".into(),
                timeout: std::time::Duration::from_secs(1),
                vault_service_account: "phylax-vault-auth".into(),
            },
        )
    }

    #[tokio::test]
    async fn an_invalid_provider_is_reported_once_per_generation() {
        let (client, mut server) = api_mock::client();
        let stores = stores(client);
        // `namespaces` must be an object: this one cannot be read as a SecretProvider.
        let invalid: Guarded = serde_json::from_value(json!({
            "apiVersion": "secrets.phylax.dev/v1alpha1", "kind": "SecretProvider",
            "metadata": {"name": "broken", "generation": 3},
            "spec": {"file": {"directory": "/x"}, "namespaces": 42},
        }))
        .unwrap();
        assert!(invalid.0.is_err());
        let script = tokio::spawn(async move {
            let call = server.next().await;
            call.expect(
                Method::PATCH,
                "/apis/secrets.phylax.dev/v1alpha1/secretproviders/broken/status",
            );
            assert_eq!(call.content_type.as_deref(), Some("application/apply-patch+yaml"));
            assert_eq!(call.query("fieldManager").as_deref(), Some(MANAGER));
            let status = &call.body["status"];
            assert_eq!(status["observedGeneration"], 3);
            let conditions = status["conditions"].as_array().cloned().unwrap_or_default();
            let by_type = |t: &str| {
                conditions
                    .iter()
                    .find(|c| c["type"] == t)
                    .cloned()
                    .unwrap_or_default()
            };
            assert_eq!(by_type("Configured")["status"], "False");
            assert_eq!(by_type("Configured")["reason"], "InvalidSpec");
            assert!(
                by_type("Configured")["message"]
                    .as_str()
                    .unwrap_or_default()
                    .contains("does not match the schema"),
                "{conditions:?}"
            );
            assert_eq!(by_type("Reachable")["status"], "Unknown");
            assert_eq!(by_type("Ready")["status"], "False");
            let body = call.body.clone();
            call.ok(body);
            // The same generation again: nothing is written (it would answer its own write).
            server.no_more_calls().await;
        });
        stores.check(&invalid).await;
        stores.check(&invalid).await;
        script.await.unwrap();
    }

    #[tokio::test]
    async fn reachability_is_written_only_when_it_changes() {
        let (client, mut server) = api_mock::client();
        let stores = stores(client);
        let sp: SecretProvider = serde_json::from_value(json!({
            "apiVersion": "secrets.phylax.dev/v1alpha1", "kind": "SecretProvider",
            "metadata": {"name": "files", "generation": 1},
            "spec": {"file": {"directory": "/x"}},
        }))
        .unwrap();
        let script = tokio::spawn(async move {
            for expected in ["False", "True"] {
                let call = server.next().await;
                call.expect(
                    Method::PATCH,
                    "/apis/secrets.phylax.dev/v1alpha1/secretproviders/files/status",
                );
                let conditions = call.body["status"]["conditions"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                let reachable = conditions.iter().find(|c| c["type"] == "Reachable").cloned();
                assert_eq!(reachable.map(|c| c["status"].clone()), Some(json!(expected)));
                let body = call.body.clone();
                call.ok(body);
            }
            server.no_more_calls().await;
        });
        let down = Err(StoreError::Unreachable("connection refused".into()));
        stores.observe(&sp, &down).await;
        stores.observe(&sp, &down).await;
        // An answer that is not a secret (not found) still shows the store is there.
        stores
            .observe(&sp, &Err(StoreError::NotFound { path: "/a".into() }))
            .await;
        stores.observe(&sp, &Ok(())).await;
        script.await.unwrap();
    }
}
