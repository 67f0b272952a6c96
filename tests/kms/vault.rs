//! The Vault Transit provider against the Transit test double: key ids follow Vault-side
//! rotation, the token file is re-read, and an unreachable, sealed or hanging Vault makes the
//! plugin answer UNAVAILABLE quickly and report itself unhealthy, then recover.

use std::time::Duration;

use tonic::Code;

use crate::plugin::{self, Workdir, decrypt, encrypt, status};
use crate::support::process::Phylax;
use crate::support::wait::wait_for;
use crate::vault_double::{Mode, VaultDouble};

const TOKEN: &str = "hvs.planted-token-5d1e0c";

async fn start(work: &Workdir, vault: &VaultDouble, extra: &[&str]) -> Phylax {
    let token_file = work.path("vault-token");
    if !token_file.exists() {
        std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    }
    let mut flags = vec![
        "--provider=vault".to_owned(),
        format!("--vault-addr={}", vault.url()),
        "--vault-key=kube".to_owned(),
        format!("--vault-token-file={}", token_file.display()),
        // Status answers from a fresh round trip each time, so tests see changes at once.
        "--health-cache=0s".to_owned(),
    ];
    flags.extend(extra.iter().map(|s| (*s).to_owned()));
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    plugin::start_with(work, &flags).await
}

#[tokio::test]
async fn key_id_follows_a_vault_side_rotation_and_old_ciphertexts_stay_readable() {
    let vault = VaultDouble::start("transit", "kube", TOKEN).await;
    let work = Workdir::new();
    let p = start(&work, &vault, &[]).await;
    let mut client = plugin::v2_client(&work.socket()).await;

    let st = status(&mut client).await;
    assert_eq!(st.healthz, "ok");
    assert_eq!(st.key_id, "vault:transit/kube:v1");
    let dek: [u8; 32] = rand::random();
    let v1 = encrypt(&mut client, &dek).await.expect("Encrypt");
    assert_eq!(v1.key_id, st.key_id);
    assert!(v1.ciphertext.starts_with(b"vault:v1:"));
    assert!(v1.ciphertext.len() <= 1024);
    let hash_before = plugin::metric_lines(&p, "phylax_kms_key_info").await;

    assert_eq!(vault.rotate("kube"), 2);
    let v2 = encrypt(&mut client, &dek).await.expect("Encrypt after rotation");
    assert_eq!(
        v2.key_id, "vault:transit/kube:v2",
        "the next Encrypt names the new version"
    );
    assert_eq!(
        status(&mut client).await.key_id,
        v2.key_id,
        "Status agrees with Encrypt"
    );
    assert_eq!(decrypt(&mut client, &v1).await.expect("old ciphertext"), dek);
    assert_eq!(decrypt(&mut client, &v2).await.expect("new ciphertext"), dek);
    let hash_after = plugin::metric_lines(&p, "phylax_kms_key_info").await;
    assert_eq!(hash_after.len(), 1, "{hash_after:?}");
    assert_ne!(
        hash_before, hash_after,
        "the key-id hash metric follows the rotation"
    );

    // A ciphertext presented with another version's key id, or tampered with, is refused.
    let mut wrong = v1.clone();
    wrong.key_id = v2.key_id.clone();
    assert_eq!(
        decrypt(&mut client, &wrong).await.unwrap_err().code(),
        Code::InvalidArgument
    );
    let mut tampered = v2.clone();
    let last = tampered.ciphertext.len() - 3;
    tampered.ciphertext[last] = if tampered.ciphertext[last] == b'A' {
        b'B'
    } else {
        b'A'
    };
    let err = decrypt(&mut client, &tampered).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");

    // The token and the plaintexts never reach the logs.
    let logs = p.logs().join("\n");
    assert!(!logs.contains(TOKEN), "the Vault token leaked into the logs");
    assert!(!logs.contains(&base64_of(&dek)));
}

#[tokio::test]
async fn a_new_token_in_the_token_file_is_used_without_restart() {
    let vault = VaultDouble::start("transit", "kube", TOKEN).await;
    let work = Workdir::new();
    let p = start(&work, &vault, &[]).await;
    let mut client = plugin::v2_client(&work.socket()).await;
    encrypt(&mut client, b"before").await.expect("Encrypt");

    // Vault revokes the old token: the plugin says which permission it lacks, without the token.
    vault.set_token("hvs.second-token-77aa");
    let err = encrypt(&mut client, b"denied").await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    assert!(
        err.message().contains("transit/encrypt/kube") && err.message().contains("update"),
        "{err:?}"
    );
    assert!(!err.message().contains(TOKEN));

    // Vault Agent writes the new token (a new file renamed into place, as agents do).
    let tmp = work.path("vault-token.new");
    std::fs::write(&tmp, "hvs.second-token-77aa\n").unwrap();
    std::fs::rename(&tmp, work.path("vault-token")).unwrap();
    encrypt(&mut client, b"after")
        .await
        .expect("Encrypt with the new token");
    let logs = p.logs().join("\n");
    assert!(
        !logs.contains("hvs.second-token-77aa") && !logs.contains(TOKEN),
        "a token leaked into the logs"
    );
}

#[tokio::test]
async fn a_sealed_or_hanging_vault_fails_fast_and_the_plugin_recovers() {
    let vault = VaultDouble::start("transit", "kube", TOKEN).await;
    let work = Workdir::new();
    let p = start(&work, &vault, &["--provider-timeout=500ms"]).await;
    let mut client = plugin::v2_client(&work.socket()).await;
    let dek: [u8; 32] = rand::random();
    let sealed = encrypt(&mut client, &dek).await.expect("Encrypt");

    vault.set_mode(Mode::Sealed);
    let err = encrypt(&mut client, &dek).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    assert!(
        err.message().contains("503") && err.message().contains("Vault is sealed"),
        "{err:?}"
    );
    let st = status(&mut client).await;
    assert_ne!(st.healthz, "ok");
    assert!(
        st.healthz.contains("sealed"),
        "healthz gives a short reason: {:?}",
        st.healthz
    );
    wait_for(
        "/readyz to report the provider unhealthy",
        Duration::from_secs(10),
        || async { matches!(p.admin_get("/readyz").await, Some((503, _))).then_some(()) },
    )
    .await;

    // A Vault that accepts the connection and never answers: the plugin gives up at its
    // deadline, well inside the API server's own timeout, instead of holding the request.
    vault.set_mode(Mode::Hang);
    let err = decrypt(&mut client, &sealed).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    assert!(err.message().contains("did not answer within"), "{err:?}");

    vault.set_mode(Mode::Normal);
    wait_for("Status to be healthy again", Duration::from_secs(10), || {
        let mut client = client.clone();
        async move { (status(&mut client).await.healthz == "ok").then_some(()) }
    })
    .await;
    assert_eq!(
        decrypt(&mut client, &sealed)
            .await
            .expect("Decrypt after recovery"),
        dek
    );
    wait_for("/readyz to be 200 again", Duration::from_secs(10), || async {
        matches!(p.admin_get("/readyz").await, Some((200, _))).then_some(())
    })
    .await;
    assert!(vault.calls() > 0);
}

#[tokio::test]
async fn configuration_mistakes_are_clear_errors() {
    let work = Workdir::new();
    let run = |extra: &[&str]| {
        let mut flags = vec!["--provider=vault"];
        flags.extend_from_slice(extra);
        plugin::refused(&work, &flags)
    };
    assert!(run(&[]).contains("--vault-addr"));
    assert!(run(&["--vault-addr=http://127.0.0.1:8200"]).contains("--vault-key"));
    let err = run(&["--vault-addr=http://vault.example:8200", "--vault-key=k"]);
    assert!(
        err.contains("must be https://") && err.contains("only on loopback"),
        "{err}"
    );
    let err = run(&["--vault-addr=https://vault:8200", "--vault-key=../k"]);
    assert!(err.contains("not a Transit key name"), "{err}");
    let err = run(&["--vault-addr=https://vault:8200", "--vault-key=a/b"]);
    assert!(err.contains("not a Transit key name"), "{err}");
    let err = run(&[
        "--vault-addr=https://vault:8200",
        "--vault-key=k",
        "--vault-transit-mount=a//b",
    ]);
    assert!(err.contains("not a Vault mount path"), "{err}");
    let err = run(&[
        "--vault-addr=https://vault:8200",
        "--vault-key=k",
        &format!("--vault-token-file={}", work.path("missing").display()),
    ]);
    assert!(err.contains("cannot read Vault token file"), "{err}");
}

fn base64_of(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}
