//! The container's root filesystem: the mount sequence before pivot_root,
//! pivot_root itself (or the `--no-pivot` move + chroot), and what follows
//! it (masked and read-only paths, sysctls, a read-only root, the root's
//! propagation).
//!
//! Every destination is resolved inside the rootfs ([`super::mounts::Root`]);
//! nothing here follows a symlink out of it.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::mount::{MntFlags, MsFlags};
use nix::sys::stat::Mode;
use oci_spec::runtime::{Mount, Spec};

use super::devices::{self, DeviceNode};
use super::mounts::{self, fd_path, locked_flags, parse_options, MountOptions, Root};
use super::LinuxError;

/// How the container's cgroups appear inside it.
#[derive(Debug, Clone, Default)]
pub struct CgroupView {
    /// Pure v2 (a single cgroup2 mount).
    pub v2: bool,
    /// v1: (directory under the mount point, mount data such as "cpu" or
    /// "none,name=systemd", host path of the container's cgroup there).
    /// v2: one entry with an empty name.
    pub hierarchies: Vec<(String, String, PathBuf)>,
    /// v1 co-mounted controllers: (link name, target), e.g. ("cpu", "cpu,cpuacct").
    pub links: Vec<(String, String)>,
}

/// Everything the mount sequence needs, computed before the init is cloned.
#[derive(Debug)]
pub struct RootfsPlan<'a> {
    pub spec: &'a Spec,
    pub rootfs: &'a Path,
    pub bundle: &'a Path,
    /// In a user namespace: no mknod, bind devices instead; locked flags.
    pub in_userns: bool,
    /// With a network namespace of its own sysfs can be mounted; without,
    /// a user namespace has to bind the host's /sys.
    pub own_netns: bool,
    pub cgroupns: bool,
    pub cgroups: &'a CgroupView,
    pub devices: Vec<DeviceNode>,
}

/// Paths under /proc a mount may cover (lxcfs-style overlays), as runc
/// allows; any other mount inside /proc is refused.
const PROC_ALLOWED: &[&str] = &[
    "/proc/cpuinfo",
    "/proc/diskstats",
    "/proc/meminfo",
    "/proc/stat",
    "/proc/swaps",
    "/proc/uptime",
    "/proc/loadavg",
    "/proc/slabinfo",
    "/proc/net/dev",
    "/proc/sys/kernel/ns_last_pid",
];

fn mnt_err(m: &Mount, e: Errno) -> LinuxError {
    LinuxError::sys(
        format!(
            "cannot mount {} ({}) on {}",
            m.source().as_deref().unwrap_or(Path::new("none")).display(),
            m.typ().as_deref().unwrap_or("bind"),
            m.destination().display()
        ),
        e,
    )
}

/// Step 1: a private view of the mounts and the rootfs as a mount point.
pub fn prepare_root(rootfs: &Path) -> Result<Root, LinuxError> {
    // Nothing we mount may propagate back to the host.
    nix::mount::mount(None::<&str>, "/", None::<&str>, MsFlags::MS_SLAVE | MsFlags::MS_REC, None::<&str>)
        .map_err(|e| LinuxError::sys("cannot make the mount namespace a slave of the host's", e))?;
    // pivot_root needs the new root to be a mount point.
    nix::mount::mount(Some(rootfs), rootfs, None::<&str>, MsFlags::MS_BIND | MsFlags::MS_REC, None::<&str>)
        .map_err(|e| LinuxError::sys(format!("cannot bind the rootfs {} onto itself", rootfs.display()), e))?;
    Root::open(rootfs).map_err(|e| LinuxError::sys(format!("cannot open the rootfs {}", rootfs.display()), e))
}

/// Step 2: the spec's mounts in order, then /dev.
pub fn mount_all(root: &Root, plan: &RootfsPlan<'_>) -> Result<(), LinuxError> {
    let mut dev_is_bind = false;
    for m in plan.spec.mounts().iter().flatten() {
        let opts = parse_options(m.options().as_deref().unwrap_or(&[]));
        let typ = m.typ().as_deref().unwrap_or("");
        let dest = m.destination();
        let dest_abs = if dest.is_absolute() { dest.clone() } else { Path::new("/").join(dest) };
        if dest_abs == Path::new("/dev") && (opts.is_bind() || typ == "bind") {
            dev_is_bind = true;
        }
        check_proc_destination(&dest_abs)?;
        if typ == "cgroup" || typ == "cgroup2" {
            mount_cgroups(root, m, &dest_abs, &opts, plan)?;
        } else if opts.is_bind() || typ == "bind" {
            mount_bind(root, m, &dest_abs, &opts, plan.bundle)?;
        } else {
            mount_fs(root, m, &dest_abs, typ, &opts, plan)?;
        }
    }
    if !dev_is_bind {
        for d in &plan.devices {
            devices::create(root, d, plan.in_userns)?;
        }
        let kcore = Path::new("/proc/kcore").exists();
        for (target, link) in devices::standard_links(kcore) {
            devices::symlink(root, target, link)?;
        }
        // The container's own devpts instance provides ptmx.
        let ptmx = Path::new("/dev/ptmx");
        if let Ok(fd) = root.open_with(ptmx, OFlag::O_PATH | OFlag::O_NOFOLLOW) {
            let st = nix::sys::stat::fstat(&fd).ok();
            if st.is_some_and(|s| s.st_mode & libc::S_IFMT != libc::S_IFLNK) {
                drop(fd);
                let parent = root.mkdir_all(Path::new("/dev"), 0o755).map_err(|e| LinuxError::sys("/dev", e))?;
                let _ = nix::unistd::unlinkat(parent.as_fd(), "ptmx", nix::unistd::UnlinkatFlags::NoRemoveDir);
            }
        }
        devices::symlink(root, "pts/ptmx", "/dev/ptmx")?;
    }
    Ok(())
}

fn check_proc_destination(dest: &Path) -> Result<(), LinuxError> {
    if dest.starts_with("/proc") && dest != Path::new("/proc") && !PROC_ALLOWED.iter().any(|p| dest == Path::new(p)) {
        return Err(LinuxError::Config(format!(
            "mount destination {} is inside /proc, which could expose the host: mount elsewhere",
            dest.display()
        )));
    }
    Ok(())
}

fn mount_bind(root: &Root, m: &Mount, dest: &Path, opts: &MountOptions, bundle: &Path) -> Result<(), LinuxError> {
    let src = m.source().as_deref().ok_or_else(|| {
        LinuxError::Config(format!("bind mount on {} has no source: set mounts[].source", dest.display()))
    })?;
    let src: PathBuf = if src.is_absolute() { src.to_path_buf() } else { bundle.join(src) };
    let meta = std::fs::metadata(&src)
        .map_err(|e| LinuxError::io(format!("bind mount source {} for {}", src.display(), dest.display()), e))?;
    let target = if meta.is_dir() { root.mkdir_all(dest, 0o755) } else { root.create_file(dest, 0o644) }
        .map_err(|e| mnt_err(m, e))?;
    let rec = opts.flags & MsFlags::MS_REC;
    let mounted = bind_then_remount(root, &src, target, dest, rec, opts.remount_flags()).map_err(|e| mnt_err(m, e))?;
    finish_mount(&mounted, m, opts)
}

/// Recursive attributes and propagation, on an fd of the new mount.
fn finish_mount(mounted: &OwnedFd, m: &Mount, opts: &MountOptions) -> Result<(), LinuxError> {
    if opts.recursive_attrs != 0 || opts.recursive_clear != 0 {
        mounts::set_recursive_attrs(mounted, opts.recursive_attrs, opts.recursive_clear).map_err(|e| mnt_err(m, e))?;
    }
    for p in &opts.propagation {
        nix::mount::mount(None::<&str>, fd_path(mounted).as_str(), None::<&str>, *p, None::<&str>)
            .map_err(|e| mnt_err(m, e))?;
    }
    Ok(())
}

fn mount_fs(
    root: &Root,
    m: &Mount,
    dest: &Path,
    typ: &str,
    opts: &MountOptions,
    plan: &RootfsPlan<'_>,
) -> Result<(), LinuxError> {
    if typ.is_empty() {
        return Err(LinuxError::Config(format!(
            "mount on {} has no type: set mounts[].type (or the bind option)",
            dest.display()
        )));
    }
    let target = root.mkdir_all(dest, 0o755).map_err(|e| mnt_err(m, e))?;
    let source = m.source().as_deref().map(Path::new).unwrap_or(Path::new(typ));
    let data = (!opts.data.is_empty()).then_some(opts.data.as_str());
    let flags = opts.flags & !(MsFlags::MS_BIND | MsFlags::MS_REC);
    let r = nix::mount::mount(Some(source), fd_path(&target).as_str(), Some(typ), flags, data);
    match r {
        Ok(()) => {}
        Err(Errno::EPERM) if typ == "sysfs" && plan.in_userns && !plan.own_netns => {
            // A user namespace may only mount sysfs for a network
            // namespace it owns; fall back to the host's view, read-only.
            nix::mount::mount(
                Some("/sys"),
                fd_path(&target).as_str(),
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )
            .map_err(|e| mnt_err(m, e))?;
            let mounted = root.open_path(dest).map_err(|e| mnt_err(m, e))?;
            let _ = mounts::set_recursive_attrs(
                &mounted,
                mounts::MOUNT_ATTR_RDONLY
                    | mounts::MOUNT_ATTR_NOSUID
                    | mounts::MOUNT_ATTR_NODEV
                    | mounts::MOUNT_ATTR_NOEXEC,
                0,
            );
            return Ok(());
        }
        Err(e) => return Err(mnt_err(m, e)),
    }
    let mounted = root.open_path(dest).map_err(|e| mnt_err(m, e))?;
    if opts.tmpcopyup && typ == "tmpfs" {
        // `target` still names the directory the tmpfs now covers.
        copy_tree(&target, &mounted).map_err(|e| mnt_err(m, e))?;
    }
    finish_mount(&mounted, m, opts)
}

/// `tmpcopyup`: copies a directory tree from one fd to another (files,
/// directories, symlinks; modes and owners kept).
fn copy_tree(from: &OwnedFd, to: &OwnedFd) -> Result<(), Errno> {
    let src_dir =
        nix::fcntl::openat(from.as_fd(), ".", OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty())?;
    let mut dir = nix::dir::Dir::from_fd(src_dir)?;
    let entries: Vec<(std::ffi::CString, Option<nix::dir::Type>)> = dir
        .iter()
        .filter_map(|e| e.ok())
        .filter(|e| {
            let n = e.file_name().to_bytes();
            n != b"." && n != b".."
        })
        .map(|e| (e.file_name().to_owned(), e.file_type()))
        .collect();
    for (name, _) in entries {
        let st = nix::sys::stat::fstatat(from.as_fd(), name.as_c_str(), nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW)?;
        let mode = Mode::from_bits_truncate(st.st_mode & 0o7777);
        match st.st_mode & libc::S_IFMT {
            libc::S_IFDIR => {
                nix::sys::stat::mkdirat(to.as_fd(), name.as_c_str(), mode)?;
                let s = nix::fcntl::openat(
                    from.as_fd(),
                    name.as_c_str(),
                    OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                    Mode::empty(),
                )?;
                let d = nix::fcntl::openat(
                    to.as_fd(),
                    name.as_c_str(),
                    OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                    Mode::empty(),
                )?;
                copy_tree(&s, &d)?;
            }
            libc::S_IFREG => {
                let s = nix::fcntl::openat(
                    from.as_fd(),
                    name.as_c_str(),
                    OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                    Mode::empty(),
                )?;
                let d = nix::fcntl::openat(
                    to.as_fd(),
                    name.as_c_str(),
                    OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_CLOEXEC,
                    mode,
                )?;
                let mut left = st.st_size as usize;
                while left > 0 {
                    // SAFETY: two valid fds, null offset (use file offsets).
                    let n = unsafe { libc::sendfile(d.as_raw_fd(), s.as_raw_fd(), std::ptr::null_mut(), left) };
                    if n <= 0 {
                        if n < 0 && Errno::last() == Errno::EINTR {
                            continue;
                        }
                        break;
                    }
                    left -= n as usize;
                }
            }
            libc::S_IFLNK => {
                let target = nix::fcntl::readlinkat(from.as_fd(), name.as_c_str())?;
                nix::unistd::symlinkat(target.as_os_str(), to.as_fd(), name.as_c_str())?;
            }
            _ => continue,
        }
        let _ = nix::unistd::fchownat(
            to.as_fd(),
            name.as_c_str(),
            Some(nix::unistd::Uid::from_raw(st.st_uid)),
            Some(nix::unistd::Gid::from_raw(st.st_gid)),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        );
    }
    Ok(())
}

fn mount_cgroups(
    root: &Root,
    m: &Mount,
    dest: &Path,
    opts: &MountOptions,
    plan: &RootfsPlan<'_>,
) -> Result<(), LinuxError> {
    let view = plan.cgroups;
    let flags = opts.flags & !(MsFlags::MS_BIND | MsFlags::MS_REC);
    if view.v2 {
        let target = root.mkdir_all(dest, 0o755).map_err(|e| mnt_err(m, e))?;
        if plan.cgroupns {
            nix::mount::mount(Some("cgroup2"), fd_path(&target).as_str(), Some("cgroup2"), flags, None::<&str>)
                .map_err(|e| mnt_err(m, e))?;
        } else if let Some((_, _, host)) = view.hierarchies.first() {
            bind_then_remount(root, host, target, dest, MsFlags::empty(), flags).map_err(|e| mnt_err(m, e))?;
        }
        return Ok(());
    }
    // v1: a tmpfs holding one directory per hierarchy.
    let target = root.mkdir_all(dest, 0o755).map_err(|e| mnt_err(m, e))?;
    nix::mount::mount(
        Some("tmpfs"),
        fd_path(&target).as_str(),
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("mode=755"),
    )
    .map_err(|e| mnt_err(m, e))?;
    for (name, data, host) in &view.hierarchies {
        let sub = dest.join(name);
        let t = root.mkdir_all(&sub, 0o755).map_err(|e| mnt_err(m, e))?;
        if plan.cgroupns {
            nix::mount::mount(Some("cgroup"), fd_path(&t).as_str(), Some("cgroup"), flags, Some(data.as_str()))
                .map_err(|e| mnt_err(m, e))?;
        } else {
            bind_then_remount(root, host, t, &sub, MsFlags::empty(), flags).map_err(|e| mnt_err(m, e))?;
        }
    }
    for (link, target) in &view.links {
        devices::symlink(root, target, &dest.join(link).to_string_lossy())?;
    }
    if flags.contains(MsFlags::MS_RDONLY) {
        let tmp = root.open_path(dest).map_err(|e| mnt_err(m, e))?;
        nix::mount::mount(
            None::<&str>,
            fd_path(&tmp).as_str(),
            None::<&str>,
            MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY | locked_flags(&tmp),
            None::<&str>,
        )
        .map_err(|e| mnt_err(m, e))?;
    }
    Ok(())
}

/// Binds `src` onto `target` (an O_PATH fd of `dest`), then applies
/// `extra` flags with a remount, which a bind ignores on its first call.
/// The remount goes through a fresh fd of `dest` (the old one still names
/// the covered directory) and keeps the flags a user namespace may not
/// clear. Returns an fd of the new mount.
fn bind_then_remount(
    root: &Root,
    src: &Path,
    target: OwnedFd,
    dest: &Path,
    rec: MsFlags,
    extra: MsFlags,
) -> Result<OwnedFd, Errno> {
    nix::mount::mount(Some(src), fd_path(&target).as_str(), None::<&str>, MsFlags::MS_BIND | rec, None::<&str>)?;
    drop(target);
    let mounted = root.open_path(dest)?;
    let extra = extra & !(MsFlags::MS_BIND | MsFlags::MS_REC | MsFlags::MS_REMOUNT);
    if !extra.is_empty() {
        let flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | extra | locked_flags(&mounted);
        nix::mount::mount(None::<&str>, fd_path(&mounted).as_str(), None::<&str>, flags, None::<&str>)?;
    }
    Ok(mounted)
}

/// Step 3: makes the rootfs `/`.
pub fn pivot(rootfs: &Path, no_pivot: bool) -> Result<(), LinuxError> {
    let err = |what: &str, e| LinuxError::sys(format!("{what} (rootfs {})", rootfs.display()), e);
    if no_pivot {
        nix::unistd::chdir(rootfs).map_err(|e| err("chdir", e))?;
        nix::mount::mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
            .map_err(|e| err("cannot move the rootfs onto / (--no-pivot)", e))?;
        nix::unistd::chroot(".").map_err(|e| err("chroot", e))?;
        return nix::unistd::chdir("/").map_err(|e| err("chdir /", e));
    }
    let old = nix::fcntl::open("/", OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC, Mode::empty())
        .map_err(|e| err("open /", e))?;
    let new = nix::fcntl::open(rootfs, OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC, Mode::empty())
        .map_err(|e| err("open rootfs", e))?;
    nix::unistd::fchdir(&new).map_err(|e| err("fchdir rootfs", e))?;
    // pivot_root(".", ".") stacks the old root under the new one; it is
    // then unmounted from where it sits, without a directory for it.
    nix::unistd::pivot_root(".", ".")
        .map_err(|e| err("pivot_root (if the rootfs is on a ramdisk, use --no-pivot)", e))?;
    nix::unistd::fchdir(&old).map_err(|e| err("fchdir old root", e))?;
    nix::mount::mount(None::<&str>, ".", None::<&str>, MsFlags::MS_SLAVE | MsFlags::MS_REC, None::<&str>)
        .map_err(|e| err("cannot make the old root a slave", e))?;
    nix::mount::umount2(".", MntFlags::MNT_DETACH).map_err(|e| err("cannot detach the old root", e))?;
    nix::unistd::chdir("/").map_err(|e| err("chdir /", e))
}

/// Step 4 (after pivot): the root's own propagation.
pub fn set_root_propagation(p: Option<&str>) -> Result<(), LinuxError> {
    let flags = match p.unwrap_or("") {
        "" => return Ok(()),
        "private" => MsFlags::MS_PRIVATE,
        "rprivate" => MsFlags::MS_PRIVATE | MsFlags::MS_REC,
        "slave" => MsFlags::MS_SLAVE,
        "rslave" => MsFlags::MS_SLAVE | MsFlags::MS_REC,
        "shared" => MsFlags::MS_SHARED,
        "rshared" => MsFlags::MS_SHARED | MsFlags::MS_REC,
        "unbindable" => MsFlags::MS_UNBINDABLE,
        "runbindable" => MsFlags::MS_UNBINDABLE | MsFlags::MS_REC,
        other => return Err(LinuxError::Config(format!("unknown linux.rootfsPropagation {other:?}"))),
    };
    nix::mount::mount(None::<&str>, "/", None::<&str>, flags, None::<&str>)
        .map_err(|e| LinuxError::sys("cannot set linux.rootfsPropagation on /", e))
}

/// Masks paths: /dev/null over files, an empty read-only tmpfs over
/// directories. Missing paths are skipped.
pub fn mask_paths(paths: &[String]) -> Result<(), LinuxError> {
    let root = Root::open(Path::new("/")).map_err(|e| LinuxError::sys("open /", e))?;
    for p in paths {
        let fd = match root.open_path(Path::new(p)) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => continue,
            Err(e) => return Err(LinuxError::sys(format!("cannot mask {p}"), e)),
        };
        let st = nix::sys::stat::fstat(&fd).map_err(|e| LinuxError::sys(format!("cannot mask {p}"), e))?;
        let target = fd_path(&fd);
        let r = if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
            nix::mount::mount(Some("tmpfs"), target.as_str(), Some("tmpfs"), MsFlags::MS_RDONLY, None::<&str>)
        } else {
            nix::mount::mount(Some("/dev/null"), target.as_str(), None::<&str>, MsFlags::MS_BIND, None::<&str>)
        };
        r.map_err(|e| LinuxError::sys(format!("cannot mask {p} (linux.maskedPaths)"), e))?;
    }
    Ok(())
}

/// Makes paths read-only (bind onto themselves, then remount read-only,
/// keeping the flags a user namespace may not clear).
pub fn readonly_paths(paths: &[String]) -> Result<(), LinuxError> {
    let root = Root::open(Path::new("/")).map_err(|e| LinuxError::sys("open /", e))?;
    for p in paths {
        let err = |e| LinuxError::sys(format!("cannot make {p} read-only (linux.readonlyPaths)"), e);
        let fd = match root.open_path(Path::new(p)) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => continue,
            Err(e) => return Err(err(e)),
        };
        let target = fd_path(&fd);
        nix::mount::mount(
            Some(target.as_str()),
            target.as_str(),
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .map_err(err)?;
        let mounted = root.open_path(Path::new(p)).map_err(err)?;
        let flags =
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_REC | locked_flags(&mounted);
        nix::mount::mount(None::<&str>, fd_path(&mounted).as_str(), None::<&str>, flags, None::<&str>).map_err(err)?;
    }
    Ok(())
}

/// Remounts `/` read-only (root.readonly).
pub fn readonly_root() -> Result<(), LinuxError> {
    let fd = nix::fcntl::open("/", OFlag::O_PATH | OFlag::O_CLOEXEC, Mode::empty())
        .map_err(|e| LinuxError::sys("open /", e))?;
    let flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | locked_flags(&fd);
    nix::mount::mount(None::<&str>, "/", None::<&str>, flags, None::<&str>)
        .map_err(|e| LinuxError::sys("cannot make the root filesystem read-only (root.readonly)", e))
}

/// Writes linux.sysctl into the container's /proc/sys.
pub fn sysctl(values: &std::collections::HashMap<String, String>) -> Result<(), LinuxError> {
    // A stable order makes failures reproducible.
    let mut keys: Vec<&String> = values.keys().collect();
    keys.sort();
    for k in keys {
        let path = PathBuf::from("/proc/sys").join(k.replace('.', "/"));
        std::fs::write(&path, values[k].as_bytes())
            .map_err(|e| LinuxError::io(format!("cannot set sysctl {k}={}", values[k]), e))?;
    }
    Ok(())
}

/// The directory process.cwd names, made if missing (as runc does).
pub fn make_cwd(cwd: &Path) -> Result<(), LinuxError> {
    let root = Root::open(Path::new("/")).map_err(|e| LinuxError::sys("open /", e))?;
    root.mkdir_all(cwd, 0o755)
        .map(|_| ())
        .map_err(|e| LinuxError::sys(format!("cannot create process.cwd {}", cwd.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mounts_inside_proc_are_refused_except_overlays() {
        assert!(check_proc_destination(Path::new("/proc")).is_ok());
        assert!(check_proc_destination(Path::new("/proc/cpuinfo")).is_ok());
        assert!(check_proc_destination(Path::new("/proc/self/attr")).is_err());
        assert!(check_proc_destination(Path::new("/procfoo")).is_ok());
    }

    #[test]
    fn copy_tree_keeps_files_dirs_and_links() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        std::fs::create_dir(a.path().join("d")).unwrap();
        std::fs::write(a.path().join("d/f"), b"hello").unwrap();
        std::os::unix::fs::symlink("d/f", a.path().join("l")).unwrap();
        let open = |p: &Path| {
            nix::fcntl::open(p, OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty()).unwrap()
        };
        copy_tree(&open(a.path()), &open(b.path())).unwrap();
        assert_eq!(std::fs::read(b.path().join("d/f")).unwrap(), b"hello");
        assert_eq!(std::fs::read_link(b.path().join("l")).unwrap(), PathBuf::from("d/f"));
    }
}
