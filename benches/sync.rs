//! Secret-sync benchmark on the real control plane with moto's Secrets Manager on loopback:
//! (a) 100 pods created at once across 20 namespaces, each asking for its own secret: time from
//!     the pod's create call to its Secret holding data (seen by a watch), p50/p99/max;
//! (b) 100 pods at once asking for the same secret: store calls made;
//! (c) operator RSS and CPU at rest after 1,000 annotated pods in 100 namespaces, and store calls
//!     during the rest (none expected: the operator does not poll stores).
//!
//! Run: `cargo bench --bench sync`. `PHYLAX_BENCH_IDLE_SECONDS` (default 20) sets the rest.

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret};
use kube::api::{DynamicObject, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use serde_json::json;
use support::control_plane::{ControlPlane, Options};
use support::moto::Moto;
use support::process::{Phylax, binary, cpu_time, rss_kib, run};
use support::wait::wait_for;

fn pod(name: &str, annotation: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "annotations": {"secrets.phylax.dev/sync": annotation}},
        "spec": {"containers": [{"name": "app", "image": "registry.example/app:1"}]},
    }))
    .expect("pod")
}

async fn namespaces(client: &Client, prefix: &str, n: usize) -> Vec<String> {
    let api: Api<Namespace> = Api::all(client.clone());
    let mut names = Vec::new();
    for i in 0..n {
        let name = format!("{prefix}-{i}");
        let ns: Namespace =
            serde_json::from_value(json!({"metadata": {"name": name, "labels": {"bench": "true"}}}))
                .expect("ns");
        api.create(&PostParams::default(), &ns).await.expect("namespace");
        names.push(name);
    }
    names
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

async fn syncs(op: &Phylax) -> f64 {
    op.metric_sum("phylax_secret_sync_syncs_total", &[])
        .await
        .unwrap_or(0.0)
}

async fn store_calls(op: &Phylax) -> f64 {
    op.metric_sum("phylax_secret_sync_store_calls_total", &[])
        .await
        .unwrap_or(0.0)
}

/// Creates pods with up to 32 create calls in flight; returns each pod's (namespace, secret) →
/// the instant its create call started.
async fn create_pods(
    client: &Client,
    pods: Vec<(String, String, String)>,
) -> HashMap<(String, String), Instant> {
    futures::stream::iter(pods)
        .map(|(ns, name, annotation)| {
            let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
            async move {
                let started = Instant::now();
                api.create(&PostParams::default(), &pod(&name, &annotation))
                    .await
                    .expect("create pod");
                ((ns, name), started)
            }
        })
        .buffer_unordered(32)
        .collect()
        .await
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(bench());
}

async fn bench() {
    let idle = Duration::from_secs(
        std::env::var("PHYLAX_BENCH_IDLE_SECONDS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(20),
    );
    // No controller-manager: pods are admitted without waiting for ServiceAccount tokens, and
    // nothing but the operator acts on them.
    let cp = ControlPlane::start(Options {
        no_controller_manager: true,
        ..Default::default()
    })
    .await;
    let client = support::cluster::client_for(&cp.kubeconfig).await;
    let (code, crds, err) = run(&binary(), &["crd"]);
    assert_eq!(code, 0, "{err}");
    let crd_api: Api<DynamicObject> = Api::all_with(
        client.clone(),
        &kube::api::ApiResource::erase::<
            k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
        >(&()),
    );
    for doc in crds.split("\n---\n").skip(1) {
        let obj: DynamicObject = serde_yaml::from_str(doc).expect("crd");
        let name = obj.metadata.name.clone().expect("name");
        crd_api
            .patch(&name, &PatchParams::apply("bench"), &Patch::Apply(&obj))
            .await
            .expect("apply crd");
    }
    let sp_api: Api<DynamicObject> = Api::all_with(
        client.clone(),
        &kube::api::ApiResource::erase::<phylax::api::secret_provider::SecretProvider>(&()),
    );
    let moto = Moto::start().await;
    let sm = moto.secrets_manager();
    let first = namespaces(&client, "bench-a", 20).await;
    let op_ns = namespaces(&client, "bench-op", 1).await.remove(0);
    for ns in &first {
        for i in 0..5 {
            sm.create_secret()
                .name(format!("/bench/{ns}/s{i}"))
                .secret_string(json!({"USER": "u", "PASSWORD": format!("p-{ns}-{i}")}).to_string())
                .send()
                .await
                .expect("create secret");
        }
    }
    sm.create_secret()
        .name("/bench/shared/same")
        .secret_string(r#"{"TOKEN":"t"}"#)
        .send()
        .await
        .expect("create shared secret");
    let sp: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "secrets.phylax.dev/v1alpha1", "kind": "SecretProvider", "metadata": {"name": "aws"},
        "spec": {"aws": {"region": "eu-west-1", "endpoint": moto.url},
                 "namespaces": {"selector": {"matchLabels": {"bench": "true"}}},
                 "paths": ["/bench/{namespace}/*", "/bench/shared/*"]}}))
    .expect("provider");
    wait_for("the SecretProvider CRD", Duration::from_secs(30), || async {
        sp_api
            .patch("aws", &PatchParams::apply("bench"), &Patch::Apply(&sp))
            .await
            .ok()
            .map(|_| ())
    })
    .await;

    let mut op = Phylax::start_with(
        binary(),
        "operator",
        &[
            &format!("--namespace={op_ns}"),
            "--leader-elect=false",
            "--manage-webhook-certs=false",
        ],
        Some(&cp.kubeconfig),
        &Moto::env(),
    );
    op.wait_ready(Duration::from_secs(30)).await;
    wait_for("secret sync to start", Duration::from_secs(30), || async {
        sp_api
            .get("aws")
            .await
            .ok()
            .filter(|o| {
                o.data["status"]["conditions"]
                    .as_array()
                    .is_some_and(|c| !c.is_empty())
            })
            .map(|_| ())
    })
    .await;

    // Every Secret's first moment with data, from one watch.
    let seen: Arc<Mutex<HashMap<(String, String), Instant>>> = Arc::default();
    let watch = {
        let seen = seen.clone();
        let api: Api<Secret> = Api::all(client.clone());
        tokio::spawn(async move {
            let cfg = watcher::Config::default().labels("app.kubernetes.io/managed-by=phylax");
            let mut stream = std::pin::pin!(watcher(api, cfg).default_backoff().applied_objects());
            while let Ok(Some(s)) = stream.try_next().await {
                if s.data.as_ref().is_some_and(|d| !d.is_empty()) {
                    let key = (
                        s.metadata.namespace.unwrap_or_default(),
                        s.metadata.name.unwrap_or_default(),
                    );
                    seen.lock().unwrap().entry(key).or_insert_with(Instant::now);
                }
            }
        })
    };

    // (a) 100 pods, 20 namespaces, each its own secret.
    let pods_a: Vec<_> = first
        .iter()
        .flat_map(|ns| {
            (0..5).map(move |i| {
                (
                    ns.clone(),
                    format!("s{i}"),
                    format!("{{provider: aws, path: /bench/{ns}/s{i}, secretName: s{i}}}"),
                )
            })
        })
        .collect();
    let created = create_pods(&client, pods_a).await;
    wait_for("100 Secrets", Duration::from_secs(120), || async {
        let seen = seen.lock().unwrap();
        created.keys().all(|k| seen.contains_key(k)).then_some(())
    })
    .await;
    let mut latencies: Vec<Duration> = {
        let seen = seen.lock().unwrap();
        created
            .iter()
            .map(|(k, t)| seen[k].saturating_duration_since(*t))
            .collect()
    };
    latencies.sort();

    // (b) 100 pods at once, one secret.
    let calls_before = store_calls(&op).await;
    let syncs_before = syncs(&op).await;
    let pods_b: Vec<_> = (0..100)
        .map(|i| {
            let ns = first[i % first.len()].clone();
            (
                ns,
                format!("same-{i}"),
                "{provider: aws, path: /bench/shared/same, secretName: same}".to_owned(),
            )
        })
        .collect();
    let started_b = Instant::now();
    create_pods(&client, pods_b).await;
    wait_for(
        "100 syncs of the same secret",
        Duration::from_secs(120),
        || async { (syncs(&op).await - syncs_before >= 100.0).then_some(()) },
    )
    .await;
    let burst_time = started_b.elapsed();
    let same_calls = store_calls(&op).await - calls_before;

    // (c) 1,000 annotated pods in 100 namespaces, then rest.
    let more = namespaces(&client, "bench-c", 80).await;
    let all: Vec<String> = first.iter().chain(more.iter()).cloned().collect();
    let syncs_before = syncs(&op).await;
    let pods_c: Vec<_> = (0..1000)
        .map(|i| {
            let ns = all[i % all.len()].clone();
            (
                ns,
                format!("c-{i}"),
                "{provider: aws, path: /bench/shared/same, secretName: same}".to_owned(),
            )
        })
        .collect();
    create_pods(&client, pods_c).await;
    wait_for("1,000 more syncs", Duration::from_secs(300), || async {
        (syncs(&op).await - syncs_before >= 1000.0).then_some(())
    })
    .await;
    let calls_before_rest = store_calls(&op).await;
    let cpu_before = cpu_time(op.pid());
    // The rest is what is measured: time passing with nothing to do.
    tokio::time::sleep(idle).await;
    let idle_cpu = cpu_time(op.pid()) - cpu_before;
    let rss = rss_kib(op.pid());
    let rest_calls = store_calls(&op).await - calls_before_rest;
    watch.abort();

    println!("secret sync benchmark (moto on loopback, local kube-apiserver 1.20, operator release build)");
    println!(
        "(a) 100 pods / 20 namespaces / own secrets: pod create → Secret with data p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        percentile(&latencies, 0.5).as_secs_f64() * 1e3,
        percentile(&latencies, 0.99).as_secs_f64() * 1e3,
        latencies.last().expect("latencies").as_secs_f64() * 1e3
    );
    println!(
        "(b) 100 pods at once, one secret: {same_calls} store call(s); all 100 synced in {:.0} ms",
        burst_time.as_secs_f64() * 1e3
    );
    println!(
        "(c) after 1,000 annotated pods in 100 namespaces, {}s at rest: RSS {:.1} MiB, CPU {} ms ({:.3}% of a core), {rest_calls} store calls",
        idle.as_secs(),
        rss as f64 / 1024.0,
        idle_cpu.as_millis(),
        idle_cpu.as_secs_f64() / idle.as_secs_f64() * 100.0
    );
    drop(op);
    drop(moto);
    drop(cp);
}
