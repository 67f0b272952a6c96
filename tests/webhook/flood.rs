//! Anyone who can reach the webhook's port can send it reviews. A flood of large reviews sent
//! straight to the port must neither kill the webhook (the pod's memory limit is 256 MiB) nor
//! delay the API server's ordinary reviews past their timeout: pod creations through the API
//! server, with the webhook registered fail-closed, all succeed while the flood runs.

use std::sync::Arc;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::DeleteParams;
use serde_json::json;

use super::{Traffic, register, start_webhook, wait_active};
use crate::support::cluster::{TestNamespace, cluster};
use crate::support::tls::{Ca, SecretVolume};

/// The memory limit the rendered manifests give the webhook container.
const POD_MEMORY_LIMIT_KIB: u64 = 256 * 1024;

/// A Pod review of about 4.3 MiB (45,000 env entries): well-formed, under the body cap, and as
/// costly to parse as such a body can be made.
fn large_review() -> Bytes {
    let env: Vec<_> = (0..45_000)
        .map(|i| json!({"name": format!("FLOOD_VARIABLE_{i:06}"), "value": format!("padding-value-{i:06}-xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx")}))
        .collect();
    let review = json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
        "uid": "flood", "kind": {"group": "", "version": "v1", "kind": "Pod"},
        "resource": {"group": "", "version": "v1", "resource": "pods"},
        "namespace": "flood", "operation": "CREATE", "userInfo": {"username": "mallory"},
        "object": {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "big", "namespace": "flood"},
                   "spec": {"containers": [{"name": "c", "image": "busybox", "env": env}]}}}});
    Bytes::from(serde_json::to_vec(&review).expect("json"))
}

/// Peak resident memory of a process (VmHWM), in KiB.
fn peak_rss_kib(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// How one large review ended.
#[derive(Debug, PartialEq)]
enum Ending {
    Status(u16),
    /// The webhook answered early (503) and closed the connection while the body was still on its
    /// way: HTTP's way of turning away a body it will not read.
    Closed(String),
}

async fn connect(port: u16, ca_pem: &str) -> hyper::client::conn::http1::SendRequest<Full<Bytes>> {
    let config = crate::support::tls::client_config(ca_pem);
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("the webhook accepts connections");
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").expect("name");
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .expect("TLS handshake");
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .expect("HTTP handshake");
    tokio::spawn(conn);
    sender
}

/// Sends `count` large reviews on a keep-alive connection, opening a new one when the webhook
/// closes it.
async fn flood_connection(port: u16, ca_pem: String, body: Bytes, count: usize) -> Vec<Ending> {
    let mut sender = None;
    let mut endings = Vec::new();
    for _ in 0..count {
        let s = match sender.as_mut() {
            Some(s) => s,
            None => sender.insert(connect(port, &ca_pem).await),
        };
        let req = hyper::Request::post("/mutate/profiles")
            .header("host", "127.0.0.1")
            .header("content-type", "application/json")
            .body(Full::new(body.clone()))
            .expect("request");
        let ending = match s.send_request(req).await {
            Ok(resp) => {
                let status = resp.status().as_u16();
                match resp.into_body().collect().await {
                    Ok(_) => Ending::Status(status),
                    Err(e) => Ending::Closed(e.to_string()),
                }
            }
            Err(e) => Ending::Closed(e.to_string()),
        };
        if matches!(ending, Ending::Closed(_)) || s.ready().await.is_err() {
            sender = None;
        }
        endings.push(ending);
    }
    endings
}

#[tokio::test]
async fn a_flood_of_large_reviews_neither_kills_the_webhook_nor_delays_ordinary_ones() {
    let cluster = cluster();
    let client = cluster.client().await;
    let ns = TestNamespace::create(cluster, "flood").await;
    let ca = Ca::new("webhook-flood-ca");
    let tls = SecretVolume::new(ca.serving());
    let (mut webhook, port) = start_webhook(&tls, None).await;
    let config = register(&client, &ns, port, &ca.pem()).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    wait_active(&client, &ns, &pods).await;

    let traffic = Traffic::start(&pods, 2);
    traffic
        .wait_for_more(10, "ordinary reviews before the flood")
        .await;
    let body = large_review();
    assert!(body.len() > 4 * 1024 * 1024, "{} bytes", body.len());
    let flood: Vec<_> = (0..24)
        .map(|_| tokio::spawn(flood_connection(port, ca.pem(), body.clone(), 3)))
        .collect();
    // Ordinary reviews keep being admitted while the flood is under way.
    traffic
        .wait_for_more(20, "ordinary reviews during the flood")
        .await;
    let mut answered = 0;
    for f in flood {
        for ending in f.await.expect("flood task") {
            match ending {
                Ending::Status(200) => answered += 1,
                // Turned away: no room now (503), or its body took longer than the review's deadline
                // to arrive (408, the flood client shares two cores with everything else).
                Ending::Status(503 | 408) | Ending::Closed(_) => {}
                Ending::Status(s) => panic!("a large review got HTTP {s}"),
            }
        }
    }
    traffic.wait_for_more(5, "ordinary reviews after the flood").await;
    assert_eq!(traffic.stop().await, 0, "no ordinary review failed or timed out");
    assert!(
        answered > 0,
        "large reviews under the cap are served, not all turned away"
    );
    assert!(webhook.try_alive(), "the webhook survived the flood");
    let peak = peak_rss_kib(webhook.pid());
    eprintln!("flood: {answered} of 72 large reviews answered; webhook peak RSS {peak} KiB");
    assert!(
        peak < POD_MEMORY_LIMIT_KIB,
        "the webhook's peak memory {peak} KiB is over its pod's limit"
    );
    Api::<ValidatingWebhookConfiguration>::all(client)
        .delete(&config, &DeleteParams::default())
        .await
        .expect("delete configuration");
}
