//! The typed channel between `create` and the container's init: one
//! SOCK_SEQPACKET socketpair (message boundaries kept, EOF when the other
//! side exits or execs), small JSON messages, and an optional fd passed with
//! SCM_RIGHTS (the console's pty master).

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use nix::errno::Errno;
use nix::sys::socket::{
    recvmsg, sendmsg, socketpair, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Messages from the init to `create`.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub enum ToParent {
    /// (Joining path) The init made a user namespace and waits for its maps.
    MapsPlease,
    /// (Joining path) The pid of the process that will exec the workload.
    Pid(i32),
    /// Mounts are in place: run prestart/createRuntime hooks now.
    Hooks,
    /// A seccomp filter with a listener is loaded: its fd rides along, for
    /// the parent to hand to `linux.seccomp.listenerPath`.
    SeccompListener,
    /// Setup is complete; the pty master rides along when `console`.
    Ready { console: bool },
    /// (`create`) The init no longer dies with `create`.
    Committed,
    /// Setup failed; the message carries the whole error chain.
    Error(String),
}

/// Messages from `create` to the init.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub enum ToChild {
    /// uid/gid maps are written.
    MapsDone,
    /// The init is in its cgroup (and mapped): go on with the setup. Carries
    /// the init's pid as the host sees it, for hooks' state.
    Proceed { pid: i32 },
    /// Runtime-namespace hooks are done.
    HooksDone,
    /// `run`: exec the workload now.
    Start,
    /// `create`: the state file records the container; stop dying with
    /// `create` and wait for `start`.
    Commit,
}

const MAX_MSG: usize = 64 * 1024;

#[derive(Debug)]
pub struct Channel {
    fd: OwnedFd,
}

impl Channel {
    /// A connected pair, close-on-exec on both ends.
    pub fn pair() -> Result<(Channel, Channel), Errno> {
        let (a, b) = socketpair(AddressFamily::Unix, SockType::SeqPacket, None, SockFlag::SOCK_CLOEXEC)?;
        Ok((Channel { fd: a }, Channel { fd: b }))
    }

    pub fn raw(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    pub fn send<T: Serialize>(&self, msg: &T, fd: Option<RawFd>) -> Result<(), Errno> {
        let bytes = serde_json::to_vec(msg).map_err(|_| Errno::EINVAL)?;
        let iov = [IoSlice::new(&bytes)];
        let fds;
        let cmsgs: &[ControlMessage] = match fd {
            Some(f) => {
                fds = [f];
                &[ControlMessage::ScmRights(&fds)]
            }
            None => &[],
        };
        loop {
            match sendmsg::<()>(self.fd.as_raw_fd(), &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None) {
                Err(Errno::EINTR) => continue,
                r => return r.map(|_| ()),
            }
        }
    }

    /// The next message, or `None` when the other side is gone.
    pub fn recv<T: DeserializeOwned>(&self) -> Result<Option<(T, Option<OwnedFd>)>, Errno> {
        let mut buf = vec![0u8; MAX_MSG];
        let mut cmsg = nix::cmsg_space!([RawFd; 1]);
        let (n, fd) = loop {
            let mut iov = [IoSliceMut::new(&mut buf)];
            match recvmsg::<()>(self.fd.as_raw_fd(), &mut iov, Some(&mut cmsg), MsgFlags::MSG_CMSG_CLOEXEC) {
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(e),
                Ok(m) => {
                    let mut fd = None;
                    for c in m.cmsgs()? {
                        if let ControlMessageOwned::ScmRights(fds) = c {
                            for (i, f) in fds.into_iter().enumerate() {
                                // SAFETY: the kernel installed this fd for us
                                // with the message; we are its only owner.
                                let owned = unsafe { OwnedFd::from_raw_fd(f) };
                                if i == 0 {
                                    fd = Some(owned);
                                }
                            }
                        }
                    }
                    break (m.bytes, fd);
                }
            }
        };
        if n == 0 {
            return Ok(None);
        }
        let msg = serde_json::from_slice(&buf[..n]).map_err(|_| Errno::EBADMSG)?;
        Ok(Some((msg, fd)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_and_fds_cross_and_eof_is_none() {
        let (a, b) = Channel::pair().unwrap();
        a.send(&ToParent::Ready { console: true }, Some(0)).unwrap();
        let (msg, fd) = b.recv::<ToParent>().unwrap().unwrap();
        assert_eq!(msg, ToParent::Ready { console: true });
        assert!(fd.is_some());
        b.send(&ToChild::Start, None).unwrap();
        assert_eq!(a.recv::<ToChild>().unwrap().unwrap().0, ToChild::Start);
        a.send(&ToParent::Error("x: y".into()), None).unwrap();
        drop(a);
        assert_eq!(b.recv::<ToParent>().unwrap().unwrap().0, ToParent::Error("x: y".into()));
        assert!(b.recv::<ToParent>().unwrap().is_none());
    }
}
