//! `phylax version`: what this binary is, for bug reports and for checking a deployment.

use clap::{Args, ValueEnum};
use serde::Serialize;

use crate::role::Role;

pub const VERSION: &str = env!("CARGO_PKG_VERSION");
pub const GIT_COMMIT: &str = env!("PHYLAX_GIT_COMMIT");

#[derive(Debug, Args)]
pub struct VersionArgs {
    /// Output format
    #[arg(long, short = 'o', value_enum, default_value_t = VersionFormat::Text)]
    pub output: VersionFormat,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum VersionFormat {
    Text,
    Json,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VersionInfo {
    pub version: &'static str,
    pub git_commit: &'static str,
    pub roles: Vec<&'static str>,
    pub features: Vec<&'static str>,
}

pub fn info() -> VersionInfo {
    let mut features: Vec<&'static str> = Role::compiled_names();
    for (enabled, name) in [
        (cfg!(feature = "tpm"), "tpm"),
        (cfg!(feature = "vault"), "vault"),
        (cfg!(feature = "aws"), "aws"),
    ] {
        if enabled {
            features.push(name);
        }
    }
    VersionInfo {
        version: VERSION,
        git_commit: GIT_COMMIT,
        roles: Role::compiled_names(),
        features,
    }
}

pub fn render(format: VersionFormat) -> String {
    let info = info();
    match format {
        VersionFormat::Text => format!(
            "phylax {} (commit {})\nroles: {}\nfeatures: {}\n",
            info.version,
            info.git_commit,
            info.roles.join(", "),
            info.features.join(", ")
        ),
        // Serialising a struct of strings cannot fail.
        VersionFormat::Json => serde_json::to_string(&info).unwrap_or_default() + "\n",
    }
}
