//! The real kernel: a profile compiled by the node agent's code and loaded into a child process
//! with seccomp(2) (through libseccomp) denies what it names with the profile's errno and lets
//! the rest through.
//!
//! The child is this test binary run again on `seccomp_child` (ignored unless asked for): it
//! loads the profile file named by PHYLAX_SECCOMP_PROFILE, waits for a line on stdin when
//! PHYLAX_SECCOMP_WAIT is set, makes the syscalls listed in PHYLAX_SECCOMP_CALLS, prints one
//! `name result errno` line each (unless PHYLAX_SECCOMP_QUIET) and exits at once.

use std::io::{BufRead, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use phylax::api::profiles::SeccompProfileSpec;
use phylax::node_agent::seccomp;

/// Starts the child on `profile` making `calls` (comma-separated: mkdir, getppid, uname, chdir).
pub fn spawn_child(profile: &Path, calls: &str, wait: bool, quiet: bool) -> Child {
    let mut cmd = Command::new(std::env::current_exe().expect("test binary"));
    cmd.args([
        "--exact",
        "kernel::seccomp_child",
        "--ignored",
        "--nocapture",
        "--test-threads=1",
        "-q",
    ])
    .env("PHYLAX_SECCOMP_PROFILE", profile)
    .env("PHYLAX_SECCOMP_CALLS", calls)
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    if wait {
        cmd.env("PHYLAX_SECCOMP_WAIT", "1");
    }
    if quiet {
        cmd.env("PHYLAX_SECCOMP_QUIET", "1");
    }
    cmd.spawn().expect("spawn the seccomp child")
}

#[test]
#[ignore = "the child process of the seccomp tests; run by them"]
fn seccomp_child() {
    let path = std::env::var("PHYLAX_SECCOMP_PROFILE").expect("PHYLAX_SECCOMP_PROFILE");
    let calls = std::env::var("PHYLAX_SECCOMP_CALLS").unwrap_or_default();
    let quiet = std::env::var_os("PHYLAX_SECCOMP_QUIET").is_some();
    let spec: SeccompProfileSpec =
        serde_json::from_slice(&std::fs::read(&path).expect("profile")).expect("OCI profile");
    let resolved = seccomp::resolve("p", |_| Some(&spec)).expect("resolve");
    let filter = seccomp::compile(&resolved).expect("compile");
    let dir = std::ffi::CString::new(format!("{path}.dir")).expect("path");
    let root = std::ffi::CString::new("/").expect("path");
    if std::env::var_os("PHYLAX_SECCOMP_WAIT").is_some() {
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line).expect("stdin");
    }
    filter.load().expect("load the filter");
    let mut out = Vec::new();
    for call in calls.split(',').filter(|c| !c.is_empty()) {
        // SAFETY: plain syscalls on valid, NUL-terminated strings and a stack buffer.
        let ret = unsafe {
            match call {
                "mkdir" => libc::mkdir(dir.as_ptr(), 0o700) as i64,
                "getppid" => libc::getppid() as i64,
                "uname" => {
                    let mut u: libc::utsname = std::mem::zeroed();
                    libc::uname(&mut u) as i64
                }
                "chdir" => libc::chdir(root.as_ptr()) as i64,
                other => panic!("unknown call {other}"),
            }
        };
        let errno = if ret < 0 {
            std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
        } else {
            0
        };
        out.push(format!(
            "{call} {} {errno}\n",
            if ret < 0 { "fail" } else { "ok" }
        ));
    }
    if !quiet {
        let _ = std::io::stdout().write_all(out.concat().as_bytes());
    }
    // SAFETY: ends the process at once, with nothing left to run (no further syscalls).
    unsafe { libc::_exit(0) }
}

/// Runs the child to the end; its `call result errno` lines.
pub fn run_child(profile: &Path, calls: &str) -> Vec<(String, String, i32)> {
    let child = spawn_child(profile, calls, false, false);
    let out = child.wait_with_output().expect("child");
    assert!(
        out.status.success(),
        "child: {:?}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut parts = l.split(' ');
            Some((
                parts.next()?.to_owned(),
                parts.next()?.to_owned(),
                parts.next()?.parse().ok()?,
            ))
        })
        .collect()
}

#[test]
fn a_loaded_profile_denies_with_its_errno_and_allows_the_rest() {
    let base: SeccompProfileSpec = serde_json::from_value(serde_json::json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 42}]
    }))
    .unwrap();
    let derived: SeccompProfileSpec = serde_json::from_value(serde_json::json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "baseProfileName": "base",
        // chdir is refused only when its argument is NULL: a condition that loads and does not
        // match chdir("/").
        "syscalls": [{"names": ["uname"], "action": "SCMP_ACT_ERRNO", "errnoRet": 43},
                     {"names": ["chdir"], "action": "SCMP_ACT_ERRNO", "errnoRet": 44,
                      "args": [{"index": 0, "value": 0, "op": "SCMP_CMP_EQ"}]}]
    }))
    .unwrap();
    let resolved = seccomp::resolve("derived", |n| match n {
        "base" => Some(&base),
        "derived" => Some(&derived),
        _ => None,
    })
    .unwrap();
    seccomp::compile(&resolved).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("derived.json");
    std::fs::write(&file, resolved.to_json()).unwrap();

    let results = run_child(&file, "mkdir,getppid,uname,chdir");
    assert_eq!(
        results,
        [
            ("mkdir".to_owned(), "fail".to_owned(), 42),
            ("getppid".to_owned(), "ok".to_owned(), 0),
            ("uname".to_owned(), "fail".to_owned(), 43),
            ("chdir".to_owned(), "ok".to_owned(), 0),
        ]
    );
    assert!(!dir.path().join("derived.json.dir").exists());
    // Under an allow-everything profile the same calls work: the errnos came from the profile.
    let open = dir.path().join("open.json");
    std::fs::write(&open, "{\"defaultAction\": \"SCMP_ACT_ALLOW\"}").unwrap();
    let results = run_child(&open, "mkdir,uname");
    assert_eq!(
        results,
        [
            ("mkdir".to_owned(), "ok".to_owned(), 0),
            ("uname".to_owned(), "ok".to_owned(), 0)
        ]
    );
}
