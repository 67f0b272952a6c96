//! Security-profile benchmark on the real control plane:
//! (a) 500 SeccompProfiles created (8 create calls in flight), two Nodes each with a node agent on
//!     its own kubelet root, the operator keeping statuses: time from a profile's create call to
//!     its file on both nodes, p50/p99/max (files seen by scanning both directories every 2 ms);
//! (b) each node agent's RSS with the 500 profiles installed and reported;
//! (c) audit lines parsed per second by the recorder's parser, over a mix of kmsg and auditd
//!     seccomp records, records a process wrote to /dev/kmsg (refused) and other kernel lines.
//!
//! Run: `cargo bench --bench profiles`. `PHYLAX_BENCH_PROFILES` (default 500) sets the count;
//! `PHYLAX_STATIC_BIN` runs the node agents and the operator from that binary (the static musl
//! build the images ship, from `scripts/build-static.sh`) instead of this build's.

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::Api;
use kube::api::{ListParams, PostParams};
use serde_json::json;
use support::control_plane::{ControlPlane, Options};
use support::process::{Phylax, rss_kib};
use support::wait::wait_for;

use phylax::api::profiles::SeccompProfile;
use phylax::node_agent::recorder::audit;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn profile(i: usize) -> SeccompProfile {
    serde_json::from_value(json!({
        "apiVersion": "profiles.phylax.dev/v1alpha1", "kind": "SeccompProfile",
        "metadata": {"name": format!("bench-{i:04}")},
        "spec": {"defaultAction": "SCMP_ACT_ERRNO", "architectures": ["SCMP_ARCH_X86_64"],
            "syscalls": [
                {"names": ["read", "write", "openat", "close", "fstat", "mmap", "mprotect", "munmap", "brk",
                           "rt_sigaction", "rt_sigprocmask", "ioctl", "pread64", "access", "execve",
                           "exit_group", "futex", "epoll_wait", "accept4", "sendto", "recvfrom"],
                 "action": "SCMP_ACT_ALLOW"},
                {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
                 "args": [{"index": 0, "value": 8, "op": "SCMP_CMP_EQ"}]},
                {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13}]}
    }))
    .expect("profile")
}

fn audit_corpus(n: usize) -> Vec<(audit::Origin, Vec<u8>)> {
    (0..n)
        .map(|i| {
            let line = match i % 4 {
                0 | 2 => format!("{},{i},41294998173,-;audit: type=1326 audit(1795422987.997:{i}): auid=4294967295 uid=0 gid=0 ses=4294967295 pid={} comm=\"app\" exe=\"/usr/bin/app\" sig=0 arch=c000003e syscall={} compat=0 ip=0x7f7ddcdf2b07 code=0x7ffc0000", if i % 4 == 0 { 5 } else { 13 }, 1000 + i % 50, i % 300),
                1 => format!("type=SECCOMP msg=audit(1795422987.997:{i}): auid=4294967295 uid=0 gid=0 ses=4294967295 subj=unconfined pid={} comm=\"app\" exe=\"/usr/bin/app\" sig=0 arch=c000003e syscall={} compat=0 ip=0x7f7ddcdf44f7 code=0x7ffc0000", 2000 + i % 50, i % 300),
                _ => format!("6,{i},41294998180,-;eth0: renamed from veth{i}; IPv6: ADDRCONF(NETDEV_CHANGE): link becomes ready"),
            };
            let origin = if i % 4 == 1 { audit::Origin::AuditLog } else { audit::Origin::Kmsg };
            (origin, line.into_bytes())
        })
        .collect()
}

#[tokio::main]
async fn main() {
    let count: usize = std::env::var("PHYLAX_BENCH_PROFILES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500);

    // (c) first: no cluster needed.
    let corpus = audit_corpus(1_000_000);
    let mut records = 0usize;
    let started = Instant::now();
    for (origin, line) in &corpus {
        if let Ok(Some(r)) = audit::parse(std::hint::black_box(line), *origin) {
            records += 1;
            std::hint::black_box(r);
        }
    }
    let parse = started.elapsed();
    assert_eq!(records, 500_000);

    let cp = ControlPlane::start(Options {
        no_controller_manager: true,
        ..Default::default()
    })
    .await;
    let client = support::cluster::client_for(&cp.kubeconfig).await;
    support::cluster::install_crds(&client).await;
    let exe = std::env::var_os("PHYLAX_STATIC_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(support::process::binary);
    let mut roots = Vec::new();
    let mut agents = Vec::new();
    for i in 1..=2 {
        let name = format!("bench-node-{i}");
        let node: Node = serde_json::from_value(json!({"metadata": {"name": name}})).expect("node");
        Api::<Node>::all(client.clone())
            .create(&PostParams::default(), &node)
            .await
            .expect("node");
        let root = tempfile::tempdir().expect("kubelet root");
        let args = [
            format!("--node-name={name}"),
            format!("--kubelet-root={}", root.path().display()),
            "--audit-source=none".to_owned(),
            "--namespace=default".to_owned(),
        ];
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut agent = Phylax::start_with(
            exe.clone(),
            "node-agent",
            &args,
            Some(&cp.kubeconfig),
            &HashMap::from([("RUST_LOG", "warn")]),
        );
        agent.wait_ready(Duration::from_secs(30)).await;
        agents.push(agent);
        roots.push(root);
    }
    let mut operator = Phylax::start_with(
        exe.clone(),
        "operator",
        &[
            "--namespace=default",
            "--leader-elect=false",
            "--manage-webhook-certs=false",
            "--secret-sync=false",
        ],
        Some(&cp.kubeconfig),
        &HashMap::from([("RUST_LOG", "warn")]),
    );
    operator.wait_ready(Duration::from_secs(30)).await;

    // Scans both profile directories every 2 ms; notes when each file first appears on each.
    let dirs: Vec<PathBuf> = roots.iter().map(|r| r.path().join("seccomp/phylax")).collect();
    let seen: Arc<Mutex<Vec<HashMap<String, Instant>>>> = Arc::new(Mutex::new(vec![HashMap::new(); 2]));
    let scanning = {
        let seen = seen.clone();
        std::thread::spawn(move || {
            loop {
                for (i, dir) in dirs.iter().enumerate() {
                    if let Ok(entries) = std::fs::read_dir(dir) {
                        let now = Instant::now();
                        let mut seen = seen.lock().expect("seen");
                        for e in entries.flatten() {
                            if let Some(name) = e.file_name().to_str().and_then(|n| n.strip_suffix(".json")) {
                                seen[i].entry(name.to_owned()).or_insert(now);
                            }
                        }
                    }
                }
                if seen.lock().expect("seen").iter().all(|m| m.len() >= count) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        })
    };

    let api: Api<SeccompProfile> = Api::all(client.clone());
    let created: HashMap<String, Instant> = futures::stream::iter(0..count)
        .map(|i| {
            let api = api.clone();
            async move {
                let p = profile(i);
                let started = Instant::now();
                api.create(&PostParams::default(), &p)
                    .await
                    .expect("create profile");
                (format!("bench-{i:04}"), started)
            }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    scanning.join().expect("scanner");
    let seen = seen.lock().expect("seen").clone();
    let mut latencies: Vec<Duration> = created
        .iter()
        .map(|(name, t0)| {
            let last = seen.iter().map(|m| m[name]).max().expect("two nodes");
            last.saturating_duration_since(*t0)
        })
        .collect();
    latencies.sort();

    // Every profile reported by both agents and aggregated: then the agents' memory.
    wait_for("every profile Installed", Duration::from_secs(300), || async {
        let list = api.list(&ListParams::default()).await.ok()?;
        let installed = list
            .items
            .iter()
            .filter(|p| p.status.as_ref().and_then(|s| s.state.as_deref()) == Some("Installed"))
            .count();
        (installed >= count).then_some(())
    })
    .await;
    let rss: Vec<u64> = agents.iter().map(|a| rss_kib(a.pid())).collect();

    println!(
        "security profiles benchmark (local kube-apiserver 1.20 + etcd, 2 Nodes, 2 cores; agents and operator: {})",
        exe.display()
    );
    println!(
        "(a) {count} SeccompProfiles, 8 creates in flight: create call -> file on both nodes: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        percentile(&latencies, 0.5).as_secs_f64() * 1e3,
        percentile(&latencies, 0.99).as_secs_f64() * 1e3,
        latencies.last().expect("latencies").as_secs_f64() * 1e3,
    );
    println!(
        "(b) node agent RSS with {count} profiles installed and reported: {}",
        rss.iter()
            .map(|k| format!("{:.1} MiB", *k as f64 / 1024.0))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "(c) audit lines parsed: {} lines in {:.0} ms = {:.0} lines/s ({} seccomp records)",
        corpus.len(),
        parse.as_secs_f64() * 1e3,
        corpus.len() as f64 / parse.as_secs_f64(),
        records
    );
    drop(operator);
    drop(agents);
}
