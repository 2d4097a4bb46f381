//! virtio-fs (device id 26) served inside the VMM process, with no
//! virtiofsd: the guest mounts a host directory with the stock kernel's
//! `virtiofs` module (`mount -t virtiofs TAG /mnt`).
//!
//! Only the virtio transport glue is ours; the FUSE server and the
//! passthrough filesystem are fuse-backend-rs's.
//!
//! - `device.rs`: the virtio device (config space, activation, reset) and
//!   how one request travels from a descriptor chain to the FUSE server
//!   and back.
//! - `event_handler.rs`: the worker thread that owns the queues while the
//!   device is active, so no filesystem call ever runs on the VMM's event
//!   loop.
//! - `filesystem.rs`: the passthrough's configuration (cache policy,
//!   xattrs, inode identity across mount points) and the read-only policy.
//! - `bridge.rs`: fuse-backend-rs 0.14 speaks vm-memory 0.17 / virtio-queue
//!   0.17, the VMM 0.18; this hands it a view of the same guest memory.

pub mod bridge;
pub mod device;
pub mod event_handler;
pub mod filesystem;

pub use device::{VirtioFs, VIRTIO_ID_FS};
pub use filesystem::{check_tag, ShareError, TAG_MAX};
