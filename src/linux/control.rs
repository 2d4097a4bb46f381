//! Operations on a running container that go through its cgroups: pause
//! and resume (the v1 freezer or cgroup.freeze), update (the controllers'
//! own writes, as at create), the process list, and statistics.

use oci_spec::runtime::LinuxResources;

use super::process::parent::manager;
use super::LinuxError;
use crate::container::state::State;
use crate::container::stats::{parse_net_dev, Stats};

pub fn pause(state: &State) -> Result<(), LinuxError> {
    Ok(manager(state)?.freeze()?)
}

pub fn resume(state: &State) -> Result<(), LinuxError> {
    Ok(manager(state)?.thaw()?)
}

/// Applies what `resources` sets. Device rules are left alone, as runc's
/// update does: rewriting a running container's device list (deny all,
/// then allow) would briefly cut it off its devices.
pub fn update(state: &State, resources: &LinuxResources) -> Result<(), LinuxError> {
    let mut res = resources.clone();
    if res.devices().is_some() {
        crate::logging::debug("update: linux.resources.devices left unchanged (as runc does)");
        res.set_devices(None);
    }
    Ok(manager(state)?.update(&res)?)
}

/// Every process in the container's cgroups; the init alone when there
/// are none to read (a container created without cgroups).
pub fn pids(state: &State) -> Result<Vec<i32>, LinuxError> {
    let mut pids = manager(state)?.pids()?;
    if pids.is_empty()
        && crate::container::process::liveness(state.pid, state.pid_start_time)
            == crate::container::process::Liveness::Alive
    {
        pids.push(state.pid);
    }
    Ok(pids)
}

pub fn stats(state: &State) -> Result<Stats, LinuxError> {
    let mut s = manager(state)?.runc_stats();
    s.network_interfaces = network_interfaces(state.pid);
    Ok(s)
}

/// The interfaces of the init's network namespace, if it has one of its
/// own (the host's are not the container's business).
fn network_interfaces(pid: i32) -> Option<Vec<crate::container::stats::NetworkInterface>> {
    let theirs = std::fs::metadata(format!("/proc/{pid}/ns/net")).ok()?;
    let ours = std::fs::metadata("/proc/self/ns/net").ok()?;
    use std::os::unix::fs::MetadataExt;
    if theirs.ino() == ours.ino() && theirs.dev() == ours.dev() {
        return None;
    }
    let list = parse_net_dev(&std::fs::read_to_string(format!("/proc/{pid}/net/dev")).ok()?);
    (!list.is_empty()).then_some(list)
}
