//! Node-agent metrics. Labels: the profile kind and this node's name (a DaemonSet's pods are
//! scraped one by one, the label keeps the node when series are summed); never a profile's name.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;

use crate::api::profiles::ProfileKind;
use crate::runtime::metrics::Metrics;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: &'static str,
    pub node: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

#[derive(Clone, Debug)]
pub struct ProfileMetrics {
    node: String,
    installs: Family<KindLabels, Counter>,
    removals: Family<KindLabels, Counter>,
    errors: Family<KindLabels, Counter>,
    installed: Family<KindLabels, Gauge>,
    install_duration: Family<KindLabels, Histogram>,
    /// Audit lines read, by result: `recorded`, `pending` (a container whose pod's status has
    /// not named it yet), `not_recorded` (no recording asked for that process), `not_seccomp`,
    /// `malformed`.
    pub audit_lines: Family<ResultLabels, Counter>,
    /// Profiles written by recordings, by result (`written`, `refused`, `failed`).
    pub recordings: Family<ResultLabels, Counter>,
}

impl ProfileMetrics {
    pub fn register(metrics: &Metrics, node: &str) -> ProfileMetrics {
        let m = ProfileMetrics {
            node: node.to_owned(),
            installs: Family::default(),
            removals: Family::default(),
            errors: Family::default(),
            installed: Family::default(),
            install_duration: Family::new_with_constructor(|| {
                Histogram::new([0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0])
            }),
            audit_lines: Family::default(),
            recordings: Family::default(),
        };
        metrics.register(
            "profiles_installs",
            "Profile files written on this node (created or changed)",
            m.installs.clone(),
        );
        metrics.register(
            "profiles_removals",
            "Profiles removed from this node",
            m.removals.clone(),
        );
        metrics.register(
            "profiles_errors",
            "Profiles refused on this node (invalid, unresolvable or not writable)",
            m.errors.clone(),
        );
        metrics.register(
            "profiles_installed",
            "Profiles installed on this node now",
            m.installed.clone(),
        );
        metrics.register(
            "profiles_install_duration_seconds",
            "From handling a profile change to its file written",
            m.install_duration.clone(),
        );
        metrics.register(
            "profiles_audit_lines",
            "Kernel audit lines read by the recorder, by result",
            m.audit_lines.clone(),
        );
        metrics.register(
            "profiles_recordings",
            "SeccompProfiles written from recordings, by result",
            m.recordings.clone(),
        );
        m
    }

    fn labels(&self, kind: ProfileKind) -> KindLabels {
        KindLabels {
            kind: kind.as_str(),
            node: self.node.clone(),
        }
    }

    pub fn installed(&self, kind: ProfileKind, seconds: f64) {
        self.installs.get_or_create(&self.labels(kind)).inc();
        self.install_duration
            .get_or_create(&self.labels(kind))
            .observe(seconds);
    }

    pub fn removed(&self, kind: ProfileKind) {
        self.removals.get_or_create(&self.labels(kind)).inc();
    }

    pub fn error(&self, kind: ProfileKind) {
        self.errors.get_or_create(&self.labels(kind)).inc();
    }

    pub fn set_installed(&self, kind: ProfileKind, count: usize) {
        self.installed
            .get_or_create(&self.labels(kind))
            .set(i64::try_from(count).unwrap_or(i64::MAX));
    }
}
