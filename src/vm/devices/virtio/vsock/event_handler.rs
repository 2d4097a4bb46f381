//! Event handling of the vsock device: before activation it waits for the
//! transport's activate event; then it watches the rx and tx queue kicks
//! and the backend's fd, and after each event moves whatever packets can
//! move. The event queue carries only the transport reset sent after a
//! restore: its kicks bring the buffer for it, or acknowledge it, which
//! lets RX run again (persist.rs).

use std::os::fd::AsRawFd;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};

use super::backend::VsockBackend;
use super::device::{Vsock, EVQ, RXQ, TXQ};

impl<B: VsockBackend> Vsock<B> {
    fn register_runtime_events(&self, ops: &mut EventOps) {
        for q in [RXQ, TXQ, EVQ] {
            // Registration only fails for a closed or duplicate fd: a bug.
            let _ = ops.add(Events::new(&self.queue_evts[q], EventSet::IN));
        }
        let _ = ops.add(Events::new_raw(self.backend.as_raw_fd(), EventSet::IN));
    }
}

impl<B: VsockBackend> MutEventSubscriber for Vsock<B> {
    fn init(&mut self, ops: &mut EventOps) {
        if self.is_active() {
            self.register_runtime_events(ops);
        } else {
            let _ = ops.add(Events::new(&self.activate_evt, EventSet::IN));
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let fd = events.fd();
        if fd == self.activate_evt.as_raw_fd() {
            let _ = self.activate_evt.read();
            let _ = ops.remove(Events::new(&self.activate_evt, EventSet::IN));
            self.register_runtime_events(ops);
        } else if !self.is_active() {
            // Kicks of a device the driver has reset: nothing to do.
        } else if fd == self.queue_evts[RXQ].as_raw_fd() {
            let _ = self.queue_evts[RXQ].read();
        } else if fd == self.queue_evts[TXQ].as_raw_fd() {
            let _ = self.queue_evts[TXQ].read();
            self.process_tx();
        } else if fd == self.queue_evts[EVQ].as_raw_fd() {
            let _ = self.queue_evts[EVQ].read();
            self.event_queue_kicked();
        } else if fd == self.backend.as_raw_fd() {
            self.backend.notify(events.event_set());
        }
        // Whatever woke us may have produced packets for the guest (replies
        // to TX, data from the host) or made room for them (new RX buffers).
        self.process_rx();
    }
}
