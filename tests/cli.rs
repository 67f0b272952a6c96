//! The binary as a user meets it: dispatch, help, bad input, and the rendered manifests kept in
//! `deploy/`. None of these need a cluster.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use support::process::{Phylax, binary, run};

/// Commands every default build lists in `--help`.
const COMMANDS: [&str; 7] = [
    "operator",
    "webhook",
    "kms-plugin",
    "node-agent",
    "tokenizer",
    "manifests",
    "crd",
];

fn one_line_error(stderr: &str) -> &str {
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    let last = *lines.last().unwrap_or_else(|| panic!("no error printed"));
    assert!(last.starts_with("error: "), "{stderr}");
    assert!(
        !stderr.contains("panicked") && !stderr.contains("RUST_BACKTRACE"),
        "{stderr}"
    );
    last
}

#[test]
fn version_names_commit_and_roles() {
    let (code, out, _) = run(&binary(), &["version", "--output", "json"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).expect("version JSON");
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    assert!(v["gitCommit"].as_str().is_some_and(|c| !c.is_empty()));
    let roles: Vec<&str> = v["roles"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap())
        .collect();
    assert_eq!(
        roles,
        ["operator", "webhook", "kms-plugin", "node-agent", "tokenizer"]
    );
}

#[test]
fn help_lists_the_roles_of_this_build() {
    let (code, out, _) = run(&binary(), &["--help"]);
    assert_eq!(code, 0);
    for role in COMMANDS {
        assert!(out.contains(role), "{role} missing from:\n{out}");
    }
    let (code, _, err) = run(&binary(), &[]);
    assert_eq!(code, 2, "no command is a usage error");
    assert!(err.contains("Usage:"), "{err}");
}

#[test]
fn unknown_role_and_flag_are_one_line_errors() {
    let (code, _, err) = run(&binary(), &["kms"]);
    assert_eq!(code, 2);
    let line = one_line_error(&err);
    assert!(
        line.contains("unknown command 'kms'") && line.contains("kms-plugin"),
        "{line}"
    );

    let (code, _, err) = run(&binary(), &["operator", "--no-such-flag"]);
    assert_eq!(code, 2);
    let line = one_line_error(&err);
    assert!(
        line.contains("--no-such-flag") && line.contains("phylax operator --help"),
        "{line}"
    );

    let (code, _, err) = run(&binary(), &["operator", "--lease-duration", "soon"]);
    assert_eq!(code, 2);
    assert!(one_line_error(&err).contains("invalid duration"), "{err}");
}

/// `phylax-<role>` behaves as `phylax <role>`; any other name is plain `phylax`.
#[test]
fn dispatch_by_executable_name() {
    let dir = tempfile::tempdir().unwrap();
    let link = |name: &str| -> PathBuf {
        let p = dir.path().join(name);
        std::os::unix::fs::symlink(binary(), &p).unwrap();
        p
    };
    let (code, out, _) = run(&link("phylax-operator"), &["--help"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("--leader-elect") && out.contains("Usage: phylax operator"),
        "{out}"
    );

    let (code, out, _) = run(&link("phylax-kms-plugin"), &["--help"]);
    assert_eq!(code, 0);
    assert!(out.contains("Usage: phylax kms-plugin"), "{out}");

    let (code, out, _) = run(&link("phylax-something"), &["version"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("phylax "), "{out}");
}

fn repo_file(rel: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `deploy/` holds the rendered output so users can apply it without the binary; it must match.
#[test]
fn deploy_folder_matches_what_the_binary_prints() {
    for (args, file) in [
        (&["manifests"][..], "deploy/phylax.yaml"),
        (&["crd"][..], "deploy/crds.yaml"),
    ] {
        let (code, out, err) = run(&binary(), args);
        assert_eq!(code, 0, "{err}");
        assert!(
            out == repo_file(file),
            "{file} is out of date: regenerate it with `cargo run -q -- {} > {file}`",
            args.join(" ")
        );
    }
}

#[test]
fn manifests_take_namespace_and_image() {
    let (code, out, _) = run(
        &binary(),
        &[
            "manifests",
            "--namespace",
            "sec-ops",
            "--image",
            "registry.local/phylax:dev",
        ],
    );
    assert_eq!(code, 0);
    let docs: Vec<serde_json::Value> = out
        .split("\n---\n")
        .skip(1)
        .map(|d| serde_yaml::from_str(d).expect("YAML document"))
        .collect();
    assert!(
        docs.iter()
            .any(|d| d["kind"] == "Namespace" && d["metadata"]["name"] == "sec-ops")
    );
    let images: Vec<&str> = docs
        .iter()
        .filter_map(|d| d["spec"]["template"]["spec"]["containers"][0]["image"].as_str())
        .collect();
    assert_eq!(images, ["registry.local/phylax:dev"; 3]);

    // A one-role image for one role; the others keep --image.
    let (code, out, err) = run(
        &binary(),
        &[
            "manifests",
            "--image",
            "reg/phylax:1",
            "--webhook-image",
            "reg/phylax-webhook:1",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let webhook = out
        .split("\n---\n")
        .map(|d| serde_yaml::from_str::<serde_json::Value>(d).unwrap_or_default())
        .find(|d| d["kind"] == "Deployment" && d["metadata"]["name"] == "phylax-webhook")
        .expect("the webhook Deployment");
    assert_eq!(
        webhook["spec"]["template"]["spec"]["containers"][0]["image"],
        "reg/phylax-webhook:1"
    );
    assert_eq!(out.matches("image: reg/phylax:1").count(), 2, "{out}");

    let (code, _, err) = run(&binary(), &["manifests", "--namespace", "Not_Valid"]);
    assert_eq!(code, 2);
    assert!(
        one_line_error(&err).contains("not a valid namespace name"),
        "{err}"
    );
}

#[test]
fn unreadable_kubeconfig_is_a_clear_error() {
    let (code, _, err) = run(
        &binary(),
        &[
            "operator",
            "--admin-addr=127.0.0.1:0",
            "--kubeconfig=/nonexistent/kc",
        ],
    );
    assert_eq!(code, 1);
    let line = one_line_error(&err);
    assert!(
        line.contains("cannot read kubeconfig /nonexistent/kc") && line.contains("--kubeconfig"),
        "{line}"
    );

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("kc");
    std::fs::write(&bad, "clusters: [unclosed\n").unwrap();
    let (code, _, err) = run(
        &binary(),
        &[
            "operator",
            "--admin-addr=127.0.0.1:0",
            &format!("--kubeconfig={}", bad.display()),
        ],
    );
    assert_eq!(code, 1);
    assert!(one_line_error(&err).contains("cannot read kubeconfig"), "{err}");
}

#[test]
fn unreachable_api_server_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let kc = dir.path().join("kc");
    let closed = support::free_port();
    std::fs::write(
        &kc,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: {{server: 'https://127.0.0.1:{closed}', insecure-skip-tls-verify: true}}\n\
             contexts:\n- name: c\n  context: {{cluster: c, user: u}}\ncurrent-context: c\nusers:\n- name: u\n  user: {{token: abc}}\n"
        ),
    )
    .unwrap();
    let (code, _, err) = run(
        &binary(),
        &[
            "operator",
            "--admin-addr=127.0.0.1:0",
            &format!("--kubeconfig={}", kc.display()),
            "--api-timeout=1s",
        ],
    );
    assert_eq!(code, 1);
    let line = one_line_error(&err);
    assert!(
        line.contains(&format!("127.0.0.1:{closed}")) && line.contains("API server"),
        "{line}"
    );
}

#[test]
fn admin_port_in_use_is_a_clear_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let (code, _, err) = run(&binary(), &["webhook", &format!("--admin-addr={addr}")]);
    assert_eq!(code, 1);
    let line = one_line_error(&err);
    assert!(
        line.contains(&addr.to_string()) && line.contains("--admin-addr"),
        "{line}"
    );
}

#[test]
fn invalid_log_filter_is_a_clear_error() {
    let out = std::process::Command::new(binary())
        .args(["tokenizer", "--admin-addr=127.0.0.1:0"])
        .env("RUST_LOG", "phylax=loud")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(one_line_error(&err).contains("RUST_LOG"), "{err}");
}

/// A role without its function yet still runs the shared runtime honestly: JSON logs that say so,
/// ready, metrics, and a clean exit on SIGTERM. (The kms-plugin and webhook have their functions
/// now; tests/kms and tests/webhook cover their runtime behaviour.)
#[tokio::test]
async fn runtime_serves_admin_endpoints_and_stops_on_sigterm() {
    // The tokenizer is the one role that has only the shared runtime so far.
    for role in ["tokenizer"] {
        let mut p = Phylax::start(role, &[], None);
        p.wait_ready(Duration::from_secs(20)).await;
        assert_eq!(p.admin_get("/livez").await, Some((200, "ok\n".into())));
        let (status, metrics) = p.admin_get("/metrics").await.unwrap();
        assert_eq!(status, 200);
        assert!(metrics.contains(&format!("role=\"{role}\"")), "{metrics}");
        assert!(
            metrics.contains("\nprocess_resident_memory_bytes ") && !metrics.contains("phylax_process_"),
            "{metrics}"
        );
        assert!(p.has_log("serves only its admin endpoints"), "{:?}", p.logs());
        assert!(
            p.json_logs().iter().all(|l| l["level"].is_string()),
            "every line is a JSON log record"
        );

        p.signal(libc::SIGTERM);
        let status = p.wait_exit(Duration::from_secs(10)).await;
        assert!(status.success(), "{role}: {status}");
        assert!(p.has_log("stopped"), "{:?}", p.logs());
    }
}

#[tokio::test]
async fn text_logs_for_people() {
    let mut p = Phylax::start("tokenizer", &["--log-format=text"], None);
    p.wait_ready(Duration::from_secs(20)).await;
    p.signal(libc::SIGINT);
    assert!(p.wait_exit(Duration::from_secs(10)).await.success());
    let logs = p.logs();
    assert!(
        logs.iter().any(|l| l.contains("INFO") && l.contains("starting")),
        "{logs:?}"
    );
    assert!(p.json_logs().is_empty(), "{logs:?}");
}

/// `verify-certificate` exits 0 on an intact chain and 1 naming each problem otherwise, offline.
#[test]
fn verify_certificate_checks_a_chain_offline() {
    use phylax::ephemeral::certificates::{
        ChainHead, Facts, Method, PublicKeys, Resource, SigningKey, issue,
    };
    let key = SigningKey::generate().unwrap();
    let mut head = ChainHead::genesis();
    let certs: Vec<_> = (0..4)
        .map(|i| {
            let facts = Facts {
                certificate_id: format!("dc-{i}"),
                resource: Resource {
                    type_: "kubernetes.secret".into(),
                    id: format!("shop/s{i}"),
                    classification: "TRANSIENT".into(),
                    metadata: Default::default(),
                },
                method: Method::Delete,
                destroyed_at: "2026-11-29T10:00:00Z".into(),
                verified_by: "test".into(),
                created_at: "2026-11-29T09:00:00Z".into(),
                created_by: "test".into(),
                access_count: None,
            };
            issue(facts, &mut head, &key).unwrap()
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys.json");
    let config_map = serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap",
        "data": PublicKeys::from_signing(&[&key]).to_map()});
    std::fs::write(&keys, config_map.to_string()).unwrap();
    let write = |name: &str, certs: &[phylax::ephemeral::certificates::Certificate]| {
        let path = dir.path().join(name);
        let items: Vec<_> = certs
            .iter()
            .map(|c| serde_json::json!({"kind": "DestructionCertificate", "certificate": c}))
            .collect();
        std::fs::write(
            &path,
            serde_json::json!({"kind": "List", "items": items}).to_string(),
        )
        .unwrap();
        path
    };
    let verify = |path: &Path| {
        run(
            &binary(),
            &[
                "verify-certificate",
                "--chain",
                "--keys",
                keys.to_str().unwrap(),
                path.to_str().unwrap(),
            ],
        )
    };

    let (code, out, err) = verify(&write("good.json", &certs));
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("4 certificate(s) verified") && out.contains("0 to 3"),
        "{out}"
    );

    let mut gap = certs.clone();
    gap.remove(1);
    let (code, _, err) = verify(&write("gap.json", &gap));
    assert_eq!(code, 1);
    assert!(err.contains("certificates 1..1 are missing"), "{err}");

    let mut altered = certs.clone();
    altered[3].destruction.timestamp = "2027-01-01T00:00:00Z".into();
    let (code, _, err) = verify(&write("altered.json", &altered));
    assert_eq!(code, 1);
    assert!(
        err.contains("dc-3") && err.contains("altered after signing"),
        "{err}"
    );

    let other = SigningKey::generate().unwrap();
    std::fs::write(
        &keys,
        serde_json::json!({"data": PublicKeys::from_signing(&[&other]).to_map()}).to_string(),
    )
    .unwrap();
    let (code, _, err) = verify(&write("good2.json", &certs));
    assert_eq!(code, 1);
    assert!(err.contains("not among the public keys"), "{err}");
}

/// The flags `--help` lists on its option lines (`  -n, --namespace <NS>`), long and short.
fn help_flags(help: &str) -> Vec<String> {
    let mut flags = Vec::new();
    for line in help.lines() {
        let line = line.trim_start();
        if !line.starts_with('-') {
            continue;
        }
        for word in line
            .split([' ', ',', '=', '[', '<'])
            .take_while(|w| w.is_empty() || w.starts_with('-'))
        {
            if word.starts_with('-')
                && word != "-h"
                && word != "--help"
                && word != "-V"
                && word != "--version"
            {
                flags.push(word.to_owned());
            }
        }
    }
    flags
}

/// Whether `text` names `flag` as a whole word: `--webhook-cert` is not named by
/// `--webhook-cert-validity`.
fn names_flag(text: &str, flag: &str) -> bool {
    text.match_indices(flag).any(|(at, _)| {
        let before = text[..at].chars().next_back();
        let after = text[at + flag.len()..].chars().next();
        !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '-')
            && !after.is_some_and(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    })
}

/// Every flag a command prints in its `--help` is documented in the README: a flag added without
/// a word for users fails here.
#[test]
fn the_readme_documents_every_flag_of_every_command() {
    let readme = repo_file("README.md");
    let (code, out, _) = run(&binary(), &["--help"]);
    assert_eq!(code, 0);
    let commands: Vec<String> = out
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        // A wrapped description continues on a line indented further.
        .filter(|l| !l.starts_with("   "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .map(str::to_owned)
        .collect();
    for expected in COMMANDS {
        assert!(
            commands.iter().any(|c| c == expected),
            "{expected} not in {commands:?}"
        );
    }
    let mut missing = Vec::new();
    let mut checked = 0;
    for command in &commands {
        let (code, help, err) = run(&binary(), &[command, "--help"]);
        assert_eq!(code, 0, "{command} --help: {err}");
        for flag in help_flags(&help) {
            checked += 1;
            if !names_flag(&readme, &flag) {
                missing.push(format!("phylax {command} {flag}"));
            }
        }
    }
    assert!(
        checked > 60,
        "only {checked} flags found: is the help format parsed?"
    );
    assert!(missing.is_empty(), "README.md does not mention: {missing:#?}");
}

#[test]
fn help_flags_are_read_from_option_lines_only() {
    let help = "Options:\n  -n, --namespace <NS>\n          Namespace (see --image)\n      --image <REF>\n  -h, --help\n";
    assert_eq!(help_flags(help), ["-n", "--namespace", "--image"]);
    assert!(names_flag(
        "use `--webhook-cert-validity`",
        "--webhook-cert-validity"
    ));
    assert!(!names_flag("use `--webhook-cert-validity`", "--webhook-cert"));
    assert!(names_flag("phylax manifests [-n NS]", "-n"));
    assert!(!names_flag("--namespace", "-n"));
}

/// The repository stands alone: its documents link only to files inside it.
#[test]
fn the_documents_link_only_to_files_in_the_repository() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for doc in ["README.md", "SECURITY.md", "docs/architecture.md"] {
        let text = repo_file(doc);
        assert!(!text.contains("../shared"), "{doc} points outside the repository");
        let dir = root.join(doc).parent().unwrap().to_owned();
        for (at, _) in text.match_indices("](") {
            let target = text[at + 2..].split(')').next().unwrap_or_default();
            let target = target.split('#').next().unwrap_or_default();
            if target.is_empty() || target.contains("://") {
                continue;
            }
            let path = dir.join(target);
            assert!(
                path.exists(),
                "{doc} links to {target}, which is not in the repository"
            );
            let inside = path
                .canonicalize()
                .unwrap()
                .starts_with(root.canonicalize().unwrap());
            assert!(inside, "{doc} links to {target}, outside the repository");
        }
    }
}
