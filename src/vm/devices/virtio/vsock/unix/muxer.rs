//! The hybrid backend's multiplexer: the listening socket, host streams
//! that have not yet said which port they want, and the established
//! connections, all watched by one epoll fd that the VMM's event loop
//! watches in turn.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::{ErrorKind, Read};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use event_manager::EventSet;
use virtio_vsock::packet::VsockPacket;
use vm_memory::bitmap::BitmapSlice;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet as EpollSet};

/// event-manager and this epoll use different vmm-sys-util versions.
fn to_epoll(e: EventSet) -> EpollSet {
    EpollSet::from_bits_truncate(e.bits())
}

fn from_epoll(e: EpollSet) -> EventSet {
    EventSet::from_bits_truncate(e.bits())
}

use super::connection::{ConnState, VsockConnection};
use crate::vm::devices::virtio::vsock::backend::VsockBackend;
use crate::vm::devices::virtio::vsock::packet::*;
use crate::vm::devices::virtio::vsock::HOST_CID;

/// Host-side ports for host-initiated connections start here, well clear of
/// the ports guests use.
const LOCAL_PORT_BASE: u32 = 1 << 30;
/// A `CONNECT <port>\n` line is never longer than this.
const MAX_CONNECT_LINE: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum MuxerError {
    #[error("cannot listen on vsock socket {path}")]
    Listen {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot set up the vsock backend's epoll")]
    Epoll(#[source] std::io::Error),
}

/// (host port, guest port)
type ConnKey = (u32, u32);

enum RxItem {
    Conn(ConnKey),
    /// A RST for a packet that matched no connection.
    Rst {
        local_port: u32,
        peer_port: u32,
    },
}

enum Watched {
    Listener,
    Pending,
    Conn(ConnKey),
}

struct PendingHost {
    stream: UnixStream,
    line: Vec<u8>,
}

pub struct VsockMuxer {
    guest_cid: u64,
    host_path: PathBuf,
    listener: UnixListener,
    epoll: Epoll,
    watched: HashMap<RawFd, Watched>,
    pending_hosts: HashMap<RawFd, PendingHost>,
    conns: HashMap<ConnKey, VsockConnection<UnixStream>>,
    rxq: VecDeque<RxItem>,
    queued: HashSet<ConnKey>,
    next_local_port: u32,
}

/// Parses `CONNECT <port>\n`.
pub fn parse_connect(line: &[u8]) -> Option<u32> {
    let s = std::str::from_utf8(line).ok()?;
    let port = s.strip_suffix('\n')?.trim_end_matches('\r').strip_prefix("CONNECT ")?;
    port.trim().parse().ok()
}

impl VsockMuxer {
    /// Listens on `path`; guest connections to port P go to `<path>_P`.
    pub fn new(guest_cid: u64, path: &Path) -> Result<Self, MuxerError> {
        let listener = crate::vm::uds::bind(path).map_err(|source| MuxerError::Listen { path: path.into(), source })?;
        listener.set_nonblocking(true).map_err(|source| MuxerError::Listen { path: path.into(), source })?;
        let epoll = Epoll::new().map_err(MuxerError::Epoll)?;
        let mut m = VsockMuxer {
            guest_cid,
            host_path: path.into(),
            listener,
            epoll,
            watched: HashMap::new(),
            pending_hosts: HashMap::new(),
            conns: HashMap::new(),
            rxq: VecDeque::new(),
            queued: HashSet::new(),
            next_local_port: LOCAL_PORT_BASE,
        };
        let fd = m.listener.as_raw_fd();
        m.watch(fd, Watched::Listener, EventSet::IN).map_err(MuxerError::Epoll)?;
        Ok(m)
    }

    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    fn watch(&mut self, fd: RawFd, what: Watched, events: EventSet) -> std::io::Result<()> {
        self.epoll.ctl(ControlOperation::Add, fd, EpollEvent::new(to_epoll(events), fd as u64))?;
        self.watched.insert(fd, what);
        Ok(())
    }

    fn unwatch(&mut self, fd: RawFd) {
        let _ = self.epoll.ctl(ControlOperation::Delete, fd, EpollEvent::default());
        self.watched.remove(&fd);
    }

    fn enqueue(&mut self, key: ConnKey) {
        if self.queued.insert(key) {
            self.rxq.push_back(RxItem::Conn(key));
        }
    }

    /// After a connection changed: update its epoll interest, queue it for
    /// RX, or drop it.
    fn refresh(&mut self, key: ConnKey) {
        let Some(conn) = self.conns.get(&key) else {
            return;
        };
        let fd = conn.stream().as_raw_fd();
        if conn.state() == ConnState::Killed && !conn.has_pending_rx() {
            self.unwatch(fd);
            self.conns.remove(&key);
            return;
        }
        let interest = conn.interest();
        let pending = conn.has_pending_rx();
        let _ = self.epoll.ctl(ControlOperation::Modify, fd, EpollEvent::new(to_epoll(interest), fd as u64));
        if pending {
            self.enqueue(key);
        }
    }

    fn add_conn(&mut self, key: ConnKey, conn: VsockConnection<UnixStream>) {
        let fd = conn.stream().as_raw_fd();
        if self.watch(fd, Watched::Conn(key), EventSet::empty()).is_err() {
            return;
        }
        self.conns.insert(key, conn);
        self.refresh(key);
    }

    fn alloc_local_port(&mut self) -> u32 {
        loop {
            let p = self.next_local_port;
            self.next_local_port = self.next_local_port.checked_add(1).unwrap_or(LOCAL_PORT_BASE);
            if !self.conns.keys().any(|(l, _)| *l == p) {
                return p;
            }
        }
    }

    fn accept_all(&mut self) {
        while let Ok((stream, _)) = self.listener.accept() {
            if stream.set_nonblocking(true).is_err() {
                continue;
            }
            let fd = stream.as_raw_fd();
            if self.watch(fd, Watched::Pending, EventSet::IN).is_ok() {
                self.pending_hosts.insert(fd, PendingHost { stream, line: Vec::new() });
            }
        }
    }

    /// Reads a pending host stream's `CONNECT` line, byte by byte so that
    /// nothing after the newline is consumed.
    fn read_connect(&mut self, fd: RawFd) {
        let Some(p) = self.pending_hosts.get_mut(&fd) else {
            return;
        };
        let mut byte = [0u8; 1];
        let outcome = loop {
            match p.stream.read(&mut byte) {
                Ok(0) => break Err(()),
                Ok(_) => {
                    p.line.push(byte[0]);
                    if byte[0] == b'\n' {
                        break parse_connect(&p.line).ok_or(());
                    }
                    if p.line.len() > MAX_CONNECT_LINE {
                        break Err(());
                    }
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(_) => break Err(()),
            }
        };
        self.unwatch(fd);
        let Some(p) = self.pending_hosts.remove(&fd) else {
            return;
        };
        // A malformed request just gets the stream closed, as Firecracker does.
        if let Ok(peer_port) = outcome {
            let local_port = self.alloc_local_port();
            let conn = VsockConnection::new_local(p.stream, self.guest_cid, local_port, peer_port);
            self.add_conn((local_port, peer_port), conn);
        }
    }

    fn rst(&mut self, local_port: u32, peer_port: u32) {
        self.rxq.push_back(RxItem::Rst { local_port, peer_port });
    }
}

/// Connects without blocking: a host listener that does not accept (full
/// backlog) must not stall the VMM's event loop on a guest's behalf; the
/// guest then gets a RST, as for an absent listener.
fn connect_nonblocking(path: &Path) -> nix::Result<UnixStream> {
    use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, UnixAddr};
    let addr = crate::vm::uds::SocketPath::new(path)
        .map_err(|e| nix::Error::from_raw(e.raw_os_error().unwrap_or(libc::EINVAL)))?;
    let fd = socket(AddressFamily::Unix, SockType::Stream, SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC, None)?;
    connect(fd.as_raw_fd(), &UnixAddr::new(addr.as_path())?)?;
    Ok(UnixStream::from(fd))
}

impl AsRawFd for VsockMuxer {
    fn as_raw_fd(&self) -> RawFd {
        self.epoll.as_raw_fd()
    }
}

impl VsockBackend for VsockMuxer {
    fn send_pkt<B: BitmapSlice>(&mut self, pkt: &VsockPacket<B>) {
        if pkt.dst_cid() != HOST_CID || pkt.src_cid() != self.guest_cid {
            return;
        }
        let key = (pkt.dst_port(), pkt.src_port());
        if pkt.type_() != TYPE_STREAM {
            if pkt.op() != OP_RST {
                self.rst(key.0, key.1);
            }
            return;
        }
        if let Some(conn) = self.conns.get_mut(&key) {
            if pkt.op() == OP_REQUEST {
                // A second REQUEST on a live connection: reset it.
                self.rst(key.0, key.1);
                return;
            }
            conn.send_pkt(pkt);
            self.refresh(key);
            return;
        }
        match pkt.op() {
            OP_REQUEST => {
                let mut path = self.host_path.clone().into_os_string();
                path.push(format!("_{}", pkt.dst_port()));
                match connect_nonblocking(Path::new(&path)) {
                    Ok(stream) => {
                        let conn = VsockConnection::new_peer(stream, self.guest_cid, pkt);
                        self.add_conn(key, conn);
                    }
                    _ => self.rst(key.0, key.1),
                }
            }
            OP_RST => {}
            _ => self.rst(key.0, key.1),
        }
    }

    fn recv_pkt<B: BitmapSlice>(&mut self, pkt: &mut VsockPacket<B>) -> bool {
        while let Some(item) = self.rxq.pop_front() {
            match item {
                RxItem::Rst { local_port, peer_port } => {
                    let h = Header {
                        src_cid: HOST_CID,
                        dst_cid: self.guest_cid,
                        src_port: local_port,
                        dst_port: peer_port,
                        op: OP_RST,
                        flags: 0,
                        buf_alloc: 0,
                        fwd_cnt: 0,
                    };
                    fill_header(pkt, &h);
                    return true;
                }
                RxItem::Conn(key) => {
                    self.queued.remove(&key);
                    let Some(conn) = self.conns.get_mut(&key) else {
                        continue;
                    };
                    let produced = conn.recv_pkt(pkt);
                    self.refresh(key);
                    if produced {
                        return true;
                    }
                }
            }
        }
        false
    }

    fn has_pending_rx(&self) -> bool {
        !self.rxq.is_empty()
    }

    fn notify(&mut self, _events: EventSet) {
        let mut events = vec![EpollEvent::default(); 32];
        loop {
            let n = match self.epoll.wait(0, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => return,
            };
            if n == 0 {
                return;
            }
            for ev in &events[..n] {
                let fd = ev.data() as RawFd;
                match self.watched.get(&fd) {
                    Some(Watched::Listener) => self.accept_all(),
                    Some(Watched::Pending) => self.read_connect(fd),
                    Some(Watched::Conn(key)) => {
                        let key = *key;
                        if let Some(c) = self.conns.get_mut(&key) {
                            c.notify(from_epoll(ev.event_set()));
                        }
                        self.refresh(key);
                    }
                    None => {}
                }
            }
            if n < events.len() {
                return;
            }
        }
    }
}

impl Drop for VsockMuxer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.host_path);
    }
}

#[cfg(test)]
mod tests {
    use super::super::connection::tests::TestPkt;
    use super::*;
    use std::io::Write;
    use std::time::Duration;

    fn muxer() -> (VsockMuxer, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let m = VsockMuxer::new(3, &dir.path().join("v.sock")).unwrap();
        (m, dir)
    }

    fn pump(m: &mut VsockMuxer) {
        for _ in 0..20 {
            m.notify(EventSet::IN);
            if m.has_pending_rx() {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn next(m: &mut VsockMuxer) -> TestPkt {
        let mut out = TestPkt::new(4096);
        assert!(m.recv_pkt(&mut out.pkt()), "a packet for the guest");
        out
    }

    #[test]
    fn connect_lines_are_parsed_strictly() {
        assert_eq!(parse_connect(b"CONNECT 1024\n"), Some(1024));
        assert_eq!(parse_connect(b"CONNECT 52\r\n"), Some(52));
        assert_eq!(parse_connect(b"CONNECT x\n"), None);
        assert_eq!(parse_connect(b"connect 1\n"), None);
        assert_eq!(parse_connect(b"CONNECT 1"), None);
    }

    #[test]
    fn host_connect_becomes_a_guest_request_and_ok_line() {
        let (mut m, dir) = muxer();
        let mut host = UnixStream::connect(dir.path().join("v.sock")).unwrap();
        host.write_all(b"CONNECT 1024\n").unwrap();
        pump(&mut m);
        let req = next(&mut m);
        let p = req.pkt_ro();
        assert_eq!((p.0, p.1, p.2), (OP_REQUEST, LOCAL_PORT_BASE, 1024));
        m.send_pkt(&TestPkt::guest(OP_RESPONSE, 1024, LOCAL_PORT_BASE, 0, &[]).pkt());
        host.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut line = [0u8; 32];
        let n = host.read(&mut line).unwrap();
        assert_eq!(&line[..n], format!("OK {LOCAL_PORT_BASE}\n").as_bytes());

        // Data both ways.
        m.send_pkt(&TestPkt::guest(OP_RW, 1024, LOCAL_PORT_BASE, 0, b"from guest").pkt());
        let n = host.read(&mut line).unwrap();
        assert_eq!(&line[..n], b"from guest");
        host.write_all(b"from host").unwrap();
        pump(&mut m);
        let rw = next(&mut m);
        assert_eq!(rw.pkt_ro().0, OP_RW);
        assert_eq!(&rw.data()[..9], b"from host");

        // Host hangs up: the guest is told, answers RST, the connection goes.
        drop(host);
        pump(&mut m);
        assert_eq!(next(&mut m).pkt_ro().0, OP_SHUTDOWN);
        m.send_pkt(&TestPkt::guest(OP_RST, 1024, LOCAL_PORT_BASE, 0, &[]).pkt());
        assert_eq!(m.connection_count(), 0);
    }

    #[test]
    fn a_guest_refusing_the_connection_closes_the_host_stream() {
        let (mut m, dir) = muxer();
        let mut host = UnixStream::connect(dir.path().join("v.sock")).unwrap();
        host.write_all(b"CONNECT 9\n").unwrap();
        pump(&mut m);
        next(&mut m);
        m.send_pkt(&TestPkt::guest(OP_RST, 9, LOCAL_PORT_BASE, 0, &[]).pkt());
        assert_eq!(m.connection_count(), 0);
        host.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut b = [0u8; 8];
        assert_eq!(host.read(&mut b).unwrap(), 0, "EOF, no OK line");
    }

    #[test]
    fn a_bad_connect_line_closes_the_stream() {
        let (mut m, dir) = muxer();
        let mut host = UnixStream::connect(dir.path().join("v.sock")).unwrap();
        host.write_all(b"HELLO\n").unwrap();
        for _ in 0..20 {
            m.notify(EventSet::IN);
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(!m.has_pending_rx());
        host.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut b = [0u8; 8];
        assert_eq!(host.read(&mut b).unwrap(), 0);
    }

    #[test]
    fn guest_connections_reach_socket_underscore_port() {
        let (mut m, dir) = muxer();
        let listener = UnixListener::bind(dir.path().join("v.sock_52")).unwrap();
        m.send_pkt(&TestPkt::guest(OP_REQUEST, 40000, 52, 0, &[]).pkt());
        let resp = next(&mut m);
        assert_eq!(resp.pkt_ro(), (OP_RESPONSE, 52, 40000));
        let (mut accepted, _) = listener.accept().unwrap();
        m.send_pkt(&TestPkt::guest(OP_RW, 40000, 52, 0, b"hi host").pkt());
        let mut b = [0u8; 16];
        let n = accepted.read(&mut b).unwrap();
        assert_eq!(&b[..n], b"hi host");
    }

    #[test]
    fn a_host_listener_that_never_accepts_does_not_block_the_muxer() {
        let (mut m, dir) = muxer();
        let path = dir.path().join("v.sock_60");
        // A backlog of one, never accepted: after it fills, connects fail
        // at once (EAGAIN) instead of blocking.
        let fd = {
            use nix::sys::socket::*;
            let fd = socket(AddressFamily::Unix, SockType::Stream, SockFlag::empty(), None).unwrap();
            bind(fd.as_raw_fd(), &UnixAddr::new(&path).unwrap()).unwrap();
            listen(&fd, Backlog::new(1).unwrap()).unwrap();
            fd
        };
        let start = std::time::Instant::now();
        let mut resets = 0;
        for port in 0..8u32 {
            m.send_pkt(&TestPkt::guest(OP_REQUEST, 40000 + port, 60, 0, &[]).pkt());
            while m.has_pending_rx() {
                let out = next(&mut m);
                if out.pkt_ro().0 == OP_RST {
                    resets += 1;
                }
            }
        }
        assert!(resets > 0, "connections past the backlog are reset");
        assert!(start.elapsed() < std::time::Duration::from_secs(2), "never blocked");
        drop(fd);
    }

    #[test]
    fn a_guest_connection_to_an_absent_socket_is_reset() {
        let (mut m, _dir) = muxer();
        m.send_pkt(&TestPkt::guest(OP_REQUEST, 40000, 77, 0, &[]).pkt());
        assert_eq!(next(&mut m).pkt_ro(), (OP_RST, 77, 40000));
    }

    #[test]
    fn packets_for_unknown_connections_are_reset_but_rst_is_not_answered() {
        let (mut m, _dir) = muxer();
        m.send_pkt(&TestPkt::guest(OP_RW, 1, 2, 0, b"x").pkt());
        assert_eq!(next(&mut m).pkt_ro(), (OP_RST, 2, 1));
        m.send_pkt(&TestPkt::guest(OP_RST, 1, 2, 0, &[]).pkt());
        assert!(!m.has_pending_rx());
    }

    #[test]
    fn packets_from_another_cid_are_dropped() {
        let (mut m, _dir) = muxer();
        let t = TestPkt::guest(OP_RW, 1, 2, 0, b"x");
        let mut t2 = t;
        t2.pkt().set_src_cid(99);
        m.send_pkt(&t2.pkt());
        assert!(!m.has_pending_rx());
    }

    /// Whatever a guest sends (it is untrusted), the backend must neither
    /// panic nor stop working: random packets, many aimed at a live
    /// host-initiated connection and a live guest-initiated one.
    #[test]
    fn random_guest_packets_never_break_the_muxer() {
        let (mut m, dir) = muxer();
        let _guest_side = UnixListener::bind(dir.path().join("v.sock_52")).unwrap();
        let mut host = UnixStream::connect(dir.path().join("v.sock")).unwrap();
        host.write_all(b"CONNECT 1024\n").unwrap();
        pump(&mut m);
        let _ = next(&mut m);
        let mut x: u64 = 0x1234_5678_9abc_def1;
        let mut rnd = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for i in 0..5000 {
            let r = rnd();
            let op = (r % 9) as u16;
            let (src, dst) = match (r >> 8) % 4 {
                0 => (1024, LOCAL_PORT_BASE),
                1 => (40000, 52),
                _ => ((rnd() % 2000) as u32, (rnd() % 2000) as u32),
            };
            let data: Vec<u8> = (0..(rnd() % 64) as usize).map(|_| rnd() as u8).collect();
            let mut t = TestPkt::guest(op, src, dst, (rnd() % 4) as u32, &data);
            {
                let mut p = t.pkt();
                p.set_buf_alloc(rnd() as u32).set_fwd_cnt(rnd() as u32);
                if rnd() % 8 == 0 {
                    p.set_len(rnd() as u32);
                }
                if rnd() % 16 == 0 {
                    p.set_type(2);
                }
            }
            m.send_pkt(&t.pkt());
            if i % 7 == 0 {
                let _ = host.write(b"x");
                m.notify(EventSet::IN);
            }
            let mut out = TestPkt::new(4096);
            while m.has_pending_rx() {
                if !m.recv_pkt(&mut out.pkt()) {
                    break;
                }
            }
        }
        // Still serving: a new host connection gets its REQUEST through.
        let mut again = UnixStream::connect(dir.path().join("v.sock")).unwrap();
        again.write_all(b"CONNECT 7\n").unwrap();
        pump(&mut m);
        assert!(m.has_pending_rx());
    }

    /// A state directory deeper than a socket address takes (a client's
    /// long --root and a 64-character id): listening and connecting work.
    #[test]
    fn a_socket_path_longer_than_sun_path_works() {
        let dir = tempfile::tempdir().unwrap();
        let mut deep = dir.path().to_path_buf();
        while deep.as_os_str().len() <= crate::vm::uds::MAX_PATH_LEN {
            deep.push("0123456789abcdef0123456789abcdef");
        }
        std::fs::create_dir_all(&deep).unwrap();
        let path = deep.join("vsock");
        let mut m = VsockMuxer::new(3, &path).unwrap();
        let mut host = crate::vm::uds::connect(&path).unwrap();
        host.write_all(b"CONNECT 7\n").unwrap();
        pump(&mut m);
        assert!(m.has_pending_rx());
        drop(m);
        assert!(!path.exists());
    }

    #[test]
    fn the_socket_file_is_removed_with_the_muxer() {
        let (m, dir) = muxer();
        assert!(dir.path().join("v.sock").exists());
        drop(m);
        assert!(!dir.path().join("v.sock").exists());
    }

    impl TestPkt {
        /// (op, src_port, dst_port) of a packet the host produced.
        fn pkt_ro(&self) -> (u16, u32, u32) {
            let mut copy = TestPkt::new(0);
            copy.set_hdr(self);
            let p = copy.pkt();
            (p.op(), p.src_port(), p.dst_port())
        }
    }
}
