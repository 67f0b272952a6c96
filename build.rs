//! Records the git commit for `phylax version`. Nix and other builds without a `.git` directory pass
//! it in `PHYLAX_GIT_COMMIT`.
use std::path::Path;
use std::process::Command;

fn main() {
    git_commit();
    if std::env::var_os("CARGO_FEATURE_KMS_PLUGIN").is_some() {
        kms_protos();
    }
}

/// The KMS v2 and v1beta1 gRPC services (server side, plus a client for tests and tools).
#[cfg(feature = "kms-plugin")]
fn kms_protos() {
    println!("cargo:rerun-if-changed=proto/kms");
    let fds = match protox::compile(["v2/api.proto", "v1beta1/service.proto"], ["proto/kms"]) {
        Ok(fds) => fds,
        Err(e) => panic!("proto/kms does not compile: {e}"),
    };
    if let Err(e) = tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .build_transport(false)
        .compile_fds(fds)
    {
        panic!("cannot generate the KMS gRPC code: {e}");
    }
}

#[cfg(not(feature = "kms-plugin"))]
fn kms_protos() {}

fn git_commit() {
    println!("cargo:rerun-if-env-changed=PHYLAX_GIT_COMMIT");
    // Re-run when HEAD moves; only name paths that exist, or cargo would re-run on every build.
    for p in [".git/HEAD", ".git/refs/heads", ".git/packed-refs"] {
        if Path::new(p).exists() {
            println!("cargo:rerun-if-changed={p}");
        }
    }
    let commit = std::env::var("PHYLAX_GIT_COMMIT")
        .ok()
        .filter(|c| !c.is_empty())
        .or_else(|| {
            let out = Command::new("git")
                .args(["rev-parse", "--short=12", "HEAD"])
                .output()
                .ok()?;
            out.status
                .success()
                .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=PHYLAX_GIT_COMMIT={commit}");
}
