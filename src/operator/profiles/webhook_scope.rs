//! Keeps the fail-closed profile webhook scoped (leader only): the `profiles.phylax.dev` entry of
//! the MutatingWebhookConfiguration is called only for namespaces that hold ProfileBindings, or for
//! every namespace while a ProfileRecording exists (see [`NamespaceScope::for_profiles`]). The rest
//! of the cluster creates pods without waiting for Phylax, so a webhook outage stays where
//! profiles are in use.
//!
//! The scope is one requirement of the entry's namespaceSelector, rewritten with a JSON patch whose
//! `test` operations make it apply only to the configuration as it was read.

use std::time::Duration;

use futures::StreamExt;
use kube::api::{Patch, PatchParams};
use kube::core::error_boundary::DeserializeGuard;
use kube::core::{ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::reflector::Store;
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::api::profiles::{ProfileBinding, ProfileRecording};
use crate::api::webhooks::{CONFIGURATION_NAME, NamespaceScope, WEBHOOKS};
use crate::runtime::metrics::{Metrics, ReconcileLabels};
use crate::runtime::reflect::{self, wait_listed};

/// How often the scope is checked even when nothing changed (someone re-applied the manifests).
const RESYNC: Duration = Duration::from_secs(60);

/// The scope the cluster's bindings and recordings call for.
fn desired(
    bindings: &Store<DeserializeGuard<ProfileBinding>>,
    recordings: &Store<DeserializeGuard<ProfileRecording>>,
) -> NamespaceScope {
    // A binding that does not parse still asks for its namespace to be guarded.
    NamespaceScope::for_profiles(
        bindings.state().iter().filter_map(|b| b.namespace()),
        !recordings.state().is_empty(),
    )
}

/// The JSON patch that sets `scope` on the scoped entries of a MutatingWebhookConfiguration;
/// empty when it is already set, or when an entry has no scope requirement (an admin removed it:
/// the entry then sees every namespace, which is the safe side).
pub fn scope_patch(config: &Value, scope: &NamespaceScope) -> Vec<Value> {
    let (key, operator, values) = scope.requirement();
    let wanted = json!({"key": key, "operator": operator, "values": values});
    let mut ops = Vec::new();
    let hooks = config.get("webhooks").and_then(Value::as_array);
    for (i, hook) in hooks.into_iter().flatten().enumerate() {
        let name = hook.get("name").and_then(Value::as_str).unwrap_or_default();
        let scoped = WEBHOOKS
            .iter()
            .any(|w| w.scoped && format!("{}.phylax.dev", w.name) == name);
        if !scoped {
            continue;
        }
        let expressions = hook
            .pointer("/namespaceSelector/matchExpressions")
            .and_then(Value::as_array);
        for (j, e) in expressions.into_iter().flatten().enumerate() {
            let text = |f: &str| e.get(f).and_then(Value::as_str).unwrap_or_default().to_owned();
            let values: Vec<String> = e
                .get("values")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect();
            if !NamespaceScope::is_scope_requirement(&text("key"), &text("operator"), &values) {
                continue;
            }
            if *e != wanted {
                let path = format!("/webhooks/{i}/namespaceSelector/matchExpressions/{j}");
                ops.push(json!({"op": "test", "path": format!("/webhooks/{i}/name"), "value": name}));
                ops.push(json!({"op": "test", "path": path, "value": e}));
                ops.push(json!({"op": "replace", "path": path, "value": wanted}));
            }
        }
    }
    ops
}

async fn reconcile(client: &Client, scope: &NamespaceScope) -> anyhow::Result<bool> {
    let gvk = GroupVersionKind::gvk(
        "admissionregistration.k8s.io",
        "v1",
        "MutatingWebhookConfiguration",
    );
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &ApiResource::from_gvk(&gvk));
    let Some(config) = api.get_opt(CONFIGURATION_NAME).await? else {
        return Ok(false);
    };
    let ops = scope_patch(&config.data, scope);
    if ops.is_empty() {
        return Ok(false);
    }
    let patch: json_patch::Patch = serde_json::from_value(Value::Array(ops))?;
    api.patch(
        CONFIGURATION_NAME,
        &PatchParams::default(),
        &Patch::Json::<()>(patch),
    )
    .await?;
    Ok(true)
}

pub async fn run(client: Client, metrics: Metrics, term: CancellationToken) -> anyhow::Result<()> {
    let (bindings, binding_changes) = reflect::store_and_changes(
        "ProfileBindings",
        Api::<DeserializeGuard<ProfileBinding>>::all(client.clone()),
        watcher::Config::default(),
    );
    let (recordings, recording_changes) = reflect::store_and_changes(
        "ProfileRecordings",
        Api::<DeserializeGuard<ProfileRecording>>::all(client.clone()),
        watcher::Config::default(),
    );
    let (mut changed, _watches) = reflect::wake_on_change(futures::stream::select(
        binding_changes.map(|_| ()),
        recording_changes.map(|_| ()),
    ));
    // Until both have listed, an empty store would narrow the scope to nothing.
    tokio::select! {
        _ = async { futures::join!(wait_listed(&bindings), wait_listed(&recordings)) } => {}
        _ = term.cancelled() => return Ok(()),
    }
    let mut failures = 0u32;
    loop {
        let scope = desired(&bindings, &recordings);
        let wait = match reconcile(&client, &scope).await {
            Ok(changed) => {
                if changed {
                    tracing::info!(?scope, "profile webhook scope updated");
                }
                failures = 0;
                RESYNC
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                metrics
                    .reconcile_errors
                    .get_or_create(&ReconcileLabels {
                        controller: "profile-webhook-scope".into(),
                        error: "kube".into(),
                    })
                    .inc();
                let wait = Duration::from_secs(1 << failures.min(6)).min(RESYNC);
                tracing::warn!(error = %format!("{e:#}"), retry_in_s = wait.as_secs(), "cannot update the profile webhook's scope; retrying");
                wait
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            Some(()) = changed.recv() => {
                // A burst of changes (a namespace's bindings applied together) makes one patch.
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            _ = term.cancelled() => return Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(requirement: Value) -> Value {
        json!({"webhooks": [
            {"name": "other.phylax.dev", "namespaceSelector": {"matchExpressions": [
                {"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["x"]}]}},
            {"name": "profiles.phylax.dev", "namespaceSelector": {"matchExpressions": [
                {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["kube-system", "phylax-system"]},
                {"key": "phylax.dev/webhooks", "operator": "NotIn", "values": ["disabled"]},
                requirement]}}]})
    }

    fn apply(config: &Value, ops: Vec<Value>) -> Value {
        let mut doc = config.clone();
        let patch: json_patch::Patch = serde_json::from_value(Value::Array(ops)).unwrap();
        json_patch::patch(&mut doc, &patch).unwrap();
        doc
    }

    #[test]
    fn the_scope_follows_bindings_and_widens_to_all_while_recording() {
        let none = config(
            json!({"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["none.phylax.dev"]}),
        );
        let shop =
            NamespaceScope::for_profiles(["shop".to_owned(), "api".to_owned(), "shop".to_owned()], false);
        let patched = apply(&none, scope_patch(&none, &shop));
        assert_eq!(
            patched["webhooks"][1]["namespaceSelector"]["matchExpressions"][2],
            json!({"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["api", "shop"]})
        );
        assert_eq!(
            patched["webhooks"][0], none["webhooks"][0],
            "unscoped entries are left alone"
        );
        assert_eq!(
            patched["webhooks"][1]["namespaceSelector"]["matchExpressions"][0],
            none["webhooks"][1]["namespaceSelector"]["matchExpressions"][0],
            "the exclusion of kube-system, with the same key, is not the scope"
        );
        assert!(scope_patch(&patched, &shop).is_empty(), "nothing to do twice");
        let all = NamespaceScope::for_profiles(["shop".to_owned()], true);
        let widened = apply(&patched, scope_patch(&patched, &all));
        assert_eq!(
            widened["webhooks"][1]["namespaceSelector"]["matchExpressions"][2],
            json!({"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["none.phylax.dev"]})
        );
        let narrowed = apply(
            &widened,
            scope_patch(&widened, &NamespaceScope::for_profiles([], false)),
        );
        assert_eq!(narrowed, none, "no bindings, no recordings: no namespace");
    }

    #[test]
    fn a_configuration_without_the_scope_requirement_is_left_seeing_everything() {
        let mut unscoped = config(json!({"key": "team", "operator": "Exists"}));
        assert!(scope_patch(&unscoped, &NamespaceScope::for_profiles([], false)).is_empty());
        unscoped["webhooks"] = json!("not a list");
        assert!(scope_patch(&unscoped, &NamespaceScope::All).is_empty());
    }
}
