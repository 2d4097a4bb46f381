//! The `create` side: plan the container, clone its init, place it in its
//! cgroups, run the runtime-namespace hooks when it asks, and wait until it
//! is ready. Any failure kills the init and removes what was made.

use std::os::fd::OwnedFd;

use nix::sys::signal::Signal;
use nix::sys::wait::waitpid;
use nix::unistd::Pid;

use super::super::cgroups::{CgroupConfig, CgroupState, FreezerState, Manager};
use super::super::namespaces::{self, NamespacePlan};
use super::super::rootfs::RootfsPlan;
use super::super::{console, devices, seccomp, LinuxError};
use super::init::{self, InitPlan};
use super::prepare::ProcessPlan;
use super::sync::{Channel, ToChild, ToParent};
use super::{clone_child, fifo};
use crate::container::process;
use crate::container::sandbox::{Commit, CreateRequest, Created, Launch, LaunchMode, RuntimeHooks, SandboxError};
use crate::container::signal::Sig;
use crate::container::state::{OciState, State, Status};

/// What the state file keeps for the Linux isolation.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct LinuxState {
    pub cgroup: CgroupState,
    /// The container's seccomp filter, for `exec` (the program itself is
    /// in [`SECCOMP_FILE`] in the container's directory).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seccomp: Option<seccomp::Saved>,
}

/// The compiled seccomp program, in the container's state directory.
pub const SECCOMP_FILE: &str = "seccomp.bpf";

pub fn create(req: &CreateRequest<'_>, hooks: &mut RuntimeHooks<'_>) -> Result<Created, LinuxError> {
    let spec = &req.bundle.spec;
    let process = spec.process().as_ref();
    let linux = spec.linux().clone().unwrap_or_default();
    let ns = NamespacePlan::from_spec(linux.namespaces().as_deref().unwrap_or(&[]));
    if ns.new_time && !namespaces::time_supported() {
        return Err(LinuxError::Config(
            "linux.namespaces asks for a time namespace, which this kernel lacks (needs Linux 5.6): remove it".into(),
        ));
    }
    let terminal = process.and_then(|p| p.terminal()).unwrap_or(false);
    crate::container::sandbox::check_terminal(req.console_socket.as_deref(), terminal, req.keep_console)
        .map_err(|m| LinuxError::Config(m.into()))?;
    if let (Some(p), true) = (&req.console_socket, terminal) {
        console::check_socket(p)?;
    }

    let mut cgroups = Manager::new(&CgroupConfig {
        id: req.id,
        cgroups_path: req.cgroups_path.as_deref(),
        resources: linux.resources().as_ref(),
        linux_devices: linux.devices().as_deref(),
    })?;
    let view = cgroups.view();
    let filter = linux.seccomp().as_ref().map(seccomp::compile).transpose()?;
    if let Some(f) = &filter {
        if !f.skipped.is_empty() && crate::logging::debug_enabled() {
            crate::logging::debug(&format!("seccomp: syscalls unknown here, skipped: {}", f.skipped.join(" ")));
        }
    }
    if let Some(l) = filter.as_ref().and_then(|f| f.notify.as_ref()) {
        seccomp::check_listener(l)?;
    }
    let devices = devices::all_devices(linux.devices().as_deref().unwrap_or(&[]))?;
    let listen_fds: u32 = std::env::var("LISTEN_FDS").ok().and_then(|v| v.parse().ok()).unwrap_or(0);
    let process_plan = match process {
        Some(p) => Some(ProcessPlan::new(
            p,
            filter.clone(),
            || std::fs::read_to_string(req.bundle.rootfs.join("etc/passwd")).ok(),
            3 + listen_fds + req.preserve_fds,
        )?),
        None => None,
    };
    let time_offsets = linux
        .time_offsets()
        .iter()
        .flatten()
        .map(|(clock, o)| format!("{clock} {} {}\n", o.secs().unwrap_or(0), o.nanosecs().unwrap_or(0)))
        .collect::<String>();
    let runtime_hooks = spec.hooks().as_ref().is_some_and(|h| {
        h.prestart().as_ref().is_some_and(|l| !l.is_empty())
            || h.create_runtime().as_ref().is_some_and(|l| !l.is_empty())
    });

    // Everything that can be checked is checked: only now make cgroups, and
    // from here on the guard removes them (and the init) on any failure.
    let join = match cgroups.prepare() {
        Ok(j) => j,
        Err(e) => {
            let _ = cgroups.destroy();
            return Err(e.into());
        }
    };
    let mut guard = InitGuard { pid: None, cgroups: &cgroups, cgroups_made: true };

    let plan = InitPlan {
        id: req.id,
        spec,
        process: process_plan,
        rootfs: RootfsPlan {
            spec,
            rootfs: &req.bundle.rootfs,
            bundle: &req.bundle.dir,
            in_userns: ns.in_userns(),
            own_netns: ns.new.contains(nix::sched::CloneFlags::CLONE_NEWNET),
            cgroupns: ns.new_cgroup,
            cgroups: &view,
            devices,
        },
        ns,
        cgroups: &join,
        mode: req.mode,
        dir_fd: req.dir.fd(),
        no_pivot: req.no_pivot,
        no_new_keyring: req.no_new_keyring,
        runtime_hooks,
        state: OciState {
            oci_version: spec.version().clone(),
            id: req.id.to_string(),
            pid: 0,
            status: Status::Creating,
            bundle: req.bundle.dir.clone(),
            rootfs: req.bundle.rootfs.clone(),
            created: String::new(),
            owner: String::new(),
            annotations: spec.annotations().clone().unwrap_or_default(),
        },
        time_offsets,
    };
    if let Some(f) = &filter {
        // For `exec`, which loads the same program without compiling it.
        let path = req.dir.path.join(SECCOMP_FILE);
        crate::container::store::write_atomic(&path, f.bpf(), 0o600)
            .map_err(|e| LinuxError::io(format!("cannot save the seccomp program in {}", path.display()), e))?;
    }
    if req.mode == LaunchMode::Deferred {
        fifo::make(req.dir)?;
    }
    let (ours, theirs) = Channel::pair().map_err(|e| LinuxError::sys("cannot create the sync socketpair", e))?;

    let pid = spawn(&plan, &ours, &theirs, &mut guard)?;
    drop(theirs);
    guard.pid = Some(pid);

    ours.send(&ToChild::Proceed { pid }, None).map_err(|e| LinuxError::sys("sync with the init", e))?;

    let console: Option<OwnedFd> = loop {
        match ours.recv::<ToParent>() {
            Ok(Some((ToParent::Hooks, _))) => {
                hooks(pid)?;
                ours.send(&ToChild::HooksDone, None).map_err(|e| LinuxError::sys("sync with the init", e))?;
            }
            Ok(Some((ToParent::Ready { console }, fd))) => break if console { fd } else { None },
            Ok(Some((ToParent::SeccompListener, Some(fd)))) => {
                let listener = filter.as_ref().and_then(|f| f.notify.as_ref());
                let l = listener.ok_or_else(|| LinuxError::Init("a seccomp listener fd nobody asked for".into()))?;
                let mut state = plan.state.clone();
                state.pid = pid;
                seccomp::send_to_listener(l, &fd, pid, &state)?;
            }
            Ok(Some((ToParent::Error(msg), _))) => return Err(LinuxError::Init(msg)),
            Ok(Some((other, _))) => return Err(LinuxError::Init(format!("unexpected message {other:?}"))),
            Ok(None) => return Err(LinuxError::InitDied(exit_status(pid))),
            Err(e) => return Err(LinuxError::sys("sync with the init", e)),
        }
    };
    let console = match (&req.console_socket, console) {
        (Some(path), Some(master)) => {
            console::send_to_socket(path, std::os::fd::AsRawFd::as_raw_fd(&master))?;
            None
        }
        (_, c) => c,
    };
    let (start_time, _) = process::stat(pid).ok_or_else(|| LinuxError::InitDied(exit_status(pid)))?;
    let saved = LinuxState { cgroup: cgroups.state().clone(), seccomp: filter.as_ref().map(seccomp::Filter::to_saved) };
    let sandbox_state =
        serde_json::to_value(saved).map_err(|e| LinuxError::Config(format!("cannot record the cgroup state: {e}")))?;
    guard.disarm();
    // The init dies with us until told otherwise: at `start` for `run`
    // (the launcher), once the state is recorded for `create` (the commit).
    let mut launcher: Option<Box<dyn Launch>> = None;
    let mut commit: Option<Box<dyn Commit>> = None;
    match req.mode {
        LaunchMode::Attached => launcher = Some(Box::new(Attached { chan: ours })),
        LaunchMode::Deferred => commit = Some(Box::new(CommitInit { chan: ours })),
    }
    Ok(Created { pid, pid_start_time: start_time, sandbox_state, console, launcher, commit })
}

/// What [`create`] will record, before anything exists: the cgroups'
/// paths, from the id and cgroupsPath alone.
pub fn plan(id: &str, cgroups_path: Option<&std::path::Path>) -> Result<serde_json::Value, LinuxError> {
    serde_json::to_value(LinuxState { cgroup: Manager::plan(id, cgroups_path)?, seccomp: None })
        .map_err(|e| LinuxError::Config(format!("cannot record the cgroup state: {e}")))
}

/// `create`'s commit: the init stops dying with `create` and says so
/// before `create` may exit.
struct CommitInit {
    chan: Channel,
}

impl Commit for CommitInit {
    fn commit(self: Box<Self>) -> Result<(), SandboxError> {
        let sync = |e| LinuxError::sys("cannot hand the container over to its init", e);
        self.chan.send(&ToChild::Commit, None).map_err(sync)?;
        match self.chan.recv::<ToParent>() {
            Ok(Some((ToParent::Committed, _))) => Ok(()),
            Ok(Some((ToParent::Error(m), _))) => Err(LinuxError::Init(m).into()),
            Ok(Some((other, _))) => Err(LinuxError::Init(format!("unexpected message {other:?}")).into()),
            Ok(None) => Err(LinuxError::ExitedBeforeStart.into()),
            Err(e) => Err(sync(e).into()),
        }
    }
}

/// Clones the init, directly (fast path) or through an intermediate that
/// joins namespaces first.
fn spawn(plan: &InitPlan<'_>, ours: &Channel, theirs: &Channel, guard: &mut InitGuard<'_>) -> Result<i32, LinuxError> {
    if plan.ns.fast_path() {
        let into = plan.cgroups.clone_into.as_ref().map(std::os::fd::AsRawFd::as_raw_fd);
        let pid = clone_child(plan.ns.new, into, || {
            close_parent_end(ours);
            init::run(plan, theirs)
        })
        .map_err(|e| LinuxError::sys("cannot clone the container init (are these namespaces supported?)", e))?;
        guard.pid = Some(pid);
        if plan.ns.new_user() {
            let linux = plan.spec.linux().as_ref();
            namespaces::write_id_maps(
                pid,
                linux.and_then(|l| l.uid_mappings().as_deref()).unwrap_or(&[]),
                linux.and_then(|l| l.gid_mappings().as_deref()).unwrap_or(&[]),
            )?;
        }
        return Ok(pid);
    }
    let joins = namespaces::open_joins(&plan.ns)?;
    let mid = clone_child(nix::sched::CloneFlags::empty(), None, || {
        close_parent_end(ours);
        init::intermediate(plan, theirs, &joins)
    })
    .map_err(|e| LinuxError::sys("cannot fork the namespace-joining process", e))?;
    let result = (|| loop {
        match ours.recv::<ToParent>() {
            Ok(Some((ToParent::MapsPlease, _))) => {
                let linux = plan.spec.linux().as_ref();
                namespaces::write_id_maps(
                    mid,
                    linux.and_then(|l| l.uid_mappings().as_deref()).unwrap_or(&[]),
                    linux.and_then(|l| l.gid_mappings().as_deref()).unwrap_or(&[]),
                )?;
                ours.send(&ToChild::MapsDone, None).map_err(|e| LinuxError::sys("sync", e))?;
            }
            Ok(Some((ToParent::Pid(p), _))) => return Ok(p),
            Ok(Some((ToParent::Error(m), _))) => return Err(LinuxError::Init(m)),
            Ok(_) => return Err(LinuxError::InitDied(exit_status(mid))),
            Err(e) => return Err(LinuxError::sys("sync", e)),
        }
    })();
    let _ = waitpid(Pid::from_raw(mid), None);
    result
}

/// In the child: drops its copy of the parent's end, so that the init sees
/// EOF when the parent goes away.
fn close_parent_end(ours: &Channel) {
    // SAFETY: the child owns its copy of this fd and never uses it.
    unsafe { libc::close(ours.raw()) };
}

/// Undoes a half-made container: kills the init, reaps it, removes its
/// cgroups. Disarmed once `create` succeeds.
struct InitGuard<'a> {
    pid: Option<i32>,
    cgroups: &'a Manager,
    cgroups_made: bool,
}

impl InitGuard<'_> {
    fn disarm(&mut self) {
        self.pid = None;
        self.cgroups_made = false;
    }
}

impl Drop for InitGuard<'_> {
    fn drop(&mut self) {
        if let Some(pid) = self.pid {
            let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
            let _ = waitpid(Pid::from_raw(pid), None);
        }
        if self.cgroups_made {
            let _ = self.cgroups.destroy();
        }
    }
}

/// How a child ended, for messages (reaps it if it has).
fn exit_status(pid: i32) -> String {
    use nix::sys::wait::{WaitPidFlag, WaitStatus};
    for _ in 0..100 {
        match waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(_, c)) => return format!("exit status {c}"),
            Ok(WaitStatus::Signaled(_, s, _)) => return format!("killed by {s}"),
            Ok(WaitStatus::StillAlive) => std::thread::sleep(std::time::Duration::from_millis(1)),
            _ => break,
        }
    }
    "status unknown".into()
}

/// `run`'s in-process start: tells the init to exec and waits until it has
/// (the channel closes on exec) or reports why it could not.
struct Attached {
    chan: Channel,
}

impl Launch for Attached {
    fn launch(self: Box<Self>) -> Result<(), SandboxError> {
        let sync = |e| LinuxError::sys("cannot start the container process", e);
        self.chan.send(&ToChild::Start, None).map_err(sync)?;
        match self.chan.recv::<ToParent>() {
            Ok(None) => Ok(()),
            Ok(Some((ToParent::Error(m), _))) => Err(LinuxError::Init(m).into()),
            Ok(Some((other, _))) => Err(LinuxError::Init(format!("unexpected message {other:?}")).into()),
            Err(e) => Err(sync(e).into()),
        }
    }
}

/// The container's cgroups, from the state file.
pub fn manager(state: &State) -> Result<Manager, LinuxError> {
    Ok(Manager::from_state(linux_state(state).cgroup))
}

/// What the Linux isolation recorded at create.
pub fn linux_state(state: &State) -> LinuxState {
    serde_json::from_value(state.sandbox.clone()).unwrap_or_default()
}

/// `kill`: the init, or every process of the container's cgroup. SIGKILL
/// thaws a paused container afterwards, or the frozen processes would not
/// die until someone resumed it (as runc does).
pub fn kill(state: &State, signal: Sig, all: bool) -> Result<(), LinuxError> {
    let cg = manager(state)?;
    if all {
        // Through the cgroup, frozen while it is signalled, so that no
        // process can fork a new one past the signal.
        cg.signal_all(signal.number())?;
    }
    let r = match process::signal(state.pid, state.pid_start_time, signal) {
        Ok(_) => Ok(()),
        Err(e) => Err(LinuxError::sys(format!("cannot send {signal} to the container"), e)),
    };
    if signal == Sig::KILL && state.paused && cg.freezer_state().is_ok_and(|s| s != FreezerState::Thawed) {
        cg.thaw()?;
    }
    r
}

/// `delete`: removes the container's cgroups. Processes still in them
/// (a container without a pid namespace of its own keeps its children
/// when the init exits) are killed first, as runc does.
pub fn destroy(state: &State) -> Result<(), LinuxError> {
    Ok(manager(state)?.kill_and_destroy()?)
}
