//! Refuses a malformed `secrets.phylax.dev/sync` annotation on Pods and on the pod templates of
//! workloads, with the message the secret-sync controller would give, so it shows at apply time.

use kube::core::DynamicObject;
use kube::core::admission::AdmissionRequest;
use serde_json::Value;

use crate::api::sync_annotation::{ANNOTATION, parse};
use crate::webhook::review::{FailurePolicy, Handler, Verdict, object};

pub struct SecretSyncAnnotation;

/// Where the pod template's metadata is, per kind.
fn pod_metadata<'a>(kind: &str, obj: &'a Value) -> Option<&'a Value> {
    match kind {
        "Pod" => obj.get("metadata"),
        "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "Job" => {
            obj.pointer("/spec/template/metadata")
        }
        "CronJob" => obj.pointer("/spec/jobTemplate/spec/template/metadata"),
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
        let Some(obj) = object(req) else {
            return Ok(Verdict::allow());
        };
        let Some(value) = pod_metadata(&req.kind.kind, &obj)
            .and_then(|m| m.pointer(&format!("/annotations/{}", ANNOTATION.replace('/', "~1"))))
        else {
            return Ok(Verdict::allow());
        };
        let Some(text) = value.as_str() else {
            return Ok(Verdict::deny(format!("{ANNOTATION} must be a string")));
        };
        Ok(match parse(text) {
            Ok(_) => Verdict::allow(),
            Err(why) if req.kind.kind == "Pod" => Verdict::deny(why),
            Err(why) => Verdict::deny(format!("pod template: {why}")),
        })
    }
}
