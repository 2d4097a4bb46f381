//! The host end of a VM process's stdio: the descriptors the caller gave
//! (`amphi create`'s own stdin, stdout and stderr, which conmon, containerd
//! or a shell set up) or a host pty, relayed over one vsock stream each.
//!
//! A descriptor that is /dev/null is not relayed at all: the guest process
//! gets /dev/null itself, which saves a vsock connection per stream and
//! behaves the same.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::agent::container::StreamKind;
use crate::agent::relay::{self, FdWriter};
use crate::vm::agent_client::{self, AgentClientError};

/// Where a process's stdio comes from on the host.
#[derive(Debug)]
pub enum Local {
    /// Descriptors 0, 1 and 2 of this process.
    Inherited,
    /// A host pty's slave (its master went to the console socket or to
    /// `run`'s foreground loop).
    Tty(OwnedFd),
}

/// Whether `fd` is /dev/null (or not open at all).
fn is_null(fd: BorrowedFd<'_>) -> bool {
    let path = format!("/proc/self/fd/{}", fd.as_raw_fd());
    match std::fs::metadata(&path) {
        Ok(m) => m.file_type().is_char_device() && std::fs::read_link(&path).is_ok_and(|p| p == Path::new("/dev/null")),
        Err(_) => true,
    }
}

fn std_fd(n: i32) -> BorrowedFd<'static> {
    // SAFETY: 0, 1 and 2 stay open for the life of the process (a closed
    // one is reported as /dev/null by `is_null` and never used).
    unsafe { BorrowedFd::borrow_raw(n) }
}

/// The streams to ask the guest for.
pub fn streams(local: &Local) -> Vec<StreamKind> {
    match local {
        Local::Tty(_) => vec![StreamKind::Tty],
        Local::Inherited => [(0, StreamKind::Stdin), (1, StreamKind::Stdout), (2, StreamKind::Stderr)]
            .into_iter()
            .filter(|(fd, _)| !is_null(std_fd(*fd)))
            .map(|(_, k)| k)
            .collect(),
    }
}

/// Relays in flight; the output relays end when the guest closes their
/// streams (after the process exited and its output was drained).
pub struct Relays {
    outputs: Vec<JoinHandle<()>>,
}

impl Relays {
    /// Waits (at most `limit`) until every output stream was copied out.
    pub fn finish(self, limit: Duration) {
        let deadline = Instant::now() + limit;
        for h in self.outputs {
            while !h.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(2));
            }
            if h.is_finished() {
                let _ = h.join();
            }
        }
    }
}

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new().name(name.into()).spawn(|| {
        crate::vm::jail::seccomp::inherited(crate::vm::jail::seccomp::ThreadKind::Io);
        f()
    })
}

/// Opens the streams `kinds` of `session` and starts relaying them.
pub fn attach(
    uds: &Path,
    session: &str,
    kinds: &[StreamKind],
    local: Local,
    deadline: Instant,
) -> Result<Relays, AgentClientError> {
    let io = |e: std::io::Error| AgentClientError::Protocol(crate::agent::ProtocolError::Frame(e.into()));
    let mut outputs = Vec::new();
    for &kind in kinds {
        let s: UnixStream = agent_client::attach_stream(uds, session, kind, deadline)?;
        match (&local, kind) {
            (Local::Inherited, StreamKind::Stdin) => {
                spawn("stdin", move || {
                    let mut s = s;
                    relay::pump(std_fd(0), &mut s, None);
                    let _ = s.shutdown(std::net::Shutdown::Write);
                })
                .map_err(io)?;
            }
            (Local::Inherited, StreamKind::Stdout | StreamKind::Stderr) => {
                let fd = if kind == StreamKind::Stdout { 1 } else { 2 };
                outputs.push(
                    spawn("stdout", move || {
                        relay::pump(s.as_fd(), &mut FdWriter(std_fd(fd)), None);
                    })
                    .map_err(io)?,
                );
            }
            (Local::Tty(slave), StreamKind::Tty) => {
                let (to_guest, from_guest) = (slave.try_clone().map_err(io)?, slave.try_clone().map_err(io)?);
                let back = s.try_clone().map_err(io)?;
                spawn("tty-in", move || {
                    let mut back = back;
                    relay::pump(to_guest.as_fd(), &mut back, None);
                })
                .map_err(io)?;
                outputs.push(
                    spawn("tty-out", move || {
                        relay::pump(s.as_fd(), &mut FdWriter(from_guest.as_fd()), None);
                    })
                    .map_err(io)?,
                );
            }
            _ => {}
        }
    }
    Ok(Relays { outputs })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_null_is_recognised() {
        let null = std::fs::File::open("/dev/null").unwrap();
        assert!(is_null(null.as_fd()));
        let zero = std::fs::File::open("/dev/zero").unwrap();
        assert!(!is_null(zero.as_fd()));
        let (r, _w) = nix::unistd::pipe().unwrap();
        assert!(!is_null(r.as_fd()));
    }
}
