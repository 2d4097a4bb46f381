//! Requests on plain guest memory against a disk in host memory: what the
//! Linux driver sends, and what a hostile guest might.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use virtio_bindings::bindings::virtio_blk::{
    VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_FLUSH,
    VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::QueueT;
use vm_memory::bitmap::BitmapSlice;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap, VolatileSlice};

use super::*;
use crate::vm::devices::virtio::block::device::{Active, BUDGET, QUEUE_SIZE};
use crate::vm::devices::virtio::block::test_driver::*;
use crate::vm::devices::virtio::VirtioInterrupt;
use crate::vm::devices::IrqTrigger;

const SECTORS: u64 = 64;
const OK: u8 = VIRTIO_BLK_S_OK as u8;
const IOERR_: u8 = VIRTIO_BLK_S_IOERR as u8;
const UNSUPP: u8 = VIRTIO_BLK_S_UNSUPP as u8;

fn active(mem: &GuestMemoryMmap, d: &Driver) -> Active {
    Active {
        mem: mem.clone(),
        queue: d.queue(),
        interrupt: Arc::new(VirtioInterrupt::new(IrqTrigger::new().unwrap())),
        writethrough: false,
    }
}

/// A guest driver and the device's side of its queue.
struct H<'m> {
    d: Driver<'m>,
    a: Active,
}

impl<'m> H<'m> {
    fn new(mem: &'m GuestMemoryMmap, size: u16) -> Self {
        let d = Driver::new(mem, size);
        let a = active(mem, &d);
        H { d, a }
    }

    /// Serves what is queued; returns the used entries.
    fn run<D: DiskBackend>(&mut self, disk: &D) -> Vec<(u32, u32)> {
        self.a.process_queue(disk, &AtomicBool::new(false));
        self.d.used()
    }

    /// Publishes one request, serves it, returns (status, used length).
    fn one(&mut self, disk: &MemDisk, kind: u32, sector: u64, data: &[Buf]) -> (u8, u32) {
        let r = self.d.request(kind, sector, data);
        let used = self.run(disk);
        assert_eq!(used.len(), 1, "one chain in, one used entry out");
        assert_eq!(used[0].0, u32::from(r.head));
        (self.d.status(r), used[0].1)
    }

    /// Publishes a hand-made chain, serves it, returns its used length.
    fn raw(&mut self, disk: &MemDisk, bufs: &[Buf]) -> u32 {
        let head = self.d.chain(bufs);
        self.d.publish(head);
        let used = self.run(disk);
        assert_eq!(used.len(), 1, "one chain in, one used entry out");
        assert_eq!(used[0].0, u32::from(head));
        used[0].1
    }
}

fn status_at(mem: &GuestMemoryMmap, b: Buf) -> u8 {
    mem.read_obj(GuestAddress(b.addr + u64::from(b.len) - 1)).unwrap()
}

#[test]
fn a_read_fills_the_buffers_from_the_disk() {
    let mem = guest_memory();
    let mut h = H::new(&mem, QUEUE_SIZE);
    let disk = MemDisk::new(SECTORS, false);
    let (b1, b2) = (h.d.data(512, true, 0), h.d.data(1024, true, 0));
    let (status, len) = h.one(&disk, VIRTIO_BLK_T_IN, 2, &[b1, b2]);
    assert_eq!((status, len), (OK, 1536 + 1));
    assert_eq!(h.d.read(b1), disk.bytes(1024, 512));
    assert_eq!(h.d.read(b2), disk.bytes(1536, 1024));
}

#[test]
fn a_write_lands_on_the_disk() {
    let mem = guest_memory();
    let mut h = H::new(&mem, QUEUE_SIZE);
    let disk = MemDisk::new(SECTORS, false);
    let (b1, b2) = (h.d.data(512, false, 0xa1), h.d.data(512, false, 0xb2));
    assert_eq!(h.one(&disk, VIRTIO_BLK_T_OUT, 5, &[b1, b2]), (OK, 1));
    assert_eq!(disk.bytes(5 * 512, 512), vec![0xa1; 512]);
    assert_eq!(disk.bytes(6 * 512, 512), vec![0xb2; 512]);
    assert_eq!(disk.bytes(7 * 512, 1), vec![((7 * 512) % 251) as u8], "nothing past the data");
    assert_eq!(disk.flushes.get(), 0, "a write-back disk flushes only when asked");
}

#[test]
fn a_flush_is_acknowledged_only_after_the_disk_flushed() {
    let mem = guest_memory();
    let mut h = H::new(&mem, QUEUE_SIZE);
    let mut disk = MemDisk::new(SECTORS, false);
    // The request is published before the hook is set, so its status
    // address is known; the hook sees guest memory at flush time.
    let r = h.d.request(VIRTIO_BLK_T_FLUSH, 0, &[]);
    let seen = Arc::new(std::sync::Mutex::new(None));
    {
        let (mem, seen, used_at) = (mem.clone(), seen.clone(), h.d.q.used_addr().0 + 2);
        disk.on_flush = Some(Box::new(move || {
            let status: u8 = mem.read_obj(GuestAddress(r.status)).unwrap();
            let used_idx: u16 = mem.read_obj(GuestAddress(used_at)).unwrap();
            *seen.lock().unwrap() = Some((status, used_idx));
        }));
    }
    let used = h.run(&disk);
    assert_eq!(used, vec![(u32::from(r.head), 1)]);
    assert_eq!(disk.flushes.get(), 1);
    assert_eq!(*seen.lock().unwrap(), Some((STATUS_UNSET, 0)), "status and used ring untouched during the flush");
    assert_eq!(h.d.status(r), OK);
}

#[test]
fn without_flush_negotiated_every_write_is_flushed_before_completion() {
    let mem = guest_memory();
    let mut h = H::new(&mem, QUEUE_SIZE);
    let disk = MemDisk::new(SECTORS, false);
    h.a.writethrough = true;
    let b = h.d.data(512, false, 7);
    let r = h.d.request(VIRTIO_BLK_T_OUT, 0, &[b]);
    assert_eq!(h.run(&disk), vec![(u32::from(r.head), 1)]);
    assert_eq!((h.d.status(r), disk.flushes.get()), (OK, 1));
}

#[test]
fn get_id_returns_the_serial() {
    let mem = guest_memory();
    let mut h = H::new(&mem, QUEUE_SIZE);
    let disk = MemDisk::new(SECTORS, false);
    let b = h.d.data(20, true, 0xff);
    assert_eq!(h.one(&disk, VIRTIO_BLK_T_GET_ID, 0, &[b]), (OK, 21));
    assert_eq!(h.d.read(b), disk.serial.to_vec());
    // Less room than 20 bytes: what fits; more: 20 bytes, the rest untouched.
    let small = h.d.data(4, true, 0xff);
    assert_eq!(h.one(&disk, VIRTIO_BLK_T_GET_ID, 0, &[small]), (OK, 5));
    assert_eq!(h.d.read(small), b"test");
    let big = h.d.data(64, true, 0xff);
    assert_eq!(h.one(&disk, VIRTIO_BLK_T_GET_ID, 0, &[big]), (OK, 21));
    assert_eq!(h.d.read(big)[..20], disk.serial);
    assert!(h.d.read(big)[20..].iter().all(|&b| b == 0xff));
    // No room at all.
    assert_eq!(h.one(&disk, VIRTIO_BLK_T_GET_ID, 0, &[]).0, IOERR_);
}

#[test]
fn unknown_request_types_are_unsupported() {
    let mem = guest_memory();
    let mut h = H::new(&mem, QUEUE_SIZE);
    let disk = MemDisk::new(SECTORS, false);
    for kind in [VIRTIO_BLK_T_DISCARD, 2, 0xdead_beef] {
        let b = h.d.data(512, false, 1);
        assert_eq!(h.one(&disk, kind, 0, &[b]), (UNSUPP, 1), "type {kind}");
    }
    assert_eq!(disk.ops.get(), 0);
}

#[test]
fn a_read_only_disk_refuses_writes_and_serves_reads() {
    let mem = guest_memory();
    let mut h = H::new(&mem, QUEUE_SIZE);
    let disk = MemDisk::new(SECTORS, true);
    let w = h.d.data(512, false, 9);
    // MemDisk panics if the device writes to it.
    assert_eq!(h.one(&disk, VIRTIO_BLK_T_OUT, 0, &[w]), (IOERR_, 1));
    assert_eq!(h.one(&disk, VIRTIO_BLK_T_FLUSH, 0, &[]), (OK, 1));
    assert_eq!(disk.flushes.get(), 0, "nothing to flush");
    let r = h.d.data(512, true, 0);
    assert_eq!(h.one(&disk, VIRTIO_BLK_T_IN, 0, &[r]), (OK, 513));
    assert_eq!(h.d.read(r), disk.bytes(0, 512));
}

#[test]
fn sectors_past_the_end_are_refused() {
    let mem = guest_memory();
    let mut h = H::new(&mem, QUEUE_SIZE);
    let disk = MemDisk::new(SECTORS, false);
    let cases: [(u32, u64, u32, u8); 8] = [
        (VIRTIO_BLK_T_IN, SECTORS - 1, 512, OK),
        (VIRTIO_BLK_T_IN, SECTORS, 512, IOERR_),
        (VIRTIO_BLK_T_IN, SECTORS - 1, 1024, IOERR_),
        (VIRTIO_BLK_T_OUT, SECTORS, 512, IOERR_),
        // sector * 512 overflows
        (VIRTIO_BLK_T_IN, u64::MAX, 512, IOERR_),
        (VIRTIO_BLK_T_OUT, 1 << 55, 512, IOERR_),
        // sector * 512 fits, + len overflows
        (VIRTIO_BLK_T_IN, u64::MAX / 512, 1024, IOERR_),
        (VIRTIO_BLK_T_OUT, u64::MAX / 512, 1024, IOERR_),
    ];
    for (kind, sector, len, want) in cases {
        let b = h.d.data(len, kind == VIRTIO_BLK_T_IN, 3);
        assert_eq!(h.one(&disk, kind, sector, &[b]).0, want, "type {kind} sector {sector} len {len}");
    }
    assert_eq!(disk.ops.get(), 1, "only the valid read touched the disk");
    assert_eq!(disk.bytes((SECTORS - 1) * 512, 512), MemDisk::new(SECTORS, false).bytes((SECTORS - 1) * 512, 512));
}

#[test]
fn data_must_be_whole_sectors_and_not_empty() {
    let mem = guest_memory();
    let mut h = H::new(&mem, QUEUE_SIZE);
    let disk = MemDisk::new(SECTORS, false);
    let odd = h.d.data(511, true, 0);
    assert_eq!(h.one(&disk, VIRTIO_BLK_T_IN, 0, &[odd]).0, IOERR_);
    let (a, b) = (h.d.data(300, false, 0), h.d.data(300, false, 0));
    assert_eq!(h.one(&disk, VIRTIO_BLK_T_OUT, 0, &[a, b]).0, IOERR_);
    assert_eq!(h.one(&disk, VIRTIO_BLK_T_IN, 0, &[]).0, IOERR_, "no data");
    assert_eq!(h.one(&disk, VIRTIO_BLK_T_OUT, 0, &[]).0, IOERR_, "no data");
    // A zero-length descriptor anywhere in the chain.
    let (x, y) = (h.d.data(512, true, 0), h.d.data(512, true, 0));
    let empty = Buf { addr: x.addr, len: 0, write: true };
    assert_eq!(h.one(&disk, VIRTIO_BLK_T_IN, 0, &[x, empty, y]).0, IOERR_);
    assert_eq!(disk.ops.get(), 0);
}

#[test]
fn a_short_or_missing_header_is_an_error() {
    let mem = guest_memory();
    let mut h = H::new(&mem, QUEUE_SIZE);
    let disk = MemDisk::new(SECTORS, false);
    let hd = h.d.header(VIRTIO_BLK_T_IN, 0);
    let (data, status) = (h.d.data(512, true, 0), h.d.status_buf());
    let short = Buf { len: 8, ..hd };
    assert_eq!(h.raw(&disk, &[short, data, status]), 1);
    assert_eq!(status_at(&mem, status), IOERR_);
    let status = h.d.status_buf();
    assert_eq!(h.raw(&disk, &[status]), 1, "a lone status byte");
    assert_eq!(status_at(&mem, status), IOERR_);
    // The header in a writable buffer is no header.
    let (data, status) = (h.d.data(512, true, 0), h.d.status_buf());
    let writable_header = Buf { write: true, ..hd };
    assert_eq!(h.raw(&disk, &[writable_header, data, status]), 1);
    assert_eq!(status_at(&mem, status), IOERR_);
    assert_eq!(disk.ops.get(), 0);
}

#[test]
fn buffers_may_be_split_anywhere() {
    let mem = guest_memory();
    let mut h = H::new(&mem, QUEUE_SIZE);
    let disk = MemDisk::new(SECTORS, false);
    // The header over two descriptors; the read's data and the status in one.
    let hd = h.d.header(VIRTIO_BLK_T_IN, 3);
    let data_and_status = h.d.data(513, true, 0);
    let len = h.raw(&disk, &[Buf { len: 5, ..hd }, Buf { addr: hd.addr + 5, len: 11, write: false }, data_and_status]);
    assert_eq!(len, 513);
    assert_eq!(status_at(&mem, data_and_status), OK);
    assert_eq!(h.d.read(Buf { len: 512, ..data_and_status }), disk.bytes(3 * 512, 512));
    // A write's data in the header's descriptor.
    let at = h.d.alloc(16 + 1024);
    let mut hdr = [0u8; 16];
    hdr[..4].copy_from_slice(&VIRTIO_BLK_T_OUT.to_le_bytes());
    hdr[8..].copy_from_slice(&9u64.to_le_bytes());
    mem.write_slice(&hdr, GuestAddress(at)).unwrap();
    mem.write_slice(&[0x5a; 1024], GuestAddress(at + 16)).unwrap();
    let status = h.d.status_buf();
    assert_eq!(h.raw(&disk, &[Buf { addr: at, len: 16 + 1024, write: false }, status]), 1);
    assert_eq!(status_at(&mem, status), OK);
    assert_eq!(disk.bytes(9 * 512, 1024), vec![0x5a; 1024]);
}

#[test]
fn a_chain_without_a_writable_status_byte_is_dropped() {
    let mem = guest_memory();
    let mut h = H::new(&mem, QUEUE_SIZE);
    let disk = MemDisk::new(SECTORS, false);
    let hd = h.d.header(VIRTIO_BLK_T_OUT, 0);
    let data = h.d.data(512, false, 0x77);
    // Ends in the (readable) data: no status buffer at all.
    assert_eq!(h.raw(&disk, &[hd, data]), 0);
    // A status buffer the device may not write.
    let status = h.d.status_buf();
    assert_eq!(h.raw(&disk, &[hd, data, Buf { write: false, ..status }]), 0);
    assert_eq!(status_at(&mem, status), STATUS_UNSET);
    // An empty status buffer.
    assert_eq!(h.raw(&disk, &[hd, data, Buf { len: 0, ..status }]), 0);
    // A status byte outside guest memory, or whose address overflows.
    assert_eq!(h.raw(&disk, &[hd, data, Buf { addr: MEM_SIZE, len: 1, write: true }]), 0);
    assert_eq!(h.raw(&disk, &[hd, data, Buf { addr: u64::MAX, len: 2, write: true }]), 0);
    // Only the header.
    assert_eq!(h.raw(&disk, &[hd]), 0);
    assert_eq!(disk.ops.get(), 0, "nothing was written");
    assert_eq!(disk.bytes(0, 1), vec![0]);
}

#[test]
fn buffers_outside_guest_memory_are_an_error_before_any_io() {
    let mem = guest_memory();
    let mut h = H::new(&mem, QUEUE_SIZE);
    let disk = MemDisk::new(SECTORS, false);
    let cases = [
        Buf { addr: MEM_SIZE, len: 512, write: true },
        Buf { addr: MEM_SIZE - 256, len: 512, write: true },
        Buf { addr: u64::MAX - 255, len: 512, write: true },
        Buf { addr: 0, len: 0xffff_0000, write: true },
    ];
    for bad in cases {
        let good = h.d.data(512, true, 0);
        assert_eq!(h.one(&disk, VIRTIO_BLK_T_IN, 0, &[good, bad]).0, IOERR_, "{bad:?}");
        let good = h.d.data(512, false, 1);
        let bad = Buf { write: false, ..bad };
        assert_eq!(h.one(&disk, VIRTIO_BLK_T_OUT, 0, &[good, bad]).0, IOERR_, "{bad:?}");
    }
    let hd = h.d.header(VIRTIO_BLK_T_IN, 0);
    let (data, status) = (h.d.data(512, true, 0), h.d.status_buf());
    assert_eq!(h.raw(&disk, &[Buf { addr: MEM_SIZE - 8, ..hd }, data, status]), 1, "header outside");
    assert_eq!(status_at(&mem, status), IOERR_);
    assert_eq!(disk.ops.get(), 0, "no partial I/O");
}

#[test]
fn readable_buffers_after_writable_ones_are_an_error() {
    let mem = guest_memory();
    let mut h = H::new(&mem, QUEUE_SIZE);
    let disk = MemDisk::new(SECTORS, false);
    let hd = h.d.header(VIRTIO_BLK_T_IN, 0);
    let (w, r, status) = (h.d.data(512, true, 0), h.d.data(512, false, 0), h.d.status_buf());
    assert_eq!(h.raw(&disk, &[hd, w, r, status]), 1);
    assert_eq!(status_at(&mem, status), IOERR_);
    // A read with extra readable data, a write with extra writable room.
    let r = h.d.data(512, true, 0);
    let extra = Buf { addr: hd.addr, len: 16, write: false };
    let status = h.d.status_buf();
    assert_eq!(h.raw(&disk, &[hd, extra, r, status]), 1);
    assert_eq!(status_at(&mem, status), IOERR_);
    let hd = h.d.header(VIRTIO_BLK_T_OUT, 0);
    let (data, room, status) = (h.d.data(512, false, 0), h.d.data(512, true, 0), h.d.status_buf());
    assert_eq!(h.raw(&disk, &[hd, data, room, status]), 1);
    assert_eq!(status_at(&mem, status), IOERR_);
    assert_eq!(disk.ops.get(), 0);
}

#[test]
fn looping_and_runaway_chains_are_dropped() {
    let mem = guest_memory();
    let mut h = H::new(&mem, 16);
    let disk = MemDisk::new(SECTORS, false);
    let hd = h.d.header(VIRTIO_BLK_T_IN, 0);
    let status = h.d.status_buf();
    // 0 -> 1 -> 0 -> ...
    h.d.store(0, desc(hd.addr, 16, VRING_DESC_F_NEXT, 1));
    h.d.store(1, desc(status.addr, 1, VRING_DESC_F_WRITE | VRING_DESC_F_NEXT, 0));
    h.d.publish(0);
    // 2 -> 99 (past the table)
    h.d.store(2, desc(hd.addr, 16, VRING_DESC_F_NEXT, 99));
    h.d.publish(2);
    // 3 -> itself
    h.d.store(3, desc(status.addr, 1, VRING_DESC_F_WRITE | VRING_DESC_F_NEXT, 3));
    h.d.publish(3);
    // A head index past the table.
    h.d.publish(200);
    let used = h.run(&disk);
    // The head past the table cannot be given back (add_used refuses it).
    assert_eq!(used, vec![(0, 0), (2, 0), (3, 0)]);
    assert_eq!(status_at(&mem, status), STATUS_UNSET);
    assert_eq!(disk.ops.get(), 0);
}

#[test]
fn chains_longer_than_4_gib_are_dropped() {
    let mem = guest_memory();
    let mut h = H::new(&mem, QUEUE_SIZE);
    let disk = MemDisk::new(SECTORS, false);
    let hd = h.d.header(VIRTIO_BLK_T_IN, 0);
    let big = Buf { addr: 0, len: u32::MAX - 8, write: true };
    let status = h.d.status_buf();
    assert_eq!(h.raw(&disk, &[hd, big, big, status]), 0);
    assert_eq!(status_at(&mem, status), STATUS_UNSET);
}

#[test]
fn requests_through_indirect_tables_are_served_and_seg_max_holds() {
    let mem = guest_memory();
    let mut h = H::new(&mem, QUEUE_SIZE);
    let disk = MemDisk::new(1024, false);
    let request = |h: &mut H, segments: u32| {
        let mut bufs = vec![h.d.header(VIRTIO_BLK_T_IN, 1)];
        let data: Vec<Buf> = (0..segments).map(|_| h.d.data(512, true, 0)).collect();
        bufs.extend(&data);
        let status = h.d.status_buf();
        bufs.push(status);
        let head = h.d.indirect_chain(&bufs);
        h.d.publish(head);
        let used = h.run(&disk);
        (used, status_at(&mem, status), data)
    };
    let (used, status, data) = request(&mut h, 3);
    assert_eq!((used[0].1, status), (3 * 512 + 1, OK));
    assert_eq!(h.d.read(data[2]), disk.bytes(3 * 512, 512));
    let (used, status, _) = request(&mut h, SEG_MAX);
    assert_eq!((used[0].1, status), (SEG_MAX * 512 + 1, OK));
    let (used, status, _) = request(&mut h, SEG_MAX + 1);
    assert_eq!((used[0].1, status), (1, IOERR_), "more segments than seg_max");
    let (used, status, _) = request(&mut h, 2000);
    assert_eq!((used[0].1, status), (1, IOERR_), "far more segments than seg_max");
}

#[test]
fn disk_errors_become_ioerr() {
    let mem = guest_memory();
    let mut h = H::new(&mem, QUEUE_SIZE);
    let disk = MemDisk::new(SECTORS, false);
    disk.fail.set(true);
    let r = h.d.data(512, true, 0);
    assert_eq!(h.one(&disk, VIRTIO_BLK_T_IN, 0, &[r]), (IOERR_, 1));
    let w = h.d.data(512, false, 0);
    assert_eq!(h.one(&disk, VIRTIO_BLK_T_OUT, 0, &[w]), (IOERR_, 1));
    assert_eq!(h.one(&disk, VIRTIO_BLK_T_FLUSH, 0, &[]), (IOERR_, 1));
}

#[test]
fn one_kick_serves_at_most_the_budget_and_interrupts_once() {
    let mem = guest_memory();
    let mut h = H::new(&mem, QUEUE_SIZE);
    let disk = MemDisk::new(SECTORS, false);
    for _ in 0..BUDGET + 5 {
        let b = h.d.data(512, true, 0);
        h.d.request(VIRTIO_BLK_T_IN, 0, &[b]);
    }
    let cancel = AtomicBool::new(false);
    assert!(h.a.process_queue(&disk, &cancel), "more are waiting");
    assert_eq!(h.d.used().len(), BUDGET);
    assert_eq!(h.a.interrupt.irq_fd().read().unwrap(), 1, "one interrupt for the batch");
    assert!(!h.a.process_queue(&disk, &cancel));
    assert_eq!(h.d.used().len(), 5);
    assert!(!h.a.process_queue(&disk, &cancel), "an empty queue");
    assert!(h.a.interrupt.irq_fd().read().is_ok());
    assert!(h.a.interrupt.irq_fd().read().is_err(), "no interrupt when nothing was used");
}

#[test]
fn a_runaway_avail_index_serves_nothing() {
    let mem = guest_memory();
    let mut h = H::new(&mem, 16);
    let disk = MemDisk::new(SECTORS, false);
    mem.write_obj(100u16, GuestAddress(h.d.q.avail_addr().0 + 2)).unwrap();
    assert!(!h.a.process_queue(&disk, &AtomicBool::new(false)), "no re-arm");
    assert!(h.d.used().is_empty());
}

/// Sets the cancel flag at the first transfer, as a reset arriving then would.
struct CancelOnRead<'a> {
    disk: &'a MemDisk,
    cancel: &'a AtomicBool,
}

impl DiskBackend for CancelOnRead<'_> {
    fn capacity(&self) -> u64 {
        self.disk.capacity()
    }
    fn read_only(&self) -> bool {
        false
    }
    fn serial(&self) -> &[u8; crate::vm::devices::virtio::block::SERIAL_LEN] {
        &self.disk.serial
    }
    fn read_exact_at<B: BitmapSlice>(&self, offset: u64, buf: &VolatileSlice<'_, B>) -> std::io::Result<()> {
        self.cancel.store(true, std::sync::atomic::Ordering::Release);
        self.disk.read_exact_at(offset, buf)
    }
    fn write_all_at<B: BitmapSlice>(&self, offset: u64, buf: &VolatileSlice<'_, B>) -> std::io::Result<()> {
        self.disk.write_all_at(offset, buf)
    }
    fn flush(&self) -> std::io::Result<()> {
        self.disk.flush()
    }
}

#[test]
fn a_reset_stops_a_large_request_between_chunks() {
    let mem = guest_memory();
    let mut h = H::new(&mem, QUEUE_SIZE);
    let disk = MemDisk::new(8192, false);
    let cancel = AtomicBool::new(false);
    let backend = CancelOnRead { disk: &disk, cancel: &cancel };
    let big = h.d.data(3 * CHUNK as u32, true, 0);
    let r = h.d.request(VIRTIO_BLK_T_IN, 0, &[big]);
    assert!(!h.a.process_queue(&backend, &cancel));
    assert_eq!(disk.ops.get(), 1, "one chunk, then the stop was seen");
    assert!(h.d.used().is_empty(), "the request is abandoned, not answered");
    assert_eq!(h.d.status(r), STATUS_UNSET);
    // And a cancelled worker takes nothing more from the queue.
    let b = h.d.data(512, true, 0);
    h.d.request(VIRTIO_BLK_T_IN, 0, &[b]);
    assert!(!h.a.process_queue(&backend, &cancel));
    assert_eq!(h.a.queue.next_avail(), 1);
}

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[test]
fn random_chains_never_break_the_device() {
    let mem = guest_memory();
    let mut h = H::new(&mem, 64);
    let disk = MemDisk::new(SECTORS, false);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let kinds = [VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, 3, 0xffff_ffff];
    let mut published = 0usize;
    for round in 0..3000 {
        // Random descriptors over the whole table: flags, lengths, next
        // indices and addresses (mostly plausible, sometimes not).
        for i in 0..64u16 {
            let addr = match rng.below(8) {
                0 => rng.next(),
                1 => MEM_SIZE - rng.below(1024),
                _ => DATA_START + rng.below(0x10_0000),
            };
            let len = match rng.below(6) {
                0 => rng.next() as u32,
                1 => 0,
                2 => 16,
                3 => 1,
                _ => 512 * (1 + rng.below(4) as u32),
            };
            let flags = rng.below(8) as u32; // NEXT, WRITE, INDIRECT in any mix
            h.d.store(i, desc(addr, len, flags, rng.below(70) as u16));
        }
        // Headers with random types and sectors where descriptors may point.
        for _ in 0..8 {
            let at = DATA_START + rng.below(0x10_0000);
            let kind = kinds[rng.below(kinds.len() as u64) as usize];
            let sector = if rng.below(4) == 0 { rng.next() } else { rng.below(SECTORS + 2) };
            let mut h = [0u8; 16];
            h[..4].copy_from_slice(&kind.to_le_bytes());
            h[8..].copy_from_slice(&sector.to_le_bytes());
            mem.write_slice(&h, GuestAddress(at)).unwrap();
        }
        for _ in 0..rng.below(4) {
            h.d.publish(rng.below(64) as u16);
            published += 1;
        }
        while h.a.process_queue(&disk, &AtomicBool::new(false)) {}
        let used = h.d.used();
        assert!(used.iter().all(|&(id, _)| id < 64), "round {round}");
    }
    assert!(published > 3000);
    // Still answers a good request.
    let b = h.d.data(512, true, 0);
    let r = h.d.request(VIRTIO_BLK_T_IN, 1, &[b]);
    while h.a.process_queue(&disk, &AtomicBool::new(false)) {}
    assert_eq!(h.d.status(r), OK);
    assert_eq!(h.d.read(b), disk.bytes(512, 512));
}
