//! What the VMM gives up once its setup is done and before it runs the
//! guest, after Firecracker's jailer:
//! - a root of its own ([`root`]): a directory of the container's state
//!   dir with /dev/kvm, the kernel, the initramfs and the virtio-fs share
//!   bound in, in a mount namespace of its own;
//! - every capability except those its virtio-fs server needs to act on
//!   the container's files as their owners would, and the right to gain
//!   any back (no_new_privs) ([`confine`]);
//! - core dumps (which would write guest memory to disk) and open files
//!   past its limit (rlimits);
//! - every syscall its threads do not make ([`seccomp`], a filter per
//!   thread kind).
//!
//! It stays in the container's cgroup on the host, which `create` put it
//! in. docs/security.md says what each step protects against.

pub mod root;
pub mod seccomp;

use std::collections::HashSet;

use caps::{CapSet, Capability};

use crate::linux::capabilities::{self, CapSets};

/// The capabilities the VMM keeps: virtio-fs serves files of any owner
/// (DAC_OVERRIDE, DAC_READ_SEARCH, FOWNER), creates them as the guest's
/// caller (SETUID, SETGID for its per-request fsuid/fsgid; CHOWN), keeps
/// set-id bits (FSETID) and file capabilities (SETFCAP) the guest writes.
/// Not kept, among others: SYS_ADMIN (mounts, trusted.* xattrs), MKNOD (a
/// guest could otherwise make device nodes on the host), SYS_PTRACE,
/// SYS_MODULE, NET_ADMIN, SYS_RAWIO.
pub const KEPT: &[Capability] = &[
    Capability::CAP_CHOWN,
    Capability::CAP_DAC_OVERRIDE,
    Capability::CAP_DAC_READ_SEARCH,
    Capability::CAP_FOWNER,
    Capability::CAP_FSETID,
    Capability::CAP_SETUID,
    Capability::CAP_SETGID,
    Capability::CAP_SETFCAP,
];

#[derive(Debug, thiserror::Error)]
pub enum JailError {
    #[error(transparent)]
    Caps(#[from] crate::linux::LinuxError),
    #[error("cannot read the VMM's permitted capabilities")]
    ReadCaps(#[source] caps::errors::CapsError),
    #[error("cannot {what}")]
    Sys {
        what: &'static str,
        #[source]
        source: nix::errno::Errno,
    },
}

/// Confines the calling process. Call while it is single-threaded: threads
/// made afterwards inherit it, threads made before would not.
pub fn confine() -> Result<(), JailError> {
    use nix::sys::resource::{setrlimit, Resource};
    let sys = |what| move |source| JailError::Sys { what, source };
    setrlimit(Resource::RLIMIT_CORE, 0, 0).map_err(sys("set RLIMIT_CORE to 0"))?;
    nix::sys::prctl::set_dumpable(false).map_err(sys("make the VMM non-dumpable"))?;
    // The container init's capability code, with these sets: what is kept
    // and this process holds, nothing inheritable or ambient.
    let have = caps::read(None, CapSet::Permitted).map_err(JailError::ReadCaps)?;
    let kept: HashSet<Capability> = KEPT.iter().copied().filter(|c| have.contains(c)).collect();
    let sets = CapSets {
        bounding: KEPT.iter().copied().collect(),
        effective: kept.clone(),
        permitted: kept,
        ..CapSets::default()
    };
    capabilities::drop_bounding(&sets)?;
    capabilities::apply(&sets)?;
    nix::sys::prctl::set_no_new_privs().map_err(sys("set no_new_privs"))?;
    Ok(())
}
