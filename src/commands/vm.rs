//! `amphi vm ...`: arguments -> one library call each.

use std::process::ExitCode;
use std::time::Duration;

use amphi::vm::check::{CheckOptions, ConsoleTarget};
use amphi::vm::process::ChildArgs;

use crate::cli::vm::{CheckArgs, RunVmmArgs, VmCommand};
use crate::cli::GlobalArgs;

pub fn run(_global: &GlobalArgs, cmd: VmCommand) -> ExitCode {
    match cmd {
        VmCommand::Check(a) => check(a),
        VmCommand::RunVmm(a) => ExitCode::from(run_vmm(a)),
    }
}

fn check(a: CheckArgs) -> ExitCode {
    let opts = CheckOptions {
        kernel: a.kernel,
        modules: a.modules,
        agent: a.agent,
        memory_mib: a.memory,
        cpus: a.cpus,
        timeout: Duration::from_secs(a.timeout),
        console: match a.console {
            None => ConsoleTarget::Temporary,
            Some(p) if p.as_os_str() == "-" => ConsoleTarget::Stdout,
            Some(p) => ConsoleTarget::File(p),
        },
        cache_dir: a.cache_dir,
        append: a.append,
        kvm_path: amphi::vm::host::DEFAULT_KVM_PATH.into(),
        vmm_binary: std::env::current_exe().unwrap_or_else(|_| "amphi".into()),
    };
    let mut progress = |m: &str| eprintln!("amphi: {m}");
    match amphi::vm::check(&opts, &mut progress) {
        Ok(report) => {
            let mut out = std::io::stdout().lock();
            let written = if a.json {
                serde_json::to_writer_pretty(&mut out, &report).map_err(std::io::Error::from).and_then(|_| {
                    use std::io::Write;
                    writeln!(out)
                })
            } else {
                report.render(&mut out)
            };
            if written.is_err() {
                return ExitCode::from(amphi::exit::GENERAL);
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            super::print_error(&e);
            ExitCode::from(e.exit_code())
        }
    }
}

fn run_vmm(a: RunVmmArgs) -> u8 {
    let args = ChildArgs {
        kernel: a.kernel,
        initrd: a.initrd,
        cmdline: a.cmdline,
        memory_mib: a.memory,
        cpus: a.cpus,
        serial: a.serial,
        vsock_uds: a.vsock_uds,
        vsock_cid: a.vsock_cid,
        event_fd: a.event_fd,
        kvm_path: a.kvm,
    };
    amphi::vm::process::run_child(args.into_config(), a.event_fd)
}
