//! One thin file per command: turn parsed arguments into one library call.

mod vm;

use std::process::ExitCode;

use crate::cli::{Cli, Command};

/// Runs the parsed command and maps its outcome to an exit code.
pub fn dispatch(cli: Cli) -> ExitCode {
    let global = cli.global;
    match cli.command {
        Command::Vm(cmd) => vm::run(&global, cmd),
        _ => ExitCode::from(amphi::exit::GENERAL),
    }
}

/// Prints an error and its causes once, as `amphi: a: b: c`.
pub(crate) fn print_error(e: &dyn std::error::Error) {
    let mut msg = format!("amphi: {e}");
    let mut src = e.source();
    while let Some(c) = src {
        msg.push_str(&format!(": {c}"));
        src = c.source();
    }
    eprintln!("{msg}");
}
