//! Prometheus metrics, served as OpenMetrics text on the admin port.
//!
//! Labels stay low-cardinality: role, task, method, result. Never object names, never error text.

use std::sync::{Arc, RwLock};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::registry::Registry;

/// The process-wide registry. Components register their metrics while the role starts; the admin
/// server encodes it on every scrape.
#[derive(Clone, Debug)]
pub struct Metrics {
    registry: Arc<RwLock<Registry>>,
    pub task_panics: Family<TaskLabels, Counter>,
    /// Every controller's failed reconciles, counted by its error policy.
    pub reconcile_errors: Family<ReconcileLabels, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TaskLabels {
    pub task: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReconcileLabels {
    pub controller: String,
    /// A bounded word from the error type (`ReconcileError::label`), never error text.
    pub error: String,
}

/// Phylax's own metrics are named `phylax_*`; the process metrics keep the standard `process_*`
/// names that stock dashboards and alerts query.
const PREFIX: &str = "phylax_";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: String,
    commit: String,
    role: String,
}

impl Metrics {
    pub fn new(role: &str) -> Self {
        let mut registry = Registry::default();
        let build_info = Family::<BuildLabels, Gauge>::default();
        build_info
            .get_or_create(&BuildLabels {
                version: crate::version::VERSION.into(),
                commit: crate::version::GIT_COMMIT.into(),
                role: role.into(),
            })
            .set(1);
        registry.register(
            format!("{PREFIX}build_info"),
            "Version and role of this process (always 1)",
            build_info,
        );
        let task_panics = Family::<TaskLabels, Counter>::default();
        registry.register(
            format!("{PREFIX}task_panics"),
            "Panics caught in supervised tasks; the task was restarted",
            task_panics.clone(),
        );
        let reconcile_errors = Family::<ReconcileLabels, Counter>::default();
        registry.register(
            format!("{PREFIX}reconcile_errors"),
            "Failed reconciles by controller and kind of error; the object is retried with backoff",
            reconcile_errors.clone(),
        );
        registry.register_collector(Box::new(ProcessCollector));
        Metrics {
            registry: Arc::new(RwLock::new(registry)),
            task_panics,
            reconcile_errors,
        }
    }

    /// Registers a metric under `phylax_<name>`.
    pub fn register(&self, name: &str, help: &str, metric: impl prometheus_client::registry::Metric) {
        // A poisoned lock only means a panic elsewhere while registering; the registry itself is intact.
        let mut registry = self.registry.write().unwrap_or_else(|p| p.into_inner());
        registry.register(format!("{PREFIX}{name}"), help, metric);
    }

    /// OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let registry = self.registry.read().unwrap_or_else(|p| p.into_inner());
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &registry) {
            tracing::warn!(error = %e, "cannot encode metrics");
        }
        out
    }
}

/// `process_*` metrics read from /proc on each scrape (Linux), like other exporters provide:
/// resident memory, CPU time, open file descriptors, start time.
#[derive(Debug)]
struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(stat) = ProcStat::read_self() else {
            return Ok(());
        };
        let cpu = ConstCounter::new(stat.cpu_seconds);
        cpu.encode(encoder.encode_descriptor(
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds",
            None,
            cpu.metric_type(),
        )?)?;
        let rss = ConstGauge::new(stat.rss_bytes as i64);
        rss.encode(encoder.encode_descriptor(
            "process_resident_memory_bytes",
            "Resident memory size in bytes",
            None,
            rss.metric_type(),
        )?)?;
        if let Some(start) = stat.start_time_seconds {
            let start = ConstGauge::new(start);
            start.encode(encoder.encode_descriptor(
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds",
                None,
                start.metric_type(),
            )?)?;
        }
        if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
            let fds = ConstGauge::new(fds.count() as i64);
            fds.encode(encoder.encode_descriptor(
                "process_open_fds",
                "Number of open file descriptors",
                None,
                fds.metric_type(),
            )?)?;
        }
        Ok(())
    }
}

/// The few fields of /proc/self/stat the process metrics need.
#[derive(Debug, PartialEq)]
pub struct ProcStat {
    pub cpu_seconds: f64,
    pub rss_bytes: u64,
    pub start_time_seconds: Option<f64>,
}

impl ProcStat {
    fn read_self() -> Option<ProcStat> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        let boot_time = std::fs::read_to_string("/proc/stat").ok().and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("btime ")
                    .and_then(|v| v.trim().parse::<u64>().ok())
            })
        });
        // The kernel tells each process its clock tick and page size in the auxiliary vector
        // (arm64 kernels may use 16 or 64 KiB pages): no assumption, no libc call.
        let aux = Auxv::read_self()?;
        ProcStat::parse(&stat, aux.clock_ticks as f64, aux.page_size, boot_time)
    }

    /// Parses `/proc/<pid>/stat`. The command name (field 2) may contain spaces and parentheses,
    /// so fields are counted from the last `)`.
    pub fn parse(stat: &str, ticks_per_sec: f64, page_size: u64, boot_time: Option<u64>) -> Option<ProcStat> {
        let rest = &stat[stat.rfind(')')? + 1..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // After the name: state is field 3, utime 14, stime 15, starttime 22, rss 24 (1-based).
        let field = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<u64>().ok());
        let cpu_seconds = (field(14)? + field(15)?) as f64 / ticks_per_sec;
        let rss_bytes = field(24)? * page_size;
        let start_time_seconds = boot_time
            .zip(field(22))
            .map(|(b, s)| b as f64 + s as f64 / ticks_per_sec);
        Some(ProcStat {
            cpu_seconds,
            rss_bytes,
            start_time_seconds,
        })
    }
}

/// The values of the auxiliary vector the process metrics need.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Auxv {
    pub page_size: u64,
    pub clock_ticks: u64,
}

impl Auxv {
    const AT_PAGESZ: u64 = 6;
    const AT_CLKTCK: u64 = 17;

    fn read_self() -> Option<Auxv> {
        static AUXV: std::sync::OnceLock<Option<Auxv>> = std::sync::OnceLock::new();
        *AUXV.get_or_init(|| Auxv::parse(&std::fs::read("/proc/self/auxv").ok()?))
    }

    /// Parses `/proc/<pid>/auxv`: native-endian (key, value) pairs of machine words.
    pub fn parse(bytes: &[u8]) -> Option<Auxv> {
        const WORD: usize = std::mem::size_of::<usize>();
        let (mut page_size, mut clock_ticks) = (None, None);
        for pair in bytes.chunks_exact(2 * WORD) {
            let word = |b: &[u8]| -> Option<u64> { Some(usize::from_ne_bytes(b.try_into().ok()?) as u64) };
            match word(&pair[..WORD])? {
                0 => break,
                Self::AT_PAGESZ => page_size = word(&pair[WORD..]),
                Self::AT_CLKTCK => clock_ticks = word(&pair[WORD..]),
                _ => {}
            }
        }
        Some(Auxv {
            page_size: page_size.filter(|v| *v > 0)?,
            clock_ticks: clock_ticks.filter(|v| *v > 0)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_stat_with_awkward_command_name() {
        let line = "4242 (we ird) (name)) S 1 4242 4242 0 -1 4194560 500 0 0 0 150 50 0 0 20 0 8 0 1000 \
                    123456789 2560 18446744073709551615 0 0 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0";
        let s = ProcStat::parse(line, 100.0, 4096, Some(1_700_000_000)).unwrap();
        assert_eq!(s.cpu_seconds, 2.0);
        assert_eq!(s.rss_bytes, 2560 * 4096);
        assert_eq!(s.start_time_seconds, Some(1_700_000_010.0));
    }

    #[test]
    fn auxv_of_this_process_and_of_bytes() {
        let this = Auxv::read_self().expect("/proc/self/auxv names the page size and clock tick");
        assert!(
            this.page_size.is_power_of_two() && this.page_size >= 4096,
            "{this:?}"
        );
        assert!(this.clock_ticks > 0, "{this:?}");
        let words = |pairs: &[(usize, usize)]| -> Vec<u8> {
            pairs
                .iter()
                .flat_map(|(k, v)| [k.to_ne_bytes(), v.to_ne_bytes()].concat())
                .collect()
        };
        assert_eq!(
            Auxv::parse(&words(&[(3, 99), (6, 16384), (17, 250), (0, 0), (6, 1)])),
            Some(Auxv {
                page_size: 16384,
                clock_ticks: 250
            })
        );
        assert_eq!(Auxv::parse(&words(&[(6, 4096)])), None, "no clock tick");
        assert_eq!(Auxv::parse(b"short"), None);
    }

    #[test]
    fn proc_stat_garbage_is_none() {
        assert_eq!(ProcStat::parse("", 100.0, 4096, None), None);
        assert_eq!(ProcStat::parse("1 (x) S 1 2", 100.0, 4096, None), None);
    }

    #[test]
    fn encodes_build_info_panics_and_process_metrics() {
        let m = Metrics::new("operator");
        m.task_panics
            .get_or_create(&TaskLabels {
                task: "leader-election".into(),
            })
            .inc();
        let text = m.encode();
        assert!(text.contains("phylax_build_info{"), "{text}");
        assert!(text.contains("role=\"operator\""), "{text}");
        assert!(
            text.contains("phylax_task_panics_total{task=\"leader-election\"} 1"),
            "{text}"
        );
        assert!(text.contains("\nprocess_resident_memory_bytes "), "{text}");
        assert!(text.contains("\nprocess_cpu_seconds_total "), "{text}");
        assert!(!text.contains("phylax_process_"), "{text}");
        assert!(text.trim_end().ends_with("# EOF"), "{text}");
    }
}
