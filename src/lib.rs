//! Phylax: Kubernetes data protection in one binary. The library holds every role so that tests,
//! benchmarks and fuzz targets reach the same code the binary runs.

pub mod api;
pub mod cli;
pub mod deploy;
#[cfg(feature = "certificates")]
pub mod ephemeral;
#[cfg(feature = "keys")]
pub mod keys;
#[cfg(feature = "kms-plugin")]
pub mod kms;
#[cfg(feature = "node-agent")]
pub mod node_agent;
#[cfg(feature = "operator")]
pub mod operator;
#[cfg(feature = "outbound")]
pub mod outbound;
pub mod role;
pub mod runtime;
#[cfg(feature = "operator")]
pub mod secret_stores;
#[cfg(feature = "tokenizer")]
pub mod tokenizer;
pub mod version;
#[cfg(feature = "webhook")]
pub mod webhook;
