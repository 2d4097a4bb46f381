//! Event handling of the balloon, on the device's own worker thread: an
//! event-manager loop watching each queue's kick (the ioeventfds KVM
//! signals) and a wake event that says a command is waiting on the
//! device's channel (activate with the queues, stop) or that the host
//! wants fresh stats.
//!
//! Each kick serves at most [`BUDGET`] chains of its queue, then re-arms
//! itself when more may be waiting, so a guest that keeps a queue full
//! cannot keep the worker from a stop or from the other queues. A kick
//! while the device is inactive, or of a queue the driver did not set up,
//! is read and ignored. The thread ends when the device's end of the
//! channel is gone.

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender, TryRecvError};
use std::sync::Arc;
use std::thread::JoinHandle;

use event_manager::{EventManager, EventOps, EventSet, Events, MutEventSubscriber, SubscriberOps};
use vmm_sys_util::eventfd::EventFd;

#[cfg(doc)]
use super::device::BUDGET;
use super::device::{Active, Shared};

/// What the device asks of its worker.
pub(crate) enum Command {
    /// Serve these queues until a Stop.
    Activate(Box<Active>),
    /// Let go of the queues and hand them back on the stopped channel.
    Stop,
}

pub(crate) struct Worker {
    commands: Receiver<Command>,
    wake: EventFd,
    /// One per queue the device offers, by queue index.
    kicks: Vec<EventFd>,
    stopped: Sender<Option<Box<Active>>>,
    cancel: Arc<AtomicBool>,
    shared: Arc<Shared>,
    active: Option<Box<Active>>,
    exit: bool,
}

impl Worker {
    pub(crate) fn new(
        commands: Receiver<Command>,
        wake: EventFd,
        kicks: Vec<EventFd>,
        stopped: Sender<Option<Box<Active>>>,
        cancel: Arc<AtomicBool>,
        shared: Arc<Shared>,
    ) -> Self {
        Worker { commands, wake, kicks, stopped, cancel, shared, active: None, exit: false }
    }

    fn commands(&mut self) {
        let _ = self.wake.read();
        loop {
            match self.commands.try_recv() {
                Ok(Command::Activate(a)) => {
                    self.active = Some(a);
                    // Chains queued before activation get served now.
                    for k in &self.kicks {
                        let _ = k.write(1);
                    }
                }
                Ok(Command::Stop) => {
                    let _ = self.stopped.send(self.active.take());
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    self.active = None;
                    self.exit = true;
                    return;
                }
            }
        }
        // A request while inactive is dropped: the first stats of the next
        // activation are fresh anyway.
        if self.shared.take_stats_wanted() && !self.cancel.load(Ordering::Acquire) {
            if let Some(active) = self.active.as_mut() {
                active.request_stats();
            }
        }
    }

    fn serve(&mut self, index: usize) {
        let Some(kick) = self.kicks.get(index) else { return };
        let _ = kick.read();
        if self.cancel.load(Ordering::Acquire) {
            // A stop is on its way.
            return;
        }
        let Some(active) = self.active.as_mut() else { return };
        if active.process_queue(index, &self.cancel) {
            // More may be waiting: come back after the other events.
            let _ = kick.write(1);
        }
    }
}

/// Starts the worker thread; it runs until the device is dropped.
pub(crate) fn spawn(worker: Worker) -> std::io::Result<JoinHandle<()>> {
    // Made here rather than in the thread, so failing to make it fails the
    // device's creation.
    let mut em = EventManager::<Worker>::new().map_err(std::io::Error::other)?;
    let id = em.add_subscriber(worker);
    std::thread::Builder::new().name("virtio-balloon".into()).spawn(move || {
        crate::vm::jail::seccomp::enter_or_exit(crate::vm::jail::seccomp::ThreadKind::Device);
        loop {
            // Only epoll_wait itself can fail here (EINTR is retried by
            // the loop as 0 events); the worker then ends, and the device
            // sees a closed channel.
            if em.run().is_err() {
                return;
            }
            match em.subscriber_mut(id) {
                Ok(w) if !w.exit => {}
                _ => return,
            }
        }
    })
}

impl MutEventSubscriber for Worker {
    fn init(&mut self, ops: &mut EventOps) {
        // Registration only fails for a closed or duplicate fd: a bug.
        let _ = ops.add(Events::new(&self.wake, EventSet::IN));
        for (i, k) in self.kicks.iter().enumerate() {
            let _ = ops.add(Events::with_data(k, i as u32, EventSet::IN));
        }
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        if events.fd() == self.wake.as_raw_fd() {
            self.commands();
        } else {
            self.serve(events.data() as usize);
        }
    }
}
