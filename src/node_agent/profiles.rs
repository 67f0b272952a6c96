//! The node agent's two controllers: `SeccompProfile`s become files in the kubelet's seccomp
//! directory, `AppArmorProfile`s are loaded with apparmor_parser. Each adds this node's finalizer
//! before installing, so a deleted profile waits until this node has removed it, and this node
//! removes it only once none of its pods uses it.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::core::error_boundary::DeserializeGuard;
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Api, Client, Resource, ResourceExt};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};
use tokio_util::sync::CancellationToken;

use super::apparmor::{self, Support};
use super::install::{ProfileDir, Written};
use super::metrics::ProfileMetrics;
use super::report::Reports;
use super::seccomp;
use crate::api::profiles::{
    AppArmorProfile, NodeReport, NodeState, ProfileKind, SeccompProfile, node_finalizer, profiles_used,
};
use crate::runtime::admin::ReadyFlag;
use crate::runtime::controller::{ErrorPolicy, ReconcileError, log_controller_error};
use crate::runtime::finalizers;
use crate::runtime::reflect::wait_listed;

type GuardedSeccomp = DeserializeGuard<SeccompProfile>;
type GuardedAppArmor = DeserializeGuard<AppArmorProfile>;

/// What both controllers share.
pub struct Shared {
    pub client: Client,
    pub node: String,
    pub pods: Store<Pod>,
    pub dir: ProfileDir,
    pub apparmor: Support,
    pub metrics: ProfileMetrics,
    pub reports: Reports,
    /// API calls in flight (`--profile-concurrency`). Files are written without waiting for one:
    /// a burst of profiles is installed at disk speed while the reports follow at API speed.
    pub api_slots: tokio::sync::Semaphore,
    /// Both controllers' retries (keyed by each profile's uid).
    pub policy: ErrorPolicy,
}

#[derive(Debug, thiserror::Error)]
enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("{0}")]
    Io(String),
}

impl ReconcileError for Error {
    fn label(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::Io(_) => "io",
        }
    }
}

impl Shared {
    /// Pods on this node that use the profile and have not ended, `namespace/name`, sorted.
    fn users(&self, kind: ProfileKind, name: &str) -> Vec<String> {
        let mut users: Vec<String> = self
            .pods
            .state()
            .iter()
            .filter(|p| {
                !matches!(
                    p.status.as_ref().and_then(|s| s.phase.as_deref()),
                    Some("Succeeded" | "Failed")
                )
            })
            .filter(|p| {
                let (seccomp, apparmor) = profiles_used(p.spec.as_ref(), p.metadata.annotations.as_ref());
                match kind {
                    ProfileKind::SeccompProfile => seccomp.iter().any(|n| n == name),
                    ProfileKind::AppArmorProfile => apparmor.iter().any(|n| n == name),
                }
            })
            .map(|p| format!("{}/{}", p.namespace().unwrap_or_default(), p.name_any()))
            .collect();
        users.sort();
        users
    }

    /// Reports an object that does not match its kind's schema.
    async fn report_invalid<K: Resource>(
        &self,
        kind: ProfileKind,
        obj: &K,
        error: &str,
        users: Vec<String>,
    ) -> Result<Action, Error> {
        self.metrics.error(kind);
        let why = format!("not a valid {}: {error}", kind.as_str());
        self.report(kind, obj, NodeState::Error, Some(why), None, users)
            .await?;
        Ok(Action::await_change())
    }

    /// This node is done with a deleted profile: its report goes, then its finalizer.
    async fn release<K>(
        &self,
        kind: ProfileKind,
        api: &Api<K>,
        obj: &K,
        finalizer: &str,
    ) -> Result<Action, Error>
    where
        K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    {
        let _slot = self.api_slots.acquire().await.ok();
        self.reports.forget(kind, &obj.name_any()).await?;
        finalizers::remove(api, obj, finalizer).await?;
        Ok(Action::await_change())
    }

    /// Writes this node's report on the profile (nothing when unchanged).
    async fn report<K: Resource>(
        &self,
        kind: ProfileKind,
        obj: &K,
        state: NodeState,
        message: Option<String>,
        path: Option<String>,
        pods: Vec<String>,
    ) -> Result<(), Error> {
        let _slot = self.api_slots.acquire().await.ok();
        let report = NodeReport {
            state,
            message,
            observed_generation: obj.meta().generation,
            path,
            pods,
        };
        self.reports.write(kind, obj.meta(), report).await?;
        Ok(())
    }
}

struct SeccompCtx {
    shared: Arc<Shared>,
    profiles: Store<GuardedSeccomp>,
    trigger: UnboundedSender<String>,
    /// What each profile last resolved to here (file bytes or error), to tell a change apart.
    outcome: Mutex<HashMap<String, Result<Vec<u8>, String>>>,
}

impl SeccompCtx {
    /// Asks for the profiles built on `base` to be handled again.
    fn trigger_children(&self, base: &str) {
        for p in self.profiles.state() {
            if let Ok(child) = &p.0
                && child.spec.base_profile_name.as_deref() == Some(base)
            {
                let _ = self.trigger.send(child.name_any());
            }
        }
    }

    /// Records the outcome; `true` when it changed (then the children are handled again too).
    fn changed(&self, name: &str, outcome: Option<Result<Vec<u8>, String>>) -> bool {
        let mut map = self.outcome.lock().unwrap_or_else(|p| p.into_inner());
        let before = match outcome {
            Some(o) => map.insert(name.to_owned(), o.clone()).map(|b| b == o),
            None => map.remove(name).map(|_| false),
        };
        let changed = before != Some(true);
        let count = map.values().filter(|o| o.is_ok()).count();
        self.shared
            .metrics
            .set_installed(ProfileKind::SeccompProfile, count);
        changed
    }
}

fn stream_of(rx: UnboundedReceiver<String>) -> impl futures::Stream<Item = String> + Send {
    futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|n| (n, rx)) })
}

pub async fn run_seccomp(
    shared: Arc<Shared>,
    trigger: UnboundedSender<String>,
    triggers: UnboundedReceiver<String>,
    synced: ReadyFlag,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let api = Api::<GuardedSeccomp>::all(shared.client.clone());
    // No limit on reconciles: each one's local work is short, and its API calls wait for
    // `Shared::api_slots`.
    let controller = Controller::new(api, watcher::Config::default());
    let profiles = controller.store();
    let ctx = Arc::new(SeccompCtx {
        shared: shared.clone(),
        profiles: profiles.clone(),
        trigger,
        outcome: Mutex::new(HashMap::new()),
    });
    tokio::spawn(converge(shared.clone(), profiles, synced));
    controller
        .reconcile_on(stream_of(triggers).map(|n| ObjectRef::new(&n)))
        .graceful_shutdown_on(shutdown.cancelled_owned())
        .run(
            reconcile_seccomp,
            |obj, e, ctx| error_policy(obj, e, &ctx.shared),
            ctx,
        )
        .for_each(log_controller_error("node-seccomp"))
        .await;
    Ok(())
}

/// After a restart: once both the profiles and this node's pods are known, removes the files of
/// profiles that no longer exist (and that no pod here uses). Missing or stale files are rewritten
/// by the reconciles every profile gets at startup.
async fn converge(shared: Arc<Shared>, profiles: Store<GuardedSeccomp>, synced: ReadyFlag) {
    if !wait_listed(&profiles).await || !wait_listed(&shared.pods).await {
        return;
    }
    tracing::debug!(pods = shared.pods.len(), "this node's pods listed");
    match shared.dir.installed() {
        Ok(names) => {
            for name in names {
                if profiles.get(&ObjectRef::new(&name)).is_some() {
                    continue;
                }
                let users = shared.users(ProfileKind::SeccompProfile, &name);
                if !users.is_empty() {
                    tracing::warn!(profile = %name, pods = ?users, "keeping the file of a deleted profile while pods on this node use it");
                    continue;
                }
                match shared.dir.remove(&name) {
                    Ok(_) => {
                        shared.metrics.removed(ProfileKind::SeccompProfile);
                        tracing::info!(profile = %name, "removed the file of a profile deleted while the agent was away");
                    }
                    Err(e) => tracing::warn!(profile = %name, error = %e, "cannot remove a stale profile"),
                }
            }
        }
        Err(e) => {
            tracing::warn!(dir = %shared.dir.dir().display(), error = %e, "cannot list the installed profiles")
        }
    }
    synced.set(true);
}

async fn reconcile_seccomp(obj: Arc<GuardedSeccomp>, ctx: Arc<SeccompCtx>) -> Result<Action, Error> {
    let result = install_seccomp(&obj, &ctx).await;
    ctx.shared.policy.track(obj.as_ref(), result)
}

/// Installs, keeps or removes one seccomp profile's file on this node and reports it.
async fn install_seccomp(obj: &Arc<GuardedSeccomp>, ctx: &SeccompCtx) -> Result<Action, Error> {
    let s = &ctx.shared;
    let kind = ProfileKind::SeccompProfile;
    let name = obj.name_any();
    let started = Instant::now();
    let api = Api::<GuardedSeccomp>::all(s.client.clone());
    let finalizer = node_finalizer(&s.node);
    let users = s.users(kind, &name);

    if obj.meta().deletion_timestamp.is_some() {
        if !users.is_empty() {
            let why = format!(
                "deleted; the file stays until these pods on node {} end: {}",
                s.node,
                users.join(", ")
            );
            s.report(kind, obj.as_ref(), NodeState::Terminating, Some(why), None, users)
                .await?;
            return Ok(Action::await_change());
        }
        if s.dir.remove(&name).map_err(io)? {
            s.metrics.removed(kind);
            tracing::info!(profile = %name, "removed a deleted profile");
        }
        if ctx.changed(&name, None) {
            ctx.trigger_children(&name);
        }
        return s.release(kind, &api, obj.as_ref(), &finalizer).await;
    }

    let profile = match &obj.0 {
        Ok(p) => p,
        Err(invalid) => return s.report_invalid(kind, obj.as_ref(), &invalid.error, users).await,
    };

    if !profile.spec.enabled() {
        let message = if users.is_empty() {
            if s.dir.remove(&name).map_err(io)? {
                s.metrics.removed(kind);
            }
            ctx.changed(&name, None);
            None
        } else {
            Some(format!(
                "disabled, but kept installed while pods use it: {}",
                users.join(", ")
            ))
        };
        s.report(kind, obj.as_ref(), NodeState::Disabled, message, None, users)
            .await?;
        return Ok(Action::await_change());
    }

    // The chain of bases, from the store (at most MAX_DEPTH + 2 lookups; the resolver reports
    // cycles and depth).
    let mut chain: HashMap<String, Arc<GuardedSeccomp>> = HashMap::new();
    chain.insert(name.clone(), obj.clone());
    let mut next = profile.spec.base_profile_name.clone();
    while let Some(base) = next.take() {
        if chain.contains_key(&base) || chain.len() > seccomp::MAX_DEPTH + 1 {
            break;
        }
        if let Some(found) = ctx.profiles.get(&ObjectRef::new(&base)) {
            next = found
                .0
                .as_ref()
                .ok()
                .and_then(|p| p.spec.base_profile_name.clone());
            chain.insert(base, found);
        }
    }
    let built = seccomp::resolve(&name, |n| {
        chain.get(n).and_then(|o| o.0.as_ref().ok()).map(|p| &p.spec)
    })
    .and_then(|resolved| {
        // The filter is dropped here: it only proves the profile compiles on this node.
        seccomp::compile(&resolved).map(|_| resolved.to_json())
    })
    .map_err(|e| e.to_string());
    let bytes = match built {
        Ok(bytes) => bytes,
        Err(why) => {
            s.metrics.error(kind);
            if ctx.changed(&name, Some(Err(why.clone()))) {
                tracing::warn!(profile = %name, error = %why, "profile refused; its file is not written");
                ctx.trigger_children(&name);
            }
            // A profile installed before keeps its last good file: pods using it still start.
            s.report(kind, obj.as_ref(), NodeState::Error, Some(why), None, users)
                .await?;
            return Ok(Action::await_change());
        }
    };

    // The file first, then this node's finalizer: a deletion that comes in between makes adding
    // the finalizer fail, and the file is removed here (or by the deletion's own reconcile).
    let written = s.dir.write(&name, &bytes).map_err(io)?;
    if written != Written::Unchanged {
        s.metrics.installed(kind, started.elapsed().as_secs_f64());
        tracing::info!(profile = %name, ?written, "installed");
    }
    if ctx.changed(&name, Some(Ok(bytes))) {
        ctx.trigger_children(&name);
    }
    let added = {
        let _slot = s.api_slots.acquire().await.ok();
        finalizers::add(&api, obj.as_ref(), &finalizer).await
    };
    match added {
        Ok(()) => {}
        // Gone before this node could hold it: no reconcile will come for it again.
        Err(kube::Error::Api(e)) if e.code == 404 => {
            if s.users(kind, &name).is_empty() && s.dir.remove(&name).map_err(io)? {
                s.metrics.removed(kind);
            }
            ctx.changed(&name, None);
            return Ok(Action::await_change());
        }
        Err(e) => return Err(e.into()),
    }
    let path = s.dir.path_of(&name).display().to_string();
    s.report(kind, obj.as_ref(), NodeState::Installed, None, Some(path), users)
        .await?;
    Ok(Action::await_change())
}

fn io(e: std::io::Error) -> Error {
    Error::Io(e.to_string())
}

fn error_policy<K: Resource>(obj: Arc<K>, error: &Error, shared: &Shared) -> Action {
    shared.policy.failed(obj.as_ref(), error)
}

struct AppArmorCtx {
    shared: Arc<Shared>,
    installed: Mutex<BTreeSet<String>>,
}

pub async fn run_apparmor(
    shared: Arc<Shared>,
    triggers: UnboundedReceiver<String>,
    concurrency: u16,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let api = Api::<GuardedAppArmor>::all(shared.client.clone());
    let ctx = Arc::new(AppArmorCtx {
        shared,
        installed: Mutex::new(BTreeSet::new()),
    });
    Controller::new(api, watcher::Config::default())
        .with_config(controller::Config::default().concurrency(concurrency))
        .reconcile_on(stream_of(triggers).map(|n| ObjectRef::new(&n)))
        .graceful_shutdown_on(shutdown.cancelled_owned())
        .run(
            reconcile_apparmor,
            |obj, e, ctx| error_policy(obj, e, &ctx.shared),
            ctx,
        )
        .for_each(log_controller_error("node-apparmor"))
        .await;
    Ok(())
}

async fn reconcile_apparmor(obj: Arc<GuardedAppArmor>, ctx: Arc<AppArmorCtx>) -> Result<Action, Error> {
    let result = load_apparmor(&obj, &ctx).await;
    ctx.shared.policy.track(obj.as_ref(), result)
}

/// Loads, keeps or unloads one AppArmor profile on this node and reports it.
async fn load_apparmor(obj: &Arc<GuardedAppArmor>, ctx: &AppArmorCtx) -> Result<Action, Error> {
    let s = &ctx.shared;
    let kind = ProfileKind::AppArmorProfile;
    let name = obj.name_any();
    let api = Api::<GuardedAppArmor>::all(s.client.clone());
    let finalizer = node_finalizer(&s.node);
    let users = s.users(kind, &name);
    let (parser, dir) = match &s.apparmor {
        Support::Available { parser, dir } => (parser.clone(), dir.clone()),
        Support::Unsupported(why) => {
            if obj.meta().deletion_timestamp.is_some() {
                s.reports.forget(kind, &name).await?;
                finalizers::remove(&api, obj.as_ref(), &finalizer).await?;
            } else {
                let why = format!("unsupported on this node: {why}");
                s.report(kind, obj.as_ref(), NodeState::Unsupported, Some(why), None, users)
                    .await?;
            }
            return Ok(Action::await_change());
        }
    };
    let set_installed = |present: bool| {
        let mut set = ctx.installed.lock().unwrap_or_else(|p| p.into_inner());
        if present {
            set.insert(name.clone());
        } else {
            set.remove(&name);
        }
        s.metrics.set_installed(kind, set.len());
    };
    let unload = {
        let (parser, dir, name) = (parser.clone(), dir.clone(), name.clone());
        move || tokio::task::spawn_blocking(move || apparmor::unload(&parser, &dir, &name))
    };

    if obj.meta().deletion_timestamp.is_some() {
        if !users.is_empty() {
            let why = format!("deleted; stays loaded until these pods end: {}", users.join(", "));
            s.report(kind, obj.as_ref(), NodeState::Terminating, Some(why), None, users)
                .await?;
            return Ok(Action::await_change());
        }
        unload()
            .await
            .map_err(|e| Error::Io(e.to_string()))?
            .map_err(Error::Io)?;
        s.metrics.removed(kind);
        set_installed(false);
        return s.release(kind, &api, obj.as_ref(), &finalizer).await;
    }
    let profile = match &obj.0 {
        Ok(p) => p,
        Err(invalid) => return s.report_invalid(kind, obj.as_ref(), &invalid.error, users).await,
    };
    if !profile.spec.enabled() {
        if users.is_empty() {
            unload()
                .await
                .map_err(|e| Error::Io(e.to_string()))?
                .map_err(Error::Io)?;
            set_installed(false);
        }
        s.report(kind, obj.as_ref(), NodeState::Disabled, None, None, users)
            .await?;
        return Ok(Action::await_change());
    }
    // The text check before the finalizer: a refused policy is never loaded, so it needs none.
    // `load` repeats it and asks the parser itself which profiles the policy defines.
    if let Err(why) = apparmor::check_for_object(&name, &profile.spec.policy) {
        s.metrics.error(kind);
        s.report(kind, obj.as_ref(), NodeState::Error, Some(why), None, users)
            .await?;
        return Ok(Action::await_change());
    }
    let started = Instant::now();
    finalizers::add(&api, obj.as_ref(), &finalizer).await?;
    let policy = profile.spec.policy.clone();
    let loaded = {
        let (parser, dir, name) = (parser.clone(), dir.clone(), name.clone());
        tokio::task::spawn_blocking(move || apparmor::load(&parser, &dir, &name, &policy))
            .await
            .map_err(|e| Error::Io(e.to_string()))?
    };
    match loaded {
        Ok(()) => {
            s.metrics.installed(kind, started.elapsed().as_secs_f64());
            set_installed(true);
            let path = dir.join(&name).display().to_string();
            s.report(kind, obj.as_ref(), NodeState::Installed, None, Some(path), users)
                .await?;
        }
        Err(why) => {
            s.metrics.error(kind);
            s.report(kind, obj.as_ref(), NodeState::Error, Some(why), None, users)
                .await?;
        }
    }
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::api_mock::{self, ApiServer};
    use crate::runtime::metrics::Metrics;
    use http::Method;
    use kube::runtime::reflector;
    use serde_json::json;

    const PROFILE_URL: &str = "/apis/profiles.phylax.dev/v1alpha1/seccompprofiles/web";
    const REPORT_URL: &str = "/apis/profiles.phylax.dev/v1alpha1/profilenodestatuses/seccomp.web.node-1";

    fn ctx(client: Client, root: &std::path::Path) -> SeccompCtx {
        let metrics = Metrics::new("test");
        let dir = ProfileDir::new(root);
        dir.prepare().unwrap();
        let shared = Arc::new(Shared {
            client: client.clone(),
            node: "node-1".into(),
            pods: reflector::store().0,
            dir,
            apparmor: Support::Unsupported("not in this test".into()),
            metrics: ProfileMetrics::register(&metrics, "node-1"),
            reports: Reports::new(client, "node-1".into()),
            api_slots: tokio::sync::Semaphore::new(4),
            policy: ErrorPolicy::standard("node-profiles", &metrics),
        });
        SeccompCtx {
            shared,
            profiles: reflector::store().0,
            trigger: tokio::sync::mpsc::unbounded_channel().0,
            outcome: Mutex::new(HashMap::new()),
        }
    }

    fn profile(spec: serde_json::Value) -> Arc<GuardedSeccomp> {
        Arc::new(
            serde_json::from_value(json!({
                "apiVersion": "profiles.phylax.dev/v1alpha1", "kind": "SeccompProfile",
                "metadata": {"name": "web", "uid": "u-1", "generation": 2, "resourceVersion": "10"},
                "spec": spec,
            }))
            .unwrap(),
        )
    }

    /// Answers the report's create and its status; returns the status sent.
    async fn report(server: &mut ApiServer) -> serde_json::Value {
        let create = server.next().await;
        create.expect(Method::PATCH, REPORT_URL);
        assert_eq!(create.query("fieldManager").as_deref(), Some("phylax-node-agent"));
        assert_eq!(create.body["spec"]["nodeName"], "node-1");
        assert_eq!(create.body["metadata"]["ownerReferences"][0]["uid"], "u-1");
        let mut object = create.body.clone();
        create.ok(object.clone());
        let status = server.next().await;
        status.expect(Method::PATCH, &format!("{REPORT_URL}/status"));
        let sent = status.body["status"].clone();
        object["status"] = sent.clone();
        status.ok(object);
        sent
    }

    #[tokio::test]
    async fn a_valid_profile_is_written_then_held_by_this_nodes_finalizer_and_reported() {
        let root = tempfile::tempdir().unwrap();
        let (client, mut server) = api_mock::client();
        let ctx = ctx(client, root.path());
        let obj = profile(json!({
            "defaultAction": "SCMP_ACT_ERRNO",
            "syscalls": [{"names": ["read", "write", "exit_group"], "action": "SCMP_ACT_ALLOW"}],
        }));
        let script = tokio::spawn(async move {
            let finalizer = server.next().await;
            finalizer.expect(Method::PATCH, PROFILE_URL);
            assert_eq!(
                finalizer.body[1],
                json!({"op": "add", "path": "/metadata/finalizers", "value": ["node.profiles.phylax.dev/node-1"]})
            );
            finalizer.ok(json!({
                "apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
                "metadata": {"name": "web", "finalizers": ["node.profiles.phylax.dev/node-1"]},
            }));
            let status = report(&mut server).await;
            server.no_more_calls().await;
            status
        });
        let action = install_seccomp(&obj, &ctx).await.expect("reconcile");
        assert_eq!(action, Action::await_change());
        let status = script.await.unwrap();
        assert_eq!(status["state"], "Installed");
        assert_eq!(status["observedGeneration"], 2);
        let path = ctx.shared.dir.path_of("web");
        assert_eq!(status["path"], path.display().to_string());
        let written: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(written["defaultAction"], "SCMP_ACT_ERRNO");
        assert_eq!(written["syscalls"][0]["names"][1], "write");
    }

    #[tokio::test]
    async fn a_profile_that_does_not_compile_is_reported_and_never_written() {
        let root = tempfile::tempdir().unwrap();
        let (client, mut server) = api_mock::client();
        let ctx = ctx(client, root.path());
        let obj = profile(json!({
            "defaultAction": "SCMP_ACT_ERRNO",
            "syscalls": [{"names": ["bogus_call"], "action": "SCMP_ACT_ALLOW"}],
        }));
        let script = tokio::spawn(async move {
            // No finalizer: nothing was installed that would need removing.
            let status = report(&mut server).await;
            server.no_more_calls().await;
            status
        });
        install_seccomp(&obj, &ctx).await.expect("reconcile");
        let status = script.await.unwrap();
        assert_eq!(status["state"], "Error");
        assert!(
            status["message"]
                .as_str()
                .unwrap_or_default()
                .contains("bogus_call"),
            "{status}"
        );
        assert!(!ctx.shared.dir.path_of("web").exists());
    }

    #[tokio::test]
    async fn an_api_failure_is_an_error_for_the_policy_and_the_file_stays() {
        let root = tempfile::tempdir().unwrap();
        let (client, mut server) = api_mock::client();
        let ctx = ctx(client, root.path());
        let obj = profile(json!({"defaultAction": "SCMP_ACT_ALLOW"}));
        let script = tokio::spawn(async move {
            server.next().await.fail(503, "ServiceUnavailable");
        });
        let err = install_seccomp(&obj, &ctx)
            .await
            .expect_err("a 503 was taken for success");
        script.await.unwrap();
        assert_eq!(err.label(), "kube");
        // Written before the API call: pods can use it while the API server recovers.
        assert!(ctx.shared.dir.path_of("web").exists());
    }
}
