//! How synced Secrets follow their sources over time (file store): updates, hand edits and dropped
//! keys, workloads synced before their pods, an operator killed mid-burst, and two operators of
//! which only the leader writes.

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::json;

use crate::support::wait::wait_for;
use crate::*;

#[tokio::test]
async fn new_pods_bring_source_changes_and_undo_hand_edits() {
    let _one = serial().await;
    let FileSetup {
        client,
        ns,
        op_ns,
        dir,
        provider,
    } = file_setup("upd", &["app"]).await;
    write_json(dir.path(), "app", &json!({"A": "1", "B": "1"}));
    // No coalescing window: every pod reads the store.
    let mut op = operator(&op_ns.name, &["--sync-coalesce-window=0s"], &Default::default());
    started(&mut op).await;
    let ann = format!("{{provider: {provider}, path: app, secretName: app}}");
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns.name);

    let first = create_pod(&client, &ns.name, "one", &ann).await;
    assert!(
        wait_event(&client, &ns.name, &first, "SecretSynced")
            .await
            .contains("created")
    );
    assert_eq!(
        data_of(&secrets.get("app").await.unwrap()),
        [("A".into(), "1".into()), ("B".into(), "1".into())].into()
    );

    // The source changes and drops a key; a new pod brings both.
    write_json(dir.path(), "app", &json!({"A": "2"}));
    let second = create_pod(&client, &ns.name, "two", &ann).await;
    assert!(
        wait_event(&client, &ns.name, &second, "SecretSynced")
            .await
            .contains("updated")
    );
    assert_eq!(
        data_of(&secrets.get("app").await.unwrap()),
        [("A".into(), "2".into())].into()
    );

    // Someone edits the Secret by hand; the next pod puts it back.
    secrets
        .patch(
            "app",
            &PatchParams::default(),
            &Patch::Merge(json!({"stringData": {"A": "tampered", "X": "y"}})),
        )
        .await
        .unwrap();
    let third = create_pod(&client, &ns.name, "three", &ann).await;
    assert!(
        wait_event(&client, &ns.name, &third, "SecretSynced")
            .await
            .contains("updated")
    );
    let data = data_of(&secrets.get("app").await.unwrap());
    assert_eq!(data["A"], "2");
    // A key added by someone else is theirs: SSA leaves fields it does not own.
    assert_eq!(data["X"], "y");

    // Nothing changed: the Secret is not written again.
    let version = secrets.get("app").await.unwrap().metadata.resource_version;
    let fourth = create_pod(&client, &ns.name, "four", &ann).await;
    assert!(
        wait_event(&client, &ns.name, &fourth, "SecretSynced")
            .await
            .contains("is up to date")
    );
    assert_eq!(
        secrets.get("app").await.unwrap().metadata.resource_version,
        version
    );
}

#[tokio::test]
async fn workloads_get_their_secret_before_their_pods() {
    let _one = serial().await;
    let FileSetup {
        client,
        ns,
        op_ns,
        dir,
        provider,
    } = file_setup("wl", &["*"]).await;
    write_json(dir.path(), "web", &json!({"TOKEN": "t"}));
    let mut op = operator(&op_ns.name, &[], &Default::default());
    started(&mut op).await;
    let deployment: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {"replicas": 0, "selector": {"matchLabels": {"app": "web"}},
                 "template": {"metadata": {"labels": {"app": "web"},
                                           "annotations": {"secrets.phylax.dev/sync": format!("{{provider: {provider}, path: web, secretName: web}}")}},
                              "spec": {"containers": [{"name": "web", "image": "registry.example/web:1"}]}}}
    }))
    .unwrap();
    // replicas 0: no pod exists, so only the Deployment can have asked.
    let created = Api::<Deployment>::namespaced(client.clone(), &ns.name)
        .create(&PostParams::default(), &deployment)
        .await
        .unwrap();
    let uid = created.metadata.uid.unwrap();
    assert_eq!(
        data_of(&wait_secret(&client, &ns.name, "web").await)["TOKEN"],
        "t"
    );
    let note = wait_event(&client, &ns.name, &uid, "SecretSynced").await;
    assert!(note.contains("Secret web"), "{note}");
}

#[tokio::test]
async fn an_operator_killed_mid_burst_loses_nothing() {
    let _one = serial().await;
    let FileSetup {
        client,
        ns,
        op_ns,
        dir,
        provider,
    } = file_setup("burst", &["*"]).await;
    const PODS: usize = 40;
    for i in 0..PODS {
        write_json(dir.path(), &format!("s{i}"), &json!({"I": i.to_string()}));
    }
    let mut op = operator(&op_ns.name, &["--sync-concurrency=1"], &Default::default());
    started(&mut op).await;
    for i in 0..PODS {
        create_pod(
            &client,
            &ns.name,
            &format!("p{i}"),
            &format!("{{provider: {provider}, path: s{i}, secretName: s{i}}}"),
        )
        .await;
    }
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns.name);
    let count = || async {
        let mut n = 0;
        for i in 0..PODS {
            if secrets
                .get_opt(&format!("s{i}"))
                .await
                .unwrap()
                .is_some_and(|s| s.data.is_some())
            {
                n += 1;
            }
        }
        n
    };
    wait_for("the first syncs", Duration::from_secs(30), || async {
        (count().await >= 1).then_some(())
    })
    .await;
    op.signal(libc::SIGKILL);
    op.wait_exit(Duration::from_secs(10)).await;
    let before = count().await;
    let mut op = operator(&op_ns.name, &[], &Default::default());
    started(&mut op).await;
    wait_for(
        "every pod's Secret after the restart",
        Duration::from_secs(60),
        || async { (count().await == PODS).then_some(()) },
    )
    .await;
    for i in 0..PODS {
        assert_eq!(
            data_of(&secrets.get(&format!("s{i}")).await.unwrap())["I"],
            i.to_string()
        );
    }
    eprintln!("{before} of {PODS} Secrets written before the kill");
}

#[tokio::test]
async fn only_the_leader_writes() {
    let _one = serial().await;
    let FileSetup {
        client,
        ns,
        op_ns,
        dir,
        provider,
    } = file_setup("lead", &["*"]).await;
    write_json(dir.path(), "x", &json!({"X": "1"}));
    let lease = [
        "--leader-elect=true",
        "--lease-duration=4s",
        "--renew-deadline=3s",
        "--retry-period=500ms",
    ];
    let mut a = operator(&op_ns.name, &lease, &Default::default());
    let mut b = operator(&op_ns.name, &lease, &Default::default());
    a.wait_ready(Duration::from_secs(30)).await;
    b.wait_ready(Duration::from_secs(30)).await;
    let (leader, follower) = wait_for("a leader", Duration::from_secs(30), || async {
        let la = a.metric("phylax_leader_is_leader").await?;
        let lb = b.metric("phylax_leader_is_leader").await?;
        match (la as i32, lb as i32) {
            (1, 0) => Some((0, 1)),
            (0, 1) => Some((1, 0)),
            _ => None,
        }
    })
    .await;
    let mut ops = [a, b];
    for i in 0..5 {
        create_pod(
            &client,
            &ns.name,
            &format!("p{i}"),
            &format!("{{provider: {provider}, path: x, secretName: s{i}}}"),
        )
        .await;
    }
    for i in 0..5 {
        wait_secret(&client, &ns.name, &format!("s{i}")).await;
    }
    let syncs = "phylax_secret_sync_syncs_total";
    assert!(ops[leader].metric_sum(syncs, &[]).await.unwrap() >= 5.0);
    assert_eq!(
        ops[follower].metric_sum(syncs, &[]).await.unwrap(),
        0.0,
        "the follower synced"
    );
    assert!(!ops[follower].has_log("secret sync started"));

    // The leader goes; the other takes over and serves new pods.
    ops[leader].signal(libc::SIGTERM);
    ops[leader].wait_exit(Duration::from_secs(15)).await;
    create_pod(
        &client,
        &ns.name,
        "after",
        &format!("{{provider: {provider}, path: x, secretName: after}}"),
    )
    .await;
    wait_secret(&client, &ns.name, "after").await;
    assert!(ops[follower].metric_sum(syncs, &[]).await.unwrap() >= 1.0);
}

/// Attack on the reader's side: a kubelet mounting a Secret for a pod that waits for it, a watch or
/// a GitOps diff must never see a synced Secret without its keys (an empty shell filled later).
#[tokio::test]
async fn no_version_of_a_synced_secret_ever_lacks_its_keys() {
    use futures::StreamExt;
    use kube::runtime::{WatchStreamExt, watcher};
    use std::sync::{Arc, Mutex};

    let _one = serial().await;
    let names = ["s0", "s1", "s2", "s3", "s4"];
    let FileSetup {
        client,
        ns,
        op_ns,
        dir,
        provider,
    } = file_setup("atomic", &names).await;
    for name in names {
        write_json(dir.path(), name, &json!({"USER": "app", "PASSWORD": "pw"}));
    }
    // Every version of every Secret in the namespace, from before the first is created.
    // (Secret name, its keys) per version seen.
    type Versions = Arc<Mutex<Vec<(String, Vec<String>)>>>;
    let seen: Versions = Arc::default();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns.name);
    let watching = {
        let (seen, secrets) = (seen.clone(), secrets.clone());
        tokio::spawn(async move {
            let mut stream = std::pin::pin!(watcher(secrets, watcher::Config::default()).applied_objects());
            while let Some(Ok(s)) = stream.next().await {
                let keys = s.data.unwrap_or_default().into_keys().collect();
                seen.lock()
                    .unwrap()
                    .push((s.metadata.name.unwrap_or_default(), keys));
            }
        })
    };
    let mut op = operator(&op_ns.name, &["--sync-coalesce-window=0s"], &Default::default());
    started(&mut op).await;
    for (i, name) in names.iter().enumerate() {
        let ann = format!("{{provider: {provider}, path: {name}, secretName: {name}}}");
        let uid = create_pod(&client, &ns.name, &format!("p{i}"), &ann).await;
        wait_event(&client, &ns.name, &uid, "SecretSynced").await;
    }
    // And an update that adds a key.
    write_json(
        dir.path(),
        "s0",
        &json!({"USER": "app", "PASSWORD": "pw2", "HOST": "db"}),
    );
    let ann = format!("{{provider: {provider}, path: s0, secretName: s0}}");
    let uid = create_pod(&client, &ns.name, "again", &ann).await;
    assert!(
        wait_event(&client, &ns.name, &uid, "SecretSynced")
            .await
            .contains("updated")
    );
    wait_for("the watch to see the update", Duration::from_secs(30), || async {
        seen.lock()
            .unwrap()
            .iter()
            .any(|(n, keys)| n == "s0" && keys.len() == 3)
            .then_some(())
    })
    .await;
    watching.abort();
    let seen = seen.lock().unwrap().clone();
    let synced: Vec<_> = seen.iter().filter(|(n, _)| names.contains(&n.as_str())).collect();
    assert!(synced.len() >= names.len(), "the watch saw {seen:?}");
    for (name, keys) in synced {
        assert!(
            keys.contains(&"USER".to_owned()) && keys.contains(&"PASSWORD".to_owned()),
            "a version of Secret {name} had keys {keys:?}"
        );
    }
}
