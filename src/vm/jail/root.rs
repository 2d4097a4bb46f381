//! The VMM's root: after setup the VMM sees a directory of the container's
//! state dir as `/` and nothing else of the host's filesystem. What it
//! needs is placed there before the pivot: `/dev/kvm`, the kernel and the
//! initramfs (read-only bind mounts of single files), the disks, the
//! virtio-fs share
//! (the tmpfs `mount_share` builds) and the VMM's own `/proc/self/fd`. The files it makes itself, the
//! vsock socket, the control socket and the serial log, land in that
//! directory, where `create`,
//! `exec` and `delete` on the host find them.
//!
//! Everything happens in the VMM's own mount namespace, with the host's
//! mounts as slaves: nothing is mounted on the host, and when the VMM
//! exits its mounts go with it. On the host the directory only holds the
//! empty files and directories the mounts were made on, which go with the
//! state dir.

use std::path::{Path, PathBuf};

use nix::mount::{mount, MsFlags};

/// Paths inside the root, as the VMM sees them after the pivot.
pub const KVM: &str = "/dev/kvm";
pub const KERNEL: &str = "/kernel";
pub const INITRD: &str = "/initrd";
pub const SHARE: &str = "/share";
pub const VSOCK: &str = "/vsock";
pub const CONSOLE_LOG: &str = "/console.log";
pub const API: &str = "/api";
/// Disk N (virtio-blk) is `/disk/N`.
pub const DISKS: &str = "/disk";
/// The passthrough filesystem reopens files through `/proc/self/fd` and
/// opens `/proc/self/mountinfo` (for file handles, which amphi does not
/// use): the VMM's own fd directory and mount table are all of /proc the
/// root shows.
const PROC_SELF_FD: &str = "/proc/self/fd";
const PROC_SELF_MOUNTINFO: &str = "/proc/self/mountinfo";

#[derive(Debug, thiserror::Error)]
pub enum RootError {
    #[error("cannot {what} {}", path.display())]
    Mount {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: nix::errno::Errno,
    },
    #[error("cannot create {}", path.display())]
    Create {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Pivot(#[from] crate::linux::LinuxError),
}

/// The host files the root gets.
pub struct RootPlan<'a> {
    /// The directory that becomes `/` (empty, made by `create`).
    pub dir: &'a Path,
    pub kvm: &'a Path,
    pub kernel: &'a Path,
    pub initrd: Option<&'a Path>,
    /// Disk images or block devices, and whether each is read-only.
    pub disks: &'a [(PathBuf, bool)],
}

/// Where disk `index` is inside the root.
pub fn disk_path(index: usize) -> PathBuf {
    Path::new(DISKS).join(index.to_string())
}

/// Step 1, before anything is mounted in it: a mount namespace of our own
/// and `dir` a mount point (pivot_root needs one), with neither device
/// nodes nor set-id programs honoured under it except the ones bound in.
pub fn prepare(dir: &Path) -> Result<(), RootError> {
    let m = |what, path: &Path| {
        let path = path.to_path_buf();
        move |source| RootError::Mount { what, path, source }
    };
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).map_err(m("unshare the mount namespace for", dir))?;
    mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_SLAVE, None::<&str>)
        .map_err(m("make the host's mounts slaves before jailing in", dir))?;
    mount(Some(dir), dir, None::<&str>, MsFlags::MS_BIND, None::<&str>).map_err(m("bind onto itself", dir))?;
    let flags = MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount(None::<&str>, dir, None::<&str>, flags, None::<&str>).map_err(m("remount nosuid,nodev,noexec", dir))
}

/// Where the host sees `inside` (one of the paths above) of the root `dir`.
pub fn host_path(dir: &Path, inside: &str) -> PathBuf {
    dir.join(inside.trim_start_matches('/'))
}

/// Step 2, once the share is mounted: binds the files in and makes `dir`
/// the root. The host's filesystem is out of reach afterwards.
pub fn enter(plan: &RootPlan<'_>) -> Result<(), RootError> {
    bind_file(plan.kvm, &host_path(plan.dir, KVM), false, false)?;
    bind_file(plan.kernel, &host_path(plan.dir, KERNEL), true, false)?;
    if let Some(initrd) = plan.initrd {
        bind_file(initrd, &host_path(plan.dir, INITRD), true, false)?;
    }
    // A disk may be a block device, which a nodev mount would not open.
    for (i, (disk, read_only)) in plan.disks.iter().enumerate() {
        bind_file(disk, &plan.dir.join(disk_path(i).strip_prefix("/").unwrap_or(Path::new(""))), *read_only, true)?;
    }
    // The sources resolve to /proc/<our pid>/..., the fd table every
    // thread of this process shares and this namespace's mounts.
    let fds = host_path(plan.dir, PROC_SELF_FD);
    std::fs::create_dir_all(&fds).map_err(|source| RootError::Create { path: fds.clone(), source })?;
    mount(Some(PROC_SELF_FD), &fds, None::<&str>, MsFlags::MS_BIND, None::<&str>).map_err(|e| RootError::Mount {
        what: "bind into the VMM's root",
        path: PROC_SELF_FD.into(),
        source: e,
    })?;
    bind_file(Path::new(PROC_SELF_MOUNTINFO), &host_path(plan.dir, PROC_SELF_MOUNTINFO), false, false)?;
    crate::linux::rootfs::pivot(plan.dir, false)?;
    Ok(())
}

/// Binds the file `source` onto `target` (made empty), read-only if asked:
/// then also nosuid, and nodev unless `device` (a read-only block device
/// must still open).
fn bind_file(source: &Path, target: &Path, read_only: bool, device: bool) -> Result<(), RootError> {
    let create = |path: &Path| {
        let path = path.to_path_buf();
        move |source| RootError::Create { path, source }
    };
    if let Some(parent) = target.parent() {
        std::fs::create_dir_all(parent).map_err(create(parent))?;
    }
    std::fs::OpenOptions::new().write(true).create(true).truncate(false).open(target).map_err(create(target))?;
    mount(Some(source), target, None::<&str>, MsFlags::MS_BIND, None::<&str>).map_err(|e| RootError::Mount {
        what: "bind into the VMM's root",
        path: source.to_path_buf(),
        source: e,
    })?;
    if read_only {
        let mut flags = MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY | MsFlags::MS_NOSUID;
        if !device {
            flags |= MsFlags::MS_NODEV;
        }
        mount(None::<&str>, target, None::<&str>, flags, None::<&str>).map_err(|e| RootError::Mount {
            what: "make read-only in the VMM's root",
            path: source.to_path_buf(),
            source: e,
        })?;
    }
    Ok(())
}
