//! The `tokenizer` role. Only the shared runtime (admin endpoints, shutdown) exists: the
//! tokenization gateway is not built, and the role says so in its log when it starts.

use crate::role::Role;
use crate::runtime::RuntimeArgs;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    crate::runtime::run_without_function(
        Role::Tokenizer,
        &args.runtime,
        "the tokenizer role has no tokenization service yet; it serves only its admin endpoints",
    )
    .await
}
