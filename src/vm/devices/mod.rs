//! Guest-visible devices and the buses the vCPUs reach them through.
//!
//! Every device has its own folder; a device that reacts to host events
//! (sockets, queue notifications) keeps that in `event_handler.rs`, apart
//! from the device logic in `device.rs`, so new virtio devices (block, fs)
//! slot in the same way as vsock.

pub mod bus;
pub mod power;
pub mod serial;
pub mod virtio;

pub use bus::{Bus, BusDevice};

use vmm_sys_util::eventfd::EventFd;

/// An interrupt line backed by an eventfd that KVM turns into a GSI edge
/// (irqfd).
#[derive(Debug)]
pub struct IrqTrigger(pub EventFd);

impl IrqTrigger {
    pub fn new() -> std::io::Result<Self> {
        Ok(IrqTrigger(EventFd::new(libc::EFD_NONBLOCK)?))
    }
}

impl vm_superio::Trigger for IrqTrigger {
    type E = std::io::Error;

    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}
