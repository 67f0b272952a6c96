//! Every way a request can fail is one Warning event on the pod that says what to do, a log line,
//! and nothing else: no Secret written, no foreign Secret touched, no panic, no value leaked.
//! (Pods are created straight against the API server, without the admission webhook that would
//! refuse a bad annotation earlier.)

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::{ObjectMeta, PostParams};
use serde_json::json;

use crate::support::random_suffix;
use crate::*;

const PLANTED: &str = "planted-file-value-91be44";

#[tokio::test]
async fn every_failure_is_an_event_saying_what_to_do_and_nothing_is_written() {
    let _one = serial().await;
    let FileSetup {
        client,
        ns,
        op_ns,
        dir,
        provider,
    } = file_setup("fail", &["*"]).await;
    write_json(dir.path(), "ok", &json!({"A": PLANTED}));
    write_json(dir.path(), "other", &json!({"B": "2"}));
    std::fs::write(
        dir.path().join("corrupt.json"),
        format!(r#"{{"A": "{PLANTED}", "#),
    )
    .unwrap();
    write_json(dir.path(), "big", &json!({"A": "x".repeat(1024 * 1024 + 10)}));
    // Someone else's Secret under a name a pod will ask for.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns.name);
    let foreign = Secret {
        metadata: ObjectMeta {
            name: Some("theirs".into()),
            ..Default::default()
        },
        data: Some(BTreeMap::from([("K".to_owned(), ByteString(b"theirs".to_vec()))])),
        ..Default::default()
    };
    secrets.create(&PostParams::default(), &foreign).await.unwrap();

    let mut op = operator(&op_ns.name, &[], &Default::default());
    started(&mut op).await;
    let p = &provider;
    let cases: Vec<(&str, String, &str, &[&str])> = vec![
        (
            "malformed",
            "provider: x\npath: /a\n".into(),
            "InvalidSyncAnnotation",
            &["secretName is missing", "e.g."],
        ),
        (
            "not-yaml",
            "{provider: [".into(),
            "InvalidSyncAnnotation",
            &["not valid YAML or JSON"],
        ),
        (
            "dupes",
            format!(
                "- {{provider: {p}, path: ok, secretName: s}}\n- {{provider: {p}, path: other, secretName: s}}"
            ),
            "InvalidSyncAnnotation",
            &["already used"],
        ),
        (
            "bad-name",
            format!("{{provider: {p}, path: ok, secretName: Not_Valid}}"),
            "InvalidSyncAnnotation",
            &["valid Secret name"],
        ),
        (
            "control",
            format!("{{provider: {p}, path: \"o\\u0007k\", secretName: c}}"),
            "InvalidSyncAnnotation",
            &["control characters"],
        ),
        (
            "no-provider",
            "{provider: nobody-here, path: ok, secretName: np}".into(),
            "SecretProviderNotFound",
            &["nobody-here", "will retry"],
        ),
        (
            "traversal",
            format!("{{provider: {p}, path: /x/../ok, secretName: tr}}"),
            "SecretSyncRefused",
            &["traversal"],
        ),
        (
            "corrupt",
            format!("{{provider: {p}, path: corrupt, secretName: co}}"),
            "SecretSourceInvalid",
            &["not valid JSON", "line 1"],
        ),
        (
            "no-key",
            format!("{{provider: {p}, path: ok, secretName: nk, keys: [MISSING]}}"),
            "SecretSourceInvalid",
            &["no key(s) MISSING"],
        ),
        (
            "big",
            format!("{{provider: {p}, path: big, secretName: big}}"),
            "SecretTooLarge",
            &["1 MiB"],
        ),
        (
            "foreign",
            format!("{{provider: {p}, path: ok, secretName: theirs}}"),
            "SecretNotManaged",
            &["not managed by Phylax", "left untouched"],
        ),
        (
            "missing",
            format!("{{provider: {p}, path: nothing/here, secretName: mi}}"),
            "SecretNotFound",
            &["nothing/here"],
        ),
    ];
    let mut uids = Vec::new();
    for (name, annotation, _, _) in &cases {
        uids.push(create_pod(&client, &ns.name, name, annotation).await);
    }
    for ((name, _, reason, words), uid) in cases.iter().zip(&uids) {
        let note = wait_event(&client, &ns.name, uid, reason).await;
        for w in *words {
            assert!(note.contains(w), "{name}: {reason} note {note:?} lacks {w:?}");
        }
        assert!(
            op.logs().iter().any(|l| l.contains(reason)),
            "{name}: no log line for {reason}"
        );
    }

    // A Secret synced from one path is not overwritten from another.
    let first = create_pod(
        &client,
        &ns.name,
        "first",
        &format!("{{provider: {p}, path: ok, secretName: shared}}"),
    )
    .await;
    wait_event(&client, &ns.name, &first, "SecretSynced").await;
    let second = create_pod(
        &client,
        &ns.name,
        "second",
        &format!("{{provider: {p}, path: other, secretName: shared}}"),
    )
    .await;
    let note = wait_event(&client, &ns.name, &second, "SecretSyncConflict").await;
    assert!(note.contains("path \"ok\""), "{note}");
    assert_eq!(data_of(&secrets.get("shared").await.unwrap())["A"], PLANTED);

    // Nothing written for the failures; the foreign Secret as it was, without Phylax's label.
    for name in ["s", "c", "np", "tr", "co", "nk", "big", "mi"] {
        assert!(
            secrets.get_opt(name).await.unwrap().is_none(),
            "{name} was written"
        );
    }
    let theirs = secrets.get("theirs").await.unwrap();
    assert_eq!(data_of(&theirs)["K"], "theirs");
    assert!(
        theirs
            .metadata
            .labels
            .is_none_or(|l| !l.contains_key("app.kubernetes.io/managed-by"))
    );

    // Permanent failures are not retried in a loop: one store read each, however long we look.
    let reads_before = op
        .metric_sum("phylax_secret_sync_store_calls_total", &[("provider", "file")])
        .await
        .unwrap();
    let syncs = op
        .metric_sum("phylax_secret_sync_syncs_total", &[])
        .await
        .unwrap();
    // The provider-not-found case is the one retried (the provider may be created later): wait
    // for its second attempt, then check no permanent failure was tried again.
    crate::support::wait::wait_for(
        "the missing provider to be retried",
        Duration::from_secs(30),
        || async {
            let n = op
                .metric_sum(
                    "phylax_secret_sync_syncs_total",
                    &[("result", "provider_not_ready")],
                )
                .await?;
            (n >= 2.0).then_some(())
        },
    )
    .await;
    let reads_after = op
        .metric_sum("phylax_secret_sync_store_calls_total", &[("provider", "file")])
        .await
        .unwrap();
    assert_eq!(reads_before, reads_after, "permanent failures were retried");
    assert!(syncs >= cases.len() as f64);

    // A SecretProvider the schema admits but the operator cannot use: reported on its status.
    let two = format!("two-{}", random_suffix());
    apply_provider(
        &client,
        &two,
        json!({"file": {"directory": "/tmp"}, "aws": {"region": "eu-west-1"}, "paths": ["*"]}),
    )
    .await;
    let why = provider_condition(&client, &two, "Configured", "False").await;
    assert!(why.contains("set exactly one"), "{why}");

    assert_eq!(op.metric("phylax_task_panics_total").await.unwrap_or(0.0), 0.0);
    assert!(op.admin_get("/readyz").await.is_some_and(|(c, _)| c == 200));
    assert_never_leaked(&client, &op, &[&ns.name], PLANTED).await;
}

/// Attack: with a `{namespace}-*` pattern (the only form Azure secret names allow), namespace
/// `team` could read `team-payments-db`, the secret meant for namespace `team-payments`. The
/// provider is reported unusable, and the request is refused without a Secret being written.
#[tokio::test]
async fn a_prefix_pattern_cannot_reach_another_namespaces_secrets() {
    let _one = serial().await;
    let client = cluster().client().await;
    install_crds(&client).await;
    let team = namespace(&client, "team", &[]).await;
    let op_ns = namespace(&client, "op", &[]).await;
    let dir = tempfile::tempdir().unwrap();
    let victim = format!("{}-payments-db", team.name);
    write_json(dir.path(), &victim, &json!({"CARD_KEY": PLANTED}));
    let provider = format!("prefix-{}", random_suffix());
    apply_provider(
        &client,
        &provider,
        json!({"file": {"directory": dir.path()}, "namespaces": {"names": [team.name]}, "paths": ["{namespace}-*"]}),
    )
    .await;
    let mut op = operator(&op_ns.name, &[], &Default::default());
    started(&mut op).await;
    let why = provider_condition(&client, &provider, "Configured", "False").await;
    assert!(
        why.contains("{namespace}-*") && why.contains("lets one namespace read another"),
        "{why}"
    );

    let ann = format!("{{provider: {provider}, path: {victim}, secretName: stolen}}");
    let uid = create_pod(&client, &team.name, "thief", &ann).await;
    let note = wait_event(&client, &team.name, &uid, "SecretSyncRefused").await;
    // The requester learns the provider is misconfigured, not its patterns.
    assert!(note.contains("refused as unsafe"), "{note}");
    assert!(!note.contains("{namespace}-*"), "{note}");
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &team.name);
    assert!(secrets.get_opt("stolen").await.unwrap().is_none());
    assert!(!op.logs().iter().any(|l| l.contains(PLANTED)));
}
