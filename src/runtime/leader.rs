//! Leader election on a `coordination.k8s.io/v1` Lease, with client-go's semantics:
//!
//! - a candidate takes the lease when it is free, released, or not renewed for `leaseDuration`
//!   as measured on the candidate's own clock since it last saw the record change (so clock skew
//!   between nodes does not matter);
//! - every write carries the `resourceVersion` it read, so two candidates can never both win;
//! - the leader renews every `retry_period` and steps down by itself when it has not renewed for
//!   `renew_deadline` (shorter than the lease duration, so it stops before anyone else may start);
//! - on graceful shutdown the leader releases the lease so a successor takes over at once.

use std::sync::Arc;
use std::time::Duration;

use clap::{ArgAction, Args};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::PostParams;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::metrics::Metrics;

#[derive(Clone, Debug, Args)]
#[command(next_help_heading = "Leader election")]
pub struct LeaderArgs {
    /// Elect one active replica through a Lease; turn off only when a single replica runs
    #[arg(long, value_name = "BOOL", default_value_t = true, action = ArgAction::Set)]
    pub leader_elect: bool,

    /// Name of the Lease (in --namespace)
    #[arg(long, default_value = super::ownership::OPERATOR_LEASE, value_parser = super::names::parse_object_name)]
    pub lease_name: String,

    /// This replica's name in the Lease; a random suffix keeps two processes with one name apart
    #[arg(long, env = "POD_NAME", value_name = "NAME")]
    pub identity: Option<String>,

    /// How long a lease holds without renewal before others may take it
    #[arg(long, value_name = "DURATION", default_value = "15s", value_parser = super::duration::parse)]
    pub lease_duration: Duration,

    /// How long the leader keeps trying to renew before it steps down
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = super::duration::parse)]
    pub renew_deadline: Duration,

    /// How often to try to acquire or renew
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = super::duration::parse)]
    pub retry_period: Duration,
}

impl LeaderArgs {
    /// The timing rules client-go enforces; without them two leaders could overlap.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.renew_deadline >= self.lease_duration {
            anyhow::bail!(
                "--renew-deadline ({:?}) must be shorter than --lease-duration ({:?}), or a leader could still act after others may take over",
                self.renew_deadline,
                self.lease_duration
            );
        }
        if self.retry_period >= self.renew_deadline {
            anyhow::bail!(
                "--retry-period ({:?}) must be shorter than --renew-deadline ({:?}), or the leader never gets a second try to renew",
                self.retry_period,
                self.renew_deadline
            );
        }
        if self.lease_duration < Duration::from_secs(1) {
            anyhow::bail!("--lease-duration must be at least 1s");
        }
        Ok(())
    }

    pub fn identity(&self) -> String {
        let base = self
            .identity
            .clone()
            .filter(|s| !s.trim().is_empty())
            .unwrap_or_else(hostname);
        format!("{base}_{:08x}", rand::random::<u32>())
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "phylax".to_owned())
}

/// What this process knows about leadership.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Leadership {
    /// Nothing read from the Lease yet (or it cannot be read).
    Unknown,
    Leading,
    /// Another replica holds the lease.
    Following {
        holder: String,
    },
}

/// The next step, decided from the Lease as read.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    /// The lease is free, released or expired: take it.
    Acquire,
    /// We hold it: renew it.
    Renew,
    /// Someone else holds a live lease.
    Follow { holder: String },
}

/// Decides from the lease's holder and whether its record expired by our own observation.
pub fn decide(me: &str, holder: Option<&str>, expired: bool) -> Decision {
    match holder.filter(|h| !h.is_empty()) {
        None => Decision::Acquire,
        Some(h) if h == me => Decision::Renew,
        Some(_) if expired => Decision::Acquire,
        Some(h) => Decision::Follow { holder: h.to_owned() },
    }
}

/// When we last saw the lease record change, on our clock.
#[derive(Debug)]
struct Observed {
    holder: Option<String>,
    renew_time: Option<MicroTime>,
    at: Instant,
}

/// One replica's campaign. Cheap to clone: a campaign restarted after a panic keeps the identity
/// (so it can renew its own lease) and the channel the role listens on.
#[derive(Clone)]
pub struct LeaderElector {
    api: Api<Lease>,
    name: String,
    identity: String,
    args: LeaderArgs,
    state: Arc<watch::Sender<Leadership>>,
    is_leader: Gauge,
    became_leader: Counter,
}

impl LeaderElector {
    pub fn new(api: Api<Lease>, args: LeaderArgs, metrics: &Metrics) -> Self {
        let is_leader = Gauge::default();
        let became_leader = Counter::default();
        metrics.register(
            "leader_is_leader",
            "1 while this replica holds the leader lease",
            is_leader.clone(),
        );
        metrics.register(
            "leader_acquired",
            "Times this replica became the leader",
            became_leader.clone(),
        );
        let (state, _) = watch::channel(Leadership::Unknown);
        LeaderElector {
            api,
            name: args.lease_name.clone(),
            identity: args.identity(),
            args,
            state: Arc::new(state),
            is_leader,
            became_leader,
        }
    }

    pub fn subscribe(&self) -> watch::Receiver<Leadership> {
        self.state.subscribe()
    }

    /// Campaigns and renews until `shutdown`, then releases the lease if held.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        tracing::info!(lease = %self.name, identity = %self.identity, "joining leader election");
        let mut last_renewal: Option<Instant> = None;
        let mut observed: Option<Observed> = None;
        loop {
            let attempt = tokio::time::timeout(
                self.args.retry_period.max(Duration::from_secs(1)),
                self.try_acquire_or_renew(&mut observed),
            );
            let outcome = tokio::select! {
                outcome = attempt => outcome.unwrap_or_else(|_| Err(kube::Error::Service("lease request timed out".into()))),
                _ = shutdown.cancelled() => break,
            };
            let now = Instant::now();
            match outcome {
                Ok(true) => {
                    last_renewal = Some(now);
                    self.set(Leadership::Leading);
                }
                Ok(false) => {
                    last_renewal = None;
                    let holder = observed
                        .as_ref()
                        .and_then(|o| o.holder.clone())
                        .unwrap_or_default();
                    self.set(Leadership::Following { holder });
                }
                Err(e) => {
                    tracing::warn!(lease = %self.name, error = %e, "cannot read or write the leader lease");
                    if let Some(renewed) = last_renewal
                        && now.duration_since(renewed) >= self.args.renew_deadline
                    {
                        tracing::error!(lease = %self.name, "could not renew the lease within the renew deadline; stepping down");
                        last_renewal = None;
                        self.set(Leadership::Unknown);
                    }
                }
            }
            // Candidates spread their attempts out; the leader renews on a steady beat.
            let wait = if last_renewal.is_some() {
                self.args.retry_period
            } else {
                self.args.retry_period.mul_f64(1.0 + rand::random::<f64>() * 0.2)
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.cancelled() => break,
            }
        }
        if *self.state.borrow() == Leadership::Leading {
            // Stop acting before anyone can take over.
            self.set(Leadership::Unknown);
            match self.release().await {
                Ok(()) => tracing::info!(lease = %self.name, "released the leader lease"),
                Err(e) => {
                    tracing::warn!(lease = %self.name, error = %e, "could not release the leader lease; it expires by itself")
                }
            }
        }
        Ok(())
    }

    fn set(&self, new: Leadership) {
        let old = self.state.borrow().clone();
        if old == new {
            return;
        }
        match (&old, &new) {
            (_, Leadership::Leading) => {
                self.became_leader.inc();
                tracing::info!(lease = %self.name, identity = %self.identity, "became the leader");
            }
            (Leadership::Leading, _) => tracing::warn!(lease = %self.name, "lost leadership"),
            (_, Leadership::Following { holder }) => {
                tracing::info!(lease = %self.name, leader = %holder, "following")
            }
            _ => {}
        }
        self.is_leader.set(i64::from(new == Leadership::Leading));
        self.state.send_replace(new);
    }

    /// One round: returns whether we hold the lease afterwards.
    async fn try_acquire_or_renew(&self, observed: &mut Option<Observed>) -> Result<bool, kube::Error> {
        let now = Instant::now();
        let current = self.api.get_opt(&self.name).await?;
        let Some(mut lease) = current else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..Default::default()
                },
                spec: Some(self.spec(None, true)),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false), // another candidate created it first
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone();
        // Track when the record last changed, on our clock.
        let changed = observed
            .as_ref()
            .is_none_or(|o| o.holder != holder || o.renew_time != spec.renew_time);
        if changed {
            *observed = Some(Observed {
                holder: holder.clone(),
                renew_time: spec.renew_time.clone(),
                at: now,
            });
        }
        let duration = spec
            .lease_duration_seconds
            .and_then(|s| u64::try_from(s).ok())
            .map(Duration::from_secs)
            .unwrap_or(self.args.lease_duration);
        let expired = observed
            .as_ref()
            .is_some_and(|o| now.duration_since(o.at) >= duration);
        let acquiring = match decide(&self.identity, holder.as_deref(), expired) {
            Decision::Follow { .. } => return Ok(false),
            Decision::Acquire => true,
            Decision::Renew => false,
        };
        lease.spec = Some(self.spec(Some(&spec), acquiring));
        // replace() sends the resourceVersion we read: a concurrent writer makes this a 409.
        match self.api.replace(&self.name, &PostParams::default(), &lease).await {
            Ok(written) => {
                let spec = written.spec.unwrap_or_default();
                *observed = Some(Observed {
                    holder: spec.holder_identity,
                    renew_time: spec.renew_time,
                    at: now,
                });
                Ok(true)
            }
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn spec(&self, previous: Option<&LeaseSpec>, acquiring: bool) -> LeaseSpec {
        let now = MicroTime(Timestamp::now());
        let previous = previous.cloned().unwrap_or_default();
        let transitions = previous.lease_transitions.unwrap_or(0);
        let was_held = previous.holder_identity.as_deref().is_some_and(|h| !h.is_empty());
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(
                i32::try_from(self.args.lease_duration.as_secs()).unwrap_or(i32::MAX),
            ),
            acquire_time: if acquiring {
                Some(now.clone())
            } else {
                previous.acquire_time
            },
            renew_time: Some(now),
            lease_transitions: Some(if acquiring && was_held {
                transitions.saturating_add(1)
            } else {
                transitions
            }),
            ..previous
        }
    }

    /// Gives the lease up: empty holder and a 1 s duration, as client-go does on release.
    async fn release(&self) -> Result<(), kube::Error> {
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            return Ok(());
        };
        let Some(spec) = lease.spec.as_mut() else {
            return Ok(());
        };
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        self.api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
            .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decisions() {
        assert_eq!(decide("me", None, false), Decision::Acquire);
        assert_eq!(decide("me", Some(""), false), Decision::Acquire, "released lease");
        assert_eq!(decide("me", Some("me"), false), Decision::Renew);
        assert_eq!(
            decide("me", Some("me"), true),
            Decision::Renew,
            "our own lease, even if late"
        );
        assert_eq!(
            decide("me", Some("other"), false),
            Decision::Follow {
                holder: "other".into()
            }
        );
        assert_eq!(decide("me", Some("other"), true), Decision::Acquire);
    }

    fn args(lease: u64, renew: u64, retry: u64) -> LeaderArgs {
        LeaderArgs {
            leader_elect: true,
            lease_name: "l".into(),
            identity: Some("pod-a".into()),
            lease_duration: Duration::from_secs(lease),
            renew_deadline: Duration::from_secs(renew),
            retry_period: Duration::from_secs(retry),
        }
    }

    #[test]
    fn timing_rules() {
        assert!(args(15, 10, 2).validate().is_ok());
        let e = args(10, 10, 2).validate().unwrap_err().to_string();
        assert!(e.contains("--renew-deadline"), "{e}");
        let e = args(15, 10, 10).validate().unwrap_err().to_string();
        assert!(e.contains("--retry-period"), "{e}");
    }

    #[test]
    fn identities_are_unique_per_process() {
        let a = args(15, 10, 2);
        let (x, y) = (a.identity(), a.identity());
        assert!(x.starts_with("pod-a_") && y.starts_with("pod-a_"));
        assert_ne!(x, y);
    }
}
