//! Validating webhooks.

pub mod node_writes;
pub mod secret_sync;
