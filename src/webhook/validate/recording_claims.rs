//! A pod update may not add or change Phylax's recording annotation. The profile binder sets it
//! when a pod a ProfileRecording selects is created; set later by the pod's author, it would make
//! the node agent record the pod. The agent checks the recording itself as well (it exists in the
//! pod's namespace and selects the pod), so this webhook fails open: the door, not the lock.

use crate::api::profiles::RECORDING_ANNOTATION;
use crate::webhook::review::{FailurePolicy, Handler, Operation, Request, Verdict, WithMetadata};

pub struct RecordingClaims;

impl Handler for RecordingClaims {
    fn name(&self) -> &'static str {
        "recording-claims"
    }

    fn mutating(&self) -> bool {
        false
    }

    fn failure_policy(&self) -> FailurePolicy {
        FailurePolicy::Open
    }

    fn review(&self, req: &Request) -> anyhow::Result<Verdict> {
        if req.operation != Operation::Update || req.kind.kind != "Pod" || req.sub_resource.is_some() {
            return Ok(Verdict::allow());
        }
        Ok(decide(
            annotation(req.object())?.as_deref(),
            annotation(req.old_object())?.as_deref(),
        ))
    }
}

fn annotation(meta: Option<Result<WithMetadata, serde_json::Error>>) -> anyhow::Result<Option<String>> {
    let value = meta
        .transpose()?
        .and_then(|m| m.metadata)
        .and_then(|m| m.annotations)
        .and_then(|mut a| a.remove(RECORDING_ANNOTATION));
    match value {
        None => Ok(None),
        Some(serde_json::Value::String(s)) => Ok(Some(s)),
        Some(_) => anyhow::bail!("the annotation {RECORDING_ANNOTATION} is not a string"),
    }
}

/// Removing the annotation is harmless (the pod is no longer recorded); adding or changing it is not.
pub fn decide(new: Option<&str>, old: Option<&str>) -> Verdict {
    match new {
        Some(value) if Some(value) != old => Verdict::deny(format!(
            "the annotation {RECORDING_ANNOTATION} is set by Phylax only, when a pod a ProfileRecording \
             selects is created; it cannot be added to or changed on an existing pod: remove it from the update"
        )),
        _ => Verdict::allow(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_recording_annotation_cannot_be_added_or_changed_by_an_update() {
        assert!(matches!(decide(Some("rec"), None), Verdict::Deny { .. }));
        assert!(matches!(decide(Some("other"), Some("rec")), Verdict::Deny { .. }));
        assert!(matches!(decide(Some("rec"), Some("rec")), Verdict::Allow { .. }));
        assert!(matches!(decide(None, Some("rec")), Verdict::Allow { .. }));
        assert!(matches!(decide(None, None), Verdict::Allow { .. }));
    }
}
