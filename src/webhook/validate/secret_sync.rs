//! Refuses a malformed `secrets.phylax.dev/sync` annotation on Pods and on the pod templates of
//! workloads, with the message the secret-sync controller would give, so it shows at apply time.

use kube::core::DynamicObject;
use kube::core::admission::AdmissionRequest;
use serde_json::Value;

use crate::api::sync_annotation::{ANNOTATION, parse};
use crate::webhook::review::{FailurePolicy, Handler, Verdict};

pub struct SecretSyncAnnotation;

/// Where the pod template's annotation is, per kind, as a JSON pointer into the object's data
/// (`~1` is the pointer's spelling of `/`).
fn template_annotation_pointer(kind: &str) -> Option<&'static str> {
    match kind {
        "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "Job" => {
            Some("/spec/template/metadata/annotations/secrets.phylax.dev~1sync")
        }
        "CronJob" => Some("/spec/jobTemplate/spec/template/metadata/annotations/secrets.phylax.dev~1sync"),
        _ => None,
    }
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

    fn review(&self, req: &AdmissionRequest<DynamicObject>) -> anyhow::Result<Verdict> {
        let kind = req.kind.kind.as_str();
        let Some(value) = req.object.as_ref().and_then(|o| annotation(kind, o)) else {
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
        let unchanged = req.old_object.as_ref().and_then(|o| annotation(kind, o)) == Some(value);
        Ok(if unchanged {
            Verdict::Allow {
                warnings: vec![format!("{problem} (left as is: this update does not change it)")],
            }
        } else {
            Verdict::deny(problem)
        })
    }
}

/// The annotation's value on the object's pod (template) metadata, read in place: a review is on
/// every pod's path, and re-serialising the object for one field is work the webhook can skip.
fn annotation(kind: &str, obj: &DynamicObject) -> Option<Value> {
    if kind == "Pod" {
        return obj
            .metadata
            .annotations
            .as_ref()?
            .get(ANNOTATION)
            .map(|a| Value::String(a.clone()));
    }
    obj.data.pointer(template_annotation_pointer(kind)?).cloned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::core::admission::AdmissionReview;

    #[test]
    fn the_pointer_names_the_annotation() {
        assert_eq!(
            template_annotation_pointer("Job").map(|p| p
                .rsplit('/')
                .next()
                .unwrap_or_default()
                .replace("~1", "/")),
            Some(ANNOTATION.to_owned())
        );
    }
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
        let review: AdmissionReview<DynamicObject> = serde_json::from_value(body).unwrap();
        let req: AdmissionRequest<DynamicObject> = review.try_into().unwrap();
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
}
