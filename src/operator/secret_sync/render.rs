//! From a source secret's bytes to a Secret's data, free of I/O.
//!
//! A JSON object maps each key to a data key (strings as their text, anything else as its JSON
//! text); anything else becomes one key. Errors never quote values.

use std::collections::BTreeMap;

pub use crate::api::sync_annotation::is_secret_key;
use k8s_openapi::ByteString;

/// The API server's limit on a Secret's data.
pub const MAX_SECRET_BYTES: usize = 1024 * 1024;

pub type Data = BTreeMap<String, ByteString>;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RenderError {
    #[error(
        "the source is not valid JSON ({0}); fix it in the store, or drop `keys` to take it as one value"
    )]
    NotJson(String),
    #[error("the source has no key(s) {}; it has {}", .missing.join(", "), .present.join(", "))]
    MissingKeys {
        missing: Vec<String>,
        present: Vec<String>,
    },
    #[error(
        "the source's key {0:?} is not a valid Secret data key (letters, digits, '-', '_', '.'); select valid ones with `keys`"
    )]
    BadKey(String),
    #[error("the result is {0} bytes, over the 1 MiB limit of a Secret; select fewer keys with `keys`")]
    TooLarge(usize),
}

pub fn render(source: &[u8], keys: &[String], raw_key: &str) -> Result<Data, RenderError> {
    let text = std::str::from_utf8(source).ok();
    let looks_like_object = text.is_some_and(|t| t.trim_start().starts_with('{'));
    let mut data = Data::new();
    if looks_like_object {
        let object: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(source).map_err(|e| RenderError::NotJson(describe(&e)))?;
        let present: Vec<String> = object.keys().cloned().collect();
        let wanted: Vec<&String> = if keys.is_empty() {
            object.keys().collect()
        } else {
            keys.iter().collect()
        };
        let missing: Vec<String> = wanted
            .iter()
            .filter(|k| !object.contains_key(**k))
            .map(|k| clip(k))
            .collect();
        if !missing.is_empty() {
            return Err(RenderError::MissingKeys {
                missing,
                present: present.iter().map(|k| clip(k)).collect(),
            });
        }
        for key in wanted {
            if !is_secret_key(key) {
                return Err(RenderError::BadKey(clip(key)));
            }
            let value = match &object[key.as_str()] {
                serde_json::Value::String(s) => s.clone().into_bytes(),
                other => other.to_string().into_bytes(),
            };
            data.insert(key.clone(), ByteString(value));
        }
    } else if !keys.is_empty() {
        return Err(RenderError::NotJson(
            "keys were requested but the source is not a JSON object".into(),
        ));
    } else {
        if !is_secret_key(raw_key) {
            return Err(RenderError::BadKey(clip(raw_key)));
        }
        data.insert(raw_key.to_owned(), ByteString(source.to_vec()));
    }
    let size: usize = data.iter().map(|(k, v)| k.len() + v.0.len()).sum();
    if size > MAX_SECRET_BYTES {
        return Err(RenderError::TooLarge(size));
    }
    Ok(data)
}

/// serde_json's message without anything from the input: its kind and where.
fn describe(e: &serde_json::Error) -> String {
    let what = match e.classify() {
        serde_json::error::Category::Io => "cannot be read",
        serde_json::error::Category::Syntax => "syntax error",
        serde_json::error::Category::Data => "not a JSON object",
        serde_json::error::Category::Eof => "ends too early",
    };
    format!("{what} at line {}, column {}", e.line(), e.column())
}

fn clip(s: &str) -> String {
    match s.char_indices().nth(40) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(d: &Data, k: &str) -> String {
        String::from_utf8(d[k].0.clone()).unwrap()
    }

    #[test]
    fn json_objects_map_keys_and_nested_values_become_json_text() {
        let d = render(
            br#"{"DB_HOST":"db","PORT":5432,"nested":{"a":[1,2]}}"#,
            &[],
            "value",
        )
        .unwrap();
        assert_eq!(text(&d, "DB_HOST"), "db");
        assert_eq!(text(&d, "PORT"), "5432");
        assert_eq!(text(&d, "nested"), r#"{"a":[1,2]}"#);
        let only = render(br#"{"A":"1","B":"2"}"#, &["B".into()], "value").unwrap();
        assert_eq!(only.keys().collect::<Vec<_>>(), ["B"]);
    }

    #[test]
    fn other_sources_are_one_key() {
        let d = render(b"plain-token", &[], "token").unwrap();
        assert_eq!(text(&d, "token"), "plain-token");
        let bin = render(&[0xff, 0x00, 0x7b], &[], "value").unwrap();
        assert_eq!(bin["value"].0, [0xff, 0x00, 0x7b]);
        // A JSON array or string is not an object: one key.
        assert!(render(b"[1,2]", &[], "value").is_ok());
    }

    #[test]
    fn errors_name_the_problem_without_values() {
        let e = render(br#"{"A": "s3cr3t-value", "#, &[], "value").unwrap_err();
        assert!(
            matches!(&e, RenderError::NotJson(m) if m.contains("line 1")),
            "{e}"
        );
        assert!(!e.to_string().contains("s3cr3t"));
        let e = render(br#"{"A":"1"}"#, &["B".into()], "value").unwrap_err();
        assert_eq!(e.to_string(), "the source has no key(s) B; it has A");
        assert!(matches!(
            render(b"raw", &["A".into()], "value"),
            Err(RenderError::NotJson(_))
        ));
        assert!(matches!(
            render(br#"{"a/b":"1"}"#, &[], "value"),
            Err(RenderError::BadKey(_))
        ));
        let big = format!(r#"{{"A":"{}"}}"#, "x".repeat(MAX_SECRET_BYTES));
        assert!(matches!(
            render(big.as_bytes(), &[], "value"),
            Err(RenderError::TooLarge(_))
        ));
    }

    #[test]
    fn key_order_does_not_change_the_data() {
        let a = render(br#"{"A":"1","B":"2"}"#, &[], "v").unwrap();
        let b = render(br#"{"B":"2","A":"1"}"#, &[], "v").unwrap();
        assert_eq!(a, b);
    }
}
