//! The container's root filesystem from containerd's snapshot mounts.
//!
//! containerd passes the rootfs as mounts (overlay with its lower and upper
//! directories, or a bind of a native snapshot) in the Create request; the
//! shim mounts them, in order, onto `<bundle>/rootfs`, where config.json's
//! `root.path` points, and unmounts everything below it on Delete (and in
//! the `delete` action after a crash). Mounting is containerd-shim's
//! `mount_rootfs`, which knows containerd's option spellings (including
//! very long overlay lowerdir lists).

use std::path::{Path, PathBuf};

use containerd_shim::mount::{mount_rootfs, umount_recursive};
use containerd_shim::protos::types::mount::Mount;

#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error("cannot create the rootfs directory {0}")]
    Mkdir(PathBuf, #[source] std::io::Error),
    #[error("cannot mount the {fs_type} rootfs from {source_path} on {target}")]
    Mount {
        fs_type: String,
        source_path: String,
        target: PathBuf,
        #[source]
        source: Box<containerd_shim::Error>,
    },
    #[error("cannot unmount the rootfs at {0}")]
    Unmount(PathBuf, #[source] Box<containerd_shim::Error>),
}

/// `<bundle>/rootfs`.
pub fn rootfs_dir(bundle: &Path) -> PathBuf {
    bundle.join("rootfs")
}

/// Mounts every mount onto `<bundle>/rootfs`. On failure the mounts made so
/// far are undone. Returns the directory to unmount later, or `None` when
/// there was nothing to mount (the bundle brings its own rootfs).
pub fn mount_all(bundle: &Path, mounts: &[Mount]) -> Result<Option<PathBuf>, RootfsError> {
    if mounts.is_empty() {
        return Ok(None);
    }
    let target = rootfs_dir(bundle);
    match std::fs::create_dir(&target) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(RootfsError::Mkdir(target, e)),
    }
    for m in mounts {
        let fs_type = (!m.type_.is_empty()).then_some(m.type_.as_str());
        let source = (!m.source.is_empty()).then_some(m.source.as_str());
        if let Err(e) = mount_rootfs(fs_type, source, &m.options, &target) {
            let _ = unmount(&target);
            return Err(RootfsError::Mount {
                fs_type: m.type_.clone(),
                source_path: m.source.clone(),
                target,
                source: Box::new(e),
            });
        }
    }
    Ok(Some(target))
}

/// Unmounts everything at and below `target` (idempotent).
pub fn unmount(target: &Path) -> Result<(), RootfsError> {
    let Some(t) = target.to_str() else { return Ok(()) };
    umount_recursive(Some(t), libc::MNT_DETACH).map_err(|e| RootfsError::Unmount(target.to_path_buf(), Box::new(e)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_mounts_means_the_bundle_keeps_its_rootfs() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(mount_all(d.path(), &[]).unwrap(), None);
        assert!(!d.path().join("rootfs").exists());
    }

    #[test]
    fn unmounting_what_is_not_mounted_is_fine() {
        let d = tempfile::tempdir().unwrap();
        unmount(&rootfs_dir(d.path())).unwrap();
        unmount(Path::new("/nonexistent/rootfs")).unwrap();
    }
}
