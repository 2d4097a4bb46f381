//! The spec's seccomp profile compiled with libseccomp.
//!
//! The filter is compiled in the parent before the container's init is
//! cloned (so a bad profile fails `create` before anything exists), and the
//! init only loads it. Semantics follow runc: unknown syscall names are
//! skipped (profiles list syscalls of many kernels), rules whose action is
//! the default action are dropped, and arguments that share an index become
//! separate rules (OR), the others one rule (AND).

use libseccomp::{ScmpAction, ScmpArch, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext, ScmpSyscall};
use oci_spec::runtime::{Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompFilterFlag, LinuxSeccompOperator};

use super::LinuxError;

fn cfg(msg: String) -> LinuxError {
    LinuxError::Config(msg)
}

fn action(a: LinuxSeccompAction, errno: Option<u32>) -> Result<ScmpAction, LinuxError> {
    use LinuxSeccompAction::*;
    Ok(match a {
        ScmpActKill | ScmpActKillThread => ScmpAction::KillThread,
        ScmpActKillProcess => ScmpAction::KillProcess,
        ScmpActTrap => ScmpAction::Trap,
        ScmpActErrno => ScmpAction::Errno(errno.unwrap_or(libc::EPERM as u32) as i32),
        ScmpActTrace => ScmpAction::Trace(errno.unwrap_or(libc::EPERM as u32) as u16),
        ScmpActLog => ScmpAction::Log,
        ScmpActAllow => ScmpAction::Allow,
        ScmpActNotify => {
            return Err(cfg("linux.seccomp: SCMP_ACT_NOTIFY (seccomp user notification) is not supported by this \
                 build; use SCMP_ACT_ERRNO or SCMP_ACT_TRACE"
                .into()))
        }
    })
}

fn arch(a: Arch) -> Result<ScmpArch, LinuxError> {
    use Arch::*;
    Ok(match a {
        ScmpArchNative => ScmpArch::Native,
        ScmpArchX86 => ScmpArch::X86,
        ScmpArchX86_64 => ScmpArch::X8664,
        ScmpArchX32 => ScmpArch::X32,
        ScmpArchArm => ScmpArch::Arm,
        ScmpArchAarch64 => ScmpArch::Aarch64,
        ScmpArchMips => ScmpArch::Mips,
        ScmpArchMips64 => ScmpArch::Mips64,
        ScmpArchMips64n32 => ScmpArch::Mips64N32,
        ScmpArchMipsel => ScmpArch::Mipsel,
        ScmpArchMipsel64 => ScmpArch::Mipsel64,
        ScmpArchMipsel64n32 => ScmpArch::Mipsel64N32,
        ScmpArchPpc => ScmpArch::Ppc,
        ScmpArchPpc64 => ScmpArch::Ppc64,
        ScmpArchPpc64le => ScmpArch::Ppc64Le,
        ScmpArchS390 => ScmpArch::S390,
        ScmpArchS390x => ScmpArch::S390X,
        ScmpArchParisc => ScmpArch::Parisc,
        ScmpArchParisc64 => ScmpArch::Parisc64,
        ScmpArchRiscv64 => ScmpArch::Riscv64,
        ScmpArchLoongarch64 => ScmpArch::Loongarch64,
        ScmpArchM68k => ScmpArch::M68k,
        other => {
            return Err(cfg(format!("linux.seccomp.architectures: {other:?} is not supported by libseccomp here")))
        }
    })
}

fn compare(arg: &oci_spec::runtime::LinuxSeccompArg) -> ScmpArgCompare {
    use LinuxSeccompOperator::*;
    let op = match arg.op() {
        ScmpCmpNe => ScmpCompareOp::NotEqual,
        ScmpCmpLt => ScmpCompareOp::Less,
        ScmpCmpLe => ScmpCompareOp::LessOrEqual,
        ScmpCmpEq => ScmpCompareOp::Equal,
        ScmpCmpGe => ScmpCompareOp::GreaterEqual,
        ScmpCmpGt => ScmpCompareOp::Greater,
        ScmpCmpMaskedEq => ScmpCompareOp::MaskedEqual(arg.value()),
    };
    let datum = if matches!(arg.op(), ScmpCmpMaskedEq) { arg.value_two().unwrap_or(0) } else { arg.value() };
    ScmpArgCompare::new(arg.index() as u32, op, datum)
}

/// A compiled filter: the BPF program and the seccomp(2) flags to load it
/// with. Loading needs no allocation, so the init can do it at any point.
#[derive(Debug)]
pub struct Filter {
    bpf: Vec<u8>,
    flags: libc::c_ulong,
    /// Syscall names the profile lists that libseccomp does not know.
    pub skipped: Vec<String>,
}

/// Compiles the profile.
pub fn compile(profile: &LinuxSeccomp) -> Result<Filter, LinuxError> {
    let lib = |what: String| move |e: libseccomp::error::SeccompError| cfg(format!("linux.seccomp: {what}: {e}"));
    let default = action(profile.default_action(), profile.default_errno_ret())?;
    let mut ctx = ScmpFilterContext::new(default).map_err(lib("cannot create the filter".into()))?;
    // We set no_new_privs ourselves when the spec asks for it.
    ctx.set_ctl_nnp(false).map_err(lib("cannot clear the NNP attribute".into()))?;
    for a in profile.architectures().iter().flatten() {
        let a = arch(*a)?;
        if !ctx.is_arch_present(a).unwrap_or(false) {
            ctx.add_arch(a).map_err(lib(format!("cannot add architecture {a:?}")))?;
        }
    }
    let mut flags: libc::c_ulong = 0;
    for f in profile.flags().iter().flatten() {
        flags |= match f {
            LinuxSeccompFilterFlag::SeccompFilterFlagLog => libc::SECCOMP_FILTER_FLAG_LOG,
            LinuxSeccompFilterFlag::SeccompFilterFlagSpecAllow => libc::SECCOMP_FILTER_FLAG_SPEC_ALLOW,
            LinuxSeccompFilterFlag::SeccompFilterFlagTsync => libc::SECCOMP_FILTER_FLAG_TSYNC,
            LinuxSeccompFilterFlag::SeccompFilterFlagWaitKillableRecv => 1 << 5,
        };
    }
    let mut skipped = Vec::new();
    for rule in profile.syscalls().iter().flatten() {
        let act = action(rule.action(), rule.errno_ret())?;
        if act == default {
            continue;
        }
        let args = rule.args().as_deref().unwrap_or(&[]);
        let mut indexes: Vec<usize> = args.iter().map(|a| a.index()).collect();
        indexes.sort_unstable();
        let shared_index = indexes.windows(2).any(|w| w[0] == w[1]);
        for name in rule.names() {
            let Ok(sys) = ScmpSyscall::from_name(name) else {
                skipped.push(name.clone());
                continue;
            };
            let add = |ctx: &mut ScmpFilterContext, conds: &[ScmpArgCompare]| {
                if conds.is_empty() { ctx.add_rule(act, sys) } else { ctx.add_rule_conditional(act, sys, conds) }
                    .map_err(lib(format!("cannot add the rule for {name}")))
                    .map(|_| ())
            };
            if shared_index {
                for a in args {
                    add(&mut ctx, &[compare(a)])?;
                }
            } else {
                let conds: Vec<ScmpArgCompare> = args.iter().map(compare).collect();
                add(&mut ctx, &conds)?;
            }
        }
    }
    let bpf = export(&ctx)?;
    Ok(Filter { bpf, flags, skipped })
}

impl Filter {
    /// Installs the filter on the calling thread (and its future children).
    /// The caller either holds CAP_SYS_ADMIN or has set no_new_privs.
    pub fn load(&self) -> Result<(), nix::errno::Errno> {
        let prog = libc::sock_fprog {
            len: (self.bpf.len() / std::mem::size_of::<libc::sock_filter>()) as u16,
            filter: self.bpf.as_ptr() as *mut libc::sock_filter,
        };
        // SAFETY: the program points into `self.bpf`, which outlives the
        // call; the kernel copies it.
        let r = unsafe {
            libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                self.flags,
                &prog as *const libc::sock_fprog,
            )
        };
        if r < 0 {
            Err(nix::errno::Errno::last())
        } else {
            Ok(())
        }
    }

    /// The BPF program bytes.
    pub fn bpf(&self) -> &[u8] {
        &self.bpf
    }
}

/// The compiled program as bytes. libseccomp 2.5 (Debian 12) exports only
/// to an fd, so go through a memfd.
fn export(ctx: &ScmpFilterContext) -> Result<Vec<u8>, LinuxError> {
    use std::io::{Read, Seek};
    let fd = nix::sys::memfd::memfd_create(c"amphi-seccomp", nix::sys::memfd::MFdFlags::MFD_CLOEXEC)
        .map_err(|e| LinuxError::sys("cannot export the seccomp filter", e))?;
    let mut f = std::fs::File::from(fd);
    ctx.export_bpf(&f).map_err(|e| cfg(format!("linux.seccomp: cannot export the program: {e}")))?;
    let mut bpf = Vec::new();
    f.rewind()
        .and_then(|_| f.read_to_end(&mut bpf))
        .map_err(|e| LinuxError::io("cannot read back the seccomp filter", e))?;
    Ok(bpf)
}

/// Actions, operators and architectures this build supports (`features`).
pub fn supported() -> (Vec<&'static str>, Vec<&'static str>, Vec<&'static str>) {
    (
        vec![
            "SCMP_ACT_ALLOW",
            "SCMP_ACT_ERRNO",
            "SCMP_ACT_KILL",
            "SCMP_ACT_KILL_PROCESS",
            "SCMP_ACT_KILL_THREAD",
            "SCMP_ACT_LOG",
            "SCMP_ACT_TRACE",
            "SCMP_ACT_TRAP",
        ],
        vec![
            "SCMP_CMP_EQ",
            "SCMP_CMP_GE",
            "SCMP_CMP_GT",
            "SCMP_CMP_LE",
            "SCMP_CMP_LT",
            "SCMP_CMP_MASKED_EQ",
            "SCMP_CMP_NE",
        ],
        vec!["SCMP_ARCH_X86", "SCMP_ARCH_X86_64", "SCMP_ARCH_X32", "SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile(json: &str) -> LinuxSeccomp {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn compiles_a_profile_and_skips_unknown_names() {
        let p = profile(
            r#"{"defaultAction":"SCMP_ACT_ALLOW","architectures":["SCMP_ARCH_X86_64","SCMP_ARCH_X86"],
                "syscalls":[
                  {"names":["getcwd","no_such_syscall_xyz"],"action":"SCMP_ACT_ERRNO","errnoRet":1},
                  {"names":["personality"],"action":"SCMP_ACT_ERRNO",
                   "args":[{"index":0,"value":8,"op":"SCMP_CMP_EQ"},{"index":0,"value":4294967295,"op":"SCMP_CMP_EQ"}]},
                  {"names":["read"],"action":"SCMP_ACT_ALLOW"}]}"#,
        );
        let f = compile(&p).unwrap();
        assert_eq!(f.skipped, vec!["no_such_syscall_xyz".to_string()]);
        assert!(!f.bpf().is_empty() && f.bpf().len() % 8 == 0);
    }

    #[test]
    fn notify_is_refused_clearly() {
        let p = profile(r#"{"defaultAction":"SCMP_ACT_NOTIFY"}"#);
        let e = compile(&p).unwrap_err().to_string();
        assert!(e.contains("SCMP_ACT_NOTIFY"), "{e}");
    }

    #[test]
    fn loaded_filter_denies_in_a_child() {
        let p = profile(
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["getppid"],"action":"SCMP_ACT_ERRNO","errnoRet":38}]}"#,
        );
        let f = compile(&p).unwrap();
        // Load in a forked child: the filter must not stick to the test
        // process.
        // SAFETY: fork; the child makes raw syscalls only (prctl, seccomp,
        // getppid, _exit), nothing that allocates or takes locks.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // SAFETY: prctl with integer arguments.
            unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
            let ok = f.load().is_ok();
            // SAFETY: a raw getppid syscall and reading errno.
            let r = unsafe { libc::syscall(libc::SYS_getppid) };
            let e = nix::errno::Errno::last_raw();
            // SAFETY: leaving the forked child.
            unsafe { libc::_exit(if ok && r == -1 && e == 38 { 0 } else { 1 }) };
        }
        let mut status = 0;
        // SAFETY: waiting for our own child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "status {status:#x}");
    }
}
