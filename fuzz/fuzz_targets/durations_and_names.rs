//! Durations and Kubernetes names from flags and specs: accepted values obey the rules, rejected
//! ones get a message, nothing panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use phylax::runtime::{duration, names};

fuzz_target!(|s: &str| {
    if let Err(e) = duration::parse(s) {
        assert!(e.contains("e.g."));
    }
    if let Ok(ns) = names::parse_namespace(s) {
        assert!(ns.len() <= 63 && !ns.is_empty());
        assert!(ns.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'));
    }
    if let Ok(name) = names::parse_object_name(s) {
        assert!(name.len() <= 253 && !name.starts_with('.') && !name.ends_with('.'));
    }
});
