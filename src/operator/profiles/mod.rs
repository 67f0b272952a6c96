//! The profiles controller (leader only): keeps each `SeccompProfile`'s and `AppArmorProfile`'s
//! status from its nodes' `ProfileNodeStatus` reports, and cleans up after nodes that are gone —
//! their finalizers on profiles (else a deleted profile would wait forever) and their reports.

pub mod aggregate;
pub mod webhook_scope;

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
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::api::profiles::{
    AppArmorProfile, NODE_FINALIZER_PREFIX, ProfileKind, ProfileNodeStatus, ProfileStatus, SeccompProfile,
    node_finalizer, seccomp_localhost_profile,
};
use crate::runtime::conditions::carry_transition_times;
use crate::runtime::controller::{ErrorPolicy, ReconcileError, log_controller_error};
use crate::runtime::finalizers;
use crate::runtime::metrics::Metrics;
use crate::runtime::ownership::OPERATOR_MANAGER;
use crate::runtime::reflect::{self, wait_listed};

#[derive(Debug, thiserror::Error)]
enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
}

impl ReconcileError for Error {
    fn label(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
        }
    }
}

/// Which profiles to look at again.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Recheck {
    /// The profile a node report is about.
    Profile(String),
    /// Every profile of the kind: a node went away (its finalizers and reports must go), or the
    /// caches have just listed.
    All,
}

struct Ctx {
    client: Client,
    reports: Store<ProfileNodeStatus>,
    nodes: Store<PartialObjectMeta<Node>>,
    /// Both stores have listed once: before that, a missing node is not known to be gone.
    synced: AtomicBool,
    policy: ErrorPolicy,
}

impl Ctx {
    fn existing_nodes(&self) -> BTreeSet<String> {
        self.nodes.state().iter().map(|n| n.name_any()).collect()
    }
}

pub async fn run(client: Client, metrics: Metrics, term: CancellationToken) -> anyhow::Result<()> {
    // A report changed: its profile's status may change.
    let (reports, report_changes) = reflect::store_and_changes(
        "ProfileNodeStatuses",
        Api::<ProfileNodeStatus>::all(client.clone()),
        watcher::Config::default(),
    );
    // A node went away: every profile may hold its finalizer.
    let (nodes, node_changes) = reflect::store_and_changes(
        "Nodes",
        Api::<PartialObjectMeta<Node>>::all(client.clone()),
        watcher::Config::default(),
    );
    let (seccomp_tx, seccomp_rx) = mpsc::unbounded_channel::<Recheck>();
    let (apparmor_tx, apparmor_rx) = mpsc::unbounded_channel::<Recheck>();
    let ctx = Arc::new(Ctx {
        client: client.clone(),
        reports: reports.clone(),
        nodes: nodes.clone(),
        synced: AtomicBool::new(false),
        policy: ErrorPolicy::standard("profile-status", &metrics),
    });

    let to_profiles = {
        let (seccomp_tx, apparmor_tx) = (seccomp_tx.clone(), apparmor_tx.clone());
        report_changes.for_each(move |r| {
            let tx = match r.spec.profile_kind {
                ProfileKind::SeccompProfile => &seccomp_tx,
                ProfileKind::AppArmorProfile => &apparmor_tx,
            };
            let _ = tx.send(Recheck::Profile(r.spec.profile_name.clone()));
            std::future::ready(())
        })
    };
    let on_nodes = {
        let (seccomp_tx, apparmor_tx, nodes) = (seccomp_tx.clone(), apparmor_tx.clone(), nodes.clone());
        node_changes.for_each(move |node| {
            if nodes.get(&ObjectRef::from_obj(&node)).is_none() {
                tracing::info!(node = %node.name_any(), "node deleted: releasing its profiles");
                let _ = seccomp_tx.send(Recheck::All);
                let _ = apparmor_tx.send(Recheck::All);
            }
            std::future::ready(())
        })
    };
    let ready = {
        let ctx = ctx.clone();
        async move {
            if wait_listed(&ctx.reports).await && wait_listed(&ctx.nodes).await {
                ctx.synced.store(true, Ordering::SeqCst);
                // Reports of nodes that vanished while no operator ran are pruned by the reconciles.
                let _ = seccomp_tx.send(Recheck::All);
                let _ = apparmor_tx.send(Recheck::All);
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
    triggers: mpsc::UnboundedReceiver<Recheck>,
    term: CancellationToken,
) {
    let api = Api::<DeserializeGuard<K>>::all(ctx.client.clone());
    let controller = Controller::new(api, watcher::Config::default());
    let store = controller.store();
    let triggers =
        futures::stream::unfold(triggers, |mut rx| async move { rx.recv().await.map(|n| (n, rx)) }).flat_map(
            move |recheck| {
                let refs: Vec<ObjectRef<DeserializeGuard<K>>> = match recheck {
                    Recheck::All => store
                        .state()
                        .iter()
                        .map(|p| ObjectRef::from_obj(p.as_ref()))
                        .collect(),
                    Recheck::Profile(name) => vec![ObjectRef::new(&name)],
                };
                futures::stream::iter(refs)
            },
        );
    controller
        .reconcile_on(triggers)
        .graceful_shutdown_on(term.cancelled_owned())
        .run(reconcile::<K>, error_policy, ctx)
        .for_each(log_controller_error("profile-status"))
        .await;
}

async fn reconcile<K: Profile>(obj: Arc<DeserializeGuard<K>>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let result = update_status::<K>(&obj, &ctx).await;
    ctx.policy.track(obj.as_ref(), result)
}

/// Releases finalizers and reports of nodes that are gone, then writes the aggregated status.
async fn update_status<K: Profile>(obj: &Arc<DeserializeGuard<K>>, ctx: &Ctx) -> Result<Action, Error> {
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
    carry_transition_times(
        previous.map(|p| p.conditions.as_slice()).unwrap_or_default(),
        &mut status.conditions,
    );
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
            &PatchParams::apply(OPERATOR_MANAGER).force(),
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

fn error_policy<K: Resource>(obj: Arc<K>, error: &Error, ctx: Arc<Ctx>) -> Action {
    ctx.policy.failed(obj.as_ref(), error)
}
