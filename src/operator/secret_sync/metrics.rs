//! Secret-sync metrics. Labels are the store kind (aws, vault, azure, file) and a result from a
//! small fixed set; never a namespace, path or provider name.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;

use crate::runtime::metrics::Metrics;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub provider: String,
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProviderLabels {
    pub provider: String,
}

#[derive(Clone, Debug)]
pub struct SyncMetrics {
    pub syncs: Family<ResultLabels, Counter>,
    pub duration: Family<ProviderLabels, Histogram>,
    pub store_calls: Family<ResultLabels, Counter>,
    pub in_flight: Gauge,
}

impl SyncMetrics {
    /// Registers the metrics once per process (controllers restart on every election).
    pub fn register(metrics: &Metrics) -> Self {
        let m = SyncMetrics {
            syncs: Family::default(),
            duration: Family::new_with_constructor(|| {
                Histogram::new([
                    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                ])
            }),
            store_calls: Family::default(),
            in_flight: Gauge::default(),
        };
        metrics.register(
            "secret_sync_syncs",
            "Secret syncs by store kind and result (synced, unchanged or the failure)",
            m.syncs.clone(),
        );
        metrics.register(
            "secret_sync_duration_seconds",
            "Time of one sync, from dequeue to Secret written, by store kind",
            m.duration.clone(),
        );
        metrics.register(
            "secret_sync_store_calls",
            "Calls to external stores by store kind and outcome (ok or the error)",
            m.store_calls.clone(),
        );
        metrics.register("secret_sync_in_flight", "Syncs running now", m.in_flight.clone());
        m
    }
}
