//! The host process that stands for a container (the init of a container,
//! the VMM of a VM): is it still the same process, is it alive, and how to
//! signal it without hitting a recycled pid.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use nix::errno::Errno;

use super::signal::Sig;

/// What /proc says about a pid we recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    /// The same process (start time matches) and not a zombie.
    Alive,
    /// Exited, reaped, a zombie, or the pid now belongs to another process.
    Gone,
}

/// Reads a process's start time (clock ticks after boot, field 22 of
/// /proc/<pid>/stat) and whether it is a zombie.
pub fn stat(pid: i32) -> Option<(u64, bool)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&text)
}

/// Parses /proc/<pid>/stat text into (start time, is zombie). The command
/// name may hold spaces and parentheses, so fields are counted from the last
/// ')'.
pub fn parse_stat(text: &str) -> Option<(u64, bool)> {
    let rest = &text[text.rfind(')')? + 1..];
    let mut fields = rest.split_ascii_whitespace();
    let state = fields.next()?;
    // After the state (field 3) the start time is field 22: 18 more on.
    let start = fields.nth(18)?.parse().ok()?;
    Some((start, state == "Z" || state == "X"))
}

/// A process's command line, its arguments joined by spaces; `None` when
/// it is gone or has none (a kernel thread, a zombie).
pub fn command_line(pid: i32) -> Option<String> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let args: Vec<String> =
        raw.split(|b| *b == 0).filter(|a| !a.is_empty()).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
    (!args.is_empty()).then(|| args.join(" "))
}

/// Whether `pid` is still the process that started at `start_time`.
pub fn liveness(pid: i32, start_time: u64) -> Liveness {
    if pid <= 0 {
        return Liveness::Gone;
    }
    match stat(pid) {
        Some((start, zombie)) if start == start_time && !zombie => Liveness::Alive,
        _ => Liveness::Gone,
    }
}

/// A pidfd for `pid`, checked against `start_time` after opening so that a
/// signal sent through it can never reach a recycled pid.
pub fn pidfd(pid: i32, start_time: u64) -> Result<Option<OwnedFd>, Errno> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        let e = Errno::last();
        return if e == Errno::ESRCH { Ok(None) } else { Err(e) };
    }
    // SAFETY: the kernel just returned this fd to us and nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    // The pidfd pins the pid: if the start time still matches now, the fd
    // refers to the process we recorded.
    Ok(match stat(pid) {
        Some((start, _)) if start == start_time => Some(fd),
        _ => None,
    })
}

/// Sends signal number `sig` through a pidfd.
pub fn pidfd_signal(fd: &OwnedFd, sig: i32) -> Result<(), Errno> {
    // SAFETY: a valid pidfd, a signal number, no siginfo, no flags.
    let r = unsafe { libc::syscall(libc::SYS_pidfd_send_signal, fd.as_raw_fd(), sig, std::ptr::null::<()>(), 0) };
    if r < 0 {
        Err(Errno::last())
    } else {
        Ok(())
    }
}

/// Signals the recorded process if it is still the same one. Returns false
/// when it is already gone.
pub fn signal(pid: i32, start_time: u64, sig: Sig) -> Result<bool, Errno> {
    match pidfd(pid, start_time)? {
        Some(fd) => match pidfd_signal(&fd, sig.number()) {
            Ok(()) => Ok(true),
            Err(Errno::ESRCH) => Ok(false),
            Err(e) => Err(e),
        },
        None => Ok(false),
    }
}

/// Waits until the process is gone or `timeout` passes; true if gone.
pub fn wait_gone(pid: i32, start_time: u64, timeout: std::time::Duration) -> bool {
    let Ok(Some(fd)) = pidfd(pid, start_time) else { return true };
    let mut pfd = libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
    let deadline = std::time::Instant::now() + timeout;
    loop {
        // A pidfd becomes readable when the process exits (even before it is
        // reaped); a zombie counts as gone for the container's status.
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let ms = left.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: one valid pollfd for the duration of the call.
        let r = unsafe { libc::poll(&mut pfd, 1, ms) };
        if r > 0 {
            return true;
        }
        if r == 0 {
            return liveness(pid, start_time) == Liveness::Gone;
        }
        if Errno::last() != Errno::EINTR {
            return liveness(pid, start_time) == Liveness::Gone;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_odd_command_names() {
        let line = "4242 (a) b (c) S 1 4242 4242 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 987654 1000 10 \
                    18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0";
        assert_eq!(parse_stat(line), Some((987654, false)));
        let zombie = line.replace(") S ", ") Z ");
        assert_eq!(parse_stat(&zombie), Some((987654, true)));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn our_own_process_is_alive_and_a_wrong_start_time_is_not() {
        let me = std::process::id() as i32;
        let (start, zombie) = stat(me).unwrap();
        assert!(!zombie);
        assert_eq!(liveness(me, start), Liveness::Alive);
        assert_eq!(liveness(me, start + 1), Liveness::Gone);
        assert_eq!(liveness(0, 0), Liveness::Gone);
    }

    #[test]
    fn a_reaped_child_is_gone() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id() as i32;
        let (start, _) = stat(pid).unwrap();
        child.wait().unwrap();
        assert_eq!(liveness(pid, start), Liveness::Gone);
        assert!(!signal(pid, start, Sig::TERM).unwrap());
    }
}
