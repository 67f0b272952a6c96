//! HashiCorp Vault's Transit secrets engine as the key service: the KEK never leaves Vault, which
//! encrypts and decrypts the API server's small payloads.
//!
//! The key id is `vault:<mount>/<key>:v<version>`, taken from the version prefix Vault puts on
//! every ciphertext (`vault:v3:...`). So the first Encrypt after a Vault-side rotation
//! (`vault write -f transit/keys/<key>/rotate`) reports the new id, the API server sees the key
//! change, and older ciphertexts stay readable as long as Vault's `min_decryption_version` allows.
//!
//! Vault policy the plugin's token needs: `update` on `<mount>/encrypt/<key>` and
//! `<mount>/decrypt/<key>`.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use async_trait::async_trait;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use vaultrs::client::{VaultClient, VaultClientSettingsBuilder};
use vaultrs::error::ClientError;
use zeroize::{Zeroize, Zeroizing};

use super::{KeyProvider, ProviderError, Sealed};

#[derive(Debug, clap::Args)]
#[command(next_help_heading = "Vault Transit provider (--provider vault)")]
pub struct VaultArgs {
    /// Vault's address, e.g. https://vault.example:8200
    #[arg(long, value_name = "URL", env = "VAULT_ADDR")]
    pub vault_addr: Option<String>,

    /// Where the Transit engine is mounted
    #[arg(long, value_name = "PATH", default_value = "transit")]
    pub vault_transit_mount: String,

    /// Name of the Transit key (type aes256-gcm96)
    #[arg(long, value_name = "NAME")]
    pub vault_key: Option<String>,

    /// File holding the Vault token (e.g. written by Vault Agent); re-read when it changes, so
    /// token renewal needs no restart. Without it, VAULT_TOKEN is used
    #[arg(long, value_name = "PATH")]
    pub vault_token_file: Option<PathBuf>,

    /// PEM file of the CA that signed Vault's certificate (default: the system's roots)
    #[arg(long, value_name = "PATH", env = "VAULT_CACERT")]
    pub vault_ca_cert: Option<PathBuf>,

    /// Vault Enterprise namespace
    #[arg(long, value_name = "NAMESPACE", env = "VAULT_NAMESPACE")]
    pub vault_namespace: Option<String>,
}

/// Where the token comes from.
enum TokenSource {
    Env(Zeroizing<String>),
    File(PathBuf),
}

struct CurrentClient {
    client: Arc<VaultClient>,
    /// The token file's identity (modification time, inode) when the client was built: a token
    /// written in place or a new file renamed over it both change it. None: token from env.
    token_stamp: Option<(SystemTime, u64)>,
}

/// How to reach Vault; fixed at start.
struct Config {
    addr: String,
    mount: String,
    key: String,
    ca_cert: Option<PathBuf>,
    namespace: Option<String>,
    token: TokenSource,
}

pub struct VaultProvider {
    cfg: Config,
    current: RwLock<CurrentClient>,
    /// Last key id seen on a ciphertext from Encrypt.
    last_key_id: super::LatestKeyId,
}

impl VaultProvider {
    pub fn new(args: &VaultArgs) -> anyhow::Result<VaultProvider> {
        let addr = args
            .vault_addr
            .clone()
            .ok_or_else(|| anyhow::anyhow!("the vault provider needs --vault-addr (or VAULT_ADDR)"))?;
        // The API server's keys travel to Vault: plain HTTP only to this machine.
        crate::outbound::secure_url("--vault-addr", &addr).map_err(anyhow::Error::msg)?;
        let key = args.vault_key.clone().ok_or_else(|| {
            anyhow::anyhow!("the vault provider needs --vault-key (the Transit key's name)")
        })?;
        // A mount may be nested (`kms/transit`); a key name is one path segment.
        let bad_segment = |s: &str| s.is_empty() || s == "." || s == ".." || s.contains(char::is_whitespace);
        if key.contains('/') || bad_segment(&key) {
            anyhow::bail!("--vault-key {key:?} is not a Transit key name (one path segment, no '/')");
        }
        if args.vault_transit_mount.split('/').any(bad_segment) {
            anyhow::bail!(
                "--vault-transit-mount {:?} is not a Vault mount path",
                args.vault_transit_mount
            );
        }
        let token = match &args.vault_token_file {
            Some(path) => TokenSource::File(path.clone()),
            None => match std::env::var("VAULT_TOKEN") {
                Ok(t) if !t.trim().is_empty() => TokenSource::Env(Zeroizing::new(t.trim().to_owned())),
                _ => anyhow::bail!("the vault provider needs --vault-token-file or VAULT_TOKEN"),
            },
        };
        let cfg = Config {
            addr,
            mount: args.vault_transit_mount.clone(),
            key,
            ca_cert: args.vault_ca_cert.clone(),
            namespace: args.vault_namespace.clone(),
            token,
        };
        let first = cfg.build_client()?;
        Ok(VaultProvider {
            cfg,
            current: RwLock::new(first),
            last_key_id: Default::default(),
        })
    }
}

impl Config {
    fn build_client(&self) -> anyhow::Result<CurrentClient> {
        let (token, token_stamp) = match &self.token {
            TokenSource::Env(t) => (t.clone(), None),
            TokenSource::File(path) => {
                let meta = std::fs::metadata(path)
                    .map_err(|e| anyhow::anyhow!("cannot read Vault token file {}: {e}", path.display()))?;
                let text =
                    Zeroizing::new(std::fs::read_to_string(path).map_err(|e| {
                        anyhow::anyhow!("cannot read Vault token file {}: {e}", path.display())
                    })?);
                let token = Zeroizing::new(text.trim().to_owned());
                if token.is_empty() {
                    anyhow::bail!("Vault token file {} is empty", path.display());
                }
                (token, stamp(&meta))
            }
        };
        let mut settings = VaultClientSettingsBuilder::default();
        settings
            .address(&self.addr)
            .token(token.as_str())
            // Set explicitly: vaultrs' default reads VAULT_SKIP_VERIFY with inverted meaning.
            .verify(true)
            .ca_certs(self.ca_cert.iter().map(|p| p.display().to_string()).collect());
        if let Some(ns) = &self.namespace {
            settings.set_namespace(ns.clone());
        }
        let settings = settings
            .build()
            .map_err(|e| anyhow::anyhow!("invalid Vault client settings: {e}"))?;
        let client =
            VaultClient::new(settings).map_err(|e| anyhow::anyhow!("cannot set up the Vault client: {e}"))?;
        Ok(CurrentClient {
            client: Arc::new(client),
            token_stamp,
        })
    }
}

impl VaultProvider {
    /// The client, rebuilt when the token file has changed since it was built.
    fn client(&self) -> Result<Arc<VaultClient>, ProviderError> {
        if let TokenSource::File(path) = &self.cfg.token {
            let now = std::fs::metadata(path).ok().and_then(|m| stamp(&m));
            let stale = self.current.read().map(|c| c.token_stamp != now).unwrap_or(true);
            if stale {
                let fresh = self
                    .cfg
                    .build_client()
                    .map_err(|e| ProviderError::Unavailable(e.to_string()))?;
                let client = fresh.client.clone();
                if let Ok(mut current) = self.current.write() {
                    *current = fresh;
                }
                tracing::info!(path = %path.display(), "Vault token file changed; using the new token");
                return Ok(client);
            }
        }
        self.current
            .read()
            .map(|c| c.client.clone())
            .map_err(|_| ProviderError::Unavailable("the Vault client lock is poisoned".into()))
    }

    fn key_id_for(&self, version: u64) -> String {
        format!("vault:{}/{}:v{version}", self.cfg.mount, self.cfg.key)
    }

    fn error(&self, op: &str, e: ClientError) -> ProviderError {
        let what = format!("{}/{op}/{}", self.cfg.mount, self.cfg.key);
        match e {
            ClientError::APIError { code: 400, errors } => {
                ProviderError::InvalidCiphertext(format!("Vault refused {what}: {}", summarize(&errors)))
            }
            ClientError::APIError { code: 403, .. } => ProviderError::Unavailable(format!(
                "Vault denied {what}: the token needs a policy granting \"update\" on {what}"
            )),
            ClientError::APIError { code: 404, .. } => ProviderError::Unavailable(format!(
                "Vault has no {what}: is the Transit engine mounted at {:?} and does key {:?} exist?",
                self.cfg.mount, self.cfg.key
            )),
            ClientError::APIError { code, errors } => {
                ProviderError::Unavailable(format!("Vault answered {code} to {what}: {}", summarize(&errors)))
            }
            ClientError::RestClientError { source } => ProviderError::Unavailable(format!(
                "cannot reach Vault at {} for {what}: {source}",
                self.cfg.addr
            )),
            other => ProviderError::Unavailable(format!("Vault {what} failed: {other}")),
        }
    }
}

fn stamp(meta: &std::fs::Metadata) -> Option<(SystemTime, u64)> {
    use std::os::unix::fs::MetadataExt;
    meta.modified().ok().map(|m| (m, meta.ino()))
}

/// Vault's error strings, shortened; they never hold key material.
fn summarize(errors: &[String]) -> String {
    let joined = errors.join("; ");
    match joined.char_indices().nth(200) {
        Some((i, _)) => format!("{}…", &joined[..i]),
        None if joined.is_empty() => "no reason given".into(),
        None => joined,
    }
}

/// The key version a Transit ciphertext names: `vault:v<N>:<base64>`.
pub fn ciphertext_version(ciphertext: &[u8]) -> Result<u64, String> {
    let text = std::str::from_utf8(ciphertext)
        .map_err(|_| "ciphertext is not a Vault Transit ciphertext".to_owned())?;
    let mut parts = text.splitn(3, ':');
    match (parts.next(), parts.next(), parts.next()) {
        (Some("vault"), Some(v), Some(body)) if !body.is_empty() => v
            .strip_prefix('v')
            .and_then(|n| n.parse::<u64>().ok())
            .filter(|n| *n > 0)
            .ok_or_else(|| "ciphertext has no valid Vault key version (vault:vN:...)".to_owned()),
        _ => Err("ciphertext is not a Vault Transit ciphertext (vault:vN:...)".to_owned()),
    }
}

#[async_trait]
impl KeyProvider for VaultProvider {
    fn name(&self) -> &'static str {
        "vault"
    }

    fn key_ids(&self) -> Vec<String> {
        self.last_key_id.ids()
    }

    async fn encrypt(&self, plaintext: &[u8]) -> Result<Sealed, ProviderError> {
        let client = self.client()?;
        let encoded = Zeroizing::new(B64.encode(plaintext));
        let response =
            vaultrs::transit::data::encrypt(client.as_ref(), &self.cfg.mount, &self.cfg.key, &encoded, None)
                .await
                .map_err(|e| self.error("encrypt", e))?;
        let version = ciphertext_version(response.ciphertext.as_bytes())
            .map_err(|why| ProviderError::Unavailable(format!("Vault returned an unexpected {why}")))?;
        let key_id = self.key_id_for(version);
        self.last_key_id.observe(&key_id);
        Ok(Sealed {
            ciphertext: response.ciphertext.into_bytes(),
            key_id,
        })
    }

    async fn decrypt(
        &self,
        ciphertext: &[u8],
        key_id: Option<&str>,
    ) -> Result<Zeroizing<Vec<u8>>, ProviderError> {
        let version = ciphertext_version(ciphertext).map_err(ProviderError::InvalidCiphertext)?;
        if let Some(id) = key_id
            && id != self.key_id_for(version)
        {
            return Err(ProviderError::InvalidCiphertext(format!(
                "key_id does not match the key the ciphertext was made with ({})",
                self.key_id_for(version)
            )));
        }
        // ciphertext_version checked it is UTF-8.
        let text = String::from_utf8_lossy(ciphertext);
        let client = self.client()?;
        let mut response =
            vaultrs::transit::data::decrypt(client.as_ref(), &self.cfg.mount, &self.cfg.key, &text, None)
                .await
                .map_err(|e| self.error("decrypt", e))?;
        let plain = B64
            .decode(response.plaintext.as_bytes())
            .map(Zeroizing::new)
            .map_err(|_| ProviderError::Unavailable("Vault returned a plaintext that is not base64".into()));
        response.plaintext.zeroize();
        plain
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ciphertext_versions() {
        assert_eq!(ciphertext_version(b"vault:v1:abc"), Ok(1));
        assert_eq!(ciphertext_version(b"vault:v42:a:b"), Ok(42));
        for bad in [
            &b""[..],
            b"vault:",
            b"vault:v1:",
            b"vault:v0:x",
            b"vault:1:x",
            b"aws:v1:x",
            b"\xff\xfe",
        ] {
            assert!(ciphertext_version(bad).is_err(), "{bad:?}");
        }
    }
}
