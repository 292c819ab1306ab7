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
mod logs;
mod on_demand;
mod output;
pub mod probe;
mod revisions;
mod security;
mod serve;
mod template;
pub mod values;

use std::io::ErrorKind;

use anyhow::{Context, Result};

pub use args::{Cli, Command};

/// Runs one command to its end.
pub fn run(cli: Cli) -> Result<()> {
    let legacy = std::env::var("LOGGER_LEVEL").ok().filter(|v| !v.trim().is_empty());
    let (filter, deprecated) = log_filter(cli.log.as_deref(), legacy.as_deref());
    init_tracing(&filter, cli.log_format);
    if let Some(line) = deprecated {
        tracing::warn!("{line}");
    }
    runtime()?.block_on(async move {
        match cli.command {
            Command::Serve(a) => serve::serve((*a).into_config()?).await,
            Command::DryRun(a) => client::dry_run(a).await,
            Command::Template(a) => template::run(a),
            Command::Deploy(a) => client::deploy(a).await,
            Command::Undeploy(a) => client::undeploy(a).await,
            Command::UndeployOnDemand(a) => on_demand::undeploy_on_demand(a).await,
            Command::Get(a) => client::get(a).await,
            Command::Status(a) => client::status(a).await,
            Command::List(a) => client::list(a).await,
            Command::Templates(a) => client::templates(a).await,
            Command::Completion(a) => completion::run(&a),
            Command::Probe(a) => Ok(probe::run(&a).await?),
            Command::History(a) => revisions::history(a).await,
            Command::Rollback(a) => revisions::rollback(a).await,
            Command::Diff(a) => revisions::diff(a).await,
            Command::Logs(a) => logs::logs(a).await,
        }
    })
}

/// Whether an error is a closed standard output (`jac-orc list | head`): a quiet exit.
pub fn is_broken_pipe(e: &anyhow::Error) -> bool {
    // Only a failed write to stdout: `jac-orc probe` against a TLS port once exited 0 because
    // the server's hang-up surfaced as a BrokenPipe inside the connection error.
    e.chain().any(|c| c.downcast_ref::<output::StdoutError>().is_some_and(|s| s.0.kind() == ErrorKind::BrokenPipe))
}

/// The exit status of a failed command (1 unless it says otherwise, as `diff` does) and
/// whether its error is quiet (what it had to say is printed already).
pub fn exit_status(e: &anyhow::Error) -> (u8, bool) {
    revisions::exit_code(e).unwrap_or((1, false))
}

/// The log filter: `--log` / `JAC_ORC_LOG`, else the original's `LOGGER_LEVEL` (a Python
/// logging level name, with the deprecation line to log), else `info`.
fn log_filter(flag: Option<&str>, legacy: Option<&str>) -> (String, Option<String>) {
    match (flag, legacy) {
        (Some(f), Some(_)) => (f.to_string(), Some("LOGGER_LEVEL is ignored: --log (JAC_ORC_LOG) is set".into())),
        (Some(f), None) => (f.to_string(), None),
        (None, Some(level)) => {
            let filter = match level.trim().to_ascii_lowercase().as_str() {
                "warning" => "warn".to_string(),
                "critical" | "fatal" => "error".to_string(),
                "notset" => "trace".to_string(),
                other => other.to_string(),
            };
            let line =
                format!("LOGGER_LEVEL is deprecated (the original's name): use --log {filter} or JAC_ORC_LOG={filter}");
            (filter, Some(line))
        }
        (None, None) => ("info".into(), None),
    }
}

/// Logs go to stderr, filtered by [`log_filter`]: text (colored on a terminal) or one JSON
/// object per line, the event's fields beside `message`.
fn init_tracing(filter: &str, format: args::LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter).unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        args::LogFormat::Text => builder.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())).init(),
        args::LogFormat::Json => {
            builder.json().flatten_event(true).with_current_span(true).with_span_list(false).init()
        }
    }
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

#[cfg(test)]
mod tests {
    use super::log_filter;

    #[test]
    fn only_a_closed_stdout_is_a_quiet_broken_pipe() {
        use std::io::{Error, ErrorKind};
        let closed = anyhow::Error::from(super::output::StdoutError(Error::from(ErrorKind::BrokenPipe)));
        assert!(super::is_broken_pipe(&closed.context("listing")));
        // A peer that hung up: a failure, whatever the kind of the io::Error inside.
        let hung_up = anyhow::Error::from(Error::from(ErrorKind::BrokenPipe)).context("health check failed");
        assert!(!super::is_broken_pipe(&hung_up));
        let other = anyhow::Error::from(super::output::StdoutError(Error::from(ErrorKind::Other)));
        assert!(!super::is_broken_pipe(&other));
    }

    #[test]
    fn logger_level_is_the_filter_when_no_log_flag_is_given() {
        assert_eq!(log_filter(None, None), ("info".into(), None));
        assert_eq!(log_filter(Some("debug"), None), ("debug".into(), None));
        let (filter, line) = log_filter(None, Some("WARNING"));
        assert_eq!(filter, "warn");
        assert!(line.unwrap().contains("LOGGER_LEVEL is deprecated"));
        assert_eq!(log_filter(None, Some("DEBUG")).0, "debug");
        let (filter, line) = log_filter(Some("error"), Some("DEBUG"));
        assert_eq!(filter, "error");
        assert!(line.unwrap().contains("ignored"));
    }
}
