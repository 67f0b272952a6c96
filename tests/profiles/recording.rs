//! Recording from this kernel's audit records: a pod under a `ProfileRecording` gets the logging
//! profile from the webhook; a process standing for its container (this test binary, with a
//! `/proc/<pid>/cgroup` naming the container in the agents' proc root) loads the logging profile
//! the node agent installed and makes a few syscalls; the kernel logs them to /dev/kmsg; when the
//! pod ends, the agent on its node writes `SeccompProfile <namespace>.<recording>.<container>` allowing them.

use std::io::Write;

use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::json;

use super::binding::{Webhook, apply_namespaced};
use super::kernel::spawn_child;
use super::support::cluster::TestNamespace;
use super::support::wait::wait_for;
use super::*;
use phylax::node_agent::recorder::RECORDED_FROM;

const CONTAINER_ID: &str = "5e0f3c2b1a0998877665544332211000ffeeddccbbaa99887766554433221100";

async fn set_status(client: &Client, ns: &str, pod: &str, phase: &str) {
    let status = json!({"status": {"phase": phase, "containerStatuses": [{
        "name": "app", "image": "registry.local/app:1", "imageID": "", "ready": phase == "Running",
        "restartCount": 0, "containerID": format!("containerd://{CONTAINER_ID}"),
        "state": if phase == "Running" { json!({"running": {}}) } else { json!({"terminated": {"exitCode": 0}}) }}]}});
    Api::<Pod>::namespaced(client.clone(), ns)
        .patch_status(pod, &PatchParams::default(), &Patch::Merge(status))
        .await
        .expect("pod status");
}

#[tokio::test]
async fn syscalls_seen_by_the_kernel_become_a_profile_when_the_pod_ends() {
    if std::fs::File::open("/dev/kmsg").is_err() {
        panic!("this test reads the kernel's audit records from /dev/kmsg; run it as root");
    }
    let _serial = serial().await;
    let s = Setup::start("/dev/kmsg").await;
    let c = &s.client;
    let ns = TestNamespace::create(cluster(), "recording").await;
    let webhook = Webhook::start(c, &ns).await;
    apply_namespaced(
        c,
        &ns.name,
        "ProfileRecording",
        "trace",
        json!({
        "kind": "SeccompProfile", "recorder": "logs", "podSelector": {"matchLabels": {"app": "traced"}}}),
    )
    .await;

    let node = &s.nodes[0];
    let pod = wait_for("the recorded pod to be admitted", TIMEOUT, || async {
        let p = create_pod(c, &ns.name, json!({"metadata": {"name": "traced", "labels": {"app": "traced"}},
            "spec": {"nodeName": node.name, "containers": [{"name": "app", "image": "registry.local/app:1"}]}}))
        .await
        .ok()?;
        if p.annotations().contains_key(phylax::api::profiles::RECORDING_ANNOTATION) {
            Some(p)
        } else {
            super::delete_pod(c, &ns.name, "traced").await;
            None
        }
    })
    .await;
    let localhost = pod.spec.as_ref().unwrap().containers[0]
        .security_context
        .as_ref()
        .unwrap()
        .seccomp_profile
        .as_ref()
        .unwrap()
        .localhost_profile
        .clone()
        .unwrap();
    set_status(c, &ns.name, "traced", "Running").await;

    // The "container": loads the profile the kubelet would hand the runtime, from the node's root.
    let profile = node.root.path().join("seccomp").join(&localhost);
    let mut child = spawn_child(&profile, "mkdir,getppid,uname", true, true);
    let cgroup_dir = s.proc_root.path().join(child.id().to_string());
    std::fs::create_dir_all(&cgroup_dir).expect("proc dir");
    std::fs::write(
        cgroup_dir.join("cgroup"),
        format!("0::/kubepods.slice/kubepods-besteffort.slice/cri-containerd-{CONTAINER_ID}.scope\n"),
    )
    .expect("cgroup file");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"go\n")
        .expect("release the child");
    let out = child.wait_with_output().expect("child");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // Records of a container whose ID the agent has not yet seen in its pod's status are kept
    // aside and attributed when it does: both count.
    wait_for("the agent to take the audit records", TIMEOUT, || async {
        let agent = node.agent();
        let recorded = agent
            .metric_sum("phylax_profiles_audit_lines_total", &[("result", "recorded")])
            .await?;
        let pending = agent
            .metric_sum("phylax_profiles_audit_lines_total", &[("result", "pending")])
            .await?;
        (recorded + pending >= 4.0).then_some(())
    })
    .await;

    set_status(c, &ns.name, "traced", "Succeeded").await;
    let recorded = wait_for("the recorded profile", TIMEOUT, || async {
        profiles(c)
            .get_opt(&format!("{}.trace.app", ns.name))
            .await
            .ok()
            .flatten()
    })
    .await;
    let names: Vec<&str> = recorded
        .spec
        .syscalls
        .iter()
        .flat_map(|r| r.names.iter().map(String::as_str))
        .collect();
    for wanted in ["getppid", "uname", "exit_group"] {
        assert!(names.contains(&wanted), "{wanted} not in {names:?}");
    }
    assert!(
        names.contains(&"mkdir") || names.contains(&"mkdirat"),
        "{names:?}"
    );
    assert_eq!(recorded.spec.default_action, "SCMP_ACT_ERRNO");
    assert_eq!(
        recorded
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(RECORDED_FROM))
            .map(String::as_str),
        Some(format!("{}/trace", ns.name).as_str())
    );
    // The recorded profile is a profile like any other: installed on both nodes.
    wait_state(c, &format!("{}.trace.app", ns.name), "Installed").await;
    assert!(
        node.agent()
            .metric_sum("phylax_profiles_recordings_total", &[("result", "written")])
            .await
            >= Some(1.0)
    );
    webhook.stop(c).await;
    s.assert_no_panic();
    s.finish().await;
}
