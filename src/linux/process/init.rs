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

use nix::errno::Errno;
use nix::sched::CloneFlags;
use nix::unistd::{Gid, Uid};
use oci_spec::runtime::{LinuxNamespaceType, Spec};

use super::super::cgroups::Join;
use super::super::namespaces::{self, NamespacePlan};
use super::super::rootfs::{self, RootfsPlan};
use super::super::{console, LinuxError};
use super::prepare::{failure_code, ProcessPlan};
use super::sync::{Channel, ToChild, ToParent};
use crate::container::hooks::{self, HookKind};
use crate::container::sandbox::LaunchMode;
use crate::container::state::{OciState, Status};

/// What the init does, decided by the parent before cloning.
#[derive(Debug)]
pub struct InitPlan<'a> {
    pub id: &'a str,
    pub spec: &'a Spec,
    /// None for a config.json without process: the init sets the container
    /// up and waits, but never runs anything.
    pub process: Option<ProcessPlan<'a>>,
    pub ns: NamespacePlan,
    /// How the init joins its cgroups.
    pub cgroups: &'a Join,
    pub rootfs: RootfsPlan<'a>,
    pub mode: LaunchMode,
    /// The container's state directory (for the exec fifo).
    pub dir_fd: RawFd,
    pub no_pivot: bool,
    pub no_new_keyring: bool,
    /// The parent has prestart/createRuntime hooks to run mid-setup.
    pub runtime_hooks: bool,
    /// State for hooks run inside the container (pid and status filled in).
    pub state: OciState,
    /// Content for /proc/self/timens_offsets.
    pub time_offsets: String,
}

fn errno_step(what: &str) -> impl FnOnce(Errno) -> LinuxError + '_ {
    move |e| LinuxError::sys(what, e)
}

/// Entry point in the cloned child: sets up, execs, never returns.
pub fn run(plan: &InitPlan<'_>, chan: &Channel) -> i32 {
    let e = match super::release_lock(plan.dir_fd).and_then(|()| setup_and_exec(plan, chan)) {
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
    failure_code(&e)
}

/// The intermediate process of the joining path: joins namespaces in the
/// right order, makes the new ones (owned by the right user namespace),
/// then forks the init into its pid namespace, reports its pid and exits.
pub fn intermediate(plan: &InitPlan<'_>, chan: &Channel, joins: &[(LinuxNamespaceType, std::os::fd::OwnedFd)]) -> i32 {
    let r = (|| -> Result<i32, LinuxError> {
        use nix::sys::prctl;
        // Before joining anything: a process of the container that could
        // ptrace us once we are in its namespaces would reach amphi's
        // memory and descriptors (CVE-2016-9962). The init inherits it.
        prctl::set_dumpable(false).map_err(errno_step("prctl(PR_SET_DUMPABLE)"))?;
        prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL).map_err(errno_step("prctl(PR_SET_PDEATHSIG)"))?;
        super::release_lock(plan.dir_fd)?;
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
    // Die with `create` until it has recorded the container (Commit), so a
    // `create` killed at any moment leaves no init behind. Changing the
    // effective ids clears the setting: it is armed again after each.
    let die_with_create =
        || prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL).map_err(errno_step("prctl(PR_SET_PDEATHSIG)"));
    die_with_create()?;
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
        die_with_create()?;
    }
    let process = plan.process.as_ref().map(|p| p.process);
    if let Some(adj) = process.and_then(|p| p.oom_score_adj()) {
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

    let terminal = process.and_then(|p| p.terminal()).unwrap_or(false);
    let master = if terminal {
        let size = process.and_then(|p| p.console_size().as_ref().map(|b| (b.height() as u16, b.width() as u16)));
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
    if let Some(p) = process {
        rootfs::make_cwd(p.cwd())?;
    }
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
    let program = match &plan.process {
        Some(p) => Some(p.drop_privileges(plan.ns.in_userns(), chan)?),
        None => None,
    };

    die_with_create()?;

    chan.send(&ToParent::Ready { console: master.is_some() }, master.as_ref().map(|m| m.as_raw_fd()))
        .map_err(errno_step("sync with create"))?;
    drop(master);

    // EOF instead of Commit or Start: `create` or `run` died before the
    // container was recorded (the parent-death signal may not have come
    // yet): nothing may stay behind.
    let committed = |want: ToChild| match chan.recv::<ToChild>() {
        Ok(Some((got, _))) if got == want => prctl::set_pdeathsig(None).map_err(errno_step("prctl(PR_SET_PDEATHSIG)")),
        _ => Err(LinuxError::InitDied("create went away before it recorded the container".into())),
    };
    // Held open until exec closes it (see fifo::release).
    let _fifo = match plan.mode {
        LaunchMode::Deferred => {
            committed(ToChild::Commit)?;
            chan.send(&ToParent::Committed, None).map_err(errno_step("sync with create"))?;
            Some(super::fifo::wait_for_start(plan.dir_fd)?)
        }
        LaunchMode::Attached => {
            committed(ToChild::Start)?;
            None
        }
    };
    if let Some(list) = plan.spec.hooks().as_ref().and_then(|h| h.start_container().clone()) {
        hooks::run_all(HookKind::StartContainer, &list, &state_json(plan, host_pid, Status::Created))?;
    }
    match (&plan.process, &program) {
        (Some(p), Some(program)) => p.exec(program),
        // Nothing to run (`start` refuses such a container, and stops it).
        // SAFETY: ends this forked child without running the parent's
        // atexit handlers.
        _ => unsafe { libc::_exit(0) },
    }
}
