//! RFC 8785 JSON Canonicalization Scheme, for the JSON a destruction certificate holds: object
//! members sorted by their names' UTF-16 code units, no insignificant whitespace, strings escaped
//! as ECMAScript's `JSON.stringify` does (serde_json's string writer does exactly that: `"`, `\`
//! and control characters only, lowercase `\u00xx`), arrays in order.
//!
//! Numbers: certificates hold only integers, so only integers within ±2^53 (where every JSON
//! number has one ECMAScript form, its decimal digits) are accepted; anything else is refused
//! rather than given a form a verifier in another language might not reproduce.

use serde_json::Value;

/// The largest integer ECMAScript represents exactly.
const MAX_SAFE: u64 = (1 << 53) - 1;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CanonicalError {
    #[error("the number {0} is not an integer within ±2^53, which certificates never hold")]
    Number(String),
    #[error("nesting deeper than {MAX_DEPTH} levels")]
    TooDeep,
}

const MAX_DEPTH: usize = 64;

/// The canonical bytes of `value`.
pub fn canonicalize(value: &Value) -> Result<Vec<u8>, CanonicalError> {
    let mut out = Vec::with_capacity(512);
    write(value, &mut out, 0)?;
    Ok(out)
}

fn write(value: &Value, out: &mut Vec<u8>, depth: usize) -> Result<(), CanonicalError> {
    if depth > MAX_DEPTH {
        return Err(CanonicalError::TooDeep);
    }
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(n) => {
            let ok = match (n.as_u64(), n.as_i64()) {
                (Some(u), _) => u <= MAX_SAFE,
                (None, Some(i)) => i.unsigned_abs() <= MAX_SAFE,
                _ => false,
            };
            if !ok {
                return Err(CanonicalError::Number(n.to_string()));
            }
            out.extend_from_slice(n.to_string().as_bytes());
        }
        Value::String(s) => write_string(s, out),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write(item, out, depth + 1)?;
            }
            out.push(b']');
        }
        Value::Object(members) => {
            let mut sorted: Vec<(&String, &Value)> = members.iter().collect();
            // UTF-16 order differs from UTF-8 (byte) order only above U+FFFF versus
            // U+E000..U+FFFF; compare code units to be exact.
            sorted.sort_by(|a, b| a.0.encode_utf16().cmp(b.0.encode_utf16()));
            out.push(b'{');
            for (i, (k, v)) in sorted.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_string(k, out);
                out.push(b':');
                write(v, out, depth + 1)?;
            }
            out.push(b'}');
        }
    }
    Ok(())
}

fn write_string(s: &str, out: &mut Vec<u8>) {
    // serde_json writes a string to a Vec infallibly.
    let _ = serde_json::to_writer(&mut *out, s);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn canon(v: Value) -> String {
        String::from_utf8(canonicalize(&v).unwrap()).unwrap()
    }

    #[test]
    fn members_are_sorted_and_whitespace_dropped() {
        assert_eq!(
            canon(json!({"b": [1, {"z": null, "a": true}], "a": "x", "": false})),
            r#"{"":false,"a":"x","b":[1,{"a":true,"z":null}]}"#
        );
        // Reordering the input changes nothing.
        let one: Value = serde_json::from_str(r#"{"x": 1, "y": {"q": 2, "p": 3}}"#).unwrap();
        let two: Value = serde_json::from_str(r#"{"y": {"p": 3, "q": 2}, "x": 1}"#).unwrap();
        assert_eq!(canonicalize(&one), canonicalize(&two));
    }

    #[test]
    fn strings_are_escaped_as_ecmascript_does() {
        // RFC 8785 section 3.2.2.2's example characters.
        assert_eq!(
            canon(json!("\u{20ac}$\u{000F}\u{000a}A'\u{0042}\u{0022}\u{005c}\\\"/")),
            "\"\u{20ac}$\\u000f\\nA'B\\\"\\\\\\\\\\\"/\""
        );
    }

    #[test]
    fn keys_sort_by_utf16_code_units() {
        // U+1F600 (a surrogate pair, D83D..) sorts before U+FB01 in UTF-16, after it in UTF-8.
        assert_eq!(
            canon(json!({"\u{fb01}": 1, "\u{1f600}": 2})),
            "{\"\u{1f600}\":2,\"\u{fb01}\":1}"
        );
    }

    #[test]
    fn numbers_outside_the_safe_integers_are_refused() {
        assert_eq!(canon(json!(-9007199254740991_i64)), "-9007199254740991");
        assert!(canonicalize(&json!(9007199254740992_u64)).is_err());
        assert!(canonicalize(&json!(1.5)).is_err());
        let mut deep = json!(0);
        for _ in 0..100 {
            deep = json!([deep]);
        }
        assert_eq!(canonicalize(&deep), Err(CanonicalError::TooDeep));
    }
}
