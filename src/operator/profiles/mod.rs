//! The profiles controller (leader only): keeps each `SeccompProfile`'s and `AppArmorProfile`'s
//! status from its nodes' `ProfileNodeStatus` reports, and cleans up after nodes that are gone —
//! their finalizers on profiles (else a deleted profile would wait forever) and their reports.

pub mod aggregate;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::core::PartialObjectMeta;
use kube::core::error_boundary::DeserializeGuard;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::api::profiles::{
    AppArmorProfile, NODE_FINALIZER_PREFIX, ProfileKind, ProfileNodeStatus, ProfileStatus, SeccompProfile,
    node_finalizer, seccomp_localhost_profile,
};
use crate::runtime::finalizers;
use crate::runtime::kube::{log_controller_error, wait_listed};

const FIELD_MANAGER: &str = "phylax-operator";

#[derive(Debug, thiserror::Error)]
enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
}

struct Ctx {
    client: Client,
    reports: Store<ProfileNodeStatus>,
    nodes: Store<PartialObjectMeta<Node>>,
    /// Both stores have listed once: before that, a missing node is not known to be gone.
    synced: AtomicBool,
}

impl Ctx {
    fn existing_nodes(&self) -> BTreeSet<String> {
        self.nodes.state().iter().map(|n| n.name_any()).collect()
    }
}

pub async fn run(client: Client, term: CancellationToken) -> anyhow::Result<()> {
    let (reports, reports_writer) = reflector::store::<ProfileNodeStatus>();
    let (nodes, nodes_writer) = reflector::store::<PartialObjectMeta<Node>>();
    let (seccomp_tx, seccomp_rx) = mpsc::unbounded_channel::<String>();
    let (apparmor_tx, apparmor_rx) = mpsc::unbounded_channel::<String>();
    let ctx = Arc::new(Ctx {
        client: client.clone(),
        reports: reports.clone(),
        nodes: nodes.clone(),
        synced: AtomicBool::new(false),
    });

    // A report changed: its profile's status may change.
    let report_stream = reflector::reflector(
        reports_writer,
        watcher(
            Api::<ProfileNodeStatus>::all(client.clone()),
            watcher::Config::default(),
        ),
    )
    .default_backoff()
    .touched_objects();
    let to_profiles = {
        let (seccomp_tx, apparmor_tx) = (seccomp_tx.clone(), apparmor_tx.clone());
        async move {
            let mut stream = std::pin::pin!(report_stream);
            while let Some(item) = stream.next().await {
                match item {
                    Ok(r) => {
                        let tx = match r.spec.profile_kind {
                            ProfileKind::SeccompProfile => &seccomp_tx,
                            ProfileKind::AppArmorProfile => &apparmor_tx,
                        };
                        let _ = tx.send(r.spec.profile_name.clone());
                    }
                    Err(e) => tracing::warn!(error = %e, "watching ProfileNodeStatuses failed; retrying"),
                }
            }
        }
    };
    // A node went away: every profile may hold its finalizer.
    let node_stream = reflector::reflector(
        nodes_writer,
        watcher(
            Api::<PartialObjectMeta<Node>>::all(client.clone()),
            watcher::Config::default(),
        ),
    )
    .default_backoff()
    .touched_objects();
    let on_nodes = {
        let (seccomp_tx, apparmor_tx, nodes) = (seccomp_tx.clone(), apparmor_tx.clone(), nodes.clone());
        async move {
            let mut stream = std::pin::pin!(node_stream);
            while let Some(item) = stream.next().await {
                match item {
                    Ok(node) if nodes.get(&ObjectRef::from_obj(&node)).is_none() => {
                        tracing::info!(node = %node.name_any(), "node deleted: releasing its profiles");
                        let _ = seccomp_tx.send(String::new());
                        let _ = apparmor_tx.send(String::new());
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "watching Nodes failed; retrying"),
                }
            }
        }
    };
    let ready = {
        let ctx = ctx.clone();
        async move {
            if wait_listed(&ctx.reports).await && wait_listed(&ctx.nodes).await {
                ctx.synced.store(true, Ordering::SeqCst);
                // Reports of nodes that vanished while no operator ran are pruned by the reconciles.
                let _ = seccomp_tx.send(String::new());
                let _ = apparmor_tx.send(String::new());
            }
            futures::future::pending::<()>().await
        }
    };

    let seccomp = controller::<SeccompProfile>(ctx.clone(), seccomp_rx, term.clone());
    let apparmor = controller::<AppArmorProfile>(ctx.clone(), apparmor_rx, term.clone());
    tokio::select! {
        _ = to_profiles => {}
        _ = on_nodes => {}
        _ = ready => {}
        _ = futures::future::join(seccomp, apparmor) => {}
        _ = term.cancelled() => {}
    }
    Ok(())
}

/// What the controller needs of a profile kind.
trait Profile:
    Resource<DynamicType = (), Scope = kube::core::ClusterResourceScope>
    + Clone
    + std::fmt::Debug
    + serde::de::DeserializeOwned
    + Send
    + Sync
    + 'static
{
    const KIND: ProfileKind;
    fn enabled(&self) -> bool;
    fn status(&self) -> Option<&ProfileStatus>;
    fn localhost_profile(name: &str) -> String;
}

impl Profile for SeccompProfile {
    const KIND: ProfileKind = ProfileKind::SeccompProfile;
    fn enabled(&self) -> bool {
        self.spec.enabled()
    }
    fn status(&self) -> Option<&ProfileStatus> {
        self.status.as_ref()
    }
    fn localhost_profile(name: &str) -> String {
        seccomp_localhost_profile(name)
    }
}

impl Profile for AppArmorProfile {
    const KIND: ProfileKind = ProfileKind::AppArmorProfile;
    fn enabled(&self) -> bool {
        self.spec.enabled()
    }
    fn status(&self) -> Option<&ProfileStatus> {
        self.status.as_ref()
    }
    fn localhost_profile(name: &str) -> String {
        name.to_owned()
    }
}

async fn controller<K: Profile>(
    ctx: Arc<Ctx>,
    triggers: mpsc::UnboundedReceiver<String>,
    term: CancellationToken,
) {
    let api = Api::<DeserializeGuard<K>>::all(ctx.client.clone());
    let controller = Controller::new(api, watcher::Config::default());
    let store = controller.store();
    // An empty name means "every profile" (a node went away).
    let triggers =
        futures::stream::unfold(triggers, |mut rx| async move { rx.recv().await.map(|n| (n, rx)) }).flat_map(
            move |name| {
                let refs: Vec<ObjectRef<DeserializeGuard<K>>> = if name.is_empty() {
                    store
                        .state()
                        .iter()
                        .map(|p| ObjectRef::from_obj(p.as_ref()))
                        .collect()
                } else {
                    vec![ObjectRef::new(&name)]
                };
                futures::stream::iter(refs)
            },
        );
    controller
        .reconcile_on(triggers)
        .graceful_shutdown_on(term.cancelled_owned())
        .run(reconcile::<K>, error_policy, ctx)
        .for_each(log_controller_error)
        .await;
}

async fn reconcile<K: Profile>(obj: Arc<DeserializeGuard<K>>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    if !ctx.synced.load(Ordering::SeqCst) {
        return Ok(Action::requeue(Duration::from_millis(500)));
    }
    let name = obj.name_any();
    let existing = ctx.existing_nodes();
    let api = Api::<DeserializeGuard<K>>::all(ctx.client.clone());

    // Finalizers of nodes that no longer exist: their agents will never remove them.
    let live: BTreeSet<String> = existing.iter().map(|n| node_finalizer(n)).collect();
    for f in obj
        .finalizers()
        .iter()
        .filter(|f| f.starts_with(NODE_FINALIZER_PREFIX))
    {
        if !live.contains(f) {
            tracing::info!(kind = K::KIND.as_str(), profile = %name, finalizer = %f, "removing the finalizer of a node that is gone");
            finalizers::remove(&api, obj.as_ref(), f).await?;
            // The removal changes the object: the next reconcile sees the rest.
            return Ok(Action::await_change());
        }
    }
    let reports: Vec<Arc<ProfileNodeStatus>> = ctx
        .reports
        .state()
        .into_iter()
        .filter(|r| r.spec.profile_kind == K::KIND && r.spec.profile_name == name)
        .collect();
    let statuses = Api::<ProfileNodeStatus>::all(ctx.client.clone());
    for r in reports.iter().filter(|r| !existing.contains(&r.spec.node_name)) {
        match statuses.delete(&r.name_any(), &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }

    let Ok(profile) = &obj.0 else {
        // The node agents report why it is invalid; there is nothing to aggregate.
        return Ok(Action::await_change());
    };
    let with_status: Vec<(&str, &crate::api::profiles::NodeReport)> = reports
        .iter()
        .filter_map(|r| r.status.as_ref().map(|s| (r.spec.node_name.as_str(), s)))
        .collect();
    let mut status = aggregate::status(aggregate::Input {
        generation: profile.meta().generation,
        deleting: profile.meta().deletion_timestamp.is_some(),
        enabled: profile.enabled(),
        localhost_profile: K::localhost_profile(&name),
        // Every Node: the agent's DaemonSet tolerates every taint. Waiting for reports instead
        // would call a profile Installed before a slow agent had said anything.
        agents: &existing,
        reports: with_status,
    });
    let previous = profile.status();
    // The transition time moves only when the condition does.
    if let Some(prev) = previous.and_then(|p| p.conditions.first())
        && let Some(cond) = status.conditions.first_mut()
        && prev.status == cond.status
        && prev.reason == cond.reason
    {
        cond.last_transition_time = prev.last_transition_time.clone();
    }
    if previous == Some(&status) {
        return Ok(Action::await_change());
    }
    let patch = json!({
        "apiVersion": "profiles.phylax.dev/v1alpha1",
        "kind": K::KIND.as_str(),
        "status": status,
    });
    match api
        .patch_status(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(patch),
        )
        .await
    {
        Ok(_) => Ok(Action::await_change()),
        // Deleted meanwhile: nothing to report on.
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(Action::await_change()),
        Err(e) => Err(e.into()),
    }
}

fn error_policy<K: Resource>(obj: Arc<K>, error: &Error, _ctx: Arc<Ctx>) -> Action {
    tracing::warn!(profile = %obj.meta().name.as_deref().unwrap_or_default(), error = %error, "updating a profile's status failed; retrying");
    Action::requeue(Duration::from_secs(2))
}
