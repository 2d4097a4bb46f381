//! Saved state of virtio devices and their virtio-mmio transport, for VM
//! templates: a template VMM saves a booted guest's devices, a fresh VMM
//! built with the same device list restores them before its vCPUs run.
//!
//! A Linux guest does not notice a restore (its driver state is in guest
//! memory): each device must answer the same registers and continue every
//! ring from the saved positions. So the state is the transport's register
//! file, each queue's configuration and positions ([`QueueSnapshot`], the
//! same fields as virtio-queue's `QueueState`, in both crate versions the
//! devices use), the accepted features, and whatever a device keeps beyond
//! its queues (`extra`, e.g. the balloon's held stats buffer). Host-side
//! state (vsock connections, the fs share's open files) is not saved: the
//! devices tell the guest or are saved before it has any.
//!
//! Snapshots come from amphi itself, but a damaged or mismatched one must
//! fail the restore with a named error, never panic: every value is checked
//! against the device it is restored into.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use virtio_queue::{Queue, QueueState, QueueT};
use vm_memory::GuestMemoryMmap;

use super::{ActivateError, VirtioDevice, VirtioInterrupt};

/// A queue's configuration and ring positions (virtio-queue's `QueueState`,
/// which has no serde).
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueSnapshot {
    pub max_size: u16,
    pub next_avail: u16,
    pub next_used: u16,
    pub event_idx_enabled: bool,
    pub size: u16,
    pub ready: bool,
    pub desc_table: u64,
    pub avail_ring: u64,
    pub used_ring: u64,
}

/// Both virtio-queue versions have the same `QueueState`: the field list
/// is given once, and a struct expression without `..` makes the compiler
/// check it is complete in both directions.
macro_rules! queue_state_conversions {
    ($($field:ident),* $(,)?) => {
        queue_state_conversions!(@one QueueState; $($field),*);
        queue_state_conversions!(@one fuse_virtio_queue::QueueState; $($field),*);
    };
    (@one $state:ty; $($field:ident),*) => {
        impl From<$state> for QueueSnapshot {
            fn from(s: $state) -> Self {
                QueueSnapshot { $($field: s.$field),* }
            }
        }

        impl From<&QueueSnapshot> for $state {
            fn from(s: &QueueSnapshot) -> Self {
                Self { $($field: s.$field),* }
            }
        }
    };
}

queue_state_conversions!(
    max_size,
    next_avail,
    next_used,
    event_idx_enabled,
    size,
    ready,
    desc_table,
    avail_ring,
    used_ring,
);

impl From<&Queue> for QueueSnapshot {
    fn from(q: &Queue) -> Self {
        q.state().into()
    }
}

/// Checked by virtio-queue: sizes that are not powers of two or exceed the
/// maximum, misaligned rings.
impl TryFrom<&QueueSnapshot> for Queue {
    type Error = virtio_queue::Error;

    fn try_from(s: &QueueSnapshot) -> Result<Self, Self::Error> {
        Queue::try_from(QueueState::from(s))
    }
}

impl From<&fuse_virtio_queue::Queue> for QueueSnapshot {
    fn from(q: &fuse_virtio_queue::Queue) -> Self {
        q.state().into()
    }
}

impl TryFrom<&QueueSnapshot> for fuse_virtio_queue::Queue {
    type Error = fuse_virtio_queue::Error;

    fn try_from(s: &QueueSnapshot) -> Result<Self, Self::Error> {
        fuse_virtio_queue::Queue::try_from(fuse_virtio_queue::QueueState::from(s))
    }
}

/// What a device saves: the features the driver accepted and, once the
/// driver set DRIVER_OK, the queues the device was serving.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct DeviceSnapshot {
    pub device_type: u32,
    pub acked_features: u64,
    pub activated: bool,
    /// The active queues, in index order; empty unless `activated`.
    pub queues: Vec<QueueSnapshot>,
    /// Device-specific state beyond the queues (`Null` if none).
    pub extra: serde_json::Value,
}

/// One virtio-mmio device window: the transport's registers and the device.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct TransportSnapshot {
    pub queue_select: u32,
    pub features_select: u32,
    pub acked_features_select: u32,
    pub acked_features: u64,
    pub status: u32,
    pub config_generation: u32,
    pub interrupt_status: u32,
    /// The transport's own queues: what the driver programmed before
    /// DRIVER_OK (after it, the device holds the live ones).
    pub queues: Vec<QueueSnapshot>,
    pub device: DeviceSnapshot,
}

#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    #[error("{0} cannot be saved or restored")]
    Unsupported(&'static str),
    #[error("the snapshot is of virtio device type {saved}, the device is of type {device}")]
    TypeMismatch { saved: u32, device: u32 },
    #[error("the snapshot accepted features {acked:#x}, the device offers only {offered:#x}")]
    FeaturesNotOffered { acked: u64, offered: u64 },
    #[error("the snapshot has {saved} queues, the device has {device}")]
    QueueCount { saved: usize, device: usize },
    #[error("saved queue {index} has a maximum size of {saved}, the device's is {device}")]
    QueueSize { index: usize, saved: u16, device: u16 },
    #[error("saved queue {index} is invalid")]
    BadQueue {
        index: usize,
        #[source]
        source: virtio_queue::Error,
    },
    #[error("saved queue {index} of an active device is not ready or lies outside guest memory")]
    QueueNotUsable { index: usize },
    #[error("the saved transport state is inconsistent: {0}")]
    Inconsistent(&'static str),
    #[error("the saved state of {device} is malformed")]
    Extra {
        device: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("the saved state of {device} is invalid: {reason}")]
    BadExtra { device: &'static str, reason: String },
    #[error("the {0} worker thread did not stop and hand its queues back")]
    WorkerDidNotStop(&'static str),
    #[error("the device refused its saved queues")]
    Activate(#[source] ActivateError),
}

/// A device's name in errors, by virtio device id.
pub fn device_name(device_type: u32) -> &'static str {
    match device_type {
        1 => "virtio-net",
        2 => "virtio-blk",
        5 => "virtio-balloon",
        19 => "vsock",
        26 => "virtio-fs",
        _ => "a virtio device",
    }
}

/// Rebuilds `saved` as queues of a device whose queues have the maximum
/// sizes `max_sizes` (from index 0); with `mem`, each must also be usable
/// in it (ready, rings inside guest memory), as activation requires.
pub fn queues_from(
    saved: &[QueueSnapshot],
    max_sizes: &[u16],
    mem: Option<&GuestMemoryMmap>,
) -> Result<Vec<Queue>, PersistError> {
    if saved.len() > max_sizes.len() {
        return Err(PersistError::QueueCount { saved: saved.len(), device: max_sizes.len() });
    }
    saved
        .iter()
        .zip(max_sizes)
        .enumerate()
        .map(|(index, (s, &device))| {
            if s.max_size != device {
                return Err(PersistError::QueueSize { index, saved: s.max_size, device });
            }
            let q = Queue::try_from(s).map_err(|source| PersistError::BadQueue { index, source })?;
            match mem {
                Some(mem) if !q.is_valid(mem) => Err(PersistError::QueueNotUsable { index }),
                _ => Ok(q),
            }
        })
        .collect()
}

/// Checks that `snap` was saved from a device like `dev`: the same type,
/// features it offers.
pub fn check_device<D: VirtioDevice + ?Sized>(dev: &D, snap: &DeviceSnapshot) -> Result<(), PersistError> {
    let device = dev.device_type();
    if snap.device_type != device {
        return Err(PersistError::TypeMismatch { saved: snap.device_type, device });
    }
    let offered = dev.avail_features();
    if snap.acked_features & !offered != 0 {
        return Err(PersistError::FeaturesNotOffered { acked: snap.acked_features, offered });
    }
    Ok(())
}

/// Checks `snap` against `dev`, gives it the accepted features and, if it
/// was active, the queues it served, rebuilt: what [`VirtioDevice::restore`]
/// does unless a device has more state. Returns the queues instead of
/// activating when `activate` is false (a device that activates itself
/// with extra state).
pub fn prepare_restore<D: VirtioDevice + ?Sized>(
    dev: &mut D,
    mem: &GuestMemoryMmap,
    snap: &DeviceSnapshot,
) -> Result<Option<Vec<Queue>>, PersistError> {
    check_device(dev, snap)?;
    dev.set_acked_features(snap.acked_features);
    if !snap.activated {
        if !snap.queues.is_empty() {
            return Err(PersistError::Inconsistent("an inactive device saved queues"));
        }
        return Ok(None);
    }
    let want = dev.active_queue_count();
    if snap.queues.len() != want {
        return Err(PersistError::QueueCount { saved: snap.queues.len(), device: want });
    }
    queues_from(&snap.queues, dev.queue_max_sizes(), Some(mem)).map(Some)
}

/// [`VirtioDevice::restore`]'s default: [`prepare_restore`], then
/// activation with the saved queues.
pub fn restore_by_activation<D: VirtioDevice + ?Sized>(
    dev: &mut D,
    mem: GuestMemoryMmap,
    interrupt: Arc<VirtioInterrupt>,
    snap: &DeviceSnapshot,
) -> Result<(), PersistError> {
    match prepare_restore(dev, &mem, snap)? {
        Some(queues) => dev.activate(mem, interrupt, queues).map_err(PersistError::Activate),
        None => Ok(()),
    }
}

/// `extra` of a device that keeps `T` there.
pub fn extra_of<T: serde::de::DeserializeOwned>(
    device_type: u32,
    extra: &serde_json::Value,
) -> Result<T, PersistError> {
    T::deserialize(extra).map_err(|source| PersistError::Extra { device: device_name(device_type), source })
}

/// A device's `extra` from `T`.
pub fn extra_from<T: Serialize>(device_type: u32, value: &T) -> Result<serde_json::Value, PersistError> {
    serde_json::to_value(value).map_err(|source| PersistError::Extra { device: device_name(device_type), source })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::GuestAddress;

    pub(crate) fn memory() -> GuestMemoryMmap {
        GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x100_0000)]).unwrap()
    }

    fn sample(mem: &GuestMemoryMmap) -> Queue {
        let mock = MockSplitQueue::create(mem, GuestAddress(0x1_0000), 16);
        let mut q: Queue = mock.create_queue().unwrap();
        q.set_next_avail(7);
        q.set_next_used(5);
        q
    }

    #[test]
    fn a_queue_survives_a_round_trip_through_json() {
        let mem = memory();
        let q = sample(&mem);
        let s = QueueSnapshot::from(&q);
        assert_eq!((s.next_avail, s.next_used, s.size, s.max_size, s.ready), (7, 5, 16, 16, true));
        let json = serde_json::to_string(&s).unwrap();
        let back: QueueSnapshot = serde_json::from_str(&json).unwrap();
        assert_eq!(back, s);
        assert_eq!(Queue::try_from(&back).unwrap(), q);
    }

    #[test]
    fn the_fs_devices_queue_version_converts_both_ways() {
        let mem = memory();
        let s = QueueSnapshot::from(&sample(&mem));
        let fuse = fuse_virtio_queue::Queue::try_from(&s).unwrap();
        assert_eq!(QueueSnapshot::from(&fuse), s);
        let bad = QueueSnapshot { desc_table: 0x1_0001, ..s };
        assert!(fuse_virtio_queue::Queue::try_from(&bad).is_err());
    }

    #[test]
    fn invalid_queue_snapshots_are_errors() {
        let mem = memory();
        let good = QueueSnapshot::from(&sample(&mem));
        let bad = [
            QueueSnapshot { max_size: 0, ..good },
            QueueSnapshot { max_size: 15, ..good },
            QueueSnapshot { size: 32, ..good },
            QueueSnapshot { size: 3, ..good },
            QueueSnapshot { desc_table: 0x1_0008, ..good },
            QueueSnapshot { avail_ring: 0x1_0001, ..good },
            QueueSnapshot { used_ring: 0x1_0002, ..good },
        ];
        for s in bad {
            assert!(Queue::try_from(&s).is_err(), "{s:?}");
        }
        assert!(matches!(
            queues_from(&[good, QueueSnapshot { size: 3, ..good }], &[16, 16], None),
            Err(PersistError::BadQueue { index: 1, .. })
        ));
        assert!(matches!(
            queues_from(&[good], &[32], None),
            Err(PersistError::QueueSize { index: 0, saved: 16, device: 32 })
        ));
        assert!(matches!(queues_from(&[good, good], &[16], None), Err(PersistError::QueueCount { .. })));
        // Rings past the end of guest memory, or a queue never made ready,
        // cannot be served.
        let outside = QueueSnapshot { used_ring: 0x200_0000, ..good };
        assert!(queues_from(&[outside], &[16], None).is_ok());
        assert!(matches!(queues_from(&[outside], &[16], Some(&mem)), Err(PersistError::QueueNotUsable { index: 0 })));
        let unready = QueueSnapshot { ready: false, ..good };
        assert!(matches!(queues_from(&[unready], &[16], Some(&mem)), Err(PersistError::QueueNotUsable { .. })));
    }
}
