//! What a pod and a secret store can send the secret-sync controller: the annotation's text, the
//! source secret's bytes and the paths checked against a SecretProvider's patterns. Accepted
//! annotations obey the rules, rendered data fits a Secret, nothing panics, and pattern matching
//! stays fast on hostile input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use phylax::api::sync_annotation;
use phylax::operator::secret_sync::{access, render};

fuzz_target!(|input: (&str, &[u8], Vec<String>, &str, &str)| {
    let (annotation, source, keys, pattern, path) = input;
    match sync_annotation::parse(annotation) {
        Ok(requests) => {
            assert!(!requests.is_empty() && requests.len() <= 64);
            let mut names = std::collections::BTreeSet::new();
            for r in &requests {
                assert!(names.insert(r.secret_name.clone()), "duplicate secretName accepted");
                assert!(!r.path.chars().any(char::is_control));
                assert!(r.path.len() <= 1024);
            }
        }
        Err(message) => assert!(!message.contains('\n'), "multi-line message: {message:?}"),
    }
    match render::render(source, &keys, "value") {
        Ok(data) => {
            let size: usize = data.iter().map(|(k, v)| k.len() + v.0.len()).sum();
            assert!(size <= render::MAX_SECRET_BYTES);
            assert!(data.keys().all(|k| render::is_secret_key(k)));
            if !keys.is_empty() {
                assert!(data.keys().all(|k| keys.contains(k)));
            }
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
    let _ = access::path_matches(pattern, "ns", path);
    if access::check_path_shape(path).is_ok() {
        assert!(!path.split(['/', '\\']).any(|s| s == ".." || s == "."));
    }
});
