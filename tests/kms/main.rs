//! The kms-plugin role end to end: its gRPC services over the unix socket (a Rust client and
//! grpcurl), and the real kube-apiserver encrypting Secrets into etcd through it.

#[path = "../support/mod.rs"]
mod support;

mod apiserver;
#[cfg(feature = "aws")]
mod aws;
mod grpcurl;
mod plugin;
#[cfg(feature = "tpm")]
mod static_binary;
#[cfg(feature = "tpm")]
mod tpm;
mod v1_protocol;
mod v2_protocol;
#[cfg(feature = "vault")]
mod vault;
#[cfg(feature = "vault")]
mod vault_double;
