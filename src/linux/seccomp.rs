//! The spec's seccomp profile compiled with libseccomp.
//!
//! The filter is compiled in the parent before the container's init is
//! cloned (so a bad profile fails `create` before anything exists), and the
//! init only loads it. Semantics follow runc: unknown syscall names are
//! skipped (profiles list syscalls of many kernels), rules whose action is
//! the default action are dropped, and arguments that share an index become
//! separate rules (OR), the others one rule (AND).
//!
//! SCMP_ACT_NOTIFY (seccomp user notification) loads the filter with a
//! listener fd, which the runtime hands to the program at
//! `linux.seccomp.listenerPath` together with the container's state, as
//! runtime-spec's "seccomp notify" section describes ([`send_to_listener`]).

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
        ScmpActNotify => ScmpAction::Notify,
    })
}

/// seccomp(2)'s SECCOMP_FILTER_FLAG_NEW_LISTENER: loading returns the
/// notification fd.
const FLAG_NEW_LISTENER: libc::c_ulong = 1 << 3;

/// Syscalls that may not notify: the process hands the listener fd over
/// with sendmsg(2) after loading the filter, so a notified sendmsg would
/// wait for a listener that has no fd yet.
const NEVER_NOTIFY: &[&str] = &["sendmsg"];

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
#[derive(Debug, Clone)]
pub struct Filter {
    bpf: Vec<u8>,
    flags: libc::c_ulong,
    /// Some rule notifies a listener (SCMP_ACT_NOTIFY): loading returns the
    /// listener fd.
    pub notify: Option<Listener>,
    /// Syscall names the profile lists that libseccomp does not know.
    pub skipped: Vec<String>,
}

/// Where the notification fd goes.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Listener {
    pub path: std::path::PathBuf,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub metadata: String,
}

/// Compiles the profile.
pub fn compile(profile: &LinuxSeccomp) -> Result<Filter, LinuxError> {
    let lib = |what: String| move |e: libseccomp::error::SeccompError| cfg(format!("linux.seccomp: {what}: {e}"));
    let default = action(profile.default_action(), profile.default_errno_ret())?;
    if default == ScmpAction::Notify {
        return Err(cfg("linux.seccomp: SCMP_ACT_NOTIFY cannot be the default action (the kernel would stop \
             every syscall of the container at the listener): use it for chosen syscalls only"
            .into()));
    }
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
    let mut notify = false;
    for rule in profile.syscalls().iter().flatten() {
        let act = action(rule.action(), rule.errno_ret())?;
        if act == default {
            continue;
        }
        if act == ScmpAction::Notify {
            notify = true;
            if let Some(n) = rule.names().iter().find(|n| NEVER_NOTIFY.contains(&n.as_str())) {
                return Err(cfg(format!(
                    "linux.seccomp: SCMP_ACT_NOTIFY cannot be used for {n}: the runtime needs it to hand the \
                     listener its fd"
                )));
            }
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
    let notify = if notify {
        let path = profile.listener_path().clone().ok_or_else(|| {
            cfg("linux.seccomp: SCMP_ACT_NOTIFY needs listenerPath, the UNIX socket of the program that handles \
                 the notifications: set it"
                .into())
        })?;
        if !path.is_absolute() {
            return Err(cfg(format!("linux.seccomp.listenerPath {} is not absolute", path.display())));
        }
        flags |= FLAG_NEW_LISTENER;
        Some(Listener { path, metadata: profile.listener_metadata().clone().unwrap_or_default() })
    } else {
        None
    };
    let bpf = export(&ctx)?;
    Ok(Filter { bpf, flags, notify, skipped })
}

impl Filter {
    /// Installs the filter on the calling thread (and its future children).
    /// The caller either holds CAP_SYS_ADMIN or has set no_new_privs.
    /// Returns the listener fd when the filter notifies.
    pub fn load(&self) -> Result<Option<std::os::fd::OwnedFd>, nix::errno::Errno> {
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
            return Err(nix::errno::Errno::last());
        }
        if self.flags & FLAG_NEW_LISTENER == 0 {
            return Ok(None);
        }
        // SAFETY: with NEW_LISTENER the kernel returns a new fd, ours alone.
        Ok(Some(unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(r as i32) }))
    }

    /// The BPF program bytes.
    pub fn bpf(&self) -> &[u8] {
        &self.bpf
    }
}

impl Filter {
    /// The filter as saved for later `exec`s (the compiled program and the
    /// flags; compiling again per exec would cost milliseconds).
    pub fn to_saved(&self) -> Saved {
        Saved { flags: self.flags, notify: self.notify.clone() }
    }

    /// Rebuilds a filter from what [`Filter::to_saved`] kept and the
    /// program bytes.
    pub fn from_saved(saved: &Saved, bpf: Vec<u8>) -> Result<Filter, LinuxError> {
        if bpf.is_empty() || bpf.len() % std::mem::size_of::<libc::sock_filter>() != 0 {
            return Err(cfg("the saved seccomp program is damaged: delete and recreate the container".into()));
        }
        Ok(Filter { bpf, flags: saved.flags as libc::c_ulong, notify: saved.notify.clone(), skipped: Vec::new() })
    }
}

/// What the state keeps of a filter besides its program.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Saved {
    pub flags: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notify: Option<Listener>,
}

/// Hands a notification fd to the listener: one message on a connection
/// to its socket, runtime-spec's ContainerProcessState as JSON with the fd
/// as SCM_RIGHTS. A listener that is not there fails at once (connect),
/// never hangs.
pub fn send_to_listener(
    listener: &Listener,
    fd: &std::os::fd::OwnedFd,
    pid: i32,
    state: &crate::container::state::OciState,
) -> Result<(), LinuxError> {
    use nix::sys::socket::{
        connect, sendmsg, socket, AddressFamily, ControlMessage, MsgFlags, SockFlag, SockType, UnixAddr,
    };
    use std::os::fd::AsRawFd;
    let what = |e| {
        LinuxError::sys(
            format!(
                "cannot hand the seccomp notify fd to linux.seccomp.listenerPath {} (is the listener running?)",
                listener.path.display()
            ),
            e,
        )
    };
    let msg = serde_json::json!({
        "ociVersion": state.oci_version,
        "fds": ["seccompFd"],
        "pid": pid,
        "metadata": listener.metadata,
        "state": state,
    });
    let bytes = serde_json::to_vec(&msg).unwrap_or_default();
    let sock = socket(AddressFamily::Unix, SockType::Stream, SockFlag::SOCK_CLOEXEC, None).map_err(what)?;
    connect(sock.as_raw_fd(), &UnixAddr::new(&listener.path).map_err(what)?).map_err(what)?;
    let fds = [fd.as_raw_fd()];
    let iov = [std::io::IoSlice::new(&bytes)];
    sendmsg::<()>(sock.as_raw_fd(), &iov, &[ControlMessage::ScmRights(&fds)], MsgFlags::MSG_NOSIGNAL, None)
        .map_err(what)?;
    Ok(())
}

/// Fails early (before anything is created) when the listener's socket is
/// not there.
pub fn check_listener(listener: &Listener) -> Result<(), LinuxError> {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::metadata(&listener.path) {
        Ok(m) if m.file_type().is_socket() => Ok(()),
        Ok(_) => Err(LinuxError::Config(format!(
            "linux.seccomp.listenerPath {} is not a socket: start the seccomp agent first",
            listener.path.display()
        ))),
        Err(e) => Err(LinuxError::io(
            format!(
                "linux.seccomp.listenerPath {} cannot be reached: start the seccomp agent first",
                listener.path.display()
            ),
            e,
        )),
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
            "SCMP_ACT_NOTIFY",
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
    fn notify_as_default_or_without_listener_is_refused() {
        let p = profile(r#"{"defaultAction":"SCMP_ACT_NOTIFY","listenerPath":"/run/l.sock"}"#);
        let e = compile(&p).unwrap_err().to_string();
        assert!(e.contains("cannot be the default action"), "{e}");
        let p = profile(
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["mkdir"],"action":"SCMP_ACT_NOTIFY"}]}"#,
        );
        let e = compile(&p).unwrap_err().to_string();
        assert!(e.contains("needs listenerPath"), "{e}");
        let p = profile(
            r#"{"defaultAction":"SCMP_ACT_ALLOW","listenerPath":"/l","syscalls":[{"names":["sendmsg"],"action":"SCMP_ACT_NOTIFY"}]}"#,
        );
        assert!(compile(&p).unwrap_err().to_string().contains("cannot be used for sendmsg"));
    }

    #[test]
    fn notify_compiles_with_its_listener() {
        let p = profile(
            r#"{"defaultAction":"SCMP_ACT_ALLOW","listenerPath":"/run/agent.sock","listenerMetadata":"m",
                "syscalls":[{"names":["mkdir"],"action":"SCMP_ACT_NOTIFY"}]}"#,
        );
        let f = compile(&p).unwrap();
        let l = f.notify.as_ref().unwrap();
        assert_eq!((l.path.to_str().unwrap(), l.metadata.as_str()), ("/run/agent.sock", "m"));
        let back = Filter::from_saved(&f.to_saved(), f.bpf().to_vec()).unwrap();
        assert_eq!(back.bpf(), f.bpf());
        assert!(back.notify.is_some());
        assert!(Filter::from_saved(&f.to_saved(), vec![1, 2, 3]).is_err());
    }

    #[test]
    fn the_listener_gets_the_state_and_the_fd() {
        use std::os::fd::AsRawFd;
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("agent.sock");
        let listener = Listener { path: path.clone(), metadata: "meta".into() };
        assert!(check_listener(&listener).unwrap_err().to_string().contains("start the seccomp agent"));
        let l = std::os::unix::net::UnixListener::bind(&path).unwrap();
        check_listener(&listener).unwrap();
        let t = std::thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            let mut buf = vec![0u8; 4096];
            let mut cmsg = nix::cmsg_space!([std::os::fd::RawFd; 1]);
            let mut iov = [std::io::IoSliceMut::new(&mut buf)];
            let m = nix::sys::socket::recvmsg::<()>(
                s.as_raw_fd(),
                &mut iov,
                Some(&mut cmsg),
                nix::sys::socket::MsgFlags::empty(),
            )
            .unwrap();
            let fds = m.cmsgs().unwrap().count();
            let n = m.bytes;
            (String::from_utf8_lossy(&buf[..n]).into_owned(), fds)
        });
        let state = crate::container::state::OciState {
            oci_version: "1.2.1".into(),
            id: "c".into(),
            pid: 7,
            status: crate::container::state::Status::Creating,
            bundle: "/b".into(),
            rootfs: "/b/rootfs".into(),
            created: String::new(),
            owner: String::new(),
            annotations: Default::default(),
        };
        let fd: std::os::fd::OwnedFd = std::fs::File::open("/dev/null").unwrap().into();
        send_to_listener(&listener, &fd, 7, &state).unwrap();
        let (text, fds) = t.join().unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["fds"], serde_json::json!(["seccompFd"]));
        assert_eq!((v["pid"].as_i64(), v["metadata"].as_str()), (Some(7), Some("meta")));
        assert_eq!(v["state"]["status"], "creating");
        assert_eq!(fds, 1);
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
