//! Profile recording from the kernel's seccomp audit records. Pods selected by a
//! `ProfileRecording` run under a log-everything profile (the webhook sets it and annotates the
//! pod); the kernel then writes one audit record per syscall kind and process. This recorder reads
//! those records, maps each process to its container through `/proc/<pid>/cgroup` and the pod's
//! container statuses, and when the pod ends writes (or extends) the `SeccompProfile`
//! `<namespace>.<recording>.<container>` allowing the syscalls seen.
//!
//! The pod's annotation is only a hint: before writing, the agent checks that the
//! `ProfileRecording` it names exists in the pod's namespace and selects the pod, so a pod author
//! cannot make the agent write cluster-scoped profiles; the namespace in the name keeps one
//! namespace from squatting another's future recorded profile; and a recording writes at most
//! `MAX_PROFILES_PER_RECORDING` profiles.

pub mod audit;
pub mod cgroup;
mod source;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{ObjectMeta, PostParams};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Client, ResourceExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::NodeArgs;
use super::metrics::{ProfileMetrics, ResultLabels};
use super::seccomp;
use crate::api::profiles::{
    ProfileKind, ProfileRecording, RECORDING_ANNOTATION, Recorder, SeccompProfile, SeccompProfileSpec,
    SyscallRule, selector_matches,
};
use crate::runtime::ownership;
use audit::SeccompRecord;

/// Annotation on a recorded profile: the `namespace/name` of the recording it came from. A
/// recording never changes a profile that does not carry its own name here.
pub use crate::api::profiles::RECORDED_FROM;
/// Container IDs seen before their pod's status named them, kept this many at most.
const MAX_PENDING: usize = 1024;
const MAX_PIDS: usize = 8192;
/// Distinct profiles (container names) one recording may write.
pub const MAX_PROFILES_PER_RECORDING: usize = 32;

/// The log-everything profile recorded pods run with.
pub fn logging_profile() -> Vec<u8> {
    b"{\n  \"defaultAction\": \"SCMP_ACT_LOG\"\n}\n".to_vec()
}

/// A recorded container: which recording, which pod, which container.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Target {
    namespace: String,
    recording: String,
    pod_uid: String,
    container: String,
}

/// What became of one audit record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Attributed {
    /// To a container being recorded.
    Recorded,
    /// To a container not (yet) known to be recorded: kept until its pod's status says.
    Pending,
    /// Not from a container, or an unknown architecture or syscall.
    No,
}

impl Attributed {
    fn as_str(self) -> &'static str {
        match self {
            Attributed::Recorded => "recorded",
            Attributed::Pending => "pending",
            Attributed::No => "not_recorded",
        }
    }
}

#[derive(Default)]
struct State {
    /// Container ID → what it records into.
    containers: HashMap<String, Target>,
    /// Syscalls seen per recorded container.
    seen: HashMap<Target, BTreeSet<String>>,
    /// Syscalls of containers not (yet) in `containers`: the kubelet writes a container's ID to
    /// the pod's status after the container started.
    pending: HashMap<String, BTreeSet<String>>,
    /// pid → (its process's start time, its container ID; None: not in a container). A pid is
    /// reused once its process ends: an entry holds only for the same start time.
    pids: HashMap<u32, (u64, Option<String>)>,
}

pub async fn run(
    client: Client,
    node: NodeArgs,
    pods: Store<Pod>,
    mut pod_events: mpsc::UnboundedReceiver<Arc<Pod>>,
    metrics: ProfileMetrics,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let (tx, mut records) = mpsc::channel::<SeccompRecord>(8192);
    if let Err(e) = source::spawn(node.audit_source.clone(), tx, metrics.clone()) {
        // Installing profiles does not need the audit source: the agent keeps doing that, and
        // recording is unavailable on this node until the source can be read (a restart).
        tracing::error!(
            error = format!("{e:#}"),
            "profile recording is unavailable on this node; profiles are still installed"
        );
        // Pod events are still sent: drain them so they do not pile up.
        loop {
            tokio::select! {
                event = pod_events.recv() => if event.is_none() { return Ok(()) },
                _ = shutdown.cancelled() => return Ok(()),
            }
        }
    }
    let mut state = State::default();
    let profiles = Api::<SeccompProfile>::all(client.clone());
    loop {
        tokio::select! {
            Some(record) = records.recv() => {
                let result = state.record(&node.proc_root, record).as_str();
                metrics.audit_lines.get_or_create(&ResultLabels { result }).inc();
            }
            Some(pod) = pod_events.recv() => {
                state.index(&pod);
                let gone = pods.get(&ObjectRef::from_obj(pod.as_ref())).is_none();
                let ended = matches!(pod.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed"));
                if gone || ended {
                    // One check per recording the pod's containers name (normally one per pod).
                    let mut checked: HashMap<(String, String), Result<(), String>> = HashMap::new();
                    for (target, syscalls) in state.take(&pod.uid().unwrap_or_default()) {
                        let key = (target.namespace.clone(), target.recording.clone());
                        let verified = match checked.get(&key) {
                            Some(v) => v.clone(),
                            None => match verify(&client, &pod, &target).await {
                                Ok(v) => checked.entry(key).or_insert(v).clone(),
                                Err(e) => {
                                    tracing::warn!(recording = %target.recording, namespace = %target.namespace, error = %e, "cannot read the ProfileRecording; nothing written");
                                    metrics.recordings.get_or_create(&ResultLabels { result: "failed" }).inc();
                                    continue;
                                }
                            },
                        };
                        if let Err(why) = verified {
                            tracing::warn!(recording = %target.recording, namespace = %target.namespace, pod = %pod.name_any(), reason = %why, "the pod's recording annotation is not backed by a ProfileRecording; nothing written");
                            metrics.recordings.get_or_create(&ResultLabels { result: "refused" }).inc();
                            continue;
                        }
                        let result = match write_profile(&profiles, &target, &syscalls).await {
                            Ok(true) => "written",
                            Ok(false) => "refused",
                            Err(e) => {
                                tracing::warn!(recording = %target.recording, namespace = %target.namespace, container = %target.container, error = %e, "cannot write the recorded profile");
                                "failed"
                            }
                        };
                        metrics.recordings.get_or_create(&ResultLabels { result }).inc();
                    }
                }
            }
            _ = shutdown.cancelled() => return Ok(()),
            else => return Ok(()),
        }
    }
}

impl State {
    /// Learns the containers of a recorded pod from its status.
    fn index(&mut self, pod: &Pod) {
        let Some(recording) = pod.annotations().get(RECORDING_ANNOTATION) else {
            return;
        };
        let statuses = pod.status.iter().flat_map(|s| {
            s.container_statuses
                .iter()
                .flatten()
                .chain(s.init_container_statuses.iter().flatten())
        });
        for status in statuses {
            let Some(id) = status.container_id.as_deref().map(cgroup::status_container_id) else {
                continue;
            };
            if id.is_empty() || self.containers.contains_key(id) {
                continue;
            }
            let target = Target {
                namespace: pod.namespace().unwrap_or_default(),
                recording: recording.clone(),
                pod_uid: pod.uid().unwrap_or_default(),
                container: status.name.clone(),
            };
            if let Some(early) = self.pending.remove(id) {
                self.seen.entry(target.clone()).or_default().extend(early);
            }
            self.containers.insert(id.to_owned(), target);
        }
    }

    /// Notes one record.
    fn record(&mut self, proc_root: &std::path::Path, r: SeccompRecord) -> Attributed {
        let Some(name) = seccomp::arch_from_audit(r.arch).and_then(|a| seccomp::syscall_name(a, r.syscall))
        else {
            return Attributed::No;
        };
        let Some(container) = self.container_of(proc_root, r.pid) else {
            return Attributed::No;
        };
        if let Some(target) = self.containers.get(&container) {
            self.seen.entry(target.clone()).or_default().insert(name);
            return Attributed::Recorded;
        }
        if self.pending.len() < MAX_PENDING || self.pending.contains_key(&container) {
            self.pending.entry(container).or_default().insert(name);
            return Attributed::Pending;
        }
        Attributed::No
    }

    /// The container a process is in: from the cache when the pid's process started when the
    /// cached one did, else from `/proc/<pid>/cgroup`. Without a readable start time nothing is
    /// cached (a later process with the pid would get this one's container).
    fn container_of(&mut self, proc_root: &std::path::Path, pid: u32) -> Option<String> {
        let dir = proc_root.join(pid.to_string());
        let started = read_start_time(&dir);
        if let Some(started) = started
            && let Some((cached_start, container)) = self.pids.get(&pid)
            && *cached_start == started
        {
            return container.clone();
        }
        self.pids.remove(&pid);
        let file = std::fs::read_to_string(dir.join("cgroup")).ok()?;
        let container = cgroup::container_id(&file).map(str::to_owned);
        // The pid may have been reused while the cgroup file was read: cache only when the
        // start time is the same after it.
        if let Some(started) = started
            && read_start_time(&dir) == Some(started)
        {
            if self.pids.len() >= MAX_PIDS {
                self.pids.clear();
            }
            self.pids.insert(pid, (started, container.clone()));
        }
        container
    }

    /// Takes what a pod's containers recorded, merged per container name.
    fn take(&mut self, pod_uid: &str) -> Vec<(Target, BTreeSet<String>)> {
        self.containers.retain(|_, t| t.pod_uid != pod_uid);
        let keys: Vec<Target> = self
            .seen
            .keys()
            .filter(|t| t.pod_uid == pod_uid)
            .cloned()
            .collect();
        keys.into_iter()
            .filter_map(|t| self.seen.remove(&t).map(|s| (t, s)))
            .filter(|(_, s)| !s.is_empty())
            .collect()
    }
}

fn read_start_time(proc_dir: &std::path::Path) -> Option<u64> {
    cgroup::start_time(&std::fs::read_to_string(proc_dir.join("stat")).ok()?)
}

/// The recorded profile's name: `<namespace>.<recording>.<container>`. Namespace and container
/// names cannot hold a dot, so the three parts are read back unambiguously and two namespaces
/// never compete for one name.
pub fn profile_name(namespace: &str, recording: &str, container: &str) -> String {
    format!("{namespace}.{recording}.{container}")
}

/// Whether the pod's recording annotation is backed: the `ProfileRecording` exists in the pod's
/// namespace, records seccomp through logs, and its selector matches the pod's labels.
/// `Ok(Err(why))` when it is not; `Err` when the API server cannot say.
async fn verify(client: &Client, pod: &Pod, t: &Target) -> Result<Result<(), String>, kube::Error> {
    let api: Api<ProfileRecording> = Api::namespaced(client.clone(), &t.namespace);
    let Some(recording) = api.get_opt(&t.recording).await? else {
        return Ok(Err(format!(
            "no ProfileRecording {}/{}",
            t.namespace, t.recording
        )));
    };
    Ok(check_recording(&recording, pod))
}

/// The decision of [`verify`], free of I/O.
fn check_recording(recording: &ProfileRecording, pod: &Pod) -> Result<(), String> {
    if recording.spec.kind != ProfileKind::SeccompProfile || recording.spec.recorder != Recorder::Logs {
        return Err("the ProfileRecording does not record seccomp profiles from logs".into());
    }
    if !selector_matches(&recording.spec.pod_selector, pod.labels()) {
        return Err("the ProfileRecording does not select this pod".into());
    }
    Ok(())
}

/// The profile allowing `syscalls`, everything else refused with EPERM.
pub fn recorded_spec(syscalls: &BTreeSet<String>) -> SeccompProfileSpec {
    SeccompProfileSpec {
        default_action: "SCMP_ACT_ERRNO".into(),
        architectures: vec![seccomp::native_arch().into()],
        syscalls: vec![SyscallRule {
            names: syscalls.iter().cloned().collect(),
            action: "SCMP_ACT_ALLOW".into(),
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// Creates the profile or adds the new syscalls to the one this recording wrote before.
/// `Ok(false)`: a profile of that name exists and is not this recording's; it is left alone.
async fn write_profile(
    api: &Api<SeccompProfile>,
    t: &Target,
    syscalls: &BTreeSet<String>,
) -> anyhow::Result<bool> {
    let name = profile_name(&t.namespace, &t.recording, &t.container);
    let source = format!("{}/{}", t.namespace, t.recording);
    for _ in 0..5 {
        match api.get_opt(&name).await? {
            None => {
                let written = api
                    .list(&Default::default())
                    .await?
                    .items
                    .iter()
                    .filter(|p| p.annotations().get(RECORDED_FROM) == Some(&source))
                    .count();
                if written >= MAX_PROFILES_PER_RECORDING {
                    tracing::warn!(profile = %name, recording = %source, limit = MAX_PROFILES_PER_RECORDING, "the recording has written as many profiles as it may; not written");
                    return Ok(false);
                }
                let profile = SeccompProfile {
                    metadata: ObjectMeta {
                        name: Some(name.clone()),
                        labels: Some(ownership::managed_labels()),
                        annotations: Some([(RECORDED_FROM.to_owned(), source.clone())].into()),
                        ..Default::default()
                    },
                    spec: recorded_spec(syscalls),
                    status: None,
                };
                match api.create(&PostParams::default(), &profile).await {
                    Ok(_) => {
                        tracing::info!(profile = %name, recording = %source, syscalls = syscalls.len(), "recorded profile written");
                        return Ok(true);
                    }
                    Err(kube::Error::Api(e)) if e.code == 409 => continue,
                    Err(e) => return Err(e.into()),
                }
            }
            Some(mut existing) => {
                if existing.annotations().get(RECORDED_FROM) != Some(&source) {
                    tracing::warn!(profile = %name, recording = %source, "a SeccompProfile of the recorded profile's name exists and was not written by this recording; left unchanged");
                    return Ok(false);
                }
                let mut all: BTreeSet<String> = existing
                    .spec
                    .syscalls
                    .iter()
                    .filter(|r| r.action == "SCMP_ACT_ALLOW")
                    .flat_map(|r| r.names.iter().cloned())
                    .collect();
                let before = all.len();
                all.extend(syscalls.iter().cloned());
                if all.len() == before {
                    return Ok(true);
                }
                existing.spec = recorded_spec(&all);
                match api.replace(&name, &PostParams::default(), &existing).await {
                    Ok(_) => {
                        tracing::info!(profile = %name, recording = %source, syscalls = all.len(), "recorded profile extended");
                        return Ok(true);
                    }
                    Err(kube::Error::Api(e)) if e.code == 409 => continue,
                    Err(e) => return Err(e.into()),
                }
            }
        }
    }
    anyhow::bail!("SeccompProfile {name} kept changing; gave up after 5 attempts")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorded_names_carry_the_namespace_and_cannot_collide() {
        assert_eq!(profile_name("shop", "trace", "app"), "shop.trace.app");
        // `a-b` + `c` and `a` + `b-c` would both have been `a-b-c-x` without the dots.
        assert_ne!(profile_name("a-b", "c", "x"), profile_name("a", "b-c", "x"));
    }

    #[test]
    fn only_a_recording_that_selects_the_pod_backs_its_annotation() {
        let recording: ProfileRecording = serde_json::from_value(serde_json::json!({
            "apiVersion": "profiles.phylax.dev/v1alpha1", "kind": "ProfileRecording",
            "metadata": {"name": "rec", "namespace": "ns"},
            "spec": {"kind": "SeccompProfile", "recorder": "logs", "podSelector": {"matchLabels": {"app": "web"}}},
        }))
        .unwrap();
        let labelled = |app: &str| -> Pod {
            serde_json::from_value(serde_json::json!({"metadata": {"name": "p", "labels": {"app": app}}}))
                .unwrap()
        };
        assert_eq!(check_recording(&recording, &labelled("web")), Ok(()));
        assert!(
            check_recording(&recording, &labelled("db"))
                .unwrap_err()
                .contains("does not select")
        );
    }

    const ID: &str = "4f2a9c1e0b7d4e3f8a6c5b2d1e0f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f";

    fn pod(uid: &str, container_id: Option<&str>) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "ns", "uid": uid,
                "annotations": {RECORDING_ANNOTATION: "rec"}},
            "status": {"containerStatuses": [{"name": "app", "image": "x", "imageID": "", "ready": true,
                "restartCount": 0, "containerID": container_id.map(|id| format!("containerd://{id}"))}]}
        }))
        .unwrap()
    }

    #[test]
    fn a_reused_pid_is_not_taken_for_the_process_before_it() {
        let proc_root = tempfile::tempdir().unwrap();
        let dir = proc_root.path().join("700");
        std::fs::create_dir_all(&dir).unwrap();
        let in_container = format!("0::/kubepods.slice/cri-containerd-{ID}.scope\n");
        let outside = "0::/user.slice/user-0.slice/session-1.scope\n";
        let process = |start: u64, cgroup: &str| {
            let stat = format!("700 (app) S 1 700 700 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 {start} 0 0\n");
            std::fs::write(dir.join("stat"), stat).unwrap();
            std::fs::write(dir.join("cgroup"), cgroup).unwrap();
        };
        let mut state = State::default();
        state.index(&pod("u1", Some(ID)));
        let rec = SeccompRecord {
            pid: 700,
            arch: 0xc000_003e,
            syscall: 0,
        };
        process(1000, &in_container);
        assert_eq!(state.record(proc_root.path(), rec), Attributed::Recorded);
        // The same process: the cache answers, the cgroup file is not read again.
        std::fs::write(dir.join("cgroup"), outside).unwrap();
        assert_eq!(state.record(proc_root.path(), rec), Attributed::Recorded);
        // The pid now names a later process, outside any container: not the recorded one's.
        process(2000, outside);
        assert_eq!(state.record(proc_root.path(), rec), Attributed::No);
        process(3000, &in_container);
        assert_eq!(state.record(proc_root.path(), rec), Attributed::Recorded);
        // Without a start time nothing is cached: every record reads the cgroup file.
        std::fs::remove_file(dir.join("stat")).unwrap();
        std::fs::write(dir.join("cgroup"), outside).unwrap();
        assert_eq!(state.record(proc_root.path(), rec), Attributed::No);
        std::fs::write(dir.join("cgroup"), &in_container).unwrap();
        assert_eq!(state.record(proc_root.path(), rec), Attributed::Recorded);
        std::fs::write(dir.join("cgroup"), outside).unwrap();
        assert_eq!(state.record(proc_root.path(), rec), Attributed::No);
    }

    #[test]
    fn records_are_attributed_to_their_container_even_before_the_status_names_it() {
        let proc_root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(proc_root.path().join("700")).unwrap();
        std::fs::write(
            proc_root.path().join("700/cgroup"),
            format!("0::/kubepods.slice/cri-containerd-{ID}.scope\n"),
        )
        .unwrap();
        let mut state = State::default();
        let rec = |syscall| SeccompRecord {
            pid: 700,
            arch: 0xc000_003e,
            syscall,
        };
        // Before the pod's status has the container ID: kept pending.
        assert_eq!(state.record(proc_root.path(), rec(0)), Attributed::Pending);
        state.index(&pod("u1", Some(ID)));
        assert_eq!(state.record(proc_root.path(), rec(1)), Attributed::Recorded);
        assert_eq!(state.record(proc_root.path(), rec(1)), Attributed::Recorded);
        // A process outside any container, an unknown architecture.
        let outside = SeccompRecord {
            pid: 1,
            arch: 0xc000_003e,
            syscall: 2,
        };
        assert_eq!(state.record(proc_root.path(), outside), Attributed::No);
        let odd = SeccompRecord {
            pid: 700,
            arch: 7,
            syscall: 2,
        };
        assert_eq!(state.record(proc_root.path(), odd), Attributed::No);
        let taken = state.take("u1");
        assert_eq!(taken.len(), 1);
        assert_eq!(taken[0].0.container, "app");
        assert_eq!(
            taken[0].1.iter().map(String::as_str).collect::<Vec<_>>(),
            ["read", "write"]
        );
        assert!(state.take("u1").is_empty());
        let spec = recorded_spec(&taken[0].1);
        let resolved = seccomp::resolve("r", |_| Some(&spec)).unwrap();
        seccomp::compile(&resolved).unwrap();
    }
}
