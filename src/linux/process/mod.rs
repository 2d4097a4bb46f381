//! The container's init process: how it is cloned, what it does, and how
//! `create`, `start` and `run` talk to it.

pub mod exec;
pub mod fifo;
pub mod init;
pub mod parent;
pub mod prepare;
pub mod sync;

use std::os::fd::RawFd;

use nix::errno::Errno;
use nix::sched::CloneFlags;

const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// struct clone_args (linux/sched.h), version 2 (with `cgroup`).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// In a child of `create`: swaps its copy of the container directory's
/// descriptor, which carries the container's lock (a flock belongs to the
/// open file, shared across fork), for a fresh O_PATH open of the same
/// directory, which carries none. A child that outlives a killed `create`
/// must never keep other commands out of the container.
pub fn release_lock(dir_fd: RawFd) -> Result<(), super::LinuxError> {
    use nix::fcntl::OFlag;
    // SAFETY: the descriptor is open in this process for as long as the
    // borrow (one openat call).
    let dir = unsafe { std::os::fd::BorrowedFd::borrow_raw(dir_fd) };
    let fresh = nix::fcntl::openat(
        dir,
        ".",
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|e| super::LinuxError::sys("cannot reopen the container's state directory", e))?;
    // SAFETY: dup3 onto a descriptor number this process owns; the old open
    // file (and with it our hold on the lock) is closed atomically.
    let r = unsafe { libc::dup3(std::os::fd::AsRawFd::as_raw_fd(&fresh), dir_fd, libc::O_CLOEXEC) };
    if r < 0 {
        return Err(super::LinuxError::sys("cannot reopen the container's state directory", Errno::last()));
    }
    Ok(())
}

/// Clones a child that runs `f` and never returns into the caller's code.
///
/// clone(2) with a null stack behaves like fork(2) (the child continues on
/// a copy-on-write copy of our stack), but takes namespace flags, which
/// saves a separate unshare and, for CLONE_NEWPID, a second fork.
///
/// With `cgroup` (a cgroup v2 directory), clone3(2) places the child in
/// that cgroup as it is created, which costs nothing, unlike migrating it
/// afterwards.
pub fn clone_child(flags: CloneFlags, cgroup: Option<RawFd>, f: impl FnOnce() -> i32) -> Result<i32, Errno> {
    let r = match cgroup {
        None => {
            // SAFETY: raw clone with a null stack pointer duplicates the
            // calling thread like fork. amphi is single-threaded whenever it
            // creates a container, so no lock can be held by another thread
            // in the child.
            unsafe {
                libc::syscall(
                    libc::SYS_clone,
                    (flags.bits() as libc::c_ulong) | libc::SIGCHLD as libc::c_ulong,
                    std::ptr::null_mut::<libc::c_void>(),
                    std::ptr::null_mut::<libc::c_int>(),
                    std::ptr::null_mut::<libc::c_int>(),
                    0 as libc::c_ulong,
                )
            }
        }
        Some(fd) => {
            let args = CloneArgs {
                flags: flags.bits() as u64 | CLONE_INTO_CGROUP,
                // clone3 refuses an exit signal with CLONE_PARENT (EINVAL):
                // the child then signals our parent as we would.
                exit_signal: if flags.contains(CloneFlags::CLONE_PARENT) { 0 } else { libc::SIGCHLD as u64 },
                cgroup: fd as u64,
                ..CloneArgs::default()
            };
            // SAFETY: as above (fork-like: no stack given, no CLONE_VM); the
            // argument struct lives across the call and its size is passed.
            unsafe { libc::syscall(libc::SYS_clone3, &args as *const CloneArgs, std::mem::size_of::<CloneArgs>()) }
        }
    };
    match r {
        -1 => Err(Errno::last()),
        0 => {
            // The child must never unwind back into the parent's code.
            let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or(1);
            // SAFETY: ends the child without running the parent's atexit
            // handlers or flushing its buffers twice.
            unsafe { libc::_exit(code) }
        }
        pid => Ok(pid as i32),
    }
}
