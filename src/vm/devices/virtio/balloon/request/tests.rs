//! The balloon's queues on plain guest memory, served by the worker's
//! queue loop without its thread: what the Linux driver sends, and what a
//! hostile guest might.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use virtio_bindings::bindings::virtio_ring::VRING_DESC_F_NEXT;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::*;
use crate::vm::devices::virtio::balloon::device::{queue_roles, Active, ActiveQueue, Shared, BUDGET, QUEUE_SIZE};
use crate::vm::devices::virtio::balloon::device::{VIRTIO_BALLOON_F_REPORTING, VIRTIO_BALLOON_F_STATS_VQ};
use crate::vm::devices::virtio::balloon::reclaim::PAGE_SIZE;
use crate::vm::devices::virtio::block::test_driver::{desc, guest_memory, Buf, Driver, MEM_SIZE};
use crate::vm::devices::virtio::VirtioInterrupt;
use crate::vm::devices::IrqTrigger;

const INFLATE: usize = 0;
const DEFLATE: usize = 1;
const STATS: usize = 2;
const REPORTING: usize = 3;
/// Pages the tests fill and expect to see discarded (or kept): well above
/// the rings (64 KiB apart from 64 KiB) and the buffers (from 1 MiB).
const VICTIM: u64 = 0x100_0000;
const PATTERN: u8 = 0xa5;

/// A guest driver per queue and the device's side of them.
struct H<'m> {
    mem: &'m GuestMemoryMmap,
    d: Vec<Driver<'m>>,
    a: Active,
}

impl<'m> H<'m> {
    /// All four queues (STATS_VQ and REPORTING accepted), of `size` entries.
    fn new(mem: &'m GuestMemoryMmap, size: u16) -> Self {
        let roles = queue_roles(1 << VIRTIO_BALLOON_F_STATS_VQ | 1 << VIRTIO_BALLOON_F_REPORTING);
        let d: Vec<Driver> = (0..roles.len()).map(|i| Driver::at(mem, 0x1_0000 * (i as u64 + 1), size)).collect();
        let queues = roles.into_iter().zip(&d).map(|(role, d)| ActiveQueue { role, queue: d.queue() }).collect();
        let a = Active {
            mem: mem.clone(),
            queues,
            interrupt: Arc::new(VirtioInterrupt::new(IrqTrigger::new().unwrap())),
            shared: Arc::new(Shared::default()),
            stats_head: None,
        };
        H { mem, d, a }
    }

    /// Guest memory for a buffer, holding `bytes`.
    fn buf(&mut self, bytes: &[u8], write: bool) -> Buf {
        let addr = self.d[0].alloc(bytes.len().max(1));
        self.mem.write_slice(bytes, GuestAddress(addr)).unwrap();
        Buf { addr, len: bytes.len() as u32, write }
    }

    /// A readable buffer with these PFNs, as the driver fills it.
    fn pfn_buf(&mut self, pfns: &[u32]) -> Buf {
        let bytes: Vec<u8> = pfns.iter().flat_map(|p| p.to_le_bytes()).collect();
        self.buf(&bytes, false)
    }

    /// Publishes `bufs` as one chain on queue `q`, serves the queue,
    /// returns the used entries.
    fn send(&mut self, q: usize, bufs: &[Buf]) -> Vec<(u32, u32)> {
        let head = self.d[q].chain(bufs);
        self.d[q].publish(head);
        self.run(q)
    }

    fn run(&mut self, q: usize) -> Vec<(u32, u32)> {
        while self.a.process_queue(q, &AtomicBool::new(false)) {}
        self.d[q].used()
    }

    fn inflated(&self) -> u64 {
        self.a.shared.inflated_bytes.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn reported(&self) -> u64 {
        self.a.shared.reported_bytes.load(std::sync::atomic::Ordering::Relaxed)
    }
}

fn fill(mem: &GuestMemoryMmap, at: u64, len: u64) {
    mem.write_slice(&vec![PATTERN; len as usize], GuestAddress(at)).unwrap();
}

/// Whether each page from `at` on reads as zeros (discarded) or still
/// holds the pattern (kept).
fn pages(mem: &GuestMemoryMmap, at: u64, count: u64) -> Vec<char> {
    (0..count)
        .map(|i| {
            let mut v = vec![0u8; PAGE_SIZE as usize];
            mem.read_slice(&mut v, GuestAddress(at + i * PAGE_SIZE)).unwrap();
            if v.iter().all(|&b| b == 0) {
                'z'
            } else if v.iter().all(|&b| b == PATTERN) {
                'p'
            } else {
                '?'
            }
        })
        .collect()
}

fn pfn(addr: u64) -> u32 {
    (addr / PAGE_SIZE) as u32
}

fn chars(s: &str) -> Vec<char> {
    s.chars().collect()
}

#[test]
fn inflated_pages_read_back_as_zeros() {
    let mem = guest_memory();
    let mut h = H::new(&mem, QUEUE_SIZE);
    fill(&mem, VICTIM, 8 * PAGE_SIZE);
    // Out of order and with a duplicate, as the page allocator hands them out.
    let b = h.pfn_buf(&[pfn(VICTIM) + 3, pfn(VICTIM) + 1, pfn(VICTIM) + 2, pfn(VICTIM) + 6, pfn(VICTIM) + 3]);
    assert_eq!(h.send(INFLATE, &[b]), vec![(0, 0)], "given back, nothing written");
    assert_eq!(pages(&mem, VICTIM, 8), chars("pzzzppzp"));
    assert_eq!(h.inflated(), 4 * PAGE_SIZE);
}

#[test]
fn deflate_discards_nothing() {
    let mem = guest_memory();
    let mut h = H::new(&mem, QUEUE_SIZE);
    fill(&mem, VICTIM, 2 * PAGE_SIZE);
    let b = h.pfn_buf(&[pfn(VICTIM), pfn(VICTIM) + 1]);
    assert_eq!(h.send(DEFLATE, &[b]), vec![(0, 0)]);
    assert_eq!(pages(&mem, VICTIM, 2), chars("pp"));
    assert_eq!(h.inflated(), 0);
}

#[test]
fn pfns_outside_guest_memory_are_skipped_alone() {
    let mem = guest_memory();
    let mut h = H::new(&mem, QUEUE_SIZE);
    fill(&mem, VICTIM, 2 * PAGE_SIZE);
    let b = h.pfn_buf(&[pfn(MEM_SIZE), u32::MAX, pfn(VICTIM) + 1, pfn(MEM_SIZE) + 7]);
    assert_eq!(h.send(INFLATE, &[b]), vec![(0, 0)]);
    assert_eq!(pages(&mem, VICTIM, 2), chars("pz"));
    assert_eq!(h.inflated(), PAGE_SIZE);
}

#[test]
fn pfn_arrays_are_read_up_to_max_pfns() {
    let mem = guest_memory();
    let mut h = H::new(&mem, QUEUE_SIZE);
    fill(&mem, VICTIM, 2 * PAGE_SIZE);
    // MAX_PFNS entries for the first page, then one for the second, which
    // is past the limit.
    let mut list = vec![pfn(VICTIM); MAX_PFNS];
    list.push(pfn(VICTIM) + 1);
    let b = h.pfn_buf(&list);
    assert_eq!(h.send(INFLATE, &[b]), vec![(0, 0)]);
    assert_eq!(pages(&mem, VICTIM, 2), chars("zp"));
}

#[test]
fn a_huge_buffer_reads_no_more_than_the_limit() {
    let mem = guest_memory();
    let mut h = H::new(&mem, QUEUE_SIZE);
    // The whole of guest memory, several times over, as PFN arrays: read
    // only MAX_PFNS * 4 bytes, which are zeros here (PFN 0, the zero page
    // of the guest, discarded: harmless on this memory).
    let whole = Buf { addr: 0, len: MEM_SIZE as u32, write: false };
    assert_eq!(h.send(INFLATE, &[whole, whole, whole]), vec![(0, 0)]);
    assert_eq!(h.inflated(), PAGE_SIZE);
}

#[test]
fn pfns_may_be_split_across_descriptors_and_a_partial_one_is_ignored() {
    let mem = guest_memory();
    let mut h = H::new(&mem, QUEUE_SIZE);
    fill(&mem, VICTIM, 3 * PAGE_SIZE);
    let p0 = (pfn(VICTIM)).to_le_bytes();
    let p2 = (pfn(VICTIM) + 2).to_le_bytes();
    let p1 = (pfn(VICTIM) + 1).to_le_bytes();
    let a = h.buf(&[p0[0], p0[1], p0[2]], false);
    let empty = Buf { addr: a.addr, len: 0, write: false };
    let b = h.buf(&[p0[3], p2[0], p2[1], p2[2], p2[3], p1[0], p1[1]], false);
    assert_eq!(h.send(INFLATE, &[a, empty, b]), vec![(0, 0)]);
    assert_eq!(pages(&mem, VICTIM, 3), chars("zpz"), "the half PFN at the end names nothing");
}

#[test]
fn device_writable_pfn_buffers_are_ignored() {
    let mem = guest_memory();
    let mut h = H::new(&mem, QUEUE_SIZE);
    fill(&mem, VICTIM, 2 * PAGE_SIZE);
    let good = h.pfn_buf(&[pfn(VICTIM)]);
    let mut wrong = h.pfn_buf(&[pfn(VICTIM) + 1]);
    wrong.write = true;
    assert_eq!(h.send(INFLATE, &[wrong]), vec![(0, 0)]);
    assert_eq!(h.send(INFLATE, &[good, wrong]), vec![(1, 0)], "the whole chain is ignored");
    assert_eq!(pages(&mem, VICTIM, 2), chars("pp"));
    assert_eq!(h.inflated(), 0);
}

#[test]
fn a_descriptor_outside_guest_memory_spoils_its_chain() {
    let mem = guest_memory();
    let mut h = H::new(&mem, QUEUE_SIZE);
    fill(&mem, VICTIM, PAGE_SIZE);
    let good = h.pfn_buf(&[pfn(VICTIM)]);
    for outside in [
        Buf { addr: MEM_SIZE, len: 4, write: false },
        Buf { addr: MEM_SIZE - 2, len: 4, write: false },
        Buf { addr: u64::MAX - 1, len: 4, write: false },
    ] {
        assert_eq!(h.send(INFLATE, &[good, outside]).len(), 1);
    }
    assert_eq!(pages(&mem, VICTIM, 1), chars("p"));
}

#[test]
fn looping_runaway_and_overlong_chains_are_given_back_untouched() {
    let mem = guest_memory();
    let mut h = H::new(&mem, 256);
    fill(&mem, VICTIM, PAGE_SIZE);
    let b = h.pfn_buf(&[pfn(VICTIM)]);
    let d = &mut h.d[INFLATE];
    // 0 -> 1 -> 0 -> ...
    d.store(0, desc(b.addr, 4, VRING_DESC_F_NEXT, 1));
    d.store(1, desc(b.addr, 4, VRING_DESC_F_NEXT, 0));
    d.publish(0);
    // 2 -> 999 (past the table)
    d.store(2, desc(b.addr, 4, VRING_DESC_F_NEXT, 999));
    d.publish(2);
    // 3 -> itself
    d.store(3, desc(b.addr, 4, VRING_DESC_F_NEXT, 3));
    d.publish(3);
    // A head index past the table: cannot even be given back.
    d.publish(300);
    assert_eq!(h.run(INFLATE), vec![(0, 0), (2, 0), (3, 0)]);
    // One descriptor more than allowed, each a good PFN array.
    let head = h.d[INFLATE].chain(&vec![b; MAX_DESCRIPTORS + 1]);
    h.d[INFLATE].publish(head);
    assert_eq!(h.run(INFLATE).len(), 1);
    assert_eq!(pages(&mem, VICTIM, 1), chars("p"));
    // The queue still serves a good chain after all that.
    let head = h.d[INFLATE].chain(&vec![b; MAX_DESCRIPTORS]);
    h.d[INFLATE].publish(head);
    assert_eq!(h.run(INFLATE).len(), 1);
    assert_eq!(pages(&mem, VICTIM, 1), chars("z"));
}

#[test]
fn pfn_arrays_through_indirect_tables_are_served() {
    let mem = guest_memory();
    let mut h = H::new(&mem, QUEUE_SIZE);
    fill(&mem, VICTIM, 2 * PAGE_SIZE);
    let a = h.pfn_buf(&[pfn(VICTIM)]);
    let b = h.pfn_buf(&[pfn(VICTIM) + 1]);
    let head = h.d[INFLATE].indirect_chain(&[a, b]);
    h.d[INFLATE].publish(head);
    assert_eq!(h.run(INFLATE).len(), 1);
    assert_eq!(pages(&mem, VICTIM, 2), chars("zz"));
}

#[test]
fn reported_ranges_are_discarded_by_whole_pages() {
    let mem = guest_memory();
    let mut h = H::new(&mem, QUEUE_SIZE);
    fill(&mem, VICTIM, 16 * PAGE_SIZE);
    // Linux reports 2 MiB blocks; any page-aligned range works, and an
    // unaligned one loses its partial pages.
    let r1 = Buf { addr: VICTIM + PAGE_SIZE, len: 2 * PAGE_SIZE as u32, write: true };
    let r2 = Buf { addr: VICTIM + 5 * PAGE_SIZE + 1, len: 3 * PAGE_SIZE as u32, write: true };
    let empty = Buf { addr: VICTIM, len: 0, write: true };
    assert_eq!(h.send(REPORTING, &[r1, empty, r2]), vec![(0, 0)], "nothing written");
    assert_eq!(pages(&mem, VICTIM, 10), chars("pzzpppzzpp"), "pages 5 and 8 are partial");
    assert_eq!(h.reported(), 4 * PAGE_SIZE);
    // A whole 2 MiB block.
    fill(&mem, VICTIM, 2 << 20);
    let block = Buf { addr: VICTIM, len: 2 << 20, write: true };
    assert_eq!(h.send(REPORTING, &[block]).len(), 1);
    assert!(pages(&mem, VICTIM, 512).iter().all(|&c| c == 'z'));
}

#[test]
fn bad_reports_are_ignored_as_a_whole() {
    let mem = guest_memory();
    let mut h = H::new(&mem, QUEUE_SIZE);
    fill(&mem, VICTIM, 2 * PAGE_SIZE);
    let good = Buf { addr: VICTIM, len: PAGE_SIZE as u32, write: true };
    let readable = Buf { addr: VICTIM + PAGE_SIZE, len: PAGE_SIZE as u32, write: false };
    let outside = Buf { addr: MEM_SIZE - PAGE_SIZE, len: 2 * PAGE_SIZE as u32, write: true };
    let huge = Buf { addr: 0, len: u32::MAX, write: true };
    for bad in [readable, outside, huge] {
        assert_eq!(h.send(REPORTING, &[good, bad]).len(), 1);
    }
    assert_eq!(pages(&mem, VICTIM, 2), chars("pp"));
    assert_eq!(h.reported(), 0);
}

fn stats_bytes(entries: &[(u16, u64)]) -> Vec<u8> {
    entries.iter().flat_map(|(t, v)| t.to_le_bytes().into_iter().chain(v.to_le_bytes())).collect()
}

#[test]
fn stats_are_kept_and_the_buffer_held_until_asked_for() {
    let mem = guest_memory();
    let mut h = H::new(&mem, QUEUE_SIZE);
    let mut bytes = stats_bytes(&[(4, 1 << 30), (5, 2 << 30), (99, 7), (6, 3 << 20)]);
    bytes.extend_from_slice(&[7, 0, 1]); // a partial entry
    let b = h.buf(&bytes, false);
    assert_eq!(h.send(STATS, &[b]), vec![], "held");
    let s = h.a.shared.stats.lock().unwrap().clone();
    assert_eq!(
        (s.free_memory(), s.total_memory(), s.available_memory()),
        (Some(1 << 30), Some(2 << 30), Some(3 << 20))
    );
    assert_eq!((s.get(99), s.get(7), s.updates()), (None, None, 1), "unknown tags and partial entries ignored");
    let _ = h.a.interrupt.irq_fd().read();
    h.a.request_stats();
    assert_eq!(h.d[STATS].used(), vec![(0, 0)], "given back: the driver's cue");
    assert_eq!(h.a.interrupt.irq_fd().read().unwrap(), 1);
    h.a.request_stats();
    assert_eq!(h.d[STATS].used(), vec![], "nothing held, nothing to give");
    // The driver's next report replaces the last one whole.
    let b = h.buf(&stats_bytes(&[(4, 5)]), false);
    assert_eq!(h.send(STATS, &[b]), vec![]);
    let s = h.a.shared.stats.lock().unwrap().clone();
    assert_eq!((s.free_memory(), s.total_memory(), s.updates()), (Some(5), None, 2));
}

#[test]
fn at_most_one_stats_buffer_is_held() {
    let mem = guest_memory();
    let mut h = H::new(&mem, QUEUE_SIZE);
    let b = h.buf(&stats_bytes(&[(4, 1)]), false);
    assert_eq!(h.send(STATS, &[b]), vec![]);
    let c = h.buf(&stats_bytes(&[(4, 2)]), false);
    assert_eq!(h.send(STATS, &[c]), vec![(0, 0)], "the older one comes back");
    assert_eq!(h.a.stats_head, Some(1));
    assert_eq!(h.a.shared.stats.lock().unwrap().free_memory(), Some(2));
}

#[test]
fn bad_stats_buffers_change_nothing() {
    let mem = guest_memory();
    let mut h = H::new(&mem, QUEUE_SIZE);
    let b = h.buf(&stats_bytes(&[(4, 1)]), false);
    assert_eq!(h.send(STATS, &[b]), vec![]);
    let w = h.buf(&stats_bytes(&[(4, 9)]), true);
    h.send(STATS, &[w]);
    let outside = Buf { addr: MEM_SIZE - 4, len: 10, write: false };
    h.send(STATS, &[outside]);
    let huge = Buf { addr: 0, len: MEM_SIZE as u32, write: false };
    h.send(STATS, &[huge]);
    let s = h.a.shared.stats.lock().unwrap().clone();
    // The huge buffer is read: zeros, up to MAX_STATS entries, all tag 0.
    assert_eq!((s.free_memory(), s.get(0), s.updates()), (None, Some(0), 2));
    assert!(h.a.stats_head.is_some());
}

#[test]
fn one_kick_serves_at_most_the_budget_and_interrupts_once() {
    let mem = guest_memory();
    let mut h = H::new(&mem, QUEUE_SIZE);
    let b = h.pfn_buf(&[pfn(VICTIM)]);
    for _ in 0..BUDGET + 5 {
        let head = h.d[DEFLATE].chain(&[b]);
        h.d[DEFLATE].publish(head);
    }
    let cancel = AtomicBool::new(false);
    assert!(h.a.process_queue(DEFLATE, &cancel), "more are waiting");
    assert_eq!(h.d[DEFLATE].used().len(), BUDGET);
    assert_eq!(h.a.interrupt.irq_fd().read().unwrap(), 1, "one interrupt for the batch");
    assert!(!h.a.process_queue(DEFLATE, &cancel));
    assert_eq!(h.d[DEFLATE].used().len(), 5);
    assert!(!h.a.process_queue(DEFLATE, &cancel), "an empty queue");
    assert!(h.a.interrupt.irq_fd().read().is_ok());
    assert!(h.a.interrupt.irq_fd().read().is_err(), "no interrupt when nothing was used");
    assert!(!h.a.process_queue(7, &cancel), "a queue that does not exist");
}

#[test]
fn a_cancel_stops_between_chains() {
    let mem = guest_memory();
    let mut h = H::new(&mem, QUEUE_SIZE);
    let b = h.pfn_buf(&[pfn(VICTIM)]);
    let head = h.d[DEFLATE].chain(&[b]);
    h.d[DEFLATE].publish(head);
    assert!(!h.a.process_queue(DEFLATE, &AtomicBool::new(true)));
    assert_eq!(h.d[DEFLATE].used(), vec![]);
}

#[test]
fn a_runaway_avail_index_serves_nothing() {
    let mem = guest_memory();
    let mut h = H::new(&mem, 16);
    mem.write_obj(100u16, GuestAddress(h.d[INFLATE].q.avail_addr().0 + 2)).unwrap();
    assert!(!h.a.process_queue(INFLATE, &AtomicBool::new(false)), "no re-arm");
    assert!(h.d[INFLATE].used().is_empty());
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
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let data = 0x10_0000u64;
    let mut published = 0usize;
    for round in 0..2000 {
        let q = rng.below(4) as usize;
        // Random descriptors over the whole table: flags, lengths, next
        // indices and addresses (mostly plausible, sometimes not).
        for i in 0..64u16 {
            let addr = match rng.below(8) {
                0 => rng.next(),
                1 => MEM_SIZE - rng.below(1024),
                2 => VICTIM + rng.below(0x40_0000),
                _ => data + rng.below(0x1000),
            };
            let len = match rng.below(6) {
                0 => rng.next() as u32,
                1 => 0,
                2 => 10 * rng.below(20) as u32,
                3 => 1 + rng.below(3) as u32,
                _ => 4 * (1 + rng.below(64) as u32),
            };
            let flags = rng.below(8) as u32; // NEXT, WRITE, INDIRECT in any mix
            h.d[q].store(i, desc(addr, len, flags, rng.below(70) as u16));
        }
        // PFNs and stats where descriptors may point: mostly pages to give
        // away, some anywhere (never the rings: the guest could discard its
        // own rings, but the test driver would lose track).
        for i in 0..64 {
            let p = if rng.below(4) == 0 { rng.next() as u32 | 0x1_0000 } else { pfn(VICTIM) + rng.below(1024) as u32 };
            mem.write_obj(p, GuestAddress(data + 4 * i)).unwrap();
        }
        for _ in 0..rng.below(4) {
            h.d[q].publish(rng.below(64) as u16);
            published += 1;
        }
        if rng.below(8) == 0 {
            h.a.request_stats();
        }
        while h.a.process_queue(q, &AtomicBool::new(false)) {}
        let used = h.d[q].used();
        assert!(used.iter().all(|&(id, len)| id < 64 && len == 0), "round {round}");
    }
    assert!(published > 2000);
    // Still serves a good chain.
    fill(&mem, VICTIM + (4 << 20), PAGE_SIZE);
    let b = h.pfn_buf(&[pfn(VICTIM + (4 << 20))]);
    let head = h.d[INFLATE].chain(&[b]);
    h.d[INFLATE].publish(head);
    while h.a.process_queue(INFLATE, &AtomicBool::new(false)) {}
    assert_eq!(pages(&mem, VICTIM + (4 << 20), 1), chars("z"));
}
