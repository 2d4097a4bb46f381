//! The `amphi` binary: parse the command line, dispatch to one command,
//! print the error chain once, exit with a stable code.

mod cli;
mod commands;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = match cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // clap prints help/version to stdout (exit 0) and usage errors to
            // stderr (exit 2, amphi::exit::USAGE).
            e.print().ok();
            return ExitCode::from(if e.use_stderr() { amphi::exit::USAGE } else { 0 });
        }
    };
    commands::dispatch(cli)
}
