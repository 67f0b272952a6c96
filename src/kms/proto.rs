//! Code generated at build time from `proto/kms` (see build.rs).
#![allow(clippy::all, clippy::pedantic, missing_docs)]

pub mod v2 {
    tonic::include_proto!("v2");
}

pub mod v1beta1 {
    tonic::include_proto!("v1beta1");
}
