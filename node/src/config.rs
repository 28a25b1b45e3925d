//! The config file, `kadrtc id` and `kadrtc completions`.

use clap::CommandFactory as _;

use crate::output::Output;
use crate::{Cli, CompletionsArgs, IdArgs};

pub fn run_id(_args: IdArgs, _out: &Output) -> anyhow::Result<()> {
    anyhow::bail!("kadrtc id is not built yet")
}

pub fn run_completions(args: CompletionsArgs) {
    let mut command = Cli::command();
    clap_complete::generate(args.shell, &mut command, "kadrtc", &mut std::io::stdout());
}
