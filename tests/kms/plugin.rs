//! A kms-plugin child process with its own socket and key files, and gRPC clients for it.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use phylax::kms::proto::{v1beta1, v2};
use tonic::transport::{Channel, Endpoint};

use crate::support::process::Phylax;

pub type V2Client = v2::key_management_service_client::KeyManagementServiceClient<Channel>;
pub type V1Client = v1beta1::key_management_service_client::KeyManagementServiceClient<Channel>;

/// A directory for one plugin's socket, keys and audit log. Kept short: socket paths are
/// limited to 108 bytes.
pub struct Workdir {
    pub dir: tempfile::TempDir,
}

impl Workdir {
    pub fn new() -> Workdir {
        Workdir {
            dir: tempfile::Builder::new()
                .prefix("phylax-kms-")
                .tempdir_in("/tmp")
                .expect("tempdir"),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn socket(&self) -> PathBuf {
        self.path("kms.sock")
    }

    /// Writes a fresh random 32-byte key, base64, mode 0600.
    pub fn key(&self, name: &str) -> PathBuf {
        use base64::Engine;
        let path = self.path(name);
        let key: [u8; 32] = rand::random();
        std::fs::write(&path, base64::engine::general_purpose::STANDARD.encode(key)).expect("write key");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod key");
        path
    }
}

/// Starts `phylax kms-plugin` on the workdir's socket with the software provider and these key
/// files (first = primary), plus any extra flags, and waits until it is ready.
pub async fn start(work: &Workdir, keys: &[&Path], extra: &[&str]) -> Phylax {
    let mut args: Vec<String> = keys
        .iter()
        .map(|k| format!("--key-file={}", k.display()))
        .collect();
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    start_with(work, &args).await
}

/// Starts `phylax kms-plugin` on the workdir's socket with exactly these flags (provider
/// included) and waits until it is ready.
pub async fn start_with(work: &Workdir, flags: &[&str]) -> Phylax {
    let mut plugin = spawn(work, flags);
    plugin.wait_ready(Duration::from_secs(30)).await;
    plugin
}

/// Starts the plugin without waiting for readiness.
pub fn spawn(work: &Workdir, flags: &[&str]) -> Phylax {
    spawn_env(work, flags, &HashMap::new())
}

/// Starts the plugin with extra environment variables, without waiting for readiness.
pub fn spawn_env(work: &Workdir, flags: &[&str], env: &HashMap<&str, &str>) -> Phylax {
    let mut args = vec![format!("--listen=unix://{}", work.socket().display())];
    args.extend(flags.iter().map(|s| (*s).to_owned()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Phylax::start_with(crate::support::process::binary(), "kms-plugin", &args, None, env)
}

/// A gRPC channel over the unix socket.
pub async fn channel(socket: &Path) -> Channel {
    let socket = socket.to_owned();
    Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_| {
            let socket = socket.clone();
            async move { tokio::net::UnixStream::connect(socket).await.map(TokioIo::new) }
        }))
        .await
        .expect("connect to the KMS socket")
}

pub async fn v2_client(socket: &Path) -> V2Client {
    V2Client::new(channel(socket).await)
}

pub async fn v1_client(socket: &Path) -> V1Client {
    V1Client::new(channel(socket).await)
}

/// The value of one labelled metric series, e.g. `phylax_kms_operations_total{method="v2.Encrypt",...}`.
pub async fn metric_lines(plugin: &Phylax, name: &str) -> Vec<String> {
    let (_, body) = plugin.admin_get("/metrics").await.expect("metrics");
    body.lines()
        .filter(|l| l.starts_with(name))
        .map(str::to_owned)
        .collect()
}

/// KMS v2 Encrypt with a test uid.
pub async fn encrypt(client: &mut V2Client, plaintext: &[u8]) -> Result<v2::EncryptResponse, tonic::Status> {
    client
        .encrypt(v2::EncryptRequest {
            plaintext: plaintext.to_vec(),
            uid: "test".into(),
        })
        .await
        .map(|r| r.into_inner())
}

/// KMS v2 Decrypt of what Encrypt returned (ciphertext, key id and annotations as given).
pub async fn decrypt(client: &mut V2Client, sealed: &v2::EncryptResponse) -> Result<Vec<u8>, tonic::Status> {
    client
        .decrypt(v2::DecryptRequest {
            ciphertext: sealed.ciphertext.clone(),
            uid: "test".into(),
            key_id: sealed.key_id.clone(),
            annotations: sealed.annotations.clone(),
        })
        .await
        .map(|r| r.into_inner().plaintext)
}

pub async fn status(client: &mut V2Client) -> v2::StatusResponse {
    client
        .status(v2::StatusRequest {})
        .await
        .expect("Status")
        .into_inner()
}

/// SIGTERM, and a clean exit.
pub async fn stop(mut plugin: Phylax) {
    plugin.signal(libc::SIGTERM);
    assert!(
        plugin.wait_exit(Duration::from_secs(10)).await.success(),
        "the plugin did not stop cleanly"
    );
}

/// Runs the plugin with these flags expecting it to refuse to start: a non-zero exit, no panic,
/// and exactly one `error:` line, which is returned.
pub fn refused(work: &Workdir, flags: &[impl AsRef<str>]) -> String {
    let listen = format!("--listen=unix://{}", work.socket().display());
    let mut args = vec!["kms-plugin", "--admin-addr=127.0.0.1:0", &listen];
    args.extend(flags.iter().map(AsRef::as_ref));
    let (code, _, err) = crate::support::process::run(&crate::support::process::binary(), &args);
    assert_ne!(code, 0, "the plugin must refuse to start: {err}");
    assert!(!err.contains("panicked"), "{err}");
    let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{err}");
    errors[0].to_owned()
}

/// Writes an EncryptionConfiguration (v1, KMS v1 provider `phylax`) pointing the API server at the
/// workdir's socket; `cachesize` as given, or the API server's default when None.
pub fn encryption_config(work: &Workdir, cachesize: Option<u32>) -> PathBuf {
    let cache = cachesize
        .map(|n| format!("      cachesize: {n}\n"))
        .unwrap_or_default();
    let text = format!(
        "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n\
         - resources: [secrets]\n  providers:\n  - kms:\n      name: phylax\n      \
         endpoint: unix://{}\n{cache}      timeout: 3s\n  - identity: {{}}\n",
        work.socket().display()
    );
    let path = work.path("encryption.yaml");
    std::fs::write(&path, text).expect("write encryption config");
    path
}
