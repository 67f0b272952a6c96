//! The AWS KMS provider against moto's real KMS API server: encryption context enforced, an
//! alias re-pointed to a new key is a rotation the API server sees, a disabled key or an
//! unreachable endpoint is a fast UNAVAILABLE with what to do.

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_kms::config::{BehaviorVersion, Credentials, Region};
use phylax::kms::proto::v2;
use tonic::Code;

use crate::plugin::{self, Workdir, decrypt, encrypt, stop};
use crate::support::moto::Moto;
use crate::support::process::Phylax;
use crate::support::wait::wait_for;

trait KmsClient {
    fn kms(&self) -> aws_sdk_kms::Client;
    async fn create_key(&self) -> String;
}

impl KmsClient for Moto {
    /// An AWS KMS client for the test's own set-up calls.
    fn kms(&self) -> aws_sdk_kms::Client {
        let config = aws_sdk_kms::config::Builder::new()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("eu-west-1"))
            .endpoint_url(&self.url)
            .credentials_provider(Credentials::new("testing", "testing", None, None, "test"))
            .http_client(Moto::http_client())
            .build();
        aws_sdk_kms::Client::from_conf(config)
    }

    async fn create_key(&self) -> String {
        self.kms()
            .create_key()
            .description("phylax test KEK")
            .send()
            .await
            .expect("CreateKey")
            .key_metadata
            .expect("key metadata")
            .arn
            .expect("key ARN")
    }
}

fn aws_env() -> HashMap<&'static str, &'static str> {
    Moto::env()
}

async fn start(work: &Workdir, moto: &Moto, key: &str, extra: &[&str]) -> Phylax {
    let mut flags = vec![
        "--provider=aws".to_owned(),
        format!("--aws-kms-key={key}"),
        "--aws-region=eu-west-1".to_owned(),
        format!("--aws-endpoint={}", moto.url),
        "--health-cache=0s".to_owned(),
    ];
    flags.extend(extra.iter().map(|s| (*s).to_owned()));
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let mut p = plugin::spawn_env(work, &flags, &aws_env());
    p.wait_ready(Duration::from_secs(30)).await;
    p
}

#[tokio::test]
async fn encrypts_with_the_key_and_context_and_follows_an_alias_to_a_new_key() {
    let moto = Moto::start().await;
    let first = moto.create_key().await;
    moto.kms()
        .create_alias()
        .alias_name("alias/kube")
        .target_key_id(&first)
        .send()
        .await
        .expect("CreateAlias");

    let work = Workdir::new();
    let p = start(
        &work,
        &moto,
        "alias/kube",
        &["--aws-encryption-context=cluster=prod"],
    )
    .await;
    let mut client = plugin::v2_client(&work.socket()).await;
    let st = client
        .status(v2::StatusRequest {})
        .await
        .expect("Status")
        .into_inner();
    assert_eq!(st.healthz, "ok");
    assert_eq!(
        st.key_id,
        format!("aws:{first}"),
        "the key id is the ARN the alias points at"
    );

    let dek: [u8; 32] = rand::random();
    let old = encrypt(&mut client, &dek).await.expect("Encrypt");
    assert_eq!(old.key_id, st.key_id);
    assert!(old.ciphertext.len() <= 1024, "{} bytes", old.ciphertext.len());
    assert!(!old.ciphertext.windows(dek.len()).any(|w| w == dek));
    assert_eq!(decrypt(&mut client, &old).await.expect("Decrypt"), dek);

    // The context is part of what AWS authenticates: the same KMS key, another context, refused.
    let other = Workdir::new();
    let q = start(
        &other,
        &moto,
        "alias/kube",
        &["--aws-encryption-context=cluster=staging"],
    )
    .await;
    let mut other_client = plugin::v2_client(&other.socket()).await;
    let err = decrypt(&mut other_client, &old).await.unwrap_err();
    assert_eq!(
        err.code(),
        Code::InvalidArgument,
        "{err:?} {}",
        q.logs().join("\n")
    );
    assert!(err.message().contains("encryption context"), "{err:?}");
    stop(q).await;

    // Re-pointing the alias is a rotation: new key id at once, old data still readable.
    let second = moto.create_key().await;
    moto.kms()
        .update_alias()
        .alias_name("alias/kube")
        .target_key_id(&second)
        .send()
        .await
        .expect("UpdateAlias");
    let new = encrypt(&mut client, &dek)
        .await
        .expect("Encrypt after re-pointing the alias");
    assert_eq!(new.key_id, format!("aws:{second}"));
    let st = client
        .status(v2::StatusRequest {})
        .await
        .expect("Status")
        .into_inner();
    assert_eq!(st.key_id, new.key_id);
    assert_eq!(decrypt(&mut client, &old).await.expect("old ciphertext"), dek);
    assert_eq!(decrypt(&mut client, &new).await.expect("new ciphertext"), dek);

    // A ciphertext presented under another key's id is refused. (AWS answers
    // IncorrectKeyException, which the plugin maps to INVALID_ARGUMENT; moto answers
    // AccessDeniedException, so only the refusal is asserted here.)
    let mut wrong = old.clone();
    wrong.key_id = new.key_id.clone();
    assert!(decrypt(&mut client, &wrong).await.is_err());

    let logs = p.logs().join("\n");
    assert!(
        !logs.contains("testing-secret-7f3a9c"),
        "AWS credentials leaked into the logs"
    );
}

#[tokio::test]
async fn a_missing_key_or_unreachable_endpoint_is_unavailable_with_what_to_do() {
    let moto = Moto::start().await;
    let key = moto.create_key().await;
    let alias = |op: &'static str| {
        let kms = moto.kms();
        let key = key.clone();
        async move {
            match op {
                "create" => {
                    kms.create_alias()
                        .alias_name("alias/kube")
                        .target_key_id(key)
                        .send()
                        .await
                        .expect("CreateAlias");
                }
                _ => {
                    kms.delete_alias()
                        .alias_name("alias/kube")
                        .send()
                        .await
                        .expect("DeleteAlias");
                }
            }
        }
    };
    alias("create").await;
    let work = Workdir::new();
    let p = start(&work, &moto, "alias/kube", &["--provider-timeout=2s"]).await;
    let mut client = plugin::v2_client(&work.socket()).await;
    let sealed = encrypt(&mut client, b"dek").await.expect("Encrypt");

    // (moto does not enforce disabled keys or key policies, so a deleted alias stands in for
    // "the key cannot be used".)
    alias("delete").await;
    let err = encrypt(&mut client, b"dek").await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    assert!(
        err.message().contains("has no key alias/kube") && err.message().contains("--aws-kms-key"),
        "{err:?}"
    );
    let st = client
        .status(v2::StatusRequest {})
        .await
        .expect("Status")
        .into_inner();
    assert_ne!(st.healthz, "ok");
    wait_for("/readyz to turn 503", Duration::from_secs(10), || async {
        matches!(p.admin_get("/readyz").await, Some((503, _))).then_some(())
    })
    .await;

    alias("create").await;
    wait_for("Status to be healthy again", Duration::from_secs(10), || {
        let mut client = client.clone();
        async move {
            let st = client.status(v2::StatusRequest {}).await.ok()?.into_inner();
            (st.healthz == "ok").then_some(())
        }
    })
    .await;
    assert_eq!(decrypt(&mut client, &sealed).await.expect("Decrypt"), b"dek");

    // The endpoint goes away entirely.
    drop(moto);
    let err = decrypt(&mut client, &sealed).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(
        err.message().contains("cannot reach") || err.message().contains("did not answer"),
        "{err:?}"
    );
}

#[test]
fn configuration_mistakes_are_clear_errors() {
    let work = Workdir::new();
    let run = |extra: &[&str]| {
        let mut flags = vec!["--provider=aws"];
        flags.extend_from_slice(extra);
        plugin::refused(&work, &flags)
    };
    assert!(run(&[]).contains("--aws-kms-key"));
    let err = run(&[
        "--aws-kms-key=alias/kube",
        "--aws-region=eu-west-1",
        "--aws-endpoint=http://kms.example",
    ]);
    assert!(err.contains("must be https://"), "{err}");
    let err = run(&["--aws-kms-key=k", "--aws-encryption-context=nope"]);
    assert!(err.contains("KEY=VALUE"), "{err}");
}
