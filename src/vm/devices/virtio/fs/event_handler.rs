//! Event handling of the fs device, on its own worker thread (never the
//! VMM's event loop, which also serves vsock and must not wait on a
//! filesystem): an event-manager loop watching the two queue kicks and a
//! stop event. Each kick serves at most [`BUDGET`] requests before the
//! loop looks at its other events again, re-arming the kick when more are
//! waiting, so a guest that keeps its queue full cannot starve the other
//! queue or delay a reset.
//!
//! The thread has its own filesystem context (`unshare(CLONE_FS)`) with
//! umask 0: the passthrough creates files with the mode and umask the
//! guest sent and needs the process umask out of the way, and the rest of
//! the VMM keeps its own umask for the files it creates.

use std::os::fd::AsRawFd;

use event_manager::{EventManager, EventOps, EventSet, Events, MutEventSubscriber, SubscriberOps};
use vmm_sys_util::eventfd::EventFd;

use super::bridge::FuseQueue;
#[cfg(doc)]
use super::device::BUDGET;
use super::device::{Active, HIPRIO_QUEUE, REQUEST_QUEUE};

pub(crate) struct QueueHandler {
    active: Active,
    /// Kicks of the hiprio and request queues, in queue order.
    kicks: [EventFd; 2],
    stop: EventFd,
    stopped: bool,
}

impl QueueHandler {
    pub(crate) fn new(active: Active, kicks: [EventFd; 2], stop: EventFd) -> Self {
        QueueHandler { active, kicks, stop, stopped: false }
    }

    /// Serves until the device is reset, saved or dropped (the stop
    /// event), or until its event loop breaks; returns the queues, with
    /// their positions, for a save.
    pub(crate) fn run(self) -> Vec<FuseQueue> {
        let Ok(mut em) = EventManager::<QueueHandler>::new() else { return self.active.queues };
        let id = em.add_subscriber(self);
        loop {
            if em.run().is_err() {
                break;
            }
            match em.subscriber_mut(id) {
                Ok(h) if !h.stopped => {}
                _ => break,
            }
        }
        em.remove_subscriber(id).map(|h| h.active.queues).unwrap_or_default()
    }

    fn serve(&mut self, q: usize) {
        let _ = self.kicks[q].read();
        if self.active.process_queue(q) {
            // More requests are waiting: come back after the other events.
            let _ = self.kicks[q].write(1);
        }
    }
}

impl MutEventSubscriber for QueueHandler {
    fn init(&mut self, ops: &mut EventOps) {
        // Registration only fails for a closed or duplicate fd: a bug.
        for k in &self.kicks {
            let _ = ops.add(Events::new(k, EventSet::IN));
        }
        let _ = ops.add(Events::new(&self.stop, EventSet::IN));
        // Requests queued before the worker started get served now.
        for q in [HIPRIO_QUEUE, REQUEST_QUEUE] {
            let _ = self.kicks[q].write(1);
        }
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        let fd = events.fd();
        if fd == self.stop.as_raw_fd() {
            self.stopped = true;
        } else if self.stopped {
            // Stop wins over any kick seen in the same round.
        } else if fd == self.kicks[HIPRIO_QUEUE].as_raw_fd() {
            self.serve(HIPRIO_QUEUE);
        } else if fd == self.kicks[REQUEST_QUEUE].as_raw_fd() {
            self.serve(REQUEST_QUEUE);
        }
    }
}
