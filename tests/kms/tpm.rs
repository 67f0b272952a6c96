//! The TPM provider against a real software TPM (swtpm): keys sealed to one TPM survive plugin
//! restarts, are useless on another TPM, rotate, honour a PCR policy and an auth value, and are
//! unsealed only after the TPM's storage primary key matches the one pinned in the file.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use base64::Engine;
use sha2::{Digest, Sha256};

use crate::plugin::{self, Workdir, decrypt, encrypt, refused, status, stop};
use crate::support::free_port;
use crate::support::process::{Phylax, binary, run};
use crate::support::swtpm::Swtpm;

fn tpm_flags(tpm: &Swtpm, keys: &[&PathBuf], extra: &[&str]) -> Vec<String> {
    let mut flags = vec!["--provider=tpm".to_owned(), format!("--tpm-tcti={}", tpm.tcti())];
    flags.extend(keys.iter().map(|k| format!("--tpm-sealed-key={}", k.display())));
    flags.extend(extra.iter().map(|s| (*s).to_owned()));
    flags
}

async fn start(work: &Workdir, flags: &[String]) -> Phylax {
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    plugin::start_with(work, &flags).await
}

/// A random 32-byte secret in a file only its owner may read.
fn auth_file(work: &Workdir, name: &str) -> PathBuf {
    let path = work.path(name);
    std::fs::write(&path, rand::random::<[u8; 32]>()).expect("write auth file");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod auth file");
    path
}

fn auth_flag(path: &Path) -> String {
    format!("--tpm-auth-file={}", path.display())
}

fn sealed_json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).expect("sealed key file")).expect("sealed key JSON")
}

/// Stops the plugin and returns every log line it wrote (the process has exited, so none is
/// still in flight).
async fn stop_with_logs(mut plugin: Phylax) -> Vec<serde_json::Value> {
    plugin.signal(libc::SIGTERM);
    assert!(
        plugin.wait_exit(Duration::from_secs(10)).await.success(),
        "the plugin did not stop cleanly"
    );
    plugin.json_logs()
}

/// The level of the first log line whose message contains all of `parts`.
fn log_level(logs: &[serde_json::Value], parts: &[&str]) -> Option<String> {
    logs.iter()
        .find(|l| {
            l["message"]
                .as_str()
                .is_some_and(|m| parts.iter().all(|p| m.contains(p)))
        })
        .and_then(|l| l["level"].as_str().map(str::to_owned))
}

/// The TPM's name of the storage primary key pinned in a sealed key file, as the plugin prints it.
fn pinned_name(path: &Path) -> String {
    let public = base64::engine::general_purpose::STANDARD
        .decode(
            sealed_json(path)["primaryPublic"]
                .as_str()
                .expect("a pinned primary"),
        )
        .expect("base64");
    let hex: String = Sha256::digest(&public)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("000b{hex}")
}

/// Runs a tpm2-tools command against the swtpm.
fn tpm2(tpm: &Swtpm, tool: &str, args: &[&str]) {
    let out = Command::new(tool)
        .args(args)
        .env("TPM2TOOLS_TCTI", tpm.tcti())
        .output()
        .unwrap_or_else(|e| panic!("run {tool} (apt-get install tpm2-tools): {e}"));
    assert!(
        out.status.success(),
        "{tool}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn a_sealed_key_survives_restarts_rotates_and_is_useless_on_another_tpm() {
    let work = Workdir::new();
    let tpm = Swtpm::start(work.path("tpm-a")).await;
    let first = work.path("first.sealed");
    let auth = auth_flag(&auth_file(&work, "auth"));

    let p = start(
        &work,
        &tpm_flags(&tpm, &[&first], &["--tpm-create-sealed-key", &auth]),
    )
    .await;
    let mut client = plugin::v2_client(&work.socket()).await;
    let st = status(&mut client).await;
    assert_eq!(st.healthz, "ok");
    assert!(st.key_id.starts_with("tpm:"), "{}", st.key_id);
    let dek: [u8; 32] = rand::random();
    let old = encrypt(&mut client, &dek).await.expect("Encrypt");
    assert_eq!(old.key_id, st.key_id);
    stop(p).await;

    // What is on disk is the TPM's sealed blob, private to this user.
    let meta = std::fs::metadata(&first).expect("sealed key written");
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert_eq!(sealed_json(&first)["kind"], "phylax-tpm-sealed-key");

    // A restart unseals the same key: same key id, old ciphertexts readable. The create flag
    // never replaces an existing sealed key.
    let before = std::fs::read(&first).unwrap();
    let p = start(
        &work,
        &tpm_flags(&tpm, &[&first], &["--tpm-create-sealed-key", &auth]),
    )
    .await;
    assert_eq!(std::fs::read(&first).unwrap(), before);
    let mut client = plugin::v2_client(&work.socket()).await;
    assert_eq!(status(&mut client).await.key_id, old.key_id);
    assert_eq!(decrypt(&mut client, &old).await.expect("Decrypt"), dek);
    stop(p).await;

    // Rotation: seal a second key, make it primary, keep the first for decryption.
    let second = work.path("second.sealed");
    let p = start(
        &work,
        &tpm_flags(&tpm, &[&second, &first], &["--tpm-create-sealed-key", &auth]),
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

    // Another TPM has another storage primary key: the pin stops the plugin before the TPM is
    // given anything of the sealed key.
    let other = Swtpm::start(work.path("tpm-b")).await;
    let err = refused(&work, &tpm_flags(&other, &[&first], &[&auth]));
    assert!(
        err.contains("was sealed under TPM storage primary key") && err.contains("another TPM"),
        "{err}"
    );
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
        auth_flag(&auth_file(&work, "auth")),
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
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let err = refused(&work, &tpm_flags(&tpm, &[&key], &[]));
    assert!(err.contains("not a Phylax sealed key file"), "{err}");
    let err = refused(&work, &tpm_flags(&tpm, &[], &[]));
    assert!(err.contains("--tpm-sealed-key"), "{err}");
}

#[tokio::test]
async fn a_key_sealed_with_an_auth_value_unseals_only_with_that_secret() {
    let work = Workdir::new();
    let tpm = Swtpm::start(work.path("tpm")).await;
    let key = work.path("auth.sealed");
    let auth = auth_file(&work, "auth");
    let p = start(
        &work,
        &tpm_flags(&tpm, &[&key], &["--tpm-create-sealed-key", &auth_flag(&auth)]),
    )
    .await;
    let mut client = plugin::v2_client(&work.socket()).await;
    let dek: [u8; 32] = rand::random();
    let sealed = encrypt(&mut client, &dek).await.expect("Encrypt");
    let logs = stop_with_logs(p).await;
    let file = sealed_json(&key);
    assert_eq!(file["version"], 2);
    assert_eq!(file["authValue"], true);
    assert_eq!(file["pcrs"], serde_json::json!([]));
    // The secret is never logged, in any form the plugin has it in.
    let secret = std::fs::read(&auth).unwrap();
    let digest: String = Sha256::digest(&secret)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let text = serde_json::to_string(&logs).unwrap();
    assert!(!text.contains(&digest), "the auth value is in the logs");
    assert!(!text.contains(&base64::engine::general_purpose::STANDARD.encode(&secret)));

    let p = start(&work, &tpm_flags(&tpm, &[&key], &[&auth_flag(&auth)])).await;
    let mut client = plugin::v2_client(&work.socket()).await;
    assert_eq!(decrypt(&mut client, &sealed).await.expect("Decrypt"), dek);
    stop(p).await;

    let err = refused(&work, &tpm_flags(&tpm, &[&key], &[]));
    assert!(
        err.contains("was sealed with an auth value") && err.contains("--tpm-auth-file"),
        "{err}"
    );
    let wrong = auth_file(&work, "wrong");
    let err = refused(&work, &tpm_flags(&tpm, &[&key], &[&auth_flag(&wrong)]));
    assert!(
        err.contains("refused to unseal") && err.contains("is not the one it was sealed with"),
        "{err}"
    );
    // The TPM enforces it, not just the plugin: the same blob with the file edited to claim no
    // auth value (the version 1 form) does not unseal with an empty one.
    let mut edited = file.clone();
    edited["version"] = 1.into();
    edited.as_object_mut().unwrap().remove("authValue");
    edited.as_object_mut().unwrap().remove("primaryPublic");
    std::fs::write(&key, serde_json::to_vec(&edited).unwrap()).unwrap();
    let err = refused(&work, &tpm_flags(&tpm, &[&key], &[]));
    assert!(
        err.contains("refused to unseal") && err.contains("authorization failure"),
        "{err}"
    );
}

#[tokio::test]
async fn pcrs_and_an_auth_value_are_both_required_when_both_are_given() {
    let work = Workdir::new();
    let tpm = Swtpm::start(work.path("tpm")).await;
    let key = work.path("both.sealed");
    let auth = auth_flag(&auth_file(&work, "auth"));
    let p = start(
        &work,
        &tpm_flags(
            &tpm,
            &[&key],
            &["--tpm-create-sealed-key", "--tpm-pcrs=16", &auth],
        ),
    )
    .await;
    let mut client = plugin::v2_client(&work.socket()).await;
    let id = status(&mut client).await.key_id;
    stop(p).await;
    let file = sealed_json(&key);
    assert_eq!(
        (file["authValue"].clone(), file["pcrs"].clone()),
        (true.into(), serde_json::json!([16]))
    );

    let p = start(&work, &tpm_flags(&tpm, &[&key], &[&auth])).await;
    let mut client = plugin::v2_client(&work.socket()).await;
    assert_eq!(status(&mut client).await.key_id, id);
    stop(p).await;

    let wrong = auth_flag(&auth_file(&work, "wrong"));
    let err = refused(&work, &tpm_flags(&tpm, &[&key], &[&wrong]));
    assert!(err.contains("is not the one it was sealed with"), "{err}");

    tpm2(
        &tpm,
        "tpm2_pcrextend",
        &[&format!("16:sha256={}", "cd".repeat(32))],
    );
    let err = refused(&work, &tpm_flags(&tpm, &[&key], &[&auth]));
    assert!(err.contains("PCRs [16]"), "{err}");
}

#[tokio::test]
async fn sealing_a_key_that_an_empty_auth_value_unseals_is_refused() {
    let work = Workdir::new();
    let tpm = Swtpm::start(work.path("tpm")).await;
    let key = work.path("k.sealed");
    let err = refused(&work, &tpm_flags(&tpm, &[&key], &["--tpm-create-sealed-key"]));
    assert!(
        err.contains("refusing to seal") && err.contains("--tpm-auth-file") && err.contains("--tpm-pcrs"),
        "{err}"
    );
    assert!(!key.exists(), "nothing is sealed or written");

    // An auth file others can read is no secret: refused before anything is sealed.
    let auth = auth_file(&work, "auth");
    std::fs::set_permissions(&auth, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = refused(
        &work,
        &tpm_flags(&tpm, &[&key], &["--tpm-create-sealed-key", &auth_flag(&auth)]),
    );
    assert!(err.contains("accessible by others"), "{err}");
    assert!(!key.exists(), "nothing is sealed or written");
}

#[tokio::test]
async fn the_pinned_storage_primary_key_is_checked_at_every_start() {
    let work = Workdir::new();
    let tpm = Swtpm::start(work.path("tpm-a")).await;
    let key = work.path("pinned.sealed");
    let auth = auth_flag(&auth_file(&work, "auth"));
    let p = start(
        &work,
        &tpm_flags(&tpm, &[&key], &["--tpm-create-sealed-key", &auth]),
    )
    .await;
    let logs = stop_with_logs(p).await;
    let pinned = pinned_name(&key);
    assert_eq!(
        log_level(&logs, &["pinned its storage primary key"]).as_deref(),
        Some("INFO"),
        "{logs:?}"
    );
    assert!(
        logs.iter().any(|l| l["primary"] == pinned.as_str()),
        "the log names the pinned primary {pinned}: {logs:?}"
    );

    // The same TPM gives the same primary: the check passes.
    let p = start(&work, &tpm_flags(&tpm, &[&key], &[&auth])).await;
    let logs = stop_with_logs(p).await;
    assert!(
        log_level(&logs, &["storage primary key is the pinned one"]).is_some(),
        "{logs:?}"
    );

    // A fresh TPM state: another owner seed, another primary.
    let other = Swtpm::start(work.path("tpm-b")).await;
    let err = refused(&work, &tpm_flags(&other, &[&key], &[&auth]));
    assert!(err.contains(&format!("storage primary key {pinned}")), "{err}");
    assert!(err.contains("another TPM") && err.contains("cleared"), "{err}");
    // Not even a new key is sealed under a primary that fails the pin of a configured key.
    let new = work.path("new.sealed");
    let err = refused(
        &work,
        &tpm_flags(&other, &[&new, &key], &["--tpm-create-sealed-key", &auth]),
    );
    assert!(err.contains("was sealed under TPM storage primary key"), "{err}");
    assert!(!new.exists());

    // TPM2_Clear on the original TPM makes a new owner seed: the same check fails there too.
    tpm2(&tpm, "tpm2_clear", &[]);
    let err = refused(&work, &tpm_flags(&tpm, &[&key], &[&auth]));
    assert!(err.contains(&format!("storage primary key {pinned}")), "{err}");
}

#[tokio::test]
async fn a_version_1_file_still_unseals_and_says_how_to_migrate() {
    let work = Workdir::new();
    let tpm = Swtpm::start(work.path("tpm")).await;
    let old = work.path("old.sealed");
    let p = start(
        &work,
        &tpm_flags(&tpm, &[&old], &["--tpm-create-sealed-key", "--tpm-pcrs=16"]),
    )
    .await;
    let mut client = plugin::v2_client(&work.socket()).await;
    let dek: [u8; 32] = rand::random();
    let sealed = encrypt(&mut client, &dek).await.expect("Encrypt");
    stop(p).await;
    // The same key as Phylax wrote it before version 2: no authValue, no primaryPublic.
    let mut file = sealed_json(&old);
    file["version"] = 1.into();
    file.as_object_mut().unwrap().remove("authValue");
    file.as_object_mut().unwrap().remove("primaryPublic");
    std::fs::write(&old, serde_json::to_vec_pretty(&file).unwrap()).unwrap();

    let p = start(&work, &tpm_flags(&tpm, &[&old], &[])).await;
    let mut client = plugin::v2_client(&work.socket()).await;
    assert_eq!(decrypt(&mut client, &sealed).await.expect("Decrypt"), dek);
    let logs = stop_with_logs(p).await;
    assert_eq!(
        log_level(&logs, &["format version 1", "nothing checks", "rotate"]).as_deref(),
        Some("WARN"),
        "{logs:?}"
    );

    // Migration: a new key, pinned and with an auth value, first; the old one decrypts. Its
    // primary is now checked through the new key's pin.
    let new = work.path("new.sealed");
    let auth = auth_flag(&auth_file(&work, "auth"));
    let p = start(
        &work,
        &tpm_flags(&tpm, &[&new, &old], &["--tpm-create-sealed-key", &auth]),
    )
    .await;
    let mut client = plugin::v2_client(&work.socket()).await;
    assert_eq!(decrypt(&mut client, &sealed).await.expect("Decrypt"), dek);
    let logs = stop_with_logs(p).await;
    let through = format!("checked through the pin in {}", new.display());
    assert_eq!(
        log_level(&logs, &["format version 1", &through]).as_deref(),
        Some("INFO"),
        "{logs:?}"
    );
    // The file itself is left as it was: only rotation replaces it.
    assert_eq!(sealed_json(&old)["version"], 1);
}
