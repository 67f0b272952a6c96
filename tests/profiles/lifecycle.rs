//! Profiles from creation to deletion on two nodes: install, update, inheritance, invalid
//! profiles, deletion held while a pod uses the profile, restart convergence, vanished nodes.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::Node;
use kube::Api;
use kube::api::{DeleteParams, PostParams};
use serde_json::json;

use super::support::cluster::TestNamespace;
use super::support::wait::wait_for;
use super::*;
use phylax::api::profiles::NodeState;

#[tokio::test]
async fn profiles_are_installed_updated_inherited_and_removed_on_every_node() {
    let _serial = serial().await;
    let s = Setup::start("none").await;
    let c = &s.client;

    apply_profile(
        c,
        "web",
        json!({"defaultAction": "SCMP_ACT_ERRNO",
        "syscalls": [{"names": ["read", "write"], "action": "SCMP_ACT_ALLOW"}]}),
    )
    .await;
    for node in &s.nodes {
        let file = wait_file(&node.file("web"), |_| true).await;
        assert_eq!(file["defaultAction"], "SCMP_ACT_ERRNO");
        assert_eq!(allowed(&file), ["read", "write"]);
    }
    let p = wait_state(c, "web", "Installed").await;
    let status = p.status.expect("status");
    assert_eq!(status.localhost_profile.as_deref(), Some("phylax/web.json"));
    let nodes: BTreeSet<String> = status.nodes.iter().map(|n| n.node.clone()).collect();
    assert_eq!(nodes, s.nodes.iter().map(|n| n.name.clone()).collect());
    assert!(status.nodes.iter().all(|n| n.state == NodeState::Installed));
    assert_eq!(status.conditions[0].type_, "Ready");
    assert_eq!(status.conditions[0].status, "True");
    // One finalizer per node, one report per node (owned by the profile).
    let finalizers: BTreeSet<String> = p
        .metadata
        .finalizers
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect();
    let expected: BTreeSet<String> = s
        .nodes
        .iter()
        .map(|n| format!("node.profiles.phylax.dev/{}", n.name))
        .collect();
    assert_eq!(finalizers, expected);
    let reports = node_statuses(c, "web").await;
    assert_eq!(reports.len(), 2);
    for r in &reports {
        let report = r.status.as_ref().expect("report");
        assert_eq!(report.state, NodeState::Installed);
        assert!(
            report
                .path
                .as_deref()
                .is_some_and(|p| p.ends_with("seccomp/phylax/web.json"))
        );
        assert_eq!(
            r.metadata.owner_references.as_ref().expect("owner")[0].kind,
            "SeccompProfile"
        );
    }

    // A derived profile carries its base's rules; changing the base changes it.
    apply_profile(
        c,
        "web-strict",
        json!({"defaultAction": "SCMP_ACT_KILL_PROCESS", "baseProfileName": "web",
        "syscalls": [{"names": ["exit_group"], "action": "SCMP_ACT_ALLOW"}]}),
    )
    .await;
    for node in &s.nodes {
        let file = wait_file(&node.file("web-strict"), |_| true).await;
        assert_eq!(file["defaultAction"], "SCMP_ACT_KILL_PROCESS");
        assert_eq!(allowed(&file), ["read", "write", "exit_group"]);
    }
    apply_profile(
        c,
        "web",
        json!({"defaultAction": "SCMP_ACT_ERRNO",
        "syscalls": [{"names": ["read", "write", "close"], "action": "SCMP_ACT_ALLOW"}]}),
    )
    .await;
    for node in &s.nodes {
        wait_file(&node.file("web"), |f| allowed(f).contains(&"close".to_owned())).await;
        wait_file(&node.file("web-strict"), |f| {
            allowed(f) == ["read", "write", "close", "exit_group"]
        })
        .await;
    }
    wait_state(c, "web-strict", "Installed").await;

    // Deleted: the files go from both nodes, then the object.
    profiles(c)
        .delete("web-strict", &DeleteParams::default())
        .await
        .expect("delete");
    for node in &s.nodes {
        wait_no_file(&node.file("web-strict")).await;
    }
    wait_gone(c, "web-strict").await;
    wait_for("web-strict's reports to be gone", TIMEOUT, || async {
        node_statuses(c, "web-strict").await.is_empty().then_some(())
    })
    .await;
    for node in &s.nodes {
        let agent = node.agent();
        assert!(
            agent
                .metric_sum(
                    "phylax_profiles_installs_total",
                    &[("kind", "SeccompProfile"), ("node", &node.name)]
                )
                .await
                >= Some(3.0)
        );
        assert!(
            agent
                .metric_sum("phylax_profiles_removals_total", &[("node", &node.name)])
                .await
                >= Some(1.0)
        );
        assert!(
            agent
                .metric_sum("phylax_profiles_install_duration_seconds_count", &[])
                .await
                >= Some(3.0)
        );
    }
    s.assert_no_panic();
    s.finish().await;
}

#[tokio::test]
async fn invalid_profiles_are_reported_with_the_culprit_and_never_written() {
    let _serial = serial().await;
    let s = Setup::start("none").await;
    let c = &s.client;

    let cases = [
        (
            "bad-syscall",
            json!({"defaultAction": "SCMP_ACT_ERRNO",
            "syscalls": [{"names": ["read", "not_a_syscall"], "action": "SCMP_ACT_ALLOW"}]}),
            "\"not_a_syscall\"",
        ),
        (
            "bad-action",
            json!({"defaultAction": "SCMP_ACT_DENY"}),
            "\"SCMP_ACT_DENY\"",
        ),
        (
            "loop-a",
            json!({"defaultAction": "SCMP_ACT_ALLOW", "baseProfileName": "loop-b"}),
            "cycle",
        ),
        (
            "loop-b",
            json!({"defaultAction": "SCMP_ACT_ALLOW", "baseProfileName": "loop-a"}),
            "cycle",
        ),
        (
            "orphan",
            json!({"defaultAction": "SCMP_ACT_ALLOW", "baseProfileName": "nowhere"}),
            "\"nowhere\" does not exist",
        ),
    ];
    for (name, spec, _) in &cases {
        apply_profile(c, name, spec.clone()).await;
    }
    // 17 levels: the last one has 16 bases.
    for i in 0..17 {
        let base = (i > 0).then(|| format!("deep-{}", i - 1));
        apply_profile(
            c,
            &format!("deep-{i}"),
            json!({"defaultAction": "SCMP_ACT_ALLOW", "baseProfileName": base}),
        )
        .await;
    }
    for (name, _, words) in &cases {
        let p = wait_state(c, name, "Error").await;
        let message = &p.status.expect("status").conditions[0].message;
        assert!(message.contains(words), "{name}: {message}");
        for node in &s.nodes {
            assert!(!node.file(name).exists(), "{name} was written");
        }
    }
    let deep = wait_state(c, "deep-16", "Error").await;
    assert!(
        deep.status.expect("status").conditions[0]
            .message
            .contains("deeper than 15")
    );
    wait_state(c, "deep-15", "Installed").await;
    assert!(!s.nodes[0].file("deep-16").exists());

    // The API server refuses what the schema cannot hold, naming the field.
    let err = Api::<kube::api::DynamicObject>::all_with(
        c.clone(),
        &kube::api::ApiResource::erase::<phylax::api::profiles::SeccompProfile>(&()),
    )
    .create(
        &PostParams::default(),
        &serde_json::from_value(
            json!({"apiVersion": "profiles.phylax.dev/v1alpha1", "kind": "SeccompProfile",
                "metadata": {"name": "typo"}, "spec": {"defaultAction": "SCMP_ACT_ALLOW",
                "syscalls": [{"names": "read", "action": "SCMP_ACT_ALLOW"}]}}),
        )
        .expect("object"),
    )
    .await
    .expect_err("a string where a list belongs is refused");
    assert!(err.to_string().contains("syscalls"), "{err}");

    // Fixed: installed.
    apply_profile(
        c,
        "bad-syscall",
        json!({"defaultAction": "SCMP_ACT_ERRNO",
        "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW"}]}),
    )
    .await;
    wait_state(c, "bad-syscall", "Installed").await;
    for node in &s.nodes {
        wait_file(&node.file("bad-syscall"), |f| allowed(f) == ["read"]).await;
        assert!(node.agent().metric_sum("phylax_profiles_errors_total", &[]).await >= Some(6.0));
    }
    // AppArmor on nodes without it (this kernel has no AppArmor): reported, nothing loaded.
    let aa = kube::api::ApiResource::erase::<phylax::api::profiles::AppArmorProfile>(&());
    Api::<kube::api::DynamicObject>::all_with(c.clone(), &aa)
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"apiVersion": "profiles.phylax.dev/v1alpha1", "kind": "AppArmorProfile",
                "metadata": {"name": "deny-write"},
                "spec": {"policy": "profile deny-write flags=(attach_disconnected) {\n  file,\n  deny /** w,\n}\n"}}))
            .expect("object"),
        )
        .await
        .expect("create AppArmorProfile");
    let aa_api: Api<phylax::api::profiles::AppArmorProfile> = Api::all(c.clone());
    let unsupported = wait_for("the AppArmorProfile to be reported", TIMEOUT, || async {
        let p = aa_api.get("deny-write").await.ok()?;
        let status = p.status?;
        (status.state.as_deref() == Some("Unsupported") && status.nodes.len() == 2).then_some(status)
    })
    .await;
    assert!(
        unsupported.conditions[0]
            .message
            .contains("AppArmor is not enabled"),
        "{:?}",
        unsupported.conditions
    );
    aa_api
        .delete("deny-write", &DeleteParams::default())
        .await
        .expect("delete");
    wait_for("the AppArmorProfile to be gone", TIMEOUT, || async {
        aa_api.get_opt("deny-write").await.ok()?.is_none().then_some(())
    })
    .await;

    // Disabled: not installed, reported as such.
    apply_profile(
        c,
        "bad-syscall",
        json!({"defaultAction": "SCMP_ACT_ERRNO", "disabled": true,
        "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW"}]}),
    )
    .await;
    wait_state(c, "bad-syscall", "Disabled").await;
    for node in &s.nodes {
        wait_no_file(&node.file("bad-syscall")).await;
        assert!(
            node.agent()
                .admin_get("/readyz")
                .await
                .is_some_and(|(code, _)| code == 200)
        );
    }
    s.assert_no_panic();
    s.finish().await;
}

#[tokio::test]
async fn deletion_waits_for_the_pods_on_each_node_that_use_the_profile() {
    let _serial = serial().await;
    let s = Setup::start("none").await;
    let c = &s.client;
    let ns = TestNamespace::create(cluster(), "profiles").await;

    apply_profile(c, "held", json!({"defaultAction": "SCMP_ACT_LOG"})).await;
    wait_state(c, "held", "Installed").await;
    let pod = create_pod(
        c,
        &ns.name,
        json!({"metadata": {"name": "user"}, "spec": {
        "nodeName": s.nodes[0].name,
        "containers": [{"name": "app", "image": "app:1", "securityContext": {
            "seccompProfile": {"type": "Localhost", "localhostProfile": "phylax/held.json"}}}]}}),
    )
    .await
    .expect("pod");
    wait_for("the pod to show as a user", TIMEOUT, || async {
        let p = profiles(c).get("held").await.ok()?;
        (p.status?.used_by == [format!("{}/user", ns.name)]).then_some(())
    })
    .await;

    profiles(c)
        .delete("held", &DeleteParams::default())
        .await
        .expect("delete");
    // The node without the pod removes its file; the node with it keeps it and says why.
    wait_no_file(&s.nodes[1].file("held")).await;
    let user = format!("{}/user", ns.name);
    let p = wait_for("the profile to say which pod holds it", TIMEOUT, || async {
        let p = profiles(c).get("held").await.ok()?;
        let status = p.status.as_ref()?;
        let says = status.state.as_deref() == Some("Terminating")
            && status.conditions.first()?.message.contains(&user)
            && status.conditions.first()?.message.contains(&s.nodes[0].name);
        says.then_some(p)
    })
    .await;
    assert!(s.nodes[0].file("held").exists());
    assert_eq!(
        p.metadata.finalizers.unwrap_or_default(),
        [format!("node.profiles.phylax.dev/{}", s.nodes[0].name)]
    );

    delete_pod(c, &ns.name, &pod.name_any()).await;
    wait_no_file(&s.nodes[0].file("held")).await;
    wait_gone(c, "held").await;
    s.assert_no_panic();
    s.finish().await;
}

#[tokio::test]
async fn a_restarted_agent_converges_and_a_vanished_node_releases_its_profiles() {
    let _serial = serial().await;
    let mut s = Setup::start("none").await;
    let c = s.client.clone();

    apply_profile(&c, "keep", json!({"defaultAction": "SCMP_ACT_ALLOW"})).await;
    apply_profile(&c, "drop", json!({"defaultAction": "SCMP_ACT_ALLOW"})).await;
    wait_state(&c, "keep", "Installed").await;
    wait_state(&c, "drop", "Installed").await;

    // While node 1's agent is away: a profile is deleted, a file goes missing, a stray one appears.
    s.nodes[0].stop_agent().await;
    profiles(&c)
        .delete("drop", &DeleteParams::default())
        .await
        .expect("delete");
    wait_no_file(&s.nodes[1].file("drop")).await;
    std::fs::remove_file(s.nodes[0].file("keep")).expect("remove keep");
    std::fs::write(s.nodes[0].file("ghost"), "{}").expect("stray file");
    assert!(s.nodes[0].file("drop").exists());
    // The deletion waits for node 1.
    wait_state(&c, "drop", "Terminating").await;

    let proc_root = s.proc_root.path().to_owned();
    s.nodes[0].start_agent("none", &proc_root).await;
    wait_file(&s.nodes[0].file("keep"), |f| {
        f["defaultAction"] == "SCMP_ACT_ALLOW"
    })
    .await;
    wait_no_file(&s.nodes[0].file("drop")).await;
    wait_no_file(&s.nodes[0].file("ghost")).await;
    wait_gone(&c, "drop").await;

    // Node 1 is taken out of the cluster for good: the operator drops its finalizer and report,
    // so deleting a profile does not wait for an agent that will never come back.
    s.nodes[0].stop_agent().await;
    Api::<Node>::all(c.clone())
        .delete(&s.nodes[0].name, &DeleteParams::default())
        .await
        .expect("delete node");
    let gone = s.nodes[0].name.clone();
    wait_for("the vanished node's report to be dropped", TIMEOUT, || async {
        node_statuses(&c, "keep")
            .await
            .iter()
            .all(|r| r.spec.node_name != gone)
            .then_some(())
    })
    .await;
    profiles(&c)
        .delete("keep", &DeleteParams::default())
        .await
        .expect("delete");
    wait_no_file(&s.nodes[1].file("keep")).await;
    wait_gone(&c, "keep").await;

    // An unusable kubelet root stops the agent with the path and what to check.
    let file = tempfile::NamedTempFile::new().expect("file");
    let args = [
        "--node-name=broken".to_owned(),
        format!("--kubelet-root={}", file.path().display()),
        "--audit-source=none".to_owned(),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut broken = Phylax::start("node-agent", &args, Some(&cluster().kubeconfig));
    assert!(!broken.wait_exit(TIMEOUT).await.success());
    let logs = broken.logs().join("\n");
    assert!(
        logs.contains("seccomp/phylax") && logs.contains("--kubelet-root"),
        "{logs}"
    );
    s.assert_no_panic();
    s.finish().await;
}
