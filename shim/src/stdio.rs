//! The container's stdio: between the fifos containerd's client opened and
//! the container's pipes or terminal.
//!
//! Without a terminal the container gets pipes that the shim owns, and one
//! thread per stream copies between a pipe and its fifo, as containerd's
//! runc shim does. Owning the pipes is what lets the shim close the client's
//! fifo as soon as the container's output ends (the client waits for that
//! EOF before it deletes the task), close the container's stdin on CloseIO,
//! and keep the container writing when no client reads (the shim holds a
//! read end of each output fifo, so a write never fails with EPIPE).
//!
//! With a terminal, `amphi create --console-socket` sends the pty master to
//! a socket the shim listens on; the same copy threads then run between the
//! master and the fifos, and ResizePty sets the master's window size.
//!
//! Outputs may also be `file://` paths (appended to). Logging binaries
//! (`binary://`) are refused with an error naming the alternative.

use std::fs::{File, OpenOptions};
use std::io::{self, IoSliceMut, Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::fcntl::OFlag;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};

use crate::runtime::CreateStdio;

#[derive(Debug, thiserror::Error)]
pub enum StdioError {
    #[error("cannot open the {stream} target {path}")]
    Open {
        stream: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "the {stream} target {uri:?} uses a scheme this shim does not support: use a fifo or file path, or file://"
    )]
    Scheme { stream: &'static str, uri: String },
    #[error("cannot create a pipe for the container's {0}")]
    Pipe(&'static str, #[source] nix::Error),
    #[error("cannot start the {0} copy thread")]
    Thread(&'static str, #[source] io::Error),
    #[error("console socket: {what}")]
    Console {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("the task has no terminal: ResizePty needs a task created with terminal: true")]
    NoTerminal,
    #[error("cannot set the terminal's window size")]
    Resize(#[source] nix::Error),
}

/// The stdio containerd asked for (paths or URIs; empty means none).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StdioPaths {
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    pub terminal: bool,
}

/// Where an output stream goes.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    /// A plain path: containerd's fifo (or any existing file).
    Path(PathBuf),
    /// `file://` URI: a file appended to, created if missing.
    File(PathBuf),
}

fn target(stream: &'static str, uri: &str) -> Result<Option<Target>, StdioError> {
    if uri.is_empty() {
        return Ok(None);
    }
    if let Some(path) = uri.strip_prefix("file://") {
        return Ok(Some(Target::File(PathBuf::from(path))));
    }
    if uri.contains("://") {
        return Err(StdioError::Scheme { stream, uri: uri.to_string() });
    }
    Ok(Some(Target::Path(PathBuf::from(uri))))
}

fn is_fifo(p: &Path) -> bool {
    std::fs::metadata(p).is_ok_and(|m| m.file_type().is_fifo())
}

/// An open output: the writer, and for a fifo a read end the shim keeps so
/// that the fifo always has a reader.
struct Output {
    writer: File,
    keepalive: Option<File>,
}

fn open_output(stream: &'static str, t: &Target) -> Result<Output, StdioError> {
    let err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| StdioError::Open { stream, path, source }
    };
    match t {
        Target::Path(p) if is_fifo(p) => {
            // Opening the read end first makes the write open return at once.
            let keepalive = OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(p).map_err(err(p))?;
            let writer = OpenOptions::new().write(true).open(p).map_err(err(p))?;
            Ok(Output { writer, keepalive: Some(keepalive) })
        }
        Target::Path(p) => {
            let writer = OpenOptions::new().append(true).open(p).map_err(err(p))?;
            Ok(Output { writer, keepalive: None })
        }
        Target::File(p) => {
            if let Some(dir) = p.parent() {
                std::fs::create_dir_all(dir).map_err(err(dir))?;
            }
            let writer = OpenOptions::new().append(true).create(true).mode(0o644).open(p).map_err(err(p))?;
            Ok(Output { writer, keepalive: None })
        }
    }
}

/// Opens the stdin fifo for reading without waiting for the client. The
/// stream ends when the client, having opened its end, closes it (Linux
/// reports POLLHUP on a fifo only after a writer came and went), or on
/// CloseIO, whichever comes first, as with containerd's runc shim.
fn open_input(path: &str) -> Result<File, StdioError> {
    let p = Path::new(path);
    OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(p).map_err(|source| StdioError::Open {
        stream: "stdin",
        path: p.to_path_buf(),
        source,
    })
}

fn pipe(stream: &'static str) -> Result<(File, File), StdioError> {
    let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| StdioError::Pipe(stream, e))?;
    Ok((File::from(r), File::from(w)))
}

/// Copies `src` to `dst` until `src` ends (EOF, or EIO from a pty master
/// whose terminal closed), then closes `dst`. If `dst` fails the copy goes
/// on and discards, so the container never blocks on a dead reader.
fn copy_out(stream: &'static str, mut src: File, out: Output) -> Result<JoinHandle<()>, StdioError> {
    std::thread::Builder::new()
        .name(format!("{stream}-copy"))
        .spawn(move || {
            let Output { mut writer, keepalive } = out;
            let mut ok = true;
            let mut buf = vec![0u8; 32 * 1024];
            loop {
                match src.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        if ok && writer.write_all(&buf[..n]).is_err() {
                            ok = false;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
            drop(writer);
            drop(keepalive);
        })
        .map_err(|e| StdioError::Thread(stream, e))
}

/// Forwards the stdin fifo to the container until the client closes it or
/// CloseIO.
struct StdinForwarder {
    /// Dropping it wakes the thread, which drains what the client wrote,
    /// then closes the container's stdin.
    close: Option<OwnedFd>,
    thread: JoinHandle<()>,
}

impl StdinForwarder {
    fn spawn(src: File, mut dst: File) -> Result<StdinForwarder, StdioError> {
        let (wake_r, wake_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| StdioError::Pipe("stdin", e))?;
        let thread = std::thread::Builder::new()
            .name("stdin-copy".into())
            .spawn(move || {
                let mut src = src;
                let mut buf = vec![0u8; 32 * 1024];
                loop {
                    let mut fds =
                        [PollFd::new(src.as_fd(), PollFlags::POLLIN), PollFd::new(wake_r.as_fd(), PollFlags::POLLIN)];
                    match poll(&mut fds, PollTimeout::NONE) {
                        Err(nix::errno::Errno::EINTR) => continue,
                        Err(_) => return,
                        Ok(_) => {}
                    }
                    let closing = fds[1].any().unwrap_or(true);
                    // Move what is readable now (all of it when closing).
                    loop {
                        match src.read(&mut buf) {
                            Ok(0) => return,
                            Ok(n) => {
                                if dst.write_all(&buf[..n]).is_err() {
                                    return;
                                }
                            }
                            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                            Err(_) => return,
                        }
                    }
                    if closing {
                        return;
                    }
                }
            })
            .map_err(|e| StdioError::Thread("stdin", e))?;
        Ok(StdinForwarder { close: Some(wake_w), thread })
    }

    fn close(&mut self) {
        self.close.take();
    }
}

/// The copies running for one container.
#[derive(Default)]
pub struct Io {
    stdin: Option<StdinForwarder>,
    outputs: Vec<JoinHandle<()>>,
    console: Option<File>,
}

impl std::fmt::Debug for Io {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Io")
            .field("stdin", &self.stdin.is_some())
            .field("outputs", &self.outputs.len())
            .field("console", &self.console)
            .finish()
    }
}

impl Io {
    /// Pipes for a container without a terminal; the copies start now, so
    /// nothing the container writes waits for the shim.
    pub fn pipes(paths: &StdioPaths) -> Result<(CreateStdio, Io), StdioError> {
        let mut io = Io::default();
        let mut stdio = CreateStdio::null();
        // Resolve every target before anything is opened.
        let out = target("stdout", &paths.stdout)?;
        let err = target("stderr", &paths.stderr)?;
        if !paths.stdin.is_empty() {
            let src = open_input(&paths.stdin)?;
            let (r, w) = pipe("stdin")?;
            io.stdin = Some(StdinForwarder::spawn(src, w)?);
            stdio.stdin = Stdio::from(r);
        }
        for (stream, t, slot) in [("stdout", out, &mut stdio.stdout), ("stderr", err, &mut stdio.stderr)] {
            let Some(t) = t else { continue };
            let output = open_output(stream, &t)?;
            let (r, w) = pipe(stream)?;
            io.outputs.push(copy_out(stream, r, output)?);
            *slot = Stdio::from(w);
        }
        Ok((stdio, io))
    }

    /// Copies between a container's terminal (the pty master) and the
    /// fifos; a terminal has no separate stderr.
    pub fn console(master: File, paths: &StdioPaths) -> Result<Io, StdioError> {
        let dup = |m: &File, stream| {
            m.try_clone().map_err(|source| StdioError::Console {
                what: format!("cannot duplicate the pty for {stream}"),
                source,
            })
        };
        let mut io = Io::default();
        if let Some(t) = target("stdout", &paths.stdout)? {
            let output = open_output("stdout", &t)?;
            io.outputs.push(copy_out("stdout", dup(&master, "stdout")?, output)?);
        }
        if !paths.stdin.is_empty() {
            let src = open_input(&paths.stdin)?;
            io.stdin = Some(StdinForwarder::spawn(src, dup(&master, "stdin")?)?);
        }
        io.console = Some(master);
        Ok(io)
    }

    /// CloseIO: the container's stdin ends once what the client already
    /// wrote has been passed on.
    pub fn close_stdin(&mut self) {
        if let Some(s) = self.stdin.as_mut() {
            s.close();
        }
    }

    /// ResizePty.
    pub fn resize(&self, width: u32, height: u32) -> Result<(), StdioError> {
        let console = self.console.as_ref().ok_or(StdioError::NoTerminal)?;
        set_window_size(console.as_raw_fd(), width, height)
    }

    /// Lets the output copies drain (they end when the container's side
    /// closes) for up to `timeout`, then releases everything. Copies still
    /// running then (a process that kept the stream open) are left to end
    /// with it.
    pub fn finish(mut self, timeout: Duration) {
        self.close_stdin();
        let deadline = Instant::now() + timeout;
        while self.outputs.iter().any(|t| !t.is_finished()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        if let Some(s) = self.stdin.take() {
            if s.thread.is_finished() {
                let _ = s.thread.join();
            }
        }
        for t in self.outputs.drain(..) {
            if t.is_finished() {
                let _ = t.join();
            }
        }
    }
}

fn set_window_size(fd: RawFd, width: u32, height: u32) -> Result<(), StdioError> {
    let clamp = |v: u32| u16::try_from(v).unwrap_or(u16::MAX);
    let ws = libc::winsize { ws_row: clamp(height), ws_col: clamp(width), ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: TIOCSWINSZ reads one winsize from the pointer, which lives
    // for the whole call.
    let r = unsafe { libc::ioctl(fd, libc::TIOCSWINSZ, &ws) };
    if r < 0 {
        return Err(StdioError::Resize(nix::errno::Errno::last()));
    }
    Ok(())
}

/// The socket `amphi create --console-socket` sends the pty master to. It
/// lives in its own temporary directory (removed on drop): bundle paths are
/// too long for a socket address.
#[derive(Debug)]
pub struct ConsoleSocket {
    dir: tempfile::TempDir,
    listener: UnixListener,
}

impl ConsoleSocket {
    pub fn new() -> Result<ConsoleSocket, StdioError> {
        let what = |w: &str| {
            let w = w.to_string();
            move |source| StdioError::Console { what: w, source }
        };
        let dir =
            tempfile::Builder::new().prefix("amphi-console-").tempdir().map_err(what("cannot create its directory"))?;
        let listener = UnixListener::bind(dir.path().join("console.sock")).map_err(what("cannot listen"))?;
        Ok(ConsoleSocket { dir, listener })
    }

    pub fn path(&self) -> PathBuf {
        self.dir.path().join("console.sock")
    }

    /// The pty master, once amphi has sent it (call after `create`
    /// succeeded: the message is queued by then).
    pub fn receive(&self) -> Result<File, StdioError> {
        let what = |w: &str| {
            let w = w.to_string();
            move |source| StdioError::Console { what: w, source }
        };
        self.listener.set_nonblocking(true).map_err(what("cannot poll"))?;
        let (stream, _) = self.listener.accept().map_err(what("amphi did not connect to send the terminal"))?;
        stream.set_nonblocking(false).map_err(what("cannot read"))?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).map_err(what("cannot read"))?;
        receive_fd(stream.as_raw_fd()).map_err(what("no terminal in amphi's message"))
    }
}

/// Receives one file descriptor sent with SCM_RIGHTS.
fn receive_fd(sock: RawFd) -> io::Result<File> {
    let mut buf = [0u8; 256];
    let mut iov = [IoSliceMut::new(&mut buf)];
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let msg = recvmsg::<()>(sock, &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC)?;
    let mut received = None;
    for c in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(fds) = c {
            for fd in fds {
                // SAFETY: the kernel installed this descriptor in our table
                // for this message; nothing else refers to it.
                let f = unsafe { File::from_raw_fd(fd) };
                if received.is_none() {
                    received = Some(f);
                }
            }
        }
    }
    received.ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "the message carried no file descriptor"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::stat::Mode;

    fn fifo(dir: &Path, name: &str) -> PathBuf {
        let p = dir.join(name);
        nix::unistd::mkfifo(&p, Mode::from_bits_truncate(0o600)).unwrap();
        p
    }

    /// A client's read end, opened as containerd's client opens it.
    fn reader(p: &Path) -> File {
        OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(p).unwrap()
    }

    fn read_all_blocking(mut f: File) -> Vec<u8> {
        nix::fcntl::fcntl(&f, nix::fcntl::FcntlArg::F_SETFL(OFlag::empty())).unwrap();
        let mut out = Vec::new();
        f.read_to_end(&mut out).unwrap();
        out
    }

    /// Plays the container: `sh -c script` with the given stdio.
    fn run_container(stdio: CreateStdio, script: &str) -> std::process::ExitStatus {
        std::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(script)
            .stdin(stdio.stdin)
            .stdout(stdio.stdout)
            .stderr(stdio.stderr)
            .status()
            .unwrap()
    }

    #[test]
    fn output_reaches_the_fifos_and_ends_with_eof() {
        let d = tempfile::tempdir().unwrap();
        let (o, e) = (fifo(d.path(), "out"), fifo(d.path(), "err"));
        let (ro, re) = (reader(&o), reader(&e));
        let paths =
            StdioPaths { stdout: o.display().to_string(), stderr: e.display().to_string(), ..Default::default() };
        let (stdio, io) = Io::pipes(&paths).unwrap();
        assert!(run_container(stdio, "echo out; echo err >&2").success());
        // EOF arrives without any Delete: the copies close the fifos.
        assert_eq!(read_all_blocking(ro), b"out\n");
        assert_eq!(read_all_blocking(re), b"err\n");
        io.finish(Duration::from_secs(5));
    }

    #[test]
    fn stdin_ends_when_the_client_closes_its_end() {
        let d = tempfile::tempdir().unwrap();
        let (i, o) = (fifo(d.path(), "in"), fifo(d.path(), "out"));
        let ro = reader(&o);
        let paths =
            StdioPaths { stdin: i.display().to_string(), stdout: o.display().to_string(), ..Default::default() };
        let (stdio, io) = Io::pipes(&paths).unwrap();
        let container = std::thread::spawn(move || run_container(stdio, "cat"));
        // No client yet: stdin stays open.
        std::thread::sleep(Duration::from_millis(100));
        assert!(!container.is_finished(), "stdin ended before any client came");
        let mut client = OpenOptions::new().write(true).open(&i).unwrap();
        client.write_all(b"hello\n").unwrap();
        drop(client);
        assert!(container.join().unwrap().success());
        assert_eq!(read_all_blocking(ro), b"hello\n");
        io.finish(Duration::from_secs(5));
    }

    #[test]
    fn close_io_ends_stdin_after_what_was_written() {
        let d = tempfile::tempdir().unwrap();
        let (i, o) = (fifo(d.path(), "in"), fifo(d.path(), "out"));
        let ro = reader(&o);
        let paths =
            StdioPaths { stdin: i.display().to_string(), stdout: o.display().to_string(), ..Default::default() };
        let (stdio, mut io) = Io::pipes(&paths).unwrap();
        // The client stays attached; CloseIO is what ends the stream.
        let mut client = OpenOptions::new().write(true).open(&i).unwrap();
        client.write_all(b"hello\n").unwrap();
        let container = std::thread::spawn(move || run_container(stdio, "cat"));
        std::thread::sleep(Duration::from_millis(100));
        assert!(!container.is_finished(), "stdin ended before CloseIO");
        io.close_stdin();
        assert!(container.join().unwrap().success());
        assert_eq!(read_all_blocking(ro), b"hello\n");
        drop(client);
        io.finish(Duration::from_secs(5));
    }

    #[test]
    fn missing_streams_are_dev_null() {
        let (stdio, io) = Io::pipes(&StdioPaths::default()).unwrap();
        assert!(run_container(stdio, "read x; test -z \"$x\" && echo discarded").success());
        io.finish(Duration::from_millis(10));
    }

    #[test]
    fn file_uris_are_appended_to_and_other_schemes_refused() {
        let d = tempfile::tempdir().unwrap();
        let log = d.path().join("logs/out.log");
        std::fs::create_dir_all(log.parent().unwrap()).unwrap();
        std::fs::write(&log, "before\n").unwrap();
        let paths = StdioPaths { stdout: format!("file://{}", log.display()), ..Default::default() };
        let (stdio, io) = Io::pipes(&paths).unwrap();
        assert!(run_container(stdio, "echo after").success());
        io.finish(Duration::from_secs(5));
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "before\nafter\n");

        let paths = StdioPaths { stdout: "binary:///usr/bin/logger?x=1".into(), ..Default::default() };
        let e = Io::pipes(&paths).unwrap_err();
        assert!(e.to_string().contains("file://"), "{e}");
    }

    #[test]
    fn a_missing_fifo_is_an_error_naming_it() {
        let paths = StdioPaths { stdout: "/nonexistent/dir/out".into(), ..Default::default() };
        let e = Io::pipes(&paths).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/dir/out"), "{e}");
    }

    #[test]
    fn the_console_arrives_over_the_socket_and_resizes() {
        let sock = ConsoleSocket::new().unwrap();
        // amphi's own sender, as `create --console-socket` uses it.
        let pty = nix::pty::openpty(None, None).unwrap();
        let master = pty.master;
        amphi::linux::console::send_to_socket(&sock.path(), master.as_raw_fd()).unwrap();
        let got = sock.receive().unwrap();
        let io = Io { console: Some(got), ..Default::default() };
        io.resize(100, 40).unwrap();
        let mut ws = libc::winsize { ws_row: 0, ws_col: 0, ws_xpixel: 0, ws_ypixel: 0 };
        // SAFETY: TIOCGWINSZ writes one winsize into `ws`.
        assert_eq!(unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCGWINSZ, &mut ws) }, 0);
        assert_eq!((ws.ws_col, ws.ws_row), (100, 40));
        assert!(matches!(Io::default().resize(1, 1), Err(StdioError::NoTerminal)));
        let dir = sock.path();
        drop(sock);
        assert!(!dir.exists(), "socket directory removed");
    }

    #[test]
    fn no_console_message_is_an_error() {
        let sock = ConsoleSocket::new().unwrap();
        let e = sock.receive().unwrap_err();
        assert!(e.to_string().contains("did not connect"), "{e}");
    }
}
