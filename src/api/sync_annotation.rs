//! The `secrets.phylax.dev/sync` annotation (README.md, "Operator: secret sync"): which external
//! secrets a pod wants, and the Secret each becomes in the pod's namespace.
//!
//! One parser serves the admission webhook (refusing a bad annotation at `kubectl apply` time) and
//! the secret-sync controller, so both say the same thing about the same mistake. Messages name the
//! entry and the field and say how to fix it; they never quote more than a short prefix of a value.

use std::collections::BTreeSet;

use serde::Deserialize;

use crate::runtime::names;

pub const ANNOTATION: &str = "secrets.phylax.dev/sync";

/// One requested secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyncRequest {
    /// Name of a cluster-scoped `SecretProvider`.
    pub provider: String,
    /// Path or name in the external store.
    pub path: String,
    /// Secret to create in the pod's namespace.
    pub secret_name: String,
    /// Optional subset of the source's keys (empty: all).
    pub keys: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawEntry {
    provider: Option<String>,
    path: Option<String>,
    secret_name: Option<String>,
    keys: Option<Vec<String>>,
}

const EXAMPLE: &str = "e.g. {provider: aws-prod, path: /prod/shop/config, secretName: shop-config}";
const MAX_PATH: usize = 1024;
const MAX_ENTRIES: usize = 64;

/// Parses the annotation's value (YAML or JSON; one mapping or a list of them).
pub fn parse(value: &str) -> Result<Vec<SyncRequest>, String> {
    if value.trim().is_empty() {
        return Err(format!(
            "{ANNOTATION} is empty; give one entry or a list, {EXAMPLE}"
        ));
    }
    // YAML is a superset of JSON, so one parser reads both.
    let doc: serde_yaml::Value = serde_yaml::from_str(value).map_err(|e| {
        let why = e.to_string();
        let why = why.split(" at line").next().unwrap_or(&why).to_owned();
        let place = e
            .location()
            .map(|l| format!(" (line {}, column {})", l.line(), l.column()))
            .unwrap_or_default();
        format!("{ANNOTATION} is not valid YAML or JSON{place}: {why}; {EXAMPLE}")
    })?;
    let items = match doc {
        serde_yaml::Value::Sequence(items) => items,
        m @ serde_yaml::Value::Mapping(_) => vec![m],
        _ => {
            return Err(format!(
                "{ANNOTATION} is not a mapping or a list of mappings with provider, path, secretName and \
                 optional keys; {EXAMPLE}"
            ));
        }
    };
    let many = items.len() > 1;
    let entries = items
        .into_iter()
        .enumerate()
        .map(|(i, item)| {
            serde_yaml::from_value::<RawEntry>(item).map_err(|e| {
                let at = if many {
                    format!("{ANNOTATION} entry {}", i + 1)
                } else {
                    ANNOTATION.to_owned()
                };
                format!("{at}: {e}; {EXAMPLE}")
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    if entries.is_empty() {
        return Err(format!("{ANNOTATION} is an empty list; {EXAMPLE}"));
    }
    if entries.len() > MAX_ENTRIES {
        return Err(format!(
            "{ANNOTATION} has {} entries; at most {MAX_ENTRIES}",
            entries.len()
        ));
    }
    let mut seen = BTreeSet::new();
    let mut out = Vec::with_capacity(entries.len());
    for (i, e) in entries.into_iter().enumerate() {
        let at = if many {
            format!("{ANNOTATION} entry {}", i + 1)
        } else {
            ANNOTATION.to_owned()
        };
        let provider = required(&at, "provider", e.provider)?;
        names::parse_object_name(&provider)
            .map_err(|why| format!("{at}: provider must name a SecretProvider: {why}"))?;
        let path = required(&at, "path", e.path)?;
        if path.len() > MAX_PATH || path.chars().any(char::is_control) {
            return Err(format!(
                "{at}: path must be at most {MAX_PATH} characters without control characters"
            ));
        }
        let secret_name = required(&at, "secretName", e.secret_name)?;
        names::parse_object_name(&secret_name)
            .map_err(|why| format!("{at}: secretName must be a valid Secret name: {why}"))?;
        if !seen.insert(secret_name.clone()) {
            return Err(format!(
                "{at}: secretName {secret_name:?} is already used by an earlier entry; each entry \
                 needs its own Secret"
            ));
        }
        let keys = e.keys.unwrap_or_default();
        for key in &keys {
            if !is_secret_key(key) {
                return Err(format!(
                    "{at}: key {:?} is not a valid Secret data key (letters, digits, '-', '_', '.'; \
                     at most 253 characters)",
                    clip(key)
                ));
            }
        }
        out.push(SyncRequest {
            provider,
            path,
            secret_name,
            keys,
        });
    }
    Ok(out)
}

fn required(at: &str, field: &str, value: Option<String>) -> Result<String, String> {
    match value {
        Some(v) if !v.trim().is_empty() => Ok(v),
        _ => Err(format!("{at}: {field} is missing; {EXAMPLE}")),
    }
}

/// A Secret data key: `[-._a-zA-Z0-9]+`, at most 253 characters, not `.` or `..`.
pub fn is_secret_key(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= 253
        && k != "."
        && k != ".."
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn clip(s: &str) -> &str {
    match s.char_indices().nth(40) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_entry_a_list_yaml_or_json() {
        let one = parse("provider: aws-prod\npath: /prod/shop/config\nsecretName: shop-config\n").unwrap();
        assert_eq!(
            one,
            vec![SyncRequest {
                provider: "aws-prod".into(),
                path: "/prod/shop/config".into(),
                secret_name: "shop-config".into(),
                keys: vec![],
            }]
        );
        let list = parse(
            "- provider: aws-prod\n  path: /a\n  secretName: a\n  keys: [DB_HOST, DB_PASSWORD]\n\
             - provider: vault\n  path: kv/b\n  secretName: b\n",
        )
        .unwrap();
        assert_eq!(list.len(), 2);
        assert_eq!(list[0].keys, ["DB_HOST", "DB_PASSWORD"]);
        let json = parse(r#"[{"provider":"p","path":"/x","secretName":"s"}]"#).unwrap();
        assert_eq!(json[0].secret_name, "s");
    }

    #[test]
    fn mistakes_are_named_with_the_fix() {
        let err = |v: &str| parse(v).unwrap_err();
        assert!(err("").contains("is empty"));
        assert!(err("[]").contains("empty list"));
        assert!(err("provider: p\npath: /x\n").contains("secretName is missing"));
        assert!(err("provider: p\npath: /x\nsecretName: s\nsecretname: t\n").contains("unknown field"));
        assert!(err("provider: P_Q\npath: /x\nsecretName: s").contains("provider must name"));
        assert!(err("provider: p\npath: /x\nsecretName: Bad_Name").contains("valid Secret name"));
        assert!(
            err("provider: p\npath: /x\nsecretName: s\nkeys: ['a/b']")
                .contains("not a valid Secret data key")
        );
        let dup = err("- {provider: p, path: /a, secretName: s}\n- {provider: p, path: /b, secretName: s}");
        assert!(dup.contains("entry 2") && dup.contains("already used"), "{dup}");
        let bad_yaml = err("provider: [unclosed");
        assert!(
            bad_yaml.contains("not valid YAML") && bad_yaml.contains("e.g."),
            "{bad_yaml}"
        );
        assert!(err("just a string").contains("not a mapping"));
        for e in [err(""), bad_yaml, dup] {
            assert!(!e.contains('\n'), "one line: {e:?}");
        }
    }
}
