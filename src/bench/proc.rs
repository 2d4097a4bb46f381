//! The benchmark's child processes: runtime commands timed to the
//! microsecond, each under a deadline, and the workload's stdout read line
//! by line under a deadline. A watchdog thread (not polling) enforces the
//! deadline and Ctrl-C, so a blocking `wait` keeps the timing exact.

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Set by SIGINT/SIGTERM: every wait gives up, and the run cleans up.
pub static INTERRUPTED: AtomicBool = AtomicBool::new(false);

#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    #[error("cannot run {program}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} did not finish within {} s", .after.as_secs())]
    Timeout { what: String, after: Duration },
    #[error("interrupted")]
    Interrupted,
    #[error("{what} failed ({status}){}", stderr_tail(.stderr))]
    Failed { what: String, status: ExitStatus, stderr: String },
    #[error("{what}: the workload closed its output before saying {expected:?}")]
    Eof { what: String, expected: String },
    #[error("reading the output of {what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

fn stderr_tail(s: &str) -> String {
    let last = s.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("");
    if last.is_empty() {
        String::new()
    } else {
        format!(": {last}")
    }
}

/// One finished command.
pub struct Finished {
    pub elapsed: Duration,
}

/// Runs `cmd` to completion and times it. Its stderr goes to `errfile`
/// (not a pipe: a VMM or container may inherit it and keep it open) and is
/// quoted when it fails. The child gets a process group of its own, so a
/// Ctrl-C on the terminal reaches the benchmark only, which then cleans up
/// in order.
pub fn timed(what: &str, cmd: &mut Command, errfile: &Path, deadline: Duration) -> Result<Finished, ProcError> {
    let err = File::create(errfile).map_err(|source| ProcError::Io { what: what.into(), source })?;
    cmd.stdin(Stdio::null()).stderr(err).process_group(0);
    let start = Instant::now();
    let mut child = cmd
        .spawn()
        .map_err(|source| ProcError::Spawn { program: cmd.get_program().to_string_lossy().into_owned(), source })?;
    let pid = Pid::from_raw(child.id() as i32);
    let (done, watch) = mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || watchdog(pid, deadline, watch));
    let status = child.wait();
    let elapsed = start.elapsed();
    // The receiver may be gone already (the watchdog fired): nothing to tell.
    let _ = done.send(());
    let fired = watchdog.join().unwrap_or(None);
    let status = status.map_err(|source| ProcError::Io { what: what.into(), source })?;
    match fired {
        Some(Fired::Deadline) => return Err(ProcError::Timeout { what: what.into(), after: deadline }),
        Some(Fired::Interrupt) => return Err(ProcError::Interrupted),
        None => {}
    }
    if !status.success() {
        let stderr = std::fs::read_to_string(errfile).unwrap_or_default();
        return Err(ProcError::Failed { what: what.into(), status, stderr });
    }
    Ok(Finished { elapsed })
}

enum Fired {
    Deadline,
    Interrupt,
}

fn watchdog(pid: Pid, deadline: Duration, done: mpsc::Receiver<()>) -> Option<Fired> {
    let end = Instant::now() + deadline;
    loop {
        let left = end.saturating_duration_since(Instant::now());
        // Wake up now and then for Ctrl-C; the deadline itself is exact.
        match done.recv_timeout(left.min(Duration::from_millis(100))) {
            Ok(()) | Err(mpsc::RecvTimeoutError::Disconnected) => return None,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        let fired = if INTERRUPTED.load(Ordering::Relaxed) {
            Fired::Interrupt
        } else if Instant::now() >= end {
            Fired::Deadline
        } else {
            continue;
        };
        // The whole group: a runtime killed halfway may have forked helpers.
        // Cleanup deletes whatever container it left.
        let _ = kill(Pid::from_raw(-pid.as_raw()), Signal::SIGKILL);
        let _ = kill(pid, Signal::SIGKILL);
        return Some(fired);
    }
}

/// The read end of a workload's stdout, read line by line.
pub struct Lines {
    file: File,
    buf: Vec<u8>,
    eof: bool,
}

/// A pipe for a workload's stdout: the write end goes to the runtime
/// command, the read end stays here.
pub fn pipe() -> std::io::Result<(Lines, OwnedFd)> {
    let (r, w) = nix::unistd::pipe()?;
    Ok((Lines { file: File::from(r), buf: Vec::new(), eof: false }, w))
}

impl Lines {
    /// The next complete line, `None` at end of file; gives up at `deadline`.
    pub fn next_line(&mut self, what: &str, deadline: Instant) -> Result<Option<String>, ProcError> {
        loop {
            if let Some(i) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=i).collect();
                return Ok(Some(String::from_utf8_lossy(&line[..i]).into_owned()));
            }
            if self.eof {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                let rest = std::mem::take(&mut self.buf);
                return Ok(Some(String::from_utf8_lossy(&rest).into_owned()));
            }
            if INTERRUPTED.load(Ordering::Relaxed) {
                return Err(ProcError::Interrupted);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ProcError::Timeout { what: what.into(), after: Duration::ZERO });
            }
            let wait = left.min(Duration::from_millis(100));
            let mut fds = [PollFd::new(self.file.as_fd(), PollFlags::POLLIN)];
            let timeout = PollTimeout::try_from(wait.as_millis() as u64).unwrap_or(PollTimeout::MAX);
            match poll(&mut fds, timeout) {
                Ok(0) | Err(nix::errno::Errno::EINTR) => continue,
                Ok(_) => {}
                Err(e) => return Err(ProcError::Io { what: what.into(), source: e.into() }),
            }
            let mut chunk = [0u8; 4096];
            match self.file.read(&mut chunk) {
                Ok(0) => self.eof = true,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(source) => return Err(ProcError::Io { what: what.into(), source }),
            }
        }
    }

    /// Reads until a line equal to `expected`; the lines before it are
    /// returned (a workload's results come before nothing else).
    pub fn until(&mut self, what: &str, expected: &str, deadline: Instant) -> Result<Vec<String>, ProcError> {
        let mut before = Vec::new();
        loop {
            match self.next_line(what, deadline)? {
                Some(l) if l.trim() == expected => return Ok(before),
                Some(l) => before.push(l),
                None => return Err(ProcError::Eof { what: what.into(), expected: expected.into() }),
            }
        }
    }

    /// Every line up to end of file.
    pub fn rest(&mut self, what: &str, deadline: Instant) -> Result<Vec<String>, ProcError> {
        let mut all = Vec::new();
        while let Some(l) = self.next_line(what, deadline)? {
            all.push(l);
        }
        Ok(all)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_is_timed_and_its_failure_quotes_stderr() {
        let dir = tempfile::tempdir().unwrap();
        let err = dir.path().join("err");
        let ok = timed("true", &mut Command::new("true"), &err, Duration::from_secs(10)).unwrap();
        assert!(ok.elapsed < Duration::from_secs(10));
        let mut sh = Command::new("sh");
        sh.args(["-c", "echo first >&2; echo 'no such bundle' >&2; exit 3"]);
        let e = timed("create", &mut sh, &err, Duration::from_secs(10)).err().unwrap();
        let msg = e.to_string();
        assert!(msg.starts_with("create failed (exit status: 3): no such bundle"), "{msg}");
    }

    #[test]
    fn a_command_past_its_deadline_is_killed() {
        let dir = tempfile::tempdir().unwrap();
        let t0 = Instant::now();
        let mut sleep = Command::new("sleep");
        sleep.arg("30");
        let e = timed("sleep", &mut sleep, &dir.path().join("err"), Duration::from_millis(300)).err().unwrap();
        assert!(matches!(e, ProcError::Timeout { .. }), "{e}");
        assert!(t0.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn lines_are_read_up_to_a_marker_and_to_eof() {
        let (mut lines, w) = pipe().unwrap();
        let mut sh = Command::new("sh");
        sh.args(["-c", "echo result a 1; echo ready; printf 'result b 2\\nlast'"]).stdout(w);
        let mut child = sh.spawn().unwrap();
        drop(sh);
        let deadline = Instant::now() + Duration::from_secs(10);
        assert_eq!(lines.until("w", "ready", deadline).unwrap(), vec!["result a 1"]);
        assert_eq!(lines.rest("w", deadline).unwrap(), vec!["result b 2", "last"]);
        child.wait().unwrap();
    }

    #[test]
    fn a_silent_workload_times_out() {
        let (mut lines, _w) = pipe().unwrap();
        let e = lines.next_line("w", Instant::now() + Duration::from_millis(200)).err().unwrap();
        assert!(matches!(e, ProcError::Timeout { .. }));
    }
}
