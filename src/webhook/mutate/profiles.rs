//! Binds security profiles to new pods. A `ProfileRecording` whose selector matches gives every
//! container the log-everything profile (and marks the pod for the node agent's recorder); a
//! `ProfileBinding` whose image and selector match sets the container's seccomp profile
//! (`type: Localhost`) or AppArmor annotation. A pod whose bound profile is not installed on every
//! node is refused with what to wait for, so it cannot fail later with CreateContainerError.
//! Images match whatever their spelling (`api::images`). Privileged containers are skipped (the
//! runtime applies no profile to them) and said so; the pod's other containers are bound.
//! Ephemeral containers added to a running pod (`pods/ephemeralcontainers`) are bound too.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{EphemeralContainer, Pod, SecurityContext};
use kube::core::error_boundary::DeserializeGuard;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Resource, ResourceExt};
use serde_json::{Value, json};

use crate::api::images::{ImagePattern, ImageRef};
use crate::api::profiles::{
    APPARMOR_ANNOTATION_PREFIX, AppArmorProfile, BOUND_ANNOTATION, ProfileBinding, ProfileBindingSpec,
    ProfileKind, ProfileRecording, ProfileRecordingSpec, RECORDING_ANNOTATION, RECORDING_PROFILE, Recorder,
    SeccompProfile, seccomp_localhost_profile, selector_matches,
};
use crate::webhook::review::{FailurePolicy, Handler, Operation, Request, Verdict};

/// The cluster state the decision needs, kept by watches in the webhook role.
#[derive(Clone)]
pub struct ProfileIndex {
    pub bindings: Store<DeserializeGuard<ProfileBinding>>,
    pub recordings: Store<DeserializeGuard<ProfileRecording>>,
    pub seccomp: Store<DeserializeGuard<SeccompProfile>>,
    pub apparmor: Store<DeserializeGuard<AppArmorProfile>>,
    /// Every store has listed once.
    pub synced: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl ProfileIndex {
    /// An index that never fills: for a webhook built without a cluster (tests of other handlers).
    pub fn empty() -> ProfileIndex {
        ProfileIndex {
            bindings: kube::runtime::reflector::store().0,
            recordings: kube::runtime::reflector::store().0,
            seccomp: kube::runtime::reflector::store().0,
            apparmor: kube::runtime::reflector::store().0,
            synced: Default::default(),
        }
    }

    fn ready(&self) -> bool {
        self.synced.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// A profile's overall state, or None when it does not exist.
    fn state(&self, kind: ProfileKind, name: &str) -> Option<String> {
        fn of<K>(
            store: &Store<DeserializeGuard<K>>,
            name: &str,
            status: impl Fn(&K) -> Option<String>,
        ) -> Option<String>
        where
            K: Resource<DynamicType = ()> + Clone,
        {
            let obj = store.get(&ObjectRef::new(name))?;
            Some(match &obj.0 {
                Ok(p) => status(p).unwrap_or_else(|| "Pending".into()),
                Err(_) => "Error".into(),
            })
        }
        match kind {
            ProfileKind::SeccompProfile => of(&self.seccomp, name, |p| {
                p.status.as_ref().and_then(|s| s.state.clone())
            }),
            ProfileKind::AppArmorProfile => of(&self.apparmor, name, |p| {
                p.status.as_ref().and_then(|s| s.state.clone())
            }),
        }
    }
}

pub struct ProfileBinder {
    pub index: ProfileIndex,
}

impl Handler for ProfileBinder {
    fn name(&self) -> &'static str {
        "profiles"
    }

    fn mutating(&self) -> bool {
        true
    }

    fn failure_policy(&self) -> FailurePolicy {
        // A pod a binding covers must not start without its profile.
        FailurePolicy::Closed
    }

    fn review(&self, req: &Request) -> anyhow::Result<Verdict> {
        let namespace = req.namespace.clone().unwrap_or_default();
        let ephemeral = match (req.operation, req.kind.kind.as_str(), req.sub_resource.as_deref()) {
            (Operation::Create, "Pod", None) => false,
            (Operation::Update, "Pod" | "EphemeralContainers", Some("ephemeralcontainers")) => true,
            _ => return Ok(Verdict::allow()),
        };
        // A new pod: read once the index is known to be ready.
        let pod = match ephemeral {
            true => None,
            false => match req.object::<Pod>() {
                Some(pod) => Some(pod),
                None => return Ok(Verdict::allow()),
            },
        };
        if !self.index.ready() {
            anyhow::bail!("the webhook has not yet read the cluster's ProfileBindings and profiles");
        }
        let Some(pod) = pod else {
            return self.review_ephemeral(req, &namespace);
        };
        let pod = pod?;
        let bindings = self.bindings(&namespace);
        let recordings: Vec<(String, ProfileRecordingSpec)> = self
            .index
            .recordings
            .state()
            .iter()
            .filter(|r| r.namespace().as_deref() == Some(namespace.as_str()))
            .filter_map(|r| r.0.as_ref().ok().map(|r| (r.name_any(), r.spec.clone())))
            .collect();
        Ok(decide(&pod, &bindings, &recordings, |kind, name| {
            self.index.state(kind, name)
        }))
    }
}

impl ProfileBinder {
    fn bindings(&self, namespace: &str) -> Vec<(String, ProfileBindingSpec)> {
        self.index
            .bindings
            .state()
            .iter()
            .filter(|b| b.namespace().as_deref() == Some(namespace))
            .filter_map(|b| b.0.as_ref().ok().map(|b| (b.name_any(), b.spec.clone())))
            .collect()
    }

    /// Ephemeral containers: the ones not in the old object are new and get bound.
    fn review_ephemeral(&self, req: &Request, namespace: &str) -> anyhow::Result<Verdict> {
        /// The EphemeralContainers object of API servers before 1.22: no labels.
        #[derive(serde::Deserialize, Default)]
        #[serde(rename_all = "camelCase")]
        struct Legacy {
            #[serde(default)]
            ephemeral_containers: Vec<EphemeralContainer>,
        }
        let (new, old, labels, prefix) = if req.kind.kind == "Pod" {
            let new: Pod = match req.object() {
                Some(p) => p?,
                None => return Ok(Verdict::allow()),
            };
            let old: Option<Pod> = req.old_object().transpose()?;
            let list = |p: &Pod| {
                p.spec
                    .as_ref()
                    .and_then(|s| s.ephemeral_containers.clone())
                    .unwrap_or_default()
            };
            let labels = new.metadata.labels.clone().unwrap_or_default();
            (
                list(&new),
                old.as_ref().map(list).unwrap_or_default(),
                Some(labels),
                "/spec/ephemeralContainers",
            )
        } else {
            let new: Legacy = match req.object() {
                Some(l) => l?,
                None => return Ok(Verdict::allow()),
            };
            let old: Legacy = req.old_object().transpose()?.unwrap_or_default();
            (
                new.ephemeral_containers,
                old.ephemeral_containers,
                None,
                "/ephemeralContainers",
            )
        };
        let added: Vec<(usize, &EphemeralContainer)> = new
            .iter()
            .enumerate()
            .filter(|(_, c)| !old.iter().any(|o| o.name == c.name))
            .collect();
        Ok(decide_ephemeral(
            &added,
            prefix,
            labels.as_ref(),
            req.kind.kind != "Pod",
            &self.bindings(namespace),
            |kind, name| self.index.state(kind, name),
        ))
    }
}

/// Where a pod names the recording profile itself, however the path is spelt (`./x`, `a/../x`: the
/// kubelet resolves it under its seccomp root): (JSON path, value).
fn recording_profile_claims(pod: &Pod) -> Vec<(String, String)> {
    let Some(spec) = pod.spec.as_ref() else {
        return Vec::new();
    };
    let is_recording = |sp: Option<&k8s_openapi::api::core::v1::SeccompProfile>| {
        sp.and_then(|p| p.localhost_profile.clone())
            .filter(|p| normalise(p) == RECORDING_PROFILE)
    };
    let mut claims = Vec::new();
    if let Some(p) = is_recording(
        spec.security_context
            .as_ref()
            .and_then(|s| s.seccomp_profile.as_ref()),
    ) {
        claims.push(("/spec/securityContext".to_owned(), p));
    }
    let containers = spec
        .containers
        .iter()
        .enumerate()
        .map(|(i, c)| (format!("/spec/containers/{i}"), c.security_context.as_ref()))
        .chain(
            spec.init_containers
                .iter()
                .flatten()
                .enumerate()
                .map(|(i, c)| (format!("/spec/initContainers/{i}"), c.security_context.as_ref())),
        )
        .chain(
            spec.ephemeral_containers
                .iter()
                .flatten()
                .enumerate()
                .map(|(i, c)| {
                    (
                        format!("/spec/ephemeralContainers/{i}"),
                        c.security_context.as_ref(),
                    )
                }),
        );
    for (path, sc) in containers {
        if let Some(p) = is_recording(sc.and_then(|s| s.seccomp_profile.as_ref())) {
            claims.push((path, p));
        }
    }
    // API servers before 1.27 still honour the deprecated seccomp annotations and copy them into
    // the fields above after admission, so `localhost/<profile>` there is the same claim.
    for (key, value) in pod.annotations() {
        let deprecated = key == "seccomp.security.alpha.kubernetes.io/pod"
            || key.starts_with("container.seccomp.security.alpha.kubernetes.io/");
        if deprecated
            && value
                .strip_prefix("localhost/")
                .is_some_and(|p| normalise(p) == RECORDING_PROFILE)
        {
            claims.push((format!("/metadata/annotations/{key}"), value.clone()));
        }
    }
    claims
}

/// Refuses a pod that sets the recording annotation or names the recording profile itself;
/// `recorded` are the containers the webhook itself gives that profile.
fn refuse_recording_claims(pod: &Pod, recording: Option<&str>, recorded: &[&str]) -> Option<Verdict> {
    // The recording profile logs every syscall and filters none, and the recording annotation
    // makes the node agent write a cluster-wide profile: both are Phylax's to set, for the
    // containers a recording selects, and a pod that sets them itself is refused.
    if let Some(claimed) = pod.annotations().get(RECORDING_ANNOTATION)
        && recording != Some(claimed.as_str())
    {
        return Some(Verdict::deny(format!(
            "the annotation {RECORDING_ANNOTATION} is set by Phylax only, on pods a ProfileRecording \
             selects; no ProfileRecording {claimed:?} in this namespace selects this pod: remove the annotation"
        )));
    }
    for (path, names) in recording_profile_claims(pod) {
        if !recorded.contains(&path.as_str()) {
            return Some(Verdict::deny(format!(
                "{path} names {names:?}, Phylax's recording profile, which logs every syscall and \
                 blocks none; only Phylax gives it, to containers a ProfileRecording selects: \
                 use RuntimeDefault or a SeccompProfile of your own"
            )));
        }
    }
    None
}

/// A relative path with `.`, `..` and empty segments resolved, as a path joined under a root.
fn normalise(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for segment in path.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            s => parts.push(s),
        }
    }
    parts.join("/")
}

/// A container the decision looks at, whatever its kind.
struct Slot<'a> {
    /// JSON path of the container in the reviewed object.
    path: String,
    name: &'a str,
    image: &'a str,
    security_context: Option<&'a SecurityContext>,
}

impl Slot<'_> {
    fn privileged(&self) -> bool {
        self.security_context.and_then(|s| s.privileged) == Some(true)
    }
}

/// The binding for one container image: an exact image beats a repository, a repository beats a
/// glob, a glob beats `*`; among equals the first by name.
fn binding_for<'a>(
    bindings: &'a [(String, ProfileBindingSpec)],
    labels: Option<&BTreeMap<String, String>>,
    image: &str,
) -> Result<Option<&'a (String, ProfileBindingSpec)>, String> {
    let image = ImageRef::parse(image);
    let mut matching: Vec<(u8, &(String, ProfileBindingSpec))> = Vec::new();
    for entry in bindings {
        let Some(rank) = ImagePattern::parse(&entry.1.image).rank(&image) else {
            continue;
        };
        match (&entry.1.pod_selector, labels) {
            (None, _) => {}
            (Some(s), Some(labels)) => {
                if !selector_matches(s, labels) {
                    continue;
                }
            }
            // A selector that cannot be evaluated must not be guessed either way.
            (Some(_), None) => {
                return Err(format!(
                    "ProfileBinding {} selects pods by label, and this API server does not send the pod's \
                     labels with ephemeral containers",
                    entry.0
                ));
            }
        }
        matching.push((rank, entry));
    }
    matching.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.0.cmp(&b.1.0)));
    Ok(matching.first().map(|(_, b)| *b))
}

fn set_seccomp(patch: &mut Vec<Value>, slot: &Slot, profile: &str) {
    let value = json!({"type": "Localhost", "localhostProfile": profile});
    let path = &slot.path;
    if slot.security_context.is_none() {
        patch.push(json!({"op": "add", "path": format!("{path}/securityContext"), "value": {"seccompProfile": value}}));
    } else {
        patch.push(
            json!({"op": "add", "path": format!("{path}/securityContext/seccompProfile"), "value": value}),
        );
    }
}

/// Refuses a binding whose profile is not installed on every node, saying what to wait for.
fn require_installed(
    state: &impl Fn(ProfileKind, &str) -> Option<String>,
    binding: &str,
    b: &ProfileBindingSpec,
    slot: &Slot,
) -> Option<Verdict> {
    let (kind, name) = (b.profile_ref.kind, b.profile_ref.name.as_str());
    let why = match state(kind, name).as_deref() {
        Some("Installed") => return None,
        None => format!("{} {name} does not exist", kind.as_str()),
        Some(s) => format!("{} {name} is {s}, not Installed on every node", kind.as_str()),
    };
    Some(Verdict::deny(format!(
        "ProfileBinding {binding} binds {} {name} to container {:?} (image {:?}), but {why}; \
         the pod is refused so it does not fail to start on a node without the profile. \
         Create it again once `kubectl get {} {name}` shows Installed",
        kind.as_str(),
        slot.name,
        slot.image,
        match kind {
            ProfileKind::SeccompProfile => "seccompprofile",
            ProfileKind::AppArmorProfile => "apparmorprofile",
        }
    )))
}

fn privileged_warning(slot: &Slot) -> String {
    format!(
        "container {:?} is privileged: the runtime applies no seccomp or AppArmor profile to it, so \
         Phylax binds none",
        slot.name
    )
}

/// The decision for a new pod, free of I/O: `state` gives a profile's overall state (None: no
/// such profile).
pub fn decide(
    pod: &Pod,
    bindings: &[(String, ProfileBindingSpec)],
    recordings: &[(String, ProfileRecordingSpec)],
    state: impl Fn(ProfileKind, &str) -> Option<String>,
) -> Verdict {
    let Some(spec) = pod.spec.as_ref() else {
        return Verdict::allow();
    };
    let labels = pod.labels();
    let slots: Vec<Slot> = spec
        .containers
        .iter()
        .enumerate()
        .map(|(i, c)| (format!("/spec/containers/{i}"), c))
        .chain(
            spec.init_containers
                .iter()
                .flatten()
                .enumerate()
                .map(|(i, c)| (format!("/spec/initContainers/{i}"), c)),
        )
        .map(|(path, c)| Slot {
            path,
            name: &c.name,
            image: c.image.as_deref().unwrap_or_default(),
            security_context: c.security_context.as_ref(),
        })
        .collect();

    let mut patch: Vec<Value> = Vec::new();
    let mut annotations: BTreeMap<String, String> = BTreeMap::new();
    let mut warnings = Vec::new();

    let mut active: Vec<&(String, ProfileRecordingSpec)> = recordings
        .iter()
        .filter(|(_, r)| r.kind == ProfileKind::SeccompProfile && r.recorder == Recorder::Logs)
        .filter(|(_, r)| selector_matches(&r.pod_selector, labels))
        .collect();
    active.sort_by(|a, b| a.0.cmp(&b.0));
    let recording = active.first().map(|(name, _)| name.as_str());

    // Bindings first: a recording never takes a container a binding covers, so a pod author who
    // matches a recording's selector cannot trade a binding's profile for the log-everything one.
    let mut bound = Vec::new();
    let mut recorded: Vec<&str> = Vec::new();
    for slot in &slots {
        let found = match binding_for(bindings, Some(labels), slot.image) {
            Ok(found) => found,
            Err(why) => return Verdict::deny(why),
        };
        if slot.privileged() {
            // One privileged container no longer exempts the others; it is only skipped itself.
            if found.is_some() || recording.is_some() {
                warnings.push(privileged_warning(slot));
            }
            continue;
        }
        let Some((binding, b)) = found else {
            if recording.is_some() {
                set_seccomp(&mut patch, slot, RECORDING_PROFILE);
                recorded.push(&slot.path);
            }
            continue;
        };
        if let Some(refusal) = require_installed(&state, binding, b, slot) {
            return refusal;
        }
        let (kind, name) = (b.profile_ref.kind, b.profile_ref.name.as_str());
        match kind {
            ProfileKind::SeccompProfile => {
                set_seccomp(&mut patch, slot, &seccomp_localhost_profile(name));
            }
            ProfileKind::AppArmorProfile => {
                annotations.insert(
                    format!("{APPARMOR_ANNOTATION_PREFIX}{}", slot.name),
                    format!("localhost/{name}"),
                );
            }
        }
        bound.push(format!("{}={}/{name}", slot.name, kind.as_str()));
    }
    if !bound.is_empty() {
        annotations.insert(BOUND_ANNOTATION.into(), bound.join(","));
    }
    let recording = recording.filter(|_| !recorded.is_empty());
    if let Some(recording) = recording {
        annotations.insert(RECORDING_ANNOTATION.into(), recording.to_owned());
        warnings.push(format!(
            "ProfileRecording {recording} records the syscalls of the containers no ProfileBinding covers"
        ));
    }

    if let Some(refusal) = refuse_recording_claims(pod, recording, &recorded) {
        return refusal;
    }
    if patch.is_empty() && annotations.is_empty() {
        return Verdict::Allow { warnings };
    }
    if pod.metadata.annotations.is_none() {
        patch.push(json!({"op": "add", "path": "/metadata/annotations", "value": annotations}));
    } else {
        for (k, v) in annotations {
            let key = k.replace('~', "~0").replace('/', "~1");
            patch.push(json!({"op": "add", "path": format!("/metadata/annotations/{key}"), "value": v}));
        }
    }
    finish(patch, warnings)
}

fn finish(patch: Vec<Value>, warnings: Vec<String>) -> Verdict {
    match serde_json::from_value(Value::Array(patch)) {
        Ok(patch) => Verdict::Patch { patch, warnings },
        Err(e) => Verdict::deny(format!("internal error: cannot build the patch: {e}")),
    }
}

/// The decision for ephemeral containers added to a running pod: each new one gets its binding's
/// seccomp profile, as a container of a new pod would. `prefix` is where the list sits in the
/// reviewed object (`/spec/ephemeralContainers` in a Pod, `/ephemeralContainers` in the
/// EphemeralContainers object of API servers before 1.22); `labels` is None when the object
/// does not carry the pod's labels. Recordings do not take ephemeral containers, and none may
/// name the recording profile itself. Before 1.22 (`legacy`) an ephemeral container cannot have a
/// securityContext at all, so one a binding covers is refused: it would run without its profile.
pub fn decide_ephemeral(
    added: &[(usize, &EphemeralContainer)],
    prefix: &str,
    labels: Option<&BTreeMap<String, String>>,
    legacy: bool,
    bindings: &[(String, ProfileBindingSpec)],
    state: impl Fn(ProfileKind, &str) -> Option<String>,
) -> Verdict {
    let mut patch = Vec::new();
    let mut warnings = Vec::new();
    for (i, c) in added {
        let slot = Slot {
            path: format!("{prefix}/{i}"),
            name: &c.name,
            image: c.image.as_deref().unwrap_or_default(),
            security_context: c.security_context.as_ref(),
        };
        if let Some(p) = slot
            .security_context
            .and_then(|s| s.seccomp_profile.as_ref())
            .and_then(|p| p.localhost_profile.as_deref())
            .filter(|p| normalise(p) == RECORDING_PROFILE)
        {
            return Verdict::deny(format!(
                "{} names {p:?}, Phylax's recording profile, which logs every syscall and blocks none; \
                 only Phylax gives it: use RuntimeDefault or a SeccompProfile of your own",
                slot.path
            ));
        }
        let found = match binding_for(bindings, labels, slot.image) {
            Ok(found) => found,
            Err(why) => return Verdict::deny(format!("ephemeral container {:?}: {why}", slot.name)),
        };
        let Some((binding, b)) = found else { continue };
        if slot.privileged() {
            warnings.push(privileged_warning(&slot));
            continue;
        }
        let name = b.profile_ref.name.as_str();
        if legacy {
            return Verdict::deny(format!(
                "ProfileBinding {binding} binds {} {name} to image {:?}, and this API server (before 1.22) \
                 gives ephemeral containers no securityContext, so ephemeral container {:?} would run \
                 without it: run that image in a new pod instead",
                b.profile_ref.kind.as_str(),
                slot.image,
                slot.name
            ));
        }
        if let Some(refusal) = require_installed(&state, binding, b, &slot) {
            return refusal;
        }
        match b.profile_ref.kind {
            ProfileKind::SeccompProfile => set_seccomp(&mut patch, &slot, &seccomp_localhost_profile(name)),
            // AppArmor is bound by a pod annotation, which a running pod cannot gain.
            ProfileKind::AppArmorProfile => {
                return Verdict::deny(format!(
                    "ProfileBinding {binding} binds AppArmorProfile {name} to image {:?}; AppArmor profiles \
                     are set by pod annotations when a pod is created, so ephemeral container {:?} cannot \
                     get it: run that image in a new pod instead",
                    slot.image, slot.name
                ));
            }
        }
    }
    if patch.is_empty() {
        return Verdict::Allow { warnings };
    }
    finish(patch, warnings)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::profiles::ProfileRef;

    fn pod(v: Value) -> Pod {
        serde_json::from_value(v).unwrap()
    }

    fn binding(image: &str, kind: ProfileKind, name: &str, selector: Option<Value>) -> ProfileBindingSpec {
        ProfileBindingSpec {
            profile_ref: ProfileRef {
                kind,
                name: name.into(),
            },
            image: image.into(),
            pod_selector: selector.map(|s| serde_json::from_value(s).unwrap()),
        }
    }

    fn installed(_: ProfileKind, name: &str) -> Option<String> {
        match name {
            "pending" => Some("Pending".into()),
            "gone" => None,
            _ => Some("Installed".into()),
        }
    }

    fn apply(p: &Pod, verdict: &Verdict) -> Value {
        let mut doc = serde_json::to_value(p).unwrap();
        if let Verdict::Patch { patch, .. } = verdict {
            json_patch::patch(&mut doc, patch).unwrap();
        }
        doc
    }

    #[test]
    fn bindings_set_profiles_by_image_with_the_most_specific_winning() {
        let p = pod(
            json!({"metadata": {"name": "p", "labels": {"app": "web"}}, "spec": {"containers": [
            {"name": "web", "image": "registry.local/web:1.2"},
            {"name": "side", "image": "envoy:1.30", "securityContext": {"runAsUser": 1000}},
            {"name": "other", "image": "busybox"}],
            "initContainers": [{"name": "init", "image": "registry.local/web:1.2"}]}}),
        );
        let bindings = vec![
            (
                "all".to_owned(),
                binding("*", ProfileKind::SeccompProfile, "default", None),
            ),
            (
                "web".to_owned(),
                binding("registry.local/web:*", ProfileKind::SeccompProfile, "web", None),
            ),
            (
                "web-exact".to_owned(),
                binding(
                    "registry.local/web:1.2",
                    ProfileKind::SeccompProfile,
                    "web-12",
                    None,
                ),
            ),
            (
                "envoy".to_owned(),
                binding("envoy:*", ProfileKind::AppArmorProfile, "envoy", None),
            ),
            (
                "db-only".to_owned(),
                binding(
                    "busybox",
                    ProfileKind::SeccompProfile,
                    "db",
                    Some(json!({"matchLabels": {"app": "db"}})),
                ),
            ),
        ];
        let v = decide(&p, &bindings, &[], installed);
        let out = apply(&p, &v);
        assert_eq!(
            out["spec"]["containers"][0]["securityContext"]["seccompProfile"],
            json!({"type": "Localhost", "localhostProfile": "phylax/web-12.json"})
        );
        assert_eq!(out["spec"]["containers"][1]["securityContext"]["runAsUser"], 1000);
        assert!(
            out["spec"]["containers"][1]["securityContext"]
                .get("seccompProfile")
                .is_none()
        );
        assert_eq!(
            out["metadata"]["annotations"]["container.apparmor.security.beta.kubernetes.io/side"],
            "localhost/envoy"
        );
        // busybox: the db binding's selector does not match; `*` applies.
        assert_eq!(
            out["spec"]["containers"][2]["securityContext"]["seccompProfile"]["localhostProfile"],
            "phylax/default.json"
        );
        assert_eq!(
            out["spec"]["initContainers"][0]["securityContext"]["seccompProfile"]["localhostProfile"],
            "phylax/web-12.json"
        );
        assert_eq!(
            out["metadata"]["annotations"][BOUND_ANNOTATION],
            "web=SeccompProfile/web-12,side=AppArmorProfile/envoy,other=SeccompProfile/default,init=SeccompProfile/web-12"
        );
        // Applying the patch again changes nothing (reinvocation).
        let again = decide(&pod(out.clone()), &bindings, &[], installed);
        assert_eq!(apply(&pod(out.clone()), &again), out);
    }

    #[test]
    fn a_profile_not_installed_everywhere_refuses_the_pod() {
        let p = pod(
            json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "web", "image": "web"}]}}),
        );
        for (profile, words) in [("pending", "is Pending"), ("gone", "does not exist")] {
            let b = vec![(
                "b".to_owned(),
                binding("web", ProfileKind::SeccompProfile, profile, None),
            )];
            match decide(&p, &b, &[], installed) {
                Verdict::Deny { message } => {
                    assert!(
                        message.contains(words) && message.contains("ProfileBinding b"),
                        "{message}"
                    );
                    assert!(
                        message.contains(&format!("kubectl get seccompprofile {profile}")),
                        "{message}"
                    );
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn a_privileged_container_is_skipped_and_its_neighbours_are_bound() {
        let b = vec![(
            "b".to_owned(),
            binding("*", ProfileKind::SeccompProfile, "default", None),
        )];
        let p = pod(json!({"metadata": {"name": "p"}, "spec": {"containers": [
            {"name": "a", "image": "x"}, {"name": "b", "image": "y", "securityContext": {"privileged": true}}]}}));
        let verdict = decide(&p, &b, &[], installed);
        let Verdict::Patch { warnings, .. } = &verdict else {
            panic!("{verdict:?}")
        };
        assert!(warnings[0].contains("\"b\" is privileged"), "{warnings:?}");
        let doc = apply(&p, &verdict);
        assert_eq!(
            doc["spec"]["containers"][0]["securityContext"]["seccompProfile"]["localhostProfile"],
            seccomp_localhost_profile("default")
        );
        assert!(doc["spec"]["containers"][1]["securityContext"]["seccompProfile"].is_null());
        assert_eq!(
            doc["metadata"]["annotations"][BOUND_ANNOTATION],
            "a=SeccompProfile/default"
        );
        // A profile that is not installed still refuses the pod, privileged neighbour or not.
        let pending = vec![(
            "b".to_owned(),
            binding("*", ProfileKind::SeccompProfile, "pending", None),
        )];
        assert!(matches!(
            decide(&p, &pending, &[], installed),
            Verdict::Deny { .. }
        ));
        let plain =
            pod(json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "a", "image": "x"}]}}));
        assert_eq!(decide(&plain, &[], &[], installed), Verdict::allow());
    }

    #[test]
    fn another_spelling_of_the_image_gets_the_same_binding() {
        let b = vec![(
            "nginx".to_owned(),
            binding("nginx:1.25", ProfileKind::SeccompProfile, "web", None),
        )];
        for image in [
            "nginx:1.25",
            "docker.io/library/nginx:1.25",
            "index.docker.io/nginx:1.25",
        ] {
            let p = pod(
                json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": image}]}}),
            );
            let doc = apply(&p, &decide(&p, &b, &[], installed));
            assert_eq!(
                doc["spec"]["containers"][0]["securityContext"]["seccompProfile"]["localhostProfile"],
                seccomp_localhost_profile("web"),
                "{image}"
            );
        }
    }

    #[test]
    fn ephemeral_containers_are_bound_like_the_pods_containers() {
        let b = vec![
            (
                "all".to_owned(),
                binding("*", ProfileKind::SeccompProfile, "default", None),
            ),
            (
                "web".to_owned(),
                binding("web", ProfileKind::AppArmorProfile, "web", None),
            ),
        ];
        let debug: EphemeralContainer =
            serde_json::from_value(json!({"name": "debug", "image": "busybox"})).unwrap();
        let verdict = decide_ephemeral(
            &[(1, &debug)],
            "/spec/ephemeralContainers",
            None,
            false,
            &b,
            installed,
        );
        let Verdict::Patch { patch, .. } = &verdict else {
            panic!("{verdict:?}")
        };
        let ops = serde_json::to_value(patch).unwrap();
        assert_eq!(ops[0]["path"], "/spec/ephemeralContainers/1/securityContext");
        assert_eq!(
            ops[0]["value"]["seccompProfile"]["localhostProfile"],
            seccomp_localhost_profile("default")
        );
        // AppArmor needs a pod annotation a running pod cannot gain: refused, not skipped.
        let web: EphemeralContainer = serde_json::from_value(json!({"name": "w", "image": "web"})).unwrap();
        assert!(matches!(
            decide_ephemeral(
                &[(0, &web)],
                "/spec/ephemeralContainers",
                None,
                false,
                &b,
                installed
            ),
            Verdict::Deny { .. }
        ));
        // A selector the object's labels cannot answer is not guessed.
        let selective = vec![(
            "sel".to_owned(),
            binding(
                "*",
                ProfileKind::SeccompProfile,
                "default",
                Some(json!({"matchLabels": {"app": "x"}})),
            ),
        )];
        assert!(matches!(
            decide_ephemeral(
                &[(0, &debug)],
                "/spec/ephemeralContainers",
                None,
                false,
                &selective,
                installed
            ),
            Verdict::Deny { .. }
        ));
        // Before 1.22 an ephemeral container cannot carry a profile: a bound image is refused.
        assert!(matches!(
            decide_ephemeral(&[(0, &debug)], "/ephemeralContainers", None, true, &b, installed),
            Verdict::Deny { .. }
        ));
        assert!(matches!(
            decide_ephemeral(&[(0, &debug)], "/ephemeralContainers", None, true, &[], installed),
            Verdict::Allow { .. }
        ));
        // Nor may one name the recording profile.
        let claim: EphemeralContainer = serde_json::from_value(json!({"name": "r", "image": "busybox",
            "securityContext": {"seccompProfile": {"type": "Localhost", "localhostProfile": RECORDING_PROFILE}}}))
        .unwrap();
        assert!(matches!(
            decide_ephemeral(
                &[(0, &claim)],
                "/spec/ephemeralContainers",
                None,
                false,
                &[],
                installed
            ),
            Verdict::Deny { .. }
        ));
    }

    #[test]
    fn recordings_give_the_logging_profile_and_mark_the_pod() {
        let rec = ProfileRecordingSpec {
            kind: ProfileKind::SeccompProfile,
            recorder: Recorder::Logs,
            pod_selector: serde_json::from_value(json!({"matchLabels": {"app": "web"}})).unwrap(),
        };
        let p = pod(
            json!({"metadata": {"name": "p", "labels": {"app": "web"}, "annotations": {"a": "b"}},
            "spec": {"containers": [{"name": "web", "image": "web"}]}}),
        );
        let out = apply(&p, &decide(&p, &[], &[("rec".into(), rec.clone())], installed));
        assert_eq!(
            out["spec"]["containers"][0]["securityContext"]["seccompProfile"]["localhostProfile"],
            RECORDING_PROFILE
        );
        assert_eq!(out["metadata"]["annotations"][RECORDING_ANNOTATION], "rec");
        assert_eq!(out["metadata"]["annotations"]["a"], "b");
        // Called again on its own output (reinvocation), the webhook accepts what it set.
        let again: Pod = serde_json::from_value(out.clone()).unwrap();
        assert!(matches!(
            decide(&again, &[], &[("rec".into(), rec.clone())], installed),
            Verdict::Patch { .. }
        ));
        let other = pod(
            json!({"metadata": {"name": "p", "labels": {"app": "db"}}, "spec": {"containers": [{"name": "db", "image": "db"}]}}),
        );
        assert_eq!(
            decide(&other, &[], &[("rec".into(), rec)], installed),
            Verdict::allow()
        );
    }

    /// Attack: a pod author labels the pod to match a recording, to swap the profile a binding
    /// gives for the log-everything one.
    #[test]
    fn a_recording_never_overrides_a_binding() {
        let rec = ProfileRecordingSpec {
            kind: ProfileKind::SeccompProfile,
            recorder: Recorder::Logs,
            pod_selector: serde_json::from_value(json!({"matchLabels": {"app": "web"}})).unwrap(),
        };
        let p = pod(json!({"metadata": {"name": "p", "labels": {"app": "web"}},
            "spec": {"containers": [{"name": "web", "image": "web"}, {"name": "side", "image": "envoy"}]}}));
        let b = vec![(
            "b".to_owned(),
            binding("web", ProfileKind::SeccompProfile, "x", None),
        )];
        let out = apply(&p, &decide(&p, &b, &[("rec".into(), rec)], installed));
        let profile = |i: usize| {
            out["spec"]["containers"][i]["securityContext"]["seccompProfile"]["localhostProfile"].clone()
        };
        assert_eq!(profile(0), json!(seccomp_localhost_profile("x")));
        assert_eq!(profile(1), json!(RECORDING_PROFILE));
        assert_eq!(out["metadata"]["annotations"][RECORDING_ANNOTATION], "rec");
    }

    /// Attack: a pod names the log-everything profile itself (Pod Security "restricted" accepts
    /// any Localhost profile), however the path is spelt, or claims a recording to make the node
    /// agent write a cluster-wide profile.
    #[test]
    fn pods_cannot_claim_the_recording_profile_or_annotation() {
        for path in [
            RECORDING_PROFILE,
            "./phylax-recording.json",
            "phylax/../phylax-recording.json",
        ] {
            for p in [
                json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "i",
                    "securityContext": {"seccompProfile": {"type": "Localhost", "localhostProfile": path}}}]}}),
                json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "i"}],
                    "securityContext": {"seccompProfile": {"type": "Localhost", "localhostProfile": path}}}}),
                json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "i"}],
                    "initContainers": [{"name": "i", "image": "i",
                        "securityContext": {"seccompProfile": {"type": "Localhost", "localhostProfile": path}}}]}}),
                // The deprecated annotations, which API servers before 1.27 turn into the fields.
                json!({"metadata": {"name": "p", "annotations": {"seccomp.security.alpha.kubernetes.io/pod": format!("localhost/{path}")}},
                    "spec": {"containers": [{"name": "c", "image": "i"}]}}),
                json!({"metadata": {"name": "p", "annotations": {"container.seccomp.security.alpha.kubernetes.io/c": format!("localhost/{path}")}},
                    "spec": {"containers": [{"name": "c", "image": "i"}]}}),
                // A privileged container does not exempt the pod from the check.
                json!({"metadata": {"name": "p"}, "spec": {"containers": [
                    {"name": "p", "image": "i", "securityContext": {"privileged": true}},
                    {"name": "c", "image": "i", "securityContext": {"seccompProfile": {"type": "Localhost", "localhostProfile": path}}}]}}),
            ] {
                match decide(&pod(p.clone()), &[], &[], installed) {
                    Verdict::Deny { message } => assert!(message.contains("recording profile"), "{message}"),
                    other => panic!("{p} was admitted: {other:?}"),
                }
            }
        }
        let claimed = pod(
            json!({"metadata": {"name": "p", "annotations": {RECORDING_ANNOTATION: "rec"}},
            "spec": {"containers": [{"name": "c", "image": "i"}]}}),
        );
        match decide(&claimed, &[], &[], installed) {
            Verdict::Deny { message } => assert!(message.contains("set by Phylax only"), "{message}"),
            other => panic!("a claimed recording was admitted: {other:?}"),
        }
        let privileged_claim = pod(
            json!({"metadata": {"name": "p", "annotations": {RECORDING_ANNOTATION: "rec"}},
            "spec": {"containers": [{"name": "c", "image": "i", "securityContext": {"privileged": true}}]}}),
        );
        assert!(matches!(
            decide(&privileged_claim, &[], &[], installed),
            Verdict::Deny { .. }
        ));
    }
}
