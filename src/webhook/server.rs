//! The admission HTTP API: `POST /validate/<name>` and `/mutate/<name>` with an AdmissionReview
//! body. A handler that fails, panics or runs late is answered by its failure policy, so the API
//! server always gets an answer in time.
//!
//! Anything that reaches the port may send reviews, so what one caller can take is bounded: reviews
//! in flight (`--max-concurrent-reviews`), body size ([`MAX_BODY`]), and the memory that large bodies
//! may hold at once (`--max-review-memory-mib`). Reviews of ordinary size never wait for that
//! memory budget, so a flood of large bodies cannot delay them; a review that cannot start before
//! its deadline is answered 503, which the API server treats by the webhook's failure policy.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Path, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use tokio::sync::Semaphore;

use super::review::{self, FailurePolicy, Handler, Verdict};
use crate::runtime::metrics::Metrics;

/// The largest review accepted. The API server refuses request bodies over 3 MiB and etcd stores
/// objects up to 1.5 MiB, so an UPDATE review (object and oldObject) stays under 4.5 MiB plus
/// its envelope.
pub const MAX_BODY: usize = 5 * 1024 * 1024;

/// Bodies up to this size (a Pod review is typically 3 to 20 KiB) are read without taking from the
/// memory budget; `max_concurrent` already bounds what they hold together.
const SMALL_BODY: usize = 64 * 1024;

/// How much load the server takes on at once.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Deadline of one review, from its first byte to its answer.
    pub timeout: Duration,
    /// Reviews being read or decided at once.
    pub max_concurrent: usize,
    /// Bytes that bodies larger than [`SMALL_BODY`] may hold at once; at least [`MAX_BODY`].
    pub large_body_budget: usize,
}

impl Limits {
    pub fn new(timeout: Duration) -> Limits {
        Limits {
            timeout,
            max_concurrent: 128,
            large_body_budget: 32 * 1024 * 1024,
        }
    }
}

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
    in_flight: Arc<Semaphore>,
    /// In KiB, as semaphore permits.
    large_bodies: Arc<Semaphore>,
    reviews: Family<ReviewLabels, Counter>,
    latency: Family<ReviewLabels, Histogram>,
}

impl Webhooks {
    pub fn new(
        handlers: Vec<Arc<dyn Handler>>,
        policies: &[(String, FailurePolicy)],
        limits: Limits,
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
        if limits.max_concurrent == 0 {
            anyhow::bail!("--max-concurrent-reviews must be at least 1");
        }
        if limits.large_body_budget < MAX_BODY {
            anyhow::bail!(
                "--max-review-memory-mib must be at least {} (the largest review accepted)",
                MAX_BODY / (1024 * 1024)
            );
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
            timeout: limits.timeout,
            in_flight: Arc::new(Semaphore::new(limits.max_concurrent)),
            large_bodies: Arc::new(Semaphore::new(kib(limits.large_body_budget) as usize)),
            reviews,
            latency,
        }))
    }
}

fn kib(bytes: usize) -> u32 {
    u32::try_from(bytes.div_ceil(1024)).unwrap_or(u32::MAX)
}

pub fn router(webhooks: Arc<Webhooks>) -> Router {
    Router::new()
        .route("/{kind}/{name}", post(review_route))
        .with_state(webhooks)
}

fn plain(status: StatusCode, why: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        why + "\n",
    )
        .into_response()
}

async fn review_route(
    State(webhooks): State<Arc<Webhooks>>,
    Path((kind, name)): Path<(String, String)>,
    request: Request,
) -> Response {
    let started = Instant::now();
    let deadline = tokio::time::Instant::from_std(started + webhooks.timeout);
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
        return plain(
            StatusCode::NOT_FOUND,
            format!(
                "no webhook at /{kind}/{name}; this server has {}",
                known.join(", ")
            ),
        );
    };
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > MAX_BODY) {
        webhooks.count(webhook, "too_large", started);
        return plain(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the review is over {MAX_BODY} bytes, more than any object the API server stores"),
        );
    }
    let busy = |webhooks: &Webhooks, what: &str| {
        webhooks.count(webhook, "busy", started);
        plain(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the webhook is at its limit of {what}; retry"),
        )
    };
    let Ok(Ok(_slot)) = tokio::time::timeout_at(deadline, webhooks.in_flight.clone().acquire_owned()).await
    else {
        return busy(&webhooks, "reviews in flight");
    };
    // A body of unknown length may be as large as the largest accepted.
    let expected = declared.unwrap_or(MAX_BODY);
    let _memory = if expected > SMALL_BODY {
        match tokio::time::timeout_at(
            deadline,
            webhooks.large_bodies.clone().acquire_many_owned(kib(expected)),
        )
        .await
        {
            Ok(Ok(permit)) => Some(permit),
            _ => return busy(&webhooks, "memory for large reviews"),
        }
    } else {
        None
    };
    let body = match tokio::time::timeout_at(deadline, axum::body::to_bytes(request.into_body(), expected))
        .await
    {
        Ok(Ok(body)) => body,
        Ok(Err(e)) => {
            webhooks.count(webhook, "bad_request", started);
            return plain(
                StatusCode::BAD_REQUEST,
                format!(
                    "cannot read the body ({e}); it must be at most its Content-Length and {MAX_BODY} bytes"
                ),
            );
        }
        Err(_) => {
            webhooks.count(webhook, "bad_request", started);
            return plain(
                StatusCode::REQUEST_TIMEOUT,
                format!("the body did not arrive within {:?}", webhooks.timeout),
            );
        }
    };
    let request = match review::decode(&body) {
        Ok(r) => r,
        Err(why) => {
            webhooks.count(webhook, "bad_request", started);
            return plain(StatusCode::BAD_REQUEST, why);
        }
    };
    drop(body);
    let request = Arc::new(request);
    let outcome = if entry.handler.may_block() {
        // Runs on the blocking pool, holding its slot until it really ends, so handlers that
        // overrun their deadline still count against the limit.
        let (handler, for_handler) = (entry.handler.clone(), request.clone());
        let outcome = tokio::time::timeout_at(
            deadline,
            tokio::task::spawn_blocking(move || {
                let _slot = _slot;
                handler.review(&for_handler)
            }),
        )
        .await;
        match outcome {
            Ok(Ok(result)) => Outcome::Done(result),
            Ok(Err(_)) => Outcome::Panicked,
            Err(_) => Outcome::Late,
        }
    } else {
        let result =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| entry.handler.review(&request)));
        match result {
            Ok(result) => Outcome::Done(result),
            Err(_) => Outcome::Panicked,
        }
    };
    let (verdict, result) = match outcome {
        Outcome::Done(Ok(Verdict::Patch { .. })) if !entry.handler.mutating() => {
            failed(entry.policy, webhook, "a validating webhook returned a patch")
        }
        Outcome::Done(Ok(v)) => {
            let result = match &v {
                Verdict::Allow { .. } => "allowed",
                Verdict::Deny { .. } => "denied",
                Verdict::Patch { .. } => "patched",
            };
            (v, result)
        }
        Outcome::Done(Err(e)) => failed(entry.policy, webhook, &format!("{e:#}")),
        Outcome::Panicked => failed(entry.policy, webhook, "the handler panicked"),
        Outcome::Late => failed(
            entry.policy,
            webhook,
            &format!("the handler did not answer within {:?}", webhooks.timeout),
        ),
    };
    webhooks.count(webhook, result, started);
    let json = review::respond(&request, verdict);
    ([(header::CONTENT_TYPE, "application/json")], json).into_response()
}

enum Outcome {
    Done(anyhow::Result<Verdict>),
    Panicked,
    Late,
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
    use crate::webhook::review::Request as Review;
    use axum::body::Body;
    use axum::http::Request;
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
        fn review(&self, _: &Review) -> anyhow::Result<Verdict> {
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
        fn may_block(&self) -> bool {
            true
        }
        fn review(&self, _: &Review) -> anyhow::Result<Verdict> {
            // Stands for a handler stuck on I/O; the deadline, not this sleep, decides the answer.
            std::thread::sleep(Duration::from_millis(500));
            Ok(Verdict::allow())
        }
    }

    fn app_with(timeout: Duration) -> Router {
        let mut handlers = crate::webhook::handlers(
            crate::webhook::mutate::profiles::ProfileIndex::empty(),
            crate::webhook::validate::node_writes::NodeAgents::empty(),
        );
        handlers.push(Arc::new(Panics));
        handlers.push(Arc::new(Slow));
        let webhooks = Webhooks::new(handlers, &[], Limits::new(timeout), &Metrics::new("webhook")).unwrap();
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

    fn limited(limits: Limits) -> Router {
        let mut handlers = crate::webhook::handlers(
            crate::webhook::mutate::profiles::ProfileIndex::empty(),
            crate::webhook::validate::node_writes::NodeAgents::empty(),
        );
        handlers.push(Arc::new(Slow));
        router(Webhooks::new(handlers, &[], limits, &Metrics::new("webhook")).unwrap())
    }

    /// A request whose body is `declared` bytes long but never arrives: what a slow or hostile
    /// client holds open. Dropping the returned sender ends the body.
    fn stalled(
        path: &str,
        declared: usize,
    ) -> (
        Request<Body>,
        futures::channel::mpsc::Sender<Result<axum::body::Bytes, std::io::Error>>,
    ) {
        let (tx, rx) = futures::channel::mpsc::channel::<Result<axum::body::Bytes, std::io::Error>>(1);
        let req = Request::post(path)
            .header(header::CONTENT_LENGTH, declared)
            .body(Body::from_stream(rx))
            .unwrap();
        (req, tx)
    }

    #[tokio::test]
    async fn bodies_over_the_cap_are_refused_before_they_are_read() {
        let (req, _tx) = stalled("/validate/secret-sync", MAX_BODY + 1);
        let resp = app().oneshot(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
        // A body longer than it declared is cut off, not read on.
        let mut body = serde_json::to_vec(&pod_review(None)).unwrap();
        let declared = body.len();
        body.extend(std::iter::repeat_n(b' ', 4096));
        let resp = app()
            .oneshot(
                Request::post("/validate/secret-sync")
                    .header(header::CONTENT_LENGTH, declared)
                    .body(Body::from(body))
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_ne!(resp.status(), StatusCode::OK);
    }

    #[tokio::test]
    async fn a_handler_past_its_deadline_keeps_its_slot_and_the_next_review_is_told_to_retry() {
        let app = limited(Limits {
            timeout: Duration::from_millis(100),
            max_concurrent: 1,
            large_body_budget: MAX_BODY,
        });
        let body = serde_json::to_vec(&pod_review(None)).unwrap();
        let slow = app.clone().oneshot(
            Request::post("/mutate/slow")
                .body(Body::from(body.clone()))
                .unwrap(),
        );
        let next = async {
            // Starts once the slow review holds the only slot.
            tokio::task::yield_now().await;
            app.clone()
                .oneshot(
                    Request::post("/validate/secret-sync")
                        .body(Body::from(body.clone()))
                        .unwrap(),
                )
                .await
                .unwrap()
        };
        let (slow, next) = tokio::join!(slow, next);
        assert_eq!(
            slow.unwrap().status(),
            StatusCode::OK,
            "answered by its failure policy"
        );
        assert_eq!(next.status(), StatusCode::SERVICE_UNAVAILABLE);
        let text = axum::body::to_bytes(next.into_body(), usize::MAX).await.unwrap();
        assert!(String::from_utf8_lossy(&text).contains("reviews in flight"));
    }

    #[tokio::test]
    async fn large_bodies_in_flight_do_not_hold_up_ordinary_reviews() {
        let app = limited(Limits {
            timeout: Duration::from_millis(300),
            max_concurrent: 16,
            large_body_budget: MAX_BODY,
        });
        // One large review takes the whole budget and never finishes sending.
        let (first, _hold) = stalled("/mutate/profiles", MAX_BODY);
        let first = tokio::spawn(app.clone().oneshot(first));
        tokio::task::yield_now().await;
        // Another large one cannot start: 503 at its deadline, the API server applies the policy.
        let (second, _hold2) = stalled("/mutate/profiles", 1024 * 1024);
        let second = app.clone().oneshot(second).await.unwrap();
        assert_eq!(second.status(), StatusCode::SERVICE_UNAVAILABLE);
        // An ordinary review is answered meanwhile.
        let body = serde_json::to_vec(&pod_review(Some("{provider: p, path: /a, secretName: s}"))).unwrap();
        let ordinary = app
            .clone()
            .oneshot(
                Request::post("/validate/secret-sync")
                    .body(Body::from(body))
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(ordinary.status(), StatusCode::OK);
        // The stalled one is cut off at its deadline.
        assert_eq!(
            first.await.unwrap().unwrap().status(),
            StatusCode::REQUEST_TIMEOUT
        );
    }
}
