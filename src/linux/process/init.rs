//! The container's init: the cloned child that builds the container from
//! the inside and finally execs the workload.
//!
//! It runs on a copy of the parent's memory, so everything it needs was
//! computed by the parent before the clone ([`InitPlan`]): here it only
//! performs syscalls in order. Every failure travels back to `create` over
//! the sync channel before the init exits; after `Ready` only the exec
//! itself can still fail.

use std::convert::Infallible;
use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::sched::CloneFlags;
use nix::unistd::{Gid, Uid};
use oci_spec::runtime::{LinuxNamespaceType, Process, Spec};

use super::super::capabilities::{self, CapSets};
use super::super::cgroups::Join;
use super::super::namespaces::{self, NamespacePlan};
use super::super::rootfs::{self, RootfsPlan};
use super::super::{console, rlimits, seccomp, user, LinuxError};
use super::sync::{Channel, ToChild, ToParent};
use crate::container::hooks::{self, HookKind};
use crate::container::sandbox::LaunchMode;
use crate::container::state::{OciState, Status};

/// What the init does, decided by the parent before cloning.
#[derive(Debug)]
pub struct InitPlan<'a> {
    pub id: &'a str,
    pub spec: &'a Spec,
    pub process: &'a Process,
    pub ns: NamespacePlan,
    /// How the init joins its cgroups.
    pub cgroups: &'a Join,
    pub rootfs: RootfsPlan<'a>,
    pub mode: LaunchMode,
    /// The container's state directory (for the exec fifo).
    pub dir_fd: RawFd,
    pub no_pivot: bool,
    pub no_new_keyring: bool,
    pub caps: Option<CapSets>,
    pub seccomp: Option<seccomp::Filter>,
    /// The parent has prestart/createRuntime hooks to run mid-setup.
    pub runtime_hooks: bool,
    /// State for hooks run inside the container (pid and status filled in).
    pub state: OciState,
    /// Content for /proc/self/timens_offsets.
    pub time_offsets: String,
    /// First fd that the workload must not inherit (3 + LISTEN_FDS + preserved).
    pub first_private_fd: u32,
    pub env: Vec<CString>,
    pub args: Vec<CString>,
}

fn errno_step(what: &str) -> impl FnOnce(Errno) -> LinuxError + '_ {
    move |e| LinuxError::sys(what, e)
}

/// Entry point in the cloned child: sets up, execs, never returns.
pub fn run(plan: &InitPlan<'_>, chan: &Channel) -> i32 {
    let e = match setup_and_exec(plan, chan) {
        Ok(never) => match never {},
        Err(e) => e,
    };
    let msg = crate::logging::chain(&e);
    if chan.send(&ToParent::Error(msg.clone()), None).is_err() {
        // Nobody listens any more (after `create` returned): stderr is all
        // that is left.
        eprintln!("amphi init: {msg}");
    }
    // Conventional "command cannot be executed / not found" codes for exec
    // failures after Ready; 1 for setup failures, which `create` reports.
    match &e {
        LinuxError::Sys { errno: Errno::ENOENT, what } if what.starts_with("exec") => 127,
        LinuxError::Sys { what, .. } if what.starts_with("exec") => 126,
        _ => 1,
    }
}

/// The intermediate process of the joining path: joins namespaces in the
/// right order, makes the new ones (owned by the right user namespace),
/// then forks the init into its pid namespace, reports its pid and exits.
pub fn intermediate(plan: &InitPlan<'_>, chan: &Channel, joins: &[(LinuxNamespaceType, std::os::fd::OwnedFd)]) -> i32 {
    let r = (|| -> Result<i32, LinuxError> {
        for (t, fd) in joins {
            namespaces::setns(*t, fd)?;
        }
        let mut rest = plan.ns.new;
        if plan.ns.new_user() {
            namespaces::unshare(CloneFlags::CLONE_NEWUSER, "user")?;
            chan.send(&ToParent::MapsPlease, None).map_err(errno_step("sync"))?;
            match chan.recv::<ToChild>().map_err(errno_step("sync"))? {
                Some((ToChild::MapsDone, _)) => {}
                _ => return Err(LinuxError::InitDied("no uid/gid maps from the parent".into())),
            }
            rest.remove(CloneFlags::CLONE_NEWUSER);
        }
        if !rest.is_empty() {
            namespaces::unshare(rest, "the container's")?;
        }
        let into = plan.cgroups.clone_into.as_ref().map(std::os::fd::AsRawFd::as_raw_fd);
        let pid = super::clone_child(CloneFlags::from_bits_retain(libc::CLONE_PARENT), into, || run(plan, chan))
            .map_err(errno_step("cannot fork the container init"))?;
        chan.send(&ToParent::Pid(pid), None).map_err(errno_step("sync"))?;
        Ok(0)
    })();
    match r {
        Ok(c) => c,
        Err(e) => {
            let _ = chan.send(&ToParent::Error(crate::logging::chain(&e)), None);
            1
        }
    }
}

fn state_json(plan: &InitPlan<'_>, pid: i32, status: Status) -> Vec<u8> {
    let mut s = plan.state.clone();
    s.pid = pid;
    s.status = status;
    serde_json::to_vec(&s).unwrap_or_default()
}

fn setup_and_exec(plan: &InitPlan<'_>, chan: &Channel) -> Result<Infallible, LinuxError> {
    use nix::sys::prctl;
    // Die with `create` while setting up; cleared before Ready.
    prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL).map_err(errno_step("prctl(PR_SET_PDEATHSIG)"))?;
    // Not dumpable: other processes cannot open our /proc/<pid>/exe (the
    // amphi binary) or ptrace us until we exec the workload.
    prctl::set_dumpable(false).map_err(errno_step("prctl(PR_SET_DUMPABLE)"))?;
    // Into our cgroups first, so that everything the setup does is
    // accounted and limited there.
    plan.cgroups.join_self()?;
    let host_pid = match chan.recv::<ToChild>().map_err(errno_step("sync with create"))? {
        Some((ToChild::Proceed { pid }, _)) => pid,
        _ => return Err(LinuxError::InitDied("create went away before the init could proceed".into())),
    };

    if plan.ns.in_userns() {
        // Become root of the user namespace (uid/gid 0 must be mapped).
        nix::unistd::setresgid(Gid::from_raw(0), Gid::from_raw(0), Gid::from_raw(0)).map_err(errno_step(
            "cannot become gid 0 in the user namespace: map container gid 0 in linux.gidMappings",
        ))?;
        nix::unistd::setresuid(Uid::from_raw(0), Uid::from_raw(0), Uid::from_raw(0)).map_err(errno_step(
            "cannot become uid 0 in the user namespace: map container uid 0 in linux.uidMappings",
        ))?;
    }
    if let Some(adj) = plan.process.oom_score_adj() {
        std::fs::write("/proc/self/oom_score_adj", adj.to_string()).map_err(|e| {
            LinuxError::io(format!("cannot set process.oomScoreAdj to {adj} (lowering it needs CAP_SYS_RESOURCE)"), e)
        })?;
    }
    if plan.ns.new_cgroup {
        // Now that the parent put us in our cgroup, the namespace is
        // rooted there.
        namespaces::unshare(CloneFlags::CLONE_NEWCGROUP, "cgroup")?;
    }
    if plan.ns.new_time {
        namespaces::unshare(CloneFlags::from_bits_retain(libc::CLONE_NEWTIME), "time")?;
        if !plan.time_offsets.is_empty() {
            std::fs::write("/proc/self/timens_offsets", plan.time_offsets.as_bytes())
                .map_err(|e| LinuxError::io("cannot write linux.timeOffsets", e))?;
        }
        // unshare(2) puts only later children into the new namespace. Recent
        // kernels also move a process there when it execs, 6.1 (Debian 12's)
        // does not: the workload kept the host's clocks. Entering it here
        // works on every kernel with time namespaces.
        let ns = std::fs::File::open("/proc/self/ns/time_for_children")
            .map_err(|e| LinuxError::io("cannot open the new time namespace", e))?;
        namespaces::setns(LinuxNamespaceType::Time, &OwnedFd::from(ns))?;
    }
    if plan.ns.new.contains(CloneFlags::CLONE_NEWNET) {
        if let Err(e) = namespaces::loopback_up() {
            crate::logging::debug(&format!("cannot bring up lo in the new network namespace: {e}"));
        }
    }

    let mount_ns = plan.ns.has(LinuxNamespaceType::Mount);
    let root = if mount_ns {
        let root = rootfs::prepare_root(plan.rootfs.rootfs)?;
        rootfs::mount_all(&root, &plan.rootfs)?;
        Some(root)
    } else {
        None
    };

    if plan.runtime_hooks {
        chan.send(&ToParent::Hooks, None).map_err(errno_step("sync with create"))?;
        match chan.recv::<ToChild>().map_err(errno_step("sync with create"))? {
            Some((ToChild::HooksDone, _)) => {}
            _ => return Err(LinuxError::InitDied("create went away while running hooks".into())),
        }
    }
    if let Some(list) = plan.spec.hooks().as_ref().and_then(|h| h.create_container().clone()) {
        hooks::run_all(HookKind::CreateContainer, &list, &state_json(plan, host_pid, Status::Creating))?;
    }

    if mount_ns {
        drop(root);
        rootfs::pivot(plan.rootfs.rootfs, plan.no_pivot)?;
    } else {
        nix::unistd::chroot(plan.rootfs.rootfs).map_err(errno_step("chroot into the rootfs"))?;
        nix::unistd::chdir("/").map_err(errno_step("chdir /"))?;
    }
    let linux = plan.spec.linux().as_ref();
    if mount_ns {
        rootfs::set_root_propagation(linux.and_then(|l| l.rootfs_propagation().as_deref()))?;
    }

    let terminal = plan.process.terminal().unwrap_or(false);
    let master = if terminal {
        let size = plan.process.console_size().as_ref().map(|b| (b.height() as u16, b.width() as u16));
        let (master, slave) = console::setup(size)?;
        if mount_ns {
            console::bind_console(&slave)?;
        }
        Some(master)
    } else {
        None
    };

    if plan.ns.has(LinuxNamespaceType::Uts) {
        if let Some(h) = plan.spec.hostname().as_deref() {
            nix::unistd::sethostname(h).map_err(errno_step("cannot set the hostname"))?;
        }
        if let Some(d) = plan.spec.domainname().as_deref() {
            // SAFETY: a pointer and length of a live byte slice.
            if unsafe { libc::setdomainname(d.as_ptr().cast(), d.len()) } != 0 {
                return Err(LinuxError::sys("cannot set the domainname", Errno::last()));
            }
        }
    }
    if let Some(l) = linux {
        if let Some(s) = l.sysctl() {
            rootfs::sysctl(s)?;
        }
        if mount_ns {
            rootfs::readonly_paths(l.readonly_paths().as_deref().unwrap_or(&[]))?;
            rootfs::mask_paths(l.masked_paths().as_deref().unwrap_or(&[]))?;
        }
    }
    rootfs::make_cwd(plan.process.cwd())?;
    if mount_ns && plan.spec.root().as_ref().and_then(|r| r.readonly()).unwrap_or(false) {
        rootfs::readonly_root()?;
    }

    if !plan.no_new_keyring {
        let name = CString::new(format!("_ses.{}", plan.id)).unwrap_or_default();
        // SAFETY: KEYCTL_JOIN_SESSION_KEYRING with a NUL-terminated name.
        let r = unsafe { libc::syscall(libc::SYS_keyctl, 1 as libc::c_long, name.as_ptr()) };
        if r < 0 {
            let e = Errno::last();
            // Kernels without keyrings, or keyrings not allowed here.
            if e != Errno::ENOSYS && e != Errno::EACCES && e != Errno::EPERM && e != Errno::EDQUOT {
                return Err(LinuxError::sys("cannot join a new session keyring (try --no-new-keyring)", e));
            }
        }
    }
    if let Some(p) = linux.and_then(|l| l.personality().as_ref()) {
        let domain: libc::c_ulong = match p.domain() {
            oci_spec::runtime::LinuxPersonalityDomain::PerLinux => 0,
            oci_spec::runtime::LinuxPersonalityDomain::PerLinux32 => 0x0008,
        };
        // SAFETY: personality with a plain integer persona.
        if unsafe { libc::personality(domain) } < 0 {
            return Err(LinuxError::sys("cannot set linux.personality", Errno::last()));
        }
    }
    if let Some(r) = plan.process.rlimits() {
        rlimits::apply(r)?;
    }
    if let Some(io) = plan.process.io_priority() {
        let class: i64 = match io.class() {
            oci_spec::runtime::IOPriorityClass::IoprioClassRt => 1,
            oci_spec::runtime::IOPriorityClass::IoprioClassBe => 2,
            oci_spec::runtime::IOPriorityClass::IoprioClassIdle => 3,
        };
        // SAFETY: ioprio_set(IOPRIO_WHO_PROCESS, self, prio) takes integers.
        let r = unsafe { libc::syscall(libc::SYS_ioprio_set, 1, 0, (class << 13) | io.priority()) };
        if r < 0 {
            return Err(LinuxError::sys("cannot set process.ioPriority", Errno::last()));
        }
    }

    // Before any seccomp filter: profiles may not allow close_range.
    close_inherited(plan.first_private_fd)?;
    let nnp = plan.process.no_new_privileges().unwrap_or(false);
    if nnp {
        prctl::set_no_new_privs().map_err(errno_step("cannot set no_new_privs"))?;
    }
    // Without no_new_privs a filter can only be loaded while we still hold
    // CAP_SYS_ADMIN, i.e. before the capabilities are dropped.
    if let (Some(f), false) = (&plan.seccomp, nnp) {
        f.load().map_err(errno_step("cannot load the seccomp filter"))?;
    }
    if let Some(c) = &plan.caps {
        capabilities::drop_bounding(c)?;
        prctl::set_keepcaps(true).map_err(errno_step("prctl(PR_SET_KEEPCAPS)"))?;
    }
    let setgroups = !plan.ns.in_userns() || setgroups_allowed();
    user::switch(plan.process.user(), setgroups)?;
    if let Some(c) = &plan.caps {
        prctl::set_keepcaps(false).map_err(errno_step("prctl(PR_SET_KEEPCAPS)"))?;
        capabilities::apply(c)?;
    }

    let program = resolve_program(plan)?;
    if let Err(e) = nix::unistd::chdir(plan.process.cwd()) {
        return Err(LinuxError::sys(format!("cannot enter process.cwd {}", plan.process.cwd().display()), e));
    }

    reset_signals();
    prctl::set_pdeathsig(None).map_err(errno_step("prctl(PR_SET_PDEATHSIG)"))?;

    chan.send(&ToParent::Ready { console: master.is_some() }, master.as_ref().map(|m| m.as_raw_fd()))
        .map_err(errno_step("sync with create"))?;
    drop(master);

    // Held open until exec closes it (see fifo::release).
    let _fifo = match plan.mode {
        LaunchMode::Deferred => Some(super::fifo::wait_for_start(plan.dir_fd)?),
        LaunchMode::Attached => match chan.recv::<ToChild>() {
            Ok(Some((ToChild::Start, _))) => None,
            _ => return Err(LinuxError::InitDied("run went away before starting the process".into())),
        },
    };
    if let Some(list) = plan.spec.hooks().as_ref().and_then(|h| h.start_container().clone()) {
        hooks::run_all(HookKind::StartContainer, &list, &state_json(plan, host_pid, Status::Created))?;
    }
    if let (Some(f), true) = (&plan.seccomp, nnp) {
        // As late as possible: the filter then constrains the workload only.
        f.load().map_err(errno_step("cannot load the seccomp filter"))?;
    }
    let e = nix::unistd::execve(&program, &plan.args, &plan.env).unwrap_err();
    Err(LinuxError::sys(format!("exec {:?}", program), e))
}

/// Whether setgroups(2) is allowed in our user namespace.
fn setgroups_allowed() -> bool {
    std::fs::read_to_string("/proc/self/setgroups").map(|s| s.trim() == "allow").unwrap_or(true)
}

/// Finds args[0] the way runc does: as given when it has a slash,
/// otherwise along the container's PATH. The wording of the errors is
/// runc's, which podman maps to exit codes 127 and 126.
fn resolve_program(plan: &InitPlan<'_>) -> Result<CString, LinuxError> {
    let arg0 = plan.args[0].to_bytes();
    let name = String::from_utf8_lossy(arg0).into_owned();
    let check = |p: &Path| -> Result<(), Errno> {
        let md = std::fs::metadata(p).map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(libc::ENOENT)))?;
        if md.is_dir() {
            return Err(Errno::EACCES);
        }
        nix::unistd::access(p, nix::unistd::AccessFlags::X_OK)
    };
    if arg0.contains(&b'/') {
        let p = if arg0.starts_with(b"/") {
            PathBuf::from(std::ffi::OsStr::from_bytes(arg0))
        } else {
            plan.process.cwd().join(std::ffi::OsStr::from_bytes(arg0))
        };
        return match check(&p) {
            Ok(()) => Ok(CString::new(p.as_os_str().as_bytes()).unwrap_or_default()),
            Err(e) => Err(LinuxError::sys(format!("exec: {name:?}: cannot run it"), e)),
        };
    }
    let path_var = plan
        .env
        .iter()
        .find_map(|e| e.to_bytes().strip_prefix(b"PATH=").map(|p| String::from_utf8_lossy(p).into_owned()))
        .unwrap_or_else(|| "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
    let mut denied = None;
    for dir in path_var.split(':') {
        let dir = if dir.is_empty() { "." } else { dir };
        let p = Path::new(dir).join(&name);
        match check(&p) {
            Ok(()) => return Ok(CString::new(p.as_os_str().as_bytes()).unwrap_or_default()),
            Err(Errno::EACCES) => denied = Some(p),
            Err(_) => {}
        }
    }
    match denied {
        Some(p) => Err(LinuxError::sys(format!("exec: {name:?}: permission denied ({})", p.display()), Errno::EACCES)),
        None => Err(LinuxError::sys(format!("exec: {name:?}: executable file not found in $PATH"), Errno::ENOENT)),
    }
}

/// Marks every fd from `first` up close-on-exec (CVE-2024-21626: no host
/// fd, such as a directory of ours, may survive into the workload).
fn close_inherited(first: u32) -> Result<(), LinuxError> {
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only changes fd flags.
    let r = unsafe { libc::syscall(libc::SYS_close_range, first, u32::MAX, libc::CLOSE_RANGE_CLOEXEC) };
    if r == 0 {
        return Ok(());
    }
    // Older kernels: walk the open fds instead.
    let fds: Vec<i32> = std::fs::read_dir("/proc/self/fd")
        .map_err(|e| LinuxError::io("cannot list open fds", e))?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|fd| *fd >= first as i32)
        .collect();
    for fd in fds {
        // SAFETY: F_SETFD on a descriptor number; harmless if it is closed.
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    }
    Ok(())
}

/// Default dispositions and an empty mask: the workload must not inherit
/// amphi's ignored SIGPIPE or its blocked signals.
fn reset_signals() {
    for sig in 1..=64 {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP || (32..=33).contains(&sig) {
            continue;
        }
        // SAFETY: resetting a disposition to SIG_DFL is always sound.
        unsafe { libc::signal(sig, libc::SIG_DFL) };
    }
    let empty = nix::sys::signal::SigSet::empty();
    let _ = nix::sys::signal::pthread_sigmask(nix::sys::signal::SigmaskHow::SIG_SETMASK, Some(&empty), None);
}
