//! The `jac-orc` command line. [`args`] holds the clap types; [`values`] turns `-f`, `--set`,
//! NAME and `-n` into placeholder values; [`run`] starts the runtime and runs one command:
//! `serve` (the server's wiring, in `serve`), a client command (in `client`), which talks to a
//! running orchestrator over gRPC and prints the service's views through `output`, `template`
//! (offline rendering, no server), `completion`, or [`probe`], the exec form of the
//! orchestrator's readiness probe.
//!
//! Everything is printed through `output`'s checked writes, so a closed pipe
//! (`jac-orc list | head -1`) ends the command with an error [`is_broken_pipe`] recognises and
//! `main` exits 0 quietly.

pub mod args;
mod client;
mod completion;
mod output;
pub mod probe;
mod security;
mod serve;
mod template;
pub mod values;

use std::io::ErrorKind;

use anyhow::{Context, Result};

pub use args::{Cli, Command};

/// Runs one command to its end.
pub fn run(cli: Cli) -> Result<()> {
    init_tracing(&cli.log);
    runtime()?.block_on(async move {
        match cli.command {
            Command::Serve(a) => serve::serve((*a).into_config()).await,
            Command::DryRun(a) => client::dry_run(a).await,
            Command::Template(a) => template::run(a),
            Command::Deploy(a) => client::deploy(a).await,
            Command::Undeploy(a) => client::undeploy(a).await,
            Command::Get(a) => client::get(a).await,
            Command::Status(a) => client::status(a).await,
            Command::List(a) => client::list(a).await,
            Command::Templates(a) => client::templates(a).await,
            Command::Completion(a) => completion::run(&a),
            Command::Probe(a) => Ok(probe::run(&a).await?),
        }
    })
}

/// Whether an error is a closed standard output (`jac-orc list | head`): a quiet exit.
pub fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == ErrorKind::BrokenPipe))
}

/// Logs go to stderr (colored on a terminal), filtered by `--log` / `JAC_ORC_LOG`.
fn init_tracing(filter: &str) {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(filter).unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// The async runtime; `JAC_ORC_WORKER_THREADS` sizes it (default: one worker per core).
fn runtime() -> Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if let Some(n) =
        std::env::var("JAC_ORC_WORKER_THREADS").ok().and_then(|v| v.parse::<usize>().ok()).filter(|n| *n > 0)
    {
        builder.worker_threads(n);
    }
    builder.build().context("cannot start the async runtime")
}
