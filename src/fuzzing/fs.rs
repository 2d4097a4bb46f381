//! The virtio-fs device's request path on plain guest memory, against a
//! fresh share directory per input: FUSE requests built from the input
//! (any opcode, node id, body and header length) in descriptor chains of
//! every shape (split, aliased, out of memory, looping, indirect, no room
//! for the reply), served as the worker serves them.
//!
//! Checked besides "no panic": serving always ends, and after whatever the
//! input did the device still answers a request with a well-formed reply.

use std::sync::{Arc, Once};

use fuse_backend_rs::abi::fuse_abi::{GetattrIn, InHeader, InitIn, Opcode, OutHeader, KERNEL_MINOR_VERSION};
use fuse_backend_rs::api::server::Server;
use fuse_backend_rs::passthrough::PassthroughFs;
use fuse_vm_memory::ByteValued;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::Input;
use crate::vm::devices::virtio::fs::bridge;
use crate::vm::devices::virtio::fs::device::{Active, HIPRIO_QUEUE, REQUEST_QUEUE};
use crate::vm::devices::virtio::fs::filesystem::{passthrough_config, ShareFs};
use crate::vm::devices::virtio::VirtioInterrupt;
use crate::vm::devices::IrqTrigger;

const MEM_SIZE: u64 = 0x80_0000;
const QSIZE: u16 = 128;
const QUEUE_AT: [u64; 2] = [0x1000, 0x3000];
const DATA_START: u64 = 0x1_0000;
const DATA_END: u64 = 0x70_0000;
const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;
const F_INDIRECT: u16 = 4;
/// Node ids worth aiming at: none, the root, the first few looked up.
const NODES: [u64; 6] = [0, 1, 2, 3, 4, u64::MAX];

fn queue(at: u64) -> Queue {
    let mut q = Queue::new(QSIZE).expect("a valid queue size");
    q.set_size(QSIZE);
    q.set_desc_table_address(Some(at as u32), Some(0));
    q.set_avail_ring_address(Some((at + 0x800) as u32), Some(0));
    q.set_used_ring_address(Some((at + 0xa00) as u32), Some(0));
    q.set_ready(true);
    q
}

struct Driver {
    at: u64,
    next_desc: u16,
    avail_idx: u16,
    used_seen: u16,
}

impl Driver {
    fn store(&self, mem: &GuestMemoryMmap, index: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let mut raw = [0u8; 16];
        raw[..8].copy_from_slice(&addr.to_le_bytes());
        raw[8..12].copy_from_slice(&len.to_le_bytes());
        raw[12..14].copy_from_slice(&flags.to_le_bytes());
        raw[14..].copy_from_slice(&next.to_le_bytes());
        let _ = mem.write_slice(&raw, GuestAddress(self.at + 16 * u64::from(index % QSIZE)));
    }

    fn add(&mut self, mem: &GuestMemoryMmap, bufs: &[(u64, u32, u16)]) {
        let head = self.next_desc;
        for (i, &(addr, len, flags)) in bufs.iter().enumerate() {
            let index = head.wrapping_add(i as u16) % QSIZE;
            let flags = if i + 1 == bufs.len() { flags } else { flags | F_NEXT };
            self.store(mem, index, addr, len, flags, (index + 1) % QSIZE);
        }
        self.next_desc = head.wrapping_add(bufs.len() as u16) % QSIZE;
        self.publish(mem, head);
    }

    fn publish(&mut self, mem: &GuestMemoryMmap, head: u16) {
        let _ = mem.write_obj(head, GuestAddress(self.at + 0x800 + 4 + 2 * u64::from(self.avail_idx % QSIZE)));
        self.avail_idx = self.avail_idx.wrapping_add(1);
        let _ = mem.write_obj(self.avail_idx, GuestAddress(self.at + 0x800 + 2));
    }

    /// (head, length) of the used entries since the last call.
    fn used(&mut self, mem: &GuestMemoryMmap) -> Vec<(u32, u32)> {
        let used = self.at + 0xa00;
        let idx: u16 = mem.read_obj(GuestAddress(used + 2)).unwrap_or(self.used_seen);
        let mut out = Vec::new();
        while self.used_seen != idx {
            let e = used + 4 + 8 * u64::from(self.used_seen % QSIZE);
            let id: u32 = mem.read_obj(GuestAddress(e)).unwrap_or(0);
            let len: u32 = mem.read_obj(GuestAddress(e + 4)).unwrap_or(0);
            out.push((id, len));
            self.used_seen = self.used_seen.wrapping_add(1);
        }
        out
    }
}

struct Harness {
    mem: GuestMemoryMmap,
    active: Active,
    drivers: [Driver; 2],
    next_buf: u64,
    unique: u64,
    _dir: tempfile::TempDir,
}

impl Harness {
    fn new() -> Option<Self> {
        let dir = tempfile::tempdir().ok()?;
        std::fs::write(dir.path().join("hello.txt"), b"hello from the host\n").ok()?;
        std::fs::create_dir(dir.path().join("sub")).ok()?;
        std::fs::write(dir.path().join("sub/f"), b"x").ok()?;
        let fs = PassthroughFs::new(passthrough_config(dir.path().to_str()?)).ok()?;
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).ok()?;
        let active = Active {
            server: Server::new(ShareFs::new(fs, false)),
            mem: bridge::view(&mem).ok()?,
            queues: vec![bridge::queue(0, &queue(QUEUE_AT[0])).ok()?, bridge::queue(1, &queue(QUEUE_AT[1])).ok()?],
            interrupt: Arc::new(VirtioInterrupt::new(IrqTrigger::new().ok()?)),
        };
        let drivers = QUEUE_AT.map(|at| Driver { at, next_desc: 0, avail_idx: 0, used_seen: 0 });
        Some(Harness { mem, active, drivers, next_buf: DATA_START, unique: 0, _dir: dir })
    }

    fn alloc(&mut self, len: u64) -> u64 {
        let len = len.next_multiple_of(64).min(DATA_END - DATA_START);
        if self.next_buf + len > DATA_END {
            self.next_buf = DATA_START;
        }
        let at = self.next_buf;
        self.next_buf += len;
        at
    }

    /// Serves queue `q` as the worker does, kick after kick; panics if a
    /// queue never runs dry.
    fn serve(&mut self, q: usize) {
        for _ in 0..64 {
            if !self.active.process_queue(q) {
                return;
            }
        }
        panic!("the fs device keeps finding requests in a queue that holds at most {QSIZE}");
    }

    fn message(&mut self, opcode: u32, nodeid: u64, len: Option<u32>, uid: u32, body: &[u8]) -> Vec<u8> {
        self.unique += 1;
        let header = InHeader {
            len: len.unwrap_or((std::mem::size_of::<InHeader>() + body.len()) as u32),
            opcode,
            unique: self.unique,
            nodeid,
            uid,
            gid: uid,
            ..Default::default()
        };
        [header.as_slice(), body].concat()
    }

    fn init(&mut self) {
        let init = InitIn { major: 7, minor: KERNEL_MINOR_VERSION, max_readahead: 0x20000, flags: 0 };
        let msg = self.message(Opcode::Init as u32, 0, None, 0, init.as_slice());
        self.plain(REQUEST_QUEUE, &msg, 256);
        self.serve(REQUEST_QUEUE);
    }

    /// A request and a reply buffer, as the kernel lays them out.
    fn plain(&mut self, q: usize, msg: &[u8], reply: u32) -> u64 {
        let inp = self.alloc(msg.len() as u64);
        let _ = self.mem.write_slice(msg, GuestAddress(inp));
        let out = self.alloc(u64::from(reply));
        let mut chain = vec![(inp, msg.len() as u32, 0)];
        if reply > 0 {
            chain.push((out, reply, F_WRITE));
        }
        self.drivers[q].add(&self.mem, &chain);
        out
    }

    fn request(&mut self, input: &mut Input<'_>) {
        let opcode = match input.u8() {
            // FALLOCATE could fill the disk the fuzzer runs on.
            n if u32::from(n % 52) == Opcode::Fallocate as u32 => Opcode::Getattr as u32,
            n if n >= 208 => input.u32(),
            n => u32::from(n % 52),
        };
        if opcode == Opcode::Fallocate as u32 {
            return;
        }
        let nodeid = match input.u8() {
            n if n >= 250 => input.u64(),
            n => NODES[usize::from(n) % NODES.len()],
        };
        let body_len = usize::from(input.u16() % 600);
        let mut body = input.bytes(body_len).to_vec();
        // Often a plausible name at the end.
        if input.u8() % 2 == 0 {
            body.extend_from_slice(input.pick(&[&b"hello.txt\0"[..], b"sub\0", b"new\0", b"..\0", b"f\0"]));
        }
        let len = if input.u8() % 4 == 0 { Some(input.u32()) } else { None };
        let uid = input.pick(&[0u32, 0, 0, 1000]);
        let msg = self.message(opcode, nodeid, len, uid, &body);
        let q = if input.u8() % 8 == 0 { HIPRIO_QUEUE } else { REQUEST_QUEUE };
        let shape = input.u8() % 8;
        let inp = self.alloc(msg.len() as u64);
        let _ = self.mem.write_slice(&msg, GuestAddress(inp));
        let reply = u32::from(input.u16());
        let out = self.alloc(u64::from(reply));
        let n = msg.len() as u32;
        match shape {
            0 | 1 => {
                self.drivers[q].add(&self.mem, &[(inp, n, 0), (out, reply, F_WRITE)]);
            }
            2 => {
                // The request split at any point, the reply split in two.
                let cut = u32::from(input.u16()) % n.max(1);
                self.drivers[q].add(
                    &self.mem,
                    &[
                        (inp, cut, 0),
                        (inp + u64::from(cut), n - cut, 0),
                        (out, reply / 2, F_WRITE),
                        (out, reply, F_WRITE),
                    ],
                );
            }
            3 => {
                // Many descriptors over the same pages.
                let mut chain = vec![(inp, n, 0)];
                chain.extend(std::iter::repeat_n((DATA_START, 1 << 20, 0), usize::from(input.u8() % 8)));
                chain.extend(std::iter::repeat_n((DATA_START, 1 << 20, F_WRITE), usize::from(input.u8() % 8)));
                self.drivers[q].add(&self.mem, &chain);
            }
            4 => {
                // An indirect table holding the request and the reply.
                let table = self.alloc(32);
                let d = |addr: u64, len: u32, flags: u16, next: u16| {
                    let mut raw = [0u8; 16];
                    raw[..8].copy_from_slice(&addr.to_le_bytes());
                    raw[8..12].copy_from_slice(&len.to_le_bytes());
                    raw[12..14].copy_from_slice(&flags.to_le_bytes());
                    raw[14..].copy_from_slice(&next.to_le_bytes());
                    raw
                };
                let _ = self.mem.write_slice(&d(inp, n, F_NEXT, 1), GuestAddress(table));
                let _ = self.mem.write_slice(&d(out, reply, F_WRITE, 0), GuestAddress(table + 16));
                let len = if input.u8() % 4 == 0 { input.u32() } else { 32 };
                self.drivers[q].add(&self.mem, &[(table, len, F_INDIRECT)]);
            }
            5 => {
                // Raw descriptors: any address, length, flags and next.
                let d = &mut self.drivers[q];
                let head = d.next_desc;
                let count = 1 + input.u8() % 4;
                for i in 0..count {
                    let addr = if input.u8() % 2 == 0 { inp } else { input.u64() % (2 * MEM_SIZE) };
                    let (len, flags, next) = (input.u32(), input.u16() & 7, input.u16());
                    d.store(&self.mem, head.wrapping_add(u16::from(i)), addr, len, flags, next);
                }
                d.next_desc = head.wrapping_add(u16::from(count)) % QSIZE;
                let published = if input.u8() % 8 == 0 { input.u16() } else { head };
                d.publish(&self.mem, published);
            }
            6 => {
                // Only readable buffers, or the request in a writable one.
                let flags = if input.u8() % 2 == 0 { 0 } else { F_WRITE };
                self.drivers[q].add(&self.mem, &[(inp, n, flags), (out, reply, flags)]);
            }
            _ => {
                // The avail index moved anywhere.
                let idx = input.u16();
                let _ = self.mem.write_obj(idx, GuestAddress(self.drivers[q].at + 0x800 + 2));
                self.drivers[q].avail_idx = idx;
            }
        }
        self.serve(q);
        self.drivers[q].used(&self.mem);
    }

    /// After whatever came before, a GETATTR of the root still gets a
    /// well-formed answer under its own id.
    fn still_answers(&mut self) {
        // Put the request queue's ring back in order first: the input may
        // have moved its avail index anywhere.
        let q = REQUEST_QUEUE;
        let next_avail = {
            use fuse_virtio_queue::QueueT as _;
            self.active.queues[q].next_avail()
        };
        self.drivers[q].avail_idx = next_avail;
        let _ = self.mem.write_obj(next_avail, GuestAddress(self.drivers[q].at + 0x800 + 2));
        self.drivers[q].used(&self.mem);
        let msg = self.message(Opcode::Getattr as u32, 1, None, 0, GetattrIn::default().as_slice());
        let out = self.plain(q, &msg, 256);
        self.serve(q);
        let used = self.drivers[q].used(&self.mem);
        assert_eq!(used.len(), 1, "the request is used once");
        let len = used[0].1 as usize;
        assert!(len >= std::mem::size_of::<OutHeader>(), "a reply of {len} bytes");
        let mut header = OutHeader::default();
        let _ = self.mem.read_slice(header.as_mut_slice(), GuestAddress(out));
        assert_eq!(header.unique, self.unique);
        assert_eq!(header.len as usize, len);
    }
}

pub fn requests(data: &[u8]) {
    // The worker's own filesystem context and umask (event_handler.rs).
    static CONTEXT: Once = Once::new();
    CONTEXT.call_once(|| {
        let _ = nix::sched::unshare(nix::sched::CloneFlags::CLONE_FS);
        nix::sys::stat::umask(nix::sys::stat::Mode::empty());
    });
    let Some(mut h) = Harness::new() else { return };
    let mut input = Input::new(data);
    if input.u8() % 8 != 0 {
        h.init();
    }
    let mut steps = 0;
    while !input.is_empty() && steps < 64 {
        steps += 1;
        h.request(&mut input);
    }
    h.init();
    h.still_answers();
}
