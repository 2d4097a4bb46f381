//! The exec fifo: how `start`, a separate invocation, releases the init
//! that `create` left waiting.
//!
//! The init blocks opening `exec.fifo` for writing; `start` opens it for
//! reading, which lets the init go on, and waits for its byte. A pidfd of
//! the init is polled at the same time, so an init that died while waiting
//! is reported instead of hanging `start`.

use std::os::fd::{AsRawFd, OwnedFd};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::stat::Mode;

use super::super::LinuxError;
use crate::container::process;
use crate::container::state::State;
use crate::container::store::{ContainerDir, EXEC_FIFO};

/// Makes the fifo in the container's directory. The init opens it after
/// switching to the container's user, possibly in a user namespace, so it
/// is writable by all (0622) but readable, i.e. startable, by root only.
pub fn make(dir: &ContainerDir) -> Result<(), LinuxError> {
    let path = dir.fifo_path();
    let err = |e| LinuxError::sys(format!("cannot create {}", path.display()), e);
    nix::unistd::mkfifo(&path, Mode::from_bits_truncate(0o622)).map_err(err)?;
    // mkfifo's mode went through the umask.
    nix::sys::stat::fchmodat(
        nix::fcntl::AT_FDCWD,
        &path,
        Mode::from_bits_truncate(0o622),
        nix::sys::stat::FchmodatFlags::FollowSymlink,
    )
    .map_err(err)
}

/// Init side: blocks until `start`, then returns the fifo, which the init
/// keeps open (close-on-exec) so that `start` sees the write end close
/// exactly when the workload has been executed.
pub fn wait_for_start(dir_fd: i32) -> Result<OwnedFd, LinuxError> {
    // SAFETY: the directory fd stays open in this process; borrowing it
    // for one openat call is sound.
    let dir = unsafe { std::os::fd::BorrowedFd::borrow_raw(dir_fd) };
    let fd: OwnedFd = loop {
        match nix::fcntl::openat(dir, EXEC_FIFO, OFlag::O_WRONLY | OFlag::O_CLOEXEC, Mode::empty()) {
            Ok(fd) => break fd,
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(LinuxError::sys("cannot open the exec fifo", e)),
        }
    };
    nix::unistd::write(&fd, b"0").map_err(|e| LinuxError::sys("cannot write the exec fifo", e))?;
    Ok(fd)
}

/// `start` side: releases the init, waits until it has executed the
/// workload (its end of the fifo closes on exec), and removes the fifo.
/// poststart hooks run after this returns, so they see the workload
/// started, as the spec wants.
pub fn release(dir: &ContainerDir, state: &State) -> Result<(), LinuxError> {
    let path = dir.fifo_path();
    // The pidfd first: opening the fifo releases the init, and a workload
    // that exits at once may be reaped (by a shim, a subreaper) before a
    // pidfd taken afterwards could name it.
    let pidfd = process::pidfd(state.pid, state.pid_start_time)
        .map_err(|e| LinuxError::sys("cannot watch the container process", e))?
        .ok_or(LinuxError::ExitedBeforeStart)?;
    let fifo = match nix::fcntl::open(&path, OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC, Mode::empty()) {
        Ok(f) => f,
        Err(Errno::ENOENT) => return Err(LinuxError::NoFifo(path)),
        Err(e) => return Err(LinuxError::sys(format!("cannot open {}", path.display()), e)),
    };
    loop {
        let mut fds = [
            libc::pollfd { fd: fifo.as_raw_fd(), events: libc::POLLIN, revents: 0 },
            libc::pollfd { fd: pidfd.as_raw_fd(), events: libc::POLLIN, revents: 0 },
        ];
        // SAFETY: two valid pollfds for the duration of the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if n < 0 {
            if Errno::last() == Errno::EINTR {
                continue;
            }
            return Err(LinuxError::sys("poll on the exec fifo", Errno::last()));
        }
        if fds[0].revents & libc::POLLIN != 0 {
            let mut b = [0u8; 1];
            match nix::unistd::read(&fifo, &mut b) {
                Ok(1) => break,
                // The writer went away without its byte: the init failed.
                Ok(_) => return Err(LinuxError::ExitedBeforeStart),
                Err(Errno::EAGAIN) => {}
                Err(e) => return Err(LinuxError::sys("cannot read the exec fifo", e)),
            }
        }
        if fds[1].revents & libc::POLLIN != 0 {
            return Err(LinuxError::ExitedBeforeStart);
        }
    }
    let _ = std::fs::remove_file(&path);
    // startContainer hooks run in between; then the exec closes the write
    // end. An init that dies instead also closes it.
    loop {
        let mut pfd = libc::pollfd { fd: fifo.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd for the duration of the call.
        let n = unsafe { libc::poll(&mut pfd, 1, -1) };
        if n < 0 && Errno::last() == Errno::EINTR {
            continue;
        }
        if n < 0 || pfd.revents & (libc::POLLHUP | libc::POLLERR) != 0 {
            break;
        }
        // Stray bytes from someone else writing to the fifo: drain them.
        let mut b = [0u8; 64];
        if matches!(nix::unistd::read(&fifo, &mut b), Ok(0)) {
            break;
        }
    }
    Ok(())
}
