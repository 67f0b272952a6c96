//! Secret sync: a pod (or a workload's pod template) annotated with `secrets.phylax.dev/sync` gets
//! the external secrets it names as Secrets in its own namespace, and only there.
//!
//! One kube-runtime controller per kind of object that asks (pods, watched as metadata only;
//! Deployments, StatefulSets, DaemonSets and Jobs, read as untyped JSON). Each object is synced
//! once when it appears and again only if its annotation changes (a predicate on the annotation's
//! hash); the initial list at startup (or after a leader change) serves requests made while no
//! operator led. Transient failures (store unreachable or throttling, provider not ready, API write
//! failed) make the reconcile fail, so the error policy retries the object, only its failed
//! requests, with per-object capped, jittered backoff (and at least a store's Retry-After); the
//! others are reported once, as an event on the object that asked, and wait for a person.

pub mod access;
pub mod coalesce;
pub mod hash_key;
mod metrics;
pub mod outcome;
pub mod render;
mod stores;
pub mod target;
pub mod triggers;

use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret};
use kube::api::DynamicObject;
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{PredicateConfig, WatchStreamExt, watcher};
use kube::{Api, Client};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::api::sync_annotation::{self, ANNOTATION, SyncRequest};
use crate::runtime::backoff::Backoff;
use crate::runtime::controller::{ErrorPolicy, ReconcileError, log_controller_error};
use crate::runtime::duration;
use crate::runtime::metrics::Metrics;
use crate::runtime::ownership::OPERATOR_MANAGER;
use crate::runtime::reflect::{self, wait_listed};
use crate::secret_stores::{self, SecretBytes, StoreError};
pub use metrics::SyncMetrics;
use outcome::SyncError;
use stores::{Guarded, Stores};
use target::{Target, Written};
use triggers::{Kind, Trigger};

#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Secret sync")]
pub struct SyncArgs {
    /// Run the secret-sync controller
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub secret_sync: bool,

    /// Objects synced at once
    #[arg(long, value_name = "N", default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..=512))]
    pub sync_concurrency: u16,

    /// One store answer serves every request for the same secret made within this window (a burst
    /// of pods is one call); later requests read the store again
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = duration::parse)]
    pub sync_coalesce_window: Duration,

    /// Deadline of one call to a store
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = duration::parse)]
    pub sync_store_timeout: Duration,

    /// Longest wait between retries of a transient failure
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = duration::parse)]
    pub sync_retry_max: Duration,

    /// ServiceAccount in the operator's namespace whose short-lived tokens (TokenRequest API) log
    /// in to Vault; it should have no RBAC at all
    #[arg(long, value_name = "NAME", default_value = "phylax-vault-auth", value_parser = crate::runtime::names::parse_object_name)]
    pub vault_auth_service_account: String,
}

type Fetched = Result<SecretBytes, StoreError>;

/// How long the predicate remembers an object's annotation: a relist after this long syncs an
/// unchanged object again (a harmless refresh), and forgets objects deleted meanwhile.
const ANNOTATION_MEMORY: Duration = Duration::from_secs(24 * 3600);

struct Ctx {
    client: Client,
    stores: Stores,
    namespaces: reflector::Store<PartialObjectMeta<Namespace>>,
    coalescer: coalesce::Coalescer<(String, String), Fetched>,
    recorder: Recorder,
    metrics: SyncMetrics,
    /// Store calls and writes in flight across the five controllers (`--sync-concurrency`).
    slots: Semaphore,
    /// Per object (uid): the annotation's hash and the Secrets already written for it, so a retry
    /// redoes only the requests that failed transiently.
    progress: Mutex<HashMap<String, Progress>>,
    policy: ErrorPolicy,
    retry_max: Duration,
    /// Keys the content-hash annotation of the Secrets written.
    hasher: hash_key::ContentHasher,
}

struct Progress {
    annotation: u64,
    done: HashSet<String>,
    since: Instant,
}

/// Some requests failed in a way that may pass by itself: the object is retried with backoff.
#[derive(Debug, thiserror::Error)]
#[error("{failed} requested secret(s) failed transiently ({label})")]
pub struct Retry {
    failed: usize,
    label: &'static str,
    retry_after: Option<Duration>,
}

impl ReconcileError for Retry {
    fn label(&self) -> &'static str {
        self.label
    }

    fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }
}

fn hash_str(s: &str) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    s.hash(&mut h);
    h.finish()
}

pub async fn run(
    client: Client,
    namespace: String,
    args: SyncArgs,
    metrics: SyncMetrics,
    base_metrics: Metrics,
    term: CancellationToken,
) -> anyhow::Result<()> {
    if !args.secret_sync {
        return Ok(());
    }
    // SecretProviders: read through a guard so one object that does not match the schema is
    // reported on its status and does not stop the watch.
    let (providers, provider_changes) = reflect::store_and_applied(
        "SecretProviders",
        Api::<Guarded>::all(client.clone()),
        watcher::Config::default(),
    );
    let (namespaces, keep_namespaces) = reflect::store(
        "Namespaces",
        Api::<PartialObjectMeta<Namespace>>::all(client.clone()),
        watcher::Config::default(),
    );
    let Some(hasher) = content_hasher(&client, &namespace, &term).await else {
        return Ok(());
    };
    let ctx = Arc::new(Ctx {
        client: client.clone(),
        stores: Stores::new(
            providers.clone(),
            secret_stores::Context {
                client: client.clone(),
                namespace,
                timeout: args.sync_store_timeout,
                vault_service_account: args.vault_auth_service_account.clone(),
            },
        ),
        namespaces,
        coalescer: coalesce::Coalescer::new(args.sync_coalesce_window),
        recorder: Recorder::new(
            client.clone(),
            Reporter {
                controller: OPERATOR_MANAGER.into(),
                instance: std::env::var("HOSTNAME").ok(),
            },
        ),
        metrics,
        slots: Semaphore::new(args.sync_concurrency.into()),
        progress: Mutex::new(HashMap::new()),
        policy: ErrorPolicy::new(
            "secret-sync",
            &base_metrics,
            Duration::from_secs(1),
            args.sync_retry_max,
        ),
        retry_max: args.sync_retry_max,
        hasher,
    });
    // A provider whose spec changed is checked (and its status written) once.
    let check_providers = {
        let ctx = ctx.clone();
        provider_changes.for_each(move |sp| {
            let ctx = ctx.clone();
            async move { ctx.stores.check(&sp).await }
        })
    };
    let mut background = JoinSet::new();
    background.spawn(check_providers);
    background.spawn(keep_namespaces);
    // Syncs need the providers and the namespaces' labels.
    tokio::select! {
        listed = async { wait_listed(&providers).await && wait_listed(&ctx.namespaces).await } => {
            if !listed {
                anyhow::bail!("secret sync: the SecretProvider or Namespace watch ended");
            }
        }
        _ = term.cancelled() => return Ok(()),
    }

    // One controller per kind of object that asks; each sees only the objects that carry the
    // annotation, and only when it appears or changes.
    let config = controller::Config::default().concurrency(args.sync_concurrency);
    let mut controllers: JoinSet<()> = JoinSet::new();
    {
        let (store, changes) = requesters(
            Api::<PartialObjectMeta<Pod>>::all(client.clone()),
            (),
            |p: &PartialObjectMeta<Pod>| {
                p.metadata
                    .annotations
                    .as_ref()?
                    .get(ANNOTATION)
                    .map(String::as_str)
            },
        );
        let ctx = ctx.clone();
        let run = Controller::for_stream(changes, store)
            .with_config(config.clone())
            .graceful_shutdown_on(term.clone().cancelled_owned())
            .run(
                |pod, ctx: Arc<Ctx>| async move {
                    let trigger = triggers::from_pod(&pod);
                    reconcile(pod, trigger, ctx).await
                },
                error_policy,
                ctx,
            )
            .for_each(log_controller_error("secret-sync"));
        controllers.spawn(run);
    }
    for kind in Kind::WORKLOADS {
        let resource = kind.resource();
        let (store, changes) = requesters(
            Api::<DynamicObject>::all_with(client.clone(), &resource),
            resource.clone(),
            triggers::workload_annotation,
        );
        let run = Controller::for_stream_with(changes, store, resource)
            .with_config(config.clone())
            .graceful_shutdown_on(term.clone().cancelled_owned())
            .run(
                move |obj, ctx: Arc<Ctx>| async move {
                    let trigger = triggers::from_workload(kind, &obj);
                    reconcile(obj, trigger, ctx).await
                },
                error_policy,
                ctx.clone(),
            )
            .for_each(log_controller_error("secret-sync"));
        controllers.spawn(run);
    }
    tracing::info!("secret sync started");
    tokio::select! {
        _ = term.cancelled() => {}
        _ = controllers.join_next() => {
            if !term.is_cancelled() {
                anyhow::bail!("a secret-sync controller stopped unexpectedly");
            }
        }
    }
    // Each controller finishes its reconciles in flight, then stops.
    while controllers.join_next().await.is_some() {}
    background.shutdown().await;
    tracing::info!("secret sync stopped");
    Ok(())
}

/// The content-hash key, retried (capped backoff) until it can be read or created: a transient
/// API failure must not stop secret sync for good, and a bad key Secret waits for a person.
/// `None` when asked to stop first.
async fn content_hasher(
    client: &Client,
    namespace: &str,
    term: &CancellationToken,
) -> Option<hash_key::ContentHasher> {
    let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
    loop {
        let wait = match hash_key::load_or_create(client.clone(), namespace).await {
            Ok(h) => return Some(h),
            Err(e) => {
                let wait = backoff.next_delay();
                tracing::error!(
                    error = format!("{e:#}"),
                    retry_in = ?wait,
                    "secret sync waits for its content-hash key"
                );
                wait
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = term.cancelled() => return None,
        }
    }
}

/// The objects of `api` that ask for secrets, as a store and the stream of those whose
/// annotation is new or changed. Objects without the annotation never enter the store (memory
/// follows the objects that ask, not the cluster's size); one whose annotation is removed leaves
/// it. Managed fields are dropped: nothing here reads them.
fn requesters<K>(
    api: Api<K>,
    dyntype: K::DynamicType,
    asks: fn(&K) -> Option<&str>,
) -> (
    reflector::Store<K>,
    impl futures::Stream<Item = Result<K, watcher::Error>> + Send + 'static,
)
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone + Send + Sync,
{
    let writer = reflector::store::Writer::new(dyntype);
    let reader = writer.as_reader();
    let changes = watcher(api, watcher::Config::default())
        .default_backoff()
        .filter_map(move |event| {
            std::future::ready(match event {
                Ok(event) => only_requesters(event, asks).map(Ok),
                Err(e) => Some(Err(e)),
            })
        })
        .modify(|o| o.meta_mut().managed_fields = None)
        .reflect(writer)
        .applied_objects()
        .predicate_filter(
            move |o: &K| asks(o).map(hash_str),
            PredicateConfig::default().ttl(ANNOTATION_MEMORY),
        );
    (reader, changes)
}

/// Keeps the watch events of objects that ask; an object that stopped asking is deleted from
/// the store's point of view.
fn only_requesters<K>(event: watcher::Event<K>, asks: fn(&K) -> Option<&str>) -> Option<watcher::Event<K>> {
    match event {
        watcher::Event::Apply(o) if asks(&o).is_none() => Some(watcher::Event::Delete(o)),
        watcher::Event::InitApply(o) if asks(&o).is_none() => None,
        other => Some(other),
    }
}

fn error_policy<K: kube::Resource>(obj: Arc<K>, error: &Retry, ctx: Arc<Ctx>) -> Action {
    ctx.policy.failed(obj.as_ref(), error)
}

async fn reconcile<K: kube::Resource>(
    obj: Arc<K>,
    trigger: Option<Trigger>,
    ctx: Arc<Ctx>,
) -> Result<Action, Retry> {
    // Without a trigger the object stopped asking (or lacks a name or uid): nothing to do.
    let result = match trigger {
        Some(t) => sync(&t, &ctx).await,
        None => Ok(()),
    };
    ctx.policy
        .track(obj.as_ref(), result)
        .map(|()| Action::await_change())
}

impl Ctx {
    async fn publish(&self, t: &Trigger, type_: EventType, reason: &str, note: String) {
        let mut note = note;
        if note.len() > 1000 {
            let cut = (0..=1000).rev().find(|i| note.is_char_boundary(*i)).unwrap_or(0);
            note.truncate(cut);
        }
        let event = KubeEvent {
            type_,
            reason: reason.into(),
            note: Some(note),
            action: "SyncSecret".into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&event, &t.reference()).await {
            tracing::warn!(object = t.describe(), reason, error = %e, "cannot publish an event");
        }
    }

    fn progress(&self) -> std::sync::MutexGuard<'_, HashMap<String, Progress>> {
        self.progress.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The Secrets already written for this version of the object's annotation.
    fn done(&self, t: &Trigger) -> HashSet<String> {
        let hash = hash_str(&t.annotation);
        self.progress()
            .get(&t.uid)
            .filter(|p| p.annotation == hash)
            .map(|p| p.done.clone())
            .unwrap_or_default()
    }

    /// Records what is done after a partial failure; forgets the object once all is done.
    fn record(&self, t: &Trigger, done: HashSet<String>, complete: bool) {
        let mut progress = self.progress();
        if complete {
            progress.remove(&t.uid);
            return;
        }
        // Objects deleted while they were being retried are never reconciled again.
        let horizon = self.retry_max.saturating_mul(4);
        progress.retain(|_, p| p.since.elapsed() < horizon);
        progress.insert(
            t.uid.clone(),
            Progress {
                annotation: hash_str(&t.annotation),
                done,
                since: Instant::now(),
            },
        );
    }
}

/// Syncs one object's requests; the transient failures make it an error, so the object is
/// retried (only those requests) after its backoff.
async fn sync(t: &Trigger, ctx: &Ctx) -> Result<(), Retry> {
    let requests = match sync_annotation::parse(&t.annotation) {
        Ok(r) => r,
        Err(why) => {
            let e = SyncError::Malformed(why);
            tracing::warn!(
                object = t.describe(),
                reason = e.reason(),
                message = e.message(),
                "secret sync refused"
            );
            ctx.metrics
                .syncs
                .get_or_create(&metrics::ResultLabels {
                    provider: "none".into(),
                    result: e.result().into(),
                })
                .inc();
            ctx.publish(t, EventType::Warning, e.reason(), e.note()).await;
            return Ok(());
        }
    };
    let Ok(_slot) = ctx.slots.acquire().await else {
        return Ok(());
    };
    let mut done = ctx.done(t);
    let mut failed: Option<Retry> = None;
    let todo: Vec<&SyncRequest> = requests
        .iter()
        .filter(|r| !done.contains(&r.secret_name))
        .collect();
    for req in todo {
        ctx.metrics.in_flight.inc();
        let started = Instant::now();
        let (kind, result) = sync_one(ctx, &t.namespace, req).await;
        ctx.metrics.in_flight.dec();
        ctx.metrics
            .duration
            .get_or_create(&metrics::ProviderLabels {
                provider: kind.into(),
            })
            .observe(started.elapsed().as_secs_f64());
        let result_label = match &result {
            Ok(Written::Unchanged) => "unchanged",
            Ok(_) => "synced",
            Err(e) => e.result(),
        };
        ctx.metrics
            .syncs
            .get_or_create(&metrics::ResultLabels {
                provider: kind.into(),
                result: result_label.into(),
            })
            .inc();
        match result {
            Ok(written) => {
                let how = match written {
                    Written::Created => "created",
                    Written::Updated => "updated",
                    Written::Unchanged => "is up to date",
                };
                tracing::info!(
                    object = t.describe(),
                    secret = req.secret_name,
                    provider = req.provider,
                    path = req.path,
                    result = how,
                    "secret synced"
                );
                let note = format!(
                    "Secret {} {how} from SecretProvider {}, path {:?}",
                    req.secret_name, req.provider, req.path
                );
                ctx.publish(t, EventType::Normal, "SecretSynced", note).await;
                done.insert(req.secret_name.clone());
            }
            Err(e) => {
                tracing::warn!(
                    object = t.describe(),
                    secret = req.secret_name,
                    reason = e.reason(),
                    message = e.message(),
                    "secret sync failed"
                );
                ctx.publish(t, EventType::Warning, e.reason(), e.note()).await;
                if e.is_transient() {
                    let retry = failed.get_or_insert(Retry {
                        failed: 0,
                        label: e.result(),
                        retry_after: None,
                    });
                    retry.failed += 1;
                    retry.retry_after = retry.retry_after.max(e.retry_after());
                } else {
                    // Reported; it waits for a person (a new annotation or rollout).
                    done.insert(req.secret_name.clone());
                }
            }
        }
    }
    ctx.record(t, done, failed.is_none());
    match failed {
        Some(retry) => Err(retry),
        None => Ok(()),
    }
}

/// One request: checks, (coalesced) store call, rendering, write. Returns the store kind too.
async fn sync_one(
    ctx: &Ctx,
    namespace: &str,
    req: &SyncRequest,
) -> (&'static str, Result<Written, SyncError>) {
    let guarded = match ctx.stores.get(&req.provider) {
        Ok(g) => g,
        Err(e) => return ("none", Err(e)),
    };
    let sp = match &guarded.0 {
        Ok(sp) => sp,
        Err(invalid) => {
            return (
                "none",
                Err(SyncError::ProviderNotReady {
                    provider: req.provider.clone(),
                    why: format!("it does not match the schema ({})", invalid.error),
                }),
            );
        }
    };
    let kind = sp.spec.store_kind().unwrap_or("none");
    let result = async {
        let labels = ctx
            .namespaces
            .get(&ObjectRef::new(namespace))
            .and_then(|n| n.metadata.labels.clone())
            .unwrap_or_default();
        access::check(&sp.spec, namespace, &labels, &req.path).map_err(|refusal| SyncError::Refused {
            provider: req.provider.clone(),
            refusal,
        })?;
        let store = ctx
            .stores
            .store(sp)
            .await
            .map_err(|e| SyncError::ProviderNotReady {
                provider: req.provider.clone(),
                why: e.to_string(),
            })?;
        let key = (
            format!(
                "{}/{}/{}",
                req.provider,
                sp.metadata.uid.as_deref().unwrap_or(""),
                sp.metadata.generation.unwrap_or(0)
            ),
            req.path.clone(),
        );
        let fetched = ctx
            .coalescer
            .get(key, || async {
                let r = store.fetch(&req.path).await;
                let outcome = match &r {
                    Ok(_) => "ok",
                    Err(e) => e.outcome(),
                };
                ctx.metrics
                    .store_calls
                    .get_or_create(&metrics::ResultLabels {
                        provider: kind.into(),
                        result: outcome.into(),
                    })
                    .inc();
                ctx.stores
                    .observe(sp, &r.as_ref().map(|_| ()).map_err(Clone::clone))
                    .await;
                r
            })
            .await;
        let bytes = fetched.map_err(|error| SyncError::Store {
            provider: req.provider.clone(),
            path: req.path.clone(),
            error,
        })?;
        let raw_key = sp.spec.raw_key.as_deref().unwrap_or("value");
        let data = render::render(&bytes.0, &req.keys, raw_key).map_err(|error| SyncError::Render {
            provider: req.provider.clone(),
            path: req.path.clone(),
            error,
        })?;
        let api: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
        Target {
            api: &api,
            namespace,
            name: &req.secret_name,
            provider: &req.provider,
            path: &req.path,
            hasher: &ctx.hasher,
        }
        .write(&data)
        .await
    }
    .await;
    (kind, result)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::api_mock::{self, ApiServer};
    use http::{Method, StatusCode};

    fn ctx(client: Client, metrics: &Metrics) -> Ctx {
        Ctx {
            client: client.clone(),
            stores: Stores::new(
                reflector::store().0,
                secret_stores::Context {
                    client: client.clone(),
                    namespace: "phylax-system".into(),
                    timeout: Duration::from_secs(1),
                    vault_service_account: "phylax-vault-auth".into(),
                },
            ),
            namespaces: reflector::store().0,
            coalescer: coalesce::Coalescer::new(Duration::from_secs(1)),
            recorder: Recorder::new(
                client,
                Reporter {
                    controller: OPERATOR_MANAGER.into(),
                    instance: None,
                },
            ),
            metrics: SyncMetrics::register(metrics),
            slots: Semaphore::new(1),
            progress: Mutex::new(HashMap::new()),
            policy: ErrorPolicy::standard("secret-sync", metrics),
            retry_max: Duration::from_secs(60),
            hasher: hash_key::ContentHasher::new(&[7; 32]).unwrap(),
        }
    }

    fn trigger(annotation: &str) -> Trigger {
        Trigger {
            kind: Kind::Pod,
            namespace: "shop".into(),
            name: "web-0".into(),
            uid: "uid-1".into(),
            annotation: annotation.into(),
        }
    }

    /// Expects one event on the pod, answers it, and returns (type, reason, note).
    async fn event(server: &mut ApiServer) -> (String, String, String) {
        let call = server.next().await;
        call.expect(Method::POST, "/apis/events.k8s.io/v1/namespaces/shop/events");
        let body = call.body.clone();
        assert_eq!(body["regarding"]["kind"], "Pod");
        assert_eq!(body["regarding"]["name"], "web-0");
        assert_eq!(body["regarding"]["uid"], "uid-1");
        let text = |k: &str| body[k].as_str().unwrap_or_default().to_owned();
        let out = (text("type"), text("reason"), text("note"));
        call.respond(StatusCode::CREATED, body);
        out
    }

    #[tokio::test]
    async fn a_missing_provider_is_an_event_and_a_retry_of_that_request_only() {
        let (client, mut server) = api_mock::client();
        let metrics = Metrics::new("test");
        let ctx = Arc::new(ctx(client, &metrics));
        let annotation = "{provider: aws-prod, path: /prod/db, secretName: db}";
        let syncing = tokio::spawn({
            let ctx = ctx.clone();
            async move { sync(&trigger(annotation), &ctx).await }
        });
        let (type_, reason, note) = event(&mut server).await;
        assert_eq!(
            (type_.as_str(), reason.as_str()),
            ("Warning", "SecretProviderNotFound")
        );
        assert!(note.contains("aws-prod") && note.contains("will retry"), "{note}");
        server.no_more_calls().await;
        let retry = syncing.await.unwrap().unwrap_err();
        assert_eq!((retry.failed, retry.label()), (1, "provider_not_ready"));
        // The failed request is remembered as not done, for this version of the annotation.
        assert!(ctx.done(&trigger(annotation)).is_empty());
        assert!(ctx.progress().contains_key("uid-1"));
        let text = metrics.encode();
        assert!(
            text.contains(
                "phylax_secret_sync_syncs_total{provider=\"none\",result=\"provider_not_ready\"} 1"
            ),
            "{text}"
        );
    }

    #[tokio::test]
    async fn a_malformed_annotation_is_reported_once_and_not_retried() {
        let (client, mut server) = api_mock::client();
        let ctx = Arc::new(ctx(client, &Metrics::new("test")));
        let syncing = tokio::spawn({
            let ctx = ctx.clone();
            async move { sync(&trigger("{provider: [unclosed"), &ctx).await }
        });
        let (type_, reason, _) = event(&mut server).await;
        assert_eq!(
            (type_.as_str(), reason.as_str()),
            ("Warning", "InvalidSyncAnnotation")
        );
        server.no_more_calls().await;
        assert!(syncing.await.unwrap().is_ok());
        assert!(ctx.progress().is_empty());
    }

    #[test]
    fn objects_that_stop_asking_leave_the_store_and_others_never_enter_it() {
        fn asks(cm: &k8s_openapi::api::core::v1::ConfigMap) -> Option<&str> {
            cm.metadata
                .annotations
                .as_ref()?
                .get(ANNOTATION)
                .map(String::as_str)
        }
        let with = |a: Option<&str>| k8s_openapi::api::core::v1::ConfigMap {
            metadata: kube::api::ObjectMeta {
                name: Some("x".into()),
                annotations: a.map(|a| [(ANNOTATION.to_owned(), a.to_owned())].into()),
                ..Default::default()
            },
            ..Default::default()
        };
        assert!(matches!(
            only_requesters(watcher::Event::Apply(with(Some("a"))), asks),
            Some(watcher::Event::Apply(_))
        ));
        assert!(matches!(
            only_requesters(watcher::Event::Apply(with(None)), asks),
            Some(watcher::Event::Delete(_))
        ));
        assert!(only_requesters(watcher::Event::InitApply(with(None)), asks).is_none());
        assert!(matches!(
            only_requesters(watcher::Event::InitApply(with(Some("a"))), asks),
            Some(watcher::Event::InitApply(_))
        ));
        assert!(matches!(
            only_requesters(
                watcher::Event::<k8s_openapi::api::core::v1::ConfigMap>::InitDone,
                asks
            ),
            Some(watcher::Event::InitDone)
        ));
    }
}
