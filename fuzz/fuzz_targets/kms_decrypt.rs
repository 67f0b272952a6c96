//! KMS v2 Decrypt requests as the API server (or anything that can reach the socket) may send
//! them: ciphertext, key id and annotations of any shape. The service refuses what it did not
//! make, with INVALID_ARGUMENT and a message, and never panics. Half the inputs start from a real
//! ciphertext and flip bits in it, so the authentication path is explored too.
#![no_main]

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use phylax::kms::audit::Audit;
use phylax::keys::envelope::Kek;
use phylax::kms::proto::v2;
use phylax::kms::proto::v2::key_management_service_server::KeyManagementService;
use phylax::keys::KeyProvider;
use phylax::keys::local::LocalKeys;
use phylax::kms::service::{Core, V2};
use phylax::runtime::admin::Readiness;
use phylax::runtime::metrics::Metrics;
use zeroize::Zeroizing;

struct Fixture {
    rt: tokio::runtime::Runtime,
    service: V2,
    real: v2::EncryptResponse,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let keys = LocalKeys::new("software", vec![Kek::from_bytes(&Zeroizing::new([7u8; 32]))], &[]).unwrap();
        let provider: Arc<dyn KeyProvider> = Arc::new(keys);
        let core = Core::new(
            provider,
            Audit::Log,
            Duration::from_secs(2),
            Duration::from_secs(5),
            Readiness::default().register("fuzz"),
            &Metrics::new("kms-plugin"),
        );
        let service = V2(core);
        let real = rt
            .block_on(service.encrypt(tonic::Request::new(v2::EncryptRequest {
                plaintext: b"0123456789abcdef0123456789abcdef".to_vec(),
                uid: "fuzz".into(),
            })))
            .unwrap()
            .into_inner();
        Fixture { rt, service, real }
    })
}

/// Splits the input at 0xff bytes into ciphertext, key id and annotation key/value pairs.
fn request(data: &[u8], real: &v2::EncryptResponse) -> v2::DecryptRequest {
    let (mode, rest) = data.split_first().map_or((0, &[][..]), |(m, r)| (*m, r));
    let mut parts = rest.split(|b| *b == 0xff);
    let mut ciphertext = parts.next().unwrap_or_default().to_vec();
    if mode & 1 == 1 {
        // Flip bits of the real ciphertext instead.
        let mask = ciphertext;
        ciphertext = real.ciphertext.clone();
        for (c, m) in ciphertext.iter_mut().zip(mask) {
            *c ^= m;
        }
    }
    let key_id = match mode & 6 {
        0 => real.key_id.clone(),
        _ => String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned(),
    };
    let mut annotations: HashMap<String, Vec<u8>> = if mode & 8 == 0 { real.annotations.clone() } else { HashMap::new() };
    while let (Some(k), Some(v)) = (parts.next(), parts.next()) {
        annotations.insert(String::from_utf8_lossy(k).into_owned(), v.to_vec());
    }
    v2::DecryptRequest { ciphertext, uid: "fuzz".into(), key_id, annotations }
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    let req = request(data, &f.real);
    let genuine = req.ciphertext == f.real.ciphertext && req.key_id == f.real.key_id;
    match f.rt.block_on(f.service.decrypt(tonic::Request::new(req))) {
        Ok(resp) => {
            assert!(genuine, "decrypted something this plugin did not encrypt");
            assert_eq!(resp.into_inner().plaintext, b"0123456789abcdef0123456789abcdef");
        }
        Err(status) => {
            assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
            assert!(!status.message().is_empty());
        }
    }
});
