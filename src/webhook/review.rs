//! The internal admission API: every feature's webhook is a pure function from an admission
//! request to a verdict, so it can be tested without HTTP, TLS or a cluster.
//!
//! A review is on the path of every pod the cluster creates, so the body is parsed once: the
//! envelope into [`Request`], the objects kept as raw JSON that each handler reads into just the
//! view it needs (no generic JSON tree, no copy per handler).

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

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
    /// Whether `review` may block (I/O, locks held by slow code): such a handler runs on the
    /// blocking pool under the deadline. Handlers that only read memory answer in microseconds
    /// and run in place, which saves two thread hand-offs per review.
    fn may_block(&self) -> bool {
        false
    }
    /// Decides. Must not have side effects when `req.dry_run` is set (pure handlers have none).
    fn review(&self, req: &Request) -> anyhow::Result<Verdict>;
}

/// `group`, `version`, `kind` of the reviewed object.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct Gvk {
    #[serde(default)]
    pub group: String,
    #[serde(default)]
    pub version: String,
    #[serde(default)]
    pub kind: String,
}

/// Who asks, as the API server authenticated them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct UserInfo {
    #[serde(default)]
    pub username: String,
    #[serde(default)]
    pub groups: Vec<String>,
    /// What the authenticator adds: for pod-bound ServiceAccount tokens, the pod's name and UID
    /// (and from 1.30 its node).
    #[serde(default)]
    pub extra: std::collections::BTreeMap<String, Vec<String>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Operation {
    Create,
    Update,
    Delete,
    Connect,
}

/// The only part of a reviewed object some handlers read: its annotations. serde skips the rest
/// of the object without building it (these reviews are on every pod's path).
#[derive(Deserialize)]
pub struct Metadata {
    #[serde(default)]
    pub annotations: Option<std::collections::BTreeMap<String, serde_json::Value>>,
}

#[derive(Deserialize)]
pub struct WithMetadata {
    #[serde(default)]
    pub metadata: Option<Metadata>,
}

/// The request of an `admission.k8s.io/v1` AdmissionReview, with the objects left as raw JSON.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Request {
    pub uid: String,
    pub kind: Gvk,
    #[serde(default)]
    pub sub_resource: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub namespace: Option<String>,
    pub operation: Operation,
    #[serde(default)]
    pub user_info: UserInfo,
    #[serde(default)]
    pub object: Option<Box<RawValue>>,
    #[serde(default)]
    pub old_object: Option<Box<RawValue>>,
    #[serde(default)]
    pub dry_run: Option<bool>,
}

impl Request {
    /// The object under review read as `T` (`object`, or `oldObject` for DELETE); None when there
    /// is none. Only the fields `T` names are materialised.
    pub fn object<'a, T: Deserialize<'a>>(&'a self) -> Option<Result<T, serde_json::Error>> {
        let raw = self.object.as_deref().or(self.old_object.as_deref())?;
        // `null` stands for "no object" in the wire format.
        (raw.get() != "null").then(|| serde_json::from_str(raw.get()))
    }

    /// The old object (UPDATE, DELETE) read as `T`.
    pub fn old_object<'a, T: Deserialize<'a>>(&'a self) -> Option<Result<T, serde_json::Error>> {
        let raw = self.old_object.as_deref()?;
        (raw.get() != "null").then(|| serde_json::from_str(raw.get()))
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Envelope {
    #[serde(default)]
    api_version: String,
    #[serde(default)]
    kind: String,
    #[serde(default)]
    request: Option<Request>,
}

/// Reads an AdmissionReview body; the error says what is wrong with it.
pub fn decode(body: &[u8]) -> Result<Request, String> {
    let review: Envelope = serde_json::from_slice(body)
        .map_err(|e| format!("the body is not an admission.k8s.io/v1 AdmissionReview: {e}"))?;
    if review.api_version != "admission.k8s.io/v1" || review.kind != "AdmissionReview" {
        return Err(format!(
            "expected apiVersion admission.k8s.io/v1, kind AdmissionReview; got {:?}/{:?} (set \
             admissionReviewVersions: [v1] in the webhook configuration)",
            clip(&review.api_version),
            clip(&review.kind)
        ));
    }
    review
        .request
        .ok_or_else(|| "the AdmissionReview has no request".to_owned())
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Reply<'a> {
    api_version: &'static str,
    kind: &'static str,
    response: Response<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Response<'a> {
    uid: &'a str,
    allowed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<Status>,
    #[serde(skip_serializing_if = "Option::is_none")]
    patch: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    patch_type: Option<&'static str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    warnings: Vec<String>,
}

/// The `metav1.Status` a refusal carries: what `kubectl` prints.
#[derive(Serialize)]
struct Status {
    status: &'static str,
    message: String,
    reason: &'static str,
    code: u16,
}

/// The AdmissionReview body answering `req` with `verdict`.
pub fn respond(req: &Request, verdict: Verdict) -> Vec<u8> {
    let mut response = Response {
        uid: &req.uid,
        allowed: true,
        status: None,
        patch: None,
        patch_type: None,
        warnings: Vec::new(),
    };
    match verdict {
        Verdict::Allow { warnings } => response.warnings = warnings,
        Verdict::Deny { message } => {
            response.allowed = false;
            response.status = Some(Status {
                status: "Failure",
                message,
                reason: "Forbidden",
                code: 403,
            });
        }
        Verdict::Patch { patch, warnings } => {
            response.warnings = warnings;
            if !patch.0.is_empty() {
                match serde_json::to_vec(&patch) {
                    Ok(json) => {
                        response.patch = Some(base64::engine::general_purpose::STANDARD.encode(json));
                        response.patch_type = Some("JSONPatch");
                    }
                    Err(e) => {
                        response.allowed = false;
                        response.warnings = Vec::new();
                        response.status = Some(Status {
                            status: "Failure",
                            message: format!("internal error: cannot serialize the patch: {e}"),
                            reason: "InternalError",
                            code: 500,
                        });
                    }
                }
            }
        }
    }
    let reply = Reply {
        api_version: "admission.k8s.io/v1",
        kind: "AdmissionReview",
        response,
    };
    // Serialising these plain structs cannot fail; an empty body would be a 200 the API server
    // rejects, so say so instead.
    serde_json::to_vec(&reply).unwrap_or_else(|e| {
        format!(
            r#"{{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","response":{{"uid":{},"allowed":false,"status":{{"message":"internal error: {e}"}}}}}}"#,
            serde_json::Value::String(req.uid.clone())
        )
        .into_bytes()
    })
}

fn clip(s: &str) -> &str {
    match s.char_indices().nth(64) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn request(object: Value, old: Value) -> Request {
        let body = json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
            "uid": "u-1", "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "namespace": "shop", "operation": "UPDATE",
            "userInfo": {"username": "system:node:n1", "groups": ["system:nodes"]},
            "object": object, "oldObject": old}});
        decode(&serde_json::to_vec(&body).unwrap()).unwrap()
    }

    #[test]
    fn objects_are_read_into_the_view_a_handler_asks_for() {
        #[derive(Deserialize)]
        struct Name {
            metadata: Meta,
        }
        #[derive(Deserialize)]
        struct Meta {
            name: String,
        }
        let req = request(
            json!({"metadata": {"name": "new"}}),
            json!({"metadata": {"name": "old"}}),
        );
        assert_eq!(req.user_info.username, "system:node:n1");
        assert_eq!(req.operation, Operation::Update);
        assert_eq!(req.object::<Name>().unwrap().unwrap().metadata.name, "new");
        assert_eq!(req.old_object::<Name>().unwrap().unwrap().metadata.name, "old");
        let none = request(Value::Null, Value::Null);
        assert!(none.object::<Name>().is_none() && none.old_object::<Name>().is_none());
        let delete = request(Value::Null, json!({"metadata": {"name": "gone"}}));
        assert_eq!(delete.object::<Name>().unwrap().unwrap().metadata.name, "gone");
    }

    #[test]
    fn answers_carry_the_uid_the_status_and_a_base64_patch() {
        let req = request(Value::Null, Value::Null);
        let denied: Value = serde_json::from_slice(&respond(&req, Verdict::deny("no"))).unwrap();
        assert_eq!(denied["response"]["uid"], "u-1");
        assert_eq!(denied["response"]["allowed"], false);
        assert_eq!(denied["response"]["status"]["message"], "no");
        assert_eq!(denied["response"]["status"]["code"], 403);
        let patch: json_patch::Patch =
            serde_json::from_value(json!([{"op": "add", "path": "/metadata/labels", "value": {}}])).unwrap();
        let patched: Value = serde_json::from_slice(&respond(
            &req,
            Verdict::Patch {
                patch: patch.clone(),
                warnings: vec!["w".into()],
            },
        ))
        .unwrap();
        assert_eq!(patched["response"]["allowed"], true);
        assert_eq!(patched["response"]["patchType"], "JSONPatch");
        assert_eq!(patched["response"]["warnings"], json!(["w"]));
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(patched["response"]["patch"].as_str().unwrap())
            .unwrap();
        assert_eq!(
            serde_json::from_slice::<json_patch::Patch>(&bytes).unwrap(),
            patch
        );
        let allowed: Value = serde_json::from_slice(&respond(&req, Verdict::allow())).unwrap();
        assert_eq!(
            allowed,
            json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                   "response": {"uid": "u-1", "allowed": true}})
        );
    }
}
