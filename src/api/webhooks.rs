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
    },
    WebhookSpec {
        name: "profiles",
        mutating: true,
        rules: &[Rule {
            groups: &[""],
            versions: &["v1"],
            resources: &["pods"],
            operations: &["CREATE"],
        }],
        // A pod a ProfileBinding covers must not start without its profile because the webhook was
        // down. kube-system, Phylax's namespace and namespaces labelled `phylax.dev/webhooks:
        // disabled` are never sent to it.
        failure_policy: "Fail",
    },
];

/// Namespace label that takes a namespace out of every Phylax webhook. Only namespaces: a label on
/// a pod is its author's to set, and would let any pod author switch enforcement off.
pub const OPT_OUT_LABEL: &str = "phylax.dev/webhooks";
pub const OPT_OUT_VALUE: &str = "disabled";
/// With `phylax manifests --webhooks opt-in`, only namespaces labelled `phylax.dev/webhooks: enabled`.
pub const OPT_IN_VALUE: &str = "enabled";
/// Seconds the API server waits for an answer (the handlers' own deadline is shorter).
pub const TIMEOUT_SECONDS: i32 = 5;
