//! The admission webhooks Phylax registers: what each reviews and how the API server calls it.
//! `phylax manifests` renders the webhook configurations from this list, and the webhook role
//! serves a handler for each entry (a test keeps the two in step).

/// The Validating- and MutatingWebhookConfiguration, whose caBundle the operator keeps current.
pub const CONFIGURATION_NAME: &str = "phylax";
/// The webhook's serving certificate (kubernetes.io/tls), mounted by the webhook pods.
pub const TLS_SECRET: &str = "phylax-webhook-tls";
/// The CA that signs it, kept by the operator in its namespace.
pub const CA_SECRET: &str = "phylax-webhook-ca";

/// One admission rule: these operations on these resources.
pub struct Rule {
    pub groups: &'static [&'static str],
    pub versions: &'static [&'static str],
    pub resources: &'static [&'static str],
    pub operations: &'static [&'static str],
}

pub struct WebhookSpec {
    /// The handler's name: served at `/validate/<name>` or `/mutate/<name>`.
    pub name: &'static str,
    pub mutating: bool,
    pub rules: &'static [Rule],
    /// What the API server does when the webhook cannot be reached: `Ignore` or `Fail`.
    pub failure_policy: &'static str,
    /// Called only for the namespaces the operator puts in its [`NamespaceScope`]; a fail-closed
    /// webhook that every pod in the cluster waits for is a cluster-wide outage when it is down.
    pub scoped: bool,
}

impl WebhookSpec {
    pub fn path(&self) -> String {
        format!(
            "/{}/{}",
            if self.mutating { "mutate" } else { "validate" },
            self.name
        )
    }
}

const CREATE_UPDATE: &[&str] = &["CREATE", "UPDATE"];

pub const WEBHOOKS: &[WebhookSpec] = &[
    WebhookSpec {
        name: "secret-sync",
        mutating: false,
        rules: &[
            Rule {
                groups: &[""],
                versions: &["v1"],
                resources: &["pods"],
                operations: CREATE_UPDATE,
            },
            Rule {
                groups: &["apps"],
                versions: &["v1"],
                resources: &["deployments", "statefulsets", "daemonsets", "replicasets"],
                operations: CREATE_UPDATE,
            },
            Rule {
                groups: &["batch"],
                versions: &["v1", "v1beta1"],
                resources: &["jobs", "cronjobs"],
                operations: CREATE_UPDATE,
            },
        ],
        // A validation of convenience: when the webhook is down, pods still start (the controller
        // reports the same mistake as an event).
        failure_policy: "Ignore",
        scoped: false,
    },
    WebhookSpec {
        name: "profiles",
        mutating: true,
        rules: &[
            Rule {
                groups: &[""],
                versions: &["v1"],
                resources: &["pods"],
                operations: &["CREATE"],
            },
            // `kubectl debug` adds ephemeral containers to running pods: they are bound too.
            Rule {
                groups: &[""],
                versions: &["v1"],
                resources: &["pods/ephemeralcontainers"],
                operations: &["UPDATE"],
            },
        ],
        // A pod a ProfileBinding covers must not start without its profile because the webhook was
        // down. kube-system, Phylax's namespace and namespaces labelled `phylax.dev/webhooks:
        // disabled` are never sent to it.
        failure_policy: "Fail",
        scoped: true,
    },
    WebhookSpec {
        name: "node-writes",
        mutating: false,
        rules: &[Rule {
            groups: &["profiles.phylax.dev"],
            versions: &["v1alpha1"],
            resources: &[
                "profilenodestatuses",
                "profilenodestatuses/status",
                "seccompprofiles",
                "apparmorprofiles",
            ],
            operations: &["CREATE", "UPDATE", "DELETE"],
        }],
        // Ties each node agent's writes to its node: an unchecked write is what it exists to stop.
        // Only the agents' (and admins') writes to these objects wait for it.
        failure_policy: "Fail",
        scoped: false,
    },
    WebhookSpec {
        name: "recording-claims",
        mutating: false,
        rules: &[Rule {
            groups: &[""],
            versions: &["v1"],
            resources: &["pods"],
            operations: &["UPDATE"],
        }],
        // The node agent checks a recorded pod's recording itself; this refuses the claim early.
        failure_policy: "Ignore",
        scoped: false,
    },
];

/// The label every namespace carries with its own name (set by the API server, 1.21+; on older
/// clusters the operator's scope matches no namespace until an admin labels them, see README).
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";
/// A label value no namespace name can have (namespace names hold no dots): `In` it matches
/// nothing, `NotIn` everything.
pub const NO_NAMESPACE: &str = "none.phylax.dev";

/// The namespaces a scoped webhook is called for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NamespaceScope {
    /// Every namespace the configuration's other requirements let through.
    All,
    /// These namespaces (none when empty).
    Only(std::collections::BTreeSet<String>),
}

impl NamespaceScope {
    /// The profile binder's scope: the namespaces holding ProfileBindings, or every namespace
    /// while a ProfileRecording exists anywhere, because the log-everything profile is then on
    /// the nodes and only the webhook keeps pods of other namespaces from naming it.
    pub fn for_profiles(
        binding_namespaces: impl IntoIterator<Item = String>,
        any_recording: bool,
    ) -> NamespaceScope {
        if any_recording {
            NamespaceScope::All
        } else {
            NamespaceScope::Only(binding_namespaces.into_iter().collect())
        }
    }

    /// The namespaceSelector requirement expressing the scope: `{key, operator, values}`.
    pub fn requirement(&self) -> (&'static str, &'static str, Vec<String>) {
        match self {
            NamespaceScope::All => (NAMESPACE_NAME_LABEL, "NotIn", vec![NO_NAMESPACE.to_owned()]),
            NamespaceScope::Only(names) if names.is_empty() => {
                (NAMESPACE_NAME_LABEL, "In", vec![NO_NAMESPACE.to_owned()])
            }
            NamespaceScope::Only(names) => (NAMESPACE_NAME_LABEL, "In", names.iter().cloned().collect()),
        }
    }

    /// Whether a rendered requirement is the scope one (and not, say, the exclusion of
    /// kube-system, which has the same key).
    pub fn is_scope_requirement(key: &str, operator: &str, values: &[String]) -> bool {
        key == NAMESPACE_NAME_LABEL && (operator == "In" || values.iter().any(|v| v == NO_NAMESPACE))
    }
}

/// Namespace label that takes a namespace out of every Phylax webhook. Only namespaces: a label on
/// a pod is its author's to set, and would let any pod author switch enforcement off.
pub const OPT_OUT_LABEL: &str = "phylax.dev/webhooks";
pub const OPT_OUT_VALUE: &str = "disabled";
/// With `phylax manifests --webhooks opt-in`, only namespaces labelled `phylax.dev/webhooks: enabled`.
pub const OPT_IN_VALUE: &str = "enabled";
/// Seconds the API server waits for an answer (the handlers' own deadline is shorter).
pub const TIMEOUT_SECONDS: i32 = 5;
