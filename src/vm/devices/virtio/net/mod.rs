//! virtio-net (device id 1): a network interface of the guest (`eth0`
//! with the stock kernel's `virtio_net` module) backed by a TAP on the
//! host, served inside the VMM process.
//!
//! - `device.rs`: the virtio device (features, config space, activation,
//!   reset).
//! - `event_handler.rs`: the worker thread, started with the device and
//!   living as long as it, which owns the queues and the TAP while the
//!   device is active.
//! - `rxtx.rs`: frames between the queues and the TAP (no host copy),
//!   with budgets, and everything a hostile guest can put in a chain.
//! - `tap.rs`: the TAP (`/dev/net/tun` with a virtio-net header) behind a
//!   trait the tests replace.

pub mod device;
pub mod event_handler;
pub mod rxtx;
pub mod tap;

pub use device::{VirtioNet, VIRTIO_ID_NET};
pub use rxtx::NetStats;
pub use tap::{check_name, TapError};

#[cfg(test)]
pub(crate) mod fake_tap;
