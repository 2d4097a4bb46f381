//! The virtio-balloon device (id 5): inflate, deflate, stats and free
//! page reporting queues, the target and actual balloon size in config
//! space, and a [`BalloonHandle`] through which the host sets the target
//! and reads back the balloon's size and the guest's memory statistics.
//!
//! Queues are served on a worker thread of the device's own
//! (`event_handler.rs`), started with the device, before the VM runs, and
//! living as long as it: threads inherit the seccomp filter of the thread
//! that creates them, and activation runs on a vCPU thread. Activation
//! hands the worker the queues over a channel; a reset takes them back and
//! waits until the worker has let go of them (virtio 1.2, 2.4); dropping
//! the device ends the worker without waiting for it (as virtio-blk).
//!
//! Which queue is which depends on the features the driver accepted
//! (virtio 1.2, 5.5.2; Linux numbers them this way): inflate 0, deflate 1,
//! then stats if STATS_VQ, free page hinting if FREE_PAGE_HINT (never
//! offered), reporting if REPORTING, each taking the next index.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::event_handler::{self, Command, Worker};
use super::request::{self, STAT_TAGS};
use crate::vm::devices::virtio::persist::{DeviceSnapshot, PersistError};
use crate::vm::devices::virtio::{ActivateError, VirtioDevice, VirtioInterrupt, VIRTIO_F_VERSION_1};

pub const VIRTIO_ID_BALLOON: u32 = virtio_bindings::virtio_ids::VIRTIO_ID_BALLOON;

/// Feature bits (virtio 1.2, 5.5.3; not in virtio-bindings 0.2.7).
pub const VIRTIO_BALLOON_F_MUST_TELL_HOST: u32 = 0;
pub const VIRTIO_BALLOON_F_STATS_VQ: u32 = 1;
pub const VIRTIO_BALLOON_F_DEFLATE_ON_OOM: u32 = 2;
pub const VIRTIO_BALLOON_F_FREE_PAGE_HINT: u32 = 3;
pub const VIRTIO_BALLOON_F_PAGE_POISON: u32 = 4;
pub const VIRTIO_BALLOON_F_REPORTING: u32 = 5;

/// Entries of each queue.
pub const QUEUE_SIZE: u16 = 128;
/// Chains served per kick of one queue before the worker looks at its
/// other events (a stop, another queue) again.
pub const BUDGET: usize = 64;
/// The config space: le32 num_pages, le32 actual, le32
/// free_page_hint_cmd_id, le32 poison_val (the last two belong to features
/// not offered and read 0).
pub const CONFIG_LEN: usize = 16;
const NUM_PAGES_OFFSET: usize = 0;
const ACTUAL_OFFSET: usize = 4;
/// Pages of the balloon in a MiB.
const PAGES_PER_MIB: u64 = (1 << 20) / super::reclaim::PAGE_SIZE;

/// What one queue is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueRole {
    Inflate,
    Deflate,
    Stats,
    FreePageHint,
    Reporting,
}

/// The queues a driver that accepted `features` sets up, in index order.
pub fn queue_roles(features: u64) -> Vec<QueueRole> {
    let has = |bit: u32| features & (1 << bit) != 0;
    let mut roles = vec![QueueRole::Inflate, QueueRole::Deflate];
    if has(VIRTIO_BALLOON_F_STATS_VQ) {
        roles.push(QueueRole::Stats);
    }
    if has(VIRTIO_BALLOON_F_FREE_PAGE_HINT) {
        roles.push(QueueRole::FreePageHint);
    }
    if has(VIRTIO_BALLOON_F_REPORTING) {
        roles.push(QueueRole::Reporting);
    }
    roles
}

/// The guest's latest memory statistics (virtio 1.2, 5.5.6.3), by tag.
/// Each report replaces the previous one whole.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BalloonStats {
    values: [Option<u64>; STAT_TAGS],
    /// Reports received since the device was made.
    updates: u64,
}

/// Stats tags (virtio 1.2, 5.5.6.3).
pub mod tag {
    pub const SWAP_IN: u16 = 0;
    pub const SWAP_OUT: u16 = 1;
    pub const MAJOR_FAULTS: u16 = 2;
    pub const MINOR_FAULTS: u16 = 3;
    pub const FREE_MEMORY: u16 = 4;
    pub const TOTAL_MEMORY: u16 = 5;
    pub const AVAILABLE_MEMORY: u16 = 6;
    pub const DISK_CACHES: u16 = 7;
    pub const HUGETLB_ALLOCATIONS: u16 = 8;
    pub const HUGETLB_FAILURES: u16 = 9;
}

impl BalloonStats {
    /// The value of `tag` in the latest report (bytes for the memory
    /// tags, counts for the others), if the guest sent it.
    pub fn get(&self, tag: u16) -> Option<u64> {
        self.values.get(usize::from(tag)).copied().flatten()
    }

    pub fn updates(&self) -> u64 {
        self.updates
    }

    pub fn free_memory(&self) -> Option<u64> {
        self.get(tag::FREE_MEMORY)
    }

    pub fn total_memory(&self) -> Option<u64> {
        self.get(tag::TOTAL_MEMORY)
    }

    pub fn available_memory(&self) -> Option<u64> {
        self.get(tag::AVAILABLE_MEMORY)
    }

    pub fn disk_caches(&self) -> Option<u64> {
        self.get(tag::DISK_CACHES)
    }
}

/// State shared between the device, its worker and the host's handles.
#[derive(Debug, Default)]
pub(crate) struct Shared {
    /// The target size of the balloon in 4 KiB pages, set by the host.
    pub(crate) num_pages: AtomicU32,
    /// The balloon's size the driver last wrote.
    pub(crate) actual: AtomicU32,
    pub(crate) stats: Mutex<BalloonStats>,
    /// The active device's interrupt, for config-change notifications.
    pub(crate) interrupt: Mutex<Option<Arc<VirtioInterrupt>>>,
    /// The host wants fresh stats: the worker gives the stats buffer back.
    pub(crate) stats_wanted: AtomicBool,
    /// Wakes the worker (a clone of its wake event), set by the device.
    pub(crate) wake: Mutex<Option<EventFd>>,
    /// Bytes of guest memory given back to the host, by inflation and by
    /// free page reporting.
    pub(crate) inflated_bytes: AtomicU64,
    pub(crate) reported_bytes: AtomicU64,
}

impl Shared {
    pub(crate) fn set_stats(&self, values: [Option<u64>; STAT_TAGS]) {
        let mut s = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        s.values = values;
        s.updates += 1;
    }

    pub(crate) fn take_stats_wanted(&self) -> bool {
        self.stats_wanted.swap(false, Ordering::AcqRel)
    }

    pub(crate) fn add_inflated(&self, bytes: u64) {
        self.inflated_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    pub(crate) fn add_reported(&self, bytes: u64) {
        self.reported_bytes.fetch_add(bytes, Ordering::Relaxed);
    }
}

/// The host's side of a balloon: cheap to clone, usable from any thread,
/// before the device exists and after it is gone (then it changes only
/// what a later device would start from).
#[derive(Debug, Clone, Default)]
pub struct BalloonHandle {
    shared: Arc<Shared>,
}

impl BalloonHandle {
    /// A balloon with a target of 0 (the guest keeps all its memory).
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the balloon's target in 4 KiB pages and, if the driver is
    /// running, tells it with a config-change interrupt.
    pub fn set_target_pages(&self, pages: u32) {
        self.shared.num_pages.store(pages, Ordering::Release);
        let irq = self.shared.interrupt.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(irq) = irq.as_ref() {
            // A lost edge only delays the guest until the next change.
            let _ = irq.signal_config_change();
        }
    }

    /// Sets the target in MiB (saturating at the largest the config
    /// space holds, 16 TiB less a page).
    pub fn set_target_mib(&self, mib: u64) {
        let pages = mib.saturating_mul(PAGES_PER_MIB);
        self.set_target_pages(u32::try_from(pages).unwrap_or(u32::MAX));
    }

    pub fn target_pages(&self) -> u32 {
        self.shared.num_pages.load(Ordering::Acquire)
    }

    /// The balloon's size in 4 KiB pages as the driver last reported it.
    pub fn actual_pages(&self) -> u32 {
        self.shared.actual.load(Ordering::Acquire)
    }

    pub fn actual_mib(&self) -> u64 {
        u64::from(self.actual_pages()) / PAGES_PER_MIB
    }

    /// The guest's latest statistics (all `None` before the first report).
    pub fn stats(&self) -> BalloonStats {
        self.shared.stats.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Asks the guest for fresh statistics: the device gives the guest's
    /// stats buffer back, and the driver answers with a new one
    /// ([`BalloonStats::updates`] grows when it arrives). Does nothing
    /// while the device is inactive or the guest has not sent its buffer.
    pub fn request_stats(&self) {
        self.shared.stats_wanted.store(true, Ordering::Release);
        if let Some(w) = self.shared.wake.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            let _ = w.write(1);
        }
    }

    /// Bytes of guest memory given back to the host through inflation.
    pub fn inflated_bytes(&self) -> u64 {
        self.shared.inflated_bytes.load(Ordering::Relaxed)
    }

    /// Bytes of guest memory given back through free page reporting.
    pub fn reported_bytes(&self) -> u64 {
        self.shared.reported_bytes.load(Ordering::Relaxed)
    }
}

/// A balloon for the VMM: `VmmConfig.balloon`. Keep a clone of `handle`
/// to steer the balloon while the VM runs.
#[derive(Debug, Clone)]
pub struct BalloonConfig {
    /// Offer VIRTIO_BALLOON_F_REPORTING: the guest hands its free memory
    /// back by itself, in 2 MiB-or-larger blocks (Linux: pageblock order),
    /// without any target.
    pub free_page_reporting: bool,
    pub handle: BalloonHandle,
}

impl Default for BalloonConfig {
    fn default() -> Self {
        BalloonConfig { free_page_reporting: true, handle: BalloonHandle::new() }
    }
}

/// One queue while the device is active.
pub(crate) struct ActiveQueue {
    pub role: QueueRole,
    pub queue: Queue,
}

/// What the worker owns while the device is active.
pub(crate) struct Active {
    pub mem: GuestMemoryMmap,
    /// In index order: `queues[i]` is the one kicked through queue event i.
    pub queues: Vec<ActiveQueue>,
    pub interrupt: Arc<VirtioInterrupt>,
    pub shared: Arc<Shared>,
    /// The stats buffer the device holds until the host wants new stats.
    pub stats_head: Option<u16>,
}

impl Active {
    /// Serves up to [`BUDGET`] chains of queue `index`; returns whether
    /// more may be waiting. Stops early when `cancel` is set (a reset or
    /// the device's end).
    pub(crate) fn process_queue(&mut self, index: usize, cancel: &AtomicBool) -> bool {
        let Active { mem, queues, interrupt, shared, stats_head } = self;
        let Some(ActiveQueue { role, queue }) = queues.get_mut(index) else { return false };
        let mut used = false;
        let mut served = 0;
        while served < BUDGET {
            if cancel.load(Ordering::Acquire) {
                break;
            }
            let Some(chain) = queue.pop_descriptor_chain(&*mem) else { break };
            let head = chain.head_index();
            served += 1;
            let give_back = match role {
                QueueRole::Inflate => {
                    shared.add_inflated(request::inflate(mem, chain));
                    Some(head)
                }
                // The pages come back, zeroed, when the guest touches them.
                QueueRole::Deflate => Some(head),
                QueueRole::Reporting => {
                    shared.add_reported(request::report(mem, chain));
                    Some(head)
                }
                QueueRole::Stats => {
                    if let Some(values) = request::stats(mem, chain) {
                        shared.set_stats(values);
                    }
                    // The buffer is held until the host asks for new
                    // stats; a driver that sends another meanwhile gets
                    // the older one back, so at most one is ever held.
                    stats_head.replace(head)
                }
                // Never offered, so never set up; a chain is given back.
                QueueRole::FreePageHint => Some(head),
            };
            if let Some(h) = give_back {
                // The head came from this queue, so this fails only if the
                // used ring left guest memory; the chain is lost then.
                let _ = queue.add_used(&*mem, h, 0);
                used = true;
            }
        }
        if used {
            // One interrupt per batch; a lost edge only delays the guest.
            let _ = interrupt.signal_used_queue();
        }
        served == BUDGET
    }

    /// Gives the held stats buffer back, which asks the driver for new
    /// stats (virtio 1.2, 5.5.6.3).
    pub(crate) fn request_stats(&mut self) {
        let Some(head) = self.stats_head.take() else { return };
        let Some(q) = self.queues.iter_mut().find(|q| q.role == QueueRole::Stats) else { return };
        let _ = q.queue.add_used(&self.mem, head, 0);
        let _ = self.interrupt.signal_used_queue();
    }
}

/// The device's side of the worker.
struct WorkerLink {
    commands: Option<Sender<Command>>,
    /// Written after each command, so the worker's event loop looks.
    wake: EventFd,
    /// One message per Stop command, once the worker let go of the queues:
    /// them, with the held stats buffer (`None` if it had none).
    stopped: Receiver<Option<Box<Active>>>,
    /// Set to make the worker stop between two chains.
    cancel: Arc<AtomicBool>,
}

impl WorkerLink {
    fn send(&self, c: Command) -> Result<(), ActivateError> {
        let gone = || ActivateError::Worker(std::io::Error::other("the virtio-balloon worker thread has ended"));
        self.commands.as_ref().ok_or_else(gone)?.send(c).map_err(|_| gone())?;
        self.wake.write(1).map_err(ActivateError::Notify)
    }
}

pub struct VirtioBalloon {
    free_page_reporting: bool,
    queue_sizes: Vec<u16>,
    pub(super) acked_features: u64,
    queue_evts: Vec<EventFd>,
    pub(super) shared: Arc<Shared>,
    link: WorkerLink,
    pub(super) active: bool,
}

impl VirtioBalloon {
    /// Makes the device and starts its worker thread.
    pub fn new(config: &BalloonConfig) -> std::io::Result<Self> {
        let shared = config.handle.shared.clone();
        // Inflate, deflate, stats, and reporting if offered (free page
        // hinting is not, so it never takes an index).
        let count = if config.free_page_reporting { 4 } else { 3 };
        let queue_evts =
            (0..count).map(|_| EventFd::new(libc::EFD_NONBLOCK)).collect::<std::io::Result<Vec<EventFd>>>()?;
        let wake = EventFd::new(libc::EFD_NONBLOCK)?;
        let (commands, command_rx) = mpsc::channel();
        let (stopped_tx, stopped) = mpsc::channel();
        let cancel = Arc::new(AtomicBool::new(false));
        let kicks = queue_evts.iter().map(EventFd::try_clone).collect::<std::io::Result<Vec<EventFd>>>()?;
        let worker = Worker::new(command_rx, wake.try_clone()?, kicks, stopped_tx, cancel.clone(), shared.clone());
        *shared.wake.lock().unwrap_or_else(|e| e.into_inner()) = Some(wake.try_clone()?);
        event_handler::spawn(worker)?;
        Ok(VirtioBalloon {
            free_page_reporting: config.free_page_reporting,
            queue_sizes: vec![QUEUE_SIZE; count],
            acked_features: 0,
            queue_evts,
            shared,
            link: WorkerLink { commands: Some(commands), wake, stopped, cancel },
            active: false,
        })
    }

    pub fn handle(&self) -> BalloonHandle {
        BalloonHandle { shared: self.shared.clone() }
    }

    pub fn is_active(&self) -> bool {
        self.active
    }

    fn config_bytes(&self) -> [u8; CONFIG_LEN] {
        let mut c = [0u8; CONFIG_LEN];
        let num_pages = self.shared.num_pages.load(Ordering::Acquire);
        let actual = self.shared.actual.load(Ordering::Acquire);
        c[NUM_PAGES_OFFSET..NUM_PAGES_OFFSET + 4].copy_from_slice(&num_pages.to_le_bytes());
        c[ACTUAL_OFFSET..ACTUAL_OFFSET + 4].copy_from_slice(&actual.to_le_bytes());
        c
    }

    /// Takes the queues back from the worker and waits until it has let
    /// go of them; returns them (`None` if the device was not active or
    /// the worker has ended).
    pub(super) fn stop_worker(&mut self) -> Option<Box<Active>> {
        *self.shared.interrupt.lock().unwrap_or_else(|e| e.into_inner()) = None;
        if !self.active {
            return None;
        }
        self.active = false;
        self.link.cancel.store(true, Ordering::Release);
        // The answer to a stop that was never waited for must not pass
        // for this one's.
        while self.link.stopped.try_recv().is_ok() {}
        // An error from recv means the worker has ended, which lets go of
        // the queues; without a wake-up, `cancel` alone keeps it from
        // taking anything more from them.
        if self.link.send(Command::Stop).is_ok() {
            self.link.stopped.recv().ok().flatten()
        } else {
            None
        }
    }

    /// Hands the worker `queues` (in index order, as many as the accepted
    /// features call for) and the stats buffer the device holds, if any.
    pub(super) fn start_worker(
        &mut self,
        mem: GuestMemoryMmap,
        interrupt: Arc<VirtioInterrupt>,
        queues: Vec<Queue>,
        stats_head: Option<u16>,
    ) -> Result<(), ActivateError> {
        let roles = queue_roles(self.acked_features);
        if queues.len() != roles.len() {
            return Err(ActivateError::QueueCount { want: roles.len(), got: queues.len() });
        }
        self.stop_worker();
        let queues = roles.into_iter().zip(queues).map(|(role, queue)| ActiveQueue { role, queue }).collect();
        self.link.cancel.store(false, Ordering::Release);
        let active = Active { mem, queues, interrupt: interrupt.clone(), shared: self.shared.clone(), stats_head };
        let sent = self.link.send(Command::Activate(Box::new(active)));
        // A command on the channel reaches the worker even if waking it
        // failed, so the next reset or activation must take the queues back.
        self.active = !matches!(sent, Err(ActivateError::Worker(_)));
        if self.active {
            *self.shared.interrupt.lock().unwrap_or_else(|e| e.into_inner()) = Some(interrupt);
        }
        sent
    }
}

impl VirtioDevice for VirtioBalloon {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_BALLOON
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn queue_events(&self) -> &[EventFd] {
        &self.queue_evts
    }

    /// No MUST_TELL_HOST (deflated pages need nothing from the device
    /// before the guest reuses them), no FREE_PAGE_HINT (a migration aid)
    /// and no PAGE_POISON (discarded pages read back as zeros, so a guest
    /// that poisons free pages turns reporting off by itself).
    fn avail_features(&self) -> u64 {
        let mut f = VIRTIO_F_VERSION_1 | 1 << VIRTIO_BALLOON_F_STATS_VQ | 1 << VIRTIO_BALLOON_F_DEFLATE_ON_OOM;
        if self.free_page_reporting {
            f |= 1 << VIRTIO_BALLOON_F_REPORTING;
        }
        f
    }

    fn set_acked_features(&mut self, features: u64) {
        self.acked_features = features & self.avail_features();
    }

    fn active_queue_count(&self) -> usize {
        queue_roles(self.acked_features).len().min(self.queue_sizes.len())
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        crate::vm::devices::virtio::read_config_space(&self.config_bytes(), offset, data);
    }

    /// Only `actual` is the driver's to write; bytes elsewhere are ignored.
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        let mut actual = self.shared.actual.load(Ordering::Acquire).to_le_bytes();
        let mut changed = false;
        for (i, b) in data.iter().enumerate() {
            let at = usize::try_from(offset).ok().and_then(|o| o.checked_add(i));
            if let Some(slot) = at.and_then(|a| a.checked_sub(ACTUAL_OFFSET)).and_then(|a| actual.get_mut(a)) {
                *slot = *b;
                changed = true;
            }
        }
        if changed {
            self.shared.actual.store(u32::from_le_bytes(actual), Ordering::Release);
        }
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        interrupt: Arc<VirtioInterrupt>,
        queues: Vec<Queue>,
    ) -> Result<(), ActivateError> {
        self.start_worker(mem, interrupt, queues, None)
    }

    /// The balloon's pages stay given back (they read as zeros when the
    /// guest touches them); a new driver starts from an empty balloon, so
    /// `actual` goes back to 0. The host's target stays.
    fn reset(&mut self) {
        self.stop_worker();
        self.acked_features = 0;
        self.shared.actual.store(0, Ordering::Release);
    }

    /// The queues, the held stats buffer and `actual` (persist.rs); the
    /// worker stays stopped.
    fn save(&mut self) -> Result<DeviceSnapshot, PersistError> {
        self.save_state()
    }

    fn restore(
        &mut self,
        mem: GuestMemoryMmap,
        interrupt: Arc<VirtioInterrupt>,
        snap: &DeviceSnapshot,
    ) -> Result<(), PersistError> {
        self.restore_state(mem, interrupt, snap)
    }
}

impl Drop for VirtioBalloon {
    /// Ends the worker without waiting: when the VM is gone nobody reuses
    /// the queues. The worker owns what it touches (its own handle on
    /// guest memory), and closing the channel is what ends it.
    fn drop(&mut self) {
        *self.shared.interrupt.lock().unwrap_or_else(|e| e.into_inner()) = None;
        *self.shared.wake.lock().unwrap_or_else(|e| e.into_inner()) = None;
        self.link.cancel.store(true, Ordering::Release);
        self.link.commands = None;
        let _ = self.link.wake.write(1);
    }
}

#[cfg(test)]
mod tests;
