//! The virtio-net device (id 1): one RX and one TX queue (no control
//! queue, no multiqueue), the MAC, link status and MTU in config space,
//! frames moved on a worker thread of the device's own
//! (`event_handler.rs`) so no network I/O runs on the VMM's event loop or
//! a vCPU.
//!
//! The worker is started with the device, before the VM runs, and lives
//! as long as it: threads inherit the seccomp filter of the thread that
//! creates them, and activation runs on a vCPU thread, whose filter a
//! device worker must not get. Activation hands the worker the queues over
//! a channel; a reset takes them back and waits until the worker has let
//! go of them (virtio 1.2, 2.4); the worker then waits for the next
//! activation. Dropping the device ends the worker without waiting for it.

use std::os::fd::OwnedFd;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;

use virtio_bindings::bindings::virtio_net::{
    virtio_net_config, VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6,
    VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_F_MAC, VIRTIO_NET_F_MTU, VIRTIO_NET_F_STATUS,
    VIRTIO_NET_S_LINK_UP,
};
use virtio_bindings::bindings::virtio_ring::VIRTIO_RING_F_INDIRECT_DESC;
use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::event_handler::{self, Command, Worker};
use super::rxtx::{Active, Io, NetStats};
use super::tap::{Tap, TapBackend, TapError};
use crate::vm::devices::virtio::{ActivateError, VirtioDevice, VirtioInterrupt, VIRTIO_F_VERSION_1};

pub const VIRTIO_ID_NET: u32 = 1;
/// Entries of each queue.
pub const QUEUE_SIZE: u16 = 256;
const QUEUE_SIZES: [u16; 2] = [QUEUE_SIZE, QUEUE_SIZE];
pub const RXQ: usize = 0;
pub const TXQ: usize = 1;
/// The smallest MTU the config space may carry (virtio 1.2, 5.1.4.1:
/// at least 68, IPv4's minimum) and the largest a frame of MAX_FRAME
/// bytes leaves room for.
pub const MIN_MTU: u16 = 68;
pub const MAX_MTU: u16 = 65535 - 14;
/// The config space: `struct virtio_net_config`; fields of features not
/// offered (speed, duplex, RSS) read 0.
const CONFIG_LEN: usize = std::mem::size_of::<virtio_net_config>();

/// The device's side of the worker.
struct WorkerLink {
    commands: Option<Sender<Command>>,
    /// Written after each command, so the worker's event loop looks.
    wake: EventFd,
    /// One message per Stop command, once the worker let go of the queues.
    stopped: Receiver<()>,
}

impl WorkerLink {
    fn send(&self, c: Command) -> Result<(), ActivateError> {
        let gone = || ActivateError::Worker(std::io::Error::other("the virtio-net worker thread has ended"));
        self.commands.as_ref().ok_or_else(gone)?.send(c).map_err(|_| gone())?;
        self.wake.write(1).map_err(ActivateError::Notify)
    }
}

/// One network interface of the guest, backed by a TAP.
pub struct VirtioNet {
    config: [u8; CONFIG_LEN],
    acked_features: u64,
    queue_evts: Vec<EventFd>,
    link: WorkerLink,
    stats: Arc<NetStats>,
    active: bool,
}

impl VirtioNet {
    /// Attaches to the TAP `tap` (or takes a duplicate of `opened`, the
    /// same TAP opened by someone who could) and starts the device's
    /// worker thread.
    pub fn new(tap: &str, opened: Option<&OwnedFd>, mac: [u8; 6], mtu: u16) -> Result<Self, TapError> {
        let t = match opened {
            Some(fd) => Tap::from_fd(tap, fd)?,
            None => Tap::open(tap)?,
        };
        Self::with_backend(t, mac, mtu).map_err(|source| TapError::Worker { name: tap.to_string(), source })
    }

    /// The device over any TAP-like backend (tests use one in memory).
    pub fn with_backend<T: TapBackend>(tap: T, mac: [u8; 6], mtu: u16) -> std::io::Result<Self> {
        let mut config = [0u8; CONFIG_LEN];
        let mut put = |offset: usize, bytes: &[u8]| config[offset..offset + bytes.len()].copy_from_slice(bytes);
        put(std::mem::offset_of!(virtio_net_config, mac), &mac);
        put(std::mem::offset_of!(virtio_net_config, status), &(VIRTIO_NET_S_LINK_UP as u16).to_le_bytes());
        put(std::mem::offset_of!(virtio_net_config, max_virtqueue_pairs), &1u16.to_le_bytes());
        put(std::mem::offset_of!(virtio_net_config, mtu), &mtu.clamp(MIN_MTU, MAX_MTU).to_le_bytes());
        let queue_evts = vec![EventFd::new(libc::EFD_NONBLOCK)?, EventFd::new(libc::EFD_NONBLOCK)?];
        let wake = EventFd::new(libc::EFD_NONBLOCK)?;
        let (commands, command_rx) = mpsc::channel();
        let (stopped_tx, stopped) = mpsc::channel();
        let stats = Arc::new(NetStats::default());
        let worker = Worker::new(
            Io::new(tap, stats.clone()),
            command_rx,
            wake.try_clone()?,
            queue_evts[RXQ].try_clone()?,
            queue_evts[TXQ].try_clone()?,
            stopped_tx,
        );
        event_handler::spawn(worker)?;
        Ok(VirtioNet {
            config,
            acked_features: 0,
            queue_evts,
            link: WorkerLink { commands: Some(commands), wake, stopped },
            stats,
            active: false,
        })
    }

    pub fn is_active(&self) -> bool {
        self.active
    }

    pub fn stats(&self) -> &NetStats {
        &self.stats
    }

    /// Takes the queues back from the worker and waits until it has let
    /// go of them (at most one budget of frames after the command).
    fn stop_worker(&mut self) {
        if !self.active {
            return;
        }
        self.active = false;
        // The answer to a stop that was never waited for (below) must not
        // pass for this one's.
        while self.link.stopped.try_recv().is_ok() {}
        // An error from recv means the worker has ended, which lets go of
        // the queues.
        if self.link.send(Command::Stop).is_ok() {
            let _ = self.link.stopped.recv();
        }
    }
}

impl VirtioDevice for VirtioNet {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn queue_events(&self) -> &[EventFd] {
        &self.queue_evts
    }

    /// Checksum and TCP segmentation offloads both ways: the header passes
    /// through to the TAP, which does (or takes over) the work. No
    /// MRG_RXBUF: a driver that accepts GUEST_TSO posts 64 KiB chains.
    fn avail_features(&self) -> u64 {
        VIRTIO_F_VERSION_1
            | 1 << VIRTIO_RING_F_INDIRECT_DESC
            | 1 << VIRTIO_NET_F_MAC
            | 1 << VIRTIO_NET_F_MTU
            | 1 << VIRTIO_NET_F_STATUS
            | 1 << VIRTIO_NET_F_CSUM
            | 1 << VIRTIO_NET_F_GUEST_CSUM
            | 1 << VIRTIO_NET_F_HOST_TSO4
            | 1 << VIRTIO_NET_F_HOST_TSO6
            | 1 << VIRTIO_NET_F_GUEST_TSO4
            | 1 << VIRTIO_NET_F_GUEST_TSO6
    }

    fn set_acked_features(&mut self, features: u64) {
        // Only what was offered counts, whatever the driver wrote.
        self.acked_features = features & self.avail_features();
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        crate::vm::devices::virtio::read_config_space(&self.config, offset, data);
    }

    /// The MAC is read-only with VIRTIO_F_VERSION_1 (changing it needs the
    /// control queue, not offered); nothing else is writable.
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        interrupt: Arc<VirtioInterrupt>,
        queues: Vec<Queue>,
    ) -> Result<(), ActivateError> {
        let got = queues.len();
        let Ok([rx, tx]) = <[Queue; 2]>::try_from(queues) else {
            return Err(ActivateError::QueueCount { want: QUEUE_SIZES.len(), got });
        };
        self.stop_worker();
        let active = Active { mem, rx, tx, interrupt, features: self.acked_features };
        let sent = self.link.send(Command::Activate(Box::new(active)));
        // A command on the channel reaches the worker even if waking it
        // failed, so the next reset or activation must take the queues back.
        self.active = !matches!(sent, Err(ActivateError::Worker(_)));
        sent
    }

    fn reset(&mut self) {
        self.stop_worker();
        self.acked_features = 0;
    }
}

impl Drop for VirtioNet {
    /// Ends the worker without waiting: when the VM is gone nobody reuses
    /// the queues. The worker owns the TAP and its handle on guest memory;
    /// closing the channel is what ends it.
    fn drop(&mut self) {
        self.link.commands = None;
        let _ = self.link.wake.write(1);
    }
}

#[cfg(test)]
mod tests;
