//! `exec`: another process in a running container, started the way the
//! init is (a clone of amphi, no re-exec) and talking to the parent over
//! the same typed channel.
//!
//! The parent pins the container's init with a pidfd, finds which of its
//! namespaces differ from ours, and decides the process with the same
//! planning code as `create` ([`ProcessPlan`]; the container's seccomp
//! program comes compiled from its state directory). It enters the
//! container's pid namespace for its children only (setns on
//! pid_for_children, restored right after), so a single clone gives a
//! child that is already a process of the container, and on cgroup v2 is
//! born in the container's cgroup (clone3 CLONE_INTO_CGROUP).
//!
//! The child joins the v1 cgroups (writing "0" to each `tasks` file), takes
//! the container's oom_score_adj, joins every other namespace with one
//! setns(pidfd), makes its terminal from the container's devpts, drops
//! privileges like the init (caps, seccomp, rlimits, no_new_privs, user,
//! labels, fds close-on-exec) and execs. Nothing here depends on the host
//! beyond the container's own processes, so the same code runs inside the
//! VM isolation's guest.

use std::convert::Infallible;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::MetadataExt;

use nix::sched::CloneFlags;
use nix::sys::signal::Signal;
use nix::sys::wait::waitpid;
use nix::unistd::Pid;

use super::super::cgroups::{Join, Manager};
use super::super::scheduler::{self, Affinity};
use super::super::seccomp::{self, Filter};
use super::super::{console, LinuxError};
use super::clone_child;
use super::parent::{linux_state, SECCOMP_FILE};
use super::prepare::{failure_code, ProcessPlan};
use super::sync::{Channel, ToParent};
use crate::container::process;
use crate::container::sandbox::{Exec, ExecRequest};
use crate::container::state::{State, Status};
use crate::container::store::ContainerDir;

/// Namespaces as /proc/<pid>/ns names them, with their setns flags; pid
/// comes last and is handled apart (it only applies to children).
const NAMESPACES: [(&str, libc::c_int); 8] = [
    ("user", libc::CLONE_NEWUSER),
    ("mnt", libc::CLONE_NEWNS),
    ("net", libc::CLONE_NEWNET),
    ("ipc", libc::CLONE_NEWIPC),
    ("uts", libc::CLONE_NEWUTS),
    ("cgroup", libc::CLONE_NEWCGROUP),
    ("time", libc::CLONE_NEWTIME),
    ("pid", libc::CLONE_NEWPID),
];

/// The namespaces of `pid` that are not ours, as setns flags.
fn foreign_namespaces(pid: i32) -> Result<libc::c_int, LinuxError> {
    let mut flags = 0;
    for (name, flag) in NAMESPACES {
        let theirs = match std::fs::metadata(format!("/proc/{pid}/ns/{name}")) {
            Ok(m) => m,
            // A kernel without this namespace type.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && name == "time" => continue,
            Err(e) => return Err(LinuxError::io(format!("cannot inspect the container's {name} namespace"), e)),
        };
        let ours = std::fs::metadata(format!("/proc/self/ns/{name}"))
            .map_err(|e| LinuxError::io(format!("cannot inspect our own {name} namespace"), e))?;
        if (theirs.dev(), theirs.ino()) != (ours.dev(), ours.ino()) {
            flags |= flag;
        }
    }
    Ok(flags)
}

fn setns(fd: &impl AsFd, flags: libc::c_int, what: &str) -> Result<(), LinuxError> {
    nix::sched::setns(fd.as_fd(), CloneFlags::from_bits_retain(flags))
        .map_err(|e| LinuxError::sys(format!("cannot join the container's {what}"), e))
}

/// The init's root directory if it is not ours (a chroot in our mount
/// namespace), opened as an O_PATH fd.
fn different_root(root: &str) -> Result<Option<OwnedFd>, LinuxError> {
    let theirs = std::fs::metadata(root).map_err(|e| LinuxError::io("cannot inspect the container's root", e))?;
    let ours = std::fs::metadata("/").map_err(|e| LinuxError::io("cannot inspect our root", e))?;
    if (theirs.dev(), theirs.ino()) == (ours.dev(), ours.ino()) {
        return Ok(None);
    }
    let fd = nix::fcntl::open(
        root,
        nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|e| LinuxError::sys("cannot open the container's root", e))?;
    Ok(Some(fd))
}

/// Everything the child needs, decided by the parent.
struct ExecChild<'a> {
    plan: ProcessPlan<'a>,
    /// The container's state directory: closed first thing, so a child
    /// that outlives a killed `amphi exec` (say, frozen in a paused
    /// container) holds nothing of amphi's.
    state_dir: RawFd,
    init: &'a OwnedFd,
    /// setns flags for the child (all foreign namespaces but pid).
    namespaces: libc::c_int,
    /// The init's root, for a container without a mount namespace of its
    /// own (its init chrooted into the rootfs): the child chroots there.
    chroot: Option<OwnedFd>,
    join: &'a Join,
    affinity: Affinity,
    oom_score_adj: Option<String>,
    console_size: Option<(u16, u16)>,
}

impl ExecChild<'_> {
    fn run(&self, chan: &Channel) -> i32 {
        let e = match self.setup(chan) {
            Ok(never) => match never {},
            Err(e) => e,
        };
        let msg = crate::logging::chain(&e);
        if chan.send(&ToParent::Error(msg.clone()), None).is_err() {
            eprintln!("amphi exec: {msg}");
        }
        failure_code(&e)
    }

    fn setup(&self, chan: &Channel) -> Result<Infallible, LinuxError> {
        use nix::sys::prctl;
        let errno = |what: &'static str| move |e| LinuxError::sys(what, e);
        // SAFETY: our copy of the directory fd; nothing in the child uses it.
        unsafe { libc::close(self.state_dir) };
        prctl::set_pdeathsig(Signal::SIGKILL).map_err(errno("prctl(PR_SET_PDEATHSIG)"))?;
        // Until execve, our /proc/<pid>/exe is amphi: nobody in the
        // container may open it or ptrace us (CVE-2019-5736).
        prctl::set_dumpable(false).map_err(errno("prctl(PR_SET_DUMPABLE)"))?;
        if let Some(cpus) = &self.affinity.initial {
            scheduler::set_affinity(cpus, "initial")?;
        }
        self.join.join_self()?;
        if let Some(cpus) = &self.affinity.last {
            scheduler::set_affinity(cpus, "final")?;
        }
        if let Some(adj) = &self.oom_score_adj {
            set_oom_score_adj(adj);
        }
        if self.namespaces != 0 {
            setns(self.init, self.namespaces, "namespaces")?;
        }
        if let Some(root) = &self.chroot {
            nix::unistd::fchdir(root.as_fd()).map_err(errno("cannot enter the container's root"))?;
            nix::unistd::chroot(".").map_err(errno("cannot chroot into the container's root"))?;
        }
        let master = if self.plan.process.terminal().unwrap_or(false) {
            Some(console::setup(self.console_size)?.0)
        } else {
            None
        };
        let program = self.plan.drop_privileges(self.namespaces & libc::CLONE_NEWUSER != 0, chan)?;
        prctl::set_pdeathsig(None).map_err(errno("prctl(PR_SET_PDEATHSIG)"))?;
        chan.send(&ToParent::Ready { console: master.is_some() }, master.as_ref().map(|m| m.as_raw_fd()))
            .map_err(errno("sync with exec"))?;
        drop(master);
        self.plan.exec(&program)
    }
}

/// The container's oom_score_adj, as runc gives it to exec'd processes.
/// Lowering it needs CAP_SYS_RESOURCE; without it the inherited value
/// stays (with a debug message) rather than failing the exec.
fn set_oom_score_adj(adj: &str) {
    let current = std::fs::read_to_string("/proc/self/oom_score_adj").unwrap_or_default();
    if current.trim() == adj {
        return;
    }
    if let Err(e) = std::fs::write("/proc/self/oom_score_adj", adj) {
        crate::logging::debug(&format!("exec: oom_score_adj {adj} not set: {e}"));
    }
}

/// Kills and reaps a child that did not make it to its program.
struct ChildGuard(Option<i32>);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(pid) = self.0 {
            let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
            let _ = waitpid(Pid::from_raw(pid), None);
        }
    }
}

/// Enters a pid namespace for our children until dropped.
struct PidNsForChildren(Option<OwnedFd>);

impl PidNsForChildren {
    fn enter(init: &OwnedFd) -> Result<PidNsForChildren, LinuxError> {
        let ours = std::fs::File::open("/proc/self/ns/pid_for_children")
            .map_err(|e| LinuxError::io("cannot open our pid_for_children namespace", e))?;
        setns(init, libc::CLONE_NEWPID, "pid namespace")?;
        Ok(PidNsForChildren(Some(ours.into())))
    }
}

impl Drop for PidNsForChildren {
    fn drop(&mut self) {
        // Later children of this process (a long-lived caller) belong to
        // its own pid namespace again.
        if let Some(fd) = self.0.take() {
            let _ = nix::sched::setns(fd.as_fd(), CloneFlags::CLONE_NEWPID);
        }
    }
}

pub fn exec(dir: &ContainerDir, state: &State, req: &ExecRequest<'_>) -> Result<Exec, LinuxError> {
    let process = req.process;
    if let (Some(p), true) = (&req.console_socket, process.terminal().unwrap_or(false)) {
        console::check_socket(p)?;
    }
    let init = process::pidfd(state.pid, state.pid_start_time)
        .map_err(|e| LinuxError::sys("cannot watch the container's init", e))?
        .ok_or(LinuxError::ExitedBeforeExec)?;
    let foreign = foreign_namespaces(state.pid)?;
    let saved = linux_state(state);
    let filter = match &saved.seccomp {
        Some(s) => {
            let path = dir.path.join(SECCOMP_FILE);
            let bpf = std::fs::read(&path).map_err(|e| {
                LinuxError::io(format!("cannot read the container's seccomp program {}", path.display()), e)
            })?;
            Some(Filter::from_saved(s, bpf)?)
        }
        None => None,
    };
    if let Some(l) = filter.as_ref().and_then(|f| f.notify.as_ref()) {
        seccomp::check_listener(l)?;
    }
    let root = format!("/proc/{}/root", state.pid);
    let chroot = if foreign & libc::CLONE_NEWNS == 0 { different_root(&root)? } else { None };
    let plan = ProcessPlan::new(
        process,
        filter.clone(),
        || std::fs::read_to_string(format!("{root}/etc/passwd")).ok(),
        3 + req.preserve_fds,
    )?;
    let affinity = match process.exec_cpu_affinity() {
        Some(a) => Affinity::from_spec(a)?,
        None => Affinity::default(),
    };
    let join = Manager::from_state(saved.cgroup).open_join()?;
    let child = ExecChild {
        plan,
        state_dir: dir.fd(),
        init: &init,
        namespaces: foreign & !libc::CLONE_NEWPID,
        chroot,
        join: &join,
        affinity,
        oom_score_adj: std::fs::read_to_string(format!("/proc/{}/oom_score_adj", state.pid))
            .ok()
            .map(|s| s.trim().to_string()),
        console_size: process.console_size().as_ref().map(|b| (b.height() as u16, b.width() as u16)),
    };

    let (ours, theirs) = Channel::pair().map_err(|e| LinuxError::sys("cannot create the sync socketpair", e))?;
    let pid = {
        let _pidns = if foreign & libc::CLONE_NEWPID != 0 { Some(PidNsForChildren::enter(&init)?) } else { None };
        let into = join.clone_into.as_ref().map(|f| f.as_raw_fd());
        clone_child(CloneFlags::empty(), into, || {
            // SAFETY: the child owns its copy of this fd and never uses it.
            unsafe { libc::close(ours.raw()) };
            child.run(&theirs)
        })
        .map_err(|e| LinuxError::sys("cannot clone the exec process", e))?
    };
    drop(theirs);
    let mut guard = ChildGuard(Some(pid));
    let listener_state = || {
        let mut s = state.to_oci(Status::Running);
        s.pid = state.pid;
        s
    };
    let master: Option<OwnedFd> = loop {
        match ours.recv::<ToParent>() {
            Ok(Some((ToParent::Ready { console }, fd))) => break if console { fd } else { None },
            Ok(Some((ToParent::SeccompListener, Some(fd)))) => {
                let l = filter.as_ref().and_then(|f| f.notify.as_ref());
                let l = l.ok_or_else(|| LinuxError::ExecFailed("a seccomp listener fd nobody asked for".into()))?;
                seccomp::send_to_listener(l, &fd, pid, &listener_state())?;
            }
            Ok(Some((ToParent::Error(msg), _))) => return Err(LinuxError::ExecFailed(msg)),
            Ok(Some((other, _))) => return Err(LinuxError::ExecFailed(format!("unexpected message {other:?}"))),
            Ok(None) => return Err(LinuxError::ExecFailed("the process ended during its setup".into())),
            Err(e) => return Err(LinuxError::sys("sync with the exec process", e)),
        }
    };
    let console = match (&req.console_socket, master) {
        (Some(path), Some(m)) => {
            console::send_to_socket(path, m.as_raw_fd())?;
            None
        }
        (_, m) => m,
    };
    // The channel closes when execve succeeds (close-on-exec); an error
    // message means it did not.
    match ours.recv::<ToParent>() {
        Ok(None) => {}
        Ok(Some((ToParent::Error(msg), _))) => return Err(LinuxError::ExecFailed(msg)),
        Ok(Some((other, _))) => return Err(LinuxError::ExecFailed(format!("unexpected message {other:?}"))),
        Err(e) => return Err(LinuxError::sys("sync with the exec process", e)),
    }
    guard.0 = None;
    Ok(Exec { pid, console })
}
