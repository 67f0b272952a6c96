//! Ephemeral data: data with a lifetime, enforced by the platform, and a signed certificate for
//! every destruction.

#[cfg(feature = "certificates")]
pub mod certificates;
#[cfg(feature = "certificates")]
pub mod verify_command;
