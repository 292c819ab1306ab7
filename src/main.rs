//! `jac-orc`: parse the command line, run one command, print the error chain once.

use std::process::ExitCode;

use clap::Parser;
use jac_splice_orc::cli::{Cli, Command};
use jac_splice_orc::commands;

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(&cli.log).unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    // JAC_ORC_WORKER_THREADS sizes the runtime (default: one per core).
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if let Some(n) =
        std::env::var("JAC_ORC_WORKER_THREADS").ok().and_then(|v| v.parse::<usize>().ok()).filter(|n| *n > 0)
    {
        builder.worker_threads(n);
    }
    let runtime = match builder.build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve(a) => commands::serve(a.into_config()).await,
            Command::DryRun(a) => commands::dry_run(a).await,
            Command::Deploy(a) => commands::deploy(a).await,
            Command::Undeploy(a) => commands::undeploy(a).await,
            Command::Get(a) => commands::get(a).await,
            Command::List(a) => commands::list(a).await,
            Command::Templates(a) => commands::templates(a).await,
            Command::Probe(a) => jac_splice_orc::probe::run(&a).await.map_err(Into::into),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
