//! Key providers: where a key-encryption key (KEK) lives — a key file, a TPM, Vault Transit or
//! AWS KMS — and the one operation every user of a KEK needs: wrap (encrypt) a small payload such
//! as a data key under it, and unwrap it again. The KMS plugin wraps the API server's keys; the
//! tokenizer and the ephemeral store wrap their data keys the same way.
//!
//! `KeyArgs` is the flag group a role flattens into its own arguments to choose a provider.

#[cfg(feature = "aws")]
pub mod aws;
pub mod envelope;
pub mod local;
pub mod software;
#[cfg(feature = "tpm")]
pub mod tpm;
#[cfg(feature = "vault")]
pub mod vault;

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use clap::ValueEnum;
use zeroize::Zeroizing;

/// What went wrong, in the terms the gRPC answer needs: the caller's fault, or the provider's.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// The ciphertext is malformed, corrupted, or made by a key that is not configured.
    #[error("{0}")]
    InvalidCiphertext(String),
    /// The key service cannot be reached or refused to work; retrying may help.
    #[error("{0}")]
    Unavailable(String),
}

/// A sealed payload and the key that sealed it.
#[derive(Debug)]
pub struct Sealed {
    pub ciphertext: Vec<u8>,
    pub key_id: String,
}

#[async_trait]
pub trait KeyProvider: Send + Sync + 'static {
    /// Short name for metrics and annotations: `software`, `tpm`, `vault`, `aws`.
    fn name(&self) -> &'static str;

    /// Every key id this provider knows it can decrypt with (current first), for metrics. A key
    /// service that rotates on its own (Vault) reports what it has seen so far.
    fn key_ids(&self) -> Vec<String>;

    /// Encrypts with the current key and names it: the key id is stable while the key is
    /// unchanged, changes when it rotates, is at most 1 KiB and is never secret.
    async fn encrypt(&self, plaintext: &[u8]) -> Result<Sealed, ProviderError>;

    /// `key_id` is what Encrypt returned with this ciphertext (KMS v2), or None (KMS v1).
    async fn decrypt(
        &self,
        ciphertext: &[u8],
        key_id: Option<&str>,
    ) -> Result<Zeroizing<Vec<u8>>, ProviderError>;
}

/// The flags that choose and configure a key provider; a role flattens them into its arguments.
#[derive(Debug, clap::Args)]
pub struct KeyArgs {
    /// Where the key-encryption key lives
    #[arg(long, value_enum, default_value_t = ProviderKind::Software)]
    pub provider: ProviderKind,

    #[command(flatten)]
    pub software: SoftwareArgs,

    #[cfg(feature = "tpm")]
    #[command(flatten)]
    pub tpm: tpm::TpmArgs,

    #[cfg(feature = "vault")]
    #[command(flatten)]
    pub vault: vault::VaultArgs,

    #[cfg(feature = "aws")]
    #[command(flatten)]
    pub aws: aws::AwsArgs,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum ProviderKind {
    /// AES-256-GCM with key-encryption keys in local files
    Software,
    /// AES-256-GCM with key-encryption keys sealed to a TPM 2.0
    #[cfg(feature = "tpm")]
    Tpm,
    /// HashiCorp Vault's Transit engine holds the key
    #[cfg(feature = "vault")]
    Vault,
    /// AWS KMS holds the key
    #[cfg(feature = "aws")]
    Aws,
}

#[derive(Debug, clap::Args)]
#[command(next_help_heading = "Software provider")]
pub struct SoftwareArgs {
    /// Key file (32 random bytes, raw or base64; mode 0600). Repeat for rotation: the first
    /// encrypts, all decrypt
    #[arg(long = "key-file", value_name = "PATH")]
    pub key_files: Vec<PathBuf>,

    /// Create the first --key-file with a new random key if it does not exist
    #[arg(long)]
    pub create_key_file: bool,
}

/// Builds the provider the flags name, failing with what is missing or wrong.
pub async fn build(args: &KeyArgs) -> anyhow::Result<Arc<dyn KeyProvider>> {
    match args.provider {
        ProviderKind::Software => Ok(Arc::new(software::SoftwareProvider::load(
            &args.software.key_files,
            args.software.create_key_file,
        )?)),
        #[cfg(feature = "tpm")]
        ProviderKind::Tpm => Ok(Arc::new(tpm::load(&args.tpm)?)),
        #[cfg(feature = "vault")]
        ProviderKind::Vault => Ok(Arc::new(vault::VaultProvider::new(&args.vault)?)),
        #[cfg(feature = "aws")]
        ProviderKind::Aws => Ok(Arc::new(aws::AwsProvider::new(&args.aws).await?)),
    }
}

/// The key id a remote key service (Vault, AWS) last encrypted with: such services rotate on
/// their own, and the plugin learns of it from the next Encrypt.
#[cfg(any(feature = "vault", feature = "aws"))]
#[derive(Debug, Default)]
pub(crate) struct LatestKeyId(std::sync::Mutex<Option<String>>);

#[cfg(any(feature = "vault", feature = "aws"))]
impl LatestKeyId {
    /// Records the key id an Encrypt reported, logging when it changes.
    pub(crate) fn observe(&self, key_id: &str) {
        let mut last = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if last.as_deref() != Some(key_id) {
            if last.is_some() {
                tracing::info!(key_id = %key_id, "the key service now encrypts with another key");
            }
            *last = Some(key_id.to_owned());
        }
    }

    pub(crate) fn ids(&self) -> Vec<String> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .into_iter()
            .collect()
    }
}
