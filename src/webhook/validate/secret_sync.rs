//! Refuses a malformed `secrets.phylax.dev/sync` annotation on Pods and on the pod templates of
//! workloads, with the message the secret-sync controller would give, so it shows at apply time.

use serde::Deserialize;
use serde_json::Value;

use crate::api::sync_annotation::{ANNOTATION, parse};
use crate::webhook::review::{FailurePolicy, Handler, Request, Verdict, WithMetadata};

pub struct SecretSyncAnnotation;

/// The only parts of a workload this webhook reads, down to its pod template's metadata.
#[derive(Deserialize)]
struct WithTemplate {
    #[serde(default)]
    template: Option<WithMetadata>,
}

#[derive(Deserialize)]
struct Workload {
    #[serde(default)]
    spec: Option<WithTemplate>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CronJobSpec {
    #[serde(default)]
    job_template: Option<Workload>,
}

#[derive(Deserialize)]
struct CronJob {
    #[serde(default)]
    spec: Option<CronJobSpec>,
}

impl Handler for SecretSyncAnnotation {
    fn name(&self) -> &'static str {
        "secret-sync"
    }

    fn mutating(&self) -> bool {
        false
    }

    fn failure_policy(&self) -> FailurePolicy {
        // A broken validation must not stop every pod in the cluster from starting.
        FailurePolicy::Open
    }

    fn review(&self, req: &Request) -> anyhow::Result<Verdict> {
        let kind = req.kind.kind.as_str();
        let Some(value) = annotation(kind, req.object.as_deref())? else {
            return Ok(Verdict::allow());
        };
        let problem = match value.as_str() {
            None => format!("{ANNOTATION} must be a string"),
            Some(text) => match parse(text) {
                Ok(_) => return Ok(Verdict::allow()),
                Err(why) if kind == "Pod" => why,
                Err(why) => format!("pod template: {why}"),
            },
        };
        // An update that leaves a malformed annotation as it was (a scale, a label, a finalizer
        // removed) is not this webhook's to block: it was admitted before, or predates Phylax.
        let unchanged = annotation(kind, req.old_object.as_deref())
            .ok()
            .flatten()
            .is_some_and(|old| old == value);
        Ok(if unchanged {
            Verdict::Allow {
                warnings: vec![format!("{problem} (left as is: this update does not change it)")],
            }
        } else {
            Verdict::deny(problem)
        })
    }
}

/// The annotation's value on the object's pod (template) metadata. Only the path to it is read:
/// a review is on every pod's path, and the rest of the object is not this webhook's business.
fn annotation(kind: &str, raw: Option<&serde_json::value::RawValue>) -> anyhow::Result<Option<Value>> {
    let Some(raw) = raw.map(|r| r.get()).filter(|r| *r != "null") else {
        return Ok(None);
    };
    let metadata = match kind {
        "Pod" => serde_json::from_str::<WithMetadata>(raw)?.metadata,
        "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "Job" => {
            serde_json::from_str::<Workload>(raw)?
                .spec
                .and_then(|s| s.template)
                .and_then(|t| t.metadata)
        }
        "CronJob" => serde_json::from_str::<CronJob>(raw)?
            .spec
            .and_then(|s| s.job_template)
            .and_then(|j| j.spec)
            .and_then(|s| s.template)
            .and_then(|t| t.metadata),
        _ => None,
    };
    Ok(metadata
        .and_then(|m| m.annotations)
        .and_then(|mut a| a.remove(ANNOTATION)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::webhook::review::decode;

    use serde_json::json;

    fn review(operation: &str, old: Option<&str>, new: &str) -> Verdict {
        let pod = |a: &str| {
            json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "namespace": "shop", "annotations": {ANNOTATION: a}}})
        };
        let body = json!({
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {
                "uid": "u", "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "name": "p", "namespace": "shop", "operation": operation,
                "userInfo": {"username": "alice"},
                "object": pod(new),
                "oldObject": old.map(pod),
            },
        });
        let req = decode(&serde_json::to_vec(&body).unwrap()).unwrap();
        SecretSyncAnnotation.review(&req).unwrap()
    }

    #[test]
    fn a_malformed_annotation_is_refused_when_it_is_set_or_changed() {
        assert!(matches!(
            review("CREATE", None, "provider: x"),
            Verdict::Deny { .. }
        ));
        assert!(matches!(
            review(
                "UPDATE",
                Some("{provider: p, path: /a, secretName: s}"),
                "provider: x"
            ),
            Verdict::Deny { .. }
        ));
        assert_eq!(
            review("CREATE", None, "{provider: p, path: /a, secretName: s}"),
            Verdict::allow()
        );
    }

    #[test]
    fn an_update_that_keeps_a_malformed_annotation_is_admitted_with_a_warning() {
        match review("UPDATE", Some("provider: x"), "provider: x") {
            Verdict::Allow { warnings } => {
                assert_eq!(warnings.len(), 1);
                assert!(warnings[0].contains("left as is"), "{warnings:?}");
            }
            other => panic!("expected Allow, got {other:?}"),
        }
    }

    #[test]
    fn the_annotation_is_found_in_every_kind_of_pod_template() {
        let annotations = json!({ANNOTATION: "provider: x"});
        for (kind, object) in [
            (
                "Deployment",
                json!({"spec": {"template": {"metadata": {"annotations": annotations}}}}),
            ),
            (
                "Job",
                json!({"spec": {"template": {"metadata": {"annotations": annotations}}}}),
            ),
            (
                "CronJob",
                json!({"spec": {"jobTemplate": {"spec": {"template": {"metadata": {"annotations": annotations}}}}}}),
            ),
        ] {
            let raw = serde_json::value::to_raw_value(&object).unwrap();
            assert_eq!(
                annotation(kind, Some(&raw)).unwrap(),
                Some(json!("provider: x")),
                "{kind}"
            );
        }
        let raw = serde_json::value::to_raw_value(&json!({"metadata": 7})).unwrap();
        assert!(
            annotation("Pod", Some(&raw)).is_err(),
            "a malformed object is an error, not a pass"
        );
        assert_eq!(annotation("ConfigMap", Some(&raw)).unwrap(), None);
    }
}
