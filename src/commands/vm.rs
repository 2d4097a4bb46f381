//! `amphi vm ...`: arguments -> one library call each.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use amphi::vm::check::{CheckOptions, ConsoleTarget};
use amphi::vm::process::ChildArgs;

use crate::cli::vm::{CheckArgs, RunVmmArgs, VmCommand};
use crate::cli::GlobalArgs;

pub fn run(_global: &GlobalArgs, cmd: VmCommand) -> anyhow::Result<u8> {
    match cmd {
        VmCommand::Check(a) => check(a),
        VmCommand::RunVmm(a) => Ok(run_vmm(a)),
    }
}

/// Set by SIGINT/SIGTERM/SIGHUP during `vm check`.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    INTERRUPTED.store(true, Ordering::Relaxed);
}

fn check(a: CheckArgs) -> anyhow::Result<u8> {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        vmm_sys_util::signal::register_signal_handler(sig, on_signal)?;
    }
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
        cancel: Some(&INTERRUPTED),
        disks: a.disk,
        nets: a.net,
    };
    let mut progress = |m: &str| eprintln!("amphi: {m}");
    let report = amphi::vm::check(&opts, &mut progress)?;
    let mut out = std::io::stdout().lock();
    if a.json {
        serde_json::to_writer_pretty(&mut out, &report)?;
        writeln!(out)?;
    } else {
        report.render(&mut out)?;
    }
    Ok(0)
}

fn run_vmm(a: RunVmmArgs) -> u8 {
    let event_fd = a.event_fd;
    let args = ChildArgs {
        kernel: a.kernel,
        initrd: a.initrd,
        cmdline: a.cmdline,
        memory_mib: a.memory,
        cpus: a.cpus,
        serial: a.serial,
        vsock_uds: a.vsock_uds,
        vsock_cid: a.vsock_cid,
        event_fd,
        kvm_path: a.kvm,
        shares: a.share,
        disks: a.disk,
        nets: a.net,
    };
    amphi::vm::process::run_child(args.into_config(), event_fd)
}
