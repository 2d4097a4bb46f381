//! The device with its worker thread, on plain guest memory and a TAP in
//! memory: features and config space, frames both ways through kicks and
//! the TAP's fd, a flood with no RX buffers, reset, reactivation, drop.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestMemoryMmap};

use super::*;
use crate::vm::devices::virtio::block::test_driver::{guest_memory, Buf, Driver, MEM_SIZE, QUEUE_AT};
use crate::vm::devices::virtio::net::fake_tap::FakeTap;
use crate::vm::devices::virtio::net::tap::VNET_HDR_LEN;
use crate::vm::devices::IrqTrigger;

const MAC: [u8; 6] = [0x02, 0xa1, 0xb2, 0xc3, 0xd4, 0xe5];

fn interrupt() -> Arc<VirtioInterrupt> {
    Arc::new(VirtioInterrupt::new(IrqTrigger::new().unwrap()))
}

/// Waits (generously: the worker is another thread) until `f` holds.
fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn frame(len: usize, seed: u8) -> Vec<u8> {
    let mut f = vec![0u8; VNET_HDR_LEN];
    f.extend((0..len).map(|i| (i as u8).wrapping_add(seed)));
    f
}

struct Guest<'m> {
    rx: Driver<'m>,
    tx: Driver<'m>,
}

fn guest(mem: &GuestMemoryMmap, at: u64) -> Guest<'_> {
    let tx = Driver::at(mem, at, QUEUE_SIZE);
    let mut rx = Driver::at(mem, at + 0x1_0000, QUEUE_SIZE);
    rx.alloc((MEM_SIZE / 2) as usize);
    Guest { rx, tx }
}

impl Guest<'_> {
    fn send(&mut self, bytes: &[u8]) {
        let b = self.tx.data(bytes.len() as u32, false, 0);
        self.tx.mem.write_slice(bytes, vm_memory::GuestAddress(b.addr)).unwrap();
        let h = self.tx.chain(&[b]);
        self.tx.publish(h);
    }

    fn post(&mut self, n: usize) -> Vec<Buf> {
        (0..n)
            .map(|_| {
                let b = self.rx.data(2048, true, 0);
                let h = self.rx.chain(&[b]);
                self.rx.publish(h);
                b
            })
            .collect()
    }
}

fn activate(dev: &mut VirtioNet, mem: &GuestMemoryMmap, g: &Guest, irq: &Arc<VirtioInterrupt>) {
    dev.set_acked_features(dev.avail_features());
    dev.activate(mem.clone(), irq.clone(), vec![g.rx.queue(), g.tx.queue()]).unwrap();
}

fn kick(dev: &VirtioNet, q: usize) {
    dev.queue_events()[q].write(1).unwrap();
}

#[test]
fn features_and_config_space_describe_the_interface() {
    let dev = VirtioNet::with_backend(FakeTap::new(), MAC, 1400).unwrap();
    assert_eq!(dev.device_type(), 1);
    assert_eq!(dev.queue_max_sizes(), &[256, 256]);
    assert_eq!(dev.queue_events().len(), 2);
    let want = VIRTIO_F_VERSION_1
        | 1 << 28 // INDIRECT_DESC
        | 1 << 5 // MAC
        | 1 << 3 // MTU
        | 1 << 16 // STATUS
        | 1 << 0 // CSUM
        | 1 << 1 // GUEST_CSUM
        | 1 << 7 | 1 << 8 // GUEST_TSO4/6
        | 1 << 11 | 1 << 12; // HOST_TSO4/6
    assert_eq!(dev.avail_features(), want);
    let mut cfg = [0xffu8; 12];
    dev.read_config(0, &mut cfg);
    assert_eq!(cfg[..6], MAC);
    assert_eq!(u16::from_le_bytes([cfg[6], cfg[7]]), 1, "link up");
    assert_eq!(u16::from_le_bytes([cfg[8], cfg[9]]), 1, "one queue pair");
    assert_eq!(u16::from_le_bytes([cfg[10], cfg[11]]), 1400, "mtu");
    let mut b = [0xffu8; 4];
    dev.read_config(12, &mut b);
    assert_eq!(b, [0; 4], "speed not offered");
    dev.read_config(u64::MAX, &mut b);
    assert_eq!(b, [0; 4], "past the end reads 0");
    let mut dev = dev;
    dev.write_config(0, &[0; 6]);
    dev.read_config(0, &mut cfg[..6]);
    assert_eq!(cfg[..6], MAC, "the MAC is read-only");
    dev.set_acked_features(u64::MAX);
    assert_eq!(dev.acked_features, want, "only offered features count");
    let tiny = VirtioNet::with_backend(FakeTap::new(), MAC, 1).unwrap();
    tiny.read_config(10, &mut b[..2]);
    assert_eq!(u16::from_le_bytes([b[0], b[1]]), MIN_MTU);
}

#[test]
fn the_worker_moves_frames_both_ways_and_sets_offloads() {
    let tap = FakeTap::new();
    let mut dev = VirtioNet::with_backend(tap.clone(), MAC, 1500).unwrap();
    let mem = guest_memory();
    let mut g = guest(&mem, QUEUE_AT);
    let irq = interrupt();
    // Queued before activation: sent once the worker has the queues.
    let early = frame(100, 1);
    g.send(&early);
    let bufs = g.post(4);
    activate(&mut dev, &mem, &g, &irq);
    assert!(dev.is_active());
    eventually("the early frame is sent", || tap.sent().len() == 1);
    assert_eq!(tap.sent()[0], early);
    assert_eq!(tap.lock().offload, Some(libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6));

    // From the TAP: the worker watches its fd.
    tap.push(frame(200, 2));
    tap.push(frame(300, 3));
    eventually("two frames are received", || g.rx.used_idx() == 2);
    assert_eq!(g.rx.used().iter().map(|u| u.1).collect::<Vec<_>>(), vec![212, 312]);
    assert_eq!(g.rx.read(bufs[1])[VNET_HDR_LEN..312], frame(300, 3)[VNET_HDR_LEN..]);
    eventually("the guest is interrupted", || irq.irq_fd().read().is_ok());

    // More TX than one budget in one kick.
    for i in 0..100 {
        g.send(&frame(60, i));
    }
    kick(&dev, TXQ);
    eventually("all are sent", || tap.sent().len() == 101);
    assert_eq!(dev.stats().tx_frames.load(Ordering::Relaxed), 101);
}

#[test]
fn a_flood_without_rx_buffers_reads_one_frame_until_the_guest_posts_more() {
    let tap = FakeTap::new();
    let mut dev = VirtioNet::with_backend(tap.clone(), MAC, 1500).unwrap();
    let mem = guest_memory();
    let mut g = guest(&mem, QUEUE_AT);
    let irq = interrupt();
    activate(&mut dev, &mem, &g, &irq);
    tap.flood(frame(500, 0));
    eventually("a frame is read", || tap.reads() == 1);
    // The worker neither reads on nor spins on the readable TAP.
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(tap.reads(), 1);
    // TX still works meanwhile.
    g.send(&frame(60, 0));
    kick(&dev, TXQ);
    eventually("the frame is sent", || tap.sent().len() == 1);
    // Buffers and a kick: frames flow until the buffers are gone.
    g.post(10);
    kick(&dev, RXQ);
    eventually("ten frames are received", || g.rx.used_idx() == 10);
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(tap.reads(), 11);
    tap.stop_flood();
    // A reset in the middle of it returns.
    dev.reset();
    assert!(!dev.is_active());
}

#[test]
fn a_reset_takes_the_queues_back_and_the_device_can_be_activated_again() {
    let tap = FakeTap::new();
    let mut dev = VirtioNet::with_backend(tap.clone(), MAC, 1500).unwrap();
    let mem = guest_memory();
    let irq = interrupt();
    let mut g = guest(&mem, QUEUE_AT);
    activate(&mut dev, &mem, &g, &irq);
    g.send(&frame(60, 0));
    kick(&dev, TXQ);
    eventually("the frame is sent", || tap.sent().len() == 1);

    dev.reset();
    assert!(!dev.is_active());
    // The worker let go of the queues before reset returned.
    g.send(&frame(60, 1));
    g.post(1);
    tap.push(frame(100, 0));
    let used = (g.tx.used_idx(), g.rx.used_idx());
    kick(&dev, TXQ);
    kick(&dev, RXQ);
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!((g.tx.used_idx(), g.rx.used_idx()), used);
    assert_eq!(tap.sent().len(), 1);

    // Set up again with new rings, and a driver without offloads.
    let mut g2 = guest(&mem, 0x8_0000);
    dev.set_acked_features(VIRTIO_F_VERSION_1 | 1 << VIRTIO_NET_F_MAC);
    dev.activate(mem.clone(), irq.clone(), vec![g2.rx.queue(), g2.tx.queue()]).unwrap();
    g2.post(1);
    kick(&dev, RXQ);
    eventually("the waiting frame is received", || g2.rx.used_idx() == 1);
    assert_eq!(tap.lock().offload, Some(0));
    dev.reset();
    dev.reset();
}

#[test]
fn activation_wants_exactly_two_queues_and_a_reset_before_it_is_harmless() {
    let mut dev = VirtioNet::with_backend(FakeTap::new(), MAC, 1500).unwrap();
    dev.reset();
    let mem = guest_memory();
    let g = guest(&mem, QUEUE_AT);
    let e = dev.activate(mem.clone(), interrupt(), vec![g.rx.queue()]).unwrap_err();
    assert!(matches!(e, ActivateError::QueueCount { want: 2, got: 1 }), "{e}");
    let three = vec![g.rx.queue(), g.tx.queue(), g.tx.queue()];
    assert!(matches!(dev.activate(mem.clone(), interrupt(), three), Err(ActivateError::QueueCount { got: 3, .. })));
    assert!(!dev.is_active());
}

#[test]
fn dropping_the_device_ends_its_worker_which_closes_the_tap() {
    let mem = guest_memory();
    let g = guest(&mem, QUEUE_AT);
    for activated in [false, true] {
        let tap = FakeTap::new();
        let mut dev = VirtioNet::with_backend(tap.clone(), MAC, 1500).unwrap();
        if activated {
            activate(&mut dev, &mem, &g, &interrupt());
        }
        assert_eq!(Arc::strong_count(&tap.state), 2);
        drop(dev);
        eventually("the worker ends and drops the TAP", || Arc::strong_count(&tap.state) == 1);
    }
}
