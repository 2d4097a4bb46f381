//! virtio-vsock (device id 19) with a Firecracker-style hybrid backend: no
//! vhost, the host side is an AF_UNIX socket.
//!
//! - `device.rs`: the virtio device, moving packets between the guest's
//!   queues and a [`VsockBackend`]; packets are parsed by the virtio-vsock
//!   crate.
//! - `event_handler.rs`: which events wake the device (queue kicks, backend
//!   readiness) and what it does then.
//! - `persist.rs`: saving the queues, and the transport reset a restored
//!   device sends the guest (its host-side connections are gone).
//! - `unix/`: the AF_UNIX backend: host connects to `<socket>` and writes
//!   `CONNECT <port>\n`, gets `OK <host port>\n`; a guest connecting to port
//!   P reaches `<socket>_P`. Connection state, credit flow control and RST
//!   handling live there, not in a crate.

pub mod backend;
pub mod device;
pub mod event_handler;
pub mod packet;
pub mod persist;
pub mod unix;

pub use backend::VsockBackend;
pub use device::Vsock;
pub use unix::VsockMuxer;

/// The host's CID (VMADDR_CID_HOST).
pub const HOST_CID: u64 = 2;
/// The CID amphi gives its guest.
pub const DEFAULT_GUEST_CID: u64 = 3;
