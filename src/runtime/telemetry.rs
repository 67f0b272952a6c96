//! Logging: JSON lines by default (what log pipelines ingest), plain text for people.
//! The level comes from `RUST_LOG` (default `info`, with chatty client libraries at `warn`).

use clap::ValueEnum;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

#[derive(Clone, Copy, Debug, Default, ValueEnum, PartialEq, Eq)]
pub enum LogFormat {
    #[default]
    Json,
    Text,
}

/// Installs the global subscriber. Logs go to stdout; the process's last words on a fatal error go
/// to stderr as well (see `main`).
pub fn init(format: LogFormat) -> anyhow::Result<()> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(spec) if !spec.trim().is_empty() => EnvFilter::try_new(&spec).map_err(|e| {
            anyhow::anyhow!("RUST_LOG={spec:?} is not a valid log filter ({e}); use e.g. RUST_LOG=info or RUST_LOG=phylax=debug")
        })?,
        // Client libraries log every TPM handle and HTTP connection at info; keep their warnings.
        _ => EnvFilter::new("info,tss_esapi=warn,aws_config=warn,aws_smithy_runtime=warn,hyper_util=warn,rustify=warn,vaultrs=warn"),
    };
    let registry = tracing_subscriber::registry().with(filter);
    let result = match format {
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_span_list(false)
                    .with_target(true),
            )
            .try_init(),
        LogFormat::Text => registry
            .with(tracing_subscriber::fmt::layer().with_target(false))
            .try_init(),
    };
    result.map_err(|e| anyhow::anyhow!("cannot install the log subscriber: {e}"))
}
