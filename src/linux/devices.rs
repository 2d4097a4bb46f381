//! /dev inside the container: the devices every runtime must provide, the
//! spec's `linux.devices`, and the standard links (/dev/fd, std streams,
//! ptmx, core).
//!
//! Outside a user namespace device nodes are made with mknod; inside one the
//! kernel forbids that, so the host's nodes are bind-mounted instead.

use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::MsFlags;
use nix::sys::stat::{Mode, SFlag};
use oci_spec::runtime::{LinuxDevice, LinuxDeviceType};

use super::mounts::{fd_path, Root};
use super::LinuxError;

/// A device node to create in the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceNode {
    pub path: PathBuf,
    pub kind: SFlag,
    pub major: u64,
    pub minor: u64,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

/// The devices the runtime spec requires (runc's list).
pub fn default_devices() -> Vec<DeviceNode> {
    let d = |path: &str, major, minor| DeviceNode {
        path: PathBuf::from(path),
        kind: SFlag::S_IFCHR,
        major,
        minor,
        mode: 0o666,
        uid: 0,
        gid: 0,
    };
    vec![
        d("/dev/null", 1, 3),
        d("/dev/zero", 1, 5),
        d("/dev/full", 1, 7),
        d("/dev/random", 1, 8),
        d("/dev/urandom", 1, 9),
        d("/dev/tty", 5, 0),
    ]
}

/// Converts a spec device, filling in defaults (mode 0666, owner root).
pub fn from_spec(d: &LinuxDevice) -> Result<DeviceNode, LinuxError> {
    let kind = match d.typ() {
        LinuxDeviceType::C | LinuxDeviceType::U => SFlag::S_IFCHR,
        LinuxDeviceType::B => SFlag::S_IFBLK,
        LinuxDeviceType::P => SFlag::S_IFIFO,
        LinuxDeviceType::A => {
            return Err(LinuxError::Config(format!(
                "linux.devices {}: type \"a\" is only valid in cgroup rules; use c, b, u or p",
                d.path().display()
            )))
        }
    };
    Ok(DeviceNode {
        path: d.path().clone(),
        kind,
        major: d.major() as u64,
        minor: d.minor() as u64,
        mode: d.file_mode().unwrap_or(0o666),
        uid: d.uid().unwrap_or(0),
        gid: d.gid().unwrap_or(0),
    })
}

/// The full list for a container: defaults, then the spec's devices (a spec
/// device replaces a default with the same path).
pub fn all_devices(spec_devices: &[LinuxDevice]) -> Result<Vec<DeviceNode>, LinuxError> {
    let mut out: Vec<DeviceNode> = default_devices();
    for d in spec_devices {
        let n = from_spec(d)?;
        out.retain(|o| o.path != n.path);
        out.push(n);
    }
    Ok(out)
}

/// Creates one device node in the root (mknod, or bind from the host in a
/// user namespace).
pub fn create(root: &Root, dev: &DeviceNode, bind: bool) -> Result<(), LinuxError> {
    let what = |e: Errno| LinuxError::sys(format!("cannot create device {}", dev.path.display()), e);
    if bind {
        let target = root.create_file(&dev.path, 0o644).map_err(what)?;
        return nix::mount::mount(
            Some(&dev.path),
            fd_path(&target).as_str(),
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(what);
    }
    let rel = super::mounts::clean_relative(&dev.path);
    let name = rel.file_name().ok_or_else(|| what(Errno::EINVAL))?;
    let parent = root.mkdir_all(rel.parent().unwrap_or(Path::new("")), 0o755).map_err(what)?;
    // An O_PATH fd cannot be a dirfd for mknodat on every kernel, so go
    // through its /proc path, which names exactly that directory.
    let dir = fd_path(&parent);
    let path = format!("{dir}/{}", name.to_string_lossy());
    let devno = nix::sys::stat::makedev(dev.major, dev.minor);
    match nix::sys::stat::mknod(path.as_str(), dev.kind, Mode::from_bits_truncate(dev.mode & 0o7777), devno) {
        Ok(()) => {}
        // The image ships the node already (no tmpfs on /dev): keep it.
        Err(Errno::EEXIST) => return Ok(()),
        Err(e) => return Err(what(e)),
    }
    // mknod's mode is filtered by the umask; set it exactly.
    nix::sys::stat::fchmodat(
        nix::fcntl::AT_FDCWD,
        path.as_str(),
        Mode::from_bits_truncate(dev.mode & 0o7777),
        nix::sys::stat::FchmodatFlags::FollowSymlink,
    )
    .map_err(what)?;
    nix::unistd::chown(
        path.as_str(),
        Some(nix::unistd::Uid::from_raw(dev.uid)),
        Some(nix::unistd::Gid::from_raw(dev.gid)),
    )
    .map_err(what)?;
    Ok(())
}

/// The standard links of /dev.
pub fn standard_links(kcore: bool) -> Vec<(&'static str, &'static str)> {
    let mut l = vec![
        ("/proc/self/fd", "/dev/fd"),
        ("/proc/self/fd/0", "/dev/stdin"),
        ("/proc/self/fd/1", "/dev/stdout"),
        ("/proc/self/fd/2", "/dev/stderr"),
    ];
    if kcore {
        l.push(("/proc/kcore", "/dev/core"));
    }
    l
}

/// Creates a symlink inside the root (its parent resolved inside the root).
pub fn symlink(root: &Root, target: &str, link: &str) -> Result<(), LinuxError> {
    let what = |e: Errno| LinuxError::sys(format!("cannot link {link} to {target}"), e);
    let rel = super::mounts::clean_relative(Path::new(link));
    let name = rel.file_name().ok_or_else(|| what(Errno::EINVAL))?;
    let parent = root.mkdir_all(rel.parent().unwrap_or(Path::new("")), 0o755).map_err(what)?;
    let path = format!("{}/{}", fd_path(&parent), name.to_string_lossy());
    match nix::unistd::symlinkat(target, nix::fcntl::AT_FDCWD, path.as_str()) {
        Ok(()) | Err(Errno::EEXIST) => Ok(()),
        Err(e) => Err(what(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_devices_override_defaults_and_get_defaults() {
        let spec: Vec<LinuxDevice> = serde_json::from_str(
            r#"[{"path":"/dev/null","type":"c","major":1,"minor":3,"fileMode":384},
                {"path":"/dev/fuse","type":"c","major":10,"minor":229}]"#,
        )
        .unwrap();
        let all = all_devices(&spec).unwrap();
        assert_eq!(all.iter().filter(|d| d.path == Path::new("/dev/null")).count(), 1);
        let null = all.iter().find(|d| d.path == Path::new("/dev/null")).unwrap();
        assert_eq!(null.mode, 0o600);
        let fuse = all.iter().find(|d| d.path == Path::new("/dev/fuse")).unwrap();
        assert_eq!((fuse.major, fuse.minor, fuse.mode, fuse.uid), (10, 229, 0o666, 0));
        assert!(all.iter().any(|d| d.path == Path::new("/dev/tty")));
    }

    #[test]
    fn type_a_is_not_a_device_node() {
        let spec: Vec<LinuxDevice> =
            serde_json::from_str(r#"[{"path":"/dev/x","type":"a","major":1,"minor":1}]"#).unwrap();
        assert!(all_devices(&spec).is_err());
    }

    #[test]
    fn links_include_core_only_when_the_host_has_it() {
        assert_eq!(standard_links(false).len(), 4);
        assert!(standard_links(true).iter().any(|(_, l)| *l == "/dev/core"));
    }
}
