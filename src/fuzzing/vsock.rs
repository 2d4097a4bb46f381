//! The vsock device with the real AF_UNIX muxer behind it, on plain guest
//! memory: the input is a program of guest actions (packets on the TX
//! queue, RX buffers of every shape, raw descriptors, ring indices moved
//! at will, driver resets) interleaved with host actions (clients that
//! connect, write and hang up; a host listener guests connect to).
//!
//! Checked besides "no panic": the muxer's bounds hold after every step,
//! and the event loop, driven as the VMM drives it, always settles (a
//! device or backend that stays ready with nothing to do would spin the
//! VMM's thread).

use std::io::Write;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::Arc;

use event_manager::EventSet;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::Input;
use crate::vm::devices::virtio::vsock::device::{RXQ, TXQ};
use crate::vm::devices::virtio::vsock::packet::MAX_PKT_DATA;
use crate::vm::devices::virtio::vsock::unix::connection::CONN_BUF_SIZE;
use crate::vm::devices::virtio::vsock::unix::muxer::MAX_QUEUED_RSTS;
use crate::vm::devices::virtio::vsock::{Vsock, VsockBackend, VsockMuxer};
use crate::vm::devices::virtio::{VirtioDevice, VirtioInterrupt};
use crate::vm::devices::IrqTrigger;

const MEM_SIZE: u64 = 0x20_0000;
const QSIZE: u16 = 128;
/// Queue areas: descriptor table, avail ring at +0x800, used ring at +0xa00.
const QUEUE_AT: [u64; 3] = [0x1000, 0x3000, 0x5000];
const DATA_START: u64 = 0x1_0000;
const DATA_END: u64 = 0x1f_0000;
const GUEST_CID: u64 = 3;
const HEADER: u32 = 44;
/// A small connection limit, reached within the fds a fuzzing process has.
const MAX_CONNS: usize = 6;
const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;
const F_INDIRECT: u16 = 4;

fn queue(at: u64) -> Queue {
    let mut q = Queue::new(QSIZE).expect("a valid queue size");
    q.set_size(QSIZE);
    q.set_desc_table_address(Some(at as u32), Some(0));
    q.set_avail_ring_address(Some((at + 0x800) as u32), Some(0));
    q.set_used_ring_address(Some((at + 0xa00) as u32), Some(0));
    q.set_ready(true);
    q
}

/// The guest's side of one queue.
struct GuestQueue {
    at: u64,
    next_desc: u16,
    avail_idx: u16,
}

impl GuestQueue {
    fn store(&self, mem: &GuestMemoryMmap, index: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let d = self.at + 16 * u64::from(index % QSIZE);
        let mut raw = [0u8; 16];
        raw[..8].copy_from_slice(&addr.to_le_bytes());
        raw[8..12].copy_from_slice(&len.to_le_bytes());
        raw[12..14].copy_from_slice(&flags.to_le_bytes());
        raw[14..].copy_from_slice(&next.to_le_bytes());
        let _ = mem.write_slice(&raw, GuestAddress(d));
    }

    /// Writes a chain into consecutive slots and makes it available.
    fn add(&mut self, mem: &GuestMemoryMmap, bufs: &[(u64, u32, u16)]) {
        let head = self.next_desc;
        for (i, &(addr, len, flags)) in bufs.iter().enumerate() {
            let index = head.wrapping_add(i as u16) % QSIZE;
            let last = i + 1 == bufs.len();
            let flags = if last { flags } else { flags | F_NEXT };
            self.store(mem, index, addr, len, flags, (index + 1) % QSIZE);
        }
        self.next_desc = head.wrapping_add(bufs.len() as u16) % QSIZE;
        self.publish(mem, head);
    }

    fn publish(&mut self, mem: &GuestMemoryMmap, head: u16) {
        let slot = self.at + 0x800 + 4 + 2 * u64::from(self.avail_idx % QSIZE);
        let _ = mem.write_obj(head, GuestAddress(slot));
        self.avail_idx = self.avail_idx.wrapping_add(1);
        let _ = mem.write_obj(self.avail_idx, GuestAddress(self.at + 0x800 + 2));
    }
}

struct Harness {
    mem: GuestMemoryMmap,
    dev: Vsock<VsockMuxer>,
    queues: [GuestQueue; 3],
    next_buf: u64,
    dir: tempfile::TempDir,
    listener: UnixListener,
    hosts: Vec<UnixStream>,
    peers: Vec<UnixStream>,
}

impl Harness {
    fn new() -> Option<Self> {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).ok()?;
        let dir = tempfile::tempdir().ok()?;
        let mut muxer = VsockMuxer::new(GUEST_CID, &dir.path().join("v.sock")).ok()?;
        muxer.set_max_connections(MAX_CONNS);
        // Guests connecting to port 52 reach this listener.
        let listener = UnixListener::bind(dir.path().join("v.sock_52")).ok()?;
        listener.set_nonblocking(true).ok()?;
        let dev = Vsock::new(GUEST_CID, muxer).ok()?;
        let queues = QUEUE_AT.map(|at| GuestQueue { at, next_desc: 0, avail_idx: 0 });
        let mut h =
            Harness { mem, dev, queues, next_buf: DATA_START, dir, listener, hosts: Vec::new(), peers: Vec::new() };
        h.activate();
        Some(h)
    }

    /// What the transport does at DRIVER_OK (again after a reset).
    fn activate(&mut self) {
        let irq = Arc::new(VirtioInterrupt::new(IrqTrigger::new().expect("an eventfd")));
        let queues = QUEUE_AT.iter().map(|&at| queue(at)).collect();
        for (q, &at) in self.queues.iter_mut().zip(QUEUE_AT.iter()) {
            *q = GuestQueue { at, next_desc: 0, avail_idx: 0 };
            let _ = self.mem.write_slice(&[0u8; 0x1000], GuestAddress(at));
        }
        let _ = self.dev.activate(self.mem.clone(), irq, queues);
        let _ = self.dev.activate_evt.read();
    }

    fn alloc(&mut self, len: u32) -> u64 {
        let len = u64::from(len).next_multiple_of(64);
        if self.next_buf + len > DATA_END {
            self.next_buf = DATA_START;
        }
        let at = self.next_buf;
        self.next_buf += len.min(DATA_END - DATA_START);
        at
    }

    fn muxer(&self) -> &VsockMuxer {
        self.dev.backend()
    }

    /// The guest sends one packet.
    fn tx_packet(&mut self, input: &mut Input<'_>) {
        let src_port = input.pick(&[1024u32, 40_000, 40_001, 40_002, 52, 7]);
        let dst_port = input.pick(&[52u32, 1 << 30, (1 << 30) + 1, 1024, 9, 0]);
        let op = u16::from(input.u8() % 9);
        let flags = u32::from(input.u8() % 4);
        let buf_alloc = input.pick(&[0u32, 4096, 64 * 1024, u32::MAX]);
        let fwd_cnt = input.pick(&[0u32, 1, 4096, u32::MAX]);
        let data_len = u32::from(input.u16()) % 2048;
        let quirk = input.u8();
        let mut header = [0u8; HEADER as usize];
        let (src_cid, dst_cid) = if quirk & 0x80 != 0 { (input.u64(), input.u64()) } else { (GUEST_CID, 2) };
        let len_field = if quirk & 0x40 != 0 { input.u32() } else { data_len };
        let ty: u16 = if quirk & 0x20 != 0 { 2 } else { 1 };
        header[0..8].copy_from_slice(&src_cid.to_le_bytes());
        header[8..16].copy_from_slice(&dst_cid.to_le_bytes());
        header[16..20].copy_from_slice(&src_port.to_le_bytes());
        header[20..24].copy_from_slice(&dst_port.to_le_bytes());
        header[24..28].copy_from_slice(&len_field.to_le_bytes());
        header[28..30].copy_from_slice(&ty.to_le_bytes());
        header[30..32].copy_from_slice(&op.to_le_bytes());
        header[32..36].copy_from_slice(&flags.to_le_bytes());
        header[36..40].copy_from_slice(&buf_alloc.to_le_bytes());
        header[40..44].copy_from_slice(&fwd_cnt.to_le_bytes());
        let data = input.bytes(data_len as usize).to_vec();
        let at = self.alloc(HEADER + 2048);
        let _ = self.mem.write_slice(&header, GuestAddress(at));
        let _ = self.mem.write_slice(&data, GuestAddress(at + u64::from(HEADER)));
        let chain: Vec<(u64, u32, u16)> = match quirk % 4 {
            0 => vec![(at, HEADER, 0), (at + u64::from(HEADER), data_len, 0)],
            1 => vec![(at, HEADER + data_len, 0)],
            2 => vec![(at, HEADER, 0)],
            _ => vec![(at, HEADER, F_WRITE), (at + u64::from(HEADER), data_len, F_WRITE)],
        };
        self.queues[TXQ].add(&self.mem, &chain);
    }

    /// The guest posts RX buffers of assorted shapes.
    fn rx_buffers(&mut self, input: &mut Input<'_>) {
        for _ in 0..=input.u8() % 8 {
            let kind = input.u8() % 7;
            let at = self.alloc(HEADER + 4096);
            let chain: Vec<(u64, u32, u16)> = match kind {
                0 => vec![(at, HEADER, F_WRITE), (at + 64, 4096, F_WRITE)],
                1 => vec![(at, HEADER + 4096, F_WRITE)],
                // No room for data: a zero-length data buffer, or none.
                2 => vec![(at, HEADER, F_WRITE), (at + 64, 0, F_WRITE)],
                3 => vec![(at, HEADER, F_WRITE)],
                4 => vec![(at, 20, F_WRITE)],
                5 => vec![(at, HEADER, 0), (at + 64, 4096, 0)],
                _ => vec![(at, HEADER, F_WRITE), (at + 64, MAX_PKT_DATA + 1, F_WRITE)],
            };
            self.queues[RXQ].add(&self.mem, &chain);
        }
    }

    /// Descriptors straight from the input: any address, length, flags and
    /// next index (loops, out of memory, indirect tables, nonsense).
    fn raw_chain(&mut self, input: &mut Input<'_>) {
        let q = if input.u8() % 2 == 0 { RXQ } else { TXQ };
        let n = 1 + input.u8() % 4;
        let head = self.queues[q].next_desc;
        for i in 0..n {
            let addr = input.u64() % (2 * MEM_SIZE);
            let len = input.u32();
            let flags = input.u16() & (F_NEXT | F_WRITE | F_INDIRECT);
            let next = input.u16();
            self.queues[q].store(&self.mem, head.wrapping_add(u16::from(i)), addr, len, flags, next);
        }
        self.queues[q].next_desc = head.wrapping_add(u16::from(n)) % QSIZE;
        let published = if input.u8() % 8 == 0 { input.u16() } else { head };
        self.queues[q].publish(&self.mem, published);
    }

    fn host_action(&mut self, input: &mut Input<'_>) {
        match input.u8() % 6 {
            0 => {
                if let Ok(mut s) = UnixStream::connect(self.dir.path().join("v.sock")) {
                    let _ = s.set_nonblocking(true);
                    let line = match input.u8() % 4 {
                        0 => b"CONNECT 1024\n".to_vec(),
                        1 => format!("CONNECT {}\n", input.u32()).into_bytes(),
                        2 => b"CONNECT 52".to_vec(),
                        _ => input.bytes(40).to_vec(),
                    };
                    let _ = s.write_all(&line);
                    self.hosts.push(s);
                }
            }
            1 | 2 => {
                let n = usize::from(input.u8()) * 256;
                let byte = input.u8();
                let streams = if input.u8() % 2 == 0 { &mut self.hosts } else { &mut self.peers };
                if !streams.is_empty() {
                    let i = usize::from(input.u8()) % streams.len();
                    let _ = streams[i].write(&vec![byte; n]);
                }
            }
            3 => {
                let streams = if input.u8() % 2 == 0 { &mut self.hosts } else { &mut self.peers };
                if !streams.is_empty() {
                    let i = usize::from(input.u8()) % streams.len();
                    streams.swap_remove(i);
                }
            }
            4 => {
                while let Ok((s, _)) = self.listener.accept() {
                    let _ = s.set_nonblocking(true);
                    self.peers.push(s);
                }
            }
            _ => {
                // The guest moves its avail index wherever it likes.
                let q = if input.u8() % 2 == 0 { RXQ } else { TXQ };
                let idx = input.u16();
                let _ = self.mem.write_obj(idx, GuestAddress(self.queues[q].at + 0x800 + 2));
                self.queues[q].avail_idx = idx;
            }
        }
    }

    fn check_bounds(&self) {
        let m = self.muxer();
        assert!(m.connection_count() <= MAX_CONNS, "{} connections", m.connection_count());
        assert!(m.queued_rx() <= MAX_QUEUED_RSTS + m.connection_count(), "{} queued for RX", m.queued_rx());
        assert!(m.buffered_bytes() <= m.connection_count() * CONN_BUF_SIZE as usize, "{} bytes", m.buffered_bytes());
    }

    /// Drives the device as the VMM's event loop does until nothing is
    /// ready; panics if it never gets there.
    fn settle(&mut self) {
        for _ in 0..2000 {
            let rx = self.dev.queue_evts[RXQ].read().is_ok();
            let tx = self.dev.queue_evts[TXQ].read().is_ok();
            let backend = readable(self.muxer().as_raw_fd());
            if !rx && !tx && !backend {
                return;
            }
            if tx {
                self.dev.process_tx();
            }
            if backend {
                self.dev.backend.notify(EventSet::IN);
            }
            self.dev.process_rx();
            self.check_bounds();
        }
        panic!("the vsock device never settles: its event loop would spin");
    }
}

fn readable(fd: i32) -> bool {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    // SAFETY: the fd is the muxer's epoll fd, open while the harness lives.
    let fd = unsafe { BorrowedFd::borrow_raw(fd) };
    let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
    poll(&mut fds, PollTimeout::ZERO).unwrap_or(0) > 0
}

pub fn device(data: &[u8]) {
    let Some(mut h) = Harness::new() else { return };
    let mut input = Input::new(data);
    let mut steps = 0;
    while !input.is_empty() && steps < 256 {
        steps += 1;
        match input.u8() % 8 {
            0 | 1 => {
                h.tx_packet(&mut input);
                let _ = h.dev.queue_evts[TXQ].write(1);
            }
            2 => h.rx_buffers(&mut input),
            3 => {
                h.raw_chain(&mut input);
                let _ = h.dev.queue_evts[TXQ].write(1);
            }
            4 | 5 => h.host_action(&mut input),
            6 => h.settle(),
            _ => {
                // The driver resets the device and sets it up again.
                h.dev.reset();
                h.activate();
            }
        }
        h.check_bounds();
    }
    h.settle();
}
