//! The internal admission API: every feature's webhook is a pure function from an admission
//! request to a verdict, so it can be tested without HTTP, TLS or a cluster.

use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview};
use serde_json::Value;

/// What a handler decides.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Allow {
        warnings: Vec<String>,
    },
    Deny {
        message: String,
    },
    /// JSON patch operations (RFC 6902) for a mutating webhook; they must be idempotent, as the
    /// API server may call again (`reinvocationPolicy: IfNeeded`).
    Patch {
        patch: json_patch::Patch,
        warnings: Vec<String>,
    },
}

impl Verdict {
    pub fn allow() -> Verdict {
        Verdict::Allow { warnings: Vec::new() }
    }
    pub fn deny(message: impl Into<String>) -> Verdict {
        Verdict::Deny {
            message: message.into(),
        }
    }
}

/// What to answer when a handler fails (error, panic, or past its deadline).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum FailurePolicy {
    /// Refuse the request: safer for validations that guard data.
    Closed,
    /// Admit it with a warning: for checks that must never block the cluster.
    Open,
}

pub trait Handler: Send + Sync + 'static {
    /// The URL path segment: `/validate/<name>` or `/mutate/<name>`.
    fn name(&self) -> &'static str;
    /// Whether the handler may return patches.
    fn mutating(&self) -> bool;
    /// The default when no `--failure-policy` names this handler.
    fn failure_policy(&self) -> FailurePolicy;
    /// Decides. Must not have side effects when `req.dry_run` is set (pure handlers have none).
    fn review(&self, req: &AdmissionRequest<DynamicObject>) -> anyhow::Result<Verdict>;
}

/// Reads an AdmissionReview body; the error says what is wrong with it.
pub fn decode(body: &[u8]) -> Result<AdmissionRequest<DynamicObject>, String> {
    let review: AdmissionReview<DynamicObject> = serde_json::from_slice(body)
        .map_err(|e| format!("the body is not an admission.k8s.io/v1 AdmissionReview: {e}"))?;
    if review.types.api_version != "admission.k8s.io/v1" || review.types.kind != "AdmissionReview" {
        return Err(format!(
            "expected apiVersion admission.k8s.io/v1, kind AdmissionReview; got {:?}/{:?} (set \
             admissionReviewVersions: [v1] in the webhook configuration)",
            clip(&review.types.api_version),
            clip(&review.types.kind)
        ));
    }
    review
        .try_into()
        .map_err(|_| "the AdmissionReview has no request".to_owned())
}

/// The AdmissionReview answering `req` with `verdict`.
pub fn respond(req: &AdmissionRequest<DynamicObject>, verdict: Verdict) -> AdmissionReview<DynamicObject> {
    let base = AdmissionResponse::from(req);
    let response = match verdict {
        Verdict::Allow { warnings } => with_warnings(base, warnings),
        Verdict::Deny { message } => base.deny(message),
        Verdict::Patch { patch, warnings } if patch.0.is_empty() => with_warnings(base, warnings),
        Verdict::Patch { patch, warnings } => match base.clone().with_patch(patch) {
            Ok(r) => with_warnings(r, warnings),
            Err(e) => base.deny(format!("internal error: cannot serialize the patch: {e}")),
        },
    };
    response.into_review()
}

fn with_warnings(mut r: AdmissionResponse, warnings: Vec<String>) -> AdmissionResponse {
    if !warnings.is_empty() {
        r.warnings = Some(warnings);
    }
    r
}

/// The object under review as JSON (`object`, or `oldObject` for DELETE).
pub fn object(req: &AdmissionRequest<DynamicObject>) -> Option<Value> {
    req.object
        .as_ref()
        .or(req.old_object.as_ref())
        .and_then(|o| serde_json::to_value(o).ok())
}

fn clip(s: &str) -> &str {
    match s.char_indices().nth(64) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}
