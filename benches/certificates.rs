//! Destruction-certificate benchmark (issue 17 (c)): `phylax verify-certificate --chain` on one
//! core over a chain of N certificates as `kubectl get destructioncertificates -o json` prints it
//! (goal: at least 10,000 certificates/s), and the library's `verify_chain` alone, one thread.
//!
//! Run: `cargo bench --bench certificates`. `PHYLAX_BENCH_CERTS` (default 10000) sets N.

#[path = "../tests/support/mod.rs"]
mod support;

use std::process::Command;
use std::time::Instant;

use phylax::ephemeral::certificates::{
    ChainHead, Facts, Method, PublicKeys, Resource, SigningKey, issue, verify_chain,
};
use serde_json::json;

fn main() {
    let n: u64 = std::env::var("PHYLAX_BENCH_CERTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let key = SigningKey::generate().expect("key");
    let mut head = ChainHead::genesis();
    let started = Instant::now();
    let certs: Vec<_> = (0..n)
        .map(|i| {
            let facts = Facts {
                certificate_id: format!("dc-{i:032x}"),
                resource: Resource {
                    type_: "kubernetes.secret".into(),
                    id: format!("team-{}/session-{i} (uid 6f1c2a4e-{i:012x})", i % 50),
                    classification: "TRANSIENT".into(),
                    metadata: [
                        ("reason".to_owned(), "expired".to_owned()),
                        ("ephemeralSecret".to_owned(), format!("session-{i}")),
                        ("keys".to_owned(), "password,username".to_owned()),
                    ]
                    .into(),
                },
                method: Method::Delete,
                destroyed_at: "2026-11-29T10:00:00Z".into(),
                verified_by: "phylax-operator/phylax-operator-7d9f-abcde".into(),
                created_at: "2026-11-29T09:00:00Z".into(),
                created_by: "phylax-operator".into(),
                access_count: None,
            };
            issue(facts, &mut head, &key).expect("issue")
        })
        .collect();
    let issued = started.elapsed();
    println!(
        "issued {n} certificates in {:.2} s: {:.0}/s (sign + canonicalise + hash, one thread)",
        issued.as_secs_f64(),
        n as f64 / issued.as_secs_f64()
    );

    let keys = PublicKeys::from_signing(&[&key]);
    let started = Instant::now();
    let report = verify_chain(&certs, &keys);
    let took = started.elapsed();
    assert!(report.problems.is_empty(), "{:?}", &report.problems[..1]);
    println!(
        "verify_chain: {n} certificates in {:.2} s: {:.0}/s (library, one thread)",
        took.as_secs_f64(),
        n as f64 / took.as_secs_f64()
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let list = dir.path().join("certificates.json");
    let items: Vec<_> = certs
        .iter()
        .enumerate()
        .map(|(i, c)| {
            json!({"apiVersion": "ephemeral.phylax.dev/v1alpha1", "kind": "DestructionCertificate",
                   "metadata": {"name": format!("dc-{i:08}"), "uid": format!("uid-{i}"), "resourceVersion": "1"},
                   "certificate": c})
        })
        .collect();
    std::fs::write(
        &list,
        json!({"apiVersion": "v1", "kind": "List", "items": items}).to_string(),
    )
    .expect("write");
    let keys_file = dir.path().join("keys.json");
    std::fs::write(&keys_file, json!({"data": keys.to_map()}).to_string()).expect("write");
    let size = std::fs::metadata(&list).map(|m| m.len()).unwrap_or(0);
    let started = Instant::now();
    let out = Command::new("taskset")
        .args(["-c", "0"])
        .arg(support::process::binary())
        .args(["verify-certificate", "--chain", "--keys"])
        .arg(&keys_file)
        .arg(&list)
        .output()
        .expect("run phylax verify-certificate (needs taskset)");
    let took = started.elapsed();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    println!(
        "phylax verify-certificate --chain (taskset -c 0, process start included): {n} certificates \
         ({:.1} MiB of JSON) in {:.2} s: {:.0}/s",
        size as f64 / (1024.0 * 1024.0),
        took.as_secs_f64(),
        n as f64 / took.as_secs_f64()
    );
}
