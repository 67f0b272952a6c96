//! The admission HTTP API: `POST /validate/<name>` and `/mutate/<name>` with an AdmissionReview
//! body. Each handler runs on the blocking pool under a deadline; a handler that fails, panics or
//! runs late is answered by its failure policy, so the API server always gets an answer in time.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;

use super::review::{self, FailurePolicy, Handler, Verdict};
use crate::runtime::metrics::Metrics;

/// The API server sends whole objects; etcd refuses values over 1.5 MiB by default.
const MAX_BODY: usize = 8 * 1024 * 1024;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReviewLabels {
    webhook: &'static str,
    result: &'static str,
}

struct Entry {
    handler: Arc<dyn Handler>,
    policy: FailurePolicy,
}

pub struct Webhooks {
    /// Keyed by ("validate" | "mutate", name).
    entries: BTreeMap<(&'static str, &'static str), Entry>,
    timeout: Duration,
    reviews: Family<ReviewLabels, Counter>,
    latency: Family<ReviewLabels, Histogram>,
}

impl Webhooks {
    pub fn new(
        handlers: Vec<Arc<dyn Handler>>,
        policies: &[(String, FailurePolicy)],
        timeout: Duration,
        metrics: &Metrics,
    ) -> anyhow::Result<Arc<Webhooks>> {
        for (name, _) in policies {
            if !handlers.iter().any(|h| h.name() == name) {
                let known: Vec<&str> = handlers.iter().map(|h| h.name()).collect();
                anyhow::bail!(
                    "--failure-policy names webhook {name:?}, which does not exist; webhooks: {}",
                    known.join(", ")
                );
            }
        }
        let reviews = Family::<ReviewLabels, Counter>::default();
        metrics.register(
            "webhook_reviews",
            "Admission reviews by webhook and result",
            reviews.clone(),
        );
        let latency = Family::<ReviewLabels, Histogram>::new_with_constructor(|| {
            Histogram::new([0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 0.5, 1.0, 5.0])
        });
        metrics.register(
            "webhook_review_duration_seconds",
            "Admission review latency",
            latency.clone(),
        );
        let entries = handlers
            .into_iter()
            .map(|h| {
                let kind = if h.mutating() { "mutate" } else { "validate" };
                let policy = policies
                    .iter()
                    .find(|(n, _)| n == h.name())
                    .map_or(h.failure_policy(), |(_, p)| *p);
                ((kind, h.name()), Entry { handler: h, policy })
            })
            .collect();
        Ok(Arc::new(Webhooks {
            entries,
            timeout,
            reviews,
            latency,
        }))
    }
}

pub fn router(webhooks: Arc<Webhooks>) -> Router {
    Router::new()
        .route("/{kind}/{name}", post(review_route))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(webhooks)
}

fn bad_request(why: String) -> Response {
    (
        StatusCode::BAD_REQUEST,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        why + "\n",
    )
        .into_response()
}

async fn review_route(
    State(webhooks): State<Arc<Webhooks>>,
    Path((kind, name)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let started = Instant::now();
    let Some(((_, webhook), entry)) = webhooks
        .entries
        .iter()
        .find(|((k, n), _)| *k == kind && *n == name)
    else {
        let known: Vec<String> = webhooks
            .entries
            .keys()
            .map(|(k, n)| format!("/{k}/{n}"))
            .collect();
        return (
            StatusCode::NOT_FOUND,
            format!(
                "no webhook at /{kind}/{name}; this server has {}\n",
                known.join(", ")
            ),
        )
            .into_response();
    };
    let request = match review::decode(&body) {
        Ok(r) => r,
        Err(why) => {
            webhooks.count(webhook, "bad_request", started);
            return bad_request(why);
        }
    };
    let handler = entry.handler.clone();
    let for_handler = request.clone();
    let outcome = tokio::time::timeout(
        webhooks.timeout,
        tokio::task::spawn_blocking(move || handler.review(&for_handler)),
    )
    .await;
    let (verdict, result) = match outcome {
        Ok(Ok(Ok(Verdict::Patch { .. }))) if !entry.handler.mutating() => {
            failed(entry.policy, webhook, "a validating webhook returned a patch")
        }
        Ok(Ok(Ok(v))) => {
            let result = match &v {
                Verdict::Allow { .. } => "allowed",
                Verdict::Deny { .. } => "denied",
                Verdict::Patch { .. } => "patched",
            };
            (v, result)
        }
        Ok(Ok(Err(e))) => failed(entry.policy, webhook, &format!("{e:#}")),
        Ok(Err(_panic)) => failed(entry.policy, webhook, "the handler panicked"),
        Err(_) => failed(
            entry.policy,
            webhook,
            &format!("the handler did not answer within {:?}", webhooks.timeout),
        ),
    };
    webhooks.count(webhook, result, started);
    let review = review::respond(&request, verdict);
    match serde_json::to_vec(&review) {
        Ok(json) => ([(header::CONTENT_TYPE, "application/json")], json).into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot encode the response: {e}\n"),
        )
            .into_response(),
    }
}

fn failed(policy: FailurePolicy, webhook: &str, why: &str) -> (Verdict, &'static str) {
    tracing::warn!(webhook, error = %why, ?policy, "admission handler failed");
    match policy {
        FailurePolicy::Closed => (
            Verdict::deny(format!(
                "the Phylax {webhook} webhook could not check this request ({why}); it fails closed, so \
                 the request is refused: retry, or see the phylax-webhook logs"
            )),
            "error_denied",
        ),
        FailurePolicy::Open => (
            Verdict::Allow {
                warnings: vec![format!(
                    "the Phylax {webhook} webhook could not check this request ({why}); admitted unchecked"
                )],
            },
            "error_allowed",
        ),
    }
}

impl Webhooks {
    fn count(&self, webhook: &'static str, result: &'static str, started: Instant) {
        let labels = ReviewLabels { webhook, result };
        self.reviews.get_or_create(&labels).inc();
        self.latency
            .get_or_create(&labels)
            .observe(started.elapsed().as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use kube::core::DynamicObject;
    use kube::core::admission::AdmissionRequest;
    use serde_json::{Value, json};
    use tower::ServiceExt;

    struct Panics;
    impl Handler for Panics {
        fn name(&self) -> &'static str {
            "panics"
        }
        fn mutating(&self) -> bool {
            false
        }
        fn failure_policy(&self) -> FailurePolicy {
            FailurePolicy::Closed
        }
        fn review(&self, _: &AdmissionRequest<DynamicObject>) -> anyhow::Result<Verdict> {
            panic!("boom")
        }
    }

    struct Slow;
    impl Handler for Slow {
        fn name(&self) -> &'static str {
            "slow"
        }
        fn mutating(&self) -> bool {
            true
        }
        fn failure_policy(&self) -> FailurePolicy {
            FailurePolicy::Open
        }
        fn review(&self, _: &AdmissionRequest<DynamicObject>) -> anyhow::Result<Verdict> {
            // Stands for a handler stuck on I/O; the deadline, not this sleep, decides the answer.
            std::thread::sleep(Duration::from_millis(500));
            Ok(Verdict::allow())
        }
    }

    fn app_with(timeout: Duration) -> Router {
        let mut handlers = crate::webhook::handlers(crate::webhook::mutate::profiles::ProfileIndex::empty());
        handlers.push(Arc::new(Panics));
        handlers.push(Arc::new(Slow));
        let webhooks = Webhooks::new(handlers, &[], timeout, &Metrics::new("webhook")).unwrap();
        router(webhooks)
    }

    fn app() -> Router {
        app_with(Duration::from_secs(10))
    }

    fn pod_review(annotation: Option<&str>) -> Value {
        let mut pod = json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "namespace": "shop"},
            "spec": {"containers": [{"name": "c", "image": "busybox"}]}});
        if let Some(a) = annotation {
            pod["metadata"]["annotations"] = json!({"secrets.phylax.dev/sync": a});
        }
        json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
            "uid": "0b0e6a6c-1", "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "shop", "operation": "CREATE", "userInfo": {"username": "alice"},
            "object": pod, "dryRun": false}})
    }

    async fn post(path: &str, body: Vec<u8>) -> (StatusCode, Vec<u8>) {
        let resp = app()
            .oneshot(Request::post(path).body(Body::from(body)).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX).await.unwrap();
        (status, bytes.to_vec())
    }

    async fn answer(path: &str, review: &Value) -> Value {
        let (status, body) = post(path, serde_json::to_vec(review).unwrap()).await;
        assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["apiVersion"], "admission.k8s.io/v1");
        assert_eq!(
            v["response"]["uid"], "0b0e6a6c-1",
            "the response carries the request's uid"
        );
        v["response"].clone()
    }

    #[tokio::test]
    async fn a_bad_annotation_is_refused_and_a_good_one_admitted() {
        let r = answer(
            "/validate/secret-sync",
            &pod_review(Some("provider: p\npath: /x\n")),
        )
        .await;
        assert_eq!(r["allowed"], false);
        assert!(
            r["status"]["message"]
                .as_str()
                .unwrap()
                .contains("secretName is missing"),
            "{r}"
        );
        let good = "{provider: aws-prod, path: /prod/shop/config, secretName: shop-config}";
        assert_eq!(
            answer("/validate/secret-sync", &pod_review(Some(good))).await["allowed"],
            true
        );
        assert_eq!(
            answer("/validate/secret-sync", &pod_review(None)).await["allowed"],
            true
        );
    }

    #[tokio::test]
    async fn workload_templates_are_checked_too() {
        let mut review = pod_review(None);
        review["request"]["kind"] = json!({"group": "apps", "version": "v1", "kind": "Deployment"});
        review["request"]["object"] = json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "d"}, "spec": {"template": {"metadata": {"annotations":
            {"secrets.phylax.dev/sync": "[]"}}}}});
        let r = answer("/validate/secret-sync", &review).await;
        assert_eq!(r["allowed"], false);
        assert!(
            r["status"]["message"]
                .as_str()
                .unwrap()
                .starts_with("pod template:"),
            "{r}"
        );
    }

    #[tokio::test]
    async fn malformed_bodies_get_400_with_a_reason() {
        for (body, reason) in [
            (b"".to_vec(), "not an admission.k8s.io/v1 AdmissionReview"),
            (
                b"{\"apiVersion\":".to_vec(),
                "not an admission.k8s.io/v1 AdmissionReview",
            ),
            (b"[1,2]".to_vec(), "not an admission.k8s.io/v1 AdmissionReview"),
            (
                br#"{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview"}"#.to_vec(),
                "admissionReviewVersions",
            ),
            (
                br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#.to_vec(),
                "no request",
            ),
            (vec![0xff; 64], "not an admission.k8s.io/v1 AdmissionReview"),
        ] {
            let (status, text) = post("/validate/secret-sync", body).await;
            assert_eq!(status, StatusCode::BAD_REQUEST);
            let text = String::from_utf8_lossy(&text);
            assert!(text.contains(reason), "{text}");
        }
        let (status, text) = post("/validate/nope", b"{}".to_vec()).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert!(String::from_utf8_lossy(&text).contains("/validate/secret-sync"));
    }

    #[tokio::test]
    async fn a_failing_handler_is_answered_by_its_failure_policy_in_time() {
        let r = answer("/validate/panics", &pod_review(None)).await;
        assert_eq!(r["allowed"], false, "closed: refused");
        assert!(
            r["status"]["message"].as_str().unwrap().contains("panicked"),
            "{r}"
        );
        // The handler takes 500 ms, the deadline is 50 ms: the answer comes from the deadline.
        let body = serde_json::to_vec(&pod_review(None)).unwrap();
        let resp = app_with(Duration::from_millis(50))
            .oneshot(Request::post("/mutate/slow").body(Body::from(body)).unwrap())
            .await
            .unwrap();
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX).await.unwrap();
        let r = serde_json::from_slice::<Value>(&bytes).unwrap()["response"].clone();
        assert_eq!(r["allowed"], true, "open: admitted");
        assert!(r["warnings"][0].as_str().unwrap().contains("within"), "{r}");
    }
}
