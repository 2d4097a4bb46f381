//! Helpers shared by the root cgroup tests (tests/cgroups_*.rs).

#![allow(dead_code)]

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// Prints why a test cannot run here and returns true (the caller returns).
pub fn skip(reason: &str) -> bool {
    eprintln!("SKIPPED: {reason}");
    println!("SKIPPED: {reason}");
    true
}

pub fn is_root() -> bool {
    // SAFETY: geteuid(2) has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A name no parallel test (or earlier run) uses.
pub fn unique(tag: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!("t-{tag}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

/// Runs `sh -c script` in a child that first moves itself into the cgroups:
/// "0" into each open v1 `tasks` file, "0" into each cgroup2 cgroup.procs.
pub fn spawn_in(tasks: &[RawFd], procs: &[RawFd], script: &str) -> io::Result<Child> {
    let fds: Vec<RawFd> = tasks.iter().chain(procs).copied().collect();
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c").arg(script).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let join = move || {
        for fd in &fds {
            // SAFETY: writes one byte from a static buffer to a descriptor
            // that stays open until exec.
            if unsafe { libc::write(*fd, b"0".as_ptr().cast(), 1) } != 1 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    };
    // SAFETY: the closure runs between fork and exec and only calls write(2);
    // it allocates nothing and takes no lock.
    unsafe { cmd.pre_exec(join) };
    cmd.spawn()
}

/// Opens `<dir>/cgroup.procs` for a child to join a cgroup2 directory.
pub fn open_procs(dir: &Path) -> OwnedFd {
    std::fs::OpenOptions::new().write(true).open(dir.join("cgroup.procs")).unwrap().into()
}

pub fn raw(fds: &[OwnedFd]) -> Vec<RawFd> {
    fds.iter().map(AsRawFd::as_raw_fd).collect()
}

/// Runs `f`, then `cleanup` whether or not `f` panicked, then re-raises.
pub fn with_cleanup<T>(f: impl FnOnce() -> T, cleanup: impl FnOnce()) -> T {
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    cleanup();
    match r {
        Ok(v) => v,
        Err(p) => std::panic::resume_unwind(p),
    }
}

/// A char device node (1:1, /dev/mem's numbers, in no default rule) in a
/// fresh directory under /dev (devtmpfs: never mounted nodev, so opening it
/// is decided by the device cgroup alone). The directory goes away on drop.
pub fn unlisted_device() -> (tempfile::TempDir, std::path::PathBuf) {
    use nix::sys::stat::{makedev, mknod, Mode, SFlag};
    let dir = tempfile::Builder::new().prefix("amphi-t-").tempdir_in("/dev").unwrap();
    let node = dir.path().join("mem");
    mknod(&node, SFlag::S_IFCHR, Mode::from_bits_truncate(0o600), makedev(1, 1)).unwrap();
    (dir, node)
}

pub fn read(p: impl AsRef<Path>) -> String {
    std::fs::read_to_string(p.as_ref()).unwrap_or_else(|e| panic!("{}: {e}", p.as_ref().display())).trim().to_string()
}

/// The first real block device (major, minor), for throttle tests.
pub fn block_device() -> Option<(u32, u32)> {
    for e in std::fs::read_dir("/sys/block").ok()? {
        let e = e.ok()?;
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with("loop") || name.starts_with("ram") {
            continue;
        }
        let dev = std::fs::read_to_string(e.path().join("dev")).ok()?;
        let (a, b) = dev.trim().split_once(':')?;
        return Some((a.parse().ok()?, b.parse().ok()?));
    }
    None
}
