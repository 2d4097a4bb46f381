//! Mount options as config.json spells them, and a rootfs handle that
//! resolves every destination inside the rootfs so that a symlink in the
//! image can never send a mount (or a created directory) out of it.
//!
//! Resolution uses openat2(2) with RESOLVE_IN_ROOT: the kernel treats the
//! rootfs as `/` for absolute symlinks and `..`. The resulting O_PATH fd is
//! then used as the mount target through its /proc/self/fd magic link, so
//! nothing can swap the path between the check and the mount.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{openat, openat2, OFlag, OpenHow, ResolveFlag};
use nix::mount::MsFlags;
use nix::sys::stat::{mkdirat, Mode};

/// Parsed mount options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountOptions {
    /// Flags for mount(2).
    pub flags: MsFlags,
    /// Propagation changes applied after the mount, in order.
    pub propagation: Vec<MsFlags>,
    /// Filesystem-specific options, comma-joined.
    pub data: String,
    /// Apply read-only (etc.) to every submount of a recursive bind, via
    /// mount_setattr(2) (`rro`, `rnosuid`, ...).
    pub recursive_attrs: u64,
    pub recursive_clear: u64,
    /// `tmpcopyup`: copy the image's content into a fresh tmpfs.
    pub tmpcopyup: bool,
}

impl Default for MountOptions {
    fn default() -> Self {
        MountOptions {
            flags: MsFlags::empty(),
            propagation: Vec::new(),
            data: String::new(),
            recursive_attrs: 0,
            recursive_clear: 0,
            tmpcopyup: false,
        }
    }
}

impl MountOptions {
    pub fn is_bind(&self) -> bool {
        self.flags.contains(MsFlags::MS_BIND)
    }

    /// Flags that need a remount to take effect on a bind mount (bind
    /// ignores everything but MS_REC on the first call).
    pub fn remount_flags(&self) -> MsFlags {
        self.flags & !(MsFlags::MS_BIND | MsFlags::MS_REC | MsFlags::MS_REMOUNT)
    }
}

/// Parses options the way runc does: known flags set or clear bits, known
/// propagation and recursive options are collected, the rest is data.
pub fn parse_options(opts: &[String]) -> MountOptions {
    let mut o = MountOptions::default();
    let mut data: Vec<&str> = Vec::new();
    for opt in opts {
        let opt = opt.as_str();
        if let Some((set, flag)) = flag_option(opt) {
            if set {
                o.flags |= flag;
            } else {
                o.flags &= !flag;
            }
        } else if let Some(p) = propagation_option(opt) {
            o.propagation.push(p);
        } else if let Some((set, attr)) = recursive_option(opt) {
            if attr & MOUNT_ATTR__ATIME != 0 || opt == "rrelatime" {
                // The access-time modes are one field: mount_setattr(2)
                // wants the whole field cleared to set one (relatime is 0),
                // and clearing one mode means going back to relatime.
                o.recursive_attrs &= !MOUNT_ATTR__ATIME;
                o.recursive_clear |= MOUNT_ATTR__ATIME;
                if set {
                    o.recursive_attrs |= attr;
                }
            } else if set {
                o.recursive_attrs |= attr;
            } else {
                o.recursive_clear |= attr;
            }
        } else if opt == "tmpcopyup" {
            o.tmpcopyup = true;
        } else if !opt.is_empty() {
            data.push(opt);
        }
    }
    o.data = data.join(",");
    o
}

fn flag_option(opt: &str) -> Option<(bool, MsFlags)> {
    Some(match opt {
        "ro" => (true, MsFlags::MS_RDONLY),
        "rw" => (false, MsFlags::MS_RDONLY),
        "nosuid" => (true, MsFlags::MS_NOSUID),
        "suid" => (false, MsFlags::MS_NOSUID),
        "nodev" => (true, MsFlags::MS_NODEV),
        "dev" => (false, MsFlags::MS_NODEV),
        "noexec" => (true, MsFlags::MS_NOEXEC),
        "exec" => (false, MsFlags::MS_NOEXEC),
        "sync" => (true, MsFlags::MS_SYNCHRONOUS),
        "async" => (false, MsFlags::MS_SYNCHRONOUS),
        "dirsync" => (true, MsFlags::MS_DIRSYNC),
        "remount" => (true, MsFlags::MS_REMOUNT),
        "mand" => (true, MsFlags::MS_MANDLOCK),
        "nomand" => (false, MsFlags::MS_MANDLOCK),
        "atime" => (false, MsFlags::MS_NOATIME),
        "noatime" => (true, MsFlags::MS_NOATIME),
        "diratime" => (false, MsFlags::MS_NODIRATIME),
        "nodiratime" => (true, MsFlags::MS_NODIRATIME),
        "bind" => (true, MsFlags::MS_BIND),
        "rbind" => (true, MsFlags::MS_BIND | MsFlags::MS_REC),
        "relatime" => (true, MsFlags::MS_RELATIME),
        "norelatime" => (false, MsFlags::MS_RELATIME),
        "strictatime" => (true, MsFlags::MS_STRICTATIME),
        "nostrictatime" => (false, MsFlags::MS_STRICTATIME),
        "silent" => (true, MsFlags::MS_SILENT),
        "loud" => (false, MsFlags::MS_SILENT),
        "iversion" => (true, MsFlags::MS_I_VERSION),
        "noiversion" => (false, MsFlags::MS_I_VERSION),
        "lazytime" => (true, MsFlags::MS_LAZYTIME),
        "nolazytime" => (false, MsFlags::MS_LAZYTIME),
        "nosymfollow" => (true, MsFlags::from_bits_retain(libc::MS_NOSYMFOLLOW)),
        "symfollow" => (false, MsFlags::from_bits_retain(libc::MS_NOSYMFOLLOW)),
        _ => return None,
    })
}

fn propagation_option(opt: &str) -> Option<MsFlags> {
    Some(match opt {
        "private" => MsFlags::MS_PRIVATE,
        "rprivate" => MsFlags::MS_PRIVATE | MsFlags::MS_REC,
        "shared" => MsFlags::MS_SHARED,
        "rshared" => MsFlags::MS_SHARED | MsFlags::MS_REC,
        "slave" => MsFlags::MS_SLAVE,
        "rslave" => MsFlags::MS_SLAVE | MsFlags::MS_REC,
        "unbindable" => MsFlags::MS_UNBINDABLE,
        "runbindable" => MsFlags::MS_UNBINDABLE | MsFlags::MS_REC,
        _ => return None,
    })
}

// mount_setattr(2) attributes (linux/mount.h).
pub const MOUNT_ATTR_RDONLY: u64 = 0x1;
pub const MOUNT_ATTR_NOSUID: u64 = 0x2;
pub const MOUNT_ATTR_NODEV: u64 = 0x4;
pub const MOUNT_ATTR_NOEXEC: u64 = 0x8;
pub const MOUNT_ATTR_RELATIME: u64 = 0x0;
pub const MOUNT_ATTR_NOATIME: u64 = 0x10;
pub const MOUNT_ATTR_STRICTATIME: u64 = 0x20;
/// The access-time field (relatime, noatime, strictatime).
pub const MOUNT_ATTR__ATIME: u64 = 0x70;
pub const MOUNT_ATTR_NODIRATIME: u64 = 0x80;
pub const MOUNT_ATTR_NOSYMFOLLOW: u64 = 0x0020_0000;

fn recursive_option(opt: &str) -> Option<(bool, u64)> {
    Some(match opt {
        "rro" => (true, MOUNT_ATTR_RDONLY),
        "rrw" => (false, MOUNT_ATTR_RDONLY),
        "rnosuid" => (true, MOUNT_ATTR_NOSUID),
        "rsuid" => (false, MOUNT_ATTR_NOSUID),
        "rnodev" => (true, MOUNT_ATTR_NODEV),
        "rdev" => (false, MOUNT_ATTR_NODEV),
        "rnoexec" => (true, MOUNT_ATTR_NOEXEC),
        "rexec" => (false, MOUNT_ATTR_NOEXEC),
        "rnoatime" => (true, MOUNT_ATTR_NOATIME),
        "ratime" => (false, MOUNT_ATTR_NOATIME),
        "rstrictatime" => (true, MOUNT_ATTR_STRICTATIME),
        "rnostrictatime" => (false, MOUNT_ATTR_STRICTATIME),
        "rrelatime" => (true, MOUNT_ATTR_RELATIME),
        "rnorelatime" => (false, MOUNT_ATTR_RELATIME),
        "rnodiratime" => (true, MOUNT_ATTR_NODIRATIME),
        "rdiratime" => (false, MOUNT_ATTR_NODIRATIME),
        "rnosymfollow" => (true, MOUNT_ATTR_NOSYMFOLLOW),
        "rsymfollow" => (false, MOUNT_ATTR_NOSYMFOLLOW),
        _ => return None,
    })
}

/// Every option name this build understands (for `features`).
pub fn known_options() -> Vec<&'static str> {
    vec![
        "async",
        "atime",
        "bind",
        "defaults",
        "dev",
        "diratime",
        "dirsync",
        "exec",
        "iversion",
        "lazytime",
        "loud",
        "mand",
        "noatime",
        "nodev",
        "nodiratime",
        "noexec",
        "noiversion",
        "nolazytime",
        "nomand",
        "norelatime",
        "nostrictatime",
        "nosuid",
        "nosymfollow",
        "private",
        "ratime",
        "rbind",
        "rdev",
        "rdiratime",
        "relatime",
        "remount",
        "rexec",
        "rnoatime",
        "rnodev",
        "rnodiratime",
        "rnoexec",
        "rnorelatime",
        "rnostrictatime",
        "rnosuid",
        "rnosymfollow",
        "ro",
        "rprivate",
        "rrelatime",
        "rro",
        "rrw",
        "rshared",
        "rslave",
        "rstrictatime",
        "rsuid",
        "rsymfollow",
        "runbindable",
        "rw",
        "shared",
        "silent",
        "slave",
        "strictatime",
        "suid",
        "symfollow",
        "sync",
        "tmpcopyup",
        "unbindable",
    ]
}

/// Lexically cleans a container path (absolute, no `.`/`..` escaping `/`)
/// into a path relative to the rootfs.
pub fn clean_relative(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::ParentDir => {
                out.pop();
            }
            _ => {}
        }
    }
    out
}

/// An open rootfs directory; all lookups stay inside it.
#[derive(Debug)]
pub struct Root {
    fd: OwnedFd,
    path: PathBuf,
}

impl Root {
    pub fn open(path: &Path) -> Result<Root, Errno> {
        let fd = nix::fcntl::open(path, OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty())?;
        Ok(Root { fd, path: path.to_path_buf() })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Opens `p` (a container path) as O_PATH, resolved inside the root.
    pub fn open_path(&self, p: &Path) -> Result<OwnedFd, Errno> {
        self.open_with(p, OFlag::O_PATH | OFlag::O_CLOEXEC)
    }

    pub fn open_with(&self, p: &Path, flags: OFlag) -> Result<OwnedFd, Errno> {
        let rel = clean_relative(p);
        let target: &Path = if rel.as_os_str().is_empty() { Path::new(".") } else { &rel };
        let how = OpenHow::new()
            .flags(flags | OFlag::O_CLOEXEC)
            .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
        retry_eagain(|| openat2(self.fd.as_fd(), target, how))
    }

    /// Creates every missing directory of `p` inside the root and returns an
    /// O_PATH fd of the last one. A dangling symlink on the way (say
    /// /var/run -> /run, with no /run in the image) gets its target made,
    /// inside the root, as runc does.
    pub fn mkdir_all(&self, p: &Path, mode: u32) -> Result<OwnedFd, Errno> {
        self.mkdir_all_depth(p, mode, 0)
    }

    fn mkdir_all_depth(&self, p: &Path, mode: u32, depth: u32) -> Result<OwnedFd, Errno> {
        // The kernel's own limit on symlinks followed in one lookup.
        if depth > 40 {
            return Err(Errno::ELOOP);
        }
        let rel = clean_relative(p);
        match self.open_with(&rel, OFlag::O_PATH | OFlag::O_DIRECTORY) {
            Ok(fd) => return Ok(fd),
            Err(Errno::ENOENT) => {}
            Err(e) => return Err(e),
        }
        let mut cur = self.open_with(Path::new("."), OFlag::O_PATH | OFlag::O_DIRECTORY)?;
        let mut walked = PathBuf::new();
        for comp in rel.components() {
            walked.push(comp);
            match mkdirat(cur.as_fd(), comp.as_os_str(), Mode::from_bits_truncate(mode)) {
                Ok(()) | Err(Errno::EEXIST) => {}
                Err(e) => return Err(e),
            }
            // Re-resolve from the root: if the component is a symlink, it
            // is followed with the root as `/`.
            cur = match self.open_with(&walked, OFlag::O_PATH | OFlag::O_DIRECTORY) {
                Ok(fd) => fd,
                Err(Errno::ENOENT) => {
                    let link = nix::fcntl::readlinkat(cur.as_fd(), comp.as_os_str())?;
                    let link = Path::new(&link);
                    let target = if link.is_absolute() {
                        link.to_path_buf()
                    } else {
                        Path::new("/").join(walked.parent().unwrap_or(Path::new(""))).join(link)
                    };
                    self.mkdir_all_depth(&target, mode, depth + 1)?;
                    self.open_with(&walked, OFlag::O_PATH | OFlag::O_DIRECTORY)?
                }
                Err(e) => return Err(e),
            };
        }
        Ok(cur)
    }

    /// Makes sure a regular file exists at `p` (creating its parents) and
    /// returns an O_PATH fd of it.
    pub fn create_file(&self, p: &Path, mode: u32) -> Result<OwnedFd, Errno> {
        match self.open_path(p) {
            Ok(fd) => return Ok(fd),
            Err(Errno::ENOENT) => {}
            Err(e) => return Err(e),
        }
        let rel = clean_relative(p);
        let name = rel.file_name().ok_or(Errno::EINVAL)?;
        let parent = self.mkdir_all(rel.parent().unwrap_or(Path::new("")), 0o755)?;
        // The parent is an O_PATH fd; openat with it as dirfd is allowed.
        match openat(
            parent.as_fd(),
            name,
            OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_WRONLY,
            Mode::from_bits_truncate(mode),
        ) {
            Ok(_) | Err(Errno::EEXIST) => {}
            Err(e) => return Err(e),
        }
        self.open_path(p)
    }
}

/// The /proc/self/fd path of an fd, used as a mount target or source.
pub fn fd_path(fd: &impl AsRawFd) -> String {
    format!("/proc/self/fd/{}", fd.as_raw_fd())
}

/// The flags a mount currently has that an unprivileged remount must keep
/// (the kernel refuses to clear "locked" flags in a user namespace).
pub fn locked_flags(fd: &impl AsFd) -> MsFlags {
    match nix::sys::statvfs::fstatvfs(fd) {
        Ok(st) => {
            use nix::sys::statvfs::FsFlags;
            let f = st.flags();
            let mut m = MsFlags::empty();
            for (s, ms) in [
                (FsFlags::ST_RDONLY, MsFlags::MS_RDONLY),
                (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
                (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
                (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
                (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
                (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
                (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
            ] {
                if f.contains(s) {
                    m |= ms;
                }
            }
            m
        }
        Err(_) => MsFlags::empty(),
    }
}

/// mount_setattr(2) on a tree, for the recursive `r*` options.
pub fn set_recursive_attrs(target: &impl AsRawFd, set: u64, clear: u64) -> Result<(), Errno> {
    #[repr(C)]
    struct MountAttr {
        attr_set: u64,
        attr_clr: u64,
        propagation: u64,
        userns_fd: u64,
    }
    let attr = MountAttr { attr_set: set, attr_clr: clear, propagation: 0, userns_fd: 0 };
    let empty = c"";
    // SAFETY: a valid fd, a NUL-terminated empty path, AT_EMPTY_PATH |
    // AT_RECURSIVE, and a MountAttr that lives across the call with its size.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            target.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_EMPTY_PATH | libc::AT_RECURSIVE,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if r < 0 {
        Err(Errno::last())
    } else {
        Ok(())
    }
}

/// How often a lookup that met a concurrent mount or rename is tried again.
const EAGAIN_TRIES: u32 = 64;

/// Runs `op` again while it fails with EAGAIN, at most [`EAGAIN_TRIES`]
/// times. openat2(2) with RESOLVE_IN_ROOT returns EAGAIN when a `..` in the
/// path was walked while any mount or rename happened anywhere on the
/// system (the kernel cannot then prove the walk stayed inside the root),
/// and asks the caller to retry. A busy host (parallel creates, each
/// mounting) made an image's `up -> ../../..` symlink fail a create with
/// "cannot mount tmpfs ...: EAGAIN".
fn retry_eagain<T>(mut op: impl FnMut() -> Result<T, Errno>) -> Result<T, Errno> {
    let mut tries = 1;
    loop {
        match op() {
            Err(Errno::EAGAIN) if tries < EAGAIN_TRIES => tries += 1,
            r => return r,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lookup_that_met_a_concurrent_mount_is_tried_again_but_not_forever() {
        // (failures before success, their errno, result, calls made)
        let cases = [
            (2, Errno::EAGAIN, Ok(()), 3),
            (u32::MAX, Errno::EAGAIN, Err(Errno::EAGAIN), EAGAIN_TRIES),
            (u32::MAX, Errno::ENOENT, Err(Errno::ENOENT), 1),
        ];
        for (fails, errno, want, calls) in cases {
            let mut n = 0;
            let got = retry_eagain(|| {
                n += 1;
                if n <= fails {
                    Err(errno)
                } else {
                    Ok(())
                }
            });
            assert_eq!((got, n), (want, calls), "{fails} failures with {errno}");
        }
    }

    fn opts(s: &[&str]) -> MountOptions {
        parse_options(&s.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn flags_data_and_propagation() {
        let o = opts(&["nosuid", "noexec", "mode=755", "size=65536k", "ro", "rw", "rslave"]);
        assert_eq!(o.flags, MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC);
        assert_eq!(o.data, "mode=755,size=65536k");
        assert_eq!(o.propagation, vec![MsFlags::MS_SLAVE | MsFlags::MS_REC]);
        assert!(!o.is_bind());
    }

    #[test]
    fn rbind_and_remount_flags() {
        let o = opts(&["rbind", "ro", "nodev"]);
        assert!(o.is_bind());
        assert!(o.flags.contains(MsFlags::MS_REC));
        assert_eq!(o.remount_flags(), MsFlags::MS_RDONLY | MsFlags::MS_NODEV);
    }

    #[test]
    fn recursive_attributes() {
        let o = opts(&["rbind", "rro", "rnosuid", "rrw"]);
        assert_eq!(o.recursive_attrs, MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID);
        assert_eq!(o.recursive_clear, MOUNT_ATTR_RDONLY);
        // Access-time modes clear the whole field, as mount_setattr(2) asks.
        let o = opts(&["rbind", "rnoatime"]);
        assert_eq!((o.recursive_attrs, o.recursive_clear), (MOUNT_ATTR_NOATIME, MOUNT_ATTR__ATIME));
        let o = opts(&["rbind", "rnoatime", "rrelatime"]);
        assert_eq!((o.recursive_attrs, o.recursive_clear), (0, MOUNT_ATTR__ATIME));
        let o = opts(&["rbind", "rstrictatime", "rro"]);
        assert_eq!(o.recursive_attrs, MOUNT_ATTR_STRICTATIME | MOUNT_ATTR_RDONLY);
    }

    #[test]
    fn clean_relative_never_climbs_out() {
        assert_eq!(clean_relative(Path::new("/a/../../b/./c")), PathBuf::from("b/c"));
        assert_eq!(clean_relative(Path::new("/")), PathBuf::new());
        assert_eq!(clean_relative(Path::new("rel/x")), PathBuf::from("rel/x"));
    }

    #[test]
    fn symlinks_resolve_inside_the_root() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("root");
        std::fs::create_dir(&root).unwrap();
        let outside = d.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        // An absolute symlink and a ../ symlink that point out of the root.
        std::os::unix::fs::symlink(&outside, root.join("abs")).unwrap();
        std::os::unix::fs::symlink("../../outside", root.join("rel")).unwrap();
        let r = Root::open(&root).unwrap();
        r.mkdir_all(Path::new("/abs/made"), 0o755).unwrap();
        r.mkdir_all(Path::new("/rel/made2"), 0o755).unwrap();
        r.create_file(Path::new("/abs/file"), 0o644).unwrap();
        assert!(!outside.join("made").exists() && !outside.join("made2").exists());
        assert!(!outside.join("file").exists());
        // They landed where the root-relative link points: <root>/<outside path>.
        let inside = root.join(outside.strip_prefix("/").unwrap());
        assert!(inside.join("made").is_dir() && inside.join("file").is_file());
    }
}
