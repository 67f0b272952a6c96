//! Command line: one subcommand per role compiled into this build, plus the tool subcommands.
//!
//! The binary is also dispatched by the name it was started under (`phylax-operator` behaves as
//! `phylax operator`), busybox style, so one image can carry every role behind symlinks.

use std::ffi::OsString;
use std::path::Path;

use clap::{Parser, Subcommand};

use crate::deploy::ManifestArgs;
use crate::role::Role;

#[derive(Debug, Parser)]
#[command(
    name = "phylax",
    version = crate::version::VERSION,
    about = "Kubernetes data protection: KMS plugin, secret sync, security profiles",
    after_help = roles_help(),
    subcommand_required = true,
    arg_required_else_help = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

fn roles_help() -> String {
    format!(
        "Roles in this build: {}.\nEach role can also be started as phylax-<role> (a symlink or copy of this binary).",
        Role::compiled_names().join(", ")
    )
}

#[derive(Debug, Subcommand)]
// Parsed once at start-up and consumed: the size of the operator's arguments does not matter.
#[allow(clippy::large_enum_variant)]
pub enum Command {
    /// Run the controllers (secret sync, profile status, webhook certificates)
    #[cfg(feature = "operator")]
    Operator(crate::operator::Args),
    /// Run the admission webhook server
    #[cfg(feature = "webhook")]
    Webhook(crate::webhook::Args),
    /// Run the KMS v2/v1 plugin for the API server's encryption at rest
    #[cfg(feature = "kms-plugin")]
    KmsPlugin(Box<crate::kms::Args>),
    /// Run the per-node agent (security profiles on this node)
    #[cfg(feature = "node-agent")]
    NodeAgent(crate::node_agent::Args),
    /// Run the tokenization role (admin endpoints only in this version)
    #[cfg(feature = "tokenizer")]
    Tokenizer(crate::tokenizer::Args),
    /// Print version, git commit and the features compiled in
    Version(crate::version::VersionArgs),
    /// Print every CustomResourceDefinition as YAML
    Crd,
    /// Print everything `kubectl apply -f -` needs to install Phylax
    Manifests(ManifestArgs),
    /// Verify destruction certificates offline against the published keys
    #[cfg(feature = "certificates")]
    VerifyCertificate(crate::ephemeral::verify_command::VerifyArgs),
}

/// What the command line asked for, or why it cannot be run.
pub enum Parsed {
    Run(Box<Cli>),
    /// Help or version text, printed to stdout, success.
    Info(String),
    /// Nothing to run was given: usage on stderr, failure.
    Usage(String),
    /// A one-line error for stderr.
    Error(String),
}

/// Control characters from the command line (a newline in an argument) shown escaped, so the
/// error stays one line.
fn one_line(msg: String) -> String {
    if !msg.chars().any(char::is_control) {
        return msg;
    }
    msg.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_debug().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// Parses the process arguments, applying busybox-style dispatch on the executable's name.
pub fn parse(args: impl IntoIterator<Item = OsString>) -> Parsed {
    let mut args: Vec<OsString> = args.into_iter().collect();
    let argv0 = args.first().cloned().unwrap_or_else(|| "phylax".into());
    if let Some(role) = role_from_exe_name(&argv0) {
        if !role.compiled() {
            return Parsed::Error(not_compiled(role.name()));
        }
        args.insert(1, role.name().into());
    }
    // Make clap's messages say `phylax`, whatever the executable is called.
    if let Some(first) = args.first_mut() {
        *first = "phylax".into();
    }

    // A known role that this build left out deserves a better answer than "unrecognized subcommand".
    if let Some(sub) = first_positional(&args)
        && let Some(role) = Role::from_name(sub)
        && !role.compiled()
    {
        return Parsed::Error(not_compiled(role.name()));
    }

    match Cli::try_parse_from(&args) {
        Ok(cli) => Parsed::Run(Box::new(cli)),
        Err(e) => match e.kind() {
            clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => {
                Parsed::Info(e.render().to_string())
            }
            clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
                Parsed::Usage(e.render().to_string())
            }
            clap::error::ErrorKind::InvalidSubcommand => Parsed::Error(one_line(format!(
                "unknown command '{}'; roles in this build: {}; other commands: version, crd, manifests, verify-certificate (see 'phylax --help')",
                first_positional(&args).unwrap_or_default(),
                Role::compiled_names().join(", ")
            ))),
            _ => Parsed::Error(one_line(one_line_clap_error(&e, first_positional(&args)))),
        },
    }
}

fn not_compiled(role: &str) -> String {
    format!(
        "this phylax build does not contain the '{role}' role (built without the '{role}' cargo feature); \
         roles in this build: {}",
        display_list(&Role::compiled_names())
    )
}

fn display_list(names: &[&str]) -> String {
    if names.is_empty() {
        "none".to_owned()
    } else {
        names.join(", ")
    }
}

/// `phylax-kms-plugin` → KmsPlugin. Any other name (`phylax`, `a.out`) → None.
fn role_from_exe_name(argv0: &OsString) -> Option<Role> {
    let name = Path::new(argv0).file_name()?.to_str()?;
    Role::from_name(name.strip_prefix("phylax-")?)
}

fn first_positional(args: &[OsString]) -> Option<&str> {
    args.iter()
        .skip(1)
        .filter_map(|a| a.to_str())
        .find(|a| !a.starts_with('-'))
}

/// clap explains errors over several lines (usage, tips); operators reading a crash-looping pod's
/// log want one line that says what is wrong and where to look.
fn one_line_clap_error(e: &clap::Error, subcommand: Option<&str>) -> String {
    let rendered = e.render().to_string();
    let first = rendered
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("invalid arguments");
    let first = first.trim().trim_start_matches("error:").trim();
    // "the following required arguments were not provided:" lists them on the next lines.
    let listed: Vec<&str> = if first.ends_with(':') {
        rendered
            .lines()
            .skip_while(|l| !l.contains(first))
            .skip(1)
            .take_while(|l| l.starts_with(' ') && !l.trim().is_empty())
            .map(str::trim)
            .collect()
    } else {
        Vec::new()
    };
    let first = if listed.is_empty() {
        first.to_owned()
    } else {
        format!("{first} {}", listed.join(", "))
    };
    let tip = rendered
        .lines()
        .map(str::trim)
        .find_map(|l| l.strip_prefix("tip:"))
        .map(|t| format!(" ({})", t.trim()))
        .unwrap_or_default();
    let help = match subcommand {
        Some(sub) if Role::from_name(sub).is_some() || ["version", "crd", "manifests"].contains(&sub) => {
            format!("phylax {sub} --help")
        }
        _ => "phylax --help".to_owned(),
    };
    format!("{first}{tip}; see '{help}'")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_strs(args: &[&str]) -> Parsed {
        parse(args.iter().map(OsString::from))
    }

    #[test]
    fn exe_name_selects_role() {
        assert_eq!(
            role_from_exe_name(&"/usr/bin/phylax-kms-plugin".into()),
            Some(Role::KmsPlugin)
        );
        assert_eq!(
            role_from_exe_name(&"phylax-operator".into()),
            Some(Role::Operator)
        );
        assert_eq!(role_from_exe_name(&"phylax".into()), None);
        assert_eq!(role_from_exe_name(&"phylax-unknown".into()), None);
        assert_eq!(role_from_exe_name(&"kms-plugin".into()), None);
    }

    #[test]
    fn unknown_command_is_one_line_and_names_the_roles() {
        let Parsed::Error(msg) = parse_strs(&["phylax", "frobnicate"]) else {
            panic!("expected an error")
        };
        assert!(!msg.contains('\n'), "{msg}");
        assert!(msg.contains("unknown command 'frobnicate'"), "{msg}");
        for role in Role::compiled_names() {
            assert!(msg.contains(role), "{msg}");
        }
    }

    #[test]
    fn arguments_with_newlines_still_give_one_line() {
        for args in [
            &["\u{7}", "\n"][..],
            &["phylax", "version", "--x\ny"],
            &["phylax", "a\rb"],
        ] {
            let Parsed::Error(msg) = parse_strs(args) else {
                panic!("expected an error for {args:?}")
            };
            assert!(!msg.contains('\n') && !msg.contains('\r'), "{msg:?}");
        }
    }

    #[test]
    fn a_missing_required_flag_is_named() {
        match parse_strs(&["phylax", "node-agent"]) {
            Parsed::Error(msg) => {
                assert!(msg.contains("--node-name"), "{msg}");
                assert!(!msg.contains('\n'), "{msg}");
            }
            _ => panic!("a node agent without --node-name was accepted"),
        }
    }

    #[test]
    fn unknown_flag_is_one_line_and_points_at_help() {
        let Parsed::Error(msg) = parse_strs(&["phylax", "version", "--frobnicate"]) else {
            panic!("expected an error")
        };
        assert!(!msg.contains('\n'), "{msg}");
        assert!(msg.contains("--frobnicate"), "{msg}");
        assert!(msg.ends_with("see 'phylax version --help'"), "{msg}");
    }

    #[test]
    fn help_is_info_not_error() {
        assert!(matches!(parse_strs(&["phylax", "--help"]), Parsed::Info(_)));
        assert!(matches!(parse_strs(&["phylax"]), Parsed::Usage(_)));
    }

    #[test]
    fn tool_subcommands_parse() {
        assert!(matches!(parse_strs(&["phylax", "crd"]), Parsed::Run(_)));
        assert!(matches!(
            parse_strs(&["phylax", "manifests", "--namespace", "sec", "--image", "r/p:1"]),
            Parsed::Run(_)
        ));
        assert!(matches!(
            parse_strs(&["phylax-version-not-a-role", "version"]),
            Parsed::Run(_)
        ));
    }

    #[test]
    fn roles_left_out_of_the_build_are_named() {
        for role in Role::ALL.into_iter().filter(|r| !r.compiled()) {
            let Parsed::Error(msg) = parse_strs(&["phylax", role.name()]) else {
                panic!("expected an error")
            };
            assert!(msg.contains("does not contain"), "{msg}");
            let exe = format!("phylax-{}", role.name());
            let Parsed::Error(msg) = parse_strs(&[&exe]) else {
                panic!("expected an error")
            };
            assert!(msg.contains(role.name()), "{msg}");
        }
    }
}
