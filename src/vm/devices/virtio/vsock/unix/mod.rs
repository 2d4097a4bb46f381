//! The hybrid AF_UNIX vsock backend: a multiplexer over host sockets
//! ([`muxer`]) and one state machine per vsock stream ([`connection`]).

pub mod connection;
pub mod muxer;

pub use connection::{ConnState, HostStream, VsockConnection};
pub use muxer::{MuxerError, VsockMuxer};
