//! The virtio-blk device (id 2): one request queue, the disk's geometry
//! in config space, requests served on a worker thread of the device's
//! own (`event_handler.rs`) so no disk I/O ever runs on the VMM's event
//! loop or a vCPU.
//!
//! The worker is started with the device, before the VM runs, and lives
//! as long as the device: threads inherit the seccomp filter of the thread
//! that creates them, and activation runs on a vCPU thread, whose filter a
//! disk worker must not get. Activation hands the worker the queue over a
//! channel; a reset takes it back and waits until the worker has let go
//! of it (virtio 1.2, 2.4: the device is done with the queues before the
//! driver sees the reset complete); the worker then waits for the next
//! activation. Dropping the device ends the worker without waiting for it.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;

use virtio_bindings::bindings::virtio_blk::{
    virtio_blk_config, VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX,
};
use virtio_bindings::bindings::virtio_ring::VIRTIO_RING_F_INDIRECT_DESC;
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::disk::{DiskBackend, DiskError, DiskFile, SECTOR_SIZE};
use super::event_handler::{self, Command, Worker};
use super::request::{self, Outcome, SEG_MAX};
use crate::vm::devices::virtio::{ActivateError, VirtioDevice, VirtioInterrupt, VIRTIO_F_VERSION_1};

pub const VIRTIO_ID_BLOCK: u32 = 2;
/// Entries of the request queue.
pub const QUEUE_SIZE: u16 = 256;
const QUEUE_SIZES: [u16; 1] = [QUEUE_SIZE];
/// Requests served per kick before the worker looks at its other events
/// (a stop, a new activation) again.
pub const BUDGET: usize = 64;
/// The config space: `struct virtio_blk_config` (capacity, size_max,
/// seg_max, geometry, blk_size, ...); fields of features not offered read 0.
const CONFIG_LEN: usize = std::mem::size_of::<virtio_blk_config>();

/// What the worker owns while the device is active.
pub(crate) struct Active {
    pub mem: GuestMemoryMmap,
    pub queue: Queue,
    pub interrupt: Arc<VirtioInterrupt>,
    /// The driver did not accept VIRTIO_BLK_F_FLUSH, so it expects every
    /// completed write to be on stable storage (virtio 1.2, 5.2.5).
    pub writethrough: bool,
}

impl Active {
    /// Serves up to [`BUDGET`] requests; returns whether more may be
    /// waiting. Stops early, leaving the request in hand unanswered, when
    /// `cancel` is set (a reset or the device's end).
    pub(crate) fn process_queue<D: DiskBackend>(&mut self, disk: &D, cancel: &AtomicBool) -> bool {
        let mut used = false;
        let mut served = 0;
        while served < BUDGET {
            if cancel.load(Ordering::Acquire) {
                break;
            }
            let Some(chain) = self.queue.pop_descriptor_chain(&self.mem) else { break };
            let head = chain.head_index();
            match request::serve(&self.mem, chain, disk, self.writethrough, cancel) {
                Outcome::Used(len) => {
                    // The head came from this queue, so this fails only if the
                    // used ring left guest memory; the chain is lost then.
                    let _ = self.queue.add_used(&self.mem, head, len);
                    used = true;
                }
                Outcome::Cancelled => break,
            }
            served += 1;
        }
        if used {
            // One interrupt per batch; a lost edge only delays the guest
            // until the next one.
            let _ = self.interrupt.signal_used_queue();
        }
        served == BUDGET
    }
}

/// The device's side of the worker.
struct WorkerLink {
    commands: Option<Sender<Command>>,
    /// Written after each command, so the worker's event loop looks.
    wake: EventFd,
    /// One message per Stop command, once the worker let go of the queue.
    stopped: Receiver<()>,
    /// Set to make the worker drop the request in hand at its next chunk.
    cancel: Arc<AtomicBool>,
}

impl WorkerLink {
    fn send(&self, c: Command) -> Result<(), ActivateError> {
        let gone = || ActivateError::Worker(std::io::Error::other("the virtio-blk worker thread has ended"));
        self.commands.as_ref().ok_or_else(gone)?.send(c).map_err(|_| gone())?;
        self.wake.write(1).map_err(ActivateError::Notify)
    }
}

/// One disk.
pub struct VirtioBlock {
    path: PathBuf,
    read_only: bool,
    config: [u8; CONFIG_LEN],
    acked_features: u64,
    queue_evts: Vec<EventFd>,
    link: WorkerLink,
    active: bool,
}

impl VirtioBlock {
    /// Opens and locks the disk and starts the device's worker thread;
    /// fails with an error that names the disk.
    pub fn new(path: &Path, read_only: bool, serial: &str) -> Result<Self, DiskError> {
        let disk = DiskFile::open(path, read_only, serial)?;
        let worker_err = |source| DiskError::Worker { path: path.to_path_buf(), source };
        let mut config = [0u8; CONFIG_LEN];
        let mut put = |offset: usize, bytes: &[u8]| config[offset..offset + bytes.len()].copy_from_slice(bytes);
        put(std::mem::offset_of!(virtio_blk_config, capacity), &disk.capacity().to_le_bytes());
        put(std::mem::offset_of!(virtio_blk_config, seg_max), &SEG_MAX.to_le_bytes());
        put(std::mem::offset_of!(virtio_blk_config, blk_size), &(SECTOR_SIZE as u32).to_le_bytes());
        let queue_evts = vec![EventFd::new(libc::EFD_NONBLOCK).map_err(worker_err)?];
        let wake = EventFd::new(libc::EFD_NONBLOCK).map_err(worker_err)?;
        let (commands, command_rx) = mpsc::channel();
        let (stopped_tx, stopped) = mpsc::channel();
        let cancel = Arc::new(AtomicBool::new(false));
        let worker = Worker::new(
            disk,
            command_rx,
            wake.try_clone().map_err(worker_err)?,
            queue_evts[0].try_clone().map_err(worker_err)?,
            stopped_tx,
            cancel.clone(),
        );
        event_handler::spawn(worker).map_err(worker_err)?;
        Ok(VirtioBlock {
            path: path.to_path_buf(),
            read_only,
            config,
            acked_features: 0,
            queue_evts,
            link: WorkerLink { commands: Some(commands), wake, stopped, cancel },
            active: false,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn is_active(&self) -> bool {
        self.active
    }

    /// Takes the queue back from the worker and waits until it has let go
    /// of it: the request in hand is dropped at its next chunk.
    fn stop_worker(&mut self) {
        if !self.active {
            return;
        }
        self.active = false;
        self.link.cancel.store(true, Ordering::Release);
        // The answer to a stop that was never waited for (below) must not
        // pass for this one's.
        while self.link.stopped.try_recv().is_ok() {}
        // Without a wake-up the worker might never answer; `cancel` alone
        // keeps it from taking anything more from the queue then. An error
        // from recv means the worker has ended, which lets go of the queue.
        if self.link.send(Command::Stop).is_ok() {
            let _ = self.link.stopped.recv();
        }
    }
}

impl VirtioDevice for VirtioBlock {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn queue_events(&self) -> &[EventFd] {
        &self.queue_evts
    }

    fn avail_features(&self) -> u64 {
        let mut f = VIRTIO_F_VERSION_1
            | 1 << VIRTIO_RING_F_INDIRECT_DESC
            | 1 << VIRTIO_BLK_F_FLUSH
            | 1 << VIRTIO_BLK_F_SEG_MAX
            | 1 << VIRTIO_BLK_F_BLK_SIZE;
        if self.read_only {
            f |= 1 << VIRTIO_BLK_F_RO;
        }
        f
    }

    fn set_acked_features(&mut self, features: u64) {
        self.acked_features = features;
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        crate::vm::devices::virtio::read_config_space(&self.config, offset, data);
    }

    /// Nothing in the config space is writable without CONFIG_WCE, which
    /// is not offered.
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        interrupt: Arc<VirtioInterrupt>,
        mut queues: Vec<Queue>,
    ) -> Result<(), ActivateError> {
        if queues.len() != QUEUE_SIZES.len() {
            return Err(ActivateError::QueueCount { want: QUEUE_SIZES.len(), got: queues.len() });
        }
        let Some(queue) = queues.pop() else {
            return Err(ActivateError::QueueCount { want: QUEUE_SIZES.len(), got: 0 });
        };
        self.stop_worker();
        let writethrough = self.acked_features & (1 << VIRTIO_BLK_F_FLUSH) == 0;
        self.link.cancel.store(false, Ordering::Release);
        let sent = self.link.send(Command::Activate(Box::new(Active { mem, queue, interrupt, writethrough })));
        // A command on the channel reaches the worker even if waking it
        // failed, so the next reset or activation must take the queue back.
        self.active = !matches!(sent, Err(ActivateError::Worker(_)));
        sent
    }

    fn reset(&mut self) {
        self.stop_worker();
        self.acked_features = 0;
    }
}

impl Drop for VirtioBlock {
    /// Ends the worker without waiting: when the VM is gone nobody reuses
    /// the queue, and a disk that hangs must not keep the VMM from
    /// exiting. The worker owns what it touches (its own handle on guest
    /// memory, the disk), and closing the channel is what ends it.
    fn drop(&mut self) {
        self.link.cancel.store(true, Ordering::Release);
        self.link.commands = None;
        let _ = self.link.wake.write(1);
    }
}

#[cfg(test)]
mod tests;
