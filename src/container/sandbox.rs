//! The seam between the shared lifecycle and one isolation.
//!
//! The lifecycle ([`super::Runtime`]) owns ids, the state store, locking,
//! status, runtime-namespace hooks and the pid file; a [`Sandbox`] owns what
//! differs between a Linux container and a microVM. The state file records
//! which isolation a container uses, so later commands pick the same one.

use std::os::fd::OwnedFd;
use std::path::PathBuf;

use oci_spec::runtime::{LinuxResources, Process};

use super::hooks::HookError;
use super::signal::Sig;
use super::state::State;
use super::stats::Stats;
use super::store::ContainerDir;
use crate::spec::Bundle;

/// How the container's process is released once it is created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LaunchMode {
    /// `create`: the process waits until a later `start` (exec fifo).
    Deferred,
    /// `run`: the caller releases it in the same invocation.
    Attached,
}

/// Everything an isolation needs to create a container.
#[derive(Debug)]
pub struct CreateRequest<'a> {
    pub id: &'a str,
    pub bundle: &'a Bundle,
    pub dir: &'a ContainerDir,
    pub console_socket: Option<PathBuf>,
    pub preserve_fds: u32,
    pub no_pivot: bool,
    pub no_new_keyring: bool,
    /// cgroupfs path to use, already converted from systemd's notation.
    pub cgroups_path: Option<PathBuf>,
    pub mode: LaunchMode,
    /// `run` in the foreground with a terminal and no console socket: the
    /// pty master comes back in [`Created::console`].
    pub keep_console: bool,
    /// `--vm-template`: false turns VM templates off for this container.
    pub vm_template: Option<bool>,
}

/// Called by the isolation when the container's namespaces exist and the
/// runtime-namespace hooks (prestart, createRuntime) must run, with the pid
/// that stands for the container.
pub type RuntimeHooks<'a> = dyn FnMut(i32) -> Result<(), HookError> + 'a;

/// The result of a successful create.
pub struct Created {
    pub pid: i32,
    pub pid_start_time: u64,
    /// Stored in the state file; given back to every later call.
    pub sandbox_state: serde_json::Value,
    pub console: Option<OwnedFd>,
    /// Present in [`LaunchMode::Attached`]: releases the process.
    pub launcher: Option<Box<dyn Launch>>,
    /// Called once the state file records the container: until then the
    /// container dies with the process that creates it, so that a `create`
    /// killed before recording it leaves nothing running.
    pub commit: Option<Box<dyn Commit>>,
}

impl std::fmt::Debug for Created {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Created")
            .field("pid", &self.pid)
            .field("console", &self.console)
            .field("launcher", &self.launcher.is_some())
            .field("commit", &self.commit.is_some())
            .finish()
    }
}

/// Releases an attached container's process (the in-process `start`).
pub trait Launch {
    fn launch(self: Box<Self>) -> Result<(), SandboxError>;
}

/// Hands a created container over to itself: from here on it outlives the
/// process that created it.
pub trait Commit {
    fn commit(self: Box<Self>) -> Result<(), SandboxError>;
}

/// An extra process to start in a running container (`exec`). The pid
/// file, `--detach` and the foreground wait are the lifecycle's business;
/// the isolation only starts the process.
#[derive(Debug)]
pub struct ExecRequest<'a> {
    /// The process to run, the exec flags already applied.
    pub process: &'a Process,
    /// Where the pty master goes when `process.terminal` is set.
    pub console_socket: Option<PathBuf>,
    /// A terminal without a console socket in the foreground: the pty
    /// master comes back in [`Exec::console`] for the caller to relay.
    pub keep_console: bool,
    /// Descriptors from 3 on that the process inherits (stdio is always
    /// inherited).
    pub preserve_fds: u32,
    /// The caller does not wait for the process (`exec --detach`).
    pub detach: bool,
}

/// A started exec process.
#[derive(Debug)]
pub struct Exec {
    /// The host pid that stands for the process: a child of the calling
    /// process, which exits with the process's status (128+N when signal N
    /// ended it) and passes on the signals it receives. In the container
    /// isolation it is the process itself; in the VM isolation a relay.
    pub pid: i32,
    /// The pty master, when asked for with [`ExecRequest::keep_console`].
    pub console: Option<OwnedFd>,
}

/// One isolation: everything that differs between a container and a VM.
pub trait Sandbox {
    /// What [`Created::sandbox_state`] will hold, as far as it names host
    /// resources (cgroups, sockets), known before any of them exists:
    /// recorded first, so that [`Sandbox::destroy`] finds them even when
    /// `create` is killed half-way. `cgroups_path` as in
    /// [`CreateRequest::cgroups_path`]; `dir` is the state directory.
    fn plan(
        &self,
        id: &str,
        cgroups_path: Option<&std::path::Path>,
        dir: &std::path::Path,
    ) -> Result<serde_json::Value, SandboxError>;

    /// Builds the container up to the point where its process waits to be
    /// started. On error, everything this call made is gone again.
    fn create(&self, req: &CreateRequest<'_>, hooks: &mut RuntimeHooks<'_>) -> Result<Created, SandboxError>;

    /// Releases a created container's process (exec fifo).
    fn start(&self, dir: &ContainerDir, state: &State) -> Result<(), SandboxError>;

    /// Signals the container's init, or every process in it. SIGKILL
    /// reaches a paused container too.
    fn kill(&self, state: &State, signal: Sig, all: bool) -> Result<(), SandboxError>;

    /// Releases the host resources of a stopped container (cgroups, VMM
    /// leftovers), killing whatever still runs in its cgroups. Idempotent;
    /// with a state from [`Sandbox::plan`] (pid 0) too.
    fn destroy(&self, state: &State) -> Result<(), SandboxError>;

    /// Starts an extra process in the container's namespaces and cgroup,
    /// with the container's seccomp filter and the process's own
    /// capabilities, rlimits, user and no_new_privs. Returns once the
    /// process runs its program, or fails with the reason it cannot.
    fn exec(&self, dir: &ContainerDir, state: &State, req: &ExecRequest<'_>) -> Result<Exec, SandboxError>;

    /// Freezes every process of the container.
    fn pause(&self, state: &State) -> Result<(), SandboxError>;

    /// Thaws a paused container.
    fn resume(&self, state: &State) -> Result<(), SandboxError>;

    /// Applies new resource limits to the running container. `resources`
    /// holds only what changes (see [`super::update::changes`]).
    fn update(&self, state: &State, resources: &LinuxResources) -> Result<(), SandboxError>;

    /// The container's processes, as pids the caller's `ps` would show
    /// (host pids for a container, guest pids for a VM), sorted.
    fn pids(&self, state: &State) -> Result<Vec<i32>, SandboxError>;

    /// `ps` as a table: ps(1) run with `args` (`-ef` when empty) where the
    /// container's processes are visible, filtered to them
    /// ([`super::ps::table`]).
    fn ps(&self, state: &State, args: &[String]) -> Result<String, SandboxError>;

    /// Resource statistics, in runc's `events --stats` shape.
    fn stats(&self, state: &State) -> Result<Stats, SandboxError>;
}

/// Errors of an isolation. The lifecycle does not know the isolations'
/// own error types (`container/` depends on neither `linux/` nor `vm/`):
/// each converts its errors into [`SandboxError::Isolation`], keeping the
/// whole chain.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error(transparent)]
    Isolation(Box<dyn std::error::Error + Send + Sync + 'static>),
    #[error(transparent)]
    Hook(#[from] HookError),
    /// The request is valid but this isolation (or this host) cannot do it.
    #[error("{0}")]
    Unsupported(String),
    /// The bundle asks for something this isolation refuses (exit code
    /// "bad input").
    #[error("{0}")]
    BadConfig(String),
}

impl SandboxError {
    pub fn isolation(e: impl std::error::Error + Send + Sync + 'static) -> SandboxError {
        SandboxError::Isolation(Box::new(e))
    }
}

/// Picks the [`Sandbox`] for an isolation. The binary passes the real one
/// (`amphi::isolation::sandbox_for`); tests pass fakes.
pub type SandboxFor = fn(crate::spec::Isolation) -> Box<dyn Sandbox>;

/// The console socket and process.terminal must agree, in either
/// isolation: a socket without a terminal, or a terminal with nowhere to
/// send it (unless the caller keeps it, as `run` in the foreground does).
pub fn check_terminal(
    console_socket: Option<&std::path::Path>,
    terminal: bool,
    keep_console: bool,
) -> Result<(), &'static str> {
    match (console_socket, terminal) {
        (Some(_), false) => {
            Err("--console-socket was given but process.terminal is false: drop the flag or set terminal")
        }
        (None, true) if !keep_console => Err("process.terminal is true but no --console-socket was given to receive \
             the terminal: pass --console-socket or set terminal to false"),
        _ => Ok(()),
    }
}
