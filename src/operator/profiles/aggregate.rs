//! A profile's overall status from its nodes' reports, free of I/O.

use std::collections::BTreeSet;

use crate::api::profiles::{NodeReport, NodeResult, NodeState, ProfileStatus};

/// At most this many pods are listed in `usedBy`.
pub const MAX_USED_BY: usize = 100;

pub struct Input<'a> {
    pub generation: Option<i64>,
    pub deleting: bool,
    pub enabled: bool,
    pub localhost_profile: String,
    /// The nodes it must be installed on (every Node).
    pub agents: &'a BTreeSet<String>,
    /// This profile's reports: (node, report).
    pub reports: Vec<(&'a str, &'a NodeReport)>,
}

/// The overall state:
/// - `Terminating` while deleted, `Disabled` when disabled;
/// - `Error` when a node refused the current generation;
/// - `Installed` when every node that can apply it has the current generation;
/// - `Partial` when some have, `Pending` when none has yet;
/// - `Unsupported` when no node can apply it.
pub fn status(input: Input<'_>) -> ProfileStatus {
    let current = |r: &NodeReport| input.generation.is_none() || r.observed_generation == input.generation;
    let mut nodes: Vec<NodeResult> = input
        .reports
        .iter()
        .filter(|(node, _)| input.agents.contains(*node))
        .map(|(node, r)| NodeResult {
            node: (*node).to_owned(),
            state: if current(r) { r.state } else { NodeState::Pending },
            message: r.message.clone(),
        })
        .collect();
    nodes.sort_by(|a, b| a.node.cmp(&b.node));
    let state_of = |node: &str| nodes.iter().find(|n| n.node == node).map(|n| n.state);
    let capable: Vec<&String> = input
        .agents
        .iter()
        .filter(|n| state_of(n) != Some(NodeState::Unsupported))
        .collect();
    let installed = capable
        .iter()
        .filter(|n| state_of(n) == Some(NodeState::Installed))
        .count();
    let error = nodes.iter().find(|n| n.state == NodeState::Error);
    let (state, message) = if input.deleting {
        let waiting: Vec<&str> = nodes
            .iter()
            .filter(|n| n.state == NodeState::Terminating)
            .filter_map(|n| n.message.as_deref())
            .collect();
        let why = waiting
            .first()
            .map(|m| (*m).to_owned())
            .unwrap_or_else(|| "deleted; waiting for the nodes to remove it".to_owned());
        ("Terminating", Some(why))
    } else if !input.enabled {
        ("Disabled", None)
    } else if let Some(e) = error {
        (
            "Error",
            Some(format!(
                "node {}: {}",
                e.node,
                e.message.as_deref().unwrap_or("refused")
            )),
        )
    } else if !input.agents.is_empty() && capable.is_empty() {
        let why = nodes.first().and_then(|n| n.message.clone());
        ("Unsupported", why)
    } else if !capable.is_empty() && installed == capable.len() {
        ("Installed", None)
    } else if installed > 0 {
        (
            "Partial",
            Some(format!("installed on {installed} of {} nodes", capable.len())),
        )
    } else {
        ("Pending", Some("no node has installed it yet".to_owned()))
    };
    let used_by: BTreeSet<&String> = input.reports.iter().flat_map(|(_, r)| r.pods.iter()).collect();
    let ready = state == "Installed";
    ProfileStatus {
        state: Some(state.to_owned()),
        localhost_profile: Some(input.localhost_profile),
        nodes,
        used_by: used_by.into_iter().take(MAX_USED_BY).cloned().collect(),
        conditions: vec![k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
            type_: "Ready".into(),
            status: if ready { "True" } else { "False" }.into(),
            reason: state.into(),
            message: message.unwrap_or_else(|| {
                if ready {
                    "installed on every node".into()
                } else {
                    state.to_lowercase()
                }
            }),
            observed_generation: input.generation,
            last_transition_time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::now(),
            ),
        }],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(state: NodeState, generation: i64, pods: &[&str]) -> NodeReport {
        NodeReport {
            state,
            message: (state == NodeState::Error).then(|| "syscalls[0]: unknown syscall \"nope\"".into()),
            observed_generation: Some(generation),
            path: None,
            pods: pods.iter().map(|p| (*p).to_owned()).collect(),
        }
    }

    fn run(reports: &[(&str, NodeReport)], deleting: bool, enabled: bool) -> ProfileStatus {
        let agents: BTreeSet<String> = ["a".into(), "b".into()].into();
        status(Input {
            generation: Some(2),
            deleting,
            enabled,
            localhost_profile: "phylax/p.json".into(),
            agents: &agents,
            reports: reports.iter().map(|(n, r)| (*n, r)).collect(),
        })
    }

    #[test]
    fn states() {
        let installed = report(NodeState::Installed, 2, &["ns/web"]);
        let old = report(NodeState::Installed, 1, &[]);
        let err = report(NodeState::Error, 2, &[]);
        assert_eq!(run(&[], false, true).state.as_deref(), Some("Pending"));
        let partial = run(&[("a", installed.clone()), ("b", old)], false, true);
        assert_eq!(partial.state.as_deref(), Some("Partial"));
        assert_eq!(partial.nodes[1].state, NodeState::Pending);
        let both = run(&[("a", installed.clone()), ("b", installed.clone())], false, true);
        assert_eq!(both.state.as_deref(), Some("Installed"));
        assert_eq!(both.used_by, ["ns/web"]);
        assert_eq!(both.conditions[0].status, "True");
        let error = run(&[("a", installed.clone()), ("b", err)], false, true);
        assert_eq!(error.state.as_deref(), Some("Error"));
        assert!(
            error.conditions[0].message.contains("node b") && error.conditions[0].message.contains("nope")
        );
        assert_eq!(
            run(&[("a", installed.clone())], true, true).state.as_deref(),
            Some("Terminating")
        );
        assert_eq!(
            run(&[("a", installed.clone())], false, false).state.as_deref(),
            Some("Disabled")
        );
        // A report from a node that no longer exists is left out.
        let gone = run(
            &[
                ("a", installed.clone()),
                ("b", installed.clone()),
                ("c", installed),
            ],
            false,
            true,
        );
        assert_eq!(gone.nodes.len(), 2);
        let unsupported = report(NodeState::Unsupported, 2, &[]);
        let u = run(&[("a", unsupported.clone()), ("b", unsupported)], false, true);
        assert_eq!(u.state.as_deref(), Some("Unsupported"));
    }
}
