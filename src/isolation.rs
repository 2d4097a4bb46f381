//! Which [`Sandbox`] implements which isolation. This is the one place that
//! knows both isolations; the lifecycle in [`crate::container`] receives it
//! as a plain function, so `container/` depends on neither `linux/` nor
//! `vm/`, and tests can hand it fakes.

use crate::container::sandbox::Sandbox;
use crate::spec::Isolation;

/// The isolation implementation for a container.
pub fn sandbox_for(isolation: Isolation) -> Box<dyn Sandbox> {
    match isolation {
        Isolation::Container => Box::new(crate::linux::LinuxSandbox),
        Isolation::Vm => Box::new(crate::vm::sandbox::VmSandbox),
    }
}
