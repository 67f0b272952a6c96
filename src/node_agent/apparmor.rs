//! AppArmor profiles: the policy is written to `<dir>/<name>` and loaded (or replaced) with
//! `apparmor_parser`; on a node without AppArmor in the kernel or without the parser, every
//! profile is reported `Unsupported` and nothing is written.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Whether this node can load AppArmor profiles, and if not, why.
#[derive(Debug, Clone)]
pub enum Support {
    Available { parser: PathBuf, dir: PathBuf },
    Unsupported(String),
}

impl Support {
    /// AppArmor is usable when the kernel exposes its securityfs (`<sys>/kernel/security/apparmor`)
    /// and `parser` runs.
    pub fn detect(sys_root: &Path, parser: &Path, dir: &Path) -> Support {
        let fs = sys_root.join("kernel/security/apparmor");
        if !fs.exists() {
            return Support::Unsupported(format!(
                "AppArmor is not enabled in this node's kernel ({} is absent)",
                fs.display()
            ));
        }
        match Command::new(parser).arg("--version").output() {
            Ok(out) if out.status.success() => Support::Available {
                parser: parser.to_owned(),
                dir: dir.to_owned(),
            },
            Ok(out) => Support::Unsupported(format!("{} --version failed: {}", parser.display(), out.status)),
            Err(e) => Support::Unsupported(format!(
                "cannot run {} ({e}); install apparmor_parser on the node or set --apparmor-parser",
                parser.display()
            )),
        }
    }
}

/// The name the policy declares (`profile <name> … {`): what pods refer to as `localhost/<name>`.
pub fn profile_name(policy: &str) -> Result<&str, String> {
    let mut names = policy.lines().filter_map(|line| {
        let rest = line.trim_start().strip_prefix("profile")?;
        if !rest.starts_with([' ', '\t']) {
            return None;
        }
        rest.split_whitespace().next()
    });
    let Some(name) = names.next() else {
        return Err(
            "the policy declares no `profile <name> {`; name the profile so pods can refer to it".into(),
        );
    };
    if names.next().is_some() {
        return Err("the policy declares more than one `profile`; use one AppArmorProfile each".into());
    }
    let ok = !name.is_empty()
        && name.len() <= 200
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && !name.starts_with('.');
    if ok {
        Ok(name)
    } else {
        Err(format!(
            "profile name {name:?} may hold only letters, digits, '-', '_' and '.'"
        ))
    }
}

/// Writes the policy file and loads it into the kernel (replacing an older version).
pub fn load(parser: &Path, dir: &Path, name: &str, policy: &str) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {} ({e})", dir.display()))?;
    let path = dir.join(name);
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, policy)
        .and_then(|_| std::fs::rename(&tmp, &path))
        .map_err(|e| format!("cannot write {} ({e})", path.display()))?;
    run(parser, &["--replace", "--skip-cache"], &path)
}

/// Unloads the profile and removes its file.
pub fn unload(parser: &Path, dir: &Path, name: &str) -> Result<(), String> {
    let path = dir.join(name);
    if path.exists() {
        run(parser, &["--remove"], &path)?;
        std::fs::remove_file(&path).map_err(|e| format!("cannot remove {} ({e})", path.display()))?;
    }
    Ok(())
}

fn run(parser: &Path, args: &[&str], path: &Path) -> Result<(), String> {
    let out = Command::new(parser)
        .args(args)
        .arg(path)
        .output()
        .map_err(|e| format!("cannot run {} ({e})", parser.display()))?;
    if out.status.success() {
        Ok(())
    } else {
        let stderr = String::from_utf8_lossy(&out.stderr);
        Err(format!(
            "apparmor_parser refused the policy: {}",
            stderr.trim().chars().take(500).collect::<String>()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_declared_profile_name() {
        let policy = "#include <tunables/global>\nprofile deny-write flags=(attach_disconnected) {\n  file,\n  deny /** w,\n}\n";
        assert_eq!(profile_name(policy), Ok("deny-write"));
        assert!(
            profile_name("/usr/bin/x {\n}\n")
                .unwrap_err()
                .contains("declares no")
        );
        assert!(
            profile_name("profile a {}\nprofile b {}\n")
                .unwrap_err()
                .contains("more than one")
        );
        assert!(
            profile_name("profile ../../etc {}\n")
                .unwrap_err()
                .contains("may hold only")
        );
        assert_eq!(
            profile_name("  profiled\n"),
            Err("the policy declares no `profile <name> {`; name the profile so pods can refer to it".into())
        );
    }

    #[test]
    fn a_node_without_apparmor_says_why() {
        let sys = tempfile::tempdir().unwrap();
        match Support::detect(sys.path(), Path::new("apparmor_parser"), Path::new("/tmp")) {
            Support::Unsupported(why) => assert!(why.contains("not enabled"), "{why}"),
            other => panic!("{other:?}"),
        }
    }
}
