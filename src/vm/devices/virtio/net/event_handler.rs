//! Event handling of the network device, on the device's own worker
//! thread: an event-manager loop watching the two queue kicks (the
//! ioeventfds KVM signals), the TAP while frames can go somewhere, and a
//! wake event that says a command is waiting on the device's channel
//! (activate with the queues, stop).
//!
//! A TX kick sends at most [`BUDGET`] chains and re-arms itself when more
//! may be waiting. The TAP is watched level-triggered while the device is
//! active and the guest has buffers: each wake-up places at most
//! [`BUDGET`] frames and the TAP, still readable, brings the worker back
//! after its other events. When the guest has no RX buffer posted the TAP
//! is dropped from the epoll set (so it cannot spin the worker) until the
//! guest kicks the RX queue. The thread ends when the device's
//! end of the channel is gone; the TAP closes with it.

use std::os::fd::AsRawFd;
use std::sync::mpsc::{Receiver, Sender, TryRecvError};
use std::thread::JoinHandle;

use event_manager::{EventManager, EventOps, EventSet, Events, MutEventSubscriber, SubscriberOps};
use vmm_sys_util::eventfd::EventFd;

#[cfg(doc)]
use super::rxtx::BUDGET;
use super::rxtx::{Active, Io, RxState};
use super::tap::TapBackend;

/// What the device asks of its worker.
pub(crate) enum Command {
    /// Serve these queues until a Stop.
    Activate(Box<Active>),
    /// Let go of the queues and say so on the stopped channel.
    Stop,
}

pub(crate) struct Worker<T> {
    io: Io<T>,
    commands: Receiver<Command>,
    wake: EventFd,
    rx_kick: EventFd,
    tx_kick: EventFd,
    stopped: Sender<()>,
    active: Option<Box<Active>>,
    tap_watched: bool,
    exit: bool,
}

impl<T: TapBackend> Worker<T> {
    pub(crate) fn new(
        io: Io<T>,
        commands: Receiver<Command>,
        wake: EventFd,
        rx_kick: EventFd,
        tx_kick: EventFd,
        stopped: Sender<()>,
    ) -> Self {
        Worker { io, commands, wake, rx_kick, tx_kick, stopped, active: None, tap_watched: false, exit: false }
    }

    fn commands(&mut self) {
        let _ = self.wake.read();
        loop {
            match self.commands.try_recv() {
                Ok(Command::Activate(a)) => {
                    // Here rather than at activation: the ioctl is the
                    // worker's (the vCPU that activates may not make it). A
                    // failure leaves fewer offloads on, which RX checks for.
                    let _ = self.io.tap.set_offload(a.tap_offload());
                    self.active = Some(a);
                    // Chains queued before activation get served now.
                    let _ = self.tx_kick.write(1);
                    let _ = self.rx_kick.write(1);
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

    fn tx(&mut self) {
        let _ = self.tx_kick.read();
        let Some(a) = self.active.as_mut() else { return };
        if self.io.process_tx(a) {
            // More may be waiting: come back after the other events.
            let _ = self.tx_kick.write(1);
        }
    }

    /// Moves what frames it can and decides whether the TAP is watched.
    fn rx(&mut self, ops: &mut EventOps) {
        let watch = match self.active.as_mut() {
            Some(a) => match self.io.process_rx(a) {
                RxState::Drained | RxState::More => true,
                RxState::NeedBuffers | RxState::Failed => false,
            },
            None => false,
        };
        self.watch_tap(ops, watch);
    }

    fn watch_tap(&mut self, ops: &mut EventOps, watch: bool) {
        if watch == self.tap_watched {
            return;
        }
        let ev = Events::new_raw(self.io.tap.as_raw_fd(), EventSet::IN);
        // Only fails for a closed fd or one in the wrong state: a bug.
        let _ = if watch { ops.add(ev) } else { ops.remove(ev) };
        self.tap_watched = watch;
    }
}

/// Starts the worker thread; it runs until the device is dropped.
pub(crate) fn spawn<T: TapBackend>(worker: Worker<T>) -> std::io::Result<JoinHandle<()>> {
    // Made here rather than in the thread, so failing to make it fails the
    // device's creation.
    let mut em = EventManager::<Worker<T>>::new().map_err(std::io::Error::other)?;
    let id = em.add_subscriber(worker);
    std::thread::Builder::new().name("virtio-net".into()).spawn(move || {
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

impl<T: TapBackend> MutEventSubscriber for Worker<T> {
    fn init(&mut self, ops: &mut EventOps) {
        // Registration only fails for a closed or duplicate fd: a bug.
        let _ = ops.add(Events::new(&self.wake, EventSet::IN));
        let _ = ops.add(Events::new(&self.rx_kick, EventSet::IN));
        let _ = ops.add(Events::new(&self.tx_kick, EventSet::IN));
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let fd = events.fd();
        if fd == self.wake.as_raw_fd() {
            self.commands();
            // Activated: start watching the TAP; stopped: stop.
            self.rx(ops);
        } else if fd == self.tx_kick.as_raw_fd() {
            self.tx();
        } else if fd == self.rx_kick.as_raw_fd() {
            let _ = self.rx_kick.read();
            self.rx(ops);
        } else if fd == self.io.tap.as_raw_fd() {
            self.rx(ops);
        }
    }
}
