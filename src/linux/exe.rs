//! Protection of the amphi binary against CVE-2019-5736.
//!
//! The container's init is a fork of amphi, so until it execs the workload
//! its /proc/<pid>/exe is the amphi binary. A workload that re-executes
//! "/proc/self/exe" (directly or as a script interpreter) would run amphi's
//! binary inside the container, and another container process could then
//! reopen that file for writing and replace the runtime on the host. So
//! before `create` or `run` forks anything, amphi makes sure it runs from a
//! file nobody can write: a binary on a read-only mount is fine as it is;
//! otherwise amphi copies itself into a sealed memfd and re-executes from
//! it (the fix runc and crun use).

use std::ffi::{CString, OsString};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, OFlag, SealFlag};
use nix::sys::memfd::{memfd_create, MFdFlags};
use nix::sys::stat::Mode;

use super::LinuxError;

/// Set across the re-exec, to the path of the binary that made the copy:
/// it marks the copy (so it never re-executes again) and tells it where it
/// came from (the VM isolation looks for amphi-agent next to amphi).
const GUARD_ENV: &str = "_AMPHI_SEALED_EXE";

/// The binary's own path, remembered by the sealed copy.
static ORIGINAL: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();

/// The path amphi was started from, even when it runs from its sealed copy
/// (whose /proc/self/exe is a memfd).
pub fn original_exe() -> std::path::PathBuf {
    match ORIGINAL.get() {
        Some(p) => p.clone(),
        None => std::env::current_exe().unwrap_or_else(|_| "/proc/self/exe".into()),
    }
}

const SEALS: SealFlag =
    SealFlag::F_SEAL_SEAL.union(SealFlag::F_SEAL_SHRINK).union(SealFlag::F_SEAL_GROW).union(SealFlag::F_SEAL_WRITE);

/// How the running binary is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protection {
    SealedMemfd,
    ReadOnlyMount,
}

/// Whether the running binary cannot be written through /proc/self/exe.
pub fn protection() -> Result<Option<Protection>, Errno> {
    let fd = nix::fcntl::open("/proc/self/exe", OFlag::O_RDONLY | OFlag::O_CLOEXEC, Mode::empty())?;
    if let Ok(bits) = fcntl(fd.as_fd(), FcntlArg::F_GET_SEALS) {
        if SealFlag::from_bits_truncate(bits).contains(SEALS) {
            return Ok(Some(Protection::SealedMemfd));
        }
    }
    let st = nix::sys::statvfs::fstatvfs(&fd)?;
    if st.flags().contains(nix::sys::statvfs::FsFlags::ST_RDONLY) {
        return Ok(Some(Protection::ReadOnlyMount));
    }
    Ok(None)
}

/// Re-executes from a sealed copy unless the binary is already protected.
/// Returns only when no re-exec was needed (or possible).
pub fn ensure_protected() -> Result<(), LinuxError> {
    if protection().map_err(|e| LinuxError::sys("cannot inspect /proc/self/exe", e))?.is_some() {
        if let Some(p) = std::env::var_os(GUARD_ENV).filter(|p| !p.is_empty() && p != "1") {
            let _ = ORIGINAL.set(p.into());
        }
        std::env::remove_var(GUARD_ENV);
        return Ok(());
    }
    if std::env::var_os(GUARD_ENV).is_some() {
        // We are the copy and still unprotected: never loop.
        return Err(LinuxError::Config("re-executed from a sealed memfd but /proc/self/exe is still writable".into()));
    }
    let copy = sealed_copy()?;
    std::env::set_var(GUARD_ENV, original_exe());
    let args: Vec<CString> = std::env::args_os().map(cstring).collect();
    let env: Vec<CString> = std::env::vars_os()
        .map(|(k, v)| {
            let mut kv = k;
            kv.push("=");
            kv.push(v);
            cstring(kv)
        })
        .collect();
    let e = nix::unistd::fexecve(copy.as_fd(), &args, &env).unwrap_err();
    Err(LinuxError::sys("cannot re-execute amphi from its sealed copy", e))
}

fn cstring(s: OsString) -> CString {
    CString::new(s.as_bytes()).unwrap_or_default()
}

/// Copies /proc/self/exe into a sealed memfd.
fn sealed_copy() -> Result<OwnedFd, LinuxError> {
    let err = |e| LinuxError::sys("cannot make a sealed copy of the amphi binary", e);
    let src = nix::fcntl::open("/proc/self/exe", OFlag::O_RDONLY | OFlag::O_CLOEXEC, Mode::empty()).map_err(err)?;
    let size = nix::sys::stat::fstat(&src).map_err(err)?.st_size as usize;
    let mfd = memfd_create(c"amphi", MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING).map_err(err)?;
    let mut left = size;
    while left > 0 {
        // SAFETY: two valid fds; a null offset pointer uses src's offset.
        let n = unsafe { libc::sendfile(mfd.as_raw_fd(), src.as_raw_fd(), std::ptr::null_mut(), left) };
        if n < 0 {
            let e = Errno::last();
            if e == Errno::EINTR {
                continue;
            }
            return Err(err(e));
        }
        if n == 0 {
            break;
        }
        left -= n as usize;
    }
    // F_SEAL_WRITE fails with EBUSY while any page still has an extra
    // reference, which the page cache's per-CPU LRU batches can hold for a
    // moment after the copy (seen under load): those go away, so retry.
    let mut pause = std::time::Duration::from_millis(1);
    loop {
        match fcntl(mfd.as_fd(), FcntlArg::F_ADD_SEALS(SEALS)) {
            Ok(_) => return Ok(mfd),
            Err(Errno::EBUSY) if pause <= std::time::Duration::from_millis(64) => {
                std::thread::sleep(pause);
                pause *= 2;
            }
            Err(e) => return Err(err(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_copy_cannot_be_written() {
        let copy = sealed_copy().unwrap();
        let bits = fcntl(copy.as_fd(), FcntlArg::F_GET_SEALS).unwrap();
        assert!(SealFlag::from_bits_truncate(bits).contains(SEALS));
        let path = format!("/proc/self/fd/{}", copy.as_raw_fd());
        let w = std::fs::OpenOptions::new().write(true).open(&path);
        assert!(w.is_err() || std::io::Write::write(&mut w.unwrap(), b"x").is_err());
    }

    #[test]
    fn the_test_binary_is_not_protected_by_default() {
        // Test binaries live in target/ on a writable mount.
        assert_eq!(protection().unwrap(), None);
    }
}
