//! Container isolation: namespaces, rootfs and mounts, devices, cgroups,
//! capabilities, seccomp, rlimits and the console, set up the way runc
//! does, by a process cloned from amphi itself (no re-exec of a separate init
//! binary, which keeps `create` fast).
//!
//! The parent side ([`process::parent`]) and the container's init
//! ([`process::init`]) talk over a socketpair with typed messages; every
//! error the init meets reaches the caller of `create`.

pub mod capabilities;
pub mod cgroups;
pub mod console;
pub mod control;
pub mod devices;
pub mod exe;
pub mod lsm;
pub mod mounts;
pub mod namespaces;
pub mod net;
pub mod process;
pub mod rlimits;
pub mod rootfs;
pub mod scheduler;
pub mod seccomp;
pub mod user;

use std::path::PathBuf;

use nix::errno::Errno;
use oci_spec::runtime::LinuxResources;

use crate::container::sandbox::{CreateRequest, Created, Exec, ExecRequest, RuntimeHooks, Sandbox, SandboxError};
use crate::container::signal::Sig;
use crate::container::state::State;
use crate::container::stats::Stats;
use crate::container::store::ContainerDir;

#[derive(Debug, thiserror::Error)]
pub enum LinuxError {
    #[error("{what}")]
    Sys {
        what: String,
        #[source]
        errno: Errno,
    },
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// The program cannot be run (not found, not executable), in runc's
    /// words; `errno` picks the exit code (127 or 126).
    #[error("{msg}")]
    Program { msg: String, errno: Errno },
    /// An error the container's init reported, already carrying its chain.
    #[error("container init: {0}")]
    Init(String),
    #[error("container init exited during setup without saying why ({0})")]
    InitDied(String),
    #[error(transparent)]
    Cgroup(#[from] cgroups::CgroupError),
    #[error(transparent)]
    Hook(#[from] crate::container::hooks::HookError),
    #[error("container process exited before it could be started")]
    ExitedBeforeStart,
    #[error("the container's init has exited: there is nothing to exec into")]
    ExitedBeforeExec,
    /// The exec'd process could not be started; carries its error chain.
    #[error("exec failed: {0}")]
    ExecFailed(String),
    #[error(transparent)]
    Ps(#[from] crate::container::ps::PsError),
    #[error("exec fifo {0} is gone: the container was started already or is being deleted")]
    NoFifo(PathBuf),
    #[error("{0}")]
    Config(String),
}

impl LinuxError {
    pub fn sys(what: impl Into<String>, errno: Errno) -> LinuxError {
        LinuxError::Sys { what: what.into(), errno }
    }

    pub fn io(what: impl Into<String>, source: std::io::Error) -> LinuxError {
        LinuxError::Io { what: what.into(), source }
    }
}

impl From<LinuxError> for SandboxError {
    fn from(e: LinuxError) -> SandboxError {
        SandboxError::isolation(e)
    }
}

/// The Linux container isolation.
#[derive(Debug, Default, Clone, Copy)]
pub struct LinuxSandbox;

impl Sandbox for LinuxSandbox {
    fn plan(
        &self,
        id: &str,
        cgroups_path: Option<&std::path::Path>,
        _dir: &std::path::Path,
    ) -> Result<serde_json::Value, SandboxError> {
        Ok(process::parent::plan(id, cgroups_path)?)
    }

    fn create(&self, req: &CreateRequest<'_>, hooks: &mut RuntimeHooks<'_>) -> Result<Created, SandboxError> {
        Ok(process::parent::create(req, hooks)?)
    }

    fn start(&self, dir: &ContainerDir, state: &State) -> Result<(), SandboxError> {
        Ok(process::fifo::release(dir, state)?)
    }

    fn kill(&self, state: &State, signal: Sig, all: bool) -> Result<(), SandboxError> {
        Ok(process::parent::kill(state, signal, all)?)
    }

    fn destroy(&self, state: &State) -> Result<(), SandboxError> {
        Ok(process::parent::destroy(state)?)
    }

    fn exec(&self, dir: &ContainerDir, state: &State, req: &ExecRequest<'_>) -> Result<Exec, SandboxError> {
        Ok(process::exec::exec(dir, state, req)?)
    }

    fn pause(&self, state: &State) -> Result<(), SandboxError> {
        Ok(control::pause(state)?)
    }

    fn resume(&self, state: &State) -> Result<(), SandboxError> {
        Ok(control::resume(state)?)
    }

    fn update(&self, state: &State, resources: &LinuxResources) -> Result<(), SandboxError> {
        Ok(control::update(state, resources)?)
    }

    fn pids(&self, state: &State) -> Result<Vec<i32>, SandboxError> {
        Ok(control::pids(state)?)
    }

    fn ps(&self, state: &State, args: &[String]) -> Result<String, SandboxError> {
        let pids = control::pids(state)?;
        Ok(crate::container::ps::table(args, &pids).map_err(LinuxError::from)?)
    }

    fn stats(&self, state: &State) -> Result<Stats, SandboxError> {
        Ok(control::stats(state)?)
    }
}
