//! The host <-> guest agent protocol: the one definition both the VMM side
//! (`amphi vm ...`, [`crate::vm::agent_client`]) and `amphi-agent` use.
//!
//! A connection carries length-prefixed frames ([`frame`]) whose payloads are
//! serde_json envelopes of typed requests and responses ([`message`]). The
//! first request on every control connection is a handshake that exchanges
//! both sides' protocol versions; anything else first is refused with
//! [`message::ErrorCode::HandshakeRequired`]. docs/agent-protocol.md is the
//! written specification; keep it in step with this module.

pub mod container;
pub mod frame;
pub mod message;
pub mod relay;

pub use frame::{read_frame, write_frame, FrameError, FRAME_HEADER_LEN, FRAME_MAGIC, FRAME_VERSION, MAX_FRAME_LEN};
pub use message::{
    AgentError, ErrorCode, GuestInterface, HandshakeRequest, HandshakeResponse, HealthResponse, NetworkRequest,
    NetworkResponse, ProtocolVersion, Request, RequestEnvelope, Response, ResponseEnvelope, RestoredReply,
    RestoredRequest, ShutdownAction, ShutdownRequest, AGENT_VSOCK_PORT, LISTENING_MARKER, PROTOCOL_VERSION,
    RESTORE_SEED_LEN, TEMPLATE_CMDLINE_WORD,
};

use std::io::{Read, Write};

/// Errors of one protocol exchange, as either side sees them.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("agent protocol framing failed")]
    Frame(#[from] FrameError),
    #[error("agent protocol payload is not a valid message")]
    Payload(#[source] serde_json::Error),
    #[error("the agent answered request {got} while request {expected} was outstanding")]
    IdMismatch { expected: u64, got: u64 },
    #[error("the agent answered a {got} request with a {sent} response")]
    WrongResponse { sent: &'static str, got: &'static str },
    #[error("the agent refused the request: {0}")]
    Agent(AgentError),
}

/// Encodes `value` as JSON and writes it as one frame.
pub fn send<W: Write, T: serde::Serialize>(w: &mut W, value: &T) -> Result<(), ProtocolError> {
    let payload = serde_json::to_vec(value).map_err(ProtocolError::Payload)?;
    write_frame(w, &payload)?;
    Ok(())
}

/// Reads one frame and decodes its JSON payload. `Ok(None)` means the peer
/// closed the connection cleanly between frames.
pub fn receive<R: Read, T: serde::de::DeserializeOwned>(r: &mut R) -> Result<Option<T>, ProtocolError> {
    match read_frame(r, MAX_FRAME_LEN)? {
        None => Ok(None),
        Some(payload) => serde_json::from_slice(&payload).map(Some).map_err(ProtocolError::Payload),
    }
}

/// The client half: numbers requests and matches responses to them.
pub struct Client<S> {
    stream: S,
    next_id: u64,
}

impl<S: Read + Write> Client<S> {
    pub fn new(stream: S) -> Self {
        Client { stream, next_id: 1 }
    }

    pub fn get_ref(&self) -> &S {
        &self.stream
    }

    pub fn get_mut(&mut self) -> &mut S {
        &mut self.stream
    }

    pub fn into_inner(self) -> S {
        self.stream
    }

    /// Sends one request and waits for its response.
    pub fn call(&mut self, request: Request) -> Result<Response, ProtocolError> {
        let id = self.next_id;
        self.next_id += 1;
        let sent = request.method();
        send(&mut self.stream, &RequestEnvelope { id, request })?;
        let reply: ResponseEnvelope = receive(&mut self.stream)?
            .ok_or(ProtocolError::Frame(FrameError::Truncated { expected: FRAME_HEADER_LEN, got: 0 }))?;
        if reply.id != id {
            return Err(ProtocolError::IdMismatch { expected: id, got: reply.id });
        }
        let response = reply.into_result().map_err(ProtocolError::Agent)?;
        if response.method() != sent {
            return Err(ProtocolError::WrongResponse { sent, got: response.method() });
        }
        Ok(response)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    /// A duplex stream over two buffers: reads the scripted input, records writes.
    struct Duplex {
        input: Cursor<Vec<u8>>,
        output: Vec<u8>,
    }
    impl Read for Duplex {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            self.input.read(buf)
        }
    }
    impl Write for Duplex {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.output.write(buf)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn scripted(responses: &[ResponseEnvelope]) -> Duplex {
        let mut input = Vec::new();
        for r in responses {
            send(&mut input, r).unwrap();
        }
        Duplex { input: Cursor::new(input), output: Vec::new() }
    }

    #[test]
    fn client_matches_ids_and_decodes_the_response() {
        let reply = ResponseEnvelope::ok(1, Response::Health(HealthResponse::default()));
        let mut client = Client::new(scripted(&[reply]));
        let got = client.call(Request::Health).unwrap();
        assert!(matches!(got, Response::Health(_)));
        let sent: RequestEnvelope = receive(&mut Cursor::new(client.stream.output.clone())).unwrap().unwrap();
        assert_eq!(sent.id, 1);
        assert!(matches!(sent.request, Request::Health));
    }

    #[test]
    fn client_rejects_a_response_to_another_request() {
        let reply = ResponseEnvelope::ok(7, Response::Health(HealthResponse::default()));
        let mut client = Client::new(scripted(&[reply]));
        assert!(matches!(client.call(Request::Health), Err(ProtocolError::IdMismatch { expected: 1, got: 7 })));
    }

    #[test]
    fn client_surfaces_agent_errors_with_their_code() {
        let reply = ResponseEnvelope::error(1, AgentError::new(ErrorCode::HandshakeRequired, "handshake first"));
        let mut client = Client::new(scripted(&[reply]));
        match client.call(Request::Health) {
            Err(ProtocolError::Agent(e)) => assert_eq!(e.code, ErrorCode::HandshakeRequired),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn client_reports_a_closed_connection_as_truncation() {
        let mut client = Client::new(scripted(&[]));
        assert!(matches!(client.call(Request::Health), Err(ProtocolError::Frame(FrameError::Truncated { .. }))));
    }

    /// A small deterministic generator (xorshift64*), so the fuzz test
    /// below is reproducible without a fuzzing toolchain.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    /// Mutation fuzzing of the receive path: valid frames of every request
    /// kind, bit-flipped, truncated, extended and spliced, must decode or
    /// fail with an error, never panic, and never be read past the maximum.
    #[test]
    fn mutated_frames_never_panic_the_receiver() {
        let seeds: Vec<Vec<u8>> = [
            Request::Handshake(HandshakeRequest { protocol: PROTOCOL_VERSION, host_version: "0.1.0".into() }),
            Request::Health,
            Request::Shutdown(ShutdownRequest { action: ShutdownAction::PowerOff }),
            Request::Restored(RestoredRequest { realtime_ns: 1 << 60, seed: vec![7; 32], generation: 2 }),
        ]
        .into_iter()
        .enumerate()
        .map(|(i, request)| {
            let mut v = Vec::new();
            send(&mut v, &RequestEnvelope { id: i as u64, request }).unwrap();
            v
        })
        .collect();
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for _ in 0..20_000 {
            let mut input = seeds[rng.below(seeds.len())].clone();
            for _ in 0..=rng.below(4) {
                match rng.below(5) {
                    0 if !input.is_empty() => {
                        let i = rng.below(input.len());
                        input[i] ^= 1 << rng.below(8);
                    }
                    1 => input.truncate(rng.below(input.len() + 1)),
                    2 => input.extend((0..rng.below(16)).map(|_| rng.next() as u8)),
                    3 if !input.is_empty() => {
                        let i = rng.below(input.len());
                        input[i] = rng.next() as u8;
                    }
                    0 | 3 => input.push(rng.next() as u8),
                    _ => {
                        let other = &seeds[rng.below(seeds.len())];
                        let cut = rng.below(other.len());
                        input.extend_from_slice(&other[cut..]);
                    }
                }
            }
            let mut r = Cursor::new(&input[..]);
            // Read frames until the stream ends or breaks, as the agent does.
            for _ in 0..4 {
                match read_frame(&mut r, 256) {
                    Ok(Some(payload)) => {
                        assert!(payload.len() <= 256);
                        if serde_json::from_slice::<RequestEnvelope>(&payload).is_err() {
                            let _ = message::classify_bad_request(&payload);
                        }
                    }
                    Ok(None) | Err(_) => break,
                }
            }
        }
    }
}
