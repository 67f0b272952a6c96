//! The names by which Phylax marks what it owns, defined once: the field managers of its
//! server-side applies, the managed-by label on objects it creates, and the operator's Lease.

use std::collections::BTreeMap;

/// Field manager of every write the operator makes.
pub const OPERATOR_MANAGER: &str = "phylax-operator";
/// Field manager of every write a node agent makes.
pub const NODE_AGENT_MANAGER: &str = "phylax-node-agent";
/// The label on every object Phylax created; an object without it is never taken over.
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "phylax");
/// The Lease the operator replicas elect their leader on (`--lease-name`'s default).
pub const OPERATOR_LEASE: &str = "phylax-operator";

/// Whether an object carries Phylax's managed-by label.
pub fn is_managed(labels: Option<&BTreeMap<String, String>>) -> bool {
    labels
        .and_then(|l| l.get(MANAGED_BY.0))
        .is_some_and(|v| v == MANAGED_BY.1)
}

/// The managed-by label as a map, to start an object's labels with.
pub fn managed_labels() -> BTreeMap<String, String> {
    BTreeMap::from([(MANAGED_BY.0.to_owned(), MANAGED_BY.1.to_owned())])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn managed_only_with_the_exact_label() {
        assert!(is_managed(Some(&managed_labels())));
        assert!(!is_managed(None));
        let other = BTreeMap::from([(MANAGED_BY.0.to_owned(), "helm".to_owned())]);
        assert!(!is_managed(Some(&other)));
    }
}
