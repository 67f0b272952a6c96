//! Every outcome of a sync as an event reason, an actionable message and a metric label.
//! Messages name providers, paths, Secrets and permissions, never values.
//!
//! Two audiences: the operator's log (and the SecretProvider's status) get the whole story; the
//! event on the pod that asked, readable by everyone in its namespace, gets what that namespace
//! can act on. Events never carry a provider's path patterns, its credential Secrets, its
//! store's address or a store's raw error text.

use std::time::Duration;

use crate::secret_stores::StoreError;

use super::access::Refusal;
use super::render::RenderError;

#[derive(Debug, Clone, PartialEq)]
pub enum SyncError {
    /// The annotation cannot be read.
    Malformed(String),
    ProviderMissing(String),
    /// The SecretProvider's spec or credentials are wrong.
    ProviderNotReady {
        provider: String,
        why: String,
    },
    /// The provider's namespace/path rules refuse the request.
    Refused {
        provider: String,
        refusal: Refusal,
    },
    Store {
        provider: String,
        path: String,
        error: StoreError,
    },
    Render {
        provider: String,
        path: String,
        error: RenderError,
    },
    /// The target Secret exists and Phylax did not create it.
    NotManaged {
        secret: String,
    },
    /// The target Secret is Phylax's but synced from another source.
    Conflict {
        secret: String,
        source: String,
    },
    /// The API server refused or failed the write.
    Write(String),
}

impl SyncError {
    pub fn reason(&self) -> &'static str {
        match self {
            SyncError::Malformed(_) => "InvalidSyncAnnotation",
            SyncError::ProviderMissing(_) => "SecretProviderNotFound",
            SyncError::ProviderNotReady { .. } => "SecretProviderNotReady",
            SyncError::Refused { .. } => "SecretSyncRefused",
            SyncError::Store { error, .. } => match error {
                StoreError::NotFound { .. } => "SecretNotFound",
                StoreError::AccessDenied { .. } => "SecretAccessDenied",
                StoreError::Unreachable(_) | StoreError::Throttled { .. } => "SecretStoreUnavailable",
                StoreError::Corrupt(_) => "SecretSourceInvalid",
                StoreError::Config(_) => "SecretProviderNotReady",
                StoreError::InvalidPath(_) => "SecretSyncRefused",
            },
            SyncError::Render { error, .. } => match error {
                RenderError::TooLarge(_) => "SecretTooLarge",
                _ => "SecretSourceInvalid",
            },
            SyncError::NotManaged { .. } => "SecretNotManaged",
            SyncError::Conflict { .. } => "SecretSyncConflict",
            SyncError::Write(_) => "SecretWriteFailed",
        }
    }

    /// Retried with backoff; everything else waits for a person (and a new pod or rollout).
    pub fn is_transient(&self) -> bool {
        match self {
            SyncError::ProviderMissing(_) | SyncError::ProviderNotReady { .. } | SyncError::Write(_) => true,
            SyncError::Store { error, .. } => error.is_transient() || matches!(error, StoreError::Config(_)),
            _ => false,
        }
    }

    /// At least this long before retrying (a store's Retry-After).
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            SyncError::Store {
                error: StoreError::Throttled { retry_after },
                ..
            } => *retry_after,
            _ => None,
        }
    }

    /// Metric label.
    pub fn result(&self) -> &'static str {
        match self {
            SyncError::Malformed(_) => "invalid_annotation",
            SyncError::ProviderMissing(_) | SyncError::ProviderNotReady { .. } => "provider_not_ready",
            SyncError::Refused { .. } => "refused",
            SyncError::Store { error, .. } => error.outcome(),
            SyncError::Render { .. } => "invalid_source",
            SyncError::NotManaged { .. } | SyncError::Conflict { .. } => "not_managed",
            SyncError::Write(_) => "write_failed",
        }
    }

    pub fn message(&self) -> String {
        match self {
            SyncError::Malformed(why) => why.clone(),
            SyncError::ProviderMissing(p) => format!(
                "SecretProvider {p} does not exist; create it (kubectl get secretproviders) or fix the \
                 annotation's provider; will retry"
            ),
            SyncError::ProviderNotReady { provider, why } => {
                format!("SecretProvider {provider} is not usable: {why}; will retry")
            }
            SyncError::Refused { provider, refusal } => {
                format!("refused by SecretProvider {provider}: {}", refusal.detail())
            }
            SyncError::Store {
                provider,
                path,
                error,
            } => match error {
                StoreError::NotFound { .. } => format!(
                    "{path:?} does not exist in SecretProvider {provider}'s store; create it there or fix \
                     the path, then roll out the workload"
                ),
                StoreError::AccessDenied { need, .. } => {
                    format!("SecretProvider {provider}'s store denied reading {path:?}: grant {need}")
                }
                StoreError::Unreachable(why) => {
                    format!("SecretProvider {provider}'s store is unreachable ({why}); will retry")
                }
                StoreError::Throttled { .. } => {
                    format!("SecretProvider {provider}'s store is throttling requests; will retry")
                }
                StoreError::Corrupt(why) => {
                    format!("SecretProvider {provider} returned a malformed answer for {path:?}: {why}")
                }
                StoreError::Config(why) => {
                    format!("SecretProvider {provider} is not usable: {why}; will retry")
                }
                StoreError::InvalidPath(why) => format!("refused by SecretProvider {provider}: {why}"),
            },
            SyncError::Render {
                provider,
                path,
                error,
            } => {
                format!("{path:?} from SecretProvider {provider}: {error}")
            }
            SyncError::NotManaged { secret } => format!(
                "Secret {secret} exists and is not managed by Phylax (no app.kubernetes.io/managed-by=phylax \
                 label); left untouched: choose another secretName or delete that Secret"
            ),
            SyncError::Conflict { secret, source } => format!(
                "Secret {secret} is already synced from {source}; each source needs its own secretName"
            ),
            SyncError::Write(why) => format!("cannot write the Secret: {why}; will retry"),
        }
    }

    /// The event's note on the object that asked: what its namespace can act on, nothing about
    /// the provider's configuration or its store's internals (see the module's comment).
    pub fn note(&self) -> String {
        const ASK: &str = "its status conditions and the operator's log say why";
        match self {
            SyncError::ProviderNotReady { provider, .. }
            | SyncError::Store {
                provider,
                error: StoreError::Config(_),
                ..
            } => format!("SecretProvider {provider} is not usable ({ASK}); will retry"),
            SyncError::Refused { provider, refusal } => {
                format!("refused by SecretProvider {provider}: {}", refusal.public())
            }
            SyncError::Store {
                provider,
                error: StoreError::Unreachable(_),
                ..
            } => format!(
                "SecretProvider {provider}'s store is unreachable (its Reachable condition and the operator's \
                 log say why); will retry"
            ),
            SyncError::Store {
                provider,
                path,
                error: StoreError::Corrupt(_),
            } => format!(
                "SecretProvider {provider}'s store answered with something that is not a secret for {path:?} \
                 (the operator's log says what)"
            ),
            _ => self.message(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_denied_names_the_permission_and_is_permanent() {
        let e = SyncError::Store {
            provider: "aws-prod".into(),
            path: "/prod/x".into(),
            error: StoreError::AccessDenied {
                path: "/prod/x".into(),
                need: "IAM action secretsmanager:GetSecretValue".into(),
            },
        };
        assert_eq!(e.reason(), "SecretAccessDenied");
        assert!(e.message().contains("secretsmanager:GetSecretValue"));
        assert!(!e.is_transient());
        let down = SyncError::Store {
            provider: "p".into(),
            path: "/x".into(),
            error: StoreError::Throttled {
                retry_after: Some(Duration::from_secs(3)),
            },
        };
        assert!(down.is_transient());
        assert_eq!(down.retry_after(), Some(Duration::from_secs(3)));
    }

    /// The details a provider's owner keeps to themselves reach the log, not the pod's event.
    #[test]
    fn events_keep_the_providers_internals_out() {
        let internal = [
            (
                SyncError::ProviderNotReady {
                    provider: "vault".into(),
                    why: "credential Secret phylax-system/vault-approle has no key secret_id".into(),
                },
                "phylax-system/vault-approle",
            ),
            (
                SyncError::Store {
                    provider: "vault".into(),
                    path: "shop/db".into(),
                    error: StoreError::Unreachable(
                        "error sending request for url (https://vault.internal:8200/v1/kv/data/shop/db)"
                            .into(),
                    ),
                },
                "vault.internal",
            ),
            (
                SyncError::Store {
                    provider: "aws".into(),
                    path: "/shop/db".into(),
                    error: StoreError::Config(
                        "AWS Secrets Manager refused the request: ValidationException: account 123456789012"
                            .into(),
                    ),
                },
                "123456789012",
            ),
            (
                SyncError::Store {
                    provider: "vault".into(),
                    path: "shop/db".into(),
                    error: StoreError::Corrupt("upstream gateway page <html>".into()),
                },
                "gateway",
            ),
            (
                SyncError::Refused {
                    provider: "shared".into(),
                    refusal: Refusal::PathNotAllowed {
                        path: "/prod/bank/db".into(),
                        namespace: "shop".into(),
                        patterns: vec!["/prod/{namespace}/*".into(), "/legacy/payments-*".into()],
                    },
                },
                "/legacy/payments-*",
            ),
            (
                SyncError::Refused {
                    provider: "shared".into(),
                    refusal: Refusal::UnsafePatterns("spec.paths pattern \"{namespace}-*\" lets ...".into()),
                },
                "{namespace}-*",
            ),
        ];
        for (e, detail) in internal {
            assert!(
                e.message().contains(detail),
                "the log lacks {detail:?}: {}",
                e.message()
            );
            let note = e.note();
            assert!(!note.contains(detail), "the event shows {detail:?}: {note}");
            assert!(note.contains("SecretProvider"), "{note}");
        }
        // What the namespace can act on stays in the event.
        let denied = SyncError::Store {
            provider: "aws".into(),
            path: "/shop/db".into(),
            error: StoreError::AccessDenied {
                path: "/shop/db".into(),
                need: "IAM action secretsmanager:GetSecretValue".into(),
            },
        };
        assert_eq!(denied.note(), denied.message());
    }
}
