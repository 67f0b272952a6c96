//! phylax: one static binary, several roles (`phylax <role>` or `phylax-<role>`).

use std::io::Write;
use std::process::ExitCode;

use phylax::cli::{self, Command, Parsed};
use phylax::{api, deploy, version};

fn main() -> ExitCode {
    // One TLS provider for every rustls user in the process (kube client, webhook server, gRPC).
    // It can only fail if another provider was installed first, which nothing here does.
    let _ = rustls::crypto::ring::default_provider().install_default();

    let cli = match cli::parse(std::env::args_os()) {
        Parsed::Run(cli) => cli,
        Parsed::Info(text) => return print(&text),
        Parsed::Usage(text) => {
            eprint!("{text}");
            return ExitCode::from(2);
        }
        Parsed::Error(msg) => {
            eprintln!("error: {msg}");
            return ExitCode::from(2);
        }
    };
    let result = match cli.command {
        Command::Version(args) => return print(&version::render(args.output)),
        Command::Crd => api::to_yaml_stream("Phylax CustomResourceDefinitions", &api::crds()),
        Command::Manifests(args) => deploy::render(&args),
        #[cfg(feature = "certificates")]
        Command::VerifyCertificate(args) => {
            return match phylax::ephemeral::verify_command::run(&args) {
                Ok(summary) => print(&summary),
                // Every problem, one per line: the exit status says it failed.
                Err(problems) => {
                    eprint!(
                        "{}",
                        if problems.ends_with('\n') {
                            problems
                        } else {
                            format!("error: {problems}\n")
                        }
                    );
                    ExitCode::FAILURE
                }
            };
        }
        role => run_role(role).map(|()| String::new()),
    };
    match result {
        Ok(text) => print(&text),
        Err(e) => {
            // One line, the whole cause chain: what failed and what to do about it.
            eprintln!("error: {}", one_line(&format!("{e:#}")));
            ExitCode::FAILURE
        }
    }
}

/// Some causes (YAML parse errors) span several lines with a caret diagram; a crash-looping pod's
/// last log line should hold the whole message.
fn one_line(msg: &str) -> String {
    msg.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.chars().all(|c| c == '^' || c == '|'))
        .collect::<Vec<_>>()
        .join(" ")
}

fn print(text: &str) -> ExitCode {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        // A closed pipe (`phylax crd | head`) is not worth a panic.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: cannot write to stdout: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run_role(command: Command) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("phylax-worker")
        .build()
        .map_err(|e| anyhow::anyhow!("cannot start the async runtime: {e}"))?;
    runtime.block_on(async move {
        match command {
            #[cfg(feature = "operator")]
            Command::Operator(args) => phylax::operator::run(args).await,
            #[cfg(feature = "webhook")]
            Command::Webhook(args) => phylax::webhook::run(args).await,
            #[cfg(feature = "kms-plugin")]
            Command::KmsPlugin(args) => phylax::kms::run(*args).await,
            #[cfg(feature = "node-agent")]
            Command::NodeAgent(args) => phylax::node_agent::run(args).await,
            #[cfg(feature = "tokenizer")]
            Command::Tokenizer(args) => phylax::tokenizer::run(args).await,
            Command::Version(_) | Command::Crd | Command::Manifests(_) => Ok(()),
            #[cfg(feature = "certificates")]
            Command::VerifyCertificate(_) => Ok(()),
        }
    })
}
