//! Validating webhooks.

pub mod secret_sync;
