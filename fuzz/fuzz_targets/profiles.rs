//! What reaches the security-profile code from outside: audit lines (any bytes from auditd's log
//! or /dev/kmsg), /proc/<pid>/cgroup and /proc/<pid>/stat contents, AppArmor policy text,
//! SeccompProfile specs (as the API server would store them) and pods under review with an image
//! glob. Nothing panics, accepted records are well formed, and errors name something.
#![no_main]

use libfuzzer_sys::fuzz_target;
use phylax::api::profiles::{ProfileBindingSpec, ProfileKind, ProfileRef, SeccompProfileSpec, glob_matches};
use phylax::node_agent::apparmor;
use phylax::node_agent::recorder::{audit, cgroup};
use phylax::node_agent::seccomp;
use phylax::webhook::mutate::profiles::decide;
use phylax::webhook::review::Verdict;

fuzz_target!(|input: (&[u8], &str, &[u8], &str)| {
    let (line, text, json, pattern) = input;
    for origin in [audit::Origin::Kmsg, audit::Origin::AuditLog] {
        match audit::parse(line, origin) {
            Ok(Some(record)) => {
                // A record is only ever read from the start of a line in the kernel's own form:
                // a kmsg record of facility 0, or a line auditd begins with the record's type.
                let s = String::from_utf8_lossy(line);
                let kernel = match origin {
                    audit::Origin::Kmsg => s.split_once(';').is_some_and(|(prefix, message)| {
                        prefix.split(',').next().and_then(|p| p.parse::<u64>().ok()).is_some_and(|p| p < 8)
                            && message.starts_with("audit: type=1326 audit(")
                    }),
                    audit::Origin::AuditLog => {
                        s.starts_with("type=SECCOMP msg=audit(") || s.starts_with("node=")
                    }
                };
                assert!(kernel, "{s:?}");
                let _ = seccomp::arch_from_audit(record.arch).map(|a| seccomp::syscall_name(a, record.syscall));
            }
            Ok(None) => {}
            Err(e) => assert!(!e.to_string().is_empty()),
        }
    }
    let _ = cgroup::start_time(text);
    if let Some(id) = cgroup::container_id(text) {
        assert!(id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()));
    }
    match apparmor::check_policy(text) {
        // What the node would load as `localhost/<name>`: a plain name, never a path.
        Ok(name) => assert!(!name.is_empty() && !name.contains('/') && !name.starts_with('.')),
        Err(e) => assert!(!e.is_empty()),
    }
    if let Ok(spec) = serde_json::from_slice::<SeccompProfileSpec>(json) {
        match seccomp::resolve("p", |n| (n == "p").then_some(&spec)) {
            Ok(resolved) => {
                if let Err(e) = seccomp::compile(&resolved) {
                    assert!(!e.to_string().is_empty());
                }
                let back: serde_json::Value = serde_json::from_slice(&resolved.to_json()).expect("profile JSON");
                assert!(back.get("defaultAction").is_some());
            }
            Err(e) => assert!(!e.to_string().is_empty()),
        }
    }
    let _ = glob_matches(pattern, text);
    if let Ok(pod) = serde_json::from_slice::<k8s_openapi::api::core::v1::Pod>(json) {
        let binding = ProfileBindingSpec {
            profile_ref: ProfileRef { kind: ProfileKind::SeccompProfile, name: "p".into() },
            image: pattern.to_owned(),
            pod_selector: None,
        };
        let verdict = decide(&pod, &[("b".into(), binding)], &[], |_, _| Some("Installed".into()));
        if let Verdict::Patch { patch, .. } = verdict {
            let mut doc = serde_json::to_value(&pod).expect("pod JSON");
            json_patch::patch(&mut doc, &patch).expect("the patch applies to the pod it was made for");
        }
    }
});
