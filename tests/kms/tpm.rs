//! The TPM provider against a real software TPM (swtpm): keys sealed to one TPM survive plugin
//! restarts, are useless on another TPM, rotate, and honour a PCR policy.

use std::path::PathBuf;
use std::process::Command;

use crate::plugin::{self, Workdir, decrypt, encrypt, refused, status, stop};
use crate::support::free_port;
use crate::support::process::{binary, run};
use crate::support::swtpm::Swtpm;

fn tpm_flags(tpm: &Swtpm, keys: &[&PathBuf], extra: &[&str]) -> Vec<String> {
    let mut flags = vec!["--provider=tpm".to_owned(), format!("--tpm-tcti={}", tpm.tcti())];
    flags.extend(keys.iter().map(|k| format!("--tpm-sealed-key={}", k.display())));
    flags.extend(extra.iter().map(|s| (*s).to_owned()));
    flags
}

async fn start(work: &Workdir, flags: &[String]) -> crate::support::process::Phylax {
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    plugin::start_with(work, &flags).await
}

#[tokio::test]
async fn a_sealed_key_survives_restarts_rotates_and_is_useless_on_another_tpm() {
    let work = Workdir::new();
    let tpm = Swtpm::start(work.path("tpm-a")).await;
    let first = work.path("first.sealed");

    let p = start(&work, &tpm_flags(&tpm, &[&first], &["--tpm-create-sealed-key"])).await;
    let mut client = plugin::v2_client(&work.socket()).await;
    let st = status(&mut client).await;
    assert_eq!(st.healthz, "ok");
    assert!(st.key_id.starts_with("tpm:"), "{}", st.key_id);
    let dek: [u8; 32] = rand::random();
    let old = encrypt(&mut client, &dek).await.expect("Encrypt");
    assert_eq!(old.key_id, st.key_id);
    stop(p).await;

    // What is on disk is the TPM's sealed blob, private to this user.
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(&first).expect("sealed key written");
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let file: serde_json::Value = serde_json::from_slice(&std::fs::read(&first).unwrap()).unwrap();
    assert_eq!(file["kind"], "phylax-tpm-sealed-key");

    // A restart unseals the same key: same key id, old ciphertexts readable. The create flag
    // never replaces an existing sealed key.
    let before = std::fs::read(&first).unwrap();
    let p = start(&work, &tpm_flags(&tpm, &[&first], &["--tpm-create-sealed-key"])).await;
    assert_eq!(std::fs::read(&first).unwrap(), before);
    let mut client = plugin::v2_client(&work.socket()).await;
    assert_eq!(status(&mut client).await.key_id, old.key_id);
    assert_eq!(decrypt(&mut client, &old).await.expect("Decrypt"), dek);
    stop(p).await;

    // Rotation: seal a second key, make it primary, keep the first for decryption.
    let second = work.path("second.sealed");
    let p = start(
        &work,
        &tpm_flags(&tpm, &[&second, &first], &["--tpm-create-sealed-key"]),
    )
    .await;
    let mut client = plugin::v2_client(&work.socket()).await;
    let rotated = status(&mut client).await.key_id;
    assert_ne!(rotated, old.key_id, "the key id changes when the key rotates");
    assert_eq!(decrypt(&mut client, &old).await.expect("old ciphertext"), dek);
    let new = encrypt(&mut client, &dek).await.expect("Encrypt");
    assert_eq!(new.key_id, rotated);
    let info = plugin::metric_lines(&p, "phylax_kms_key_info").await;
    assert_eq!(
        info.iter().filter(|l| l.contains("provider=\"tpm\"")).count(),
        2,
        "{info:?}"
    );
    stop(p).await;

    // Another TPM cannot load what this one sealed.
    let other = Swtpm::start(work.path("tpm-b")).await;
    let err = refused(&work, &tpm_flags(&other, &[&first], &[]));
    assert!(err.contains("sealed by a different TPM"), "{err}");
}

#[tokio::test]
async fn a_pcr_bound_key_unseals_only_while_the_pcrs_are_unchanged() {
    let work = Workdir::new();
    let tpm = Swtpm::start(work.path("tpm")).await;
    let key = work.path("pcr.sealed");
    // PCR 16 is the debug PCR: extendable from software, as a boot measurement would be.
    let p = start(
        &work,
        &tpm_flags(&tpm, &[&key], &["--tpm-create-sealed-key", "--tpm-pcrs=16"]),
    )
    .await;
    let mut client = plugin::v2_client(&work.socket()).await;
    let dek: [u8; 32] = rand::random();
    let sealed = encrypt(&mut client, &dek).await.expect("Encrypt");
    stop(p).await;

    let p = start(&work, &tpm_flags(&tpm, &[&key], &[])).await;
    let mut client = plugin::v2_client(&work.socket()).await;
    assert_eq!(decrypt(&mut client, &sealed).await.expect("Decrypt"), dek);
    stop(p).await;

    let out = Command::new("tpm2_pcrextend")
        .arg(format!("16:sha256={}", "ab".repeat(32)))
        .env("TPM2TOOLS_TCTI", tpm.tcti())
        .output()
        .expect("run tpm2_pcrextend (apt-get install tpm2-tools)");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let err = refused(&work, &tpm_flags(&tpm, &[&key], &[]));
    assert!(
        err.contains("refused to unseal") && err.contains("PCRs [16]"),
        "{err}"
    );
}

#[tokio::test]
async fn an_unreachable_tpm_or_unusable_tcti_is_a_clear_error() {
    let work = Workdir::new();
    let key = work.path("k.sealed");
    let port = free_port();
    let flags = vec![
        "--provider=tpm".to_owned(),
        format!("--tpm-tcti=swtpm:host=127.0.0.1,port={port}"),
        format!("--tpm-sealed-key={}", key.display()),
        "--tpm-create-sealed-key".to_owned(),
    ];
    let err = refused(&work, &flags);
    assert!(err.contains("cannot open the TPM"), "{err}");
    assert!(!key.exists(), "nothing is written when the TPM is unreachable");

    let (code, _, err) = run(
        &binary(),
        &[
            "kms-plugin",
            "--provider=tpm",
            "--tpm-tcti=swtpm:path=/run/swtpm.sock",
        ],
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("type=tcp"), "{err}");

    let tpm = Swtpm::start(work.path("tpm")).await;
    std::fs::write(&key, b"{\"kind\":\"something-else\"}").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let err = refused(&work, &tpm_flags(&tpm, &[&key], &[]));
    assert!(err.contains("not a Phylax sealed key file"), "{err}");
    let err = refused(&work, &tpm_flags(&tpm, &[], &[]));
    assert!(err.contains("--tpm-sealed-key"), "{err}");
}
