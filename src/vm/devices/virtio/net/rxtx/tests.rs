//! The data path on plain guest memory against a TAP in memory: frames
//! both ways, headers and offloads, and what a hostile guest (or a
//! flooding network) can do to each queue.

use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use vm_memory::GuestAddress;

use super::*;
use crate::vm::devices::virtio::block::test_driver::{desc, guest_memory, Buf, Driver, MEM_SIZE, QUEUE_AT};
use crate::vm::devices::virtio::net::device::{VirtioNet, QUEUE_SIZE};
use crate::vm::devices::virtio::net::fake_tap::FakeTap;
use crate::vm::devices::virtio::net::tap::MAX_FRAME;
use crate::vm::devices::virtio::VirtioDevice;
use crate::vm::devices::IrqTrigger;

const RX_AT: u64 = 0x4_0000;
const NEEDS_CSUM: u8 = VIRTIO_NET_HDR_F_NEEDS_CSUM as u8;
const DATA_VALID: u8 = VIRTIO_NET_HDR_F_DATA_VALID as u8;
const TCPV4: u8 = VIRTIO_NET_HDR_GSO_TCPV4 as u8;
const TCPV6: u8 = VIRTIO_NET_HDR_GSO_TCPV6 as u8;

/// Every feature the device offers.
fn all_features() -> u64 {
    let tap = FakeTap::new();
    VirtioNet::with_backend(tap, [0; 6], 1500).unwrap().avail_features()
}

fn hdr(flags: u8, gso: u8) -> [u8; VNET_HDR_LEN] {
    let mut h = [0u8; VNET_HDR_LEN];
    h[0] = flags;
    h[1] = gso;
    h
}

/// A header and `len` bytes of frame (which start like an Ethernet frame
/// to a broadcast address).
fn packet(h: [u8; VNET_HDR_LEN], len: usize, seed: u8) -> Vec<u8> {
    let mut p = h.to_vec();
    p.extend((0..len).map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed)));
    p
}

struct Rig<'m> {
    tx: Driver<'m>,
    rx: Driver<'m>,
    active: Active,
    io: Io<FakeTap>,
    tap: FakeTap,
}

fn rig(mem: &GuestMemoryMmap, features: u64) -> Rig<'_> {
    let tx = Driver::at(mem, QUEUE_AT, QUEUE_SIZE);
    let mut rx = Driver::at(mem, RX_AT, QUEUE_SIZE);
    // The two drivers hand out buffers from the same start: the RX one
    // from the upper half of guest memory.
    rx.alloc((MEM_SIZE / 2) as usize);
    let interrupt = Arc::new(VirtioInterrupt::new(IrqTrigger::new().unwrap()));
    let active = Active { mem: mem.clone(), rx: rx.queue(), tx: tx.queue(), interrupt, features };
    let tap = FakeTap::new();
    let io = Io::new(tap.clone(), Arc::new(NetStats::default()));
    Rig { tx, rx, active, io, tap }
}

impl Rig<'_> {
    /// Puts `bytes` in readable buffers of the given sizes (the rest in a
    /// last one) and publishes the chain.
    fn send(&mut self, bytes: &[u8], splits: &[usize]) -> u16 {
        let mut bufs = Vec::new();
        let mut at = 0;
        for &n in splits.iter().chain(std::iter::once(&(bytes.len() - splits.iter().sum::<usize>()))) {
            let addr = self.tx.alloc(n.max(1));
            self.tx.mem.write_slice(&bytes[at..at + n], GuestAddress(addr)).unwrap();
            bufs.push(Buf { addr, len: n as u32, write: false });
            at += n;
        }
        let head = self.tx.chain(&bufs);
        self.tx.publish(head);
        head
    }

    /// Posts an RX chain of writable buffers of these sizes.
    fn post(&mut self, sizes: &[u32]) -> (u16, Vec<Buf>) {
        let bufs: Vec<Buf> = sizes.iter().map(|&n| self.rx.data(n, true, 0xee)).collect();
        let head = self.rx.chain(&bufs);
        self.rx.publish(head);
        (head, bufs)
    }

    fn received(&self, bufs: &[Buf], len: usize) -> Vec<u8> {
        let mut out: Vec<u8> = bufs.iter().flat_map(|b| self.rx.read(*b)).collect();
        out.truncate(len);
        out
    }

    fn tx_dropped(&self) -> u64 {
        self.io.stats.tx_dropped.load(Ordering::Relaxed)
    }

    fn rx_dropped(&self) -> u64 {
        self.io.stats.rx_dropped.load(Ordering::Relaxed)
    }
}

#[test]
fn tx_sends_header_and_frame_however_the_chain_splits_them() {
    let mem = guest_memory();
    let mut r = rig(&mem, all_features());
    let p1 = packet(hdr(0, 0), 60, 1);
    let p2 = packet(hdr(NEEDS_CSUM, TCPV4), 3000, 2);
    let p3 = packet(hdr(NEEDS_CSUM, TCPV6), 1500, 3);
    let h1 = r.send(&p1, &[VNET_HDR_LEN]);
    // The header over three buffers, the frame starting in the third.
    let h2 = r.send(&p2, &[5, 0, 4, 10, 1000]);
    // Header and frame in one buffer, as Linux sends small frames.
    let h3 = r.send(&p3, &[]);
    // An indirect table.
    let addr = r.tx.alloc(p1.len());
    mem.write_slice(&p1, GuestAddress(addr)).unwrap();
    let h4 = r.tx.indirect_chain(&[
        Buf { addr, len: 12, write: false },
        Buf { addr: addr + 12, len: p1.len() as u32 - 12, write: false },
    ]);
    r.tx.publish(h4);
    assert!(!r.io.process_tx(&mut r.active));
    assert_eq!(r.tap.sent(), vec![p1.clone(), p2, p3, p1]);
    let heads = [h1, h2, h3, h4].map(u32::from).to_vec();
    assert_eq!(r.tx.used(), heads.into_iter().map(|h| (h, 0)).collect::<Vec<_>>());
    assert!(r.active.interrupt.irq_fd().read().is_ok(), "the guest is interrupted");
    assert_eq!(r.io.stats.tx_frames.load(Ordering::Relaxed), 4);
    assert_eq!(r.io.stats.tx_bytes.load(Ordering::Relaxed), 60 + 3000 + 1500 + 60);
}

#[test]
fn tx_passes_only_what_the_driver_may_ask_of_the_header() {
    let mem = guest_memory();
    let mut r = rig(&mem, all_features());
    // DATA_VALID means nothing on TX, num_buffers is the device's.
    let mut h = hdr(NEEDS_CSUM | DATA_VALID | 0x40, 0);
    h[10] = 9;
    r.send(&packet(h, 100, 0), &[]);
    r.io.process_tx(&mut r.active);
    assert_eq!(r.tap.sent()[0][..VNET_HDR_LEN], hdr(NEEDS_CSUM, 0));
}

#[test]
fn tx_drops_offloads_the_driver_did_not_accept() {
    let mem = guest_memory();
    let mut r = rig(&mem, VIRTIO_F_VERSION_1);
    for h in [hdr(NEEDS_CSUM, 0), hdr(0, TCPV4), hdr(NEEDS_CSUM, TCPV6)] {
        r.send(&packet(h, 100, 0), &[]);
    }
    let mut r2 = rig(&mem, all_features());
    // ECN and UDP segmentation are never offered; 0x42 is no type at all.
    for gso in [TCPV4 | 0x80, 3, 5, 0x42] {
        r2.send(&packet(hdr(NEEDS_CSUM, gso), 100, 0), &[]);
    }
    for r in [&mut r, &mut r2] {
        r.io.process_tx(&mut r.active);
        assert!(r.tap.sent().is_empty());
        assert!(r.tx.used().iter().all(|u| u.1 == 0));
        assert!(r.tx_dropped() >= 3);
    }
}

use crate::vm::devices::virtio::VIRTIO_F_VERSION_1;

#[test]
fn tx_drops_every_malformed_chain_and_gives_it_back() {
    let mem = guest_memory();
    let mut r = rig(&mem, all_features());
    let good = packet(hdr(0, 0), 60, 5);
    let mut heads = Vec::new();
    // A header cut short, a header and less than an Ethernet header.
    heads.push(r.send(&packet(hdr(0, 0), 0, 0)[..8], &[]));
    heads.push(r.send(&packet(hdr(0, 0), 13, 0), &[]));
    // One byte over the largest packet.
    heads.push(r.send(&packet(hdr(0, 0), MAX_FRAME + 1, 0), &[VNET_HDR_LEN]));
    // A device-writable buffer.
    let w = r.tx.data(100, true, 0);
    let hb = r.tx.data(12, false, 0);
    let h = r.tx.chain(&[hb, w]);
    r.tx.publish(h);
    heads.push(h);
    // A buffer outside guest memory, one that wraps the address space.
    for addr in [MEM_SIZE - 10, u64::MAX - 5] {
        let h = r.tx.chain(&[hb, Buf { addr, len: 100, write: false }]);
        r.tx.publish(h);
        heads.push(h);
    }
    // A chain that loops on itself, one whose next is past the table.
    r.tx.store(200, desc(hb.addr, 12, VRING_DESC_F_NEXT, 201));
    r.tx.store(201, desc(hb.addr, 100, VRING_DESC_F_NEXT, 200));
    r.tx.publish(200);
    heads.push(200);
    r.tx.store(210, desc(hb.addr, 100, VRING_DESC_F_NEXT, 999));
    r.tx.publish(210);
    heads.push(210);
    // More buffers than MAX_SEGS.
    let mut pieces = vec![1usize; MAX_SEGS];
    pieces[0] = VNET_HDR_LEN;
    heads.push(r.send(&packet(hdr(0, 0), 100 + MAX_SEGS, 0), &pieces));
    // Zero-length buffers are fine: skipped.
    let ok = r.send(&good, &[0, VNET_HDR_LEN, 0]);
    heads.push(ok);
    let n = heads.len() as u64;
    assert!(!r.io.process_tx(&mut r.active));
    assert_eq!(r.tap.sent(), vec![good]);
    assert_eq!(r.tx_dropped(), n - 1);
    let used = r.tx.used();
    assert_eq!(used.len() as u64, n);
    assert!(used.iter().all(|u| u.1 == 0));
    assert_eq!(used.iter().map(|u| u.0 as u16).collect::<Vec<_>>(), heads);
}

#[test]
fn tx_serves_a_budget_per_call_and_a_failing_tap_drops_frames() {
    let mem = guest_memory();
    let mut r = rig(&mem, all_features());
    let p = packet(hdr(0, 0), 60, 0);
    for _ in 0..BUDGET + 10 {
        r.send(&p, &[]);
    }
    assert!(r.io.process_tx(&mut r.active), "more may be waiting");
    assert_eq!(r.tap.sent().len(), BUDGET);
    r.tap.lock().fail_writes = true;
    assert!(!r.io.process_tx(&mut r.active));
    assert_eq!(r.tap.sent().len(), BUDGET);
    assert_eq!(r.tx_dropped(), 10);
    assert_eq!(r.tx.used().len(), BUDGET + 10, "every chain is given back");
}

#[test]
fn rx_places_a_frame_in_one_chain_and_sets_num_buffers() {
    let mem = guest_memory();
    let mut r = rig(&mem, all_features());
    let mut h = hdr(NEEDS_CSUM | DATA_VALID, TCPV4);
    h[10] = 0x55; // left as found by a TAP
    let p = packet(h, 4000, 9);
    r.tap.push(p.clone());
    let (head, bufs) = r.post(&[12, 1000, 4000]);
    assert_eq!(r.io.process_rx(&mut r.active), RxState::NeedBuffers);
    assert_eq!(r.rx.used(), vec![(u32::from(head), p.len() as u32)]);
    let got = r.received(&bufs, p.len());
    assert_eq!(got[..10], p[..10]);
    assert_eq!(got[10..12], [1, 0], "num_buffers");
    assert_eq!(got[12..], p[12..]);
    assert!(r.active.interrupt.irq_fd().read().is_ok());
    assert_eq!(r.io.stats.rx_frames.load(Ordering::Relaxed), 1);
}

#[test]
fn rx_keeps_to_the_offloads_the_driver_accepted() {
    let mem = guest_memory();
    let mut r = rig(&mem, VIRTIO_F_VERSION_1);
    assert_eq!(r.active.tap_offload(), 0);
    // DATA_VALID is cleared for a driver without GUEST_CSUM; frames with
    // offloads it did not accept, or too short, are dropped.
    r.tap.push(packet(hdr(NEEDS_CSUM, 0), 100, 0));
    r.tap.push(packet(hdr(0, TCPV4), 100, 0));
    r.tap.push(packet(hdr(0, 0), 13, 0));
    r.tap.push(packet(hdr(0, 0), 0, 0)[..5].to_vec());
    r.tap.push(packet(hdr(DATA_VALID, 0), 100, 0));
    let (_, bufs) = r.post(&[2000]);
    assert_eq!(r.io.process_rx(&mut r.active), RxState::NeedBuffers);
    assert_eq!(r.rx_dropped(), 4);
    assert_eq!(r.received(&bufs, 1)[0], 0, "DATA_VALID cleared");

    let mut r = rig(&mem, all_features());
    assert_eq!(r.active.tap_offload(), libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6);
    r.tap.push(packet(hdr(DATA_VALID, 0), 100, 0));
    let (_, bufs) = r.post(&[2000]);
    r.io.process_rx(&mut r.active);
    assert_eq!(r.received(&bufs, 1)[0], DATA_VALID);
    // Segmentation only with checksum offload, as the TAP requires.
    let tso_only = 1 << VIRTIO_NET_F_GUEST_TSO4;
    assert_eq!(rig(&mem, tso_only).active.tap_offload(), 0);
}

#[test]
fn rx_with_no_buffers_reads_nothing() {
    let mem = guest_memory();
    let mut r = rig(&mem, all_features());
    r.tap.flood(packet(hdr(0, 0), 1000, 3));
    for _ in 0..5 {
        assert_eq!(r.io.process_rx(&mut r.active), RxState::NeedBuffers);
        assert_eq!(r.tap.reads(), 0, "frames stay in the host's queue");
    }
    let (head, _) = r.post(&[2000]);
    assert_eq!(r.io.process_rx(&mut r.active), RxState::NeedBuffers);
    assert_eq!(r.rx.used(), vec![(u32::from(head), 1012)]);
    assert_eq!(r.tap.reads(), 1);
    // Buffers without end: the budget bounds each call.
    for _ in 0..BUDGET + 5 {
        r.post(&[2000]);
    }
    assert_eq!(r.io.process_rx(&mut r.active), RxState::More);
    assert_eq!(r.rx.used().len(), BUDGET);
    assert_eq!(r.io.process_rx(&mut r.active), RxState::NeedBuffers);
    assert_eq!(r.rx.used().len(), 5);
    assert_eq!(r.tap.reads(), 1 + BUDGET as u64 + 5, "one read per chain");
    // The network goes quiet: the chain waits in the ring.
    r.tap.stop_flood();
    let (head, _) = r.post(&[2000]);
    assert_eq!(r.io.process_rx(&mut r.active), RxState::Drained);
    assert!(r.rx.used().is_empty());
    r.tap.push(packet(hdr(0, 0), 100, 0));
    r.io.process_rx(&mut r.active);
    assert_eq!(r.rx.used(), vec![(u32::from(head), 112)]);
}

#[test]
fn rx_gives_back_malformed_chains_and_the_frame_waits_for_a_good_one() {
    let mem = guest_memory();
    let mut r = rig(&mem, all_features());
    let p = packet(hdr(0, 0), 100, 4);
    r.tap.push(p.clone());
    let mut bad = Vec::new();
    // Read-only, partly read-only, outside guest memory, looping.
    let ro = r.rx.data(2000, false, 0);
    let h = r.rx.chain(&[ro]);
    bad.push(h);
    let w = r.rx.data(2000, true, 0);
    let h = r.rx.chain(&[w, ro]);
    bad.push(h);
    let h = r.rx.chain(&[Buf { addr: MEM_SIZE - 100, len: 2000, write: true }]);
    bad.push(h);
    r.rx.store(220, desc(w.addr, 2000, VRING_DESC_F_WRITE | VRING_DESC_F_NEXT, 220));
    bad.push(220);
    // Too small for a header and an Ethernet header, or empty.
    let tiny = r.rx.data(25, true, 0);
    let h = r.rx.chain(&[tiny]);
    bad.push(h);
    let h = r.rx.chain(&[Buf { addr: tiny.addr, len: 0, write: true }]);
    bad.push(h);
    for h in &bad {
        r.rx.publish(*h);
    }
    let (good, bufs) = r.post(&[0, 2000, 0]);
    assert_eq!(r.io.process_rx(&mut r.active), RxState::NeedBuffers);
    let used = r.rx.used();
    let mut want: Vec<(u32, u32)> = bad.iter().map(|h| (u32::from(*h), 0)).collect();
    want.push((u32::from(good), p.len() as u32));
    assert_eq!(used, want);
    assert_eq!(r.io.stats.rx_bad_chains.load(Ordering::Relaxed), 6);
    let mut want_bytes = p.clone();
    want_bytes[10..12].copy_from_slice(&[1, 0]);
    assert_eq!(r.received(&bufs, p.len()), want_bytes);
}

#[test]
fn rx_drops_a_frame_too_big_for_the_chain_and_keeps_the_chain() {
    let mem = guest_memory();
    let mut r = rig(&mem, all_features());
    let big = packet(hdr(0, 0), 3000, 1);
    let small = packet(hdr(0, 0), 500, 2);
    r.tap.push(big);
    r.tap.push(small.clone());
    let (head, bufs) = r.post(&[1526]);
    assert_eq!(r.io.process_rx(&mut r.active), RxState::NeedBuffers);
    assert_eq!(r.rx_dropped(), 1);
    assert_eq!(r.rx.used(), vec![(u32::from(head), small.len() as u32)]);
    assert_eq!(r.received(&bufs, small.len())[12..], small[12..]);
    // Only chains too small: every frame dropped, the chain stays.
    let (head, _) = r.post(&[100]);
    for _ in 0..3 {
        r.tap.push(packet(hdr(0, 0), 200, 0));
    }
    assert_eq!(r.io.process_rx(&mut r.active), RxState::Drained);
    assert_eq!(r.rx_dropped(), 4);
    assert!(r.rx.used().is_empty());
    r.tap.push(packet(hdr(0, 0), 50, 0));
    r.io.process_rx(&mut r.active);
    assert_eq!(r.rx.used(), vec![(u32::from(head), 62)]);
}

#[test]
fn rx_stops_on_a_tap_error_and_goes_on_after_one_that_concerns_a_frame() {
    let mem = guest_memory();
    let mut r = rig(&mem, all_features());
    let (head, _) = r.post(&[2000]);
    r.tap.fail_reads();
    assert_eq!(r.io.process_rx(&mut r.active), RxState::Failed);
    assert!(r.rx.used().is_empty(), "the chain stays");
    r.tap.lock().fail_reads = false;
    // An error that concerns one frame only drops it.
    r.tap.lock().fault_reads = 2;
    r.tap.push(packet(hdr(0, 0), 100, 0));
    assert_eq!(r.io.process_rx(&mut r.active), RxState::NeedBuffers);
    assert_eq!(r.rx.used(), vec![(u32::from(head), 112)]);
    assert_eq!(r.rx_dropped(), 2);
}

#[test]
fn a_frame_of_the_largest_size_goes_both_ways() {
    let mem = guest_memory();
    let mut r = rig(&mem, all_features());
    let p = packet(hdr(NEEDS_CSUM, TCPV4), MAX_FRAME, 8);
    r.send(&p, &[VNET_HDR_LEN, 40000]);
    r.io.process_tx(&mut r.active);
    assert_eq!(r.tap.sent(), vec![p.clone()]);
    r.tap.push(p.clone());
    let (head, bufs) = r.post(&[VNET_HDR_LEN as u32, 65536, 100]);
    r.io.process_rx(&mut r.active);
    assert_eq!(r.rx.used(), vec![(u32::from(head), p.len() as u32)]);
    assert_eq!(r.received(&bufs, p.len())[12..], p[12..]);
}

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
fn random_chains_and_frames_never_break_the_device() {
    use crate::vm::devices::virtio::block::test_driver::DATA_START;
    let mem = guest_memory();
    let mut r = rig(&mem, all_features());
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let (mut published, mut sent, mut received, mut pushed) = (0usize, 0usize, 0usize, 0usize);
    for round in 0..3000 {
        // Random descriptors over the first 64 slots of both tables:
        // flags, lengths, next indices (sometimes past the table) and
        // addresses (mostly plausible, sometimes not).
        for q in [&r.tx, &r.rx] {
            for i in 0..64u16 {
                let addr = match rng.below(8) {
                    0 => rng.next(),
                    1 => MEM_SIZE - rng.below(1024),
                    _ => DATA_START + rng.below(MEM_SIZE - DATA_START - 0x2_0000),
                };
                let len = match rng.below(6) {
                    0 => rng.next() as u32,
                    1 => 0,
                    2 => VNET_HDR_LEN as u32,
                    3 => 1 + rng.below(20) as u32,
                    _ => 64 * (1 + rng.below(1100) as u32),
                };
                let flags = rng.below(8) as u32; // NEXT, WRITE, INDIRECT in any mix
                q.store(i, desc(addr, len, flags, rng.below(300) as u16));
            }
        }
        // Headers with random offload requests where descriptors may point.
        for _ in 0..8 {
            let at = DATA_START + rng.below(MEM_SIZE - DATA_START - 16);
            let h = [rng.below(4) as u8, [0, 1, 3, 4, 5, 0x81][rng.below(6) as usize]];
            mem.write_slice(&h, GuestAddress(at)).unwrap();
        }
        for _ in 0..rng.below(4) {
            r.tx.publish(rng.below(64) as u16);
            r.rx.publish(rng.below(64) as u16);
            published += 2;
        }
        // Frames from the host of any size, with any header.
        for _ in 0..rng.below(3) {
            let mut h = [0u8; VNET_HDR_LEN];
            h[0] = rng.below(4) as u8;
            h[1] = [0, 1, 3, 4, 0x81][rng.below(5) as usize];
            let len = [0, 13, 60, 1500, 9000, MAX_FRAME][rng.below(6) as usize];
            r.tap.push(packet(h, len, round as u8));
        }
        while r.io.process_tx(&mut r.active) {}
        while r.io.process_rx(&mut r.active) == RxState::More {}
        // Entries are not checked: a chain may tell the device to write
        // over the rings themselves (an indirect table in memory a frame
        // was written to can point anywhere), which is the guest's to do.
        sent += r.tx.used().len();
        received += r.rx.used().len();
        pushed += r.tap.lock().rx.len();
        r.tap.lock().rx.clear();
    }
    assert!(published > 3000 && sent > 1000 && received > 100, "{published} {sent} {received}");
    let s = &r.io.stats;
    let frames = s.rx_frames.load(Ordering::Relaxed) + s.rx_dropped.load(Ordering::Relaxed);
    // Frames left in the host queue while the guest had no buffers were
    // dropped there, as the kernel drops past txqueuelen.
    assert!(frames > 100, "{frames} read, {pushed} left in the host queue");
    // Still works, on rings of a new driver: a good frame each way.
    let mem = guest_memory();
    let mut r2 = rig(&mem, all_features());
    r2.io = r.io;
    r2.tap = r.tap.clone();
    let mut r = r2;
    let p = packet(hdr(0, 0), 100, 1);
    r.send(&p, &[VNET_HDR_LEN]);
    while r.io.process_tx(&mut r.active) {}
    assert_eq!(r.tap.sent().last(), Some(&p));
    r.tap.push(p.clone());
    let (head, bufs) = r.post(&[2000]);
    r.io.process_rx(&mut r.active);
    assert_eq!(r.rx.used().last(), Some(&(u32::from(head), p.len() as u32)));
    assert_eq!(r.received(&bufs, p.len())[VNET_HDR_LEN..], p[VNET_HDR_LEN..]);
}
