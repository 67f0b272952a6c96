//! AdmissionReview bodies as anything that reaches the webhook port may send them, and the
//! secret-sync annotation text inside them: decoding refuses bad bodies with a reason, handlers
//! answer every decodable request, nothing panics, and annotation errors stay one line.
#![no_main]

use libfuzzer_sys::fuzz_target;
use phylax::api::sync_annotation;
use phylax::webhook::review::{self, Handler};
use phylax::webhook::validate::secret_sync::SecretSyncAnnotation;

fuzz_target!(|data: &[u8]| {
    match review::decode(data) {
        Ok(req) => {
            if let Ok(verdict) = SecretSyncAnnotation.review(&req) {
                let answer = review::respond(&req, verdict);
                assert!(serde_json::from_slice::<serde_json::Value>(&answer).is_ok());
            }
        }
        Err(why) => assert!(!why.is_empty()),
    }
    if let Ok(text) = std::str::from_utf8(data) {
        match sync_annotation::parse(text) {
            Ok(entries) => assert!(!entries.is_empty()),
            Err(why) => assert!(!why.contains('\n'), "multi-line error: {why:?}"),
        }
    }
});
