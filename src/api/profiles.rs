//! `profiles.phylax.dev/v1alpha1`: seccomp and AppArmor profiles (cluster-scoped), where each node
//! stands with them (`ProfileNodeStatus`, written by that node's agent), and the namespaced
//! `ProfileBinding` and `ProfileRecording` that tie them to pods.
//!
//! `SeccompProfile`'s spec keeps the Security Profiles Operator's field names and meaning, so an SPO
//! profile moves over by changing its `apiVersion`. Actions, architectures, flags and operators
//! stay strings in the schema, as in SPO: the node agent checks them with libseccomp and names the
//! culprit in the profile's status instead of the API server refusing values a newer libseccomp
//! knows.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};

pub use super::selectors::{glob_matches, selector_matches};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub const GROUP: &str = "profiles.phylax.dev";
/// Directory under `<kubelet-root>/seccomp/` holding the installed profiles; a pod names a
/// profile as `phylax/<name>.json` (`localhostProfile`).
pub const SECCOMP_DIR: &str = "phylax";
/// The log-everything profile pods under a `ProfileRecording` run with (not a `SeccompProfile`:
/// the node agent installs it itself, beside the profiles' directory).
pub const RECORDING_PROFILE: &str = "phylax-recording.json";
/// Annotation the webhook puts on a pod it gave the recording profile: the `ProfileRecording`'s name.
pub const RECORDING_ANNOTATION: &str = "profiles.phylax.dev/recording";
/// Annotation the webhook puts on a pod it bound: `<container>=<kind>/<name>` pairs, comma-separated.
pub const BOUND_ANNOTATION: &str = "profiles.phylax.dev/bound";
/// Finalizers a node agent puts on profiles it installed: `node.profiles.phylax.dev/<node>`.
pub const NODE_FINALIZER_PREFIX: &str = "node.profiles.phylax.dev/";
/// On a SeccompProfile written by a recording: `<namespace>/<recording>`.
pub const RECORDED_FROM: &str = "profiles.phylax.dev/recorded-from";
/// Kubernetes 1.20's annotation for a container's AppArmor profile.
pub const APPARMOR_ANNOTATION_PREFIX: &str = "container.apparmor.security.beta.kubernetes.io/";

/// Whether a profile is installed on the nodes.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, JsonSchema, PartialEq, Eq)]
pub enum Enablement {
    #[default]
    Enabled,
    /// Kept as an object but not installed (and removed from nodes where no pod uses it).
    Disabled,
}

#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, Default, JsonSchema, PartialEq)]
#[kube(
    group = "profiles.phylax.dev",
    version = "v1alpha1",
    kind = "SeccompProfile",
    status = "ProfileStatus",
    shortname = "seccomp",
    category = "phylax",
    printcolumn = r#"{"name":"State","type":"string","jsonPath":".status.state"}"#,
    printcolumn = r#"{"name":"LocalhostProfile","type":"string","jsonPath":".status.localhostProfile"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct SeccompProfileSpec {
    /// What a syscall no rule names gets: `SCMP_ACT_ALLOW`, `SCMP_ACT_ERRNO`, `SCMP_ACT_LOG`,
    /// `SCMP_ACT_KILL`, `SCMP_ACT_KILL_PROCESS`, `SCMP_ACT_KILL_THREAD`, `SCMP_ACT_TRAP`,
    /// `SCMP_ACT_TRACE` or `SCMP_ACT_NOTIFY`.
    pub default_action: String,
    /// errno for a default action of `SCMP_ACT_ERRNO` (default EPERM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_errno_ret: Option<u32>,
    /// `SCMP_ARCH_X86_64`, `SCMP_ARCH_X86`, `SCMP_ARCH_X32`, `SCMP_ARCH_AARCH64`, … Empty means the
    /// node's own architecture.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub architectures: Vec<String>,
    /// Rules, applied over the base profile's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub syscalls: Vec<SyscallRule>,
    /// `SECCOMP_FILTER_FLAG_TSYNC`, `SECCOMP_FILTER_FLAG_LOG`, `SECCOMP_FILTER_FLAG_SPEC_ALLOW`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub flags: Vec<String>,
    /// Another `SeccompProfile` whose rules this one extends (at most 15 levels, no cycles). This
    /// profile's default action wins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_profile_name: Option<String>,
    /// `Enabled` (default) or `Disabled`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<Enablement>,
    /// The Security Profiles Operator's spelling of `state: Disabled`, accepted so its profiles
    /// move over unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled: Option<bool>,
    /// Used: the unix socket to which a runtime with seccomp-notify support (runc 1.1 and later)
    /// hands the notification descriptor of `SCMP_ACT_NOTIFY` rules; written into the installed
    /// profile as the OCI field of the same name. From the Security Profiles Operator's spec.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listener_path: Option<String>,
    /// Used: opaque data the runtime passes to the listener with the descriptor; written into the
    /// installed profile with `listenerPath`. From the Security Profiles Operator's spec.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listener_metadata: Option<String>,
    /// Ignored: accepted so the Security Profiles Operator's profiles move over by changing only
    /// their apiVersion. Phylax binds profiles to workloads with a ProfileBinding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_workload: Option<String>,
}

impl SeccompProfileSpec {
    pub fn enabled(&self) -> bool {
        self.state != Some(Enablement::Disabled) && self.disabled != Some(true)
    }
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SyscallRule {
    pub names: Vec<String>,
    pub action: String,
    /// errno for `SCMP_ACT_ERRNO` (default EPERM) or the value passed to the tracer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errno_ret: Option<u32>,
    /// Conditions on the arguments: all must hold (several on one argument: any).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<SyscallArg>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SyscallArg {
    /// Argument position, 0 to 5.
    pub index: u32,
    pub value: u64,
    /// The datum compared after masking with `value`, for `SCMP_CMP_MASKED_EQ`.
    #[serde(default)]
    pub value_two: u64,
    /// `SCMP_CMP_NE`, `SCMP_CMP_LT`, `SCMP_CMP_LE`, `SCMP_CMP_EQ`, `SCMP_CMP_GE`, `SCMP_CMP_GT`
    /// or `SCMP_CMP_MASKED_EQ`.
    pub op: String,
}

#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, Default, JsonSchema, PartialEq)]
#[kube(
    group = "profiles.phylax.dev",
    version = "v1alpha1",
    kind = "AppArmorProfile",
    status = "ProfileStatus",
    shortname = "apparmor",
    category = "phylax",
    printcolumn = r#"{"name":"State","type":"string","jsonPath":".status.state"}"#,
    printcolumn = r#"{"name":"LocalhostProfile","type":"string","jsonPath":".status.localhostProfile"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct AppArmorProfileSpec {
    /// The AppArmor policy text, declaring exactly one `profile <name> … { … }`; pods refer to it
    /// as `localhost/<name>`.
    pub policy: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<Enablement>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled: Option<bool>,
}

impl AppArmorProfileSpec {
    pub fn enabled(&self) -> bool {
        self.state != Some(Enablement::Disabled) && self.disabled != Some(true)
    }
}

/// Where a profile stands across the nodes, kept by the operator from the `ProfileNodeStatus`
/// reports.
#[derive(Deserialize, Serialize, Clone, Debug, Default, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ProfileStatus {
    /// `Pending`, `Installed` (on every Node), `Partial`, `Error`, `Disabled` or
    /// `Terminating`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// What a pod names: `phylax/<name>.json` for seccomp (`type: Localhost`), the AppArmor
    /// profile's name for AppArmor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub localhost_profile: Option<String>,
    /// One entry per node that reported.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<NodeResult>,
    /// Pods using the profile, `namespace/name` (at most 100 listed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub used_by: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NodeResult {
    pub node: String,
    pub state: NodeState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// One node's result for one profile.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, JsonSchema, PartialEq, Eq, Hash)]
pub enum NodeState {
    #[default]
    Pending,
    Installed,
    Error,
    /// Disabled: not installed on this node.
    Disabled,
    /// Being deleted: waiting for the pods on this node that use it to end.
    Terminating,
    /// The node cannot apply it (no AppArmor).
    Unsupported,
}

impl NodeState {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Pending => "Pending",
            NodeState::Installed => "Installed",
            NodeState::Error => "Error",
            NodeState::Disabled => "Disabled",
            NodeState::Terminating => "Terminating",
            NodeState::Unsupported => "Unsupported",
        }
    }
}

#[derive(
    Deserialize, Serialize, Clone, Copy, Debug, Default, JsonSchema, PartialEq, Eq, Hash, PartialOrd, Ord,
)]
pub enum ProfileKind {
    #[default]
    SeccompProfile,
    AppArmorProfile,
}

impl ProfileKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ProfileKind::SeccompProfile => "SeccompProfile",
            ProfileKind::AppArmorProfile => "AppArmorProfile",
        }
    }
}

/// One node agent's report on one profile. Named `<kind>.<profile>.<node>` when that fits
/// (see [`node_status_name`]); written only by that node's agent.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, Default, JsonSchema, PartialEq)]
#[kube(
    group = "profiles.phylax.dev",
    version = "v1alpha1",
    kind = "ProfileNodeStatus",
    status = "NodeReport",
    shortname = "pns",
    category = "phylax",
    printcolumn = r#"{"name":"Kind","type":"string","jsonPath":".spec.profileKind"}"#,
    printcolumn = r#"{"name":"Profile","type":"string","jsonPath":".spec.profileName"}"#,
    printcolumn = r#"{"name":"Node","type":"string","jsonPath":".spec.nodeName"}"#,
    printcolumn = r#"{"name":"State","type":"string","jsonPath":".status.state"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ProfileNodeStatusSpec {
    pub profile_kind: ProfileKind,
    pub profile_name: String,
    pub node_name: String,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NodeReport {
    pub state: NodeState,
    /// Why, for `Error`, `Unsupported` and `Terminating`: names the syscall, action or profile at fault.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The profile's generation this report is about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Where the profile is installed on the node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Pods on this node using the profile, `namespace/name`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pods: Vec<String>,
}

/// Binds a profile to the containers of new pods in this namespace whose image matches.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, Default, JsonSchema, PartialEq)]
#[kube(
    group = "profiles.phylax.dev",
    version = "v1alpha1",
    kind = "ProfileBinding",
    namespaced,
    category = "phylax",
    printcolumn = r#"{"name":"Kind","type":"string","jsonPath":".spec.profileRef.kind"}"#,
    printcolumn = r#"{"name":"Profile","type":"string","jsonPath":".spec.profileRef.name"}"#,
    printcolumn = r#"{"name":"Image","type":"string","jsonPath":".spec.image"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ProfileBindingSpec {
    pub profile_ref: ProfileRef,
    /// The container image, matched whatever its spelling (`nginx:1.25` is also
    /// `docker.io/library/nginx:1.25`): a repository without tag or digest (`registry/app`: every
    /// tag and digest of it, the form that cannot be dodged by pinning a digest), a tag or digest
    /// (`registry/app:1.2`, `registry/app@sha256:…`; a tag never matches a reference that also
    /// pins a digest, since the digest is what runs), a glob where `*` matches any run of
    /// characters (`registry/app:*`), or `*` for every image.
    pub image: String,
    /// Only pods whose labels match; all pods when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_selector: Option<LabelSelector>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, JsonSchema, PartialEq, Eq)]
pub struct ProfileRef {
    pub kind: ProfileKind,
    pub name: String,
}

/// Records the syscalls of the selected pods' containers into `SeccompProfile`s named
/// `<namespace>.<recording>.<container>` when the pods end.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, Default, JsonSchema, PartialEq)]
#[kube(
    group = "profiles.phylax.dev",
    version = "v1alpha1",
    kind = "ProfileRecording",
    namespaced,
    category = "phylax",
    printcolumn = r#"{"name":"Recorder","type":"string","jsonPath":".spec.recorder"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ProfileRecordingSpec {
    /// `SeccompProfile`, the only kind recorded: the API server refuses `AppArmorProfile` (nothing
    /// would record it).
    #[schemars(schema_with = "recorded_kind_schema")]
    pub kind: ProfileKind,
    /// `logs`: the kernel's audit records of a `SCMP_ACT_LOG` profile (the only recorder; the API
    /// server refuses others by name).
    pub recorder: Recorder,
    pub pod_selector: LabelSelector,
}

/// The schema of [`ProfileRecordingSpec::kind`]: the profile kinds a recording can produce. The
/// field keeps the type [`ProfileKind`] so the code compares it like a binding's kind.
fn recorded_kind_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "string",
        "enum": [ProfileKind::SeccompProfile.as_str()],
    })
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Recorder {
    #[default]
    Logs,
}

/// The name of node `node`'s report on a profile: `<kind>.<profile>.<node>` (lowercase kind),
/// or, past the 253-character limit, a shortened name with a hash of the whole.
pub fn node_status_name(kind: ProfileKind, profile: &str, node: &str) -> String {
    let kind = match kind {
        ProfileKind::SeccompProfile => "seccomp",
        ProfileKind::AppArmorProfile => "apparmor",
    };
    let full = format!("{kind}.{profile}.{node}");
    if full.len() <= 253 {
        return full;
    }
    format!(
        "{kind}.{}.{:016x}",
        &profile[..profile.len().min(200)],
        fnv(&full)
    )
}

/// This node's finalizer: `node.profiles.phylax.dev/<node>`, shortened with a hash when the node's
/// name is longer than a finalizer's name part may be (63).
pub fn node_finalizer(node: &str) -> String {
    let ok = node.len() <= 63
        && node
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_');
    if ok {
        format!("{NODE_FINALIZER_PREFIX}{node}")
    } else {
        let head: String = node
            .chars()
            .take(40)
            .filter(|c| c.is_ascii_alphanumeric())
            .collect();
        format!("{NODE_FINALIZER_PREFIX}{head}-{:016x}", fnv(node))
    }
}

/// A stable, non-cryptographic hash for names (FNV-1a); collisions only merge names, they guard nothing.
fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The `localhostProfile` a pod uses for seccomp profile `name`.
pub fn seccomp_localhost_profile(name: &str) -> String {
    format!("{SECCOMP_DIR}/{name}.json")
}

/// The seccomp profile names (`phylax/<name>.json` → `name`) and AppArmor profiles
/// (`localhost/<name>`) a pod's spec and annotations refer to.
pub fn profiles_used(
    spec: Option<&k8s_openapi::api::core::v1::PodSpec>,
    annotations: Option<&BTreeMap<String, String>>,
) -> (Vec<String>, Vec<String>) {
    let mut seccomp = Vec::new();
    let mut apparmor = Vec::new();
    if let Some(spec) = spec {
        let pod_level = spec
            .security_context
            .as_ref()
            .and_then(|s| s.seccomp_profile.as_ref());
        let containers = spec
            .containers
            .iter()
            .chain(spec.init_containers.iter().flatten())
            .filter_map(|c| {
                c.security_context
                    .as_ref()
                    .and_then(|s| s.seccomp_profile.as_ref())
            });
        for p in pod_level.into_iter().chain(containers) {
            if p.type_ == "Localhost"
                && let Some(name) = p
                    .localhost_profile
                    .as_deref()
                    .and_then(|l| l.strip_prefix(SECCOMP_DIR))
                    .and_then(|l| l.strip_prefix('/'))
                    .and_then(|l| l.strip_suffix(".json"))
                && !seccomp.iter().any(|n| n == name)
            {
                seccomp.push(name.to_owned());
            }
        }
    }
    for (key, value) in annotations.into_iter().flatten() {
        if key.starts_with(APPARMOR_ANNOTATION_PREFIX)
            && let Some(name) = value.strip_prefix("localhost/")
            && !apparmor.iter().any(|n| n == name)
        {
            apparmor.push(name.to_owned());
        }
    }
    (seccomp, apparmor)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only seccomp profiles are recorded: an AppArmorProfile recording would be accepted and
    /// record nothing, so the API server refuses it by the schema.
    #[test]
    fn a_recording_of_apparmor_profiles_is_refused_by_the_schema() {
        use kube::CustomResourceExt;
        let crd = serde_json::to_value(ProfileRecording::crd()).unwrap();
        let kind = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
            ["kind"];
        assert_eq!(kind["enum"], serde_json::json!(["SeccompProfile"]), "{kind}");
        assert!(
            kind["description"]
                .as_str()
                .unwrap_or_default()
                .contains("AppArmorProfile"),
            "the schema says why: {kind}"
        );
        // A binding may still name either kind.
        let crd = serde_json::to_value(ProfileBinding::crd()).unwrap();
        let kind = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
            ["profileRef"]["properties"]["kind"];
        assert_eq!(
            kind["enum"],
            serde_json::json!(["SeccompProfile", "AppArmorProfile"]),
            "{kind}"
        );
    }

    /// kubectl validates against the CRD's schema: every field of SPO's SeccompProfile spec must
    /// be in it, or SPO's own profiles are refused (`unknown field "targetWorkload"`).
    #[test]
    fn the_crd_schema_has_every_field_of_spos_seccomp_profile_spec() {
        use kube::CustomResourceExt;
        let crd = serde_json::to_value(SeccompProfile::crd()).unwrap();
        let spec =
            &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"];
        for field in [
            "disabled",
            "baseProfileName",
            "defaultAction",
            "architectures",
            "listenerPath",
            "listenerMetadata",
            "syscalls",
            "flags",
            "targetWorkload",
        ] {
            assert!(spec.get(field).is_some(), "{field} missing from {spec}");
            let description = spec[field]["description"].as_str().unwrap_or_default();
            if ["listenerPath", "listenerMetadata", "targetWorkload"].contains(&field) {
                assert!(
                    description.starts_with("Used:") || description.starts_with("Ignored:"),
                    "{field} must say whether Phylax uses it: {description:?}"
                );
            }
        }
    }

    #[test]
    fn spo_profiles_deserialize_unchanged() {
        let spo = r#"{
          "defaultAction": "SCMP_ACT_ERRNO",
          "architectures": ["SCMP_ARCH_X86_64"],
          "baseProfileName": "runc-v1.1.0",
          "disabled": false,
          "syscalls": [
            {"action": "SCMP_ACT_ALLOW", "names": ["read", "write"]},
            {"action": "SCMP_ACT_ERRNO", "errnoRet": 38, "names": ["personality"],
             "args": [{"index": 0, "value": 8, "op": "SCMP_CMP_EQ"}]}
          ]
        }"#;
        let spec: SeccompProfileSpec = serde_json::from_str(spo).unwrap();
        assert_eq!(spec.syscalls[1].errno_ret, Some(38));
        assert_eq!(spec.syscalls[1].args[0].op, "SCMP_CMP_EQ");
        assert!(spec.enabled());
        let off: SeccompProfileSpec =
            serde_json::from_str(r#"{"defaultAction":"SCMP_ACT_LOG","disabled":true}"#).unwrap();
        assert!(!off.enabled());
        let off: SeccompProfileSpec =
            serde_json::from_str(r#"{"defaultAction":"SCMP_ACT_LOG","state":"Disabled"}"#).unwrap();
        assert!(!off.enabled());
    }

    #[test]
    fn names_fit_kubernetes_limits() {
        assert_eq!(
            node_status_name(ProfileKind::SeccompProfile, "web", "node-1"),
            "seccomp.web.node-1"
        );
        let long = node_status_name(ProfileKind::AppArmorProfile, &"p".repeat(253), &"n".repeat(253));
        assert!(long.len() <= 253, "{}", long.len());
        assert_ne!(
            long,
            node_status_name(ProfileKind::AppArmorProfile, &"p".repeat(253), &"m".repeat(253))
        );
        assert_eq!(node_finalizer("node-1"), "node.profiles.phylax.dev/node-1");
        let f = node_finalizer(&"a".repeat(100));
        assert!(f.len() - NODE_FINALIZER_PREFIX.len() <= 63, "{f}");
    }

    #[test]
    fn profiles_used_by_a_pod() {
        let pod: k8s_openapi::api::core::v1::Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"annotations": {
                "container.apparmor.security.beta.kubernetes.io/app": "localhost/deny-write",
                "container.apparmor.security.beta.kubernetes.io/side": "runtime/default"}},
            "spec": {
                "securityContext": {"seccompProfile": {"type": "Localhost", "localhostProfile": "phylax/base.json"}},
                "containers": [
                    {"name": "app", "securityContext": {"seccompProfile": {"type": "Localhost", "localhostProfile": "phylax/web.json"}}},
                    {"name": "side", "securityContext": {"seccompProfile": {"type": "Localhost", "localhostProfile": "other/x.json"}}},
                    {"name": "rt", "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}}}
                ]}
        }))
        .unwrap();
        let (seccomp, apparmor) = profiles_used(pod.spec.as_ref(), pod.metadata.annotations.as_ref());
        assert_eq!(seccomp, ["base", "web"]);
        assert_eq!(apparmor, ["deny-write"]);
    }
}
