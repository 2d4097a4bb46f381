//! The hybrid backend's multiplexer: the listening socket, host streams
//! that have not yet said which port they want, and the established
//! connections, all watched by one epoll fd that the VMM's event loop
//! watches in turn.
//!
//! The guest is hostile (DEVELOPERS.md rule 9), so everything it can make
//! the muxer hold is bounded: at most [`MAX_CONNECTIONS`] connections
//! (each buffering at most `CONN_BUF_SIZE` of guest data), at most
//! [`MAX_QUEUED_RSTS`] RSTs waiting for an RX buffer (one per connection
//! key; beyond that they are dropped, which costs a guest that posts no RX
//! buffers nothing but its own answers), and no fd stays in the epoll set
//! when nothing it can report would be acted on (the level-triggered
//! event loop would otherwise spin).

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
/// Connections at once, both directions together. A guest REQUEST beyond
/// it gets a RST, a host `CONNECT` has its stream closed. With
/// `CONN_BUF_SIZE` per connection this bounds the guest data the muxer
/// can be made to buffer at 64 MiB (reached only when that many host
/// peers all stop reading).
pub const MAX_CONNECTIONS: usize = 256;
/// Rounds of 32 epoll events one `notify` handles at most.
const NOTIFY_ROUNDS: usize = 8;
/// RSTs for packets that matched no connection, waiting for the guest to
/// post RX buffers. Each distinct (host port, guest port) pair is queued
/// once; past this many, further RSTs are dropped.
pub const MAX_QUEUED_RSTS: usize = 256;

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
    /// Connection fds currently in the epoll set (see `refresh`).
    registered: HashSet<RawFd>,
    rxq: VecDeque<RxItem>,
    /// Connections with an `RxItem::Conn` in `rxq`.
    queued: HashSet<ConnKey>,
    /// Keys with an `RxItem::Rst` in `rxq`.
    queued_rsts: HashSet<ConnKey>,
    /// RSTs dropped because `MAX_QUEUED_RSTS` were already waiting.
    dropped_rsts: u64,
    next_local_port: u32,
    max_connections: usize,
    /// An fd kept in reserve so that a listener whose accept fails for
    /// want of fds (EMFILE) can still take the waiting stream off its
    /// backlog and close it, instead of staying readable forever.
    spare_fd: Option<std::fs::File>,
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
            registered: HashSet::new(),
            rxq: VecDeque::new(),
            queued: HashSet::new(),
            queued_rsts: HashSet::new(),
            dropped_rsts: 0,
            next_local_port: LOCAL_PORT_BASE,
            max_connections: MAX_CONNECTIONS,
            spare_fd: std::fs::File::open("/dev/null").ok(),
        };
        let fd = m.listener.as_raw_fd();
        m.watch(fd, Watched::Listener, EventSet::IN).map_err(MuxerError::Epoll)?;
        Ok(m)
    }

    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// Lowers the connection limit (tests and fuzzing: a smaller limit
    /// is reached with fewer fds).
    pub fn set_max_connections(&mut self, max: usize) {
        self.max_connections = max.min(MAX_CONNECTIONS);
    }

    /// Packets waiting for guest RX buffers (connections with something
    /// to send count once).
    pub fn queued_rx(&self) -> usize {
        self.rxq.len()
    }

    /// RSTs dropped since the start because too many were waiting.
    pub fn dropped_rsts(&self) -> u64 {
        self.dropped_rsts
    }

    /// Guest data buffered for host streams, all connections together.
    pub fn buffered_bytes(&self) -> usize {
        self.conns.values().map(|c| c.buffered()).sum()
    }

    fn watch(&mut self, fd: RawFd, what: Watched, events: EventSet) -> std::io::Result<()> {
        self.epoll.ctl(ControlOperation::Add, fd, EpollEvent::new(to_epoll(events), fd as u64))?;
        self.watched.insert(fd, what);
        Ok(())
    }

    fn unwatch(&mut self, fd: RawFd) {
        let _ = self.epoll.ctl(ControlOperation::Delete, fd, EpollEvent::default());
        self.watched.remove(&fd);
        self.registered.remove(&fd);
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
        // A connection the guest reset may still hold output for the host.
        if conn.state() == ConnState::Killed && !conn.has_pending_rx() && conn.buffered() == 0 {
            self.unwatch(fd);
            self.conns.remove(&key);
            return;
        }
        let interest = conn.interest();
        let pending = conn.has_pending_rx();
        // In the epoll set only while it can report something we act on:
        // with an empty interest, epoll still reports a hang-up, level
        // triggered, for as long as the stream exists.
        let wanted = !interest.is_empty() || conn.watches_hangup();
        let event = EpollEvent::new(to_epoll(interest), fd as u64);
        match (wanted, self.registered.contains(&fd)) {
            (true, true) => {
                let _ = self.epoll.ctl(ControlOperation::Modify, fd, event);
            }
            (true, false) => {
                if self.epoll.ctl(ControlOperation::Add, fd, event).is_ok() {
                    self.registered.insert(fd);
                }
            }
            (false, true) => {
                let _ = self.epoll.ctl(ControlOperation::Delete, fd, EpollEvent::default());
                self.registered.remove(&fd);
            }
            (false, false) => {}
        }
        if pending {
            self.enqueue(key);
        }
    }

    fn add_conn(&mut self, key: ConnKey, conn: VsockConnection<UnixStream>) {
        let fd = conn.stream().as_raw_fd();
        self.watched.insert(fd, Watched::Conn(key));
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
        loop {
            let stream = match self.listener.accept() {
                Ok((stream, _)) => stream,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) => {
                    // Out of fds (a guest can hold many through virtio-fs):
                    // take the stream off the backlog with the spare fd and
                    // close it, or the listener stays readable forever.
                    if self.spare_fd.take().is_none() {
                        return;
                    }
                    drop(self.listener.accept());
                    self.spare_fd = std::fs::File::open("/dev/null").ok();
                    continue;
                }
                Err(_) => return,
            };
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
        // A malformed request just gets the stream closed, as Firecracker
        // does; so does one past the connection limit.
        if self.conns.len() >= self.max_connections {
            return;
        }
        if let Ok(peer_port) = outcome {
            let local_port = self.alloc_local_port();
            let conn = VsockConnection::new_local(p.stream, self.guest_cid, local_port, peer_port);
            self.add_conn((local_port, peer_port), conn);
        }
    }

    /// Queues a RST for a packet that matched no connection: once per key,
    /// and at most [`MAX_QUEUED_RSTS`] at a time.
    fn rst(&mut self, local_port: u32, peer_port: u32) {
        let key = (local_port, peer_port);
        if self.queued_rsts.contains(&key) {
            return;
        }
        if self.queued_rsts.len() >= MAX_QUEUED_RSTS {
            self.dropped_rsts += 1;
            return;
        }
        self.queued_rsts.insert(key);
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
                conn.reset();
                self.refresh(key);
                return;
            }
            conn.send_pkt(pkt);
            self.refresh(key);
            return;
        }
        match pkt.op() {
            OP_REQUEST if self.conns.len() >= self.max_connections => self.rst(key.0, key.1),
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
                    self.queued_rsts.remove(&(local_port, peer_port));
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
        // A bounded number of rounds: an fd that stays ready after it was
        // handled (a listener out of fds, say) must not keep this call
        // going; the muxer's own fd is level-triggered, so whatever is left
        // brings the event loop back after its other events.
        for _ in 0..NOTIFY_ROUNDS {
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
    use super::super::connection::CONN_BUF_SIZE;
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

    /// Whether the muxer's fd would wake the VMM's event loop right now.
    fn wakes_the_event_loop(m: &VsockMuxer) -> bool {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        // SAFETY: the fd belongs to `m`, which outlives this call.
        let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(m.as_raw_fd()) };
        let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
        poll(&mut fds, PollTimeout::ZERO).unwrap() > 0
    }

    /// Everything the muxer has for the guest: (op, src port, dst port).
    fn drain(m: &mut VsockMuxer) -> Vec<(u16, u32, u32)> {
        let mut out = Vec::new();
        while m.has_pending_rx() {
            let mut p = TestPkt::new(4096);
            if m.recv_pkt(&mut p.pkt()) {
                out.push(p.pkt_ro());
            }
        }
        out
    }

    /// A host client that asked for guest port 1024, and the guest's
    /// RESPONSE: an established host-initiated connection.
    fn established(m: &mut VsockMuxer, dir: &Path) -> (UnixStream, u32) {
        let mut host = UnixStream::connect(dir.join("v.sock")).unwrap();
        host.write_all(b"CONNECT 1024\n").unwrap();
        pump(m);
        let req = next(m);
        let local = req.pkt_ro().1;
        m.send_pkt(&TestPkt::guest(OP_RESPONSE, 1024, local, 0, &[]).pkt());
        host.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut line = [0u8; 32];
        let n = host.read(&mut line).unwrap();
        assert_eq!(&line[..n], format!("OK {local}\n").as_bytes());
        (host, local)
    }

    /// A guest that posts no RX buffers while sending packets that each
    /// deserve a RST: the queue of RSTs stays bounded, duplicates are
    /// coalesced, and what was queued still goes out once buffers come.
    #[test]
    fn an_rst_flood_without_rx_buffers_stays_bounded() {
        let (mut m, _dir) = muxer();
        for i in 0..20_000u32 {
            m.send_pkt(&TestPkt::guest(OP_RW, 10_000 + i, 7, 0, b"x").pkt());
            assert!(m.queued_rx() <= MAX_QUEUED_RSTS);
        }
        assert_eq!(m.queued_rx(), MAX_QUEUED_RSTS);
        assert_eq!(m.dropped_rsts(), 20_000 - MAX_QUEUED_RSTS as u64);
        // The same offending packet many times: one RST.
        let (mut m2, _dir2) = muxer();
        for _ in 0..1000 {
            m2.send_pkt(&TestPkt::guest(OP_CREDIT_UPDATE, 5, 6, 0, &[]).pkt());
        }
        assert_eq!(m2.queued_rx(), 1);
        // The guest finally posts buffers: the queued RSTs go out, in order.
        let mut got = 0;
        while m.has_pending_rx() {
            let p = next(&mut m);
            assert_eq!(p.pkt_ro(), (OP_RST, 7, 10_000 + got));
            got += 1;
        }
        assert_eq!(got as usize, MAX_QUEUED_RSTS);
        // With the queue drained, new RSTs are queued again.
        m.send_pkt(&TestPkt::guest(OP_RW, 1, 2, 0, b"x").pkt());
        assert_eq!(next(&mut m).pkt_ro(), (OP_RST, 2, 1));
    }

    /// Thousands of connection requests to ports nobody listens on: each
    /// is refused at once, nothing is kept but a bounded queue of RSTs.
    #[test]
    fn a_request_flood_to_closed_ports_keeps_nothing() {
        let (mut m, _dir) = muxer();
        for i in 0..5000u32 {
            m.send_pkt(&TestPkt::guest(OP_REQUEST, 20_000 + i, 9000 + (i % 50), 0, &[]).pkt());
        }
        assert_eq!(m.connection_count(), 0);
        assert!(m.queued_rx() <= MAX_QUEUED_RSTS);
        assert!(!wakes_the_event_loop(&m));
    }

    /// Past the connection limit a guest REQUEST gets a RST and a host
    /// CONNECT has its stream closed; a freed slot is usable again.
    #[test]
    fn connections_are_capped() {
        let (mut m, dir) = muxer();
        m.set_max_connections(4);
        let listener = UnixListener::bind(dir.path().join("v.sock_52")).unwrap();
        listener.set_nonblocking(true).unwrap();
        let mut accepted = Vec::new();
        for i in 0..10u32 {
            m.send_pkt(&TestPkt::guest(OP_REQUEST, 40_000 + i, 52, 0, &[]).pkt());
            let p = next(&mut m);
            let want = if i < 4 { OP_RESPONSE } else { OP_RST };
            assert_eq!(p.pkt_ro(), (want, 52, 40_000 + i), "request {i}");
            if let Ok((s, _)) = listener.accept() {
                accepted.push(s);
            }
        }
        assert_eq!(m.connection_count(), 4);
        // A host CONNECT at the limit: closed without an OK line.
        let mut host = UnixStream::connect(dir.path().join("v.sock")).unwrap();
        host.write_all(b"CONNECT 1024\n").unwrap();
        for _ in 0..20 {
            m.notify(EventSet::IN);
            std::thread::sleep(Duration::from_millis(5));
        }
        host.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut b = [0u8; 8];
        assert_eq!(host.read(&mut b).unwrap(), 0);
        assert!(!m.has_pending_rx());
        // The guest resets one: a new request fits again.
        m.send_pkt(&TestPkt::guest(OP_RST, 40_000, 52, 0, &[]).pkt());
        assert_eq!(m.connection_count(), 3);
        m.send_pkt(&TestPkt::guest(OP_REQUEST, 50_000, 52, 0, &[]).pkt());
        assert_eq!(next(&mut m).pkt_ro(), (OP_RESPONSE, 52, 50_000));
    }

    /// Guest data for host peers that never read is held only up to each
    /// connection's buffer (the guest's credit), so with the connection
    /// limit the total is bounded; a guest ignoring its credit is reset.
    #[test]
    fn guest_data_for_stalled_host_peers_is_bounded() {
        let (mut m, dir) = muxer();
        m.set_max_connections(3);
        let listener = UnixListener::bind(dir.path().join("v.sock_52")).unwrap();
        listener.set_nonblocking(true).unwrap();
        let mut peers = Vec::new();
        let chunk = vec![0x5au8; MAX_PKT_DATA as usize];
        let per_conn = CONN_BUF_SIZE / MAX_PKT_DATA;
        for i in 0..5u32 {
            m.send_pkt(&TestPkt::guest(OP_REQUEST, 40_000 + i, 52, 0, &[]).pkt());
            let want = if i < 3 { OP_RESPONSE } else { OP_RST };
            assert!(drain(&mut m).contains(&(want, 52, 40_000 + i)));
            if let Ok((s, _)) = listener.accept() {
                peers.push(s);
            }
            // All the credit the guest has: the host socket takes part of
            // it, the muxer buffers the rest.
            for _ in 0..per_conn {
                m.send_pkt(&TestPkt::guest(OP_RW, 40_000 + i, 52, 0, &chunk).pkt());
            }
        }
        assert_eq!(peers.len(), 3);
        assert_eq!(m.connection_count(), 3);
        assert!(m.buffered_bytes() > 0, "the host peers do not read");
        assert!(m.buffered_bytes() <= 3 * CONN_BUF_SIZE as usize);
        // Past its credit: the connection is reset and its buffer freed.
        let before = m.buffered_bytes();
        for _ in 0..per_conn {
            m.send_pkt(&TestPkt::guest(OP_RW, 40_000, 52, 0, &chunk).pkt());
        }
        assert!(m.buffered_bytes() < before);
        assert!(drain(&mut m).contains(&(OP_RST, 52, 40_000)));
        assert_eq!(m.connection_count(), 2);
    }

    /// The guest stops consuming RX while the host keeps sending and then
    /// hangs up: nothing is buffered in the VMM (host data waits in the
    /// socket), and once the muxer has handled what it can, its fd does not
    /// stay readable (a level-triggered hang-up used to wake the event
    /// loop forever).
    #[test]
    fn a_guest_that_stops_consuming_does_not_spin_the_event_loop() {
        let (mut m, dir) = muxer();
        let (mut host, _local) = established(&mut m, dir.path());
        host.set_nonblocking(true).unwrap();
        let block = vec![1u8; 64 * 1024];
        let mut sent = 0;
        while sent < 4 << 20 {
            match host.write(&block) {
                Ok(n) => sent += n,
                Err(_) => break,
            }
            m.notify(EventSet::IN);
        }
        assert_eq!(m.buffered_bytes(), 0);
        assert!(m.queued_rx() <= 1, "one entry for the connection");
        assert!(!wakes_the_event_loop(&m), "nothing to do until the guest posts buffers");
        drop(host);
        for _ in 0..3 {
            if wakes_the_event_loop(&m) {
                m.notify(EventSet::IN);
            }
        }
        assert!(!wakes_the_event_loop(&m), "a hang-up nobody can act on must not keep the fd readable");
        // The guest comes back: the data, then the SHUTDOWN.
        let mut ops = Vec::new();
        for _ in 0..10_000 {
            if m.has_pending_rx() {
                let p = next(&mut m);
                ops.push(p.pkt_ro().0);
                if ops.last() == Some(&OP_SHUTDOWN) {
                    break;
                }
                // Keep the guest's credit open.
                let mut upd = TestPkt::guest(OP_CREDIT_UPDATE, 1024, LOCAL_PORT_BASE, 0, &[]);
                upd.pkt().set_buf_alloc(u32::MAX).set_fwd_cnt(0);
                m.send_pkt(&upd.pkt());
            } else {
                m.notify(EventSet::IN);
            }
        }
        assert_eq!(ops.last(), Some(&OP_SHUTDOWN));
        assert!(ops.iter().filter(|&&o| o == OP_RW).count() > 1);
    }

    /// A guest that never answers a host CONNECT, then the host gives up:
    /// the connection is reset and dropped once the guest takes the RST,
    /// and the dead stream does not keep the event loop awake meanwhile.
    #[test]
    fn a_host_giving_up_on_a_silent_guest_does_not_spin() {
        let (mut m, dir) = muxer();
        let mut host = UnixStream::connect(dir.path().join("v.sock")).unwrap();
        host.write_all(b"CONNECT 1024\n").unwrap();
        pump(&mut m);
        next(&mut m); // the REQUEST the guest ignores
        drop(host);
        for _ in 0..3 {
            if wakes_the_event_loop(&m) {
                m.notify(EventSet::IN);
            }
        }
        assert!(!wakes_the_event_loop(&m));
        assert_eq!(m.connection_count(), 1);
        assert_eq!(next(&mut m).pkt_ro().0, OP_RST);
        assert_eq!(m.connection_count(), 0);
    }

    /// A second REQUEST on a live connection ends that connection.
    #[test]
    fn a_second_request_resets_the_connection() {
        let (mut m, dir) = muxer();
        let _l = UnixListener::bind(dir.path().join("v.sock_52")).unwrap();
        m.send_pkt(&TestPkt::guest(OP_REQUEST, 40_000, 52, 0, &[]).pkt());
        assert_eq!(next(&mut m).pkt_ro().0, OP_RESPONSE);
        m.send_pkt(&TestPkt::guest(OP_REQUEST, 40_000, 52, 0, &[]).pkt());
        assert_eq!(next(&mut m).pkt_ro(), (OP_RST, 52, 40_000));
        assert_eq!(m.connection_count(), 0);
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
