//! The admin server every role runs: `/livez`, `/readyz` and `/metrics`.
//!
//! `/readyz` is only 200 when every readiness check the role registered passes (caches synced,
//! socket listening, leader known); its body names the checks that do not, for `kubectl describe`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::metrics::Metrics;

/// Named readiness checks. A role registers one per thing it waits for and flips it when ready.
#[derive(Clone, Debug, Default)]
pub struct Readiness {
    checks: Arc<Mutex<BTreeMap<&'static str, Arc<AtomicBool>>>>,
}

/// One readiness check, owned by the component it describes.
#[derive(Clone, Debug)]
pub struct ReadyFlag(Arc<AtomicBool>);

impl ReadyFlag {
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::Release);
    }
}

impl Readiness {
    /// Registers a check that starts out not ready.
    pub fn register(&self, name: &'static str) -> ReadyFlag {
        let flag = Arc::new(AtomicBool::new(false));
        self.checks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name, flag.clone());
        ReadyFlag(flag)
    }

    /// The names of the checks that do not pass yet; empty when ready. A role with no checks
    /// registered is not ready: every role has at least one thing to wait for.
    pub fn pending(&self) -> Vec<&'static str> {
        let checks = self.checks.lock().unwrap_or_else(|p| p.into_inner());
        if checks.is_empty() {
            return vec!["startup"];
        }
        checks
            .iter()
            .filter(|(_, f)| !f.load(Ordering::Acquire))
            .map(|(n, _)| *n)
            .collect()
    }
}

#[derive(Clone)]
struct AdminState {
    readiness: Readiness,
    metrics: Metrics,
}

pub fn router(readiness: Readiness, metrics: Metrics) -> Router {
    Router::new()
        .route("/livez", get(|| async { "ok\n" }))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_handler))
        .with_state(AdminState { readiness, metrics })
}

async fn readyz(State(state): State<AdminState>) -> impl IntoResponse {
    let pending = state.readiness.pending();
    if pending.is_empty() {
        (StatusCode::OK, "ok\n".to_owned())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", pending.join(", ")),
        )
    }
}

async fn metrics_handler(State(state): State<AdminState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
}

/// Binds the admin port, failing with an actionable message (the usual cause is another process,
/// or another role, on the same port).
pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|e| {
        let hint = match e.kind() {
            std::io::ErrorKind::AddrInUse => "another process is using it; pick a free one with --admin-addr",
            std::io::ErrorKind::PermissionDenied => "not permitted; use a port above 1023 with --admin-addr",
            _ => "choose another address with --admin-addr",
        };
        anyhow::anyhow!("cannot listen on {addr} for the admin server: {e}; {hint}")
    })
}

/// Serves until `shutdown` is cancelled.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    async fn get(router: &Router, path: &str) -> (StatusCode, String) {
        let resp = router
            .clone()
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn readyz_follows_every_registered_check() {
        let readiness = Readiness::default();
        let router = router(readiness.clone(), Metrics::new("test"));
        assert_eq!(
            get(&router, "/readyz").await.0,
            StatusCode::SERVICE_UNAVAILABLE,
            "no checks yet"
        );

        let cache = readiness.register("caches-synced");
        let leader = readiness.register("leader-known");
        let (status, body) = get(&router, "/readyz").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body, "not ready: caches-synced, leader-known\n");

        cache.set(true);
        let (status, body) = get(&router, "/readyz").await;
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::SERVICE_UNAVAILABLE, "not ready: leader-known\n")
        );

        leader.set(true);
        assert_eq!(get(&router, "/readyz").await, (StatusCode::OK, "ok\n".into()));

        cache.set(false);
        assert_eq!(
            get(&router, "/readyz").await.0,
            StatusCode::SERVICE_UNAVAILABLE,
            "readiness can be lost"
        );
    }

    #[tokio::test]
    async fn livez_and_metrics() {
        let router = router(Readiness::default(), Metrics::new("webhook"));
        assert_eq!(get(&router, "/livez").await, (StatusCode::OK, "ok\n".into()));
        let (status, body) = get(&router, "/metrics").await;
        assert_eq!(status, StatusCode::OK);
        assert!(body.contains("role=\"webhook\""), "{body}");
        assert_eq!(get(&router, "/nope").await.0, StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn port_in_use_is_an_actionable_error() {
        let taken = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let err = bind(taken.local_addr().unwrap()).await.unwrap_err().to_string();
        assert!(err.contains("--admin-addr") && err.contains("in use"), "{err}");
    }
}
