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
fn a_flood_without_rx_buffers_is_left_to_the_host_until_the_guest_posts_more() {
    let tap = FakeTap::new();
    let mut dev = VirtioNet::with_backend(tap.clone(), MAC, 1500).unwrap();
    let mem = guest_memory();
    let mut g = guest(&mem, QUEUE_AT);
    let irq = interrupt();
    activate(&mut dev, &mem, &g, &irq);
    tap.flood(frame(500, 0));
    // The worker neither reads nor spins on the readable TAP.
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(tap.reads(), 0);
    // TX still works meanwhile.
    g.send(&frame(60, 0));
    kick(&dev, TXQ);
    eventually("the frame is sent", || tap.sent().len() == 1);
    // Buffers and a kick: frames flow until the buffers are gone.
    g.post(10);
    kick(&dev, RXQ);
    eventually("ten frames are received", || g.rx.used_idx() == 10);
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(tap.reads(), 10);
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

/// An AF_PACKET socket on interface `name`, for the root tier test: what
/// the guest sends through the TAP arrives here, what is sent here goes
/// out through the TAP to the guest.
struct PacketSocket {
    fd: std::os::fd::OwnedFd,
    ifindex: i32,
    proto: u16,
}

/// An EtherType for local experiments (IEEE 802), so the kernel's own
/// frames on the interface (IPv6 neighbour discovery) are told apart.
const ETH_P_TEST: u16 = 0x88b5;

impl PacketSocket {
    /// Frames of EtherType `ethertype` only.
    fn open(name: &str, ethertype: u16) -> Self {
        use std::os::fd::FromRawFd;
        let cname = std::ffi::CString::new(name).unwrap();
        // SAFETY: if_nametoindex reads a NUL-terminated string.
        let ifindex = unsafe { libc::if_nametoindex(cname.as_ptr()) } as i32;
        assert!(ifindex > 0);
        let proto = ethertype.to_be();
        // SAFETY: a new socket, owned below.
        let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, i32::from(proto)) };
        assert!(raw >= 0, "{}", std::io::Error::last_os_error());
        // SAFETY: `raw` is a descriptor we own.
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(raw) };
        // SAFETY: all-zero is a valid sockaddr_ll.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = proto;
        sll.sll_ifindex = ifindex;
        let len = std::mem::size_of::<libc::sockaddr_ll>() as u32;
        // SAFETY: bind reads `len` bytes of `sll`.
        let r = unsafe { libc::bind(raw, (&sll as *const libc::sockaddr_ll).cast(), len) };
        assert_eq!(r, 0, "{}", std::io::Error::last_os_error());
        PacketSocket { fd, ifindex, proto }
    }

    /// The next frame of our EtherType coming in from the TAP, within 5 s.
    fn recv(&self) -> Vec<u8> {
        use std::os::fd::AsRawFd;
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            assert!(Instant::now() < deadline, "no frame from the guest");
            let mut pfd = libc::pollfd { fd: self.fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
            // SAFETY: poll on one pollfd we own.
            if unsafe { libc::poll(&mut pfd, 1, 100) } <= 0 {
                continue;
            }
            let mut buf = vec![0u8; 70000];
            // SAFETY: all-zero is a valid sockaddr_ll.
            let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut flen = std::mem::size_of::<libc::sockaddr_ll>() as u32;
            // SAFETY: recvfrom writes at most buf.len() bytes and flen of `from`.
            let n = unsafe {
                libc::recvfrom(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    0,
                    (&mut from as *mut libc::sockaddr_ll).cast(),
                    &mut flen,
                )
            };
            assert!(n >= 0, "{}", std::io::Error::last_os_error());
            // Our own frames going out are seen too.
            if from.sll_pkttype == libc::PACKET_OUTGOING {
                continue;
            }
            buf.truncate(n as usize);
            return buf;
        }
    }

    fn send(&self, frame: &[u8]) {
        use std::os::fd::AsRawFd;
        // SAFETY: all-zero is a valid sockaddr_ll.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = self.proto;
        sll.sll_ifindex = self.ifindex;
        let len = std::mem::size_of::<libc::sockaddr_ll>() as u32;
        // SAFETY: sendto reads the frame and `len` bytes of `sll`.
        let n = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&sll as *const libc::sockaddr_ll).cast(),
                len,
            )
        };
        assert_eq!(n, frame.len() as isize, "{}", std::io::Error::last_os_error());
    }
}

/// An Ethernet frame of our EtherType from `src` to everyone.
fn ether(src: [u8; 6], payload: usize, seed: u8) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&src);
    f.extend_from_slice(&ETH_P_TEST.to_be_bytes());
    f.extend((0..payload).map(|i| (i as u8).wrapping_mul(3).wrapping_add(seed)));
    f
}

/// An Ethernet frame with an IPv4 TCP segment of `payload` bytes between
/// two test addresses (TEST-NET-1), its TCP checksum left as the pseudo
/// header's, as a guest with checksum offload leaves it.
fn tcp4_gso(payload: usize) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&MAC);
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    let total = (20 + 20 + payload) as u16;
    let mut ip = vec![0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, 6, 0, 0, 192, 0, 2, 1, 192, 0, 2, 2];
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    let mut sum: u32 = ip.chunks(2).map(|c| u32::from(u16::from_be_bytes([c[0], c[1]]))).sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    ip[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    f.extend_from_slice(&ip);
    // Ports 1000 -> 2000, seq 1, data offset 5 words, ACK|PSH, window.
    let mut tcp = vec![0x03, 0xe8, 0x07, 0xd0, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x18, 0xff, 0xff, 0, 0, 0, 0];
    let mut pseudo: u32 = 0xc000 + 0x0201 + 0xc000 + 0x0202 + 6 + u32::from(total - 20);
    while pseudo > 0xffff {
        pseudo = (pseudo & 0xffff) + (pseudo >> 16);
    }
    tcp[16..18].copy_from_slice(&(pseudo as u16).to_be_bytes());
    f.extend_from_slice(&tcp);
    f.extend((0..payload).map(|i| i as u8));
    f
}

/// Root tier: the device over a real TAP in a fresh network namespace (a
/// thread of its own unshares it), frames both ways through the host's
/// stack, seen on an AF_PACKET socket on the TAP.
#[test]
#[ignore = "needs root (CAP_NET_ADMIN); run with --ignored as root"]
fn a_real_tap_carries_frames_both_ways() {
    std::thread::spawn(|| {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let name = "amphinet0";
        let mut dev = VirtioNet::new(name, None, MAC, 1500).unwrap();
        crate::vm::devices::virtio::net::tap::bring_up(name).unwrap();
        let sock = PacketSocket::open(name, ETH_P_TEST);
        let ip_sock = PacketSocket::open(name, 0x0800);
        let mem = guest_memory();
        let mut g = guest(&mem, QUEUE_AT);
        let irq = interrupt();
        // Room for the kernel's own frames (IPv6 neighbour discovery and
        // MLD once the interface is up) as well as ours.
        let bufs = g.post(32);
        activate(&mut dev, &mem, &g, &irq);

        // Guest to host: a plain frame behind an empty header.
        let out = ether(MAC, 200, 1);
        let mut pkt = vec![0u8; VNET_HDR_LEN];
        pkt.extend_from_slice(&out);
        g.send(&pkt);
        kick(&dev, TXQ);
        assert_eq!(sock.recv(), out);
        eventually("the TX chain is used", || g.tx.used_idx() == 1);

        // Host to guest: the frame behind a header the TAP wrote.
        let back = ether([0x02, 0, 0, 0, 0, 9], 300, 2);
        sock.send(&back);
        let mut ours = None;
        eventually("the frame reaches the guest", || {
            // One single-buffer chain per post, heads in order.
            for (head, len) in g.rx.used() {
                let got = g.rx.read(bufs[head as usize]);
                if got[VNET_HDR_LEN + 12..VNET_HDR_LEN + 14] == ETH_P_TEST.to_be_bytes() {
                    ours = Some((len, got));
                }
            }
            ours.is_some()
        });
        let (len, got) = ours.unwrap();
        assert_eq!(len as usize, VNET_HDR_LEN + back.len());
        assert_eq!(got[10..12], [1, 0], "num_buffers");
        assert_eq!(got[VNET_HDR_LEN..VNET_HDR_LEN + back.len()], back[..]);
        assert_eq!(dev.stats().rx_dropped.load(Ordering::Relaxed), 0);

        // Guest to host with offloads: a 3000-byte TCP segment with a
        // partial checksum, to be cut at 1000 bytes (HOST_TSO4, CSUM). The
        // host stack takes it whole, as one GSO packet.
        let seg = tcp4_gso(3000);
        let mut h = [0u8; VNET_HDR_LEN];
        h[0] = 1; // NEEDS_CSUM
        h[1] = 1; // GSO_TCPV4
        h[2..4].copy_from_slice(&54u16.to_le_bytes()); // hdr_len
        h[4..6].copy_from_slice(&1000u16.to_le_bytes()); // gso_size
        h[6..8].copy_from_slice(&34u16.to_le_bytes()); // csum_start: the TCP header
        h[8..10].copy_from_slice(&16u16.to_le_bytes()); // csum_offset: its checksum
        let mut pkt = h.to_vec();
        pkt.extend_from_slice(&seg);
        g.send(&pkt);
        kick(&dev, TXQ);
        assert_eq!(ip_sock.recv(), seg);
        assert_eq!(dev.stats().tx_dropped.load(Ordering::Relaxed), 0);

        // Host to guest with offloads: a new driver posts 64 KiB buffers;
        // the same segment sent (with PACKET_VNET_HDR) out through the TAP
        // reaches it whole, its header saying what is left to do.
        dev.reset();
        let mut g3 = guest(&mem, 0x8_0000);
        let big: Vec<Buf> = (0..4)
            .map(|_| {
                let b = g3.rx.data(70000, true, 0);
                let h = g3.rx.chain(&[b]);
                g3.rx.publish(h);
                b
            })
            .collect();
        activate(&mut dev, &mem, &g3, &irq);
        let one: libc::c_int = 1;
        // SAFETY: PACKET_VNET_HDR reads one int.
        let r = unsafe {
            libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(&ip_sock.fd),
                libc::SOL_PACKET,
                libc::PACKET_VNET_HDR,
                (&one as *const libc::c_int).cast(),
                4,
            )
        };
        assert_eq!(r, 0, "{}", std::io::Error::last_os_error());
        let mut out = h[..10].to_vec();
        out.extend_from_slice(&seg);
        // The worker sets the TAP's offloads as it takes the queues.
        let mut ours = None;
        eventually("the GSO segment reaches the guest", || {
            ip_sock.send(&out);
            std::thread::sleep(Duration::from_millis(20));
            for (head, len) in g3.rx.used() {
                let got = g3.rx.read(big[head as usize]);
                if got[VNET_HDR_LEN + 12..VNET_HDR_LEN + 14] == [0x08, 0] {
                    ours = Some((len, got));
                }
            }
            ours.is_some()
        });
        let (len, got) = ours.unwrap();
        assert_eq!(len as usize, VNET_HDR_LEN + seg.len(), "one frame, not cut");
        assert_eq!(got[1], 1, "GSO_TCPV4");
        assert_eq!(got[0] & 1, 1, "NEEDS_CSUM");
        assert_eq!(u16::from_le_bytes([got[4], got[5]]), 1000, "gso_size");
        assert_eq!(got[10..12], [1, 0], "num_buffers");
        assert_eq!(got[VNET_HDR_LEN + 54..VNET_HDR_LEN + seg.len()], seg[54..]);
        dev.reset();
    })
    .join()
    .unwrap();
}
