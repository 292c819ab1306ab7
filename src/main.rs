//! `jac-orc`: parse the command line, run one command, print the error chain once.

use std::process::ExitCode;

use clap::Parser;
use jac_splice_orc::cli::{self, Cli};

fn main() -> ExitCode {
    match cli::run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if cli::is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            let (code, quiet) = cli::exit_status(&e);
            if !quiet {
                eprintln!("error: {e:#}");
            }
            ExitCode::from(code)
        }
    }
}
