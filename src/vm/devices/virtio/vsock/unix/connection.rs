//! One vsock stream between the guest and a host AF_UNIX stream.
//!
//! States: a host-initiated connection starts in `LocalInit` (REQUEST sent,
//! waiting for the guest's RESPONSE), a guest-initiated one in `PeerInit`
//! (RESPONSE due). Both become `Established`; SHUTDOWN from either side
//! and RST end it. Flow control follows virtio-vsock credit: we never send
//! the guest more than `peer_buf_alloc - (rx_cnt - peer_fwd_cnt)` bytes,
//! and we tell the guest our own `buf_alloc`/`fwd_cnt` in every header, with
//! an explicit CREDIT_UPDATE once enough has been consumed or it asks.

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::num::Wrapping;
use std::os::fd::AsRawFd;

use event_manager::EventSet;
use virtio_vsock::packet::VsockPacket;
use vm_memory::bitmap::BitmapSlice;
use vm_memory::Bytes;

use crate::vm::devices::virtio::vsock::packet::*;
use crate::vm::devices::virtio::vsock::HOST_CID;

/// Bytes of guest data we buffer when the host socket is slow; this is the
/// `buf_alloc` we advertise.
pub const CONN_BUF_SIZE: u32 = 256 * 1024;
/// Send an unprompted CREDIT_UPDATE once this much was consumed since the
/// guest last heard our `fwd_cnt`.
pub const CREDIT_UPDATE_THRESHOLD: u32 = CONN_BUF_SIZE / 2;

/// A host-side stream: a Unix stream in production, a socketpair in tests.
pub trait HostStream: Read + Write + AsRawFd + Send {
    fn shutdown_write(&self);
}

impl HostStream for std::os::unix::net::UnixStream {
    fn shutdown_write(&self) {
        let _ = self.shutdown(std::net::Shutdown::Write);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnState {
    LocalInit,
    PeerInit,
    Established,
    /// We told the guest the host side is gone; waiting for its RST.
    LocalClosed,
    /// Finished: the muxer drops the connection.
    Killed,
}

mod pending {
    pub const REQUEST: u8 = 1;
    pub const RESPONSE: u8 = 2;
    pub const RW: u8 = 4;
    pub const CREDIT_UPDATE: u8 = 8;
    pub const CREDIT_REQUEST: u8 = 16;
    pub const SHUTDOWN: u8 = 32;
    pub const RST: u8 = 64;
}

pub struct VsockConnection<S: HostStream> {
    stream: S,
    state: ConnState,
    guest_cid: u64,
    local_port: u32,
    peer_port: u32,
    pending: u8,
    /// Bytes for the host stream: first the `OK <port>\n` reply (not
    /// counted as guest data), then guest data.
    ctrl_out: Vec<u8>,
    tx_buf: VecDeque<u8>,
    fwd_cnt: Wrapping<u32>,
    last_fwd_cnt_sent: Wrapping<u32>,
    rx_cnt: Wrapping<u32>,
    peer_buf_alloc: u32,
    peer_fwd_cnt: Wrapping<u32>,
    peer_no_rx: bool,
    peer_no_tx: bool,
    host_eof: bool,
    /// Writing to the host stream failed: it is gone for good, and what
    /// was still buffered for it was dropped.
    host_write_failed: bool,
    /// epoll reported a hang-up or an error on the host stream.
    hangup_seen: bool,
    /// We asked for credit and have not heard back.
    credit_requested: bool,
}

impl<S: HostStream> VsockConnection<S> {
    /// The host connected to `<socket>` and asked for guest port `peer_port`.
    pub fn new_local(stream: S, guest_cid: u64, local_port: u32, peer_port: u32) -> Self {
        let mut c = Self::new(stream, guest_cid, local_port, peer_port, ConnState::LocalInit);
        c.pending = pending::REQUEST;
        c
    }

    /// The guest's REQUEST reached `<socket>_<port>`, which accepted.
    pub fn new_peer<B: BitmapSlice>(stream: S, guest_cid: u64, request: &VsockPacket<B>) -> Self {
        let mut c = Self::new(stream, guest_cid, request.dst_port(), request.src_port(), ConnState::PeerInit);
        c.peer_buf_alloc = request.buf_alloc();
        c.peer_fwd_cnt = Wrapping(request.fwd_cnt());
        c.pending = pending::RESPONSE;
        c
    }

    fn new(stream: S, guest_cid: u64, local_port: u32, peer_port: u32, state: ConnState) -> Self {
        VsockConnection {
            stream,
            state,
            guest_cid,
            local_port,
            peer_port,
            pending: 0,
            ctrl_out: Vec::new(),
            tx_buf: VecDeque::new(),
            fwd_cnt: Wrapping(0),
            last_fwd_cnt_sent: Wrapping(0),
            rx_cnt: Wrapping(0),
            peer_buf_alloc: 0,
            peer_fwd_cnt: Wrapping(0),
            peer_no_rx: false,
            peer_no_tx: false,
            host_eof: false,
            host_write_failed: false,
            hangup_seen: false,
            credit_requested: false,
        }
    }

    pub fn state(&self) -> ConnState {
        self.state
    }

    pub fn stream(&self) -> &S {
        &self.stream
    }

    pub fn has_pending_rx(&self) -> bool {
        self.pending != 0
    }

    /// How much the guest can still take.
    pub fn peer_credit(&self) -> u32 {
        let in_flight = (self.rx_cnt - self.peer_fwd_cnt).0;
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// The events this connection wants from its host stream.
    pub fn interest(&self) -> EventSet {
        let mut e = EventSet::empty();
        let can_read = self.state == ConnState::Established
            && !self.host_eof
            && !self.peer_no_rx
            && self.pending & pending::RW == 0
            && self.peer_credit() > 0;
        if can_read {
            e |= EventSet::IN;
        }
        if !self.host_write_failed && (!self.ctrl_out.is_empty() || !self.tx_buf.is_empty()) {
            e |= EventSet::OUT;
        }
        e
    }

    /// Whether the host stream can still tell us anything we would act on.
    /// epoll reports hang-ups and errors whatever the interest, so a
    /// connection that wants nothing (`interest()` empty) from a stream
    /// that hung up must leave the epoll set: otherwise the muxer's fd
    /// stays readable and the VMM's event loop wakes for it forever.
    pub fn watches_hangup(&self) -> bool {
        !(self.hangup_seen || self.host_eof || self.host_write_failed || self.state == ConnState::Killed)
    }

    /// Bytes of guest data buffered for the host stream.
    pub fn buffered(&self) -> usize {
        self.tx_buf.len()
    }

    /// Ends the connection abortively: a RST for the guest, and nothing
    /// buffered for the host is delivered any more.
    fn kill(&mut self) {
        self.pending = pending::RST;
        self.tx_buf = VecDeque::new();
        self.ctrl_out = Vec::new();
    }

    /// Ends the connection with a RST to the guest (a protocol violation
    /// the muxer saw, such as a second REQUEST).
    pub fn reset(&mut self) {
        if self.state != ConnState::Killed {
            self.kill();
        }
    }

    /// Handles a packet from the guest addressed to this connection.
    pub fn send_pkt<B: BitmapSlice>(&mut self, pkt: &VsockPacket<B>) {
        self.peer_buf_alloc = pkt.buf_alloc();
        self.peer_fwd_cnt = Wrapping(pkt.fwd_cnt());
        if self.peer_credit() > 0 {
            self.credit_requested = false;
        }
        match (pkt.op(), self.state) {
            (OP_RST, _) => {
                self.state = ConnState::Killed;
                self.pending = 0;
                // Linux resets a connection it closed when we have not
                // answered its SHUTDOWN within 8 s: the host reader was
                // slow to take what is buffered. What the guest sent
                // before its SHUTDOWN (a workload's last output) is still
                // delivered, and only then does the connection go. A RST
                // without a SHUTDOWN first is an abort: nothing is.
                if !self.peer_no_tx {
                    self.tx_buf = VecDeque::new();
                }
            }
            (OP_RESPONSE, ConnState::LocalInit) => {
                self.state = ConnState::Established;
                self.ctrl_out.extend_from_slice(format!("OK {}\n", self.local_port).as_bytes());
                self.flush();
            }
            (OP_RW, ConnState::Established) => {
                let len = pkt.len() as usize;
                if self.peer_no_tx || self.tx_buf.len() + len > CONN_BUF_SIZE as usize {
                    // The guest ignored our credit or sent after SHUTDOWN.
                    self.kill();
                    return;
                }
                if let Some(data) = pkt.data_slice() {
                    let mut buf = vec![0u8; len];
                    if data.read_slice(&mut buf, 0).is_err() {
                        self.kill();
                        return;
                    }
                    if self.host_write_failed {
                        // Nowhere to deliver it; the guest hears SHUTDOWN.
                        return;
                    }
                    self.reserve_tx(len);
                    self.tx_buf.extend(buf);
                }
                self.flush();
            }
            (OP_CREDIT_UPDATE, ConnState::Established) => {}
            (OP_CREDIT_REQUEST, ConnState::Established) => self.pending |= pending::CREDIT_UPDATE,
            (OP_SHUTDOWN, ConnState::Established | ConnState::LocalClosed) => {
                let flags = pkt.flags();
                self.peer_no_rx |= flags & SHUTDOWN_RCV != 0;
                self.peer_no_tx |= flags & SHUTDOWN_SEND != 0;
                self.flush();
                let finished = (self.peer_no_rx && self.peer_no_tx) || self.state == ConnState::LocalClosed;
                if finished && self.tx_buf.is_empty() {
                    self.kill();
                }
            }
            // Anything else is a protocol violation for this state.
            _ => self.kill(),
        }
    }

    /// Makes room for `more` bytes in the buffer for the host, growing it
    /// at most to [`CONN_BUF_SIZE`] (the caller checked the total), so a
    /// connection never holds more than that however the guest sends.
    fn reserve_tx(&mut self, more: usize) {
        let need = self.tx_buf.len() + more;
        if need > self.tx_buf.capacity() {
            let target = need.max(self.tx_buf.capacity() * 2).min(CONN_BUF_SIZE as usize).max(need);
            self.tx_buf.reserve_exact(target - self.tx_buf.len());
        }
    }

    /// Writing to the host stream failed: nothing buffered for it can be
    /// delivered any more.
    fn host_write_gone(&mut self) {
        self.host_write_failed = true;
        self.ctrl_out = Vec::new();
        self.tx_buf = VecDeque::new();
        self.host_gone();
    }

    /// Writes buffered bytes to the host stream without blocking.
    fn flush(&mut self) {
        if self.host_write_failed {
            return;
        }
        while !self.ctrl_out.is_empty() {
            match self.stream.write(&self.ctrl_out) {
                Ok(n) => {
                    self.ctrl_out.drain(..n);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(_) => return self.host_write_gone(),
            }
        }
        while !self.tx_buf.is_empty() {
            let (front, _) = self.tx_buf.as_slices();
            match self.stream.write(front) {
                Ok(0) => return self.host_write_gone(),
                Ok(n) => {
                    self.tx_buf.drain(..n);
                    self.fwd_cnt += Wrapping(n as u32);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(_) => return self.host_write_gone(),
            }
        }
        if (self.fwd_cnt - self.last_fwd_cnt_sent).0 >= CREDIT_UPDATE_THRESHOLD && self.state != ConnState::Killed {
            self.pending |= pending::CREDIT_UPDATE;
        }
        if self.tx_buf.is_empty() {
            // A drained buffer gives its memory back: only streams whose
            // host side is slow right now hold any.
            if self.tx_buf.capacity() > 64 * 1024 {
                self.tx_buf = VecDeque::new();
            }
            if self.peer_no_tx {
                self.stream.shutdown_write();
            }
            if self.peer_no_rx && self.peer_no_tx && self.state != ConnState::Killed {
                self.kill();
            }
        }
    }

    /// The host side closed or failed: tell the guest.
    fn host_gone(&mut self) {
        self.host_eof = true;
        if self.state == ConnState::Established {
            self.pending |= pending::SHUTDOWN;
        } else if self.state != ConnState::Killed {
            self.kill();
        }
    }

    /// The host stream is ready.
    pub fn notify(&mut self, events: EventSet) {
        if events.intersects(EventSet::HANG_UP | EventSet::ERROR) {
            self.hangup_seen = true;
        }
        if events.contains(EventSet::OUT) {
            self.flush();
        }
        if events.intersects(EventSet::IN | EventSet::HANG_UP | EventSet::READ_HANG_UP | EventSet::ERROR) {
            if self.state == ConnState::Established && !self.peer_no_rx {
                // The data is read when an RX buffer is there to take it.
                self.pending |= pending::RW;
            } else if events.intersects(EventSet::HANG_UP | EventSet::ERROR) {
                self.host_gone();
            }
        }
    }

    fn header(&self, op: u16, flags: u32) -> Header {
        Header {
            src_cid: HOST_CID,
            dst_cid: self.guest_cid,
            src_port: self.local_port,
            dst_port: self.peer_port,
            op,
            flags,
            buf_alloc: CONN_BUF_SIZE,
            fwd_cnt: self.fwd_cnt.0,
        }
    }

    /// Fills `pkt` with this connection's next packet for the guest.
    pub fn recv_pkt<B: BitmapSlice>(&mut self, pkt: &mut VsockPacket<B>) -> bool {
        let (op, flags) = if self.pending & pending::RST != 0 {
            self.state = ConnState::Killed;
            self.pending = 0;
            (OP_RST, 0)
        } else if self.pending & pending::REQUEST != 0 {
            self.pending &= !pending::REQUEST;
            (OP_REQUEST, 0)
        } else if self.pending & pending::RESPONSE != 0 {
            self.pending &= !pending::RESPONSE;
            self.state = ConnState::Established;
            (OP_RESPONSE, 0)
        } else if self.pending & pending::SHUTDOWN != 0 {
            self.pending &= !(pending::SHUTDOWN | pending::RW);
            self.state = ConnState::LocalClosed;
            (OP_SHUTDOWN, SHUTDOWN_RCV | SHUTDOWN_SEND)
        } else if self.pending & pending::RW != 0 {
            self.pending &= !pending::RW;
            match self.read_into(pkt) {
                Some(n) => {
                    fill_header(pkt, &self.header(OP_RW, 0));
                    pkt.set_len(n);
                    self.rx_cnt += Wrapping(n);
                    self.last_fwd_cnt_sent = self.fwd_cnt;
                    self.pending &= !pending::CREDIT_UPDATE;
                    return true;
                }
                None => return self.recv_pkt(pkt),
            }
        } else if self.pending & pending::CREDIT_REQUEST != 0 {
            self.pending &= !pending::CREDIT_REQUEST;
            (OP_CREDIT_REQUEST, 0)
        } else if self.pending & pending::CREDIT_UPDATE != 0 {
            self.pending &= !pending::CREDIT_UPDATE;
            (OP_CREDIT_UPDATE, 0)
        } else {
            return false;
        };
        fill_header(pkt, &self.header(op, flags));
        self.last_fwd_cnt_sent = self.fwd_cnt;
        if op != OP_CREDIT_UPDATE {
            // Every header carries fwd_cnt: an explicit update is now redundant.
            self.pending &= !pending::CREDIT_UPDATE;
        }
        true
    }

    /// Reads host data into the packet's buffer, up to the guest's credit.
    /// None: nothing to send now (no data, no credit, or the host closed).
    fn read_into<B: BitmapSlice>(&mut self, pkt: &mut VsockPacket<B>) -> Option<u32> {
        let credit = self.peer_credit();
        if credit == 0 {
            if !self.credit_requested {
                self.credit_requested = true;
                self.pending |= pending::CREDIT_REQUEST;
            }
            return None;
        }
        // A one-descriptor RX buffer may be as large as guest memory (the
        // packet parser bounds only a separate data descriptor), and the
        // credit is the guest's to set: the host buffer is sized by
        // neither beyond one packet's worth.
        let room = pkt.data_slice().map_or(0, |d| d.len()).min(credit as usize).min(MAX_PKT_DATA as usize);
        if room == 0 {
            return None;
        }
        let mut buf = vec![0u8; room];
        loop {
            match self.stream.read(&mut buf) {
                Ok(0) => {
                    self.host_gone();
                    return None;
                }
                Ok(n) => {
                    let slice = pkt.data_slice()?;
                    slice.write_slice(&buf[..n], 0).ok()?;
                    return Some(n as u32);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return None,
                Err(_) => {
                    self.host_gone();
                    return None;
                }
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;
    use virtio_vsock::packet::PKT_HEADER_SIZE;

    /// A packet over plain buffers, as the guest would have built it.
    pub struct TestPkt {
        hdr: Box<[u8; PKT_HEADER_SIZE]>,
        data: Box<[u8]>,
    }

    impl TestPkt {
        pub fn new(data_len: usize) -> Self {
            TestPkt { hdr: Box::new([0; PKT_HEADER_SIZE]), data: vec![0u8; data_len].into_boxed_slice() }
        }

        pub fn pkt(&mut self) -> VsockPacket<'_, ()> {
            let data = if self.data.is_empty() { None } else { Some(&mut self.data[..]) };
            // SAFETY: both buffers are owned by `self`, outlive the returned
            // packet (it borrows `self` mutably), and are only accessed
            // through it while it lives.
            let mut p = unsafe { VsockPacket::new(&mut self.hdr[..], data) }.unwrap();
            // Re-read the header so getters reflect what tests wrote.
            let raw = *self.hdr;
            p.set_header_from_raw(&raw).unwrap();
            p
        }

        /// A guest packet with the given fields.
        pub fn guest(op: u16, src_port: u32, dst_port: u32, flags: u32, data: &[u8]) -> Self {
            let mut t = TestPkt::new(data.len());
            t.data.copy_from_slice(data);
            {
                let mut p = t.pkt();
                p.set_src_cid(3)
                    .set_dst_cid(HOST_CID)
                    .set_src_port(src_port)
                    .set_dst_port(dst_port)
                    .set_type(TYPE_STREAM)
                    .set_op(op)
                    .set_flags(flags)
                    .set_buf_alloc(64 * 1024)
                    .set_fwd_cnt(0)
                    .set_len(data.len() as u32);
            }
            t
        }

        pub fn data(&self) -> &[u8] {
            &self.data
        }

        pub fn set_hdr(&mut self, other: &TestPkt) {
            self.hdr.copy_from_slice(&other.hdr[..]);
        }
    }

    fn established() -> (VsockConnection<UnixStream>, UnixStream) {
        let (a, b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        b.set_nonblocking(true).unwrap();
        let mut c = VsockConnection::new_local(a, 3, 1 << 30, 1024);
        let mut out = TestPkt::new(0);
        assert!(c.recv_pkt(&mut out.pkt()));
        assert_eq!(out.pkt().op(), OP_REQUEST);
        c.send_pkt(&TestPkt::guest(OP_RESPONSE, 1024, 1 << 30, 0, &[]).pkt());
        assert_eq!(c.state(), ConnState::Established);
        let mut line = [0u8; 64];
        let n = (&b).read(&mut line).unwrap();
        assert_eq!(&line[..n], format!("OK {}\n", 1 << 30).as_bytes());
        (c, b)
    }

    #[test]
    fn host_initiated_connection_handshake() {
        let (c, _) = established();
        assert!(!c.has_pending_rx());
        assert!(c.interest().contains(EventSet::IN));
    }

    #[test]
    fn guest_data_is_written_to_the_host_and_counted() {
        let (mut c, b) = established();
        c.send_pkt(&TestPkt::guest(OP_RW, 1024, 1 << 30, 0, b"ping").pkt());
        let mut buf = [0u8; 16];
        let n = (&b).read(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"ping");
        assert_eq!(c.fwd_cnt.0, 4);
    }

    #[test]
    fn host_data_goes_to_the_guest_within_its_credit() {
        let (mut c, b) = established();
        (&b).write_all(&[7u8; 100]).unwrap();
        c.notify(EventSet::IN);
        assert!(c.has_pending_rx());
        assert!(!c.interest().contains(EventSet::IN), "no more reads until the RW went out");
        let mut out = TestPkt::new(4096);
        assert!(c.recv_pkt(&mut out.pkt()));
        let p = out.pkt();
        assert_eq!((p.op(), p.len(), p.src_port(), p.dst_port()), (OP_RW, 100, 1 << 30, 1024));
        assert_eq!(&out.data()[..100], &[7u8; 100]);
        assert_eq!(c.rx_cnt.0, 100);
    }

    #[test]
    fn without_credit_we_ask_for_it_and_wait() {
        let (mut c, b) = established();
        // The guest has 64 KiB of buffer and has consumed nothing.
        c.rx_cnt = Wrapping(64 * 1024);
        (&b).write_all(b"more").unwrap();
        assert!(!c.interest().contains(EventSet::IN));
        c.notify(EventSet::IN);
        let mut out = TestPkt::new(4096);
        assert!(c.recv_pkt(&mut out.pkt()));
        assert_eq!(out.pkt().op(), OP_CREDIT_REQUEST);
        // The guest catches up: credit is back, reading resumes.
        let mut upd = TestPkt::guest(OP_CREDIT_UPDATE, 1024, 1 << 30, 0, &[]);
        upd.pkt().set_fwd_cnt(64 * 1024);
        c.send_pkt(&upd.pkt());
        assert!(c.interest().contains(EventSet::IN));
    }

    #[test]
    fn a_credit_request_is_answered() {
        let (mut c, _b) = established();
        c.send_pkt(&TestPkt::guest(OP_CREDIT_REQUEST, 1024, 1 << 30, 0, &[]).pkt());
        let mut out = TestPkt::new(0);
        assert!(c.recv_pkt(&mut out.pkt()));
        let p = out.pkt();
        assert_eq!((p.op(), p.buf_alloc()), (OP_CREDIT_UPDATE, CONN_BUF_SIZE));
    }

    #[test]
    fn consuming_half_the_buffer_sends_a_credit_update() {
        let (mut c, b) = established();
        let chunk = vec![1u8; 64 * 1024];
        let mut reader = b.try_clone().unwrap();
        reader.set_nonblocking(false).unwrap();
        let drain = std::thread::spawn(move || {
            let mut sink = vec![0u8; CREDIT_UPDATE_THRESHOLD as usize];
            reader.read_exact(&mut sink).unwrap();
        });
        for _ in 0..2 {
            c.send_pkt(&TestPkt::guest(OP_RW, 1024, 1 << 30, 0, &chunk).pkt());
            while !c.tx_buf.is_empty() {
                c.notify(EventSet::OUT);
            }
        }
        drain.join().unwrap();
        assert!(c.has_pending_rx());
        let mut out = TestPkt::new(0);
        assert!(c.recv_pkt(&mut out.pkt()));
        let p = out.pkt();
        assert_eq!((p.op(), p.fwd_cnt()), (OP_CREDIT_UPDATE, CREDIT_UPDATE_THRESHOLD));
    }

    #[test]
    fn host_close_becomes_a_guest_shutdown_then_rst_ends_it() {
        let (mut c, b) = established();
        drop(b);
        c.notify(EventSet::IN | EventSet::READ_HANG_UP);
        let mut out = TestPkt::new(4096);
        assert!(c.recv_pkt(&mut out.pkt()));
        let p = out.pkt();
        assert_eq!((p.op(), p.flags()), (OP_SHUTDOWN, SHUTDOWN_RCV | SHUTDOWN_SEND));
        assert_eq!(c.state(), ConnState::LocalClosed);
        c.send_pkt(&TestPkt::guest(OP_RST, 1024, 1 << 30, 0, &[]).pkt());
        assert_eq!(c.state(), ConnState::Killed);
        assert!(!c.has_pending_rx(), "no reply to a RST");
    }

    #[test]
    fn what_the_guest_sent_before_shutdown_and_rst_still_reaches_a_slow_host_reader() {
        let (mut c, b) = established();
        // The host reader takes nothing yet: the stream's buffer fills and
        // the rest waits in the connection.
        let chunk = vec![5u8; 64 * 1024];
        let mut sent = 0;
        while c.tx_buf.is_empty() {
            c.send_pkt(&TestPkt::guest(OP_RW, 1024, 1 << 30, 0, &chunk).pkt());
            sent += chunk.len();
        }
        c.send_pkt(&TestPkt::guest(OP_SHUTDOWN, 1024, 1 << 30, SHUTDOWN_RCV | SHUTDOWN_SEND, &[]).pkt());
        c.send_pkt(&TestPkt::guest(OP_RST, 1024, 1 << 30, 0, &[]).pkt());
        assert_eq!(c.state(), ConnState::Killed);
        assert!(c.buffered() > 0 && c.interest().contains(EventSet::OUT));
        let mut reader = b.try_clone().unwrap();
        reader.set_nonblocking(false).unwrap();
        let got = std::thread::spawn(move || {
            let mut all = Vec::new();
            reader.read_to_end(&mut all).unwrap();
            all
        });
        while c.buffered() > 0 {
            c.notify(EventSet::OUT);
        }
        assert!(!c.has_pending_rx(), "nothing more for a guest that reset");
        drop(c);
        let all = got.join().unwrap();
        assert_eq!(all.len(), sent);
        assert!(all.iter().all(|&x| x == 5));
    }

    #[test]
    fn a_rst_without_shutdown_drops_what_is_buffered() {
        let (mut c, _b) = established();
        let chunk = vec![5u8; 64 * 1024];
        while c.tx_buf.is_empty() {
            c.send_pkt(&TestPkt::guest(OP_RW, 1024, 1 << 30, 0, &chunk).pkt());
        }
        c.send_pkt(&TestPkt::guest(OP_RST, 1024, 1 << 30, 0, &[]).pkt());
        assert_eq!((c.state(), c.buffered()), (ConnState::Killed, 0));
    }

    #[test]
    fn guest_full_shutdown_gets_a_rst() {
        let (mut c, _b) = established();
        c.send_pkt(&TestPkt::guest(OP_SHUTDOWN, 1024, 1 << 30, SHUTDOWN_RCV | SHUTDOWN_SEND, &[]).pkt());
        let mut out = TestPkt::new(0);
        assert!(c.recv_pkt(&mut out.pkt()));
        assert_eq!(out.pkt().op(), OP_RST);
        assert_eq!(c.state(), ConnState::Killed);
    }

    #[test]
    fn data_before_the_response_is_a_protocol_violation() {
        let (a, _b) = UnixStream::pair().unwrap();
        let mut c = VsockConnection::new_local(a, 3, 1 << 30, 1024);
        let mut out = TestPkt::new(0);
        c.recv_pkt(&mut out.pkt());
        c.send_pkt(&TestPkt::guest(OP_RW, 1024, 1 << 30, 0, b"early").pkt());
        assert!(c.recv_pkt(&mut out.pkt()));
        assert_eq!(out.pkt().op(), OP_RST);
    }

    /// An RX buffer of 1 MiB in one descriptor and all the credit there
    /// is: the host reads at most one packet's worth (MAX_PKT_DATA) into
    /// a buffer of that size, not whatever the guest offers.
    #[test]
    fn a_huge_rx_buffer_gets_one_packet_of_data() {
        let (mut c, b) = established();
        let mut upd = TestPkt::guest(OP_CREDIT_UPDATE, 1024, 1 << 30, 0, &[]);
        upd.pkt().set_buf_alloc(u32::MAX);
        c.send_pkt(&upd.pkt());
        let block = vec![9u8; 256 * 1024];
        let mut sent = 0;
        while let Ok(n) = (&b).write(&block) {
            sent += n;
            if sent >= 2 << 20 {
                break;
            }
        }
        c.notify(EventSet::IN);
        let mut out = TestPkt::new(1 << 20);
        assert!(c.recv_pkt(&mut out.pkt()));
        assert_eq!(out.pkt().op(), OP_RW);
        assert_eq!(out.pkt().len(), MAX_PKT_DATA.min(sent as u32));
    }

    #[test]
    fn a_guest_overrunning_our_buffer_is_reset() {
        let (mut c, _b) = established();
        // Fill the host socket so nothing drains, then overrun.
        c.tx_buf.extend(std::iter::repeat_n(0u8, CONN_BUF_SIZE as usize));
        c.send_pkt(&TestPkt::guest(OP_RW, 1024, 1 << 30, 0, b"x").pkt());
        let mut out = TestPkt::new(0);
        assert!(c.recv_pkt(&mut out.pkt()));
        assert_eq!(out.pkt().op(), OP_RST);
    }

    #[test]
    fn guest_initiated_connection_is_answered_with_response() {
        let (a, _b) = UnixStream::pair().unwrap();
        let req = TestPkt::guest(OP_REQUEST, 40000, 52, 0, &[]);
        let mut c = VsockConnection::new_peer(a, 3, &req.clone_pkt());
        let mut out = TestPkt::new(0);
        assert!(c.recv_pkt(&mut out.pkt()));
        let p = out.pkt();
        assert_eq!((p.op(), p.src_port(), p.dst_port(), p.dst_cid()), (OP_RESPONSE, 52, 40000, 3));
        assert_eq!(c.state(), ConnState::Established);
        assert_eq!(c.peer_credit(), 64 * 1024);
    }

    impl TestPkt {
        fn clone_pkt(&self) -> VsockPacket<'static, ()> {
            let hdr: &'static mut [u8] = Box::leak(Box::new(*self.hdr));
            // SAFETY: the leaked header lives for the rest of the test
            // process and nothing else references it.
            let mut p = unsafe { VsockPacket::new(hdr, None) }.unwrap();
            let raw = *self.hdr;
            p.set_header_from_raw(&raw).unwrap();
            p
        }
    }
}
