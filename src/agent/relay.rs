//! Byte pumps for stdio streams, used on both sides of the vsock: in the
//! guest between a process's pipes (or pty master) and its vsock streams,
//! on the host between the caller's descriptors and the same streams.
//!
//! A pump copies until its source ends. A source can also be told to
//! *drain*: the process it belongs to has exited, so whatever it wrote is
//! already buffered; the pump copies what is there and stops at the first
//! moment nothing more is readable, instead of waiting for an EOF that a
//! daemonised grandchild holding the pipe open might never give.

use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

/// How often a draining-capable pump looks at its drain flag.
const DRAIN_POLL: Duration = Duration::from_millis(50);
const BUF: usize = 32 * 1024;

/// How a pump ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PumpEnd {
    /// The source ended (EOF, or EIO from a pty master with no slave left).
    Eof,
    /// Drain was asked and the source had nothing more to read.
    Drained,
    /// Reading the source failed.
    ReadError(Errno),
}

fn read_fd(fd: BorrowedFd<'_>, buf: &mut [u8]) -> Result<usize, Errno> {
    loop {
        match nix::unistd::read(fd, buf) {
            Err(Errno::EINTR) => continue,
            r => return r,
        }
    }
}

/// Copies `src` into `dst` until `src` ends, or (with `drain`) until drain
/// is set and `src` has nothing more to read. A destination that fails
/// (a reader that went away) does not stop the pump: what follows is read
/// and dropped, so the writer on the other side is never blocked forever.
pub fn pump(src: BorrowedFd<'_>, dst: &mut dyn Write, drain: Option<&AtomicBool>) -> (PumpEnd, u64) {
    let mut buf = vec![0u8; BUF];
    let mut copied = 0u64;
    let mut dst_ok = true;
    loop {
        if let Some(flag) = drain {
            let draining = flag.load(Ordering::Acquire);
            let wait = if draining { PollTimeout::ZERO } else { PollTimeout::from(DRAIN_POLL.as_millis() as u16) };
            let mut fds = [PollFd::new(src, PollFlags::POLLIN)];
            match poll(&mut fds, wait) {
                Ok(0) if draining => return (PumpEnd::Drained, copied),
                Ok(0) | Err(Errno::EINTR) => continue,
                Ok(_) => {}
                Err(e) => return (PumpEnd::ReadError(e), copied),
            }
        }
        let n = match read_fd(src, &mut buf) {
            Ok(0) | Err(Errno::EIO) => return (PumpEnd::Eof, copied),
            Ok(n) => n,
            Err(Errno::EAGAIN) => continue,
            Err(e) => return (PumpEnd::ReadError(e), copied),
        };
        if dst_ok {
            if dst.write_all(&buf[..n]).and_then(|()| dst.flush()).is_err() {
                dst_ok = false;
            } else {
                copied += n as u64;
            }
        }
    }
}

/// Copies a reader (a vsock or Unix stream) into a descriptor until the
/// reader ends or the descriptor refuses more (its reader went away).
pub fn pump_into_fd(src: &mut dyn Read, dst: BorrowedFd<'_>) -> io::Result<u64> {
    let mut buf = vec![0u8; BUF];
    let mut copied = 0u64;
    loop {
        let n = match src.read(&mut buf) {
            Ok(0) => return Ok(copied),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let mut off = 0;
        while off < n {
            match nix::unistd::write(dst, &buf[off..n]) {
                Ok(w) => off += w,
                Err(Errno::EINTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
        copied += n as u64;
    }
}

/// A `Write` over a borrowed descriptor (the caller's stdout, a pipe).
pub struct FdWriter<'a>(pub BorrowedFd<'a>);

impl Write for FdWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        loop {
            match nix::unistd::write(self.0.as_fd(), buf) {
                Err(Errno::EINTR) => continue,
                r => return r.map_err(io::Error::from),
            }
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;
    use std::sync::Arc;

    #[test]
    fn a_pump_copies_until_eof() {
        let (r, w) = nix::unistd::pipe().unwrap();
        nix::unistd::write(&w, b"hello ").unwrap();
        nix::unistd::write(&w, b"world").unwrap();
        drop(w);
        let mut out = Vec::new();
        let (end, n) = pump(r.as_fd(), &mut out, None);
        assert_eq!((end, n), (PumpEnd::Eof, 11));
        assert_eq!(out, b"hello world");
    }

    #[test]
    fn a_draining_pump_stops_when_the_pipe_is_empty_even_if_still_open() {
        let (r, w) = nix::unistd::pipe().unwrap();
        nix::unistd::write(&w, b"last words").unwrap();
        let drain = Arc::new(AtomicBool::new(false));
        let d = drain.clone();
        let h = std::thread::spawn(move || {
            let mut out = Vec::new();
            let end = pump(r.as_fd(), &mut out, Some(&d)).0;
            (end, out)
        });
        std::thread::sleep(Duration::from_millis(120));
        drain.store(true, Ordering::Release);
        let (end, out) = h.join().unwrap();
        assert_eq!(end, PumpEnd::Drained);
        assert_eq!(out, b"last words", "nothing written before the drain is lost");
        drop(w);
    }

    #[test]
    fn a_failing_destination_does_not_block_the_source() {
        struct Broken;
        impl Write for Broken {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::ErrorKind::BrokenPipe.into())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let (r, w) = nix::unistd::pipe().unwrap();
        let h = std::thread::spawn(move || pump(r.as_fd(), &mut Broken, None));
        for _ in 0..64 {
            nix::unistd::write(&w, &[0u8; 4096]).unwrap();
        }
        drop(w);
        assert_eq!(h.join().unwrap(), (PumpEnd::Eof, 0));
    }

    #[test]
    fn pump_into_fd_copies_a_stream_into_a_pipe() {
        let (r, w) = nix::unistd::pipe().unwrap();
        let mut src = io::Cursor::new(b"input bytes".to_vec());
        assert_eq!(pump_into_fd(&mut src, w.as_fd()).unwrap(), 11);
        drop(w);
        let mut got = Vec::new();
        std::fs::File::from(r).read_to_end(&mut got).unwrap();
        assert_eq!(got, b"input bytes");
    }
}
