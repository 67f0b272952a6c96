//! The static musl binary from `scripts/build-static.sh` (path in `PHYLAX_STATIC_BIN`): fully
//! static, every role compiled in and starting, and the TPM provider — tpm2-tss linked without
//! dlopen — sealing and using a key in swtpm. `scripts/test.sh` builds the binary and runs this
//! test; a plain `cargo test` skips it (ignored) because the build takes minutes.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::plugin::{self, Workdir, decrypt, encrypt, status, stop};
use crate::support::cluster::cluster;
use crate::support::process::Phylax;
use crate::support::swtpm::Swtpm;

fn static_binary() -> PathBuf {
    let path = std::env::var_os("PHYLAX_STATIC_BIN")
        .map(PathBuf::from)
        .expect("PHYLAX_STATIC_BIN names the static binary (scripts/build-static.sh builds it)");
    assert!(path.exists(), "{} does not exist", path.display());
    path
}

#[tokio::test]
#[ignore = "needs the static binary: scripts/build-static.sh, then PHYLAX_STATIC_BIN"]
async fn the_static_binary_is_static_and_every_role_starts() {
    let exe = static_binary();
    let file = Command::new("file").arg(&exe).output().expect("file(1)");
    let file = String::from_utf8_lossy(&file.stdout).into_owned();
    assert!(
        file.contains("statically linked") || file.contains("static-pie linked"),
        "not static: {file}"
    );
    assert!(!file.contains("interpreter"), "has a dynamic loader: {file}");

    let out = Command::new(&exe)
        .args(["version", "--output", "json"])
        .output()
        .expect("version");
    let version: serde_json::Value = serde_json::from_slice(&out.stdout).expect("version json");
    let roles: Vec<&str> = version["roles"]
        .as_array()
        .expect("roles")
        .iter()
        .filter_map(|r| r.as_str())
        .collect();
    assert_eq!(
        roles,
        ["operator", "webhook", "kms-plugin", "node-agent", "tokenizer"]
    );

    // kms-plugin with the TPM provider: the statically linked swtpm TCTI reaches a real swtpm.
    let work = Workdir::new();
    let tpm = Swtpm::start(work.path("tpm")).await;
    let sealed = work.path("kek.sealed");
    let auth = work.key("tpm-auth");
    let args = [
        format!("--listen=unix://{}", work.socket().display()),
        "--provider=tpm".to_owned(),
        format!("--tpm-tcti={}", tpm.tcti()),
        format!("--tpm-sealed-key={}", sealed.display()),
        "--tpm-create-sealed-key".to_owned(),
        format!("--tpm-auth-file={}", auth.display()),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut kms = Phylax::start_with(exe.clone(), "kms-plugin", &args, None, &HashMap::new());
    kms.wait_ready(Duration::from_secs(30)).await;
    let mut client = plugin::v2_client(&work.socket()).await;
    assert!(status(&mut client).await.key_id.starts_with("tpm:"));
    let dek: [u8; 32] = rand::random();
    let sealed_dek = encrypt(&mut client, &dek).await.expect("Encrypt");
    assert_eq!(decrypt(&mut client, &sealed_dek).await.expect("Decrypt"), dek);
    stop(kms).await;

    // The webhook, serving TLS with a throw-away certificate.
    let tls = tempfile::tempdir().expect("tempdir");
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .expect("params")
        .self_signed(&key)
        .expect("certificate");
    std::fs::write(tls.path().join("tls.crt"), cert.pem()).expect("tls.crt");
    std::fs::write(tls.path().join("tls.key"), key.serialize_pem()).expect("tls.key");
    let webhook_args = [
        format!("--listen-addr=127.0.0.1:{}", crate::support::free_port()),
        format!("--tls-dir={}", tls.path().display()),
    ];
    let webhook_args: Vec<&str> = webhook_args.iter().map(String::as_str).collect();

    // The API-facing roles against the test cluster; the tokenizer on its own.
    let kubeconfig = cluster().kubeconfig.clone();
    crate::support::cluster::install_crds(&cluster().client().await).await;
    let kubelet_root = tempfile::tempdir().expect("kubelet root");
    let kubelet_arg = format!("--kubelet-root={}", kubelet_root.path().display());
    for (role, args) in [
        (
            "operator",
            vec![
                "--leader-elect=false",
                "--manage-webhook-certs=false",
                "--secret-sync=false",
            ],
        ),
        (
            "node-agent",
            vec![
                "--node-name=static-test",
                kubelet_arg.as_str(),
                "--audit-source=none",
            ],
        ),
        ("tokenizer", vec![]),
        ("webhook", webhook_args),
    ] {
        let kc = (role != "tokenizer").then_some(kubeconfig.as_path());
        let mut p = Phylax::start_with(exe.clone(), role, &args, kc, &HashMap::new());
        p.wait_ready(Duration::from_secs(30)).await;
        p.signal(libc::SIGTERM);
        assert!(
            p.wait_exit(Duration::from_secs(15)).await.success(),
            "{role}: {:?}",
            p.logs()
        );
    }
}
