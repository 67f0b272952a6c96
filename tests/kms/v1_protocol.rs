//! KMS v1 (v1beta1) on the same socket, for API servers from 1.20 on.

use phylax::kms::proto::v1beta1;
use tonic::Code;

use crate::plugin::{self, Workdir};

#[tokio::test]
async fn v1_and_v2_share_the_socket_and_the_keys() {
    let work = Workdir::new();
    let key = work.key("k.key");
    let _plugin = plugin::start(&work, &[&key], &[]).await;
    let mut v1 = plugin::v1_client(&work.socket()).await;

    let version = v1
        .version(v1beta1::VersionRequest {
            version: "v1beta1".into(),
        })
        .await
        .expect("Version")
        .into_inner();
    assert_eq!(version.version, "v1beta1");
    assert_eq!(version.runtime_name, "phylax");
    assert!(!version.runtime_version.is_empty());

    let dek: [u8; 32] = rand::random();
    let sealed = v1
        .encrypt(v1beta1::EncryptRequest {
            version: "v1beta1".into(),
            plain: dek.to_vec(),
        })
        .await
        .expect("Encrypt")
        .into_inner();
    assert!(!sealed.cipher.is_empty() && sealed.cipher.len() <= 1024);
    let plain = v1
        .decrypt(v1beta1::DecryptRequest {
            version: "v1beta1".into(),
            cipher: sealed.cipher.clone(),
        })
        .await
        .expect("Decrypt")
        .into_inner();
    assert_eq!(plain.plain, dek);

    let err = v1
        .version(v1beta1::VersionRequest { version: "v9".into() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("v1beta1"), "{}", err.message());

    let mut corrupted = sealed.cipher.clone();
    corrupted[20] ^= 0x80;
    let err = v1
        .decrypt(v1beta1::DecryptRequest {
            version: "v1beta1".into(),
            cipher: corrupted,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("authentication"), "{}", err.message());
}
