//! Kubernetes name rules for names taken from flags and specs, with messages that say the rule.

/// A namespace name: a DNS-1123 label.
pub fn parse_namespace(s: &str) -> Result<String, String> {
    if is_dns_label(s) {
        Ok(s.to_owned())
    } else {
        Err(format!(
            "{s:?} is not a valid namespace name: use at most 63 lowercase letters, digits and '-', starting and ending with a letter or digit"
        ))
    }
}

/// An object name such as a Lease's: a DNS-1123 subdomain.
pub fn parse_object_name(s: &str) -> Result<String, String> {
    if s.len() <= 253 && s.split('.').all(is_dns_label) {
        Ok(s.to_owned())
    } else {
        Err(format!(
            "{s:?} is not a valid object name: use at most 253 lowercase letters, digits, '-' and '.', starting and ending with a letter or digit"
        ))
    }
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_names() {
        for ok in ["phylax-system", "a", "x1-2", &"a".repeat(63)] {
            assert_eq!(parse_namespace(ok).as_deref(), Ok(ok));
        }
        for bad in ["", "-a", "a-", "Phylax", "a_b", "a.b", &"a".repeat(64)] {
            let err = parse_namespace(bad).unwrap_err();
            assert!(err.contains("not a valid namespace name"), "{bad}: {err}");
        }
    }

    #[test]
    fn object_names() {
        for ok in ["phylax-operator", "a.b-c", "x"] {
            assert_eq!(parse_object_name(ok).as_deref(), Ok(ok));
        }
        for bad in ["", "a..b", ".a", "A", "a_b", &"a".repeat(254)] {
            assert!(
                parse_object_name(bad)
                    .unwrap_err()
                    .contains("not a valid object name"),
                "{bad}"
            );
        }
    }
}
