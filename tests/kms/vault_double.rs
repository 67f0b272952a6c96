//! A test double of HashiCorp Vault's Transit secrets engine (no Vault server can be installed
//! here). It follows Vault's documented HTTP API for the calls the plugin makes
//! (https://developer.hashicorp.com/vault/api-docs/secret/transit): `POST /v1/<mount>/encrypt/<key>`
//! and `/decrypt/<key>` with base64 plaintexts, `vault:v<N>:` ciphertexts, `X-Vault-Token` auth,
//! `{"errors": [...]}` bodies with 400/403/404/503, and `POST /v1/<mount>/keys/<key>/rotate`.
//! Encryption is real AES-256-GCM with one random key per version.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use aes_gcm::aead::{Aead, AeadCore, KeyInit, OsRng};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Normal,
    /// Answers 503 as a sealed Vault does.
    Sealed,
    /// Accepts the request and never answers.
    Hang,
}

struct Inner {
    token: String,
    mount: String,
    /// Key name → one AES key per version (version N at index N-1).
    keys: HashMap<String, Vec<[u8; 32]>>,
    mode: Mode,
    calls: usize,
}

#[derive(Clone)]
pub struct VaultDouble {
    inner: Arc<Mutex<Inner>>,
    pub addr: SocketAddr,
}

impl VaultDouble {
    /// Serves a Transit engine at `mount` with one key `key` (version 1) on a loopback port.
    pub async fn start(mount: &str, key: &str, token: &str) -> VaultDouble {
        let inner = Arc::new(Mutex::new(Inner {
            token: token.to_owned(),
            mount: mount.to_owned(),
            keys: HashMap::from([(key.to_owned(), vec![rand::random()])]),
            mode: Mode::Normal,
            calls: 0,
        }));
        let app = Router::new()
            .route("/v1/{mount}/encrypt/{name}", post(encrypt))
            .route("/v1/{mount}/decrypt/{name}", post(decrypt))
            .route("/v1/{mount}/keys/{name}/rotate", post(rotate))
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        VaultDouble { inner, addr }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn set_mode(&self, mode: Mode) {
        self.inner.lock().unwrap().mode = mode;
    }

    pub fn set_token(&self, token: &str) {
        self.inner.lock().unwrap().token = token.to_owned();
    }

    pub fn rotate(&self, key: &str) -> usize {
        let mut inner = self.inner.lock().unwrap();
        let versions = inner.keys.get_mut(key).expect("key exists");
        versions.push(rand::random());
        versions.len()
    }

    pub fn calls(&self) -> usize {
        self.inner.lock().unwrap().calls
    }
}

type Shared = Arc<Mutex<Inner>>;

fn errors(status: StatusCode, msg: &str) -> Response {
    (status, serde_json::json!({ "errors": [msg] }).to_string()).into_response()
}

fn data(value: serde_json::Value) -> Response {
    (
        StatusCode::OK,
        [("content-type", "application/json")],
        serde_json::json!({ "request_id": "double", "lease_id": "", "renewable": false,
                            "lease_duration": 0, "data": value, "wrap_info": null,
                            "warnings": null, "auth": null })
        .to_string(),
    )
        .into_response()
}

/// Common checks; Err is the response to send.
async fn admit(state: &Shared, headers: &HeaderMap, mount: &str) -> Result<(), Response> {
    let mode = {
        let mut inner = state.lock().unwrap();
        inner.calls += 1;
        inner.mode
    };
    match mode {
        Mode::Hang => std::future::pending::<()>().await,
        Mode::Sealed => return Err(errors(StatusCode::SERVICE_UNAVAILABLE, "Vault is sealed")),
        Mode::Normal => {}
    }
    let inner = state.lock().unwrap();
    if headers.get("x-vault-token").and_then(|v| v.to_str().ok()) != Some(inner.token.as_str()) {
        return Err(errors(StatusCode::FORBIDDEN, "permission denied"));
    }
    if mount != inner.mount {
        return Err(errors(
            StatusCode::NOT_FOUND,
            &format!("no handler for route \"{mount}\""),
        ));
    }
    Ok(())
}

fn field(body: &Bytes, name: &str) -> Option<String> {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v[name].as_str().map(str::to_owned))
}

async fn encrypt(
    State(state): State<Shared>,
    Path((mount, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(r) = admit(&state, &headers, &mount).await {
        return r;
    }
    let plaintext = match field(&body, "plaintext").map(|p| B64.decode(p)) {
        Some(Ok(p)) => p,
        Some(Err(_)) => return errors(StatusCode::BAD_REQUEST, "failed to base64-decode plaintext"),
        None => return errors(StatusCode::BAD_REQUEST, "missing plaintext to encrypt"),
    };
    let inner = state.lock().unwrap();
    let Some(versions) = inner.keys.get(&name) else {
        return errors(StatusCode::BAD_REQUEST, "encryption key not found");
    };
    let version = versions.len();
    let cipher = Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(&versions[version - 1]));
    let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
    let mut blob = nonce.to_vec();
    blob.extend(cipher.encrypt(&nonce, plaintext.as_slice()).expect("encrypt"));
    data(
        serde_json::json!({ "ciphertext": format!("vault:v{version}:{}", B64.encode(blob)),
                             "key_version": version }),
    )
}

async fn decrypt(
    State(state): State<Shared>,
    Path((mount, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(r) = admit(&state, &headers, &mount).await {
        return r;
    }
    let Some(ciphertext) = field(&body, "ciphertext") else {
        return errors(StatusCode::BAD_REQUEST, "missing ciphertext to decrypt");
    };
    let inner = state.lock().unwrap();
    let Some(versions) = inner.keys.get(&name) else {
        return errors(StatusCode::BAD_REQUEST, "encryption key not found");
    };
    let parsed = ciphertext
        .strip_prefix("vault:v")
        .and_then(|rest| rest.split_once(':'))
        .and_then(|(v, b)| Some((v.parse::<usize>().ok()?, B64.decode(b).ok()?)));
    let Some((version, blob)) = parsed else {
        return errors(StatusCode::BAD_REQUEST, "invalid ciphertext: no prefix");
    };
    if version == 0 || version > versions.len() || blob.len() < 12 {
        return errors(StatusCode::BAD_REQUEST, "invalid key version");
    }
    let cipher = Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(&versions[version - 1]));
    let (nonce, body) = blob.split_at(12);
    match cipher.decrypt(Nonce::from_slice(nonce), body) {
        Ok(plain) => data(serde_json::json!({ "plaintext": B64.encode(plain) })),
        Err(_) => errors(StatusCode::BAD_REQUEST, "cipher: message authentication failed"),
    }
}

async fn rotate(
    State(state): State<Shared>,
    Path((mount, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = admit(&state, &headers, &mount).await {
        return r;
    }
    let mut inner = state.lock().unwrap();
    match inner.keys.get_mut(&name) {
        Some(v) => {
            v.push(rand::random());
            StatusCode::NO_CONTENT.into_response()
        }
        None => errors(StatusCode::BAD_REQUEST, "encryption key not found"),
    }
}
