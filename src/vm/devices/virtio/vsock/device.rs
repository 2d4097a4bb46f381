//! The vsock device: three queues (rx, tx, event), the guest CID in config
//! space, packets moved between the queues and the backend.
//!
//! The guest is hostile (DEVELOPERS.md rule 9): a chain that does not
//! parse is used with length 0 and dropped, an RX buffer without room for
//! data is dropped the same way (a header-only buffer could never carry
//! the data a connection waits to send, and handing it back would leave
//! the queue stuck on it while the host stream keeps the event loop
//! awake), and one call serves at most [`BUDGET`] chains per queue, then
//! re-arms the queue's kick, so a guest that refills a queue as fast as it
//! is served cannot keep the event loop to itself.

use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use virtio_vsock::packet::{VsockPacket, PKT_HEADER_SIZE};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::backend::VsockBackend;
use super::packet::MAX_PKT_DATA;
use super::persist::ResetEvent;
use crate::vm::devices::virtio::persist::{DeviceSnapshot, PersistError};
use crate::vm::devices::virtio::{ActivateError, VirtioDevice, VirtioInterrupt, VIRTIO_F_VERSION_1};

pub const VIRTIO_ID_VSOCK: u32 = 19;
pub const RXQ: usize = 0;
pub const TXQ: usize = 1;
pub const EVQ: usize = 2;
const QUEUE_SIZES: [u16; 3] = [256, 256, 256];
/// Chains served from one queue per call before the event loop gets to
/// its other events.
pub const BUDGET: usize = 64;

pub(crate) struct Active {
    pub mem: GuestMemoryMmap,
    pub queues: Vec<Queue>,
    pub interrupt: Arc<VirtioInterrupt>,
}

pub struct Vsock<B: VsockBackend> {
    cid: u64,
    pub(crate) backend: B,
    pub(crate) acked_features: u64,
    pub(crate) queue_evts: Vec<EventFd>,
    /// Written when the transport activates the device, so the event loop
    /// starts watching the queues.
    pub(crate) activate_evt: EventFd,
    pub(crate) active: Option<Active>,
    /// Where the transport reset a restore owes the guest stands; RX waits
    /// until the guest has taken it (persist.rs).
    pub(crate) reset_event: ResetEvent,
}

impl<B: VsockBackend> Vsock<B> {
    pub fn new(cid: u64, backend: B) -> std::io::Result<Self> {
        let mut queue_evts = Vec::new();
        for _ in QUEUE_SIZES {
            queue_evts.push(EventFd::new(libc::EFD_NONBLOCK)?);
        }
        Ok(Vsock {
            cid,
            backend,
            acked_features: 0,
            queue_evts,
            activate_evt: EventFd::new(libc::EFD_NONBLOCK)?,
            active: None,
            reset_event: ResetEvent::None,
        })
    }

    pub fn cid(&self) -> u64 {
        self.cid
    }

    pub fn backend(&self) -> &B {
        &self.backend
    }

    pub fn is_active(&self) -> bool {
        self.active.is_some()
    }

    pub(crate) fn signal(&self) {
        if let Some(a) = &self.active {
            // A lost edge only delays the guest until the next one.
            let _ = a.interrupt.signal_used_queue();
        }
    }

    /// Hands guest packets from the TX queue to the backend. Returns whether
    /// any descriptor was used.
    pub fn process_tx(&mut self) -> bool {
        let Some(active) = self.active.as_mut() else {
            return false;
        };
        let mem = &active.mem;
        let mut used = false;
        let mut served = 0;
        while let Some(mut chain) = active.queues[TXQ].pop_descriptor_chain(mem) {
            let head = chain.head_index();
            // A malformed chain is consumed and dropped, as a NIC drops a bad frame.
            if let Ok(pkt) = VsockPacket::from_tx_virtq_chain(mem, &mut chain, MAX_PKT_DATA) {
                self.backend.send_pkt(&pkt);
            }
            let _ = active.queues[TXQ].add_used(mem, head, 0);
            used = true;
            served += 1;
            if served == BUDGET {
                // Maybe more: come back after the loop's other events.
                let _ = self.queue_evts[TXQ].write(1);
                break;
            }
        }
        if used {
            self.signal();
        }
        used
    }

    /// Fills RX buffers with what the backend has for the guest; nothing
    /// while a transport reset is owed or unacknowledged (a packet the
    /// guest took before it would belong to a connection the reset ends).
    pub fn process_rx(&mut self) -> bool {
        if self.reset_event.holds_rx() {
            return false;
        }
        let Some(active) = self.active.as_mut() else {
            return false;
        };
        let mem = &active.mem;
        let mut used = false;
        let mut served = 0;
        while self.backend.has_pending_rx() {
            if served == BUDGET {
                let _ = self.queue_evts[RXQ].write(1);
                break;
            }
            served += 1;
            let Some(mut chain) = active.queues[RXQ].pop_descriptor_chain(mem) else {
                break;
            };
            let head = chain.head_index();
            let len = match VsockPacket::from_rx_virtq_chain(mem, &mut chain, MAX_PKT_DATA) {
                // No room for data: dropped (see the module comment).
                Ok(pkt) if pkt.data_slice().is_none_or(|d| d.is_empty()) => 0,
                Ok(mut pkt) => {
                    if self.backend.recv_pkt(&mut pkt) {
                        PKT_HEADER_SIZE as u32 + pkt.len()
                    } else {
                        // Nothing after all: give the buffer back.
                        let q = &mut active.queues[RXQ];
                        q.set_next_avail(q.next_avail().wrapping_sub(1));
                        break;
                    }
                }
                Err(_) => 0,
            };
            let _ = active.queues[RXQ].add_used(mem, head, len);
            used = true;
        }
        if used {
            self.signal();
        }
        used
    }
}

impl<B: VsockBackend> VirtioDevice for Vsock<B> {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_VSOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn queue_events(&self) -> &[EventFd] {
        &self.queue_evts
    }

    fn avail_features(&self) -> u64 {
        VIRTIO_F_VERSION_1
    }

    fn set_acked_features(&mut self, features: u64) {
        self.acked_features = features;
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // struct virtio_vsock_config { le64 guest_cid; }
        crate::vm::devices::virtio::read_config_space(&self.cid.to_le_bytes(), offset, data);
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        interrupt: Arc<VirtioInterrupt>,
        queues: Vec<Queue>,
    ) -> Result<(), ActivateError> {
        if queues.len() != QUEUE_SIZES.len() {
            return Err(ActivateError::QueueCount { want: QUEUE_SIZES.len(), got: queues.len() });
        }
        self.active = Some(Active { mem, queues, interrupt });
        self.activate_evt.write(1).map_err(ActivateError::Notify)
    }

    fn reset(&mut self) {
        self.active = None;
        self.acked_features = 0;
        self.reset_event = ResetEvent::None;
    }

    /// The queues only: host-side connections are not saved, the restored
    /// device starts with an empty backend and tells the guest so.
    fn save(&mut self) -> Result<DeviceSnapshot, PersistError> {
        Ok(self.save_state())
    }

    fn after_restore(&mut self) {
        self.start_transport_reset();
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::vm::devices::virtio::vsock::packet::*;
    use crate::vm::devices::IrqTrigger;
    use event_manager::EventSet;
    use std::collections::VecDeque;
    use std::os::fd::{AsRawFd, RawFd};
    use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::bitmap::BitmapSlice;
    use vm_memory::{Bytes, GuestAddress};

    /// Records what the guest sent; answers with scripted headers.
    pub struct FakeBackend {
        pub sent: Vec<(u16, u32, u32, Vec<u8>)>,
        pub to_guest: VecDeque<(Header, Vec<u8>)>,
        evt: EventFd,
    }

    impl FakeBackend {
        pub fn new() -> Self {
            FakeBackend { sent: Vec::new(), to_guest: VecDeque::new(), evt: EventFd::new(libc::EFD_NONBLOCK).unwrap() }
        }
    }

    impl AsRawFd for FakeBackend {
        fn as_raw_fd(&self) -> RawFd {
            self.evt.as_raw_fd()
        }
    }

    impl VsockBackend for FakeBackend {
        fn send_pkt<B: BitmapSlice>(&mut self, pkt: &VsockPacket<B>) {
            let mut data = vec![0u8; pkt.len() as usize];
            if let Some(d) = pkt.data_slice() {
                d.read_slice(&mut data, 0).unwrap();
            }
            self.sent.push((pkt.op(), pkt.src_port(), pkt.dst_port(), data));
        }
        fn recv_pkt<B: BitmapSlice>(&mut self, pkt: &mut VsockPacket<B>) -> bool {
            let Some((h, data)) = self.to_guest.pop_front() else {
                return false;
            };
            fill_header(pkt, &h);
            if !data.is_empty() {
                pkt.data_slice().unwrap().write_slice(&data, 0).unwrap();
                pkt.set_len(data.len() as u32);
            }
            true
        }
        fn has_pending_rx(&self) -> bool {
            !self.to_guest.is_empty()
        }
        fn notify(&mut self, _: EventSet) {}
    }

    pub(crate) fn desc(addr: u64, len: u32, flags: u32, next: u16) -> RawDescriptor {
        RawDescriptor::from(SplitDescriptor::new(addr, len, flags as u16, next))
    }

    pub(crate) fn tx_header(op: u16, len: u32) -> Vec<u8> {
        let mut h = vec![0u8; PKT_HEADER_SIZE];
        h[0..8].copy_from_slice(&3u64.to_le_bytes());
        h[8..16].copy_from_slice(&2u64.to_le_bytes());
        h[16..20].copy_from_slice(&5000u32.to_le_bytes());
        h[20..24].copy_from_slice(&1024u32.to_le_bytes());
        h[24..28].copy_from_slice(&len.to_le_bytes());
        h[28..30].copy_from_slice(&TYPE_STREAM.to_le_bytes());
        h[30..32].copy_from_slice(&op.to_le_bytes());
        h
    }

    #[test]
    fn config_space_holds_the_guest_cid() {
        let dev = Vsock::new(42, FakeBackend::new()).unwrap();
        let mut b = [0u8; 8];
        dev.read_config(0, &mut b);
        assert_eq!(u64::from_le_bytes(b), 42);
        let mut hi = [0u8; 4];
        dev.read_config(4, &mut hi);
        assert_eq!(hi, [0; 4]);
        assert_eq!(dev.avail_features(), VIRTIO_F_VERSION_1);
    }

    #[test]
    fn tx_packets_reach_the_backend_and_rx_packets_reach_the_guest() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x100_0000)]).unwrap();
        let rxq = MockSplitQueue::create(&mem, GuestAddress(0x1_0000), 16);
        let txq = MockSplitQueue::create(&mem, GuestAddress(0x2_0000), 16);
        let evq = MockSplitQueue::create(&mem, GuestAddress(0x3_0000), 16);

        // The guest sends one RW packet with 5 bytes of data in a second descriptor.
        mem.write_slice(&tx_header(OP_RW, 5), GuestAddress(0x10_0000)).unwrap();
        mem.write_slice(b"hello", GuestAddress(0x10_1000)).unwrap();
        txq.add_desc_chains(&[desc(0x10_0000, 44, VRING_DESC_F_NEXT, 1), desc(0x10_1000, 5, 0, 0)], 0).unwrap();
        // And offers one RX buffer: header + 4 KiB.
        rxq.add_desc_chains(
            &[
                desc(0x20_0000, 44, VRING_DESC_F_WRITE | VRING_DESC_F_NEXT, 1),
                desc(0x20_1000, 4096, VRING_DESC_F_WRITE, 0),
            ],
            0,
        )
        .unwrap();

        let mut backend = FakeBackend::new();
        let h = Header {
            src_cid: 2,
            dst_cid: 3,
            src_port: 1024,
            dst_port: 5000,
            op: OP_RW,
            flags: 0,
            buf_alloc: 4096,
            fwd_cnt: 5,
        };
        backend.to_guest.push_back((h, b"world!".to_vec()));
        let mut dev = Vsock::new(3, backend).unwrap();
        let irq = Arc::new(VirtioInterrupt::new(IrqTrigger::new().unwrap()));
        let queues = vec![rxq.create_queue().unwrap(), txq.create_queue().unwrap(), evq.create_queue().unwrap()];
        dev.activate(mem.clone(), irq.clone(), queues).unwrap();
        assert_eq!(dev.activate_evt.read().unwrap(), 1);

        assert!(dev.process_tx());
        assert_eq!(dev.backend.sent, vec![(OP_RW, 5000, 1024, b"hello".to_vec())]);
        assert_eq!(txq.used().idx().load(), 1);

        assert!(dev.process_rx());
        assert_eq!(rxq.used().idx().load(), 1);
        let used = rxq.used().ring().ref_at(0).unwrap().load();
        assert_eq!(used.len(), 44 + 6);
        let mut hdr = [0u8; 44];
        mem.read_slice(&mut hdr, GuestAddress(0x20_0000)).unwrap();
        assert_eq!(u64::from_le_bytes(hdr[8..16].try_into().unwrap()), 3, "dst_cid");
        assert_eq!(u16::from_le_bytes(hdr[30..32].try_into().unwrap()), OP_RW);
        assert_eq!(u32::from_le_bytes(hdr[24..28].try_into().unwrap()), 6, "len");
        let mut data = [0u8; 6];
        mem.read_slice(&mut data, GuestAddress(0x20_1000)).unwrap();
        assert_eq!(&data, b"world!");
        assert_eq!(irq.status() & 1, 1, "used-ring interrupt raised");
    }

    #[test]
    fn without_rx_buffers_packets_wait_in_the_backend() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x100_0000)]).unwrap();
        let qs: Vec<_> = (0..3).map(|i| MockSplitQueue::create(&mem, GuestAddress(0x1_0000 * (i + 1)), 16)).collect();
        let mut backend = FakeBackend::new();
        let h =
            Header { src_cid: 2, dst_cid: 3, src_port: 1, dst_port: 2, op: OP_RST, flags: 0, buf_alloc: 0, fwd_cnt: 0 };
        backend.to_guest.push_back((h, Vec::new()));
        let mut dev = Vsock::new(3, backend).unwrap();
        let irq = Arc::new(VirtioInterrupt::new(IrqTrigger::new().unwrap()));
        dev.activate(mem.clone(), irq, qs.iter().map(|q| q.create_queue().unwrap()).collect()).unwrap();
        assert!(!dev.process_rx());
        assert!(dev.backend.has_pending_rx());
    }

    /// Guest memory and a device activated on three queues of `size`
    /// entries (rx, tx, event at 64 KiB, 128 KiB, 192 KiB).
    pub(crate) fn activated<'a>(
        mem: &'a GuestMemoryMmap,
        size: u16,
        backend: FakeBackend,
    ) -> (Vec<MockSplitQueue<'a, GuestMemoryMmap>>, Vsock<FakeBackend>) {
        let qs: Vec<_> = (0..3).map(|i| MockSplitQueue::create(mem, GuestAddress(0x1_0000 * (i + 1)), size)).collect();
        let mut dev = Vsock::new(3, backend).unwrap();
        let irq = Arc::new(VirtioInterrupt::new(IrqTrigger::new().unwrap()));
        dev.activate(mem.clone(), irq, qs.iter().map(|q| q.create_queue().unwrap()).collect()).unwrap();
        let _ = dev.activate_evt.read();
        (qs, dev)
    }

    pub(crate) fn memory() -> GuestMemoryMmap {
        GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x100_0000)]).unwrap()
    }

    /// A packet for the guest: an RW with `data`.
    pub(crate) fn to_guest(data: &[u8]) -> (Header, Vec<u8>) {
        let h = Header {
            src_cid: 2,
            dst_cid: 3,
            src_port: 1024,
            dst_port: 5000,
            op: OP_RW,
            flags: 0,
            buf_alloc: 4096,
            fwd_cnt: 0,
        };
        (h, data.to_vec())
    }

    pub(crate) fn used(q: &MockSplitQueue<'_, GuestMemoryMmap>) -> Vec<(u32, u32)> {
        (0..q.used().idx().load())
            .map(|i| {
                let e = q.used().ring().ref_at(usize::from(i)).unwrap().load();
                (e.id(), e.len())
            })
            .collect()
    }

    /// Chains no driver would build: a descriptor that is its own next,
    /// addresses and lengths past guest memory, an indirect table outside
    /// it, a next index past the queue. Each is consumed (used with length
    /// 0) in one bounded pass, nothing of it reaches the backend, and a
    /// good packet behind them still does.
    #[test]
    fn looping_and_out_of_bounds_tx_chains_are_consumed() {
        let mem = memory();
        let (qs, mut dev) = activated(&mem, 16, FakeBackend::new());
        mem.write_slice(&tx_header(OP_RW, 5), GuestAddress(0x10_0000)).unwrap();
        mem.write_slice(&tx_header(OP_CREDIT_REQUEST, 0), GuestAddress(0x11_0000)).unwrap();
        let beyond = 0x1_0000_0000u64;
        let chains: [&[RawDescriptor]; 6] = [
            // 0 -> 1 -> 0 -> ...: the header, then data that loops back.
            &[desc(0x10_0000, 44, VRING_DESC_F_NEXT, 1), desc(0x10_1000, 2, VRING_DESC_F_NEXT, 0)],
            // Outside guest memory.
            &[desc(beyond, 44, 0, 0)],
            // A header running past the end of guest memory, and a length
            // of 4 GiB.
            &[desc(0xff_fff0, u32::MAX, 0, 0)],
            // An indirect table outside guest memory.
            &[desc(beyond, 64, VRING_DESC_F_INDIRECT, 0)],
            // A next index past the queue's size.
            &[desc(0x10_0000, 44, VRING_DESC_F_NEXT, 300)],
            // Finally a good packet.
            &[desc(0x11_0000, 44, 0, 0)],
        ];
        let mut at = 0;
        for chain in chains {
            qs[TXQ].add_desc_chains(chain, at).unwrap();
            at += chain.len() as u16;
        }
        assert!(dev.process_tx());
        assert_eq!(dev.backend.sent, vec![(OP_CREDIT_REQUEST, 5000, 1024, vec![])]);
        let used = used(&qs[TXQ]);
        assert_eq!(used.len(), 6, "every chain is used once: {used:?}");
        assert!(used.iter().all(|&(_, len)| len == 0));
        assert!(!dev.process_tx(), "nothing is left to serve");
    }

    /// RX buffers with no room for data (a zero-length data descriptor, a
    /// header alone, a header descriptor shorter than a header, a
    /// read-only buffer) are used empty and dropped: handing them back
    /// unused would leave the queue stuck on them while the backend keeps
    /// the event loop awake. The packet waits for a real buffer.
    #[test]
    fn zero_length_and_header_only_rx_buffers_are_dropped() {
        let mem = memory();
        let mut backend = FakeBackend::new();
        backend.to_guest.push_back(to_guest(b"hi"));
        let (qs, mut dev) = activated(&mem, 16, backend);
        let w = VRING_DESC_F_WRITE;
        qs[RXQ]
            .add_desc_chains(
                &[
                    desc(0x20_0000, 44, w | VRING_DESC_F_NEXT, 1),
                    desc(0x20_1000, 0, w, 0),
                    desc(0x20_2000, 44, w, 0),
                    desc(0x20_3000, 0, w, 0),
                    desc(0x20_4000, 44 + 4096, 0, 0),
                ],
                0,
            )
            .unwrap();
        assert!(dev.process_rx());
        assert_eq!(used(&qs[RXQ]), vec![(0, 0), (2, 0), (3, 0), (4, 0)]);
        assert!(dev.backend.has_pending_rx(), "the packet waits for a buffer with room");
        assert!(dev.queue_evts[RXQ].read().is_err(), "no re-kick: nothing more can be done now");
        assert!(!dev.process_rx(), "no buffers: nothing to do, no spinning");

        qs[RXQ].add_desc_chains(&[desc(0x20_5000, 44 + 4096, w, 0)], 5).unwrap();
        assert!(dev.process_rx());
        assert_eq!(used(&qs[RXQ]).last(), Some(&(5, 44 + 2)));
        assert!(!dev.backend.has_pending_rx());
    }

    /// An avail index the guest moved further than the queue holds: the
    /// queue is broken and serves nothing, at once, every time.
    #[test]
    fn an_avail_index_past_the_queue_size_serves_nothing() {
        let mem = memory();
        let mut backend = FakeBackend::new();
        backend.to_guest.push_back(to_guest(b"x"));
        let (qs, mut dev) = activated(&mem, 16, backend);
        for q in [RXQ, TXQ] {
            qs[q].avail().idx().store(1000);
        }
        assert!(!dev.process_tx());
        assert!(!dev.process_rx());
        assert!(dev.backend.sent.is_empty());
        assert_eq!(qs[TXQ].used().idx().load(), 0);
        assert!(dev.queue_evts[TXQ].read().is_err() && dev.queue_evts[RXQ].read().is_err());
    }

    /// A guest that refills its TX queue as fast as it is served, or has
    /// many packets waiting for RX: each pass serves at most BUDGET chains
    /// and kicks the queue again, so the event loop gets to its other
    /// events in between.
    #[test]
    fn floods_are_served_a_budget_at_a_time() {
        let mem = memory();
        let mut backend = FakeBackend::new();
        for i in 0..200u8 {
            backend.to_guest.push_back(to_guest(&[i]));
        }
        let (qs, mut dev) = activated(&mem, 256, backend);
        mem.write_slice(&tx_header(OP_CREDIT_UPDATE, 0), GuestAddress(0x10_0000)).unwrap();
        let tx: Vec<_> = (0..200).map(|_| desc(0x10_0000, 44, 0, 0)).collect();
        qs[TXQ].add_desc_chains(&tx, 0).unwrap();
        let rx: Vec<_> = (0..200).map(|i| desc(0x20_0000 + i * 0x1000, 44 + 64, VRING_DESC_F_WRITE, 0)).collect();
        qs[RXQ].add_desc_chains(&rx, 0).unwrap();

        assert!(dev.process_tx());
        assert_eq!(dev.backend.sent.len(), BUDGET);
        assert_eq!(dev.queue_evts[TXQ].read().unwrap(), 1, "the TX queue is kicked again");
        assert!(dev.process_rx());
        assert_eq!(qs[RXQ].used().idx().load() as usize, BUDGET);
        assert_eq!(dev.queue_evts[RXQ].read().unwrap(), 1, "the RX queue is kicked again");

        // The event loop comes back for the kicks until both run dry.
        let mut passes = 1;
        loop {
            dev.process_tx();
            dev.process_rx();
            passes += 1;
            let tx = dev.queue_evts[TXQ].read().is_ok();
            let rx = dev.queue_evts[RXQ].read().is_ok();
            if !tx && !rx {
                break;
            }
        }
        assert_eq!(passes, 200usize.div_ceil(BUDGET));
        assert_eq!(dev.backend.sent.len(), 200);
        assert_eq!(qs[RXQ].used().idx().load(), 200);
        assert!(!dev.backend.has_pending_rx());
    }

    #[test]
    fn a_malformed_tx_chain_is_consumed_without_reaching_the_backend() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x100_0000)]).unwrap();
        let qs: Vec<_> = (0..3).map(|i| MockSplitQueue::create(&mem, GuestAddress(0x1_0000 * (i + 1)), 16)).collect();
        // Header descriptor shorter than a header.
        qs[1].add_desc_chains(&[desc(0x10_0000, 10, 0, 0)], 0).unwrap();
        let mut dev = Vsock::new(3, FakeBackend::new()).unwrap();
        let irq = Arc::new(VirtioInterrupt::new(IrqTrigger::new().unwrap()));
        dev.activate(mem.clone(), irq, qs.iter().map(|q| q.create_queue().unwrap()).collect()).unwrap();
        assert!(dev.process_tx());
        assert!(dev.backend.sent.is_empty());
        assert_eq!(qs[1].used().idx().load(), 1);
    }
}
