//! One thin file per command: turn parsed arguments into one library call.

mod bench;
mod create;
mod delete;
mod events;
mod exec;
mod features;
mod kill;
mod list;
mod pause;
mod ps;
mod run;
mod spec;
mod start;
mod state;
mod update;
mod vm;

use std::process::ExitCode;

use amphi::container::{ContainerError, CreateOptions, Runtime};
use amphi::spec::Isolation;

use crate::cli::{Cli, Command, CreateOpts, GlobalArgs, IsolationArg, LogFormat};

/// Runs the parsed command, prints a failure's error chain once, and maps
/// the outcome to a stable exit code.
pub fn dispatch(cli: Cli) -> ExitCode {
    let global = cli.global;
    let format = match global.log_format {
        LogFormat::Text => amphi::logging::Format::Text,
        LogFormat::Json => amphi::logging::Format::Json,
    };
    if let Err(e) = amphi::logging::init(global.log.as_deref(), format, global.debug) {
        eprintln!(
            "amphi: cannot open the log file {}: {e}",
            global.log.as_deref().unwrap_or_else(|| std::path::Path::new("")).display()
        );
        return ExitCode::from(amphi::exit::GENERAL);
    }
    if global.isolation == Some(IsolationArg::Both) && !matches!(cli.command, Command::Bench(_)) {
        eprintln!("amphi: --isolation both is for `amphi bench` only: give container or vm");
        return ExitCode::from(amphi::exit::USAGE);
    }
    let result = match cli.command {
        Command::Create(a) => create::run(&global, a),
        Command::Start(a) => start::run(&global, a),
        Command::Run(a) => run::run(&global, a),
        Command::State(a) => state::run(&global, a),
        Command::Kill(a) => kill::run(&global, a),
        Command::Exec(a) => exec::run(&global, a),
        Command::Ps(a) => ps::run(&global, a),
        Command::Pause(a) => pause::pause(&global, a),
        Command::Resume(a) => pause::resume(&global, a),
        Command::Update(a) => update::run(&global, a),
        Command::Events(a) => events::run(&global, a),
        Command::Delete(a) => delete::run(&global, a),
        Command::List(a) => list::run(&global, a),
        Command::Features => features::run(),
        Command::Spec(a) => spec::run(a),
        Command::Vm(cmd) => vm::run(&global, cmd),
        Command::Bench(a) => bench::run(&global, a),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            let msg = e.chain().map(|c| c.to_string()).collect::<Vec<_>>().join(": ");
            if amphi::logging::has_file() {
                amphi::logging::error(&msg);
            }
            eprintln!("amphi: {msg}");
            let code = e
                .downcast_ref::<ContainerError>()
                .map(ContainerError::exit_code)
                .or_else(|| e.downcast_ref::<amphi::vm::CheckError>().map(amphi::vm::CheckError::exit_code))
                .or_else(|| e.downcast_ref::<amphi::vm::template::TemplateError>().map(|t| t.exit_code()))
                .or_else(|| e.downcast_ref::<amphi::container::stats::DurationError>().map(|_| amphi::exit::USAGE))
                .or_else(|| e.downcast_ref::<amphi::bench::BenchError>().map(amphi::bench::BenchError::exit_code))
                .unwrap_or(amphi::exit::GENERAL);
            ExitCode::from(code)
        }
    }
}

/// The runtime as the global options describe it.
pub fn runtime(global: &GlobalArgs) -> Runtime {
    // `both` never gets here: dispatch refuses it outside `bench`.
    let isolation = global.isolation.and_then(|i| match i {
        IsolationArg::Container => Some(Isolation::Container),
        IsolationArg::Vm => Some(Isolation::Vm),
        IsolationArg::Both => None,
    });
    Runtime::new(global.root.clone(), isolation, global.systemd_cgroup, amphi::isolation::sandbox_for)
        .with_vm_template(global.vm_template)
}

pub fn create_options(o: CreateOpts) -> CreateOptions {
    CreateOptions {
        bundle: o.bundle,
        console_socket: o.console_socket,
        pid_file: o.pid_file,
        no_pivot: o.no_pivot,
        no_new_keyring: o.no_new_keyring,
        preserve_fds: o.preserve_fds,
    }
}
