//! Secret sync: a pod (or a workload's pod template) annotated with `secrets.phylax.dev/sync` gets
//! the external secrets it names as Secrets in its own namespace, and only there.
//!
//! Each pod or workload is synced once when it appears and again only if its annotation changes;
//! the initial list at startup (or after a leader change) serves requests made while no operator
//! led. Transient failures (store unreachable or throttling, provider not ready, API write failed)
//! are retried with capped, jittered backoff; the others are reported once, as an event on the
//! object that asked, and wait for a person.

pub mod access;
pub mod coalesce;
mod metrics;
pub mod outcome;
pub mod render;
mod stores;
pub mod target;
pub mod triggers;

use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret};
use kube::api::DynamicObject;
use kube::core::PartialObjectMeta;
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::watcher::{self, Event};
use kube::runtime::{WatchStreamExt, watcher as watch};
use kube::{Api, Client};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::api::sync_annotation::{self, SyncRequest};
use crate::runtime::backoff::Backoff;
use crate::runtime::duration;
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
}

type Fetched = Result<SecretBytes, StoreError>;
type SeenStream = Pin<Box<dyn Stream<Item = Result<Seen, watcher::Error>> + Send>>;

struct Ctx {
    client: Client,
    stores: Stores,
    namespaces: reflector::Store<PartialObjectMeta<Namespace>>,
    coalescer: coalesce::Coalescer<(String, String), Fetched>,
    recorder: Recorder,
    metrics: SyncMetrics,
    slots: Semaphore,
    /// uid → (kind, hash of the annotation last seen), for every object that asks: a sync whose
    /// object is gone or whose annotation changed since is dropped.
    current: Mutex<HashMap<String, (Kind, u64)>>,
    retry_max: Duration,
}

/// A unit of work: one object's requests (on retry, only those that failed transiently).
struct Work {
    trigger: Trigger,
    only: Option<HashSet<String>>,
    backoff: Backoff,
}

/// What the watches report, reduced to what the dispatcher needs.
enum Seen {
    Object {
        kind: Kind,
        uid: String,
        trigger: Option<Trigger>,
    },
    Deleted {
        uid: String,
    },
    Relist(Kind),
    Listed(Kind),
}

fn annotation_hash(s: &str) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    s.hash(&mut h);
    h.finish()
}

pub async fn run(
    client: Client,
    namespace: String,
    args: SyncArgs,
    metrics: SyncMetrics,
    term: CancellationToken,
) -> anyhow::Result<()> {
    if !args.secret_sync {
        return Ok(());
    }
    let mut background = JoinSet::new();

    // SecretProviders: read through a guard so one object that does not match the schema is
    // reported on its status and does not stop the watch.
    let (providers_reader, providers_writer) = reflector::store::<Guarded>();
    let providers_stream = reflector::reflector(
        providers_writer,
        watch(Api::<Guarded>::all(client.clone()), watcher::Config::default()),
    )
    .default_backoff()
    .applied_objects();
    let ctx = Arc::new(Ctx {
        client: client.clone(),
        stores: Stores::new(
            providers_reader.clone(),
            secret_stores::Context {
                client: client.clone(),
                namespace,
                timeout: args.sync_store_timeout,
            },
        ),
        namespaces: {
            let (reader, writer) = reflector::store();
            let stream = reflector::reflector(
                writer,
                watch(
                    Api::<PartialObjectMeta<Namespace>>::all(client.clone()),
                    watcher::Config::default(),
                ),
            )
            .default_backoff();
            background.spawn(drain("namespaces", stream));
            reader
        },
        coalescer: coalesce::Coalescer::new(args.sync_coalesce_window),
        recorder: Recorder::new(
            client.clone(),
            Reporter {
                controller: "phylax-operator".into(),
                instance: std::env::var("HOSTNAME").ok(),
            },
        ),
        metrics,
        slots: Semaphore::new(args.sync_concurrency.into()),
        current: Mutex::new(HashMap::new()),
        retry_max: args.sync_retry_max,
    });
    {
        let ctx = ctx.clone();
        background.spawn(async move {
            let mut stream = std::pin::pin!(providers_stream);
            while let Some(item) = stream.next().await {
                match item {
                    Ok(sp) => ctx.stores.check(&sp).await,
                    Err(e) => tracing::warn!(error = %e, "watching SecretProviders failed; retrying"),
                }
            }
        });
    }
    // Syncs need the providers and the namespaces' labels.
    tokio::select! {
        ready = async { tokio::try_join!(providers_reader.wait_until_ready(), ctx.namespaces.wait_until_ready()) } => {
            ready.map_err(|e| anyhow::anyhow!("secret sync: {e}"))?;
        }
        _ = term.cancelled() => return Ok(()),
    }

    let mut sources: Vec<SeenStream> = vec![Box::pin(
        watch(
            Api::<PartialObjectMeta<Pod>>::all(client.clone()),
            watcher::Config::default(),
        )
        .default_backoff()
        .map(|ev| ev.map(|ev| seen(Kind::Pod, ev, triggers::from_pod, |p| p.metadata.uid.clone()))),
    )];
    for kind in Kind::WORKLOADS {
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &kind.resource());
        sources.push(Box::pin(
            watch(api, watcher::Config::default())
                .default_backoff()
                .map(move |ev| {
                    ev.map(|ev| {
                        seen(
                            kind,
                            ev,
                            |o| triggers::from_workload(kind, o),
                            |o| o.metadata.uid.clone(),
                        )
                    })
                }),
        ));
    }
    let mut seen_stream = futures::stream::select_all(sources);

    tracing::info!("secret sync started");
    let (tx, mut rx) = mpsc::unbounded_channel::<Work>();
    let mut relisting: HashMap<Kind, HashSet<String>> = HashMap::new();
    let mut tasks: JoinSet<()> = JoinSet::new();
    loop {
        tokio::select! {
            _ = term.cancelled() => break,
            item = seen_stream.next() => match item {
                None => anyhow::bail!("the pod and workload watches ended"),
                Some(Err(e)) => tracing::warn!(error = %e, "watching pods or workloads failed; retrying"),
                Some(Ok(Seen::Relist(kind))) => { relisting.insert(kind, HashSet::new()); }
                Some(Ok(Seen::Listed(kind))) => {
                    // Forget objects of this kind that the new list no longer has.
                    if let Some(listed) = relisting.remove(&kind) {
                        ctx.current
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .retain(|uid, (k, _)| *k != kind || listed.contains(uid));
                    }
                }
                Some(Ok(Seen::Deleted { uid })) => {
                    ctx.current.lock().unwrap_or_else(|p| p.into_inner()).remove(&uid);
                }
                Some(Ok(Seen::Object { kind, uid, trigger })) => {
                    if let Some(listed) = relisting.get_mut(&kind) {
                        listed.insert(uid.clone());
                    }
                    let mut current = ctx.current.lock().unwrap_or_else(|p| p.into_inner());
                    match trigger {
                        None => {
                            current.remove(&uid);
                        }
                        Some(trigger) => {
                            let hash = annotation_hash(&trigger.annotation);
                            if current.insert(uid, (kind, hash)).map(|(_, h)| h) != Some(hash) {
                                let work = Work {
                                    trigger,
                                    only: None,
                                    backoff: Backoff::new(Duration::from_secs(1), ctx.retry_max),
                                };
                                tasks.spawn(process(ctx.clone(), work, tx.clone(), term.clone()));
                            }
                        }
                    }
                }
            },
            Some(work) = rx.recv() => {
                tasks.spawn(process(ctx.clone(), work, tx.clone(), term.clone()));
            }
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
    tasks.shutdown().await;
    background.shutdown().await;
    tracing::info!("secret sync stopped");
    Ok(())
}

fn seen<K>(
    kind: Kind,
    ev: Event<K>,
    trigger: impl Fn(&K) -> Option<Trigger>,
    uid: impl Fn(&K) -> Option<String>,
) -> Seen {
    match ev {
        Event::Init => Seen::Relist(kind),
        Event::InitDone => Seen::Listed(kind),
        Event::Apply(o) | Event::InitApply(o) => Seen::Object {
            kind,
            uid: uid(&o).unwrap_or_default(),
            trigger: trigger(&o),
        },
        Event::Delete(o) => Seen::Deleted {
            uid: uid(&o).unwrap_or_default(),
        },
    }
}

async fn drain<S: Stream<Item = Result<T, watcher::Error>>, T>(what: &'static str, stream: S) {
    let mut stream = std::pin::pin!(stream);
    while let Some(item) = stream.next().await {
        if let Err(e) = item {
            tracing::warn!(error = %e, "watching {what} failed; retrying");
        }
    }
}

impl Ctx {
    fn is_current(&self, t: &Trigger) -> bool {
        self.current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&t.uid)
            .is_some_and(|(_, h)| *h == annotation_hash(&t.annotation))
    }

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
}

/// Syncs one object's requests; schedules a retry of the transient failures.
async fn process(ctx: Arc<Ctx>, mut work: Work, retry: mpsc::UnboundedSender<Work>, term: CancellationToken) {
    if !ctx.is_current(&work.trigger) {
        return;
    }
    let t = &work.trigger;
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
            ctx.publish(t, EventType::Warning, e.reason(), e.message()).await;
            return;
        }
    };
    let Ok(slot) = ctx.slots.acquire().await else {
        return;
    };
    let mut failed = HashSet::new();
    let mut retry_after = None;
    for req in requests.iter().filter(|r| {
        work.only
            .as_ref()
            .is_none_or(|only| only.contains(&r.secret_name))
    }) {
        ctx.metrics.in_flight.inc();
        let started = Instant::now();
        let (kind, result) = sync_one(&ctx, &t.namespace, req).await;
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
            }
            Err(e) => {
                tracing::warn!(
                    object = t.describe(),
                    secret = req.secret_name,
                    reason = e.reason(),
                    message = e.message(),
                    "secret sync failed"
                );
                ctx.publish(t, EventType::Warning, e.reason(), e.message()).await;
                if e.is_transient() {
                    failed.insert(req.secret_name.clone());
                    retry_after = retry_after.max(e.retry_after());
                }
            }
        }
    }
    // The slot is for syncing, not for waiting to retry.
    drop(slot);
    if failed.is_empty() {
        return;
    }
    let delay = work.backoff.next_delay().max(retry_after.unwrap_or_default());
    tracing::info!(object = work.trigger.describe(), retry_in = ?delay, "secret sync will retry");
    work.only = Some(failed);
    tokio::select! {
        _ = tokio::time::sleep(delay) => { let _ = retry.send(work); }
        _ = term.cancelled() => {}
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
        access::check(&sp.spec, namespace, &labels, &req.path).map_err(|why| SyncError::Refused {
            provider: req.provider.clone(),
            why,
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
        }
        .write(&data)
        .await
    }
    .await;
    (kind, result)
}
