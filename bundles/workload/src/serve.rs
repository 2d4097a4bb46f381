//! The long-running workloads: `idle` and the TCP `serve`r. Both end on
//! SIGTERM or SIGINT, with exit status 0.
//!
//! As PID 1 of a container (or under the VM agent) a signal with the
//! default action is ignored by the kernel, so `amphi kill` would not stop
//! us: both install a handler that exits at once. `_exit` is
//! async-signal-safe, and nothing is left to flush (every stdout line is
//! flushed when written, see [`crate::output`]).
//!
//! `serve` protocol, one connection at a time: the first byte picks the
//! test. `T` (throughput): the server reads until EOF and answers the
//! number of bytes after the `T` as 8 bytes little-endian, then closes.
//! `P` (ping-pong): the server reads one byte and writes it back, until
//! EOF. A client that breaks the protocol or resets only loses its own
//! connection (noted on stderr); the server goes on with the next one.

use std::io::{self, ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};

use crate::output::{self, failed, Failure};

extern "C" fn exit_now(_signal: libc::c_int) {
    // SAFETY: _exit is async-signal-safe and ends the process at once.
    unsafe { libc::_exit(0) };
}

fn exit_on_termination() -> Result<(), Failure> {
    for (signal, name) in [(libc::SIGTERM, "SIGTERM"), (libc::SIGINT, "SIGINT")] {
        // SAFETY: a zeroed sigaction is a valid value (empty mask, no flags).
        let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
        action.sa_sigaction = exit_now as extern "C" fn(libc::c_int) as libc::sighandler_t;
        // SAFETY: action is initialised, the handler only calls _exit, and
        // a null old-action pointer is allowed.
        if unsafe { libc::sigaction(signal, &action, std::ptr::null_mut()) } != 0 {
            return Err(failed(format!("install the {name} handler"))(io::Error::last_os_error()));
        }
    }
    Ok(())
}

pub fn idle() -> Result<(), Failure> {
    exit_on_termination()?;
    output::ready()?;
    loop {
        // park may return spuriously; the signal handler is the only way out.
        std::thread::park();
    }
}

pub fn serve(port: u16) -> Result<(), Failure> {
    exit_on_termination()?;
    let listener = TcpListener::bind(("0.0.0.0", port)).map_err(failed(format!("listen on 0.0.0.0:{port}")))?;
    output::ready()?;
    loop {
        let (stream, peer) = listener.accept().map_err(failed(format!("accept on port {port}")))?;
        if let Err(e) = connection(stream) {
            eprintln!("amphi-workload: serve: connection from {peer}: {e}");
        }
    }
}

fn connection(mut stream: TcpStream) -> Result<(), Failure> {
    let mut mode = [0u8; 1];
    if read_some(&mut stream, &mut mode).map_err(failed("read the mode byte"))? == 0 {
        return Ok(());
    }
    match mode[0] {
        b'T' => throughput(stream),
        b'P' => ping_pong(stream),
        other => Err(Failure::new(format!("unknown mode byte 0x{other:02x} (want T or P)"))),
    }
}

fn throughput(mut stream: TcpStream) -> Result<(), Failure> {
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    loop {
        match read_some(&mut stream, &mut buf).map_err(failed("read (throughput)"))? {
            0 => break,
            got => total += got as u64,
        }
    }
    stream.write_all(&total.to_le_bytes()).map_err(failed("write the byte count"))
}

fn ping_pong(mut stream: TcpStream) -> Result<(), Failure> {
    // Without TCP_NODELAY each 1-byte reply waits for Nagle and delayed ACK.
    stream.set_nodelay(true).map_err(failed("set TCP_NODELAY"))?;
    let mut byte = [0u8; 1];
    while read_some(&mut stream, &mut byte).map_err(failed("read (ping-pong)"))? == 1 {
        stream.write_all(&byte).map_err(failed("write (ping-pong)"))?;
    }
    Ok(())
}

/// One read, retried when a signal interrupts it.
fn read_some(stream: &mut TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match stream.read(buf) {
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            r => return r,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Shutdown;

    /// Serves `n` connections from a listener on a free port.
    fn server(n: usize) -> (u16, std::thread::JoinHandle<Vec<String>>) {
        let listener = TcpListener::bind(("127.0.0.1", 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        let h = std::thread::spawn(move || {
            (0..n)
                .map(|_| match connection(listener.accept().unwrap().0) {
                    Ok(()) => String::new(),
                    Err(e) => e.to_string(),
                })
                .collect()
        });
        (port, h)
    }

    #[test]
    fn throughput_counts_the_bytes_after_the_mode() {
        let (port, h) = server(1);
        let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
        c.write_all(b"T").unwrap();
        c.write_all(&vec![7u8; 1_000_003]).unwrap();
        c.shutdown(Shutdown::Write).unwrap();
        let mut reply = Vec::new();
        c.read_to_end(&mut reply).unwrap();
        assert_eq!(reply, 1_000_003u64.to_le_bytes());
        assert_eq!(h.join().unwrap(), [""]);
    }

    #[test]
    fn ping_pong_echoes_each_byte() {
        let (port, h) = server(1);
        let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
        c.write_all(b"P").unwrap();
        for b in [1u8, 2, 255] {
            c.write_all(&[b]).unwrap();
            let mut got = [0u8];
            c.read_exact(&mut got).unwrap();
            assert_eq!(got[0], b);
        }
        c.shutdown(Shutdown::Write).unwrap();
        assert_eq!(c.read(&mut [0u8]).unwrap(), 0);
        assert_eq!(h.join().unwrap(), [""]);
    }

    #[test]
    fn a_bad_client_only_loses_its_connection() {
        let (port, h) = server(2);
        let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
        c.write_all(b"X").unwrap();
        drop(c);
        // An empty connection (connect, close) is not an error.
        drop(TcpStream::connect(("127.0.0.1", port)).unwrap());
        assert_eq!(h.join().unwrap(), ["unknown mode byte 0x58 (want T or P)", ""]);
    }
}
