//! Test helpers: the guest side of a block queue on plain guest memory
//! (descriptors written into virtio-queue's mock split queue the way the
//! guest kernel writes them, and the ways a hostile guest might), and a
//! disk in host memory that can fail on demand and watch its flushes.

use std::cell::{Cell, RefCell};
use std::io;

use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::bitmap::BitmapSlice;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap, VolatileSlice};

use super::disk::{DiskBackend, SECTOR_SIZE, SERIAL_LEN};

pub const MEM_SIZE: u64 = 0x200_0000;
pub const QUEUE_AT: u64 = 0x1_0000;
pub const DATA_START: u64 = 0x10_0000;
/// What the driver writes into a status byte before the device answers.
pub const STATUS_UNSET: u8 = 0xee;

pub fn guest_memory() -> GuestMemoryMmap {
    GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).unwrap()
}

pub fn desc(addr: u64, len: u32, flags: u32, next: u16) -> RawDescriptor {
    RawDescriptor::from(SplitDescriptor::new(addr, len, flags as u16, next))
}

/// One buffer of a chain: where, how long, device-writable or not.
#[derive(Debug, Clone, Copy)]
pub struct Buf {
    pub addr: u64,
    pub len: u32,
    pub write: bool,
}

/// Where a published request's answer goes.
#[derive(Debug, Clone, Copy)]
pub struct Req {
    pub head: u16,
    pub status: u64,
}

pub struct Driver<'m> {
    pub mem: &'m GuestMemoryMmap,
    pub q: MockSplitQueue<'m, GuestMemoryMmap>,
    size: u16,
    next_desc: u16,
    avail_idx: u16,
    used_seen: u16,
    next_buf: u64,
}

impl<'m> Driver<'m> {
    pub fn new(mem: &'m GuestMemoryMmap, size: u16) -> Self {
        Self::at(mem, QUEUE_AT, size)
    }

    /// A queue at `base` (the rings take under 64 KiB below DATA_START).
    pub fn at(mem: &'m GuestMemoryMmap, base: u64, size: u16) -> Self {
        Driver {
            mem,
            q: MockSplitQueue::create(mem, GuestAddress(base), size),
            size,
            next_desc: 0,
            avail_idx: 0,
            used_seen: 0,
            next_buf: DATA_START,
        }
    }

    pub fn queue(&self) -> virtio_queue::Queue {
        self.q.create_queue().unwrap()
    }

    /// Guest memory for a buffer (never reused within a test).
    pub fn alloc(&mut self, len: usize) -> u64 {
        let at = self.next_buf;
        self.next_buf += (len as u64).next_multiple_of(64).max(64);
        assert!(self.next_buf <= MEM_SIZE, "test driver out of guest memory");
        at
    }

    pub fn store(&self, index: u16, d: RawDescriptor) {
        self.q.desc_table().store(index, d).unwrap();
    }

    /// Writes `bufs` as a chain in consecutive descriptor slots; returns its head.
    pub fn chain(&mut self, bufs: &[Buf]) -> u16 {
        let head = self.next_desc;
        for (i, b) in bufs.iter().enumerate() {
            let index = (head + i as u16) % self.size;
            let mut flags = if b.write { VRING_DESC_F_WRITE } else { 0 };
            if i + 1 < bufs.len() {
                flags |= VRING_DESC_F_NEXT;
            }
            self.store(index, desc(b.addr, b.len, flags, (index + 1) % self.size));
        }
        self.next_desc = (head + bufs.len() as u16) % self.size;
        head
    }

    /// Writes `bufs` as an indirect table in guest memory and a one-descriptor
    /// chain pointing at it; returns its head.
    pub fn indirect_chain(&mut self, bufs: &[Buf]) -> u16 {
        let table = self.alloc(bufs.len() * 16);
        for (i, b) in bufs.iter().enumerate() {
            let mut flags = if b.write { VRING_DESC_F_WRITE } else { 0 };
            if i + 1 < bufs.len() {
                flags |= VRING_DESC_F_NEXT;
            }
            let d = SplitDescriptor::new(b.addr, b.len, flags as u16, i as u16 + 1);
            self.mem.write_obj(d, GuestAddress(table + 16 * i as u64)).unwrap();
        }
        let head = self.next_desc;
        self.store(head, desc(table, (bufs.len() * 16) as u32, VRING_DESC_F_INDIRECT, 0));
        self.next_desc = (head + 1) % self.size;
        head
    }

    /// Makes `head` available to the device.
    pub fn publish(&mut self, head: u16) {
        let ring = self.q.avail_addr().0 + 4 + 2 * u64::from(self.avail_idx % self.size);
        self.mem.write_obj(head, GuestAddress(ring)).unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.mem.write_obj(self.avail_idx, GuestAddress(self.q.avail_addr().0 + 2)).unwrap();
    }

    /// Entries the device added to the used ring since the last call.
    pub fn used(&mut self) -> Vec<(u32, u32)> {
        let idx = self.q.used().idx().load();
        let mut out = Vec::new();
        while self.used_seen != idx {
            let e = self.q.used().ring().ref_at(usize::from(self.used_seen % self.size)).unwrap().load();
            out.push((e.id(), e.len()));
            self.used_seen = self.used_seen.wrapping_add(1);
        }
        out
    }

    pub fn used_idx(&self) -> u16 {
        self.q.used().idx().load()
    }

    /// A readable header buffer for `kind` at `sector`.
    pub fn header(&mut self, kind: u32, sector: u64) -> Buf {
        let at = self.alloc(16);
        let mut h = [0u8; 16];
        h[..4].copy_from_slice(&kind.to_le_bytes());
        h[8..].copy_from_slice(&sector.to_le_bytes());
        self.mem.write_slice(&h, GuestAddress(at)).unwrap();
        Buf { addr: at, len: 16, write: false }
    }

    /// A data buffer: filled with `fill` (for a write) or with a marker the
    /// device must overwrite (for a read).
    pub fn data(&mut self, len: u32, write: bool, fill: u8) -> Buf {
        let at = self.alloc(len as usize);
        self.mem.write_slice(&vec![fill; len as usize], GuestAddress(at)).unwrap();
        Buf { addr: at, len, write }
    }

    /// A one-byte writable status buffer, preset to [`STATUS_UNSET`].
    pub fn status_buf(&mut self) -> Buf {
        let at = self.alloc(1);
        self.mem.write_obj(STATUS_UNSET, GuestAddress(at)).unwrap();
        Buf { addr: at, len: 1, write: true }
    }

    /// Header, data and status as the Linux driver lays them out, published.
    pub fn request(&mut self, kind: u32, sector: u64, data: &[Buf]) -> Req {
        let mut bufs = vec![self.header(kind, sector)];
        bufs.extend_from_slice(data);
        let status = self.status_buf();
        bufs.push(status);
        let head = self.chain(&bufs);
        self.publish(head);
        Req { head, status: status.addr }
    }

    pub fn status(&self, r: Req) -> u8 {
        self.mem.read_obj(GuestAddress(r.status)).unwrap()
    }

    pub fn read(&self, b: Buf) -> Vec<u8> {
        let mut v = vec![0u8; b.len as usize];
        self.mem.read_slice(&mut v, GuestAddress(b.addr)).unwrap();
        v
    }
}

/// A disk in host memory. Byte `i` of a fresh disk is `i % 251`.
pub struct MemDisk {
    pub data: RefCell<Vec<u8>>,
    pub read_only: bool,
    pub serial: [u8; SERIAL_LEN],
    /// Fail every read, write and flush with EIO.
    pub fail: Cell<bool>,
    pub flushes: Cell<u32>,
    /// Called at each flush, before it counts.
    pub on_flush: Option<Box<dyn Fn()>>,
    pub ops: Cell<u32>,
}

impl MemDisk {
    pub fn new(sectors: u64, read_only: bool) -> Self {
        let data = (0..sectors * SECTOR_SIZE).map(|i| (i % 251) as u8).collect();
        let mut serial = [0u8; SERIAL_LEN];
        serial[..9].copy_from_slice(b"test-disk");
        MemDisk {
            data: RefCell::new(data),
            read_only,
            serial,
            fail: Cell::new(false),
            flushes: Cell::new(0),
            on_flush: None,
            ops: Cell::new(0),
        }
    }

    pub fn bytes(&self, offset: u64, len: usize) -> Vec<u8> {
        self.data.borrow()[offset as usize..offset as usize + len].to_vec()
    }

    fn check(&self) -> io::Result<()> {
        self.ops.set(self.ops.get() + 1);
        if self.fail.get() {
            Err(io::Error::from_raw_os_error(libc::EIO))
        } else {
            Ok(())
        }
    }
}

impl DiskBackend for MemDisk {
    fn capacity(&self) -> u64 {
        self.data.borrow().len() as u64 / SECTOR_SIZE
    }

    fn read_only(&self) -> bool {
        self.read_only
    }

    fn serial(&self) -> &[u8; SERIAL_LEN] {
        &self.serial
    }

    fn read_exact_at<B: BitmapSlice>(&self, offset: u64, buf: &VolatileSlice<'_, B>) -> io::Result<()> {
        self.check()?;
        let data = self.data.borrow();
        let src = data.get(offset as usize..offset as usize + buf.len()).ok_or(io::ErrorKind::UnexpectedEof)?;
        buf.write_slice(src, 0).map_err(io::Error::other)
    }

    fn write_all_at<B: BitmapSlice>(&self, offset: u64, buf: &VolatileSlice<'_, B>) -> io::Result<()> {
        self.check()?;
        assert!(!self.read_only, "the device wrote to a read-only disk");
        let mut data = self.data.borrow_mut();
        let dst = data.get_mut(offset as usize..offset as usize + buf.len()).ok_or(io::ErrorKind::WriteZero)?;
        buf.read_slice(dst, 0).map_err(io::Error::other)
    }

    fn flush(&self) -> io::Result<()> {
        self.check()?;
        if let Some(f) = &self.on_flush {
            f();
        }
        self.flushes.set(self.flushes.get() + 1);
        Ok(())
    }
}
