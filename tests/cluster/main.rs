//! Integration tests against a real kube-apiserver and etcd: the local control plane built from
//! Debian's Kubernetes source, or the cluster named by `PHYLAX_TEST_KUBECONFIG`.

#[path = "../support/mod.rs"]
mod support;

mod leader_election;
mod manifests;
mod rbac;
mod webhook_scope;
