//! Saving and restoring the balloon: its queues, which follow the accepted
//! features, plus what the device keeps beyond them.
//!
//! The driver posts one stats buffer when it starts, and the device holds
//! it until the host wants fresh stats (device.rs): a restore that lost it
//! would leave the guest waiting for it back, and the host without stats,
//! for good. So its head is saved with the queues, and `actual`, the
//! balloon's size the driver last wrote to config space. The host's
//! target and counters are not: they come from the restoring VMM's handle.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use virtio_queue::QueueT;
use vm_memory::GuestMemoryMmap;

use super::device::{queue_roles, QueueRole, VirtioBalloon, VIRTIO_ID_BALLOON};
use crate::vm::devices::virtio::persist::{self, DeviceSnapshot, PersistError, QueueSnapshot};
use crate::vm::devices::virtio::VirtioInterrupt;

/// The balloon's `extra` in its [`DeviceSnapshot`].
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct BalloonExtra {
    /// The config space's `actual`, in 4 KiB pages.
    pub actual: u32,
    /// The head of the stats buffer the device held.
    pub stats_head: Option<u16>,
}

impl VirtioBalloon {
    pub(super) fn save_state(&mut self) -> Result<DeviceSnapshot, PersistError> {
        let activated = self.active;
        let (queues, stats_head) = match self.stop_worker() {
            Some(active) => (active.queues.iter().map(|q| QueueSnapshot::from(&q.queue)).collect(), active.stats_head),
            None if activated => return Err(PersistError::WorkerDidNotStop("virtio-balloon")),
            None => (Vec::new(), None),
        };
        let extra = BalloonExtra { actual: self.shared.actual.load(Ordering::Acquire), stats_head };
        Ok(DeviceSnapshot {
            device_type: VIRTIO_ID_BALLOON,
            acked_features: self.acked_features,
            activated,
            queues,
            extra: persist::extra_from(VIRTIO_ID_BALLOON, &extra)?,
        })
    }

    pub(super) fn restore_state(
        &mut self,
        mem: GuestMemoryMmap,
        interrupt: Arc<VirtioInterrupt>,
        snap: &DeviceSnapshot,
    ) -> Result<(), PersistError> {
        let extra: BalloonExtra = persist::extra_of(VIRTIO_ID_BALLOON, &snap.extra)?;
        let queues = persist::prepare_restore(self, &mem, snap)?;
        if let Some(head) = extra.stats_head {
            // A head must be a descriptor of the stats queue of an active
            // device; anything else would be handed back to the guest as
            // some other buffer.
            let stats = queue_roles(self.acked_features).iter().position(|r| *r == QueueRole::Stats);
            let size = stats.and_then(|i| queues.as_ref()?.get(i)).map(|q| q.size());
            if size.is_none_or(|size| head >= size) {
                return Err(PersistError::BadExtra {
                    device: "virtio-balloon",
                    reason: format!("held stats buffer {head} is not a descriptor of an active stats queue"),
                });
            }
        }
        self.shared.actual.store(extra.actual, Ordering::Release);
        match queues {
            Some(queues) => self.start_worker(mem, interrupt, queues, extra.stats_head).map_err(PersistError::Activate),
            None => Ok(()),
        }
    }
}
