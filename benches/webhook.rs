//! Admission webhook benchmark: validating reviews of a realistic Pod over TLS (HTTP/1.1 keep-alive
//! connections, as the API server uses), at a fixed 500 requests/s (open loop: latency counted
//! from each request's scheduled time, so a stall is not hidden) and at saturation. Reports p50/p99,
//! the webhook's CPU per 1,000 reviews, and its RSS.
//!
//! Then, side by side under wrk (16 keep-alive connections, the same review, the same certificate),
//! Phylax's validating route and a floor: a Go server using only the standard library that decodes
//! the review and allows it (`benches/webhook-baseline/main.go`). Needs `wrk` and `go`; without them
//! that part is skipped with a note.
//!
//! Run: `cargo bench --bench webhook`. `PHYLAX_BENCH_SECONDS` (default 10) sets each phase's length.

#[path = "../tests/support/mod.rs"]
mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose};
use rustls::pki_types::pem::PemObject;
use serde_json::json;
use support::process::{Phylax, cpu_time, rss_kib};

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

fn certificates(dir: &std::path::Path) -> String {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    params.distinguished_name.push(DnType::CommonName, "bench-ca");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().expect("key")).expect("ca");
    let key = KeyPair::generate().expect("key");
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .expect("params")
        .signed_by(&key, &ca)
        .expect("sign");
    std::fs::write(dir.join("tls.crt"), leaf.pem()).expect("cert");
    std::fs::write(dir.join("tls.key"), key.serialize_pem()).expect("key");
    ca.pem()
}

/// An AdmissionReview of a Pod like a real Deployment's: three containers, env, mounts, probes.
fn review_body() -> Bytes {
    let container = |name: &str| {
        json!({"name": name, "image": format!("registry.example/shop/{name}:1.4.2"),
               "ports": [{"containerPort": 8080, "protocol": "TCP"}],
               "env": (0..12).map(|i| json!({"name": format!("SETTING_{i}"), "value": format!("value-{i}")})).collect::<Vec<_>>(),
               "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "256Mi"}},
               "volumeMounts": [{"name": "config", "mountPath": "/etc/shop"}, {"name": "tmp", "mountPath": "/tmp"}],
               "readinessProbe": {"httpGet": {"path": "/ready", "port": 8080}, "periodSeconds": 5},
               "securityContext": {"runAsNonRoot": true, "readOnlyRootFilesystem": true,
                                   "capabilities": {"drop": ["ALL"]}}})
    };
    let pod = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "shop-7c9d8f6b5-x2k4q", "namespace": "shop", "generateName": "shop-7c9d8f6b5-",
                     "labels": {"app": "shop", "pod-template-hash": "7c9d8f6b5", "tier": "frontend"},
                     "annotations": {"secrets.phylax.dev/sync":
                        "- provider: aws-prod\n  path: /prod/shop/config\n  secretName: shop-config\n  keys: [DB_HOST, DB_PASSWORD]\n- provider: vault\n  path: kv/shop/api\n  secretName: shop-api\n"},
                     "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "shop-7c9d8f6b5",
                                          "uid": "6f1c2d3e-aaaa-bbbb-cccc-1234567890ab", "controller": true}]},
        "spec": {"containers": [container("web"), container("worker"), container("metrics")],
                 "volumes": [{"name": "config", "configMap": {"name": "shop"}}, {"name": "tmp", "emptyDir": {}}],
                 "serviceAccountName": "shop", "securityContext": {"runAsUser": 10001, "fsGroup": 10001}}});
    let review = json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
        "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
        "kind": {"group": "", "version": "v1", "kind": "Pod"},
        "resource": {"group": "", "version": "v1", "resource": "pods"},
        "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
        "requestResource": {"group": "", "version": "v1", "resource": "pods"},
        "namespace": "shop", "operation": "CREATE",
        "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller",
                     "groups": ["system:serviceaccounts", "system:authenticated"]},
        "object": pod, "oldObject": null, "dryRun": false,
        "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"}}});
    Bytes::from(serde_json::to_vec(&review).expect("json"))
}

async fn connect(port: u16, tls: &tokio_rustls::TlsConnector) -> Sender {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    tcp.set_nodelay(true).expect("nodelay");
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").expect("name");
    let stream = tls.connect(name, tcp).await.expect("TLS handshake");
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("HTTP/1.1 handshake");
    tokio::spawn(conn);
    sender
}

async fn one(sender: &mut Sender, body: &Bytes) {
    let req = hyper::Request::post("/validate/secret-sync")
        .header("host", "127.0.0.1")
        .header("content-type", "application/json")
        .body(Full::new(body.clone()))
        .expect("request");
    let resp = sender.send_request(req).await.expect("review");
    assert_eq!(resp.status(), 200);
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    assert!(
        bytes.windows(14).any(|w| w == b"\"allowed\":true"),
        "the review is admitted"
    );
}

fn percentile(sorted: &[Duration], q: f64) -> f64 {
    sorted[((sorted.len() as f64 * q) as usize).min(sorted.len() - 1)].as_secs_f64() * 1e3
}

struct Phase {
    name: String,
    latencies: Vec<Duration>,
    elapsed: Duration,
    cpu: Duration,
}

fn report(p: &mut Phase) {
    p.latencies.sort();
    let n = p.latencies.len();
    println!(
        "| {} | {} | {:.0} | {:.3} | {:.3} | {:.1} |",
        p.name,
        n,
        n as f64 / p.elapsed.as_secs_f64(),
        percentile(&p.latencies, 0.50),
        percentile(&p.latencies, 0.99),
        p.cpu.as_secs_f64() * 1e3 / n as f64 * 1000.0
    );
}

/// Open loop at `rate` requests/s over `conns` connections.
async fn fixed_rate(
    pid: i32,
    port: u16,
    tls: &tokio_rustls::TlsConnector,
    body: &Bytes,
    rate: u32,
    secs: u64,
) -> Phase {
    let conns = 16;
    let interval = Duration::from_secs(1) / rate;
    let total = rate as usize * secs as usize;
    let (tx, rx) = async_channel(conns);
    let mut workers = Vec::new();
    for _ in 0..conns {
        let mut sender = connect(port, tls).await;
        let (rx, body) = (rx.clone(), body.clone());
        workers.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            while let Ok(scheduled) = rx.recv().await {
                one(&mut sender, &body).await;
                lat.push(scheduled.elapsed());
            }
            lat
        }));
    }
    let cpu0 = cpu_time(pid);
    let start = Instant::now();
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    for i in 0..total {
        ticker.tick().await;
        let scheduled = start + interval * i as u32;
        tx.send(scheduled).await.expect("queue");
    }
    drop(tx);
    let mut latencies = Vec::with_capacity(total);
    for w in workers {
        latencies.extend(w.await.expect("worker"));
    }
    Phase {
        name: format!("{rate} req/s"),
        latencies,
        elapsed: start.elapsed(),
        cpu: cpu_time(pid) - cpu0,
    }
}

/// Closed loop: `conns` connections, each sending as fast as answers come back.
async fn saturation(
    pid: i32,
    port: u16,
    tls: &tokio_rustls::TlsConnector,
    body: &Bytes,
    conns: usize,
    secs: u64,
) -> Phase {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let cpu0 = cpu_time(pid);
    let start = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..conns {
        let mut sender = connect(port, tls).await;
        let body = body.clone();
        workers.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            while Instant::now() < deadline {
                let t = Instant::now();
                one(&mut sender, &body).await;
                lat.push(t.elapsed());
            }
            lat
        }));
    }
    let mut latencies = Vec::new();
    for w in workers {
        latencies.extend(w.await.expect("worker"));
    }
    Phase {
        name: format!("saturation, {conns} connections"),
        latencies,
        elapsed: start.elapsed(),
        cpu: cpu_time(pid) - cpu0,
    }
}

/// A small multi-consumer queue from tokio's primitives.
fn async_channel(cap: usize) -> (tokio::sync::mpsc::Sender<Instant>, SharedRx) {
    let (tx, rx) = tokio::sync::mpsc::channel(cap);
    (tx, SharedRx(Arc::new(tokio::sync::Mutex::new(rx))))
}

#[derive(Clone)]
struct SharedRx(Arc<tokio::sync::Mutex<tokio::sync::mpsc::Receiver<Instant>>>);

impl SharedRx {
    async fn recv(&self) -> Result<Instant, ()> {
        self.0.lock().await.recv().await.ok_or(())
    }
}

#[tokio::main]
async fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let secs: u64 = std::env::var("PHYLAX_BENCH_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = certificates(dir.path());
    let port = support::free_port();
    let args = [
        format!("--listen-addr=127.0.0.1:{port}"),
        format!("--tls-dir={}", dir.path().display()),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    // The webhook reads the cluster's ProfileBindings and profiles before it is ready.
    let cluster = support::cluster::cluster();
    support::cluster::install_crds(&cluster.client().await).await;
    let mut webhook = Phylax::start_with(
        support::process::binary(),
        "webhook",
        &args,
        Some(&cluster.kubeconfig),
        &std::collections::HashMap::from([("RUST_LOG", "info")]),
    );
    webhook.wait_ready(Duration::from_secs(20)).await;

    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(ca.as_bytes()) {
        roots.add(cert.expect("ca")).expect("root");
    }
    let tls = tokio_rustls::TlsConnector::from(Arc::new(
        rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    ));
    let body = review_body();
    // Warm-up.
    let _ = saturation(webhook.pid(), port, &tls, &body, 4, 1).await;

    println!(
        "Validating reviews of a {}-byte Pod AdmissionReview over TLS (HTTP/1.1 keep-alive)",
        body.len()
    );
    println!("| load | reviews | reviews/s | p50 (ms) | p99 (ms) | webhook CPU per 1,000 reviews (ms) |");
    println!("|---|---|---|---|---|---|");
    report(&mut fixed_rate(webhook.pid(), port, &tls, &body, 500, secs).await);
    report(&mut saturation(webhook.pid(), port, &tls, &body, 16, secs).await);
    println!("webhook RSS after the runs: {} KiB", rss_kib(webhook.pid()));

    side_by_side(dir.path(), port, &body, secs);
}

/// What wrk measured: reviews/s and the p50/p99 latency in ms.
struct Wrk {
    rate: f64,
    p50: f64,
    p99: f64,
}

fn wrk(port: u16, script: &std::path::Path, secs: u64) -> Result<Wrk, String> {
    let out = std::process::Command::new("wrk")
        .args(["-t2", "-c16", &format!("-d{secs}s"), "--latency", "-s"])
        .arg(script)
        .arg(format!("https://127.0.0.1:{port}/validate/secret-sync"))
        .output()
        .map_err(|e| format!("cannot run wrk ({e}); apt-get install wrk"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || text.contains("Non-2xx") || text.contains("Socket errors") {
        return Err(format!(
            "wrk reports failures:\n{text}{}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let field = |prefix: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(prefix).map(|v| v.trim().to_owned()))
            .ok_or_else(|| format!("no {prefix:?} in wrk's output:\n{text}"))
    };
    let ms = |v: String| -> Result<f64, String> {
        let (num, scale) = if let Some(n) = v.strip_suffix("us") {
            (n, 1e-3)
        } else if let Some(n) = v.strip_suffix("ms") {
            (n, 1.0)
        } else if let Some(n) = v.strip_suffix('s') {
            (n, 1e3)
        } else {
            return Err(format!("unknown latency unit in {v:?}"));
        };
        num.parse::<f64>()
            .map(|n| n * scale)
            .map_err(|e| format!("{v:?}: {e}"))
    };
    Ok(Wrk {
        rate: field("Requests/sec:")?
            .parse()
            .map_err(|e| format!("Requests/sec: {e}"))?,
        p50: ms(field("50%")?)?,
        p99: ms(field("99%")?)?,
    })
}

/// Phylax and the Go floor under the same wrk load, one after the other.
fn side_by_side(tls_dir: &std::path::Path, phylax_port: u16, body: &Bytes, secs: u64) {
    let script = tls_dir.join("review.lua");
    let text = String::from_utf8_lossy(body);
    assert!(!text.contains("]==]"), "the body fits a Lua long string");
    std::fs::write(
        &script,
        format!(
            "wrk.method = \"POST\"\nwrk.headers[\"Content-Type\"] = \"application/json\"\nwrk.body = [==[{text}]==]\n"
        ),
    )
    .expect("lua script");
    let baseline = tls_dir.join("baseline");
    let built = std::process::Command::new("go")
        .args(["build", "-o"])
        .arg(&baseline)
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/benches/webhook-baseline/main.go"
        ))
        .status();
    if !matches!(built, Ok(s) if s.success()) {
        println!("\n(side-by-side with wrk skipped: cannot build the Go baseline; install golang-go)");
        return;
    }
    let go_port = support::free_port();
    let mut go = std::process::Command::new(&baseline)
        .arg(format!("127.0.0.1:{go_port}"))
        .arg(tls_dir.join("tls.crt"))
        .arg(tls_dir.join("tls.key"))
        .spawn()
        .expect("start the Go baseline");
    let up = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", go_port)).is_err() {
        assert!(
            up.elapsed() < Duration::from_secs(10),
            "the Go baseline did not listen"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    println!(
        "\nSide by side under wrk (2 threads, 16 keep-alive connections, {secs} s each, {} B review):",
        body.len()
    );
    println!("| server | reviews/s | p50 (ms) | p99 (ms) |");
    println!("|---|---|---|---|");
    for (name, port) in [
        ("Go standard library (floor)", go_port),
        ("Phylax /validate/secret-sync", phylax_port),
    ] {
        // A short warm-up, then the measured run.
        let _ = wrk(port, &script, 1);
        match wrk(port, &script, secs) {
            Ok(w) => println!("| {name} | {:.0} | {:.3} | {:.3} |", w.rate, w.p50, w.p99),
            Err(e) => println!("| {name} | failed: {e} | | |"),
        }
    }
    let _ = go.kill();
    let _ = go.wait();
}
