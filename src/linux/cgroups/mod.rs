//! cgroups for the container isolation: v1 (including hybrid hosts, where v1
//! controllers sit beside a cgroup2 mount at /sys/fs/cgroup/unified) and pure
//! v2, programmed from the OCI spec's `linux.resources` with runc's semantics.
//!
//! - [`layout`] finds the host's hierarchies cheaply (statfs, then one read
//!   of /proc/self/mountinfo at most);
//! - [`path`] turns `linux.cgroupsPath` into a directory per hierarchy;
//! - [`controllers`] holds one file per controller, each writing v1 and v2
//!   files (using cgroups-rs's controllers to read statistics);
//! - [`device_rules`] and [`bpf`] turn device rules into devices.allow/deny
//!   writes (v1) or an eBPF program of our own emitter (v2);
//! - [`manager::CgroupManager`] creates, programs, joins, freezes, measures
//!   and removes a container's cgroups, and saves a [`CgroupState`] so later
//!   commands can do so without the spec;
//! - every OS call goes through [`sys::CgroupSys`]; `testing` (tests and the
//!   `test-utils` feature) fakes it on a directory tree.
//!
//! docs/cgroups.md explains the choices, measured costs and where this code
//! departs from cgroups-rs.

pub mod bpf;
pub mod controllers;
pub mod device_rules;
pub mod error;
pub mod layout;
mod log;
pub mod manager;
pub mod path;
pub mod stats;
pub mod sys;
#[cfg(any(test, feature = "test-utils"))]
pub mod testing;

pub use controllers::cpu::CpuStats;
pub use controllers::memory::MemoryStats;
pub use controllers::pids::PidsStats;
pub use device_rules::{effective_device_rules, Access, DeviceKind, DeviceRule};
pub use error::CgroupError;
pub use layout::{HostFacts, HostLayout, LayoutKind, Subsystem};
pub use manager::{
    CgroupConfig, CgroupManager, CgroupMount, CgroupNode, CgroupState, CgroupStats, FreezerState, Join, Manager,
};
pub use path::{parse_systemd_path, CgroupsPath, SystemdPath};

/// What `amphi features` reports about cgroups on this host.
pub fn host_facts() -> error::Result<HostFacts> {
    layout::host_facts(&sys::HostSys)
}
