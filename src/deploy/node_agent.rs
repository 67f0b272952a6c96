//! The node agent: one per node, including control-plane nodes. It watches its node's pods,
//! installs profiles (a finalizer per node), reports in ProfileNodeStatus objects, and writes the
//! SeccompProfiles recordings produce.

use k8s_openapi::api::apps::v1::{DaemonSet, DaemonSetSpec};
use k8s_openapi::api::core::v1::{HostPathVolumeSource, Toleration, Volume, VolumeMount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use super::{
    Access, cluster_role, field_env, meta, object_name, pod_template, rule, selector_labels, service_account,
};
use crate::role::Role;

pub(super) fn access(ns: &str) -> Access {
    let role = Role::NodeAgent;
    Access {
        service_account: service_account(ns, role, true),
        roles: Vec::new(),
        cluster_roles: vec![cluster_role(
            ns,
            "phylax-node-agent",
            role,
            vec![
                rule("", &["pods"], &["list", "watch"]),
                rule(
                    "profiles.phylax.dev",
                    &["seccompprofiles", "apparmorprofiles"],
                    &["get", "list", "watch", "patch"],
                ),
                rule("profiles.phylax.dev", &["seccompprofiles"], &["create", "update"]),
                // A recorded pod's annotation is checked against its ProfileRecording; the
                // log-everything profile is on the node only while a recording exists.
                rule(
                    "profiles.phylax.dev",
                    &["profilerecordings"],
                    &["get", "list", "watch"],
                ),
                rule(
                    "profiles.phylax.dev",
                    &["profilenodestatuses"],
                    &["create", "patch", "delete"],
                ),
                rule("profiles.phylax.dev", &["profilenodestatuses/status"], &["patch"]),
            ],
        )],
    }
}

pub(super) fn daemon_set(ns: &str, image: &str) -> DaemonSet {
    let role = Role::NodeAgent;
    let mut template = pod_template(
        image,
        role,
        &[
            "--kubelet-root=/var/lib/kubelet",
            "--audit-source=/dev/kmsg",
            "--proc-root=/host/proc",
        ],
    );
    if let Some(spec) = template.spec.as_mut() {
        spec.tolerations = Some(vec![Toleration {
            operator: Some("Exists".into()),
            ..Default::default()
        }]);
        // Root owns the kubelet's root-owned seccomp directory. Privileged, because the runtime's
        // device cgroup refuses a hostPath /dev/kmsg to any other container (open() gives EPERM
        // even with CAP_SYSLOG; seen on a real kubelet + containerd node, tests/node). Loading
        // AppArmor profiles would also need apparmor_parser in the image: without it the agent
        // reports AppArmor unsupported.
        if let Some(sc) = spec.security_context.as_mut() {
            sc.run_as_non_root = Some(false);
        }
        let host = |name: &str, path: &str, kind: &str| Volume {
            name: name.into(),
            host_path: Some(HostPathVolumeSource {
                path: path.into(),
                type_: Some(kind.into()),
            }),
            ..Default::default()
        };
        spec.volumes = Some(vec![
            host("seccomp", "/var/lib/kubelet/seccomp", "DirectoryOrCreate"),
            host("kmsg", "/dev/kmsg", "CharDevice"),
            host("proc", "/proc", "Directory"),
        ]);
        let c = &mut spec.containers[0];
        if let Some(env) = c.env.as_mut() {
            env.push(field_env("NODE_NAME", "spec.nodeName"));
        }
        c.volume_mounts = Some(vec![
            VolumeMount {
                name: "seccomp".into(),
                mount_path: "/var/lib/kubelet/seccomp".into(),
                ..Default::default()
            },
            VolumeMount {
                name: "kmsg".into(),
                mount_path: "/dev/kmsg".into(),
                read_only: Some(true),
                ..Default::default()
            },
            VolumeMount {
                name: "proc".into(),
                mount_path: "/host/proc".into(),
                read_only: Some(true),
                ..Default::default()
            },
        ]);
        if let Some(sc) = c.security_context.as_mut() {
            sc.run_as_non_root = Some(false);
            sc.run_as_user = Some(0);
            sc.run_as_group = Some(0);
            sc.privileged = Some(true);
            // The API server refuses privileged with allowPrivilegeEscalation: false, and a
            // privileged container gets every capability whatever a capabilities list says.
            sc.allow_privilege_escalation = None;
            sc.capabilities = None;
        }
    }
    DaemonSet {
        metadata: meta(ns, &object_name(role), role),
        spec: Some(DaemonSetSpec {
            selector: LabelSelector {
                match_labels: Some(selector_labels(role)),
                ..Default::default()
            },
            template,
            ..Default::default()
        }),
        ..Default::default()
    }
}
