//! Event handling of the block device, on the device's own worker thread:
//! an event-manager loop watching the queue's kick (the ioeventfd KVM
//! signals) and a wake event that says a command is waiting on the
//! device's channel (activate with a queue, stop).
//!
//! Each kick serves at most [`BUDGET`] requests, then re-arms itself when
//! more may be waiting, so a guest that keeps the queue full cannot keep
//! the worker from a stop. A kick while the device is inactive is read
//! and ignored; a kick that comes with a stop does nothing. The thread
//! ends when the device's end of the channel is gone.

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender, TryRecvError};
use std::sync::Arc;
use std::thread::JoinHandle;

use event_manager::{EventManager, EventOps, EventSet, Events, MutEventSubscriber, SubscriberOps};
use vmm_sys_util::eventfd::EventFd;

use super::device::Active;
#[cfg(doc)]
use super::device::BUDGET;
use super::disk::DiskFile;

/// What the device asks of its worker.
pub(crate) enum Command {
    /// Serve this queue until a Stop.
    Activate(Box<Active>),
    /// Let go of the queue and say so on the stopped channel.
    Stop,
}

pub(crate) struct Worker {
    disk: DiskFile,
    commands: Receiver<Command>,
    wake: EventFd,
    kick: EventFd,
    stopped: Sender<()>,
    cancel: Arc<AtomicBool>,
    active: Option<Box<Active>>,
    exit: bool,
}

impl Worker {
    pub(crate) fn new(
        disk: DiskFile,
        commands: Receiver<Command>,
        wake: EventFd,
        kick: EventFd,
        stopped: Sender<()>,
        cancel: Arc<AtomicBool>,
    ) -> Self {
        Worker { disk, commands, wake, kick, stopped, cancel, active: None, exit: false }
    }

    fn commands(&mut self) {
        let _ = self.wake.read();
        loop {
            match self.commands.try_recv() {
                Ok(Command::Activate(a)) => {
                    self.active = Some(a);
                    // Requests queued before activation get served now.
                    let _ = self.kick.write(1);
                }
                Ok(Command::Stop) => {
                    self.active = None;
                    let _ = self.stopped.send(());
                }
                Err(TryRecvError::Empty) => return,
                Err(TryRecvError::Disconnected) => {
                    self.active = None;
                    self.exit = true;
                    return;
                }
            }
        }
    }

    fn serve(&mut self) {
        let _ = self.kick.read();
        if self.cancel.load(Ordering::Acquire) {
            // A stop is on its way.
            return;
        }
        let Some(active) = self.active.as_mut() else { return };
        if active.process_queue(&self.disk, &self.cancel) {
            // More may be waiting: come back after the other events.
            let _ = self.kick.write(1);
        }
    }
}

/// Starts the worker thread; it runs until the device is dropped.
pub(crate) fn spawn(worker: Worker) -> std::io::Result<JoinHandle<()>> {
    // Made here rather than in the thread, so failing to make it fails the
    // device's creation.
    let mut em = EventManager::<Worker>::new().map_err(std::io::Error::other)?;
    let id = em.add_subscriber(worker);
    std::thread::Builder::new().name("virtio-blk".into()).spawn(move || {
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
        let _ = ops.add(Events::new(&self.kick, EventSet::IN));
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        let fd = events.fd();
        if fd == self.wake.as_raw_fd() {
            self.commands();
        } else if fd == self.kick.as_raw_fd() {
            self.serve();
        }
    }
}
