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
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
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

/// How long the output relays may go without copying a byte, once the
/// process ended, before the rest of its output is given up: only a guest
/// that never closes its streams, or a reader that stopped reading, gets
/// there. A fixed limit on the whole copy would cut the output of a slow
/// but working VM (it did, under nested emulation, after 5 s).
pub const FLUSH_IDLE: Duration = Duration::from_secs(10);

/// The output relays stopped making progress before they ended.
#[derive(Debug, thiserror::Error)]
#[error("no more of its output arrived for {}s while its streams stayed open; the rest was dropped", .0.as_secs())]
pub struct FlushStalled(Duration);

/// Relays in flight; the output relays end when the guest closes their
/// streams (after the process exited and its output was drained).
pub struct Relays {
    outputs: Vec<JoinHandle<()>>,
    /// Bytes the output relays wrote so far: the sign of progress.
    copied: Arc<AtomicU64>,
}

impl Relays {
    /// Waits until every output stream was copied out, for as long as the
    /// copy makes progress: gives up after `idle` without a byte moving.
    pub fn finish(self, idle: Duration) -> Result<(), FlushStalled> {
        let done = || self.outputs.iter().all(JoinHandle::is_finished);
        let ended = wait_while_progress(done, || self.copied.load(Ordering::Relaxed), idle);
        for h in self.outputs.into_iter().filter(JoinHandle::is_finished) {
            let _ = h.join();
        }
        if ended {
            Ok(())
        } else {
            Err(FlushStalled(idle))
        }
    }
}

/// Polls `done` until it holds (true) or `progress` has not changed for
/// `idle` (false).
fn wait_while_progress(done: impl Fn() -> bool, progress: impl Fn() -> u64, idle: Duration) -> bool {
    let (mut seen, mut since) = (progress(), Instant::now());
    loop {
        if done() {
            return true;
        }
        let now = progress();
        if now != seen {
            (seen, since) = (now, Instant::now());
        } else if since.elapsed() >= idle {
            return false;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// A writer that counts the bytes it passed on.
struct Counted<W> {
    inner: W,
    copied: Arc<AtomicU64>,
}

impl<W: std::io::Write> std::io::Write for Counted<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.copied.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
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
    let copied = Arc::new(AtomicU64::new(0));
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
                let copied = copied.clone();
                outputs.push(
                    spawn("stdout", move || {
                        relay::pump(s.as_fd(), &mut Counted { inner: FdWriter(std_fd(fd)), copied }, None);
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
                let copied = copied.clone();
                outputs.push(
                    spawn("tty-out", move || {
                        relay::pump(s.as_fd(), &mut Counted { inner: FdWriter(from_guest.as_fd()), copied }, None);
                    })
                    .map_err(io)?,
                );
            }
            _ => {}
        }
    }
    Ok(Relays { outputs, copied })
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

    #[test]
    fn a_slow_copy_is_waited_for_while_bytes_move() {
        let copied = Arc::new(AtomicU64::new(0));
        let c = copied.clone();
        // 30 steps 5 ms apart: far longer in all than the idle limit.
        let writer = std::thread::spawn(move || {
            for _ in 0..30 {
                std::thread::sleep(Duration::from_millis(5));
                c.fetch_add(1, Ordering::Relaxed);
            }
        });
        let ended = wait_while_progress(
            || copied.load(Ordering::Relaxed) == 30,
            || copied.load(Ordering::Relaxed),
            Duration::from_millis(100),
        );
        writer.join().unwrap();
        assert!(ended);
    }

    #[test]
    fn a_copy_without_progress_is_given_up_after_the_idle_limit() {
        let t0 = Instant::now();
        assert!(!wait_while_progress(|| false, || 7, Duration::from_millis(50)));
        assert!(t0.elapsed() >= Duration::from_millis(50));
    }

    #[test]
    fn relays_that_ended_finish_at_once_and_stuck_ones_are_reported() {
        let ended = Relays { outputs: vec![std::thread::spawn(|| {})], copied: Arc::default() };
        std::thread::sleep(Duration::from_millis(20));
        assert!(ended.finish(Duration::from_secs(60)).is_ok());
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let stuck = Relays {
            outputs: vec![std::thread::spawn(move || {
                let _ = rx.recv();
            })],
            copied: Arc::default(),
        };
        let e = stuck.finish(Duration::from_millis(30)).unwrap_err();
        assert!(e.to_string().contains("the rest was dropped"), "{e}");
        drop(tx);
    }

    #[test]
    fn a_counted_writer_counts_what_went_through() {
        let copied = Arc::new(AtomicU64::new(0));
        let mut w = Counted { inner: Vec::new(), copied: copied.clone() };
        std::io::Write::write_all(&mut w, b"twelve bytes").unwrap();
        assert_eq!((copied.load(Ordering::Relaxed), w.inner.len()), (12, 12));
    }
}
