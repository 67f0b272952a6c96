//! `aws`: AWS Secrets Manager's GetSecretValue. A path is the secret's name or ARN.
//!
//! Credentials come from the standard AWS chain (environment, web identity / IRSA, EKS pod
//! identity, profile, instance metadata), optionally exchanged for `roleArn`'s through STS.
//! IAM needs `secretsmanager:GetSecretValue` on the secrets (and `kms:Decrypt` on their key when
//! it is a customer managed key).

use std::time::Duration;

use async_trait::async_trait;
use aws_config::BehaviorVersion;
use aws_sdk_secretsmanager::error::{ProvideErrorMetadata, SdkError};

use super::{Context, SecretBytes, Store, StoreError};
use crate::api::secret_provider;

pub struct AwsStore {
    client: aws_sdk_secretsmanager::Client,
    timeout: Duration,
}

impl AwsStore {
    pub async fn new(spec: &secret_provider::AwsStore, ctx: &Context) -> Result<AwsStore, StoreError> {
        if spec.region.trim().is_empty() {
            return Err(StoreError::Config("aws.region is empty; e.g. eu-west-1".into()));
        }
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .http_client(crate::outbound::aws_http_client())
            .region(aws_config::Region::new(spec.region.clone()));
        if let Some(endpoint) = &spec.endpoint {
            super::https_url("aws.endpoint", endpoint)?;
            loader = loader.endpoint_url(endpoint.clone());
        }
        let mut config = loader.load().await;
        if let Some(role) = &spec.role_arn {
            let provider = aws_config::sts::AssumeRoleProvider::builder(role.clone())
                .session_name("phylax-secret-sync")
                .configure(&config)
                .build()
                .await;
            config = config
                .into_builder()
                .credentials_provider(aws_sdk_secretsmanager::config::SharedCredentialsProvider::new(
                    provider,
                ))
                .build();
        }
        Ok(AwsStore {
            client: aws_sdk_secretsmanager::Client::new(&config),
            timeout: ctx.timeout,
        })
    }
}

fn error<E, R>(path: &str, action: &str, e: SdkError<E, R>) -> StoreError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    match &e {
        SdkError::ServiceError(service) => {
            let code = service.err().code().unwrap_or("unknown");
            match code {
                "ResourceNotFoundException" => StoreError::NotFound { path: path.into() },
                "AccessDeniedException" | "AccessDenied" => StoreError::AccessDenied {
                    path: path.into(),
                    need: format!("IAM action {action} on this secret to the operator's role"),
                },
                "DecryptionFailure" => StoreError::AccessDenied {
                    path: path.into(),
                    need: "IAM action kms:Decrypt on the secret's KMS key to the operator's role".into(),
                },
                "ThrottlingException" | "Throttling" | "TooManyRequestsException" => {
                    StoreError::Throttled { retry_after: None }
                }
                "InternalServiceError" | "InternalFailure" | "ServiceUnavailable" => {
                    StoreError::Unreachable(format!("AWS Secrets Manager answered {code}"))
                }
                "UnrecognizedClientException" | "InvalidClientTokenId" | "ExpiredTokenException" => {
                    StoreError::Config(format!(
                        "AWS refused the operator's credentials ({code}); check its IAM role or web identity"
                    ))
                }
                _ => StoreError::Config(format!(
                    "AWS Secrets Manager refused the request: {code}: {}",
                    super::brief(service.err().message().unwrap_or("no message"))
                )),
            }
        }
        SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) | SdkError::ResponseError(_) => {
            let detail = aws_sdk_secretsmanager::error::DisplayErrorContext(&e).to_string();
            if detail.contains("credentials") || detail.contains("Credentials") {
                StoreError::Config(format!(
                    "no AWS credentials: {} (use IRSA, pod identity or AWS_* environment variables)",
                    super::brief(&detail)
                ))
            } else {
                StoreError::Unreachable(super::brief(&detail))
            }
        }
        _ => StoreError::Config(super::brief(
            &aws_sdk_secretsmanager::error::DisplayErrorContext(&e).to_string(),
        )),
    }
}

#[async_trait]
impl Store for AwsStore {
    fn kind(&self) -> &'static str {
        "aws"
    }

    async fn fetch(&self, path: &str) -> Result<SecretBytes, StoreError> {
        let call = self.client.get_secret_value().secret_id(path).send();
        let out = tokio::time::timeout(self.timeout, call)
            .await
            .map_err(|_| StoreError::Unreachable(format!("no answer within {:?}", self.timeout)))?
            .map_err(|e| error(path, "secretsmanager:GetSecretValue", e))?;
        if let Some(s) = out.secret_string {
            return Ok(SecretBytes::new(s.into_bytes()));
        }
        if let Some(b) = out.secret_binary {
            return Ok(SecretBytes::new(b.into_inner()));
        }
        Err(StoreError::Corrupt(
            "GetSecretValue returned neither SecretString nor SecretBinary".into(),
        ))
    }

    async fn check(&self) -> Result<(), StoreError> {
        // A listing of one: answers (or refuses) without reading a secret's value.
        let call = self.client.list_secrets().max_results(1).send();
        match tokio::time::timeout(self.timeout, call).await {
            Err(_) => Err(StoreError::Unreachable(format!(
                "no answer within {:?}",
                self.timeout
            ))),
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => match error("", "secretsmanager:ListSecrets", e) {
                StoreError::AccessDenied { .. } | StoreError::NotFound { .. } => Ok(()),
                other => Err(other),
            },
        }
    }
}
