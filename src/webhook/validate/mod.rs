//! Validating webhooks.

pub mod node_writes;
pub mod recording_claims;
pub mod secret_sync;
