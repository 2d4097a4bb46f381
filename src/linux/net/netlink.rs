//! A blocking rtnetlink client: one request at a time on a NETLINK_ROUTE
//! socket of the calling thread's network namespace, its answers collected
//! until the kernel's acknowledgement or the end of a dump.
//!
//! Blocking on purpose: the callers are short setup steps (at `create` on
//! the host, before the workload starts in the guest) that need one answer
//! before the next request, and neither the runtime nor the agent runs an
//! async executor.

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REQUEST,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

use super::NetError;

/// What a request asks of the kernel besides doing it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Every object of the type (a dump).
    Dump,
    /// A change, acknowledged.
    Change,
    /// A new object; EEXIST if it is there already.
    Create,
}

pub struct Netlink {
    socket: Socket,
    seq: u32,
}

impl Netlink {
    /// A socket in the calling thread's network namespace.
    pub fn open() -> Result<Netlink, NetError> {
        let io = |source| NetError::Netlink { what: "open a NETLINK_ROUTE socket".into(), source };
        let mut socket = Socket::new(NETLINK_ROUTE).map_err(io)?;
        socket.bind_auto().map_err(io)?;
        socket.connect(&SocketAddr::new(0, 0)).map_err(io)?;
        Ok(Netlink { socket, seq: 0 })
    }

    /// Sends `msg` and returns what the kernel answered before its
    /// acknowledgement (or the end of the dump). `what` names the request
    /// in errors ("add the address 10.0.0.2/24 to eth0").
    pub fn request(
        &mut self,
        msg: RouteNetlinkMessage,
        kind: Kind,
        what: &str,
    ) -> Result<Vec<RouteNetlinkMessage>, NetError> {
        let io = |source| NetError::Netlink { what: what.to_string(), source };
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST
            | match kind {
                Kind::Dump => NLM_F_DUMP,
                Kind::Change => NLM_F_ACK,
                Kind::Create => NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
            };
        header.sequence_number = self.seq;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(msg));
        packet.finalize();
        let mut buf = vec![0u8; packet.buffer_len()];
        packet.serialize(&mut buf);
        self.socket.send(&buf, 0).map_err(io)?;

        let mut out = Vec::new();
        loop {
            let (datagram, _) = self.socket.recv_from_full().map_err(io)?;
            if datagram.is_empty() {
                return Err(io(std::io::Error::from(std::io::ErrorKind::UnexpectedEof)));
            }
            let mut offset = 0;
            while offset < datagram.len() {
                let reply = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&datagram[offset..])
                    .map_err(|e| io(std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string())))?;
                let len = reply.header.length as usize;
                if len == 0 {
                    return Err(io(std::io::Error::from(std::io::ErrorKind::InvalidData)));
                }
                offset += len.next_multiple_of(4);
                if reply.header.sequence_number != self.seq {
                    continue;
                }
                match reply.payload {
                    NetlinkPayload::Done(_) => return Ok(out),
                    // An error message without a code is the acknowledgement.
                    NetlinkPayload::Error(e) if e.code.is_none() => return Ok(out),
                    NetlinkPayload::Error(e) => return Err(io(e.to_io())),
                    NetlinkPayload::InnerMessage(m) => out.push(m),
                    _ => {}
                }
            }
        }
    }
}
