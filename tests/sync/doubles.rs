//! Test doubles — no real server can be had here — of the parts of two vendors' documented HTTP
//! APIs that the stores use:
//! - HashiCorp Vault: `GET /v1/sys/health`, `POST /v1/auth/<mount>/login` (Kubernetes auth:
//!   like Vault, it checks the JWT with a TokenReview at the real API server — the account it
//!   names and the role's audience), `GET /v1/<mount>/data/<path>` (KV v2), with Vault's JSON
//!   envelopes and status codes (403 permission denied, 404 not found, 503 sealed);
//! - Azure Key Vault and Microsoft Entra ID: `POST /<tenant>/oauth2/v2.0/token` (client
//!   credentials), `GET /secrets/<name>?api-version=7.4`, `GET /secrets` (list), with their error
//!   bodies and 429 + `Retry-After`.
//!
//! Plus a TCP relay that can be cut and restored, to make a real store unreachable and back.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

async fn serve(router: Router) -> (u16, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    (port, task)
}

fn reply(code: u16, body: Value) -> Response {
    (
        StatusCode::from_u16(code).expect("status"),
        [("content-type", "application/json")],
        body.to_string(),
    )
        .into_response()
}

// ---------------------------------------------------------------------------------------------
// Vault

/// Who may log in to the Vault double's Kubernetes auth role, as Vault's role configuration says:
/// bound ServiceAccount and audience, checked through a TokenReview.
pub struct VaultBinding {
    pub reviewer: kube::Client,
    pub namespace: String,
    pub service_account: String,
    pub audience: String,
}

#[derive(Default)]
pub struct VaultState {
    pub binding: Option<VaultBinding>,
    /// The `system:serviceaccount:...` user of each accepted login.
    pub logged_in_as: Mutex<Vec<String>>,
    /// Every X-Vault-Token presented on reads.
    pub tokens_seen: Mutex<Vec<String>>,
    pub role: String,
    pub token: String,
    pub secrets: Mutex<HashMap<String, Value>>,
    pub denied: Mutex<HashSet<String>>,
    pub sealed: AtomicBool,
    pub reads: AtomicUsize,
    pub logins: AtomicUsize,
}

pub struct VaultDouble {
    pub url: String,
    pub state: Arc<VaultState>,
    task: JoinHandle<()>,
}

impl VaultDouble {
    pub async fn start(binding: VaultBinding, role: &str) -> VaultDouble {
        let state = Arc::new(VaultState {
            binding: Some(binding),
            role: role.into(),
            token: "hvs.test-double-token".into(),
            ..Default::default()
        });
        let router = Router::new()
            .route("/v1/sys/health", get(vault_health))
            .route("/v1/auth/kubernetes/login", post(vault_login))
            .route("/v1/secret/data/{*path}", get(vault_read))
            .with_state(state.clone());
        let (port, task) = serve(router).await;
        VaultDouble {
            url: format!("http://127.0.0.1:{port}"),
            state,
            task,
        }
    }
}

impl Drop for VaultDouble {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn vault_health(State(s): State<Arc<VaultState>>) -> Response {
    if s.sealed.load(Ordering::SeqCst) {
        return reply(503, json!({"initialized": true, "sealed": true, "standby": true}));
    }
    reply(
        200,
        json!({"initialized": true, "sealed": false, "standby": false, "version": "1.15.0"}),
    )
}

async fn vault_login(State(s): State<Arc<VaultState>>, body: Bytes) -> Response {
    s.logins.fetch_add(1, Ordering::SeqCst);
    let Ok(req) = serde_json::from_slice::<Value>(&body) else {
        return reply(400, json!({"errors": ["failed to parse JSON input"]}));
    };
    if req["role"] != s.role.as_str() {
        return reply(403, json!({"errors": ["permission denied"]}));
    }
    let Some(user) = review(&s, req["jwt"].as_str().unwrap_or_default()).await else {
        return reply(403, json!({"errors": ["permission denied"]}));
    };
    s.logged_in_as.lock().unwrap().push(user);
    reply(
        200,
        json!({"request_id": "r1", "lease_id": "", "renewable": false, "lease_duration": 0, "data": null,
               "wrap_info": null, "warnings": null,
               "auth": {"client_token": s.token, "accessor": "acc", "policies": ["default", "shop"],
                        "token_policies": ["default", "shop"], "metadata": {"role": s.role},
                        "lease_duration": 3600, "renewable": true, "entity_id": "e1",
                        "token_type": "service", "orphan": true}}),
    )
}

/// Vault's check of a Kubernetes login: a TokenReview for the role's audience, then the bound
/// ServiceAccount. The user name on success.
async fn review(s: &VaultState, jwt: &str) -> Option<String> {
    use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
    let b = s.binding.as_ref()?;
    let request = TokenReview {
        spec: TokenReviewSpec {
            token: Some(jwt.to_owned()),
            audiences: Some(vec![b.audience.clone()]),
        },
        ..Default::default()
    };
    let answer = kube::Api::<TokenReview>::all(b.reviewer.clone())
        .create(&Default::default(), &request)
        .await
        .ok()?;
    let status = answer.status?;
    let user = status.user?.username?;
    let expected = format!("system:serviceaccount:{}:{}", b.namespace, b.service_account);
    (status.authenticated == Some(true) && user == expected).then_some(user)
}

async fn vault_read(
    State(s): State<Arc<VaultState>>,
    Path(path): Path<String>,
    headers: HeaderMap,
) -> Response {
    if s.sealed.load(Ordering::SeqCst) {
        return reply(503, json!({"errors": ["Vault is sealed"]}));
    }
    let presented = headers
        .get("x-vault-token")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    s.tokens_seen.lock().unwrap().push(presented.to_owned());
    if presented != s.token.as_str() {
        return reply(403, json!({"errors": ["permission denied"]}));
    }
    s.reads.fetch_add(1, Ordering::SeqCst);
    if s.denied.lock().unwrap().contains(&path) {
        return reply(
            403,
            json!({"errors": ["1 error occurred:\n\t* permission denied\n\n"]}),
        );
    }
    match s.secrets.lock().unwrap().get(&path) {
        None => reply(404, json!({"errors": []})),
        Some(data) => reply(
            200,
            json!({"request_id": "r2", "lease_id": "", "renewable": false, "lease_duration": 0,
                   "data": {"data": data, "metadata": {"created_time": "2026-11-23T00:00:00Z",
                            "custom_metadata": null, "deletion_time": "", "destroyed": false, "version": 1}},
                   "wrap_info": null, "warnings": null, "auth": null}),
        ),
    }
}

// ---------------------------------------------------------------------------------------------
// Azure Key Vault + Entra ID

#[derive(Default)]
pub struct AzureState {
    pub tenant: String,
    pub client_id: String,
    pub client_secret: String,
    pub secrets: Mutex<HashMap<String, String>>,
    pub denied: Mutex<HashSet<String>>,
    /// Names answered 200 with a body that is not a secret bundle (a broken proxy, say).
    pub garbled: Mutex<HashSet<String>>,
    /// Answer this many secret reads with 429 first.
    pub throttle: AtomicUsize,
    pub tokens_issued: AtomicUsize,
    pub reads: AtomicUsize,
}

pub struct AzureDouble {
    pub url: String,
    pub state: Arc<AzureState>,
    task: JoinHandle<()>,
}

impl AzureDouble {
    pub async fn start(tenant: &str, client_id: &str, client_secret: &str) -> AzureDouble {
        let state = Arc::new(AzureState {
            tenant: tenant.into(),
            client_id: client_id.into(),
            client_secret: client_secret.into(),
            ..Default::default()
        });
        let router = Router::new()
            .route("/{tenant}/oauth2/v2.0/token", post(azure_token))
            .route("/secrets", get(azure_list))
            .route("/secrets/{name}", get(azure_secret))
            .with_state(state.clone());
        let (port, task) = serve(router).await;
        AzureDouble {
            url: format!("http://127.0.0.1:{port}"),
            state,
            task,
        }
    }
}

impl Drop for AzureDouble {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn bearer_ok(s: &AzureState, headers: &HeaderMap) -> bool {
    let issued = s.tokens_issued.load(Ordering::SeqCst);
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| issued > 0 && v == format!("Bearer at-{}", s.client_id))
}

async fn azure_token(State(s): State<Arc<AzureState>>, Path(tenant): Path<String>, body: Bytes) -> Response {
    let form: HashMap<String, String> = url::form_urlencoded::parse(&body).into_owned().collect();
    let ok = tenant == s.tenant
        && form.get("grant_type").map(String::as_str) == Some("client_credentials")
        && form.get("client_id") == Some(&s.client_id)
        && form.get("client_secret") == Some(&s.client_secret)
        && form.get("scope").is_some_and(|sc| sc.ends_with("/.default"));
    if !ok {
        return reply(
            401,
            json!({"error": "invalid_client", "error_description": "AADSTS7000215: Invalid client secret provided."}),
        );
    }
    s.tokens_issued.fetch_add(1, Ordering::SeqCst);
    reply(
        200,
        json!({"token_type": "Bearer", "expires_in": 3599, "ext_expires_in": 3599,
               "access_token": format!("at-{}", s.client_id)}),
    )
}

async fn azure_list(State(s): State<Arc<AzureState>>, headers: HeaderMap) -> Response {
    if !bearer_ok(&s, &headers) {
        return reply(
            401,
            json!({"error": {"code": "Unauthorized", "message": "AKV10000"}}),
        );
    }
    reply(200, json!({"value": [], "nextLink": null}))
}

async fn azure_secret(
    State(s): State<Arc<AzureState>>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    if !bearer_ok(&s, &headers) {
        return reply(
            401,
            json!({"error": {"code": "Unauthorized", "message": "AKV10000"}}),
        );
    }
    s.reads.fetch_add(1, Ordering::SeqCst);
    if s.throttle
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
    {
        let mut r = reply(
            429,
            json!({"error": {"code": "Throttled", "message": "Too many requests"}}),
        );
        r.headers_mut()
            .insert("retry-after", "1".parse().expect("header"));
        return r;
    }
    if s.garbled.lock().unwrap().contains(&name) {
        return (StatusCode::OK, "<html>gateway says hello</html>").into_response();
    }
    if s.denied.lock().unwrap().contains(&name) {
        return reply(
            403,
            json!({"error": {"code": "Forbidden", "message": "The user, group or application does not have secrets get permission",
                             "innererror": {"code": "ForbiddenByRbac"}}}),
        );
    }
    match s.secrets.lock().unwrap().get(&name) {
        None => reply(
            404,
            json!({"error": {"code": "SecretNotFound", "message": format!("A secret with (name/id) {name} was not found in this key vault.")}}),
        ),
        Some(v) => reply(
            200,
            json!({"value": v, "id": format!("https://double.vault.azure.net/secrets/{name}/0123abcd"),
                   "attributes": {"enabled": true, "created": 1700000000, "updated": 1700000000, "recoveryLevel": "Recoverable+Purgeable"}}),
        ),
    }
}

// ---------------------------------------------------------------------------------------------
// A relay that can be cut

/// Forwards 127.0.0.1:<port> to a target port; `cut` closes the listener and every connection,
/// `restore` listens again on the same port.
pub struct Relay {
    pub port: u16,
    target: u16,
    task: Option<JoinHandle<()>>,
}

impl Relay {
    pub async fn start(target: u16) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let mut r = Relay {
            port,
            target,
            task: None,
        };
        r.task = Some(tokio::spawn(relay(listener, target)));
        r
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn cut(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }

    pub async fn restore(&mut self) {
        let listener = TcpListener::bind(("127.0.0.1", self.port)).await.expect("rebind");
        self.task = Some(tokio::spawn(relay(listener, self.target)));
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.cut();
    }
}

async fn relay(listener: TcpListener, target: u16) {
    // Dropped (aborted) with the accept loop: every relayed connection closes with it.
    let mut connections = tokio::task::JoinSet::new();
    while let Ok((mut inbound, _)) = listener.accept().await {
        connections.spawn(async move {
            if let Ok(mut outbound) = tokio::net::TcpStream::connect(("127.0.0.1", target)).await {
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            }
        });
    }
}
