//! Matching shared by the API's rules: label selectors and `*` globs (secret paths, images).

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

/// `*` matches any run of characters; everything else literally. Linear: backtracks only to the
/// last `*`.
pub fn glob_matches(pattern: &str, s: &str) -> bool {
    let (p, s) = (pattern.as_bytes(), s.as_bytes());
    let (mut pi, mut si) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, si));
            pi += 1;
        } else if pi < p.len() && p[pi] == s[si] {
            pi += 1;
            si += 1;
        } else if let Some((sp, ss)) = star {
            pi = sp + 1;
            si = ss + 1;
            star = Some((sp, ss + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

/// Kubernetes label-selector semantics: every matchLabels pair and every expression must hold;
/// an empty selector matches everything. An unknown operator matches nothing.
pub fn selector_matches(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let pairs = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let exprs = selector.match_expressions.iter().flatten().all(|e| {
        let values = e.values.as_deref().unwrap_or_default();
        let value = labels.get(&e.key);
        match e.operator.as_str() {
            "In" => value.is_some_and(|v| values.contains(v)),
            "NotIn" => value.is_none_or(|v| !values.contains(v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            _ => false,
        }
    });
    pairs && exprs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_matches("*", "anything/at:all"));
        assert!(glob_matches("nginx:1.2", "nginx:1.2"));
        assert!(!glob_matches("nginx:1.2", "nginx:1.20"));
        assert!(glob_matches("registry.local/*:v*", "registry.local/team/app:v3"));
        assert!(!glob_matches("registry.local/*:v*", "other/app:v3"));
        assert!(glob_matches(&"*a".repeat(20), &"a".repeat(1000)));
        assert!(!glob_matches(&"*a".repeat(20), &"b".repeat(1000)));
    }
}
