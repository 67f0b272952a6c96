//! KMS plugin benchmark (issue figures):
//!  1. Encrypt and Decrypt over the unix socket at concurrency 1 and 16 (one shared HTTP/2
//!     connection, as the API server uses): ops/s, p50 and p99, for the software and tpm providers.
//!  2. The real kube-apiserver creating 1,000 Secrets with the plugin (KMS v1, default DEK cache)
//!     versus with `identity`, each on a fresh control plane, several rounds.
//!
//! Run: `cargo bench --bench kms` (release build of the plugin; needs the test control plane and
//! swtpm, as the tests do). `PHYLAX_BENCH_OPS` (default 20000) sets operations per measurement,
//! `PHYLAX_BENCH_SECRETS` (default 1000) and `PHYLAX_BENCH_ROUNDS` (default 3) the API-server part.

#[path = "../tests/support/mod.rs"]
mod support;

#[path = "../tests/kms/plugin.rs"]
#[allow(dead_code)]
mod plugin;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::Api;
use kube::api::{ObjectMeta, PostParams};
use phylax::kms::proto::v2;

use plugin::Workdir;
use support::control_plane::{ControlPlane, Options};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Figures {
    ops_per_s: f64,
    p50: Duration,
    p99: Duration,
}

fn summarize(mut lat: Vec<Duration>, elapsed: Duration) -> Figures {
    lat.sort();
    let at = |q: f64| lat[((lat.len() as f64 * q) as usize).min(lat.len() - 1)];
    Figures {
        ops_per_s: lat.len() as f64 / elapsed.as_secs_f64(),
        p50: at(0.50),
        p99: at(0.99),
    }
}

#[derive(Clone, Copy)]
enum Method {
    Encrypt,
    Decrypt,
}

/// `ops` calls spread over `concurrency` tasks sharing one connection.
async fn measure(client: &plugin::V2Client, method: Method, concurrency: usize, ops: usize) -> Figures {
    let sample = client
        .clone()
        .encrypt(v2::EncryptRequest {
            plaintext: rand::random::<[u8; 32]>().to_vec(),
            uid: "bench".into(),
        })
        .await
        .expect("Encrypt")
        .into_inner();
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let mut client = client.clone();
        let next = next.clone();
        let sample = sample.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(ops / concurrency + 1);
            while next.fetch_add(1, Ordering::Relaxed) < ops {
                let t = Instant::now();
                match method {
                    Method::Encrypt => {
                        client
                            .encrypt(v2::EncryptRequest {
                                plaintext: rand::random::<[u8; 32]>().to_vec(),
                                uid: "bench".into(),
                            })
                            .await
                            .expect("Encrypt");
                    }
                    Method::Decrypt => {
                        client
                            .decrypt(v2::DecryptRequest {
                                ciphertext: sample.ciphertext.clone(),
                                uid: "bench".into(),
                                key_id: sample.key_id.clone(),
                                annotations: sample.annotations.clone(),
                            })
                            .await
                            .expect("Decrypt");
                    }
                }
                lat.push(t.elapsed());
            }
            lat
        }));
    }
    let mut all = Vec::with_capacity(ops);
    for t in tasks {
        all.extend(t.await.expect("bench task"));
    }
    summarize(all, started.elapsed())
}

async fn socket_bench(provider: &str, flags: &[&str], ops: usize) {
    let work = Workdir::new();
    let p = plugin::start_with(&work, flags).await;
    let client = plugin::v2_client(&work.socket()).await;
    // Warm up connection, allocator and caches.
    let _ = measure(&client, Method::Encrypt, 16, 2000).await;
    for method in [Method::Encrypt, Method::Decrypt] {
        for concurrency in [1, 16] {
            let n = if concurrency == 1 { ops / 4 } else { ops };
            let cpu_before = support::process::cpu_time(p.pid());
            let f = measure(&client, method, concurrency, n).await;
            let cpu = support::process::cpu_time(p.pid()) - cpu_before;
            println!(
                "| {provider} | {} | {concurrency} | {n} | {:.0} | {:.3} | {:.3} | {:.0} |",
                match method {
                    Method::Encrypt => "Encrypt",
                    Method::Decrypt => "Decrypt",
                },
                f.ops_per_s,
                f.p50.as_secs_f64() * 1e3,
                f.p99.as_secs_f64() * 1e3,
                cpu.as_secs_f64() * 1e6 / n as f64
            );
        }
    }
    drop(p);
}

/// Wall time for the API server to create `n` Secrets, 8 at a time.
async fn create_secrets(cp: &ControlPlane, n: usize) -> Duration {
    let client = support::cluster::client_for(&cp.kubeconfig).await;
    let ns_name = format!("bench-{}", support::random_suffix());
    Api::<Namespace>::all(client.clone())
        .create(
            &PostParams::default(),
            &Namespace {
                metadata: ObjectMeta {
                    name: Some(ns_name.clone()),
                    ..Default::default()
                },
                ..Default::default()
            },
        )
        .await
        .expect("create namespace");
    let secrets: Api<Secret> = Api::namespaced(client, &ns_name);
    // One warm-up write so connection set-up is not measured.
    let write = |api: Api<Secret>, name: String| async move {
        let s = Secret {
            metadata: ObjectMeta {
                name: Some(name),
                ..Default::default()
            },
            data: Some(BTreeMap::from([(
                "password".to_owned(),
                ByteString(rand::random::<[u8; 24]>().to_vec()),
            )])),
            ..Default::default()
        };
        api.create(&PostParams::default(), &s)
            .await
            .expect("create Secret");
    };
    write(secrets.clone(), "warm-up".into()).await;
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (api, next) = (secrets.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                write(api.clone(), format!("s-{i}")).await;
            }
        }));
    }
    for t in tasks {
        t.await.expect("writer");
    }
    started.elapsed()
}

async fn apiserver_bench(n: usize, rounds: usize) {
    let mut identity = Vec::new();
    let mut kms = Vec::new();
    for _ in 0..rounds {
        let cp = ControlPlane::start(Options {
            no_controller_manager: true,
            ..Default::default()
        })
        .await;
        identity.push(create_secrets(&cp, n).await);
        drop(cp);

        let work = Workdir::new();
        let key = work.key("kek");
        let p = plugin::start(&work, &[&key], &[]).await;
        let cp = ControlPlane::start(Options {
            encryption_config: Some(plugin::encryption_config(&work, None)),
            no_controller_manager: true,
            ..Default::default()
        })
        .await;
        kms.push(create_secrets(&cp, n).await);
        drop(cp);
        drop(p);
    }
    identity.sort();
    kms.sort();
    let median = |v: &[Duration]| v[v.len() / 2];
    let (i, k) = (median(&identity), median(&kms));
    println!("\nAPI server creating {n} Secrets (8 concurrent writers), median of {rounds} rounds:");
    println!("| storage | runs (s) | median (s) | Secrets/s |");
    println!("|---|---|---|---|");
    for (name, runs, m) in [("identity", &identity, i), ("kms (phylax, software)", &kms, k)] {
        let all: Vec<String> = runs.iter().map(|d| format!("{:.2}", d.as_secs_f64())).collect();
        println!(
            "| {name} | {} | {:.2} | {:.0} |",
            all.join(", "),
            m.as_secs_f64(),
            n as f64 / m.as_secs_f64()
        );
    }
    println!(
        "KMS vs identity: {:+.1}% time",
        (k.as_secs_f64() / i.as_secs_f64() - 1.0) * 100.0
    );
}

#[tokio::main]
async fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    // `cargo bench` passes --bench; nothing else is taken from the command line.
    let ops = env_usize("PHYLAX_BENCH_OPS", 20_000);
    println!("KMS v2 over the unix socket (one HTTP/2 connection; client and plugin on this machine)");
    println!("| provider | method | concurrency | ops | ops/s | p50 (ms) | p99 (ms) | plugin CPU/op (µs) |");
    println!("|---|---|---|---|---|---|---|---|");
    {
        let work = Workdir::new();
        let key = work.key("kek");
        let flag = format!("--key-file={}", key.display());
        socket_bench("software", &[&flag], ops).await;
    }
    if std::env::var_os("PHYLAX_BENCH_ONLY_SOFTWARE").is_some() {
        return;
    }
    {
        let work = Workdir::new();
        let tpm = support::swtpm::Swtpm::start(work.path("tpm")).await;
        let flags = [
            "--provider=tpm".to_owned(),
            format!("--tpm-tcti={}", tpm.tcti()),
            format!("--tpm-sealed-key={}", work.path("kek.sealed").display()),
            "--tpm-create-sealed-key".to_owned(),
            // A random 0600 file serves as the auth secret.
            format!("--tpm-auth-file={}", work.key("tpm-auth").display()),
        ];
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        socket_bench("tpm", &flags, ops).await;
    }
    apiserver_bench(
        env_usize("PHYLAX_BENCH_SECRETS", 1000),
        env_usize("PHYLAX_BENCH_ROUNDS", 3),
    )
    .await;
}
