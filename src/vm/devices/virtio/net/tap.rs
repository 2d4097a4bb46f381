//! The host side of the network device: a TAP interface opened from
//! `/dev/net/tun` with a virtio-net header in front of every frame
//! (IFF_VNET_HDR, TUNSETVNETHDRSZ 12: `struct virtio_net_hdr_v1`, the
//! VIRTIO_F_VERSION_1 layout), so checksum and segmentation offloads pass
//! straight between the guest's buffers and the host's stack.
//!
//! The device logic reaches the TAP only through [`TapBackend`] (one frame
//! per read or write, the offloads), so it is tested on an in-memory TAP
//! without root; the real one needs CAP_NET_ADMIN in the network namespace
//! the TAP lives in.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

/// Length of the virtio-net header on the TAP and in guest buffers
/// (`struct virtio_net_hdr_v1`: flags, gso_type, hdr_len, gso_size,
/// csum_start, csum_offset, num_buffers).
pub const VNET_HDR_LEN: usize = 12;
/// The largest Ethernet frame either side may pass: a 64 KiB GSO packet
/// plus the Ethernet and VLAN headers (as the TAP sizes its own).
pub const MAX_FRAME: usize = 65550;
/// A frame with its header: the most one TX chain may carry.
pub const MAX_PACKET: usize = VNET_HDR_LEN + MAX_FRAME;
/// Longest interface name, NUL excluded (IFNAMSIZ - 1).
pub const MAX_NAME: usize = libc::IFNAMSIZ - 1;

#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error("TAP {name:?}: the name must be 1 to {MAX_NAME} bytes without '/', ':', NUL or spaces")]
    Name { name: String },
    #[error("TAP {name}: cannot open /dev/net/tun")]
    Open {
        name: String,
        #[source]
        source: io::Error,
    },
    #[error("TAP {name}: {what} failed (creating or attaching a TAP needs CAP_NET_ADMIN)")]
    Ioctl {
        name: String,
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("TAP {name}: cannot start the device's worker thread")]
    Worker {
        name: String,
        #[source]
        source: io::Error,
    },
}

/// Guest memory a frame moves from or into (no host copy).
pub type GuestSlice<'a> = vm_memory::VolatileSlice<'a, ()>;

/// What the device needs from its TAP. Reads and writes move one whole
/// frame, its virtio-net header in a buffer of the device's own (which
/// checks it) and the frame straight from or into guest memory; both are
/// nonblocking.
pub trait TapBackend: AsRawFd + Send + 'static {
    /// Reads the next frame: its header into `header`, the rest into
    /// `data` in order. Returns the length with the header; WouldBlock
    /// when there is none. A frame longer than the room given is consumed
    /// and fails (EFAULT, as the TAP does).
    fn read_frame(&mut self, header: &mut [u8; VNET_HDR_LEN], data: &[GuestSlice<'_>]) -> io::Result<usize>;
    /// Sends one frame: `header`, then `data` in order.
    fn write_frame(&mut self, header: &[u8; VNET_HDR_LEN], data: &[GuestSlice<'_>]) -> io::Result<usize>;
    /// Which offloads the host may hand the guest (TUN_F_* bits).
    fn set_offload(&mut self, flags: u32) -> io::Result<()>;
}

/// Whether `name` can name a network interface.
pub fn check_name(name: &str) -> bool {
    (1..=MAX_NAME).contains(&name.len())
        && name != "."
        && name != ".."
        && name.bytes().all(|b| b.is_ascii_graphic() && b != b'/' && b != b':')
}

/// A TAP interface, attached (created if it does not exist) at open.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
}

/// `struct ifreq` as TUNSETIFF reads it: the name and the flags (the rest
/// of the union is padding here).
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

impl Tap {
    /// Opens `/dev/net/tun` and attaches to the TAP `name` with a 12-byte
    /// virtio-net header and no offloads (they are set once the driver
    /// has acked its features).
    pub fn open(name: &str) -> Result<Self, TapError> {
        if !check_name(name) {
            return Err(TapError::Name { name: name.to_string() });
        }
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(|source| TapError::Open { name: name.to_string(), source })?;
        let ioctl_err = |what, source| TapError::Ioctl { name: name.to_string(), what, source };
        let mut req = IfReq { name: [0; libc::IFNAMSIZ], flags: 0, _pad: [0; 22] };
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        req.flags = (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short;
        // SAFETY: TUNSETIFF reads and writes a `struct ifreq`, which `req`
        // lays out (40 bytes) and outlives the call.
        if unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut req) } < 0 {
            return Err(ioctl_err("TUNSETIFF", io::Error::last_os_error()));
        }
        let hdr_len = VNET_HDR_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one int from the pointer.
        if unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETVNETHDRSZ, &hdr_len) } < 0 {
            return Err(ioctl_err("TUNSETVNETHDRSZ", io::Error::last_os_error()));
        }
        let mut tap = Tap { file, name: name.to_string() };
        tap.set_offload(0).map_err(|e| ioctl_err("TUNSETOFFLOAD", e))?;
        Ok(tap)
    }

    /// The TAP behind `fd`, which [`Tap::open`] (or the same steps)
    /// attached: a duplicate, so the caller keeps its own.
    pub fn from_fd(name: &str, fd: &OwnedFd) -> Result<Self, TapError> {
        let file = fd.try_clone().map_err(|source| TapError::Open { name: name.to_string(), source })?;
        Ok(Tap { file: File::from(file), name: name.to_string() })
    }

    /// The descriptor, for a process that hands the TAP on.
    pub fn into_fd(self) -> OwnedFd {
        OwnedFd::from(self.file)
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

impl TapBackend for Tap {
    fn read_frame(&mut self, header: &mut [u8; VNET_HDR_LEN], data: &[GuestSlice<'_>]) -> io::Result<usize> {
        // Held until readv returns: they keep the pointers' memory (and a
        // dirty bitmap, if guest memory had one) accounted for.
        let guards: Vec<_> = data.iter().map(|s| s.ptr_guard_mut()).collect();
        let mut iov = Vec::with_capacity(1 + data.len());
        iov.push(libc::iovec { iov_base: header.as_mut_ptr().cast(), iov_len: header.len() });
        iov.extend(guards.iter().zip(data).map(|(g, s)| libc::iovec { iov_base: g.as_ptr().cast(), iov_len: s.len() }));
        let count = libc::c_int::try_from(iov.len()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: every iovec covers memory valid for writes of its length
        // for the whole call: `header` is borrowed mutably, the others are
        // mapped guest memory whose guards are held; readv writes nothing
        // outside them.
        let n = unsafe { libc::readv(self.file.as_raw_fd(), iov.as_ptr(), count) };
        usize::try_from(n).map_err(|_| io::Error::last_os_error())
    }

    fn write_frame(&mut self, header: &[u8; VNET_HDR_LEN], data: &[GuestSlice<'_>]) -> io::Result<usize> {
        let guards: Vec<_> = data.iter().map(|s| s.ptr_guard()).collect();
        let mut iov = Vec::with_capacity(1 + data.len());
        iov.push(libc::iovec { iov_base: header.as_ptr().cast_mut().cast(), iov_len: header.len() });
        iov.extend(
            guards
                .iter()
                .zip(data)
                .map(|(g, s)| libc::iovec { iov_base: g.as_ptr().cast_mut().cast(), iov_len: s.len() }),
        );
        let count = libc::c_int::try_from(iov.len()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: every iovec covers memory valid for reads of its length
        // for the whole call (`header`, and mapped guest memory whose
        // guards are held); writev only reads through them.
        let n = unsafe { libc::writev(self.file.as_raw_fd(), iov.as_ptr(), count) };
        usize::try_from(n).map_err(|_| io::Error::last_os_error())
    }

    fn set_offload(&mut self, flags: u32) -> io::Result<()> {
        // SAFETY: TUNSETOFFLOAD takes its argument by value.
        if unsafe { libc::ioctl(self.file.as_raw_fd(), libc::TUNSETOFFLOAD, libc::c_ulong::from(flags)) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

/// Root tier test helper: sets the interface `name` up (the TAP passes
/// frames only then).
#[cfg(test)]
pub(crate) fn bring_up(name: &str) -> io::Result<()> {
    // SAFETY: a socket we close below; only used for interface ioctls.
    let sock = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if sock < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut req = IfReq { name: [0; libc::IFNAMSIZ], flags: 0, _pad: [0; 22] };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: SIOCGIFFLAGS writes a `struct ifreq`, which `req` lays out.
    let mut r = unsafe { libc::ioctl(sock, libc::SIOCGIFFLAGS, &mut req) };
    if r >= 0 {
        req.flags |= libc::IFF_UP as libc::c_short;
        // SAFETY: SIOCSIFFLAGS reads a `struct ifreq`.
        r = unsafe { libc::ioctl(sock, libc::SIOCSIFFLAGS, &req) };
    }
    let err = io::Error::last_os_error();
    // SAFETY: closes the socket made above.
    unsafe { libc::close(sock) };
    if r < 0 {
        return Err(err);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_names_are_checked() {
        for ok in ["tap0", "amphi-tap_1", "a", &"x".repeat(15)] {
            assert!(check_name(ok), "{ok}");
        }
        for bad in ["", ".", "..", "a/b", "a:b", "a b", "a\0", &"x".repeat(16)] {
            assert!(!check_name(bad), "{bad:?}");
        }
        assert!(matches!(Tap::open("a/b"), Err(TapError::Name { .. })));
    }

    /// Root tier: needs CAP_NET_ADMIN. Opens a TAP in a fresh network
    /// namespace (a thread of its own that unshares, so the test process
    /// keeps its namespace), sets offloads, writes one frame.
    #[test]
    #[ignore = "needs root (CAP_NET_ADMIN); run with --ignored as root"]
    fn a_real_tap_opens_in_a_fresh_network_namespace() {
        std::thread::spawn(|| {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            let mut tap = Tap::open("amphitest0").unwrap();
            assert_eq!(tap.name(), "amphitest0");
            let flags = libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6;
            tap.set_offload(flags).unwrap();
            // Nothing arrives on an interface that is down.
            let mut buf = vec![0u8; MAX_FRAME];
            let mut hdr = [0u8; VNET_HDR_LEN];
            // SAFETY: `buf` outlives the slice, and nothing else uses it meanwhile.
            let slice = unsafe { GuestSlice::new(buf.as_mut_ptr(), buf.len()) };
            assert_eq!(tap.read_frame(&mut hdr, &[slice]).unwrap_err().kind(), io::ErrorKind::WouldBlock);
            // A frame with an empty header; a down interface drops it
            // after taking it (or refuses with EIO), never blocks.
            let mut frame = vec![0u8; 60];
            frame[..6].copy_from_slice(&[0xff; 6]);
            // SAFETY: as above.
            let slice = unsafe { GuestSlice::new(frame.as_mut_ptr(), frame.len()) };
            match tap.write_frame(&hdr, &[slice]) {
                Ok(n) => assert_eq!(n, VNET_HDR_LEN + frame.len()),
                Err(e) => assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}"),
            }
        })
        .join()
        .unwrap();
    }
}
