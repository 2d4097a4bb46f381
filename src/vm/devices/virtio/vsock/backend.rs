//! The seam between the vsock device and whatever serves the host side.

use std::os::fd::AsRawFd;

use event_manager::EventSet;
use virtio_vsock::packet::VsockPacket;
use vm_memory::bitmap::BitmapSlice;

/// A vsock backend. Its fd (`as_raw_fd`) becomes readable when
/// [`VsockBackend::notify`] has work to do.
pub trait VsockBackend: AsRawFd + Send {
    /// Takes a packet the guest sent (the device has parsed and checked it).
    fn send_pkt<B: BitmapSlice>(&mut self, pkt: &VsockPacket<B>);
    /// Fills `pkt` with the next packet for the guest; false if none is due.
    /// The device only passes packets with room for data.
    fn recv_pkt<B: BitmapSlice>(&mut self, pkt: &mut VsockPacket<B>) -> bool;
    /// Whether [`VsockBackend::recv_pkt`] has something to give.
    fn has_pending_rx(&self) -> bool;
    /// The backend's fd is ready.
    fn notify(&mut self, events: EventSet);
}
