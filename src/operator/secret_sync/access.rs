//! A SecretProvider's access rules, free of I/O: which namespaces may use it and which paths each
//! may read. Default is deny.

use std::collections::BTreeMap;

use crate::api::secret_provider::{NamespaceRules, SecretProviderSpec};
use crate::api::selectors::{glob_matches, selector_matches};

/// Why a request is refused. The requesting namespace learns only what it can act on (its own
/// path, that its namespace or path is not allowed); the provider's patterns are the provider
/// owner's business and appear only in the operator's log and the provider's status.
#[derive(Debug, Clone, PartialEq)]
pub enum Refusal {
    /// The requested path itself is malformed.
    BadPath(String),
    /// The provider's own patterns are unsafe; the provider's Configured condition says which.
    UnsafePatterns(String),
    NamespaceNotAllowed {
        namespace: String,
    },
    NoPaths,
    PathNotAllowed {
        path: String,
        namespace: String,
        patterns: Vec<String>,
    },
}

impl Refusal {
    /// The whole story, for the operator's log; names the provider's field to change.
    pub fn detail(&self) -> String {
        match self {
            Refusal::BadPath(why) | Refusal::UnsafePatterns(why) => why.clone(),
            Refusal::NamespaceNotAllowed { namespace } => format!(
                "namespace {namespace} is not allowed: add it to spec.namespaces.names or label it to match \
                 spec.namespaces.selector"
            ),
            Refusal::NoPaths => "spec.paths is empty, so no path is allowed".to_owned(),
            Refusal::PathNotAllowed {
                path,
                namespace,
                patterns,
            } => format!(
                "path {path:?} matches none of spec.paths ({}) for namespace {namespace}",
                patterns.join(", ")
            ),
        }
    }

    /// What the requesting namespace is told (an event on its pod).
    pub fn public(&self) -> String {
        match self {
            Refusal::BadPath(why) => why.clone(),
            Refusal::UnsafePatterns(_) => {
                "its spec.paths are refused as unsafe (its Configured condition says why); ask its owner to \
                 fix them"
                    .to_owned()
            }
            Refusal::NamespaceNotAllowed { namespace } => format!(
                "namespace {namespace} is not allowed by its spec.namespaces; ask its owner to allow it"
            ),
            Refusal::NoPaths | Refusal::PathNotAllowed { .. } => {
                "the path is not among those its spec.paths allow for this namespace; ask its owner which \
                 paths are"
                    .to_owned()
            }
        }
    }
}

/// Checks a request against a provider's rules. Default is deny.
pub fn check(
    spec: &SecretProviderSpec,
    namespace: &str,
    ns_labels: &BTreeMap<String, String>,
    path: &str,
) -> Result<(), Refusal> {
    check_path_shape(path).map_err(Refusal::BadPath)?;
    check_patterns(&spec.paths).map_err(Refusal::UnsafePatterns)?;
    if !namespace_allowed(&spec.namespaces, namespace, ns_labels) {
        return Err(Refusal::NamespaceNotAllowed {
            namespace: namespace.to_owned(),
        });
    }
    if !spec.paths.iter().any(|p| path_matches(p, namespace, path)) {
        return Err(if spec.paths.is_empty() {
            Refusal::NoPaths
        } else {
            Refusal::PathNotAllowed {
                path: path.to_owned(),
                namespace: namespace.to_owned(),
                patterns: spec.paths.clone(),
            }
        });
    }
    Ok(())
}

/// Refuses path patterns that let one namespace read another's secrets. `{namespace}` must end its
/// segment (be followed by `/` or the end) and no `*` may stand before it in that segment: with
/// `{namespace}-*`, namespace `team` would read `team-payments-db`, the secret of namespace
/// `team-payments`; with `*-{namespace}`, namespace `db` would read `shop-db`.
pub fn check_patterns(patterns: &[String]) -> Result<(), String> {
    for pattern in patterns {
        let mut rest = pattern.as_str();
        let mut offset = 0;
        while let Some(at) = rest.find(NAMESPACE) {
            let start = offset + at;
            let end = start + NAMESPACE.len();
            let segment_start = pattern[..start].rfind('/').map_or(0, |i| i + 1);
            let followed_ok = pattern[end..].is_empty() || pattern[end..].starts_with('/');
            if !followed_ok || pattern[segment_start..start].contains('*') {
                return Err(format!(
                    "spec.paths pattern {pattern:?} lets one namespace read another's secrets: \
                     {NAMESPACE} must be a whole path segment's end, followed by '/' or nothing and \
                     with no '*' before it in its segment (e.g. /prod/{NAMESPACE}/*); for stores whose \
                     names cannot hold '/' (Azure Key Vault), use one SecretProvider per namespace"
                ));
            }
            offset = end;
            rest = &pattern[end..];
        }
    }
    Ok(())
}

const NAMESPACE: &str = "{namespace}";

/// Paths with `.`/`..` segments could step out of an allowed prefix once the store normalises
/// them, so they are refused before any pattern is tried.
pub fn check_path_shape(path: &str) -> Result<(), String> {
    if path.chars().any(char::is_control) {
        return Err("path contains control characters".into());
    }
    if path.split(['/', '\\']).any(|s| s == ".." || s == ".") {
        return Err(format!("path {path:?} has '.' or '..' segments (path traversal)"));
    }
    Ok(())
}

pub fn namespace_allowed(rules: &NamespaceRules, namespace: &str, labels: &BTreeMap<String, String>) -> bool {
    rules.names.iter().any(|n| n == namespace)
        || rules
            .selector
            .as_ref()
            .is_some_and(|s| selector_matches(s, labels))
}

/// `*` matches any run of characters (also across `/`); `{namespace}` is the requesting namespace.
pub fn path_matches(pattern: &str, namespace: &str, path: &str) -> bool {
    let pattern = pattern.replace("{namespace}", namespace);
    glob_matches(&pattern, path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect()
    }

    #[test]
    fn patterns_that_cross_namespaces_are_refused() {
        for ok in [
            "/prod/{namespace}/*",
            "/prod/{namespace}",
            "{namespace}/db",
            "app-{namespace}",
            "/x/{namespace}/{namespace}/y",
            "/fixed/*",
        ] {
            assert!(check_patterns(&[ok.into()]).is_ok(), "{ok}");
        }
        for bad in [
            "{namespace}-*",
            "/p/{namespace}*",
            "*-{namespace}",
            "/p/a*b{namespace}/x",
            "{namespace}.db",
        ] {
            let err = check_patterns(&["/fine/*".into(), bad.into()]).unwrap_err();
            assert!(
                err.contains(bad) && err.contains("one SecretProvider per namespace"),
                "{err}"
            );
        }
        // The attack: namespace `team` asks for the secret of namespace `team-payments`.
        let spec: SecretProviderSpec = serde_json::from_value(serde_json::json!({
            "file": {"directory": "/x"},
            "namespaces": {"names": ["team", "team-payments"]},
            "paths": ["{namespace}-*"],
        }))
        .unwrap();
        let err = check(&spec, "team", &BTreeMap::new(), "team-payments-db").unwrap_err();
        assert!(
            err.detail().contains("lets one namespace read another's"),
            "{err:?}"
        );
        // The requester is not shown the provider's patterns.
        assert!(!err.public().contains("{namespace}"), "{}", err.public());
    }

    #[test]
    fn patterns() {
        assert!(path_matches("/prod/{namespace}/*", "shop", "/prod/shop/config"));
        assert!(path_matches("/prod/{namespace}/*", "shop", "/prod/shop/a/b"));
        assert!(!path_matches("/prod/{namespace}/*", "shop", "/prod/bank/config"));
        assert!(!path_matches(
            "/prod/{namespace}/*",
            "shop",
            "/prod/shopping/config"
        ));
        assert!(path_matches("*", "x", "anything/at/all"));
        assert!(path_matches("exact", "x", "exact"));
        assert!(!path_matches("exact", "x", "exact2"));
        assert!(path_matches("a*b*c", "x", "aXXbYYc"));
        assert!(!path_matches("a*b*c", "x", "aXXbYY"));
        // Pathological pattern stays fast.
        let long = "a".repeat(5000);
        assert!(!path_matches("*a*a*a*a*a*a*b", "x", &long));
    }

    #[test]
    fn default_deny_and_rules() {
        let mut spec = SecretProviderSpec::default();
        let none = BTreeMap::new();
        assert!(
            check(&spec, "shop", &none, "/a")
                .unwrap_err()
                .detail()
                .contains("not allowed")
        );
        spec.namespaces.names = vec!["shop".into()];
        assert!(
            check(&spec, "shop", &none, "/a")
                .unwrap_err()
                .detail()
                .contains("spec.paths is empty")
        );
        spec.paths = vec!["/prod/{namespace}/*".into()];
        assert!(check(&spec, "shop", &none, "/prod/shop/db").is_ok());
        assert!(
            check(&spec, "shop", &none, "/prod/bank/db")
                .unwrap_err()
                .detail()
                .contains("matches none")
        );
        assert!(
            check(&spec, "bank", &none, "/prod/bank/db")
                .unwrap_err()
                .detail()
                .contains("namespace bank")
        );
        assert!(
            check(&spec, "shop", &none, "/prod/shop/../bank/db")
                .unwrap_err()
                .detail()
                .contains("traversal")
        );
    }

    #[test]
    fn selectors() {
        let sel = LabelSelector {
            match_labels: Some(labels(&[("team", "shop")])),
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "env".into(),
                operator: "In".into(),
                values: Some(vec!["prod".into(), "staging".into()]),
            }]),
        };
        assert!(selector_matches(
            &sel,
            &labels(&[("team", "shop"), ("env", "prod")])
        ));
        assert!(!selector_matches(
            &sel,
            &labels(&[("team", "shop"), ("env", "dev")])
        ));
        assert!(!selector_matches(&sel, &labels(&[("env", "prod")])));
        assert!(selector_matches(&LabelSelector::default(), &labels(&[])));
        let bad = LabelSelector {
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "x".into(),
                operator: "Like".into(),
                values: None,
            }]),
            ..Default::default()
        };
        assert!(!selector_matches(&bad, &labels(&[("x", "1")])));
        let not_in = LabelSelector {
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "tier".into(),
                operator: "NotIn".into(),
                values: Some(vec!["restricted".into()]),
            }]),
            ..Default::default()
        };
        assert!(selector_matches(&not_in, &labels(&[])));
        assert!(!selector_matches(&not_in, &labels(&[("tier", "restricted")])));
    }
}
