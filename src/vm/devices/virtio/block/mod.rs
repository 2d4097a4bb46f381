//! virtio-blk (device id 2): a host file or block device as a disk of
//! the guest (`/dev/vda`, `/dev/vdb`, ... with the stock kernel's
//! `virtio_blk` module), served inside the VMM process.
//!
//! - `device.rs`: the virtio device (features, config space, activation,
//!   reset) and the worker's queue loop with its budget.
//! - `event_handler.rs`: the worker thread, started with the device and
//!   living as long as it, which owns the queue while the device is
//!   active, so no disk I/O runs on the VMM's event loop or a vCPU.
//! - `request.rs`: one request from descriptor chain to status byte, and
//!   everything a hostile guest can put in a chain.
//! - `disk.rs`: the image file (opened and locked once, at construction)
//!   and the positioned I/O between it and guest memory.

pub mod device;
pub mod disk;
pub mod event_handler;
pub mod request;

pub use device::{VirtioBlock, VIRTIO_ID_BLOCK};
pub use disk::{check_serial, DiskError, SERIAL_LEN};

#[cfg(test)]
pub(crate) mod test_driver;
