//! KMS v2 over the unix socket with a Rust gRPC client: every rule the API server relies on.

use std::collections::HashMap;

use phylax::kms::proto::v2;
use tonic::Code;

use crate::plugin::{self, Workdir};

fn encrypt_req(plaintext: &[u8], uid: &str) -> v2::EncryptRequest {
    v2::EncryptRequest {
        plaintext: plaintext.to_vec(),
        uid: uid.to_owned(),
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test]
async fn status_encrypt_and_decrypt_follow_the_v2_rules() {
    let work = Workdir::new();
    let key = work.key("primary.key");
    let audit = work.path("audit.jsonl");
    let plugin = plugin::start(&work, &[&key], &[&format!("--audit-log={}", audit.display())]).await;
    let mut client = plugin::v2_client(&work.socket()).await;

    let status = client
        .status(v2::StatusRequest {})
        .await
        .expect("Status")
        .into_inner();
    assert_eq!(status.version, "v2");
    assert_eq!(status.healthz, "ok");
    assert!(
        !status.key_id.is_empty() && status.key_id.len() <= 1024,
        "{:?}",
        status.key_id
    );

    let dek: [u8; 32] = rand::random();
    let first = client
        .encrypt(encrypt_req(&dek, "uid-first"))
        .await
        .expect("Encrypt")
        .into_inner();
    assert_eq!(
        first.key_id, status.key_id,
        "Encrypt names the key Status reports"
    );
    assert!(
        first.ciphertext.len() <= 1024,
        "ciphertext is {} bytes",
        first.ciphertext.len()
    );
    assert!(!contains(&first.ciphertext, &dek));
    let annotation_bytes: usize = first.annotations.iter().map(|(k, v)| k.len() + v.len()).sum();
    assert!(annotation_bytes < 32 * 1024);
    for (k, v) in &first.annotations {
        let domain = k.split('/').next().unwrap_or_default();
        assert!(domain.contains('.'), "annotation {k:?} is not domain-qualified");
        assert!(!contains(v, &dek), "annotation {k:?} carries the plaintext");
    }

    let second = client
        .encrypt(encrypt_req(&dek, "uid-second"))
        .await
        .expect("Encrypt")
        .into_inner();
    assert_eq!(
        second.key_id, first.key_id,
        "the key id is stable while the key is unchanged"
    );
    assert_ne!(
        second.ciphertext, first.ciphertext,
        "each encryption uses a fresh nonce"
    );

    for sealed in [&first, &second] {
        let plain = client
            .decrypt(v2::DecryptRequest {
                ciphertext: sealed.ciphertext.clone(),
                uid: "uid-decrypt".into(),
                key_id: sealed.key_id.clone(),
                annotations: sealed.annotations.clone(),
            })
            .await
            .expect("Decrypt")
            .into_inner();
        assert_eq!(plain.plaintext, dek);
    }

    // Metrics count by method, provider and result; the key id appears only as a short hash.
    let ops = plugin::metric_lines(&plugin, "phylax_kms_operations_total").await;
    let encrypts = ops
        .iter()
        .find(|l| {
            l.contains(r#"method="v2.Encrypt""#)
                && l.contains(r#"provider="software""#)
                && l.contains(r#"result="ok""#)
        })
        .unwrap_or_else(|| panic!("no v2.Encrypt ok series in {ops:?}"));
    assert!(encrypts.ends_with(" 2"), "{encrypts}");
    let keys = plugin::metric_lines(&plugin, "phylax_kms_key_info").await;
    assert!(keys.iter().any(|l| l.contains(r#"state="primary""#)), "{keys:?}");
    assert!(keys.iter().all(|l| !l.contains(&status.key_id)), "{keys:?}");

    // One audit record per operation, with the request uid, and nothing of the data.
    let audit_text = std::fs::read_to_string(&audit).expect("audit log");
    let records: Vec<serde_json::Value> = audit_text
        .lines()
        .map(|l| serde_json::from_str(l).expect("audit lines are JSON"))
        .collect();
    let first_rec = records
        .iter()
        .find(|r| r["uid"] == "uid-first")
        .unwrap_or_else(|| panic!("no record for uid-first in {audit_text}"));
    assert_eq!(first_rec["method"], "v2.Encrypt");
    assert_eq!(first_rec["result"], "ok");
    assert_eq!(first_rec["key_id"], status.key_id.as_str());
    assert!(first_rec["duration_us"].is_u64());
    assert_eq!(records.iter().filter(|r| r["method"] == "v2.Decrypt").count(), 2);
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&audit).unwrap().permissions());
    assert_eq!(mode & 0o077, 0, "the audit log is private to the plugin");
    assert_no_leak(
        &[audit_text.as_bytes(), plugin.logs().join("\n").as_bytes()],
        &[&dek, &first.ciphertext],
    );
}

/// Neither raw nor base64 nor hex forms of any secret appear in the texts.
fn assert_no_leak(texts: &[&[u8]], secrets: &[&[u8]]) {
    use base64::Engine;
    for secret in secrets {
        let forms = [
            secret.to_vec(),
            base64::engine::general_purpose::STANDARD
                .encode(secret)
                .into_bytes(),
            secret
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
                .into_bytes(),
        ];
        for text in texts {
            for form in &forms {
                // A 16-byte window is long enough to be no coincidence.
                let probe = &form[..form.len().min(16)];
                assert!(
                    !contains(text, probe),
                    "a secret value leaked into logs or audit records"
                );
            }
        }
    }
}

#[tokio::test]
async fn rotation_changes_the_key_id_and_old_ciphertexts_stay_readable() {
    let work = Workdir::new();
    let old_key = work.key("old.key");
    let new_key = work.key("new.key");
    let dek: [u8; 32] = rand::random();

    let mut plugin = plugin::start(&work, &[&old_key], &[]).await;
    let mut client = plugin::v2_client(&work.socket()).await;
    let old_id = client
        .status(v2::StatusRequest {})
        .await
        .unwrap()
        .into_inner()
        .key_id;
    let sealed_old = client
        .encrypt(encrypt_req(&dek, "before"))
        .await
        .unwrap()
        .into_inner();
    plugin.signal(libc::SIGTERM);
    assert!(
        plugin
            .wait_exit(std::time::Duration::from_secs(10))
            .await
            .success()
    );
    assert!(!work.socket().exists(), "a clean shutdown removes the socket");

    // Rotate: the new key first (it encrypts), the old one kept for decryption.
    let plugin = plugin::start(&work, &[&new_key, &old_key], &[]).await;
    let mut client = plugin::v2_client(&work.socket()).await;
    let status = client.status(v2::StatusRequest {}).await.unwrap().into_inner();
    assert_eq!(status.healthz, "ok");
    assert_ne!(status.key_id, old_id, "the key id changes when the key rotates");
    let sealed_new = client
        .encrypt(encrypt_req(&dek, "after"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(sealed_new.key_id, status.key_id);
    for sealed in [&sealed_old, &sealed_new] {
        let plain = client
            .decrypt(v2::DecryptRequest {
                ciphertext: sealed.ciphertext.clone(),
                uid: "rotated".into(),
                key_id: sealed.key_id.clone(),
                annotations: sealed.annotations.clone(),
            })
            .await
            .expect("Decrypt under a configured key")
            .into_inner();
        assert_eq!(plain.plaintext, dek);
    }
    let keys = plugin::metric_lines(&plugin, "phylax_kms_key_info").await;
    assert_eq!(
        keys.iter().filter(|l| l.contains(r#"state="primary""#)).count(),
        1,
        "{keys:?}"
    );
    assert_eq!(
        keys.iter()
            .filter(|l| l.contains(r#"state="decrypt-only""#))
            .count(),
        1,
        "{keys:?}"
    );
    drop(plugin);

    // Once the old key is retired, its ciphertexts are refused with a reason, not garbage.
    let _plugin = plugin::start(&work, &[&new_key], &[]).await;
    let mut client = plugin::v2_client(&work.socket()).await;
    let err = client
        .decrypt(v2::DecryptRequest {
            ciphertext: sealed_old.ciphertext.clone(),
            uid: "retired".into(),
            key_id: sealed_old.key_id.clone(),
            annotations: sealed_old.annotations.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("not configured"), "{}", err.message());
}

#[tokio::test]
async fn bad_requests_are_refused_with_clear_errors() {
    let work = Workdir::new();
    let key = work.key("k.key");
    let other_work = Workdir::new();
    let other_key = other_work.key("other.key");
    let plugin = plugin::start(&work, &[&key], &[]).await;
    let mut client = plugin::v2_client(&work.socket()).await;
    let dek: [u8; 32] = rand::random();
    let good = client
        .encrypt(encrypt_req(&dek, "good"))
        .await
        .unwrap()
        .into_inner();

    let other_plugin = plugin::start(&other_work, &[&other_key], &[]).await;
    let mut other_client = plugin::v2_client(&other_work.socket()).await;
    let foreign = other_client
        .encrypt(encrypt_req(&dek, "foreign"))
        .await
        .unwrap()
        .into_inner();
    drop(other_plugin);

    let decrypt =
        |ciphertext: Vec<u8>, key_id: &str, annotations: HashMap<String, Vec<u8>>| v2::DecryptRequest {
            ciphertext,
            uid: "bad".into(),
            key_id: key_id.to_owned(),
            annotations,
        };
    let mut corrupted = good.ciphertext.clone();
    let last = corrupted.len() - 1;
    corrupted[last] ^= 1;
    let ann = good.annotations.clone();
    let cases: Vec<(&str, v2::DecryptRequest, &str)> = vec![
        (
            "empty ciphertext",
            decrypt(vec![], &good.key_id, ann.clone()),
            "ciphertext is empty",
        ),
        (
            "oversized ciphertext",
            decrypt(vec![1; 1025], &good.key_id, ann.clone()),
            "at most 1024",
        ),
        (
            "corrupted ciphertext",
            decrypt(corrupted, &good.key_id, ann.clone()),
            "failed authentication",
        ),
        (
            "truncated ciphertext",
            decrypt(good.ciphertext[..10].to_vec(), &good.key_id, ann.clone()),
            "shorter than",
        ),
        (
            "garbage",
            decrypt(b"not a ciphertext at all".to_vec(), &good.key_id, ann.clone()),
            "format",
        ),
        (
            "unknown key",
            decrypt(
                foreign.ciphertext.clone(),
                &foreign.key_id,
                foreign.annotations.clone(),
            ),
            "not configured",
        ),
        (
            "key id mismatch",
            decrypt(good.ciphertext.clone(), &foreign.key_id, ann.clone()),
            "does not match",
        ),
        (
            "empty key id",
            decrypt(good.ciphertext.clone(), "", ann.clone()),
            "key_id is empty",
        ),
        (
            "oversized key id",
            decrypt(good.ciphertext.clone(), &"k".repeat(1025), ann.clone()),
            "at most 1024",
        ),
        (
            "unqualified annotation",
            decrypt(
                good.ciphertext.clone(),
                &good.key_id,
                HashMap::from([("provider".to_owned(), b"x".to_vec())]),
            ),
            "domain-qualified",
        ),
        (
            "oversized annotations",
            decrypt(
                good.ciphertext.clone(),
                &good.key_id,
                HashMap::from([("a.example.com/big".to_owned(), vec![0; 32 * 1024])]),
            ),
            "32 KiB",
        ),
        (
            "another provider's ciphertext",
            decrypt(
                good.ciphertext.clone(),
                &good.key_id,
                HashMap::from([("kms.phylax.dev/provider".to_owned(), b"aws".to_vec())]),
            ),
            "\"aws\" provider",
        ),
    ];
    for (what, req, expect) in cases {
        let err = client.decrypt(req).await.expect_err(what);
        assert_eq!(err.code(), Code::InvalidArgument, "{what}: {err:?}");
        assert!(
            err.message().contains(expect),
            "{what}: {:?} lacks {expect:?}",
            err.message()
        );
    }
    for (what, plaintext, expect) in [
        ("empty plaintext", vec![], "plaintext is empty"),
        ("huge plaintext", vec![7; 4097], "at most 4096"),
    ] {
        let err = client
            .encrypt(encrypt_req(&plaintext, "bad"))
            .await
            .expect_err(what);
        assert_eq!(err.code(), Code::InvalidArgument, "{what}");
        assert!(err.message().contains(expect), "{what}: {}", err.message());
    }

    // Still serving, and the refused inputs were counted as such.
    let status = client.status(v2::StatusRequest {}).await.unwrap().into_inner();
    assert_eq!(status.healthz, "ok");
    let ops = plugin::metric_lines(&plugin, "phylax_kms_operations_total").await;
    let refused = ops
        .iter()
        .find(|l| l.contains(r#"method="v2.Decrypt""#) && l.contains(r#"result="invalid_argument""#))
        .unwrap_or_else(|| panic!("{ops:?}"));
    assert!(refused.ends_with(" 12"), "{refused}");
    assert_no_leak(&[plugin.logs().join("\n").as_bytes()], &[&dek]);
}
