//! A `SeccompProfile` from spec to the file the kubelet hands to the container runtime: resolve
//! `baseProfileName` inheritance, compile the result with libseccomp for this node's architecture
//! (so a profile the runtime would reject is never installed), and render the OCI JSON.
//! No Kubernetes types beyond the spec and no I/O besides libseccomp's own.

use std::collections::BTreeSet;
use std::fs::OpenOptions;
use std::str::FromStr;

use libseccomp::{ScmpAction, ScmpArch, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext, ScmpSyscall};
use serde::Serialize;

use crate::api::profiles::{SeccompProfileSpec, SyscallRule};

/// Deepest `baseProfileName` chain accepted (the profile itself counts as level 0).
pub const MAX_DEPTH: usize = 15;
/// errno when `SCMP_ACT_ERRNO` names none, as in runc.
const EPERM: u32 = 1;
/// Largest errno the kernel passes back (MAX_ERRNO).
const MAX_ERRNO: u32 = 4095;

/// Why a profile cannot be installed; the message names the profile, rule, syscall or value at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProfileError {
    #[error("base profile {0:?} does not exist; create it or change baseProfileName")]
    MissingBase(String),
    #[error("baseProfileName forms a cycle: {0}")]
    Cycle(String),
    #[error("baseProfileName chain is deeper than {MAX_DEPTH} levels: {0}")]
    TooDeep(String),
    #[error("{0}")]
    Invalid(String),
}

/// The profile as installed: the spec with its bases' rules merged in, in the OCI/kubelet format.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Resolved {
    pub default_action: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default_errno_ret: Option<u32>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub architectures: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub syscalls: Vec<SyscallRule>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub flags: Vec<String>,
    /// The profile's own (not inherited): where seccomp-notify descriptors go, and what with them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listener_path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listener_metadata: Option<String>,
}

/// Merges `name`'s spec over its bases'. `lookup` gives a profile's spec by name. The base's rules
/// come first, so libseccomp sees the derived profile's rules last; the derived profile's default
/// action, errno and (when it lists any) architectures win; flags add up.
pub fn resolve<'a>(
    name: &str,
    lookup: impl Fn(&str) -> Option<&'a SeccompProfileSpec>,
) -> Result<Resolved, ProfileError> {
    let mut chain: Vec<(&str, &SeccompProfileSpec)> = Vec::new();
    let mut current = name;
    loop {
        let Some(spec) = lookup(current) else {
            return Err(if chain.is_empty() {
                ProfileError::Invalid(format!("profile {current:?} does not exist"))
            } else {
                ProfileError::MissingBase(current.to_owned())
            });
        };
        if chain.iter().any(|(n, _)| *n == current) {
            let path: Vec<&str> = chain.iter().map(|(n, _)| *n).chain([current]).collect();
            return Err(ProfileError::Cycle(path.join(" -> ")));
        }
        chain.push((current, spec));
        if chain.len() > MAX_DEPTH + 1 {
            let path: Vec<&str> = chain.iter().map(|(n, _)| *n).collect();
            return Err(ProfileError::TooDeep(path.join(" -> ")));
        }
        match spec.base_profile_name.as_deref() {
            None | Some("") => break,
            Some(base) if base.contains("://") => {
                return Err(ProfileError::Invalid(format!(
                    "baseProfileName {base:?} is an image reference; Phylax takes only the name of \
                     another SeccompProfile"
                )));
            }
            Some(base) => current = base,
        }
    }
    let own = chain[0].1;
    let mut flags = BTreeSet::new();
    let mut syscalls = Vec::new();
    let mut architectures = Vec::new();
    for (_, spec) in chain.iter().rev() {
        syscalls.extend(spec.syscalls.iter().cloned());
        flags.extend(spec.flags.iter().cloned());
        if !spec.architectures.is_empty() {
            architectures = spec.architectures.clone();
        }
    }
    Ok(Resolved {
        default_action: own.default_action.clone(),
        default_errno_ret: own.default_errno_ret,
        architectures,
        syscalls,
        flags: flags.into_iter().collect(),
        listener_path: own.listener_path.clone(),
        listener_metadata: own.listener_metadata.clone(),
    })
}

impl Resolved {
    /// The file's bytes: stable for equal profiles, so an unchanged profile is not rewritten.
    pub fn to_json(&self) -> Vec<u8> {
        let mut out = serde_json::to_vec_pretty(self).unwrap_or_default();
        out.push(b'\n');
        out
    }
}

fn action(what: &str, name: &str, errno: Option<u32>) -> Result<ScmpAction, ProfileError> {
    if let Some(e) = errno
        && e > MAX_ERRNO
    {
        return Err(ProfileError::Invalid(format!(
            "{what}: errno {e} is out of range (1 to {MAX_ERRNO})"
        )));
    }
    let value = match name {
        "SCMP_ACT_ERRNO" => Some(errno.unwrap_or(EPERM) as i32),
        "SCMP_ACT_TRACE" => Some(errno.unwrap_or(0) as i32),
        _ => None,
    };
    ScmpAction::from_str(name, value).map_err(|_| {
        ProfileError::Invalid(format!(
            "{what}: unknown action {name:?}; use SCMP_ACT_ALLOW, SCMP_ACT_ERRNO, SCMP_ACT_LOG, \
             SCMP_ACT_KILL, SCMP_ACT_KILL_PROCESS, SCMP_ACT_KILL_THREAD, SCMP_ACT_TRAP, \
             SCMP_ACT_TRACE or SCMP_ACT_NOTIFY"
        ))
    })
}

fn compare(what: &str, arg: &crate::api::profiles::SyscallArg) -> Result<ScmpArgCompare, ProfileError> {
    if arg.index > 5 {
        return Err(ProfileError::Invalid(format!(
            "{what}: argument index {} is out of range (0 to 5)",
            arg.index
        )));
    }
    let op = ScmpCompareOp::from_str(&arg.op).map_err(|_| {
        ProfileError::Invalid(format!(
            "{what}: unknown operator {:?}; use SCMP_CMP_NE, SCMP_CMP_LT, SCMP_CMP_LE, SCMP_CMP_EQ, \
             SCMP_CMP_GE, SCMP_CMP_GT or SCMP_CMP_MASKED_EQ",
            arg.op
        ))
    })?;
    Ok(match op {
        // OCI: `value` is the mask and `valueTwo` the datum.
        ScmpCompareOp::MaskedEqual(_) => {
            ScmpArgCompare::new(arg.index, ScmpCompareOp::MaskedEqual(arg.value), arg.value_two)
        }
        op => ScmpArgCompare::new(arg.index, op, arg.value),
    })
}

/// Builds the filter libseccomp (and so the container runtime) would build from this profile for
/// this node, generating its BPF program. Every name, action, operator and flag is checked; the
/// error names the first one at fault.
pub fn compile(profile: &Resolved) -> Result<ScmpFilterContext, ProfileError> {
    let libseccomp = |what: String| {
        move |e: libseccomp::error::SeccompError| ProfileError::Invalid(format!("{what}: {e}"))
    };
    let default = action(
        "defaultAction",
        &profile.default_action,
        profile.default_errno_ret,
    )?;
    let mut ctx = ScmpFilterContext::new(default).map_err(libseccomp("defaultAction".into()))?;
    for arch in &profile.architectures {
        let parsed = ScmpArch::from_str(arch).map_err(|_| {
            ProfileError::Invalid(format!(
                "architectures: unknown architecture {arch:?} (e.g. SCMP_ARCH_X86_64, SCMP_ARCH_AARCH64)"
            ))
        })?;
        if !ctx.is_arch_present(parsed).unwrap_or(false) {
            ctx.add_arch(parsed)
                .map_err(libseccomp(format!("architectures: {arch}")))?;
        }
    }
    for flag in &profile.flags {
        match flag.as_str() {
            "SECCOMP_FILTER_FLAG_TSYNC" => ctx.set_ctl_tsync(true),
            "SECCOMP_FILTER_FLAG_LOG" => ctx.set_ctl_log(true),
            "SECCOMP_FILTER_FLAG_SPEC_ALLOW" => ctx.set_ctl_ssb(true),
            other => {
                return Err(ProfileError::Invalid(format!(
                    "flags: unknown flag {other:?}; use SECCOMP_FILTER_FLAG_TSYNC, \
                     SECCOMP_FILTER_FLAG_LOG or SECCOMP_FILTER_FLAG_SPEC_ALLOW"
                )));
            }
        }
        .map_err(libseccomp(format!("flags: {flag}")))?;
    }
    for (i, rule) in profile.syscalls.iter().enumerate() {
        let what = format!("syscalls[{i}]");
        let act = action(&what, &rule.action, rule.errno_ret)?;
        let cmps = rule
            .args
            .iter()
            .map(|a| compare(&what, a))
            .collect::<Result<Vec<_>, _>>()?;
        let mut indexes: Vec<u32> = rule.args.iter().map(|a| a.index).collect();
        indexes.sort_unstable();
        let repeated = indexes.windows(2).any(|w| w[0] == w[1]);
        if rule.names.is_empty() {
            return Err(ProfileError::Invalid(format!("{what}: names is empty")));
        }
        for name in &rule.names {
            let syscall = ScmpSyscall::from_name(name).map_err(|_| {
                ProfileError::Invalid(format!(
                    "{what}: unknown syscall {name:?} (libseccomp {} knows no such name on any architecture)",
                    lib_version()
                ))
            })?;
            // A rule repeating the default action changes nothing; libseccomp refuses it, runc skips it.
            if act == default {
                continue;
            }
            let added = if cmps.is_empty() {
                ctx.add_rule(act, syscall)
            } else if repeated {
                // Several conditions on one argument: any of them (one rule each), as runc does.
                cmps.iter()
                    .try_for_each(|c| ctx.add_rule_conditional(act, syscall, &[*c]).map(|_| ()))
                    .map(|_| &mut ctx)
            } else {
                ctx.add_rule_conditional(act, syscall, &cmps)
            };
            added.map_err(libseccomp(format!("{what}: syscall {name:?}")))?;
        }
    }
    let sink = OpenOptions::new()
        .write(true)
        .open("/dev/null")
        .map_err(|e| ProfileError::Invalid(format!("cannot open /dev/null to generate the filter: {e}")))?;
    ctx.export_bpf(&sink)
        .map_err(libseccomp("generating the BPF program".into()))?;
    Ok(ctx)
}

fn lib_version() -> String {
    libseccomp::ScmpVersion::current()
        .map(|v| format!("{}.{}.{}", v.major, v.minor, v.micro))
        .unwrap_or_else(|_| "?".into())
}

/// The audit architecture number (as in audit records' `arch=`) to libseccomp's architecture.
pub fn arch_from_audit(arch: u32) -> Option<ScmpArch> {
    Some(match arch {
        0xc000_003e => ScmpArch::X8664,
        0x4000_0003 => ScmpArch::X86,
        0xc000_00b7 => ScmpArch::Aarch64,
        0x4000_0028 => ScmpArch::Arm,
        0x8000_0016 => ScmpArch::S390X,
        0xc000_0015 => ScmpArch::Ppc64Le,
        0xc000_00f3 => ScmpArch::Riscv64,
        _ => return None,
    })
}

/// A syscall's name from its number on an architecture.
pub fn syscall_name(arch: ScmpArch, nr: i32) -> Option<String> {
    ScmpSyscall::from(nr).get_name_by_arch(arch).ok()
}

/// The libseccomp name of this node's architecture, as profiles spell it.
pub fn native_arch() -> &'static str {
    match ScmpArch::native() {
        ScmpArch::X8664 => "SCMP_ARCH_X86_64",
        ScmpArch::Aarch64 => "SCMP_ARCH_AARCH64",
        ScmpArch::X86 => "SCMP_ARCH_X86",
        ScmpArch::Arm => "SCMP_ARCH_ARM",
        ScmpArch::S390X => "SCMP_ARCH_S390X",
        ScmpArch::Ppc64Le => "SCMP_ARCH_PPC64LE",
        ScmpArch::Riscv64 => "SCMP_ARCH_RISCV64",
        _ => "SCMP_ARCH_NATIVE",
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::api::profiles::SyscallArg;

    fn spec(json: serde_json::Value) -> SeccompProfileSpec {
        serde_json::from_value(json).unwrap()
    }

    fn resolve_in(all: &BTreeMap<&str, SeccompProfileSpec>, name: &str) -> Result<Resolved, ProfileError> {
        resolve(name, |n| all.get(n))
    }

    #[test]
    fn inheritance_merges_rules_and_keeps_the_derived_default() {
        let all = BTreeMap::from([
            (
                "base",
                spec(
                    serde_json::json!({"defaultAction": "SCMP_ACT_ERRNO", "architectures": ["SCMP_ARCH_X86_64"],
                "flags": ["SECCOMP_FILTER_FLAG_LOG"],
                "syscalls": [{"names": ["read", "write"], "action": "SCMP_ACT_ALLOW"}]}),
                ),
            ),
            (
                "app",
                spec(
                    serde_json::json!({"defaultAction": "SCMP_ACT_LOG", "baseProfileName": "base",
                "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13}]}),
                ),
            ),
        ]);
        let r = resolve_in(&all, "app").unwrap();
        assert_eq!(r.default_action, "SCMP_ACT_LOG");
        assert_eq!(r.architectures, ["SCMP_ARCH_X86_64"]);
        assert_eq!(r.flags, ["SECCOMP_FILTER_FLAG_LOG"]);
        let names: Vec<&str> = r
            .syscalls
            .iter()
            .flat_map(|s| s.names.iter().map(String::as_str))
            .collect();
        assert_eq!(names, ["read", "write", "mkdir"]);
        compile(&r).unwrap();
    }

    #[test]
    fn cycles_missing_bases_and_deep_chains_are_errors() {
        let mut all = BTreeMap::new();
        all.insert(
            "a",
            spec(serde_json::json!({"defaultAction": "SCMP_ACT_ALLOW", "baseProfileName": "b"})),
        );
        all.insert(
            "b",
            spec(serde_json::json!({"defaultAction": "SCMP_ACT_ALLOW", "baseProfileName": "a"})),
        );
        all.insert(
            "c",
            spec(serde_json::json!({"defaultAction": "SCMP_ACT_ALLOW", "baseProfileName": "gone"})),
        );
        all.insert(
            "self",
            spec(serde_json::json!({"defaultAction": "SCMP_ACT_ALLOW", "baseProfileName": "self"})),
        );
        assert_eq!(
            resolve_in(&all, "a").unwrap_err(),
            ProfileError::Cycle("a -> b -> a".into())
        );
        assert_eq!(
            resolve_in(&all, "self").unwrap_err(),
            ProfileError::Cycle("self -> self".into())
        );
        assert_eq!(
            resolve_in(&all, "c").unwrap_err(),
            ProfileError::MissingBase("gone".into())
        );
        let names: Vec<String> = (0..=17).map(|i| format!("l{i}")).collect();
        let mut chain = BTreeMap::new();
        for i in 0..=17 {
            let base = (i < 17).then(|| names[i + 1].clone());
            chain.insert(
                names[i].as_str(),
                spec(serde_json::json!({"defaultAction": "SCMP_ACT_ALLOW", "baseProfileName": base})),
            );
        }
        // l2 has 15 bases (l3..l17): allowed; l1 has 16: refused.
        assert!(resolve_in(&chain, "l2").is_ok());
        assert!(matches!(resolve_in(&chain, "l1"), Err(ProfileError::TooDeep(_))));
    }

    #[test]
    fn compile_names_the_culprit() {
        let bad = |json: serde_json::Value| -> String {
            let s = spec(json);
            let r = resolve("p", |n| (n == "p").then_some(&s)).unwrap();
            compile(&r).unwrap_err().to_string()
        };
        let msg = bad(serde_json::json!({"defaultAction": "SCMP_ACT_ERRNO",
            "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW"}, {"names": ["read", "no_such_call"], "action": "SCMP_ACT_ALLOW"}]}));
        assert!(
            msg.contains("syscalls[1]") && msg.contains("\"no_such_call\""),
            "{msg}"
        );
        let msg = bad(serde_json::json!({"defaultAction": "SCMP_ACT_DENY"}));
        assert!(
            msg.contains("defaultAction") && msg.contains("SCMP_ACT_DENY"),
            "{msg}"
        );
        let msg = bad(serde_json::json!({"defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["read"], "action": "ALLOW"}]}));
        assert!(msg.contains("syscalls[0]") && msg.contains("\"ALLOW\""), "{msg}");
        let msg =
            bad(serde_json::json!({"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_VAX"]}));
        assert!(msg.contains("SCMP_ARCH_VAX"), "{msg}");
        let msg =
            bad(serde_json::json!({"defaultAction": "SCMP_ACT_ALLOW", "flags": ["SECCOMP_FILTER_FLAG_NEW"]}));
        assert!(msg.contains("SECCOMP_FILTER_FLAG_NEW"), "{msg}");
        let msg = bad(serde_json::json!({"defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ERRNO", "args": [{"index": 6, "value": 1, "op": "SCMP_CMP_EQ"}]}]}));
        assert!(msg.contains("index 6"), "{msg}");
        let msg = bad(serde_json::json!({"defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ERRNO", "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_LIKE"}]}]}));
        assert!(msg.contains("SCMP_CMP_LIKE"), "{msg}");
        let msg = bad(serde_json::json!({"defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ERRNO", "errnoRet": 70000}]}));
        assert!(msg.contains("70000"), "{msg}");
    }

    #[test]
    fn the_security_profiles_operators_fields_are_accepted_and_listeners_installed() {
        let spec = spec(serde_json::json!({
            "defaultAction": "SCMP_ACT_ERRNO",
            "targetWorkload": "nginx",
            "listenerPath": "/run/seccomp-agent.socket",
            "listenerMetadata": "profile=nginx",
            "syscalls": [{"names": ["uname"], "action": "SCMP_ACT_NOTIFY"}],
        }));
        assert_eq!(spec.target_workload.as_deref(), Some("nginx"));
        let resolved = resolve("nginx", |_| Some(&spec)).unwrap();
        let json: serde_json::Value = serde_json::from_slice(&resolved.to_json()).unwrap();
        assert_eq!(json["listenerPath"], "/run/seccomp-agent.socket");
        assert_eq!(json["listenerMetadata"], "profile=nginx");
        assert!(json.get("targetWorkload").is_none(), "{json}");
    }

    #[test]
    fn args_and_other_architectures_compile() {
        let r = Resolved {
            default_action: "SCMP_ACT_ALLOW".into(),
            default_errno_ret: None,
            architectures: vec![
                "SCMP_ARCH_X86_64".into(),
                "SCMP_ARCH_X86".into(),
                "SCMP_ARCH_X32".into(),
            ],
            syscalls: vec![SyscallRule {
                names: vec!["personality".into(), "arm_fadvise64_64".into()],
                action: "SCMP_ACT_ERRNO".into(),
                errno_ret: Some(38),
                args: vec![
                    SyscallArg {
                        index: 0,
                        value: 0xff,
                        value_two: 8,
                        op: "SCMP_CMP_MASKED_EQ".into(),
                    },
                    SyscallArg {
                        index: 0,
                        value: 0,
                        value_two: 0,
                        op: "SCMP_CMP_EQ".into(),
                    },
                ],
            }],
            flags: vec![],
            listener_path: None,
            listener_metadata: None,
        };
        compile(&r).unwrap();
        let json: serde_json::Value = serde_json::from_slice(&r.to_json()).unwrap();
        assert_eq!(json["syscalls"][0]["errnoRet"], 38);
        assert_eq!(json["syscalls"][0]["args"][0]["valueTwo"], 8);
    }

    #[test]
    fn audit_architectures_and_names() {
        let arch = arch_from_audit(0xc000_003e).unwrap();
        assert_eq!(syscall_name(arch, 63).as_deref(), Some("uname"));
        assert_eq!(syscall_name(arch, 231).as_deref(), Some("exit_group"));
        assert!(arch_from_audit(0x1234).is_none());
    }
}
