//! The roles Phylax knows and their defaults: a leaf module that every layer may import (the
//! runtime names the role it runs, the CLI dispatches on it, the manifests render one workload per
//! role) without depending on the command line.

/// The roles Phylax knows, compiled in or not. Used for dispatch and for clear errors about roles a
/// build left out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Operator,
    Webhook,
    KmsPlugin,
    NodeAgent,
    Tokenizer,
}

impl Role {
    pub const ALL: [Role; 5] = [
        Role::Operator,
        Role::Webhook,
        Role::KmsPlugin,
        Role::NodeAgent,
        Role::Tokenizer,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Role::Operator => "operator",
            Role::Webhook => "webhook",
            Role::KmsPlugin => "kms-plugin",
            Role::NodeAgent => "node-agent",
            Role::Tokenizer => "tokenizer",
        }
    }

    pub fn from_name(name: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.name() == name)
    }

    /// Whether this build contains the role (its cargo feature has the role's name).
    pub fn compiled(self) -> bool {
        match self {
            Role::Operator => cfg!(feature = "operator"),
            Role::Webhook => cfg!(feature = "webhook"),
            Role::KmsPlugin => cfg!(feature = "kms-plugin"),
            Role::NodeAgent => cfg!(feature = "node-agent"),
            Role::Tokenizer => cfg!(feature = "tokenizer"),
        }
    }

    /// Each role has its own admin port so several roles can share a host (the KMS plugin and the
    /// node agent do, on control-plane nodes). The KMS plugin runs in the host network namespace,
    /// so it only listens on loopback unless told otherwise.
    pub fn default_admin_addr(self) -> std::net::SocketAddr {
        let (ip, port) = match self {
            Role::Operator => ([0, 0, 0, 0], 9090),
            Role::Webhook => ([0, 0, 0, 0], 9091),
            Role::KmsPlugin => ([127, 0, 0, 1], 9092),
            Role::NodeAgent => ([0, 0, 0, 0], 9093),
            Role::Tokenizer => ([0, 0, 0, 0], 9094),
        };
        (ip, port).into()
    }

    pub fn compiled_names() -> Vec<&'static str> {
        Role::ALL
            .into_iter()
            .filter(|r| r.compiled())
            .map(Role::name)
            .collect()
    }
}
