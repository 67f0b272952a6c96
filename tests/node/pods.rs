//! The manifests' pods as the kubelet runs them: users and read-only root filesystems checked on
//! the containers' processes themselves, not on the specs.

use std::fs;

use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::ListParams;

use crate::{NS, client, shared};

/// Processes whose cgroup names the container (containerd's id is the cgroup's last element).
fn container_pids(container_id: &str) -> Vec<i32> {
    fs::read_dir("/proc")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
                .filter(|pid| {
                    fs::read_to_string(format!("/proc/{pid}/cgroup"))
                        .is_ok_and(|c| c.lines().any(|l| l.ends_with(container_id)))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// (real, effective) uid of a process.
fn uids(pid: i32) -> (i64, i64) {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .expect("Uid line");
    let ids: Vec<i64> = line.split_whitespace().filter_map(|v| v.parse().ok()).collect();
    (ids[0], ids[1])
}

/// Whether the process's root mount is read-only.
fn root_read_only(pid: i32) -> bool {
    let info = fs::read_to_string(format!("/proc/{pid}/mountinfo")).expect("mountinfo");
    // The last mount on "/" is the one the process sees.
    let root = info
        .lines()
        .rfind(|l| l.split(' ').nth(4) == Some("/"))
        .expect("a root mount");
    root.split(' ')
        .nth(5)
        .is_some_and(|o| o.split(',').any(|f| f == "ro"))
}

#[tokio::test]
async fn every_phylax_pod_runs_as_its_manifest_says_non_root_and_read_only() {
    shared();
    let pods: Api<Pod> = Api::namespaced(client().await, NS);
    let list = pods.list(&ListParams::default()).await.expect("list pods");
    let mut roles = std::collections::BTreeMap::<String, usize>::new();
    for pod in list.items {
        let name = pod.metadata.name.clone().unwrap_or_default();
        let spec = pod.spec.expect("spec");
        let statuses = pod.status.and_then(|s| s.container_statuses).unwrap_or_default();
        for c in &spec.containers {
            let sc = c.security_context.clone().unwrap_or_default();
            let want_uid = sc.run_as_user.expect("every Phylax container names its user");
            assert_eq!(
                sc.read_only_root_filesystem,
                Some(true),
                "{name}/{}: the manifest asks for a read-only root",
                c.name
            );
            let id = statuses
                .iter()
                .find(|s| s.name == c.name)
                .and_then(|s| s.container_id.clone())
                .unwrap_or_else(|| panic!("{name}/{} has no container id", c.name));
            let id = id.trim_start_matches("containerd://");
            let pids = container_pids(id);
            assert!(
                !pids.is_empty(),
                "{name}/{}: no process in the container's cgroup",
                c.name
            );
            for pid in pids {
                assert_eq!(uids(pid), (want_uid, want_uid), "{name}/{} pid {pid}", c.name);
                assert!(
                    root_read_only(pid),
                    "{name}/{} pid {pid}: the root filesystem is writable",
                    c.name
                );
            }
            // Only the node agent (it reads /dev/kmsg and writes the kubelet's seccomp
            // directory) runs as root; the manifest says so with runAsNonRoot: false.
            if c.name != "node-agent" {
                assert_eq!(want_uid, 65532, "{name}/{}", c.name);
                assert_eq!(sc.run_as_non_root, Some(true), "{name}/{}", c.name);
            }
            *roles.entry(c.name.clone()).or_default() += 1;
        }
    }
    assert_eq!(roles.get("operator"), Some(&2), "{roles:?}");
    assert_eq!(roles.get("webhook"), Some(&2), "{roles:?}");
    assert_eq!(roles.get("node-agent"), Some(&1), "{roles:?}");
}
