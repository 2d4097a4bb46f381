//! The virtio-mmio transport (virtio 1.2, 4.2.2; register layout version 2).
//! It has no host events of its own: queue notifications go to the
//! device's eventfds through KVM ioeventfds.

pub mod transport;

pub use transport::{MmioTransport, NOTIFY_REG_OFFSET};
