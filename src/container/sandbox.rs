//! The seam between the shared lifecycle and one isolation.
//!
//! The lifecycle ([`super::Runtime`]) owns ids, the state store, locking,
//! status, runtime-namespace hooks and the pid file; a [`Sandbox`] owns what
//! differs between a Linux container and a microVM. The state file records
//! which isolation a container uses, so later commands pick the same one.

use std::os::fd::OwnedFd;
use std::path::PathBuf;

use nix::sys::signal::Signal;

use super::hooks::HookError;
use super::state::State;
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
}

impl std::fmt::Debug for Created {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Created")
            .field("pid", &self.pid)
            .field("console", &self.console)
            .field("launcher", &self.launcher.is_some())
            .finish()
    }
}

/// Releases an attached container's process (the in-process `start`).
pub trait Launch {
    fn launch(self: Box<Self>) -> Result<(), SandboxError>;
}

/// One isolation: everything that differs between a container and a VM.
pub trait Sandbox {
    /// Builds the container up to the point where its process waits to be
    /// started. On error, everything this call made is gone again.
    fn create(&self, req: &CreateRequest<'_>, hooks: &mut RuntimeHooks<'_>) -> Result<Created, SandboxError>;

    /// Releases a created container's process (exec fifo).
    fn start(&self, dir: &ContainerDir, state: &State) -> Result<(), SandboxError>;

    /// Signals the container's init, or every process in it.
    fn kill(&self, state: &State, signal: Signal, all: bool) -> Result<(), SandboxError>;

    /// Releases the host resources of a stopped container (cgroups, VMM
    /// leftovers). Idempotent.
    fn destroy(&self, state: &State) -> Result<(), SandboxError>;
}

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error(transparent)]
    Linux(#[from] crate::linux::LinuxError),
    #[error(transparent)]
    Hook(#[from] HookError),
    #[error("{0}")]
    Unsupported(String),
}

/// An isolation this build cannot run bundles in yet: every operation
/// refuses with an explanation instead of pretending to work.
#[derive(Debug)]
pub struct NotYet(pub crate::spec::Isolation);

impl NotYet {
    fn refuse<T>(&self) -> Result<T, SandboxError> {
        Err(SandboxError::Unsupported(format!(
            "the {} isolation cannot run bundles in this build: `amphi vm check` boots the guest \
             and reaches its agent, running OCI bundles inside it comes next; use \
             --isolation container (or drop the run.amphi.isolation annotation) meanwhile",
            self.0
        )))
    }
}

impl Sandbox for NotYet {
    fn create(&self, _: &CreateRequest<'_>, _: &mut RuntimeHooks<'_>) -> Result<Created, SandboxError> {
        self.refuse()
    }
    fn start(&self, _: &ContainerDir, _: &State) -> Result<(), SandboxError> {
        self.refuse()
    }
    fn kill(&self, _: &State, _: Signal, _: bool) -> Result<(), SandboxError> {
        self.refuse()
    }
    fn destroy(&self, _: &State) -> Result<(), SandboxError> {
        self.refuse()
    }
}
