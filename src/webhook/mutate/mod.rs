//! Mutating webhooks: they may change what they admit.

pub mod profiles;
