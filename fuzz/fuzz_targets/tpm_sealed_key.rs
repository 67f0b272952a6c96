//! TPM sealed key files as they may be found on disk: any bytes. The parser answers a checked key
//! or a message, never panics (the TPM structures in it go through the TSS's C unmarshalling),
//! and a version 2 key it accepts is written back to a file that parses to the same key.
#![no_main]

use libfuzzer_sys::fuzz_target;
use phylax::keys::tpm::SealedKey;

fuzz_target!(|data: &[u8]| {
    match SealedKey::parse(data) {
        Err(msg) => assert!(!msg.is_empty()),
        Ok(key) => {
            if key.primary.is_some() {
                let text = key.to_file().expect("a parsed version 2 key is written back");
                assert_eq!(SealedKey::parse(&text).expect("and parsed again"), key);
            }
        }
    }
});
