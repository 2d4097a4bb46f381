//! virtio-balloon (device id 5): guest memory the host can take back
//! while the VM runs, served inside the VMM process for the stock
//! kernel's `virtio_balloon` module.
//!
//! - `device.rs`: the virtio device (features, config space with the
//!   target and actual size, activation, reset), the queue loop with its
//!   budget, and the host's [`BalloonHandle`] (set the target, read the
//!   balloon's size and the guest's memory statistics).
//! - `event_handler.rs`: the worker thread, started with the device and
//!   living as long as it, which owns the queues while the device is
//!   active, so no discarding runs on the VMM's event loop or a vCPU.
//! - `request.rs`: one chain of each queue, and everything a hostile
//!   guest can put in one.
//! - `persist.rs`: the device's saved state beyond its queues (the held
//!   stats buffer, `actual`).
//! - `reclaim.rs`: discarding guest pages (madvise MADV_DONTNEED on the
//!   guest memory mapping), checked against guest memory.

pub mod device;
pub mod event_handler;
pub mod persist;
pub mod reclaim;
pub mod request;

pub use device::{BalloonConfig, BalloonHandle, BalloonStats, VirtioBalloon, VIRTIO_ID_BALLOON};
