//! Saving the vsock device, and what it owes the guest after a restore.
//!
//! Only the queues are saved. The host side (the muxer's connections) is
//! not: a restored device starts with an empty backend, so every stream
//! the guest believes connected is gone. The guest learns it from a
//! VIRTIO_VSOCK_EVENT_TRANSPORT_RESET on the event queue (virtio 1.2,
//! 5.10.6.8): Linux then resets its connected sockets (listeners stay),
//! re-reads the CID, puts the event buffer back and kicks the event
//! queue. That kick is the acknowledgement: until it comes, nothing goes
//! to the guest on RX, or a host connection made right after the restore
//! could reach the guest first and be torn down by the reset.
//!
//! The event goes into the first event-queue buffer that can take it
//! (a writable 4 bytes); a buffer too small, read-only or outside guest
//! memory is used with length 0, which Linux ignores and posts again. With
//! no buffer at all the event waits for the kick that brings one. A guest
//! that never provides one or never acknowledges only keeps its own RX
//! closed; the backend holds packets for it as for a guest with no RX
//! buffers.

use std::io::Write;

use virtio_queue::QueueT;

use super::backend::VsockBackend;
use super::device::{Vsock, BUDGET, EVQ, TXQ, VIRTIO_ID_VSOCK};
use crate::vm::devices::virtio::persist::{DeviceSnapshot, QueueSnapshot};

/// `struct virtio_vsock_event { le32 id; }`, id 0: transport reset.
const EVENT_TRANSPORT_RESET: u32 = 0;
const EVENT_LEN: usize = 4;

/// Where the transport reset a restore owes the guest stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ResetEvent {
    /// Nothing owed (a cold boot, or the guest acknowledged).
    None,
    /// Owed, waiting for an event buffer.
    Unsent,
    /// In the guest's event queue, waiting for its kick.
    Unacknowledged,
}

impl ResetEvent {
    pub(crate) fn holds_rx(self) -> bool {
        self != ResetEvent::None
    }
}

impl<B: VsockBackend> Vsock<B> {
    /// Stops the device and returns its queues: nothing reaches the guest
    /// after the save (the event loop finds the device inactive), so guest
    /// memory and the saved ring positions stay in step.
    pub(crate) fn save_state(&mut self) -> DeviceSnapshot {
        let active = self.active.take();
        DeviceSnapshot {
            device_type: VIRTIO_ID_VSOCK,
            acked_features: self.acked_features,
            activated: active.is_some(),
            queues: active.iter().flat_map(|a| a.queues.iter().map(QueueSnapshot::from)).collect(),
            extra: serde_json::Value::Null,
        }
    }

    /// After a restore: sends the transport reset (or waits for a buffer
    /// for it), and replays a TX kick the old VMM may have taken with it.
    pub(crate) fn start_transport_reset(&mut self) {
        if self.active.is_none() {
            return;
        }
        self.reset_event = ResetEvent::Unsent;
        if self.send_reset_event() {
            self.reset_event = ResetEvent::Unacknowledged;
        }
        let _ = self.queue_evts[TXQ].write(1);
    }

    /// The guest kicked the event queue: a buffer for an unsent reset, or
    /// the acknowledgement of a sent one.
    pub(crate) fn event_queue_kicked(&mut self) {
        match self.reset_event {
            ResetEvent::None => {}
            ResetEvent::Unsent => {
                if self.send_reset_event() {
                    self.reset_event = ResetEvent::Unacknowledged;
                }
            }
            ResetEvent::Unacknowledged => self.reset_event = ResetEvent::None,
        }
    }

    /// Writes the event into the first event-queue buffer that takes it;
    /// returns whether one did. Unusable buffers are used empty, at most
    /// [`BUDGET`] per call (the queue is kicked again to come back for
    /// more, which an unsent event takes as what it is: a retry).
    fn send_reset_event(&mut self) -> bool {
        let Some(active) = self.active.as_mut() else {
            return false;
        };
        let mem = &active.mem;
        let queue = &mut active.queues[EVQ];
        let mut served = 0;
        let mut sent = false;
        while served < BUDGET && !sent {
            let Some(chain) = queue.pop_descriptor_chain(mem) else {
                break;
            };
            let head = chain.head_index();
            sent = match chain.writer::<()>(mem) {
                Ok(mut w) if w.available_bytes() >= EVENT_LEN => {
                    w.write_all(&EVENT_TRANSPORT_RESET.to_le_bytes()).is_ok()
                }
                _ => false,
            };
            // The head came from this queue: only a used ring outside guest
            // memory fails here, and then nothing reaches the guest anyway.
            let _ = queue.add_used(mem, head, if sent { EVENT_LEN as u32 } else { 0 });
            served += 1;
        }
        if served == BUDGET && !sent {
            // Maybe more: come back after the loop's other events.
            let _ = self.queue_evts[EVQ].write(1);
        }
        if served > 0 {
            self.signal();
        }
        sent
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use event_manager::{EventManager, SubscriberOps};
    use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

    use super::*;
    use crate::vm::devices::virtio::persist::PersistError;
    use crate::vm::devices::virtio::vsock::device::tests::{
        activated, desc, memory, to_guest, tx_header, used, FakeBackend,
    };
    use crate::vm::devices::virtio::vsock::device::RXQ;
    use crate::vm::devices::virtio::vsock::packet::OP_CREDIT_REQUEST;
    use crate::vm::devices::virtio::{VirtioDevice, VirtioInterrupt, INT_VRING};
    use crate::vm::devices::IrqTrigger;

    const W: u32 = VRING_DESC_F_WRITE;
    const EVENTS_AT: u64 = 0x30_0000;

    type Queues<'a> = Vec<MockSplitQueue<'a, GuestMemoryMmap>>;

    /// A device restored from the save of one that served a TX packet and
    /// an RX packet, with a packet for the guest waiting in its backend and
    /// an RX buffer for it.
    fn restored(mem: &GuestMemoryMmap) -> (Queues<'_>, Vsock<FakeBackend>, Arc<VirtioInterrupt>) {
        let mut backend = FakeBackend::new();
        backend.to_guest.push_back(to_guest(b"before"));
        let (qs, mut dev) = activated(mem, 256, backend);
        mem.write_slice(&tx_header(OP_CREDIT_REQUEST, 0), GuestAddress(0x10_0000)).unwrap();
        qs[TXQ].add_desc_chains(&[desc(0x10_0000, 44, 0, 0)], 0).unwrap();
        qs[RXQ].add_desc_chains(&[desc(0x20_0000, 44 + 64, W, 0)], 0).unwrap();
        assert!(dev.process_tx() && dev.process_rx());

        let snap = dev.save().unwrap();
        assert!(!dev.is_active(), "a saved device stays stopped");
        assert!(snap.activated);
        let positions: Vec<_> = snap.queues.iter().map(|q| (q.next_avail, q.next_used)).collect();
        assert_eq!(positions, [(1, 1), (1, 1), (0, 0)]);

        let mut backend = FakeBackend::new();
        backend.to_guest.push_back(to_guest(b"after"));
        let mut back = Vsock::new(3, backend).unwrap();
        let irq = Arc::new(VirtioInterrupt::new(IrqTrigger::new().unwrap()));
        back.restore(mem.clone(), irq.clone(), &snap).unwrap();
        assert!(back.is_active());
        let _ = back.activate_evt.read();
        qs[RXQ].add_desc_chains(&[desc(0x21_0000, 44 + 64, W, 0)], 1).unwrap();
        (qs, back, irq)
    }

    fn event_at(mem: &GuestMemoryMmap, addr: u64) -> u32 {
        mem.read_obj(GuestAddress(addr)).unwrap()
    }

    /// Event buffers at EVENTS_AT + i * 0x100, pre-filled with 0xff.
    fn post_events(mem: &GuestMemoryMmap, evq: &MockSplitQueue<'_, GuestMemoryMmap>, chains: &[(u32, u32)], at: u16) {
        let descs: Vec<_> = chains
            .iter()
            .enumerate()
            .map(|(i, &(len, flags))| {
                let addr = EVENTS_AT + 0x100 * (u64::from(at) + i as u64);
                mem.write_obj(u32::MAX, GuestAddress(addr)).unwrap();
                desc(addr, len, flags, 0)
            })
            .collect();
        evq.add_desc_chains(&descs, at).unwrap();
    }

    #[test]
    fn ring_positions_survive_save_and_restore() {
        let mem = memory();
        let (qs, mut back, _) = restored(&mem);
        // The restored device continues each ring where the saved one was.
        mem.write_slice(&tx_header(OP_CREDIT_REQUEST, 0), GuestAddress(0x11_0000)).unwrap();
        qs[TXQ].add_desc_chains(&[desc(0x11_0000, 44, 0, 0)], 1).unwrap();
        assert!(back.process_tx());
        assert_eq!(used(&qs[TXQ]), [(0, 0), (1, 0)]);
        assert_eq!(back.backend.sent.len(), 1);
        // No reset is owed before the kick phase: RX runs.
        assert!(back.process_rx());
        assert_eq!(used(&qs[RXQ]).len(), 2);
    }

    #[test]
    fn the_reset_event_is_sent_once_and_rx_waits_for_its_acknowledgement() {
        let mem = memory();
        let (qs, back, irq) = restored(&mem);
        post_events(&mem, &qs[EVQ], &[(4, W), (4, W)], 0);
        let back = Arc::new(Mutex::new(back));
        let mut em = EventManager::<Arc<Mutex<Vsock<FakeBackend>>>>::new().unwrap();
        em.add_subscriber(back.clone());

        back.lock().unwrap().after_restore();
        assert_eq!(used(&qs[EVQ]), [(0, 4)], "exactly one 4-byte event");
        assert_eq!(event_at(&mem, EVENTS_AT), 0, "id 0: transport reset");
        assert_eq!(event_at(&mem, EVENTS_AT + 0x100), u32::MAX, "the second buffer is untouched");
        assert_eq!(irq.status() & INT_VRING, INT_VRING);
        assert_eq!(back.lock().unwrap().queue_evts[TXQ].read().unwrap(), 1, "a TX kick is replayed");

        // Until the guest acknowledges, nothing reaches it on RX, whatever
        // wakes the device.
        back.lock().unwrap().queue_evts[RXQ].write(1).unwrap();
        em.run_with_timeout(100).unwrap();
        assert_eq!(used(&qs[RXQ]).len(), 1, "RX is held");
        assert!(back.lock().unwrap().backend.has_pending_rx());

        // The guest reposts its buffer and kicks: the acknowledgement.
        back.lock().unwrap().queue_evts[EVQ].write(1).unwrap();
        em.run_with_timeout(100).unwrap();
        assert_eq!(used(&qs[RXQ]).len(), 2, "RX runs again");
        assert!(!back.lock().unwrap().backend.has_pending_rx());
        assert_eq!(used(&qs[EVQ]).len(), 1, "still one event");
        assert_eq!(back.lock().unwrap().reset_event, ResetEvent::None);
    }

    #[test]
    fn without_an_event_buffer_the_reset_waits_for_one() {
        let mem = memory();
        let (qs, mut back, _) = restored(&mem);
        back.after_restore();
        assert_eq!(back.reset_event, ResetEvent::Unsent);
        assert!(!back.process_rx());
        // A kick with no buffer yet changes nothing.
        back.event_queue_kicked();
        assert_eq!(back.reset_event, ResetEvent::Unsent);
        post_events(&mem, &qs[EVQ], &[(4, W)], 0);
        back.event_queue_kicked();
        assert_eq!(used(&qs[EVQ]), [(0, 4)]);
        assert_eq!(back.reset_event, ResetEvent::Unacknowledged, "the kick that brought the buffer is no ack");
        assert!(!back.process_rx());
        back.event_queue_kicked();
        assert!(back.process_rx());
    }

    /// Read-only, too small, outside guest memory: each is used empty (the
    /// guest ignores and reposts it) and the event goes into the first
    /// buffer that takes it, a 4-byte one split over two descriptors too.
    #[test]
    fn unusable_event_buffers_are_used_empty() {
        let mem = memory();
        let (qs, mut back, _) = restored(&mem);
        post_events(&mem, &qs[EVQ], &[(4, 0), (2, W), (3, W)], 0);
        let beyond = 0x1_0000_0000u64;
        qs[EVQ].add_desc_chains(&[desc(beyond, 4, W, 0)], 3).unwrap();
        let (a, b) = (EVENTS_AT + 0x400, EVENTS_AT + 0x500);
        mem.write_obj(u32::MAX, GuestAddress(a)).unwrap();
        mem.write_obj(u32::MAX, GuestAddress(b)).unwrap();
        qs[EVQ].add_desc_chains(&[desc(a, 2, W | VRING_DESC_F_NEXT, 5), desc(b, 2, W, 0)], 4).unwrap();
        back.after_restore();
        assert_eq!(used(&qs[EVQ]), [(0, 0), (1, 0), (2, 0), (3, 0), (4, 4)]);
        assert_eq!(event_at(&mem, EVENTS_AT), u32::MAX, "a read-only buffer is not written");
        assert_eq!((event_at(&mem, a) & 0xffff, event_at(&mem, b) & 0xffff), (0, 0));
        assert_eq!(back.reset_event, ResetEvent::Unacknowledged);
    }

    /// A guest flooding the event queue with useless buffers: one pass uses
    /// at most a budget of them and comes back through a kick.
    #[test]
    fn a_flood_of_useless_event_buffers_is_served_a_budget_at_a_time() {
        let mem = memory();
        let (qs, mut back, _) = restored(&mem);
        let bad: Vec<_> = (0..BUDGET as u64 + 10).map(|i| desc(EVENTS_AT + i * 0x10, 1, W, 0)).collect();
        qs[EVQ].add_desc_chains(&bad, 0).unwrap();
        back.after_restore();
        assert_eq!(used(&qs[EVQ]).len(), BUDGET);
        assert_eq!(back.reset_event, ResetEvent::Unsent);
        assert_eq!(back.queue_evts[EVQ].read().unwrap(), 1, "the event queue is kicked again");
        back.event_queue_kicked();
        assert_eq!(used(&qs[EVQ]).len(), BUDGET + 10);
        assert_eq!(back.reset_event, ResetEvent::Unsent);
    }

    #[test]
    fn an_inactive_device_saves_no_queues_and_owes_no_reset() {
        let mut dev = Vsock::new(3, FakeBackend::new()).unwrap();
        let snap = dev.save().unwrap();
        assert!(!snap.activated && snap.queues.is_empty());
        let mut back = Vsock::new(3, FakeBackend::new()).unwrap();
        let irq = Arc::new(VirtioInterrupt::new(IrqTrigger::new().unwrap()));
        back.restore(memory(), irq.clone(), &snap).unwrap();
        back.after_restore();
        assert!(!back.is_active());
        assert_eq!(back.reset_event, ResetEvent::None);
        let mut wrong = snap.clone();
        wrong.device_type = 26;
        assert!(matches!(back.restore(memory(), irq, &wrong), Err(PersistError::TypeMismatch { .. })));
    }
}
