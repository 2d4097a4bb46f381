//! The container's terminal: a pty made from the container's own devpts,
//! its slave as the process's stdio and controlling terminal and bound on
//! /dev/console, its master handed to whoever asked for it (the
//! `--console-socket` over SCM_RIGHTS, or `run` in the foreground).

use std::io::IoSlice;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

use nix::errno::Errno;
use nix::sys::socket::{
    connect, sendmsg, socket, AddressFamily, ControlMessage, MsgFlags, SockFlag, SockType, UnixAddr,
};

use super::LinuxError;

fn cvt(r: libc::c_int) -> Result<libc::c_int, Errno> {
    if r < 0 {
        Err(Errno::last())
    } else {
        Ok(r)
    }
}

/// Opens a new pty in the mount namespace we are in (after pivot_root, the
/// container's), makes its slave our stdio and controlling terminal, and
/// returns the master with the slave's path.
pub fn setup(size: Option<(u16, u16)>) -> Result<(OwnedFd, String), LinuxError> {
    let err = |what: &str, e| LinuxError::sys(format!("console: {what}"), e);
    // SAFETY: open(2) with a constant path and flags.
    let master = cvt(unsafe { libc::open(c"/dev/ptmx".as_ptr(), libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC) })
        .map_err(|e| err("cannot open /dev/ptmx (is devpts mounted on /dev/pts?)", e))?;
    // SAFETY: we just opened it and own it from here on.
    let master = unsafe { OwnedFd::from_raw_fd(master) };
    let unlock: libc::c_int = 0;
    // SAFETY: TIOCSPTLCK reads one int.
    cvt(unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSPTLCK, &unlock) }).map_err(|e| err("unlockpt", e))?;
    let mut n: libc::c_uint = 0;
    // SAFETY: TIOCGPTN writes one unsigned int.
    cvt(unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCGPTN, &mut n) }).map_err(|e| err("ptsname", e))?;
    // SAFETY: TIOCGPTPEER returns a new fd for the slave (O_RDWR|O_NOCTTY).
    let slave = cvt(unsafe {
        libc::ioctl(master.as_raw_fd(), libc::TIOCGPTPEER, libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC)
    })
    .map_err(|e| err("cannot open the pty slave", e))?;
    // SAFETY: a fresh fd from the kernel, owned here.
    let slave = unsafe { OwnedFd::from_raw_fd(slave) };
    if let Some((rows, cols)) = size {
        let ws = libc::winsize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 };
        // SAFETY: TIOCSWINSZ reads one winsize.
        cvt(unsafe { libc::ioctl(slave.as_raw_fd(), libc::TIOCSWINSZ, &ws) }).map_err(|e| err("window size", e))?;
    }
    // A new session, so the pty can become our controlling terminal.
    let _ = nix::unistd::setsid();
    // SAFETY: TIOCSCTTY with argument 0 on a terminal fd.
    cvt(unsafe { libc::ioctl(slave.as_raw_fd(), libc::TIOCSCTTY, 0) })
        .map_err(|e| err("cannot make the pty the controlling terminal", e))?;
    for fd in 0..3 {
        // SAFETY: dup2 onto the standard descriptors; the old ones close.
        cvt(unsafe { libc::dup2(slave.as_raw_fd(), fd) }).map_err(|e| err("dup2 onto stdio", e))?;
    }
    Ok((master, format!("/dev/pts/{n}")))
}

/// Binds the pty slave onto /dev/console.
pub fn bind_console(slave_path: &str) -> Result<(), LinuxError> {
    let console = Path::new("/dev/console");
    if std::fs::symlink_metadata(console).is_err() {
        std::fs::File::create(console).map_err(|e| LinuxError::io("cannot create /dev/console", e))?;
    }
    nix::mount::mount(Some(slave_path), console, None::<&str>, nix::mount::MsFlags::MS_BIND, None::<&str>)
        .map_err(|e| LinuxError::sys("cannot bind the pty onto /dev/console", e))
}

/// Sends the pty master to the `--console-socket` (what runc, conmon and
/// containerd expect: one message, the fd as SCM_RIGHTS).
pub fn send_to_socket(path: &Path, master: RawFd) -> Result<(), LinuxError> {
    let what = |e| LinuxError::sys(format!("cannot send the console to --console-socket {}", path.display()), e);
    let sock = socket(AddressFamily::Unix, SockType::Stream, SockFlag::SOCK_CLOEXEC, None).map_err(what)?;
    let addr = UnixAddr::new(path).map_err(what)?;
    connect(sock.as_raw_fd(), &addr).map_err(what)?;
    let name = b"/dev/ptmx";
    let iov = [IoSlice::new(name)];
    let fds = [master];
    sendmsg::<()>(sock.as_raw_fd(), &iov, &[ControlMessage::ScmRights(&fds)], MsgFlags::empty(), None).map_err(what)?;
    Ok(())
}

/// Fails early (before anything is created) if the console socket is not a
/// socket we can reach.
pub fn check_socket(path: &Path) -> Result<(), LinuxError> {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::metadata(path) {
        Ok(m) if m.file_type().is_socket() => Ok(()),
        Ok(_) => Err(LinuxError::Config(format!("--console-socket {} is not a socket", path.display()))),
        Err(e) => Err(LinuxError::io(format!("--console-socket {} cannot be reached", path.display()), e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    #[test]
    fn master_reaches_the_console_socket() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("console.sock");
        let l = UnixListener::bind(&p).unwrap();
        check_socket(&p).unwrap();
        let t = std::thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            let mut buf = [0u8; 64];
            let mut cmsg = nix::cmsg_space!([RawFd; 1]);
            let mut iov = [std::io::IoSliceMut::new(&mut buf)];
            let m =
                nix::sys::socket::recvmsg::<()>(s.as_raw_fd(), &mut iov, Some(&mut cmsg), MsgFlags::empty()).unwrap();
            let n = m.cmsgs().unwrap().count();
            (m.bytes, n)
        });
        send_to_socket(&p, 0).unwrap();
        let (bytes, cmsgs) = t.join().unwrap();
        assert_eq!((bytes, cmsgs), (9, 1));
        assert!(check_socket(&d.path().join("missing")).is_err());
    }
}
