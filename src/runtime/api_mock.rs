//! A scripted Kubernetes API server for unit tests of code that calls the API (in the manner of
//! kube-rs' controller-rs): the code under test gets a real `kube::Client` whose requests arrive
//! here, one at a time, and each test says what it expects and how the server answers.

use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use kube::client::Body;
use serde_json::{Value, json};
use tower_test::mock::{self, Handle, SendResponse};

/// The server side of a mocked client.
pub struct ApiServer(Handle<Request<Body>, Response<Body>>);

/// A request the code under test made, and the means to answer it.
pub struct Call {
    pub method: Method,
    /// Path and query, e.g. `/api/v1/namespaces/shop/secrets/db?fieldManager=x`.
    pub uri: String,
    pub content_type: Option<String>,
    pub body: Value,
    respond: SendResponse<Response<Body>>,
}

/// A client talking to a fresh scripted server.
pub fn client() -> (kube::Client, ApiServer) {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    (kube::Client::new(service, "default"), ApiServer(handle))
}

impl ApiServer {
    /// The next request; panics if none comes within 5 s (the code under test stopped calling).
    pub async fn next(&mut self) -> Call {
        let next = tokio::time::timeout(std::time::Duration::from_secs(5), self.0.next_request()).await;
        let (request, respond) = next
            .expect("no API call within 5 s")
            .expect("the client was dropped before the expected call");
        let (parts, body) = request.into_parts();
        let bytes = body.collect().await.expect("request body").to_bytes();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).expect("request body is JSON")
        };
        Call {
            method: parts.method,
            uri: parts
                .uri
                .path_and_query()
                .map(|p| p.to_string())
                .unwrap_or_default(),
            content_type: parts
                .headers
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
            body,
            respond,
        }
    }

    /// Asserts the code under test makes no further call (it has returned, or waits).
    pub async fn no_more_calls(&mut self) {
        let next = tokio::time::timeout(std::time::Duration::from_millis(200), self.0.next_request()).await;
        if let Ok(Some((request, _))) = next {
            panic!("unexpected API call: {} {}", request.method(), request.uri());
        }
    }
}

impl Call {
    /// Asserts the method and that the path (without query) is `path`.
    pub fn expect(&self, method: Method, path: &str) {
        let actual = self.uri.split('?').next().unwrap_or_default();
        assert_eq!(
            (&self.method, actual),
            (&method, path),
            "unexpected call {} {}",
            self.method,
            self.uri
        );
    }

    /// A query parameter's value.
    pub fn query(&self, key: &str) -> Option<String> {
        let query = self.uri.split_once('?')?.1;
        query.split('&').find_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            (k == key).then(|| v.to_owned())
        })
    }

    pub fn respond(self, status: StatusCode, body: Value) {
        let response = Response::builder()
            .status(status)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Body::from(serde_json::to_vec(&body).expect("JSON")))
            .expect("response");
        self.respond.send_response(response);
    }

    pub fn ok(self, body: Value) {
        self.respond(StatusCode::OK, body)
    }

    /// The API server's `Status` answer for an error.
    pub fn fail(self, code: u16, reason: &str) {
        let status = StatusCode::from_u16(code).expect("status code");
        self.respond(
            status,
            json!({
                "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": format!("mock: {reason}"), "reason": reason, "code": code,
            }),
        );
    }
}
