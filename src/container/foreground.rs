//! `run` in the foreground: forward signals to the container's process,
//! relay its terminal, reap it and turn its end into an exit code.
//!
//! The process is a child of this one in both isolations (the init of a
//! container, the VMM of a VM), so one loop serves both.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use nix::errno::Errno;
use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::termios;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

/// Signals the foreground loop handles: forwarded to the container, except
/// SIGCHLD (reaping) and SIGWINCH (terminal size).
const FORWARDED: &[Signal] = &[
    Signal::SIGHUP,
    Signal::SIGINT,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGTERM,
    Signal::SIGALRM,
    Signal::SIGCONT,
    Signal::SIGPWR,
];

/// Blocks the handled signals for as long as it lives.
#[derive(Debug)]
pub struct SignalGuard {
    set: SigSet,
    old: SigSet,
}

impl SignalGuard {
    pub fn block() -> SignalGuard {
        let mut set = SigSet::empty();
        for s in FORWARDED {
            set.add(*s);
        }
        set.add(Signal::SIGCHLD);
        set.add(Signal::SIGWINCH);
        let mut old = SigSet::empty();
        // Cannot fail with a valid how and set.
        let _ = nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&set), Some(&mut old));
        // Orphans of the container (without a pid namespace of its own) are
        // reparented to us rather than to the host's init.
        let _ = nix::sys::prctl::set_child_subreaper(true);
        SignalGuard { set, old }
    }
}

impl Drop for SignalGuard {
    fn drop(&mut self) {
        let _ = nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&self.old), None);
    }
}

/// Puts a terminal in raw mode and restores it when dropped.
struct RawMode<'a> {
    fd: BorrowedFd<'a>,
    saved: termios::Termios,
}

impl<'a> RawMode<'a> {
    fn enter(fd: BorrowedFd<'a>) -> Option<RawMode<'a>> {
        let saved = termios::tcgetattr(fd).ok()?;
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        termios::tcsetattr(fd, termios::SetArg::TCSANOW, &raw).ok()?;
        Some(RawMode { fd, saved })
    }
}

impl Drop for RawMode<'_> {
    fn drop(&mut self) {
        let _ = termios::tcsetattr(self.fd, termios::SetArg::TCSANOW, &self.saved);
    }
}

/// Copies the window size of our terminal (if stdin is one) to the pty.
fn copy_winsize(from: BorrowedFd<'_>, to: BorrowedFd<'_>) {
    let mut ws: libc::winsize = libc::winsize { ws_row: 0, ws_col: 0, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: TIOCGWINSZ writes one winsize into the struct we own.
    if unsafe { libc::ioctl(from.as_raw_fd(), libc::TIOCGWINSZ, &mut ws) } == 0 {
        // SAFETY: TIOCSWINSZ reads one winsize from the struct we own.
        unsafe { libc::ioctl(to.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
    }
}

/// Waits for `pid` to end while forwarding signals and relaying the console;
/// returns the exit code `run` reports: the process's status, or 128+N when
/// signal N ended it.
pub fn supervise(guard: &SignalGuard, pid: i32, console: Option<OwnedFd>) -> Result<i32, Errno> {
    let sfd = SignalFd::with_flags(&guard.set, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)?;
    let stdin = std::io::stdin();
    let stdout = std::io::stdout();
    let _raw = console.as_ref().and_then(|_| RawMode::enter(stdin.as_fd()));
    if let Some(m) = &console {
        copy_winsize(stdin.as_fd(), m.as_fd());
    }
    let mut stdin_open = console.is_some();
    let mut master = console;
    let mut exit: Option<i32> = None;
    let mut buf = [0u8; 8192];
    loop {
        if let Some(code) = exit {
            if master.is_none() {
                return Ok(code);
            }
        }
        let mut fds = vec![libc::pollfd { fd: sfd.as_raw_fd(), events: libc::POLLIN, revents: 0 }];
        if let Some(m) = &master {
            fds.push(libc::pollfd { fd: m.as_raw_fd(), events: libc::POLLIN, revents: 0 });
            if stdin_open && exit.is_none() {
                fds.push(libc::pollfd { fd: 0, events: libc::POLLIN, revents: 0 });
            }
        }
        // Once the process has ended, drain what the pty still holds but do
        // not wait for more. The periodic wake-up re-checks the child in
        // case SIGCHLD went to another thread (only in multi-threaded
        // callers such as tests; the binary has one thread).
        let timeout = if exit.is_some() { 0 } else { 200 };
        // SAFETY: `fds` is a valid array of pollfd for the duration of the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
        if n < 0 {
            let e = Errno::last();
            if e == Errno::EINTR {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            if exit.is_some() {
                master = None;
            } else if let Some(code) = reap(pid)? {
                exit = Some(code);
            }
            continue;
        }
        if fds[0].revents & libc::POLLIN != 0 {
            while let Ok(Some(info)) = sfd.read_signal() {
                let Ok(sig) = Signal::try_from(info.ssi_signo as i32) else { continue };
                match sig {
                    Signal::SIGCHLD => {
                        if let Some(code) = reap(pid)? {
                            exit = Some(code);
                        }
                    }
                    Signal::SIGWINCH => {
                        if let Some(m) = &master {
                            copy_winsize(stdin.as_fd(), m.as_fd());
                        }
                    }
                    other => {
                        let _ = nix::sys::signal::kill(Pid::from_raw(pid), other);
                    }
                }
            }
        }
        if let Some(m) = &master {
            let mrev = fds[1].revents;
            if mrev & libc::POLLIN != 0 {
                match nix::unistd::read(m.as_fd(), &mut buf) {
                    Ok(0) | Err(Errno::EIO) => master = None,
                    Ok(k) => write_all(stdout.as_fd(), &buf[..k]),
                    Err(Errno::EINTR) | Err(Errno::EAGAIN) => {}
                    Err(_) => master = None,
                }
            } else if mrev & (libc::POLLHUP | libc::POLLERR) != 0 {
                master = None;
            }
        }
        if let (Some(m), Some(fd)) = (&master, fds.get(2)) {
            if fd.revents & (libc::POLLIN | libc::POLLHUP) != 0 {
                match nix::unistd::read(stdin.as_fd(), &mut buf) {
                    Ok(0) => stdin_open = false,
                    Ok(k) => write_all(m.as_fd(), &buf[..k]),
                    Err(Errno::EINTR) | Err(Errno::EAGAIN) => {}
                    Err(_) => stdin_open = false,
                }
            }
        }
    }
}

fn write_all(fd: BorrowedFd<'_>, mut data: &[u8]) {
    while !data.is_empty() {
        match nix::unistd::write(fd, data) {
            Ok(n) => data = &data[n..],
            Err(Errno::EINTR) => {}
            Err(_) => return,
        }
    }
}

/// Reaps `pid` if it has ended and returns the code to report. Other
/// children (orphans reparented to us as subreaper) are left to the host's
/// init once we exit; reaping them here could steal a child some other part
/// of the caller is waiting for.
fn reap(pid: i32) -> Result<Option<i32>, Errno> {
    loop {
        return match waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(_, code)) => Ok(Some(code)),
            Ok(WaitStatus::Signaled(_, sig, _)) => Ok(Some(128 + sig as i32)),
            Ok(_) => Ok(None),
            Err(Errno::EINTR) => continue,
            Err(e) => Err(e),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_exit_status_and_signal_deaths() {
        let guard = SignalGuard::block();
        // supervise() reaps the child itself; Child::wait must not.
        let child = std::process::Command::new("sh").args(["-c", "exit 7"]).spawn().unwrap();
        assert_eq!(supervise(&guard, child.id() as i32, None).unwrap(), 7);
        std::mem::forget(child);
        let child = std::process::Command::new("sh").args(["-c", "kill -9 $$"]).spawn().unwrap();
        assert_eq!(supervise(&guard, child.id() as i32, None).unwrap(), 128 + 9);
        std::mem::forget(child);
    }
}
