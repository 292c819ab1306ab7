//! The `jac-orc` command line. [`args`] holds the clap types; [`run`] starts the runtime and
//! runs one command: `serve` (the server's wiring, in `serve`), a client command (in `client`),
//! which talks to a running orchestrator over gRPC and prints the service's views through
//! `output`, or [`probe`], the exec form of the orchestrator's readiness probe.

pub mod args;
mod client;
mod output;
pub mod probe;
mod serve;

use std::io::ErrorKind;

use anyhow::{Context, Result};

pub use args::{Cli, Command};

/// Runs one command to its end.
pub fn run(cli: Cli) -> Result<()> {
    init_tracing(&cli.log);
    runtime()?.block_on(async move {
        match cli.command {
            Command::Serve(a) => serve::serve(a.into_config()).await,
            Command::DryRun(a) => client::dry_run(a).await,
            Command::Deploy(a) => client::deploy(a).await,
            Command::Undeploy(a) => client::undeploy(a).await,
            Command::Get(a) => client::get(a).await,
            Command::List(a) => client::list(a).await,
            Command::Templates(a) => client::templates(a).await,
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
