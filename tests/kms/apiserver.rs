//! The real kube-apiserver (1.20, KMS v1) encrypting Secrets through the plugin into etcd.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::Api;
use kube::api::{ObjectMeta, PostParams};

use crate::plugin::{self, Workdir};
use crate::support::control_plane::{self, ControlPlane, Options};
use crate::support::wait::wait_for;

const PROVIDER_NAME: &str = "phylax";

/// The raw value etcd holds for a Secret, read with etcdctl, bypassing the API server.
fn etcd_value(cp: &ControlPlane, namespace: &str, name: &str) -> Vec<u8> {
    let etcdctl = control_plane::binaries_dir().join("etcd/usr/bin/etcdctl");
    let out = Command::new(&etcdctl)
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={}", cp.etcd_url))
        .args(["get", "--print-value-only"])
        .arg(format!("/registry/secrets/{namespace}/{name}"))
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", etcdctl.display()));
    assert!(
        out.status.success(),
        "etcdctl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn secret(name: &str, value: &str) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            ..Default::default()
        },
        data: Some(BTreeMap::from([(
            "value".to_owned(),
            ByteString(value.as_bytes().to_vec()),
        )])),
        ..Default::default()
    }
}

fn value_of(s: &Secret) -> Option<&[u8]> {
    s.data.as_ref()?.get("value").map(|b| b.0.as_slice())
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

async fn restart(
    plugin: &mut crate::support::process::Phylax,
    work: &Workdir,
    key: &Path,
) -> crate::support::process::Phylax {
    plugin.signal(libc::SIGTERM);
    assert!(
        plugin.wait_exit(Duration::from_secs(10)).await.success(),
        "plugin did not stop cleanly"
    );
    plugin::start(work, &[key], &[]).await
}

#[tokio::test]
async fn secrets_reach_etcd_encrypted_and_survive_a_plugin_restart_under_load() {
    let work = Workdir::new();
    let key = work.key("kek");
    let mut plugin = plugin::start(&work, &[&key], &[]).await;
    let cp = ControlPlane::start(Options {
        // cachesize 1: nearly every read needs the plugin to decrypt its data-encryption key.
        encryption_config: Some(plugin::encryption_config(&work, Some(1))),
        no_controller_manager: true,
        ..Default::default()
    })
    .await;
    let client = crate::support::cluster::client_for(&cp.kubeconfig).await;
    let ns = "kms-e2e";
    Api::<Namespace>::all(client.clone())
        .create(
            &PostParams::default(),
            &Namespace {
                metadata: ObjectMeta {
                    name: Some(ns.into()),
                    ..Default::default()
                },
                ..Default::default()
            },
        )
        .await
        .expect("create namespace");
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);

    // Written through the API, read back through the API, and stored as ciphertext in etcd.
    let planted = format!("card-4111111111111111-{}", crate::support::random_suffix());
    secrets
        .create(&PostParams::default(), &secret("planted", &planted))
        .await
        .expect("create Secret");
    let back = secrets.get("planted").await.expect("read Secret");
    assert_eq!(value_of(&back), Some(planted.as_bytes()));
    let stored = etcd_value(&cp, ns, "planted");
    let prefix = format!("k8s:enc:kms:v1:{PROVIDER_NAME}:");
    assert!(
        stored.starts_with(prefix.as_bytes()),
        "etcd holds {:?}…, not a KMS envelope",
        String::from_utf8_lossy(&stored[..stored.len().min(40)])
    );
    assert!(!contains(&stored, planted.as_bytes()), "plaintext in etcd");
    assert!(!contains(&stored, b"card-4111"), "plaintext in etcd");

    // Restart the plugin while a writer keeps creating Secrets: every Secret the API server
    // accepted must read back intact afterwards.
    const TOTAL: usize = 120;
    let (progress_tx, mut progress) = tokio::sync::watch::channel(0usize);
    let writer = tokio::spawn({
        let secrets = secrets.clone();
        async move {
            let mut failures = 0usize;
            for i in 0..TOTAL {
                let s = secret(&format!("load-{i}"), &format!("value-{i}-{}", "x".repeat(i % 50)));
                loop {
                    match secrets.create(&PostParams::default(), &s).await {
                        Ok(_) => break,
                        // A failed create wrote nothing; try the same Secret again.
                        Err(kube::Error::Api(e)) if e.code >= 500 => {
                            failures += 1;
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                        Err(e) => panic!("create load-{i}: {e}"),
                    }
                }
                let _ = progress_tx.send(i + 1);
            }
            failures
        }
    });
    progress.wait_for(|n| *n >= 20).await.expect("writer alive");
    let restarted = restart(&mut plugin, &work, &key).await;
    let at_restart = *progress.borrow();
    let failures = writer.await.expect("writer");
    assert!(
        at_restart < TOTAL,
        "the restart happened while the writer was still writing"
    );
    eprintln!("writes that failed while the plugin restarted (and were retried): {failures}");

    for i in 0..TOTAL {
        let name = format!("load-{i}");
        let got = secrets
            .get(&name)
            .await
            .unwrap_or_else(|e| panic!("read {name}: {e}"));
        let want = format!("value-{i}-{}", "x".repeat(i % 50));
        assert_eq!(value_of(&got), Some(want.as_bytes()), "{name}");
        assert!(
            etcd_value(&cp, ns, &name).starts_with(prefix.as_bytes()),
            "{name} stored unencrypted"
        );
    }
    // The restarted plugin did the decrypting (the API server caches only one key).
    let decrypts = wait_for("v1 decrypt count", Duration::from_secs(5), || async {
        let lines = plugin::metric_lines(&restarted, "phylax_kms_operations_total").await;
        lines
            .iter()
            .find(|l| l.contains(r#"method="v1.Decrypt""#) && l.contains(r#"result="ok""#))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
    })
    .await;
    assert!(
        decrypts >= (TOTAL / 2) as f64,
        "only {decrypts} decrypts by the restarted plugin"
    );
    assert!(!contains(
        restarted.logs().join("\n").as_bytes(),
        planted.as_bytes()
    ));
    assert!(!contains(cp.log("kube-apiserver").as_bytes(), planted.as_bytes()));
}
