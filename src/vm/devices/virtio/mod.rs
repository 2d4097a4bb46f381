//! virtio devices over the virtio-mmio transport (virtio 1.x, split
//! queues from virtio-queue).
//!
//! A device implements [`VirtioDevice`] (feature bits, config space,
//! activation with its queues) in `<dev>/device.rs` and reacts to queue
//! notifications and host-side events in `<dev>/event_handler.rs`; the
//! [`mmio::MmioTransport`] owns the register interface and hands the
//! configured queues to the device when the driver sets DRIVER_OK.
//! `persist.rs` holds the saved state of both, for VM templates.

pub mod balloon;
pub mod block;
pub mod fs;
pub mod mmio;
pub mod net;
pub mod persist;
pub mod vsock;

use std::sync::atomic::{AtomicU32, Ordering};

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use crate::vm::devices::IrqTrigger;
use persist::{DeviceSnapshot, PersistError};

/// VIRTIO_F_VERSION_1: the only transport feature amphi offers.
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;

/// Device status bits (virtio 1.2, 2.1).
pub mod status {
    pub const ACKNOWLEDGE: u32 = 1;
    pub const DRIVER: u32 = 2;
    pub const DRIVER_OK: u32 = 4;
    pub const FEATURES_OK: u32 = 8;
    pub const DEVICE_NEEDS_RESET: u32 = 64;
    pub const FAILED: u32 = 128;
}

/// Interrupt status bits of the MMIO transport.
pub const INT_VRING: u32 = 1;
pub const INT_CONFIG: u32 = 2;

/// The interrupt of one virtio-mmio device: a status word the driver reads
/// and acknowledges through the transport, and an irqfd edge.
#[derive(Debug)]
pub struct VirtioInterrupt {
    status: AtomicU32,
    irq: IrqTrigger,
}

impl VirtioInterrupt {
    pub fn new(irq: IrqTrigger) -> Self {
        VirtioInterrupt { status: AtomicU32::new(0), irq }
    }

    pub fn irq_fd(&self) -> &EventFd {
        &self.irq.0
    }

    /// Tells the driver that a used ring has new entries.
    pub fn signal_used_queue(&self) -> std::io::Result<()> {
        self.status.fetch_or(INT_VRING, Ordering::SeqCst);
        self.irq.0.write(1)
    }

    /// Tells the driver that the device's config space changed (the
    /// balloon's target): it reads the config space again.
    pub fn signal_config_change(&self) -> std::io::Result<()> {
        self.status.fetch_or(INT_CONFIG, Ordering::SeqCst);
        self.irq.0.write(1)
    }

    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    /// Puts back a saved status word, raising no interrupt. Merged, not
    /// stored: the device's own restore has started its worker, which may
    /// already have used a queue and set a bit of its own; losing that bit
    /// would leave the guest reading a status of 0 on that interrupt and
    /// waiting for a completion it was never told of.
    pub fn restore_status(&self, bits: u32) {
        self.status.fetch_or(bits, Ordering::SeqCst);
    }

    /// Raises the interrupt again for whatever the status word holds: after
    /// a restore, the edge the guest had not yet taken is gone with the old
    /// VM's interrupt controller.
    pub fn resignal(&self) -> std::io::Result<()> {
        self.irq.0.write(1)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    #[error("the driver configured {got} queues, the device needs {want}")]
    QueueCount { want: usize, got: usize },
    #[error("cannot signal the device's event loop")]
    Notify(#[source] std::io::Error),
    #[error("cannot start the device's worker thread")]
    Worker(#[source] std::io::Error),
    #[error("the device cannot use the driver's setup")]
    Setup(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// Reads `data.len()` bytes of a device's config space `config` from
/// `offset`; bytes past its end (or an offset no index reaches) read 0, as
/// the driver may read any width anywhere.
pub fn read_config_space(config: &[u8], offset: u64, data: &mut [u8]) {
    for (i, b) in data.iter_mut().enumerate() {
        let at = usize::try_from(offset).ok().and_then(|o| o.checked_add(i));
        *b = at.and_then(|a| config.get(a)).copied().unwrap_or(0);
    }
}

/// What a device does; the transport does the rest.
pub trait VirtioDevice: Send {
    /// virtio device id (1 = net, 2 = block, 5 = balloon, 19 = vsock, 26 = fs).
    fn device_type(&self) -> u32;
    /// Maximum size of each queue; the count is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// Eventfds the transport's queue notifications are delivered on
    /// (registered as KVM ioeventfds), one per queue.
    fn queue_events(&self) -> &[EventFd];
    fn avail_features(&self) -> u64;
    fn set_acked_features(&mut self, features: u64);
    /// How many queues, from index 0, the driver sets up for the features
    /// it accepted; the transport activates the device with exactly these
    /// and ignores the rest. All of them unless the device's queues depend
    /// on features (the balloon's do).
    fn active_queue_count(&self) -> usize {
        self.queue_max_sizes().len()
    }
    fn read_config(&self, offset: u64, data: &mut [u8]);
    fn write_config(&mut self, offset: u64, data: &[u8]);
    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        interrupt: std::sync::Arc<VirtioInterrupt>,
        queues: Vec<Queue>,
    ) -> Result<(), ActivateError>;
    /// Back to the pre-activation state (driver wrote status 0).
    fn reset(&mut self);

    /// Stops the device and returns its state (persist.rs). The device may
    /// stay stopped for good: a template VMM exits right after saving. A
    /// device whose state cannot be carried over keeps this default.
    fn save(&mut self) -> Result<DeviceSnapshot, PersistError> {
        Err(PersistError::Unsupported(persist::device_name(self.device_type())))
    }

    /// Puts a freshly made device back in the state `snap` describes; an
    /// active one is activated with its saved queues, positions included.
    /// Runs before the vCPUs' state is restored: anything the device must
    /// tell the guest waits for [`VirtioDevice::after_restore`].
    fn restore(
        &mut self,
        mem: GuestMemoryMmap,
        interrupt: std::sync::Arc<VirtioInterrupt>,
        snap: &DeviceSnapshot,
    ) -> Result<(), PersistError> {
        persist::restore_by_activation(self, mem, interrupt, snap)
    }

    /// The kick phase of a restore, once all KVM state (interrupt
    /// controllers included) is back: interrupts and events for the guest.
    fn after_restore(&mut self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_restored_status_keeps_what_the_device_signalled_meanwhile() {
        let int = VirtioInterrupt::new(IrqTrigger::new().unwrap());
        // The worker, started by the device's restore, used a queue...
        int.signal_used_queue().unwrap();
        // ...before the transport put the saved word back.
        int.restore_status(INT_CONFIG);
        assert_eq!(int.status(), INT_VRING | INT_CONFIG);
        int.ack(INT_VRING | INT_CONFIG);
        int.restore_status(0);
        assert_eq!(int.status(), 0);
    }
}
