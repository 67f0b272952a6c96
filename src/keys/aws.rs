//! AWS KMS as the key service: the KEK is a symmetric KMS key that never leaves AWS.
//!
//! The key id is `aws:<key ARN>` as AWS reports it on every Encrypt. AWS's own automatic
//! rotation keeps the ARN (old ciphertexts name their key material inside the blob), so it is
//! invisible to the API server, as it should be; pointing an alias at another key (`--aws-kms-key
//! alias/kube` and `aws kms update-alias`) changes the ARN, and the API server sees a rotation.
//!
//! Every call carries an encryption context: authenticated, logged by CloudTrail, never secret.
//! It must stay the same for as long as data encrypted with it exists.
//!
//! Credentials come from the standard AWS chain (environment, web identity / IRSA, EKS pod
//! identity, profile, instance metadata). IAM needs `kms:Encrypt` and `kms:Decrypt` on the key.

use std::collections::HashMap;

use async_trait::async_trait;
use aws_config::BehaviorVersion;
use aws_sdk_kms::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_kms::primitives::Blob;
use zeroize::Zeroizing;

use super::{KeyProvider, ProviderError, Sealed};

#[derive(Debug, clap::Args)]
#[command(next_help_heading = "AWS KMS provider (--provider aws)")]
pub struct AwsArgs {
    /// The KMS key: key id, key ARN, alias name (alias/kube) or alias ARN
    #[arg(long, value_name = "KEY")]
    pub aws_kms_key: Option<String>,

    /// AWS region (default: the standard chain, e.g. AWS_REGION)
    #[arg(long, value_name = "REGION")]
    pub aws_region: Option<String>,

    /// KMS endpoint URL, for a VPC endpoint or an emulator (default: the region's endpoint)
    #[arg(long, value_name = "URL")]
    pub aws_endpoint: Option<String>,

    /// Extra encryption-context pair sent with every call (KEY=VALUE; repeatable). Never
    /// secret; must not change while data encrypted with it exists
    #[arg(long = "aws-encryption-context", value_name = "KEY=VALUE", value_parser = parse_context_pair)]
    pub aws_encryption_context: Vec<(String, String)>,
}

/// The context every call carries, so a ciphertext made for another purpose under the same key
/// is refused.
pub const CONTEXT_PURPOSE: (&str, &str) = ("kms.phylax.dev/purpose", "kubernetes-encryption-at-rest");

fn parse_context_pair(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() && !v.is_empty() && k != CONTEXT_PURPOSE.0 => {
            Ok((k.to_owned(), v.to_owned()))
        }
        Some((k, _)) if k == CONTEXT_PURPOSE.0 => Err(format!("{k} is set by the plugin itself")),
        _ => Err(format!("{s:?} is not KEY=VALUE with both parts non-empty")),
    }
}

pub struct AwsProvider {
    client: aws_sdk_kms::Client,
    key: String,
    context: HashMap<String, String>,
    /// Where calls go, for error messages.
    target: String,
    last_key_id: super::LatestKeyId,
}

impl AwsProvider {
    pub async fn new(args: &AwsArgs) -> anyhow::Result<AwsProvider> {
        let key = args
            .aws_kms_key
            .clone()
            .filter(|k| !k.trim().is_empty())
            .ok_or_else(|| {
                anyhow::anyhow!("the aws provider needs --aws-kms-key (a key id, ARN or alias/NAME)")
            })?;
        let mut loader =
            aws_config::defaults(BehaviorVersion::latest()).http_client(crate::outbound::aws_http_client());
        if let Some(region) = &args.aws_region {
            loader = loader.region(aws_config::Region::new(region.clone()));
        }
        if let Some(endpoint) = &args.aws_endpoint {
            crate::outbound::secure_url("--aws-endpoint", endpoint).map_err(anyhow::Error::msg)?;
            loader = loader.endpoint_url(endpoint.clone());
        }
        let config = loader.load().await;
        let Some(region) = config.region().map(|r| r.to_string()) else {
            anyhow::bail!("the aws provider needs a region: --aws-region or AWS_REGION");
        };
        let target = args
            .aws_endpoint
            .clone()
            .unwrap_or_else(|| format!("AWS KMS in {region}"));
        let mut context: HashMap<String, String> = args.aws_encryption_context.iter().cloned().collect();
        context.insert(CONTEXT_PURPOSE.0.into(), CONTEXT_PURPOSE.1.into());
        Ok(AwsProvider {
            client: aws_sdk_kms::Client::new(&config),
            key,
            context,
            target,
            last_key_id: Default::default(),
        })
    }

    fn error<E, R>(&self, op: &str, key: &str, e: SdkError<E, R>) -> ProviderError
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
        R: std::fmt::Debug + Send + Sync + 'static,
    {
        match &e {
            SdkError::ServiceError(service) => {
                let code = service.err().code().unwrap_or("unknown");
                let message = service.err().message().unwrap_or("no message");
                match code {
                    "InvalidCiphertextException" | "IncorrectKeyException" => {
                        ProviderError::InvalidCiphertext(format!(
                            "AWS KMS refused to decrypt: {code}: {message} (ciphertext corrupted, made by another key, \
                         or with another encryption context)"
                        ))
                    }
                    "AccessDeniedException" => ProviderError::Unavailable(format!(
                        "AWS KMS denied kms:{op} on {key}: allow kms:{op} for this plugin's role in the key \
                         policy or IAM ({message})"
                    )),
                    "NotFoundException" => ProviderError::Unavailable(format!(
                        "AWS KMS has no key {key} ({message}); check --aws-kms-key and the region"
                    )),
                    "DisabledException" | "KMSInvalidStateException" => ProviderError::Unavailable(format!(
                        "AWS KMS key {key} cannot be used now: {code}: {message}; enable the key (or cancel its \
                         deletion)"
                    )),
                    _ => ProviderError::Unavailable(format!("AWS KMS {op} failed: {code}: {message}")),
                }
            }
            _ => ProviderError::Unavailable(format!(
                "cannot reach {} for {op}: {}",
                self.target,
                DisplayErrorContext(&e)
            )),
        }
    }
}

#[async_trait]
impl KeyProvider for AwsProvider {
    fn name(&self) -> &'static str {
        "aws"
    }

    fn key_ids(&self) -> Vec<String> {
        self.last_key_id.ids()
    }

    async fn encrypt(&self, plaintext: &[u8]) -> Result<Sealed, ProviderError> {
        let out = self
            .client
            .encrypt()
            .key_id(&self.key)
            .plaintext(Blob::new(plaintext))
            .set_encryption_context(Some(self.context.clone()))
            .send()
            .await
            .map_err(|e| self.error("Encrypt", &self.key, e))?;
        let (Some(blob), Some(arn)) = (out.ciphertext_blob, out.key_id) else {
            return Err(ProviderError::Unavailable(
                "AWS KMS answered Encrypt without a ciphertext or key id".into(),
            ));
        };
        let key_id = format!("aws:{arn}");
        self.last_key_id.observe(&key_id);
        Ok(Sealed {
            ciphertext: blob.into_inner(),
            key_id,
        })
    }

    async fn decrypt(
        &self,
        ciphertext: &[u8],
        key_id: Option<&str>,
    ) -> Result<Zeroizing<Vec<u8>>, ProviderError> {
        // KMS v2 names the key; AWS then refuses a ciphertext of any other key. KMS v1 does not,
        // and a symmetric ciphertext names its key itself.
        let arn = match key_id {
            Some(id) => Some(id.strip_prefix("aws:").filter(|a| !a.is_empty()).ok_or_else(|| {
                ProviderError::InvalidCiphertext(
                    "key_id is not one this plugin's aws provider issued (aws:<ARN>)".into(),
                )
            })?),
            None => None,
        };
        let shown = arn.unwrap_or("the key named in the ciphertext");
        let out = self
            .client
            .decrypt()
            .ciphertext_blob(Blob::new(ciphertext))
            .set_key_id(arn.map(str::to_owned))
            .set_encryption_context(Some(self.context.clone()))
            .send()
            .await
            .map_err(|e| self.error("Decrypt", shown, e))?;
        let plain = out.plaintext.ok_or_else(|| {
            ProviderError::Unavailable("AWS KMS answered Decrypt without a plaintext".into())
        })?;
        Ok(Zeroizing::new(plain.into_inner()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_pairs() {
        assert_eq!(
            parse_context_pair("cluster=prod"),
            Ok(("cluster".into(), "prod".into()))
        );
        assert_eq!(parse_context_pair("a=b=c"), Ok(("a".into(), "b=c".into())));
        assert!(parse_context_pair("cluster").is_err());
        assert!(parse_context_pair("=x").is_err());
        assert!(parse_context_pair("x=").is_err());
        assert!(
            parse_context_pair("kms.phylax.dev/purpose=other")
                .unwrap_err()
                .contains("set by the plugin")
        );
    }
}
