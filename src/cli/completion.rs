//! `jac-orc completion SHELL`: a completion script generated from the flag definitions in
//! [`super::args`] (clap_complete), so it cannot drift from the commands.
//!
//! bash: `source <(jac-orc completion bash)`; zsh: `jac-orc completion zsh > "${fpath[1]}/_jac-orc"`;
//! fish: `jac-orc completion fish > ~/.config/fish/completions/jac-orc.fish`.

use anyhow::Result;
use clap::CommandFactory;

use super::args::{Cli, CompletionArgs};
use super::output;

pub(crate) fn run(a: &CompletionArgs) -> Result<()> {
    let mut script = Vec::new();
    clap_complete::generate(a.shell, &mut Cli::command(), "jac-orc", &mut script);
    output::text(&String::from_utf8_lossy(&script))
}
