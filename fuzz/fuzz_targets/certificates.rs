//! What an auditor feeds `phylax verify-certificate`: any bytes as certificates and as public
//! keys. Nothing panics; the canonical form is stable (canonicalising its own output gives the
//! same bytes, whatever the input's member order); only certificates signed by a given key verify.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use phylax::ephemeral::certificates::{PublicKeys, SigningKey, jcs, verify_chain};
use phylax::ephemeral::verify_command::{check, parse_certificates};

fn keys() -> &'static PublicKeys {
    static KEYS: OnceLock<PublicKeys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let key = SigningKey::generate().expect("key");
        PublicKeys::from_signing(&[&key])
    })
}

fuzz_target!(|input: (&str, &str, bool)| {
    let (certificates, public_keys, chain) = input;
    // Canonical form: a fixed point.
    if let Ok(value) = serde_json::from_str::<serde_json::Value>(certificates)
        && let Ok(bytes) = jcs::canonicalize(&value)
    {
        let again: serde_json::Value = serde_json::from_slice(&bytes).expect("canonical output is JSON");
        assert_eq!(jcs::canonicalize(&again).expect("canonical twice"), bytes);
    }
    let _ = PublicKeys::parse(public_keys);
    if let Ok(certs) = parse_certificates(certificates) {
        // The fuzzer cannot forge the random key's signatures.
        let report = verify_chain(&certs, keys());
        assert_eq!(report.verified, 0, "a certificate the key never signed verified");
        assert!(check(&certs, keys(), chain).is_err());
    }
});
