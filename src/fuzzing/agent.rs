//! The agent protocol's receive paths, both sides: the guest agent
//! decoding requests from the host, the host client decoding whatever a
//! (hostile) guest answers.

use std::io::{Read, Write};

use super::Input;
use crate::agent::message::classify_bad_request;
use crate::agent::{read_frame, Client, Request, RequestEnvelope, ResponseEnvelope, MAX_FRAME_LEN};

/// A stream that hands out its bytes in pieces of the sizes given, as a
/// socket may; writes are kept.
struct Chunked<'a> {
    data: &'a [u8],
    sizes: &'a [u8],
    turn: usize,
    written: Vec<u8>,
}

impl Read for Chunked<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let size = self.sizes.get(self.turn % self.sizes.len().max(1)).map_or(buf.len(), |&s| usize::from(s) + 1);
        self.turn += 1;
        let n = size.min(buf.len()).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

impl Write for Chunked<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.written.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The guest agent's side: every frame decoded as a request; what fails
/// to decode is classified for the error answer, as the agent does.
fn guest_side(stream: &mut Chunked<'_>) {
    for _ in 0..64 {
        let payload = match read_frame(stream, MAX_FRAME_LEN) {
            Ok(Some(p)) => p,
            Ok(None) | Err(_) => return,
        };
        assert!(payload.len() <= MAX_FRAME_LEN);
        request_payload(&payload);
    }
}

fn request_payload(payload: &[u8]) {
    match serde_json::from_slice::<RequestEnvelope>(payload) {
        Ok(env) => {
            // A request the agent accepts means the same after a round trip.
            let again = serde_json::to_vec(&env).expect("a request serializes");
            let back: RequestEnvelope = serde_json::from_slice(&again).expect("a serialized request parses");
            assert_eq!(back, env);
        }
        Err(_) => {
            let _ = classify_bad_request(payload);
        }
    }
}

/// The host's side: a client calling the agent over a stream whose
/// replies are the input.
fn host_side(stream: Chunked<'_>) {
    let mut client = Client::new(stream);
    for _ in 0..16 {
        if client.call(Request::Health).is_err() {
            return;
        }
    }
}

pub fn frames(data: &[u8]) {
    let mut input = Input::new(data);
    let mode = input.u8();
    let n_sizes = usize::from(input.u8() % 16);
    let sizes = input.bytes(n_sizes);
    let rest = input.bytes(usize::MAX);
    let stream = || Chunked { data: rest, sizes, turn: 0, written: Vec::new() };
    match mode % 3 {
        0 => guest_side(&mut stream()),
        1 => host_side(stream()),
        _ => {
            // A payload alone, as both sides decode it.
            request_payload(rest);
            let _ = serde_json::from_slice::<ResponseEnvelope>(rest).map(|r| r.into_result());
        }
    }
}
