//! `amphi vm ...`: arguments -> one library call each.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use amphi::vm::check::{CheckOptions, ConsoleTarget};
use amphi::vm::guest::GuestOptions;
use amphi::vm::process::ChildArgs;
use amphi::vm::template::vmm::VmmBuilder;
use amphi::vm::template::{self, BuildOptions, Cache};

use crate::cli::vm::{
    CheckArgs, RunVmmArgs, TemplateBuildArgs, TemplateCommand, TemplateListArgs, TemplateRmArgs, VmCommand,
};
use crate::cli::GlobalArgs;

pub fn run(_global: &GlobalArgs, cmd: VmCommand) -> anyhow::Result<u8> {
    match cmd {
        VmCommand::Check(a) => check(a),
        VmCommand::RunVmm(a) => Ok(run_vmm(a)),
        VmCommand::Template(TemplateCommand::List(a)) => template_list(a),
        VmCommand::Template(TemplateCommand::Build(a)) => template_build(a),
        VmCommand::Template(TemplateCommand::Rm(a)) => template_rm(a),
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
        template: a.template,
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
        shares: a.share,
        disks: a.disk,
        nets: a.net,
        balloon: a.balloon.then_some(a.free_page_reporting),
        template_out: a.template_out,
        restore: a.restore,
    };
    amphi::vm::process::run_child(args)
}

fn template_list(a: TemplateListArgs) -> anyhow::Result<u8> {
    let infos = Cache::in_cache_dir(&a.cache.cache_dir).list()?;
    let mut out = std::io::stdout().lock();
    if a.json {
        serde_json::to_writer_pretty(&mut out, &infos)?;
        writeln!(out)?;
    } else {
        template::render_list(&infos, a.verbose, &mut out)?;
    }
    Ok(0)
}

/// Builds the template VM containers of this size restore: the same VMM
/// settings as theirs by default (no extra kernel arguments, free page
/// reporting on).
fn template_build(a: TemplateBuildArgs) -> anyhow::Result<u8> {
    let exe = amphi::linux::exe::original_exe();
    let builder = VmmBuilder {
        kvm_path: amphi::vm::host::DEFAULT_KVM_PATH.into(),
        vmm_binary: exe.clone(),
        kernel_args: None,
        free_page_reporting: true,
        fingerprint_dir: Cache::in_cache_dir(&a.cache.cache_dir).root().to_path_buf(),
    };
    let opts = BuildOptions {
        guest: GuestOptions { kernel: a.kernel, cache_dir: a.cache.cache_dir, exe, ..GuestOptions::default() },
        mem_mib: a.memory,
        vcpus: a.cpus,
    };
    let done = template::build(&opts, &builder, &mut |m| eprintln!("amphi: {m}"))?;
    let t = &done.template;
    if done.built {
        println!("built template {} in {} ms ({})", t.key, t.manifest.build_ms, t.dir.display());
    } else {
        println!("template {} is already built ({})", t.key, t.dir.display());
    }
    Ok(0)
}

fn template_rm(a: TemplateRmArgs) -> anyhow::Result<u8> {
    let cache = Cache::in_cache_dir(&a.cache.cache_dir);
    if a.all {
        for k in cache.remove_all()? {
            println!("{k}");
        }
        return Ok(0);
    }
    // All resolved first, so a mistyped key removes nothing.
    let keys = a.keys.iter().map(|k| cache.resolve(k)).collect::<Result<Vec<_>, _>>()?;
    for k in keys {
        cache.remove(&k)?;
        println!("{k}");
    }
    Ok(0)
}
