//! Ties each node agent's writes to its own node. All agents share one ServiceAccount, so RBAC alone
//! lets any node write reports for every other node, strip other nodes' finalizers or rewrite a
//! profile's policy. This webhook reads which node the caller runs on from its pod-bound token (the
//! `authentication.kubernetes.io/node-name` extra from 1.30, else the pod's name and UID, looked up
//! among the agent pods) and refuses:
//! - a `ProfileNodeStatus` about another node, or not named after its profile and node;
//! - any change to a profile's spec, labels or annotations, except extending a profile recorded
//!   from a `ProfileRecording` that exists (more allowed syscalls, nothing else);
//! - adding or removing another node's finalizer, and deleting a profile.
//!
//! Requests from anyone but the node agents' ServiceAccount are not this webhook's business.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::Pod;
use kube::runtime::reflector::{ObjectRef, Store};
use serde_json::Value;

use crate::api::profiles::{
    NODE_FINALIZER_PREFIX, ProfileKind, ProfileRecording, RECORDED_FROM, node_finalizer, node_status_name,
};
use crate::webhook::review::{FailurePolicy, Handler, Operation, Request, UserInfo, Verdict};

const NODE_NAME_EXTRA: &str = "authentication.kubernetes.io/node-name";
const POD_NAME_EXTRA: &str = "authentication.kubernetes.io/pod-name";
const POD_UID_EXTRA: &str = "authentication.kubernetes.io/pod-uid";

/// Who the node agents are and where their pods run.
#[derive(Clone)]
pub struct NodeAgents {
    /// `system:serviceaccount:<namespace>:<name>`.
    pub username: String,
    /// The agents' namespace, where their pods are.
    pub namespace: String,
    /// The agent pods, in the agents' namespace.
    pub pods: Store<Pod>,
    /// ProfileRecordings, to check that an extended recorded profile has one.
    pub recordings: Store<kube::core::error_boundary::DeserializeGuard<ProfileRecording>>,
}

impl NodeAgents {
    /// No agents: for a webhook built without a cluster (tests of other handlers).
    pub fn empty() -> NodeAgents {
        NodeAgents {
            username: "system:serviceaccount:phylax-system:phylax-node-agent".into(),
            namespace: "phylax-system".into(),
            pods: kube::runtime::reflector::store().0,
            recordings: kube::runtime::reflector::store().0,
        }
    }

    /// The node a node agent's request comes from, or why it cannot be told.
    fn node_of(&self, user: &UserInfo) -> Result<String, String> {
        let extra = |key: &str| {
            user.extra
                .get(key)
                .and_then(|v| v.first())
                .filter(|v| !v.is_empty())
        };
        if let Some(node) = extra(NODE_NAME_EXTRA) {
            return Ok(node.clone());
        }
        let (Some(name), Some(uid)) = (extra(POD_NAME_EXTRA), extra(POD_UID_EXTRA)) else {
            return Err(
                "the node agent's credentials are not bound to a pod, so its node cannot be \
                        told; run it with a projected (pod-bound) ServiceAccount token, as the \
                        DaemonSet from `phylax manifests` does"
                    .into(),
            );
        };
        let namespace = self.namespace.as_str();
        let Some(pod) = self.pods.get(&ObjectRef::new(name).within(namespace)) else {
            return Err(format!(
                "node agent pod {namespace}/{name} is not known to the webhook yet; retry"
            ));
        };
        if pod.metadata.uid.as_deref() != Some(uid.as_str()) {
            return Err(format!(
                "the token names pod {namespace}/{name} with another UID than the running pod's; it \
                 belongs to a pod that is gone"
            ));
        }
        pod.spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .ok_or_else(|| format!("node agent pod {namespace}/{name} is not scheduled to a node"))
    }

    fn recording_exists(&self, source: &str) -> bool {
        source
            .split_once('/')
            .is_some_and(|(ns, name)| self.recordings.get(&ObjectRef::new(name).within(ns)).is_some())
    }
}

pub struct NodeWrites {
    pub agents: NodeAgents,
}

impl Handler for NodeWrites {
    fn name(&self) -> &'static str {
        "node-writes"
    }

    fn mutating(&self) -> bool {
        false
    }

    fn failure_policy(&self) -> FailurePolicy {
        // Agents retry; an unchecked write is what this webhook exists to stop.
        FailurePolicy::Closed
    }

    fn review(&self, req: &Request) -> anyhow::Result<Verdict> {
        if req.user_info.username != self.agents.username {
            return Ok(Verdict::allow());
        }
        let node = match self.agents.node_of(&req.user_info) {
            Ok(node) => node,
            Err(why) => return Ok(Verdict::deny(why)),
        };
        let new: Option<Value> = req
            .object
            .as_deref()
            .map(|o| serde_json::from_str(o.get()))
            .transpose()?;
        let old: Option<Value> = req
            .old_object
            .as_deref()
            .map(|o| serde_json::from_str(o.get()))
            .transpose()?;
        let new = new.filter(|v| !v.is_null());
        let old = old.filter(|v| !v.is_null());
        let verdict = match req.kind.kind.as_str() {
            "ProfileNodeStatus" => report(&node, old.as_ref(), new.as_ref()),
            "SeccompProfile" | "AppArmorProfile" => {
                profile(&node, req.operation, old.as_ref(), new.as_ref(), |source| {
                    self.agents.recording_exists(source)
                })
            }
            _ => Ok(()),
        };
        Ok(match verdict {
            Ok(()) => Verdict::allow(),
            Err(why) => Verdict::deny(format!("node agent on {node}: {why}")),
        })
    }
}

fn text<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer).and_then(Value::as_str).unwrap_or_default()
}

/// A report (old and new versions both) must be about `node` and carry its canonical name.
fn report(node: &str, old: Option<&Value>, new: Option<&Value>) -> Result<(), String> {
    for version in [old, new].into_iter().flatten() {
        let about = text(version, "/spec/nodeName");
        if about != node {
            return Err(format!(
                "a report about node {about:?} can only be written by that node's agent"
            ));
        }
        let kind = match text(version, "/spec/profileKind") {
            "SeccompProfile" => ProfileKind::SeccompProfile,
            "AppArmorProfile" => ProfileKind::AppArmorProfile,
            other => return Err(format!("unknown profileKind {other:?}")),
        };
        let profile = text(version, "/spec/profileName");
        let expected = node_status_name(kind, profile, node);
        let name = text(version, "/metadata/name");
        if name != expected {
            return Err(format!(
                "the report on {profile} must be named {expected}, not {name}"
            ));
        }
    }
    Ok(())
}

fn finalizers(v: Option<&Value>) -> BTreeSet<String> {
    v.and_then(|v| v.pointer("/metadata/finalizers"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|f| f.as_str().map(str::to_owned))
        .collect()
}

/// The syscalls a recorded seccomp spec allows, and the rest of the spec without them.
fn allowed_syscalls(spec: &Value) -> (BTreeSet<String>, Value) {
    let mut rest = spec.clone();
    let mut names = BTreeSet::new();
    if let Some(rules) = rest.get_mut("syscalls").and_then(Value::as_array_mut) {
        rules.retain(|r| {
            let allow = r.get("action").and_then(Value::as_str) == Some("SCMP_ACT_ALLOW");
            if allow {
                names.extend(
                    r.get("names")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                        .filter_map(|n| n.as_str().map(str::to_owned)),
                );
            }
            !allow
        });
    }
    (names, rest)
}

/// What a node agent may change on a profile.
fn profile(
    node: &str,
    operation: Operation,
    old: Option<&Value>,
    new: Option<&Value>,
    recording_exists: impl Fn(&str) -> bool,
) -> Result<(), String> {
    let recorded_from = |v: &Value| {
        v.pointer(&format!(
            "/metadata/annotations/{}",
            RECORDED_FROM.replace('/', "~1")
        ))
        .and_then(Value::as_str)
        .map(str::to_owned)
    };
    match (operation, old, new) {
        (Operation::Create, _, Some(new)) => {
            // Agents create only profiles recorded from an existing recording, named after it.
            let Some(source) = recorded_from(new) else {
                return Err("node agents create only recorded profiles".into());
            };
            let name = text(new, "/metadata/name");
            let prefix = source.replacen('/', ".", 1) + ".";
            if !recording_exists(&source) || !name.starts_with(&prefix) {
                return Err(format!(
                    "profile {name} is not the output of an existing ProfileRecording {source}"
                ));
            }
            Ok(())
        }
        (Operation::Update, Some(old), Some(new)) => {
            let (before, after) = (finalizers(Some(old)), finalizers(Some(new)));
            let own = node_finalizer(node);
            if let Some(other) = before
                .symmetric_difference(&after)
                .find(|f| **f != own && f.starts_with(NODE_FINALIZER_PREFIX))
            {
                return Err(format!("finalizer {other} belongs to another node"));
            }
            for field in ["/metadata/labels", "/metadata/annotations"] {
                if old.pointer(field) != new.pointer(field) {
                    return Err(format!(
                        "node agents do not change {}",
                        &field[1..].replace('/', ".")
                    ));
                }
            }
            let (old_spec, new_spec) = (old.get("spec"), new.get("spec"));
            if old_spec == new_spec {
                return Ok(());
            }
            // A recorded profile may grow by what this node saw, and nothing else may change.
            let extends_recording = recorded_from(old).is_some_and(|s| recording_exists(&s))
                && match (old_spec, new_spec) {
                    (Some(o), Some(n)) => {
                        let ((o_names, o_rest), (n_names, n_rest)) =
                            (allowed_syscalls(o), allowed_syscalls(n));
                        o_rest == n_rest && n_names.is_superset(&o_names)
                    }
                    _ => false,
                };
            if extends_recording {
                Ok(())
            } else {
                Err("node agents do not change a profile's spec".into())
            }
        }
        (Operation::Delete, ..) => Err("node agents do not delete profiles".into()),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn status(name: &str, node: &str) -> Value {
        json!({"metadata": {"name": name}, "spec": {"profileKind": "SeccompProfile", "profileName": "web", "nodeName": node}})
    }

    #[test]
    fn reports_are_written_only_about_the_callers_node_under_their_canonical_name() {
        let mine = node_status_name(ProfileKind::SeccompProfile, "web", "n1");
        let theirs = node_status_name(ProfileKind::SeccompProfile, "web", "n2");
        assert_eq!(report("n1", None, Some(&status(&mine, "n1"))), Ok(()));
        assert!(
            report("n1", None, Some(&status(&theirs, "n2")))
                .unwrap_err()
                .contains("node \"n2\"")
        );
        assert!(
            report("n1", None, Some(&status("web-n1", "n1")))
                .unwrap_err()
                .contains("must be named")
        );
        // Taking over another node's report by rewriting its node name.
        assert!(report("n1", Some(&status(&theirs, "n2")), Some(&status(&theirs, "n1"))).is_err());
        assert!(
            report("n1", Some(&status(&theirs, "n2")), None).is_err(),
            "deleting another's"
        );
    }

    fn seccomp(finalizers: &[&str], syscalls: &[&str], recorded: Option<&str>) -> Value {
        let mut v = json!({"metadata": {"name": "shop.trace.app", "finalizers": finalizers},
            "spec": {"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"action": "SCMP_ACT_ALLOW", "names": syscalls}]}});
        if let Some(r) = recorded {
            v["metadata"]["annotations"] = json!({RECORDED_FROM: r});
        }
        v
    }

    #[test]
    fn a_node_touches_only_its_own_finalizer_and_never_rewrites_a_policy() {
        let exists = |s: &str| s == "shop/trace";
        let own = node_finalizer("n1");
        let other = node_finalizer("n2");
        let base = seccomp(&[&other], &["read"], None);
        let update =
            |old: &Value, new: &Value| profile("n1", Operation::Update, Some(old), Some(new), exists);
        assert_eq!(update(&base, &seccomp(&[&other, &own], &["read"], None)), Ok(()));
        assert!(
            update(&base, &seccomp(&[], &["read"], None))
                .unwrap_err()
                .contains("another node")
        );
        assert!(
            update(&base, &seccomp(&[&other], &["read", "ptrace"], None))
                .unwrap_err()
                .contains("spec")
        );
        let mut relaxed = base.clone();
        relaxed["spec"]["defaultAction"] = json!("SCMP_ACT_ALLOW");
        assert!(update(&base, &relaxed).is_err());
        assert!(profile("n1", Operation::Delete, Some(&base), None, exists).is_err());
        let mut relabelled = base.clone();
        relabelled["metadata"]["labels"] = json!({"app.kubernetes.io/managed-by": "phylax"});
        assert!(update(&base, &relabelled).unwrap_err().contains("labels"));
    }

    #[test]
    fn a_recorded_profile_may_only_grow_and_only_while_its_recording_exists() {
        let exists = |s: &str| s == "shop/trace";
        let old = seccomp(&[], &["read"], Some("shop/trace"));
        let grown = seccomp(&[], &["read", "write"], Some("shop/trace"));
        assert_eq!(
            profile("n1", Operation::Update, Some(&old), Some(&grown), exists),
            Ok(())
        );
        assert!(
            profile("n1", Operation::Update, Some(&grown), Some(&old), exists).is_err(),
            "shrunk"
        );
        assert!(profile("n1", Operation::Update, Some(&old), Some(&grown), |_| false).is_err());
        let created = seccomp(&[], &["read"], Some("shop/trace"));
        assert_eq!(
            profile("n1", Operation::Create, None, Some(&created), exists),
            Ok(())
        );
        let mut squatting = created.clone();
        squatting["metadata"]["name"] = json!("bank.trace.app");
        assert!(profile("n1", Operation::Create, None, Some(&squatting), exists).is_err());
        assert!(
            profile(
                "n1",
                Operation::Create,
                None,
                Some(&seccomp(&[], &["read"], None)),
                exists
            )
            .is_err()
        );
    }

    #[test]
    fn the_callers_node_comes_from_its_pod_bound_token() {
        let agents = NodeAgents::empty();
        let user = |extra: &[(&str, &str)]| UserInfo {
            username: agents.username.clone(),
            groups: Vec::new(),
            extra: extra
                .iter()
                .map(|(k, v)| ((*k).to_owned(), vec![(*v).to_owned()]))
                .collect(),
        };
        assert_eq!(agents.node_of(&user(&[(NODE_NAME_EXTRA, "n1")])), Ok("n1".into()));
        assert!(
            agents
                .node_of(&user(&[]))
                .unwrap_err()
                .contains("not bound to a pod")
        );
        assert!(
            agents
                .node_of(&user(&[(POD_NAME_EXTRA, "agent-x"), (POD_UID_EXTRA, "u")]))
                .unwrap_err()
                .contains("not known")
        );
    }
}
