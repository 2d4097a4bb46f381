//! Container isolation: namespaces, rootfs and mounts, devices, cgroups,
//! capabilities, seccomp, rlimits and the console, run the way runc does.

pub mod cgroups;
