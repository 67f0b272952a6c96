//! The plugin as any gRPC tool sees it: grpcurl (grpc-go) over the unix socket, with the
//! published proto files.

use std::path::PathBuf;
use std::process::Command;

use crate::plugin::{self, Workdir};

fn grpcurl() -> PathBuf {
    if let Some(p) = std::env::var_os("PHYLAX_GRPCURL") {
        return p.into();
    }
    let venv = PathBuf::from("/var/tmp/phylax/venv/bin/grpcurl");
    if venv.exists() {
        return venv;
    }
    let found = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join("grpcurl"))
        .find(|p| p.exists());
    found.expect("grpcurl not found: run scripts/setup.sh (it installs it into /var/tmp/phylax/venv) or set PHYLAX_GRPCURL")
}

fn call(socket: &std::path::Path, method: &str, body: &str) -> serde_json::Value {
    let proto = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("proto/kms/v2");
    let out = Command::new(grpcurl())
        .args(["-plaintext", "-unix", "-import-path"])
        .arg(&proto)
        .args(["-proto", "api.proto", "-d", body])
        .arg(socket)
        .arg(format!("v2.KeyManagementService/{method}"))
        .output()
        .expect("run grpcurl");
    assert!(
        out.status.success(),
        "grpcurl {method} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("grpcurl prints JSON")
}

#[tokio::test]
async fn grpcurl_round_trip() {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let work = Workdir::new();
    let key = work.key("k.key");
    let _plugin = plugin::start(&work, &[&key], &[]).await;
    let socket = work.socket();

    let status = tokio::task::spawn_blocking({
        let socket = socket.clone();
        move || call(&socket, "Status", "{}")
    })
    .await
    .unwrap();
    assert_eq!(status["healthz"], "ok");
    assert_eq!(status["version"], "v2");
    let key_id = status["keyId"].as_str().expect("keyId").to_owned();

    let dek: [u8; 32] = rand::random();
    let body = serde_json::json!({"plaintext": b64.encode(dek), "uid": "grpcurl"}).to_string();
    let sealed = tokio::task::spawn_blocking({
        let socket = socket.clone();
        move || call(&socket, "Encrypt", &body)
    })
    .await
    .unwrap();
    assert_eq!(sealed["keyId"], key_id.as_str());
    assert_eq!(
        sealed["annotations"]["kms.phylax.dev/provider"],
        b64.encode("software")
    );

    let body = serde_json::json!({
        "ciphertext": sealed["ciphertext"],
        "uid": "grpcurl",
        "keyId": key_id,
        "annotations": sealed["annotations"],
    })
    .to_string();
    let plain = tokio::task::spawn_blocking(move || call(&socket, "Decrypt", &body))
        .await
        .unwrap();
    assert_eq!(plain["plaintext"], b64.encode(dek));
}
