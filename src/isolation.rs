//! Which [`Sandbox`] implements which isolation. This is the one place that
//! knows both isolations; the lifecycle in [`crate::container`] receives it
//! as a plain function, so `container/` depends on neither `linux/` nor
//! `vm/`, and tests can hand it fakes.

use oci_spec::runtime::LinuxResources;

use crate::container::sandbox::{CreateRequest, Created, Exec, ExecRequest, RuntimeHooks, Sandbox, SandboxError};
use crate::container::signal::Sig;
use crate::container::state::State;
use crate::container::stats::Stats;
use crate::container::store::ContainerDir;
use crate::spec::Isolation;

/// The isolation implementation for a container.
pub fn sandbox_for(isolation: Isolation) -> Box<dyn Sandbox> {
    match isolation {
        Isolation::Container => Box::new(crate::linux::LinuxSandbox),
        Isolation::Vm => Box::new(NotYet(isolation)),
    }
}

/// An isolation this build cannot run bundles in yet: every operation
/// refuses with an explanation instead of pretending to work.
#[derive(Debug)]
struct NotYet(Isolation);

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
    fn kill(&self, _: &State, _: Sig, _: bool) -> Result<(), SandboxError> {
        self.refuse()
    }
    fn destroy(&self, _: &State) -> Result<(), SandboxError> {
        self.refuse()
    }
    fn exec(&self, _: &ContainerDir, _: &State, _: &ExecRequest<'_>) -> Result<Exec, SandboxError> {
        self.refuse()
    }
    fn pause(&self, _: &State) -> Result<(), SandboxError> {
        self.refuse()
    }
    fn resume(&self, _: &State) -> Result<(), SandboxError> {
        self.refuse()
    }
    fn update(&self, _: &State, _: &LinuxResources) -> Result<(), SandboxError> {
        self.refuse()
    }
    fn pids(&self, _: &State) -> Result<Vec<i32>, SandboxError> {
        self.refuse()
    }
    fn ps(&self, _: &State, _: &[String]) -> Result<String, SandboxError> {
        self.refuse()
    }
    fn stats(&self, _: &State) -> Result<Stats, SandboxError> {
        self.refuse()
    }
}
