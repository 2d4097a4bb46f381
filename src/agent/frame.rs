//! Framing: every message travels as one frame,
//!
//! ```text
//! +--------+--------+---------+-------+------------------+----------------+
//! | 'a'    | 'm'    | version | flags | length (u32, BE) | payload        |
//! +--------+--------+---------+-------+------------------+----------------+
//!   0        1        2         3       4..8               8..8+length
//! ```
//!
//! The magic lets either side say "this is not an amphi agent" instead of
//! misreading garbage as a huge length; the length is checked against a
//! maximum before any payload is read, so a corrupt or hostile peer cannot
//! make the other side allocate without bound. After any framing error the
//! stream is out of step and the connection must be closed.

use std::io::{self, Read, Write};

/// First two bytes of every frame.
pub const FRAME_MAGIC: [u8; 2] = *b"am";
/// Version of the frame layout (not of the message set: see
/// [`super::PROTOCOL_VERSION`]).
pub const FRAME_VERSION: u8 = 1;
/// Bytes before the payload.
pub const FRAME_HEADER_LEN: usize = 8;
/// Largest payload either side sends or accepts (1 MiB).
pub const MAX_FRAME_LEN: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {len} bytes is larger than the maximum of {max} bytes")]
    TooLarge { len: usize, max: usize },
    #[error("connection closed inside a frame ({got} of {expected} bytes read)")]
    Truncated { expected: usize, got: usize },
    #[error("not an amphi agent frame (magic {found:02x?}, expected {FRAME_MAGIC:02x?})")]
    BadMagic { found: [u8; 2] },
    #[error("frame version {found} is not supported (this side speaks version {FRAME_VERSION})")]
    UnsupportedVersion { found: u8 },
    #[error("frame flags {found:#04x} are not supported (no flags are defined)")]
    UnsupportedFlags { found: u8 },
    #[error("agent connection I/O failed")]
    Io(#[from] io::Error),
}

/// Builds the header of a frame carrying `len` payload bytes.
pub fn encode_header(len: usize) -> Result<[u8; FRAME_HEADER_LEN], FrameError> {
    if len > MAX_FRAME_LEN {
        return Err(FrameError::TooLarge { len, max: MAX_FRAME_LEN });
    }
    let mut h = [0u8; FRAME_HEADER_LEN];
    h[0..2].copy_from_slice(&FRAME_MAGIC);
    h[2] = FRAME_VERSION;
    h[3] = 0;
    h[4..8].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(h)
}

/// Checks a header and returns the payload length it announces.
pub fn decode_header(h: &[u8; FRAME_HEADER_LEN], max: usize) -> Result<usize, FrameError> {
    if h[0..2] != FRAME_MAGIC {
        return Err(FrameError::BadMagic { found: [h[0], h[1]] });
    }
    if h[2] != FRAME_VERSION {
        return Err(FrameError::UnsupportedVersion { found: h[2] });
    }
    if h[3] != 0 {
        return Err(FrameError::UnsupportedFlags { found: h[3] });
    }
    let len = u32::from_be_bytes([h[4], h[5], h[6], h[7]]) as usize;
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    Ok(len)
}

/// Writes `payload` as one frame (header and payload in one write where the
/// stream allows, so a frame is never interleaved with another writer's).
pub fn write_frame<W: Write>(w: &mut W, payload: &[u8]) -> Result<(), FrameError> {
    let header = encode_header(payload.len())?;
    let mut buf = Vec::with_capacity(FRAME_HEADER_LEN + payload.len());
    buf.extend_from_slice(&header);
    buf.extend_from_slice(payload);
    w.write_all(&buf)?;
    w.flush()?;
    Ok(())
}

/// Reads exactly `buf.len()` bytes; returns how many were read before EOF.
fn read_full<R: Read>(r: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// Reads one frame. `Ok(None)`: the peer closed the stream between frames.
pub fn read_frame<R: Read>(r: &mut R, max: usize) -> Result<Option<Vec<u8>>, FrameError> {
    let mut header = [0u8; FRAME_HEADER_LEN];
    match read_full(r, &mut header)? {
        0 => return Ok(None),
        n if n < FRAME_HEADER_LEN => return Err(FrameError::Truncated { expected: FRAME_HEADER_LEN, got: n }),
        _ => {}
    }
    let len = decode_header(&header, max)?;
    let mut payload = vec![0u8; len];
    let got = read_full(r, &mut payload)?;
    if got < len {
        return Err(FrameError::Truncated { expected: len, got });
    }
    Ok(Some(payload))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    #[test]
    fn a_frame_round_trips() {
        let mut buf = Vec::new();
        write_frame(&mut buf, b"{\"x\":1}").unwrap();
        assert_eq!(&buf[..4], b"am\x01\x00");
        assert_eq!(&buf[4..8], &7u32.to_be_bytes());
        let mut r = Cursor::new(buf);
        assert_eq!(read_frame(&mut r, MAX_FRAME_LEN).unwrap().unwrap(), b"{\"x\":1}");
        assert!(read_frame(&mut r, MAX_FRAME_LEN).unwrap().is_none(), "clean EOF after the frame");
    }

    #[test]
    fn an_empty_payload_is_a_valid_frame() {
        let mut buf = Vec::new();
        write_frame(&mut buf, b"").unwrap();
        assert_eq!(read_frame(&mut Cursor::new(buf), 16).unwrap().unwrap(), b"");
    }

    #[test]
    fn an_oversized_frame_is_refused_before_its_payload_is_read() {
        let mut buf = encode_header(64).unwrap().to_vec();
        buf.extend_from_slice(&[b'x'; 64]);
        match read_frame(&mut Cursor::new(buf), 63) {
            Err(FrameError::TooLarge { len: 64, max: 63 }) => {}
            other => panic!("unexpected {other:?}"),
        }
        // A header claiming 4 GiB is refused without allocating it.
        let mut huge = b"am\x01\x00".to_vec();
        huge.extend_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(read_frame(&mut Cursor::new(huge), MAX_FRAME_LEN), Err(FrameError::TooLarge { .. })));
    }

    #[test]
    fn the_writer_refuses_to_send_an_oversized_frame() {
        let payload = vec![0u8; MAX_FRAME_LEN + 1];
        let mut out = Vec::new();
        assert!(matches!(write_frame(&mut out, &payload), Err(FrameError::TooLarge { .. })));
        assert!(out.is_empty(), "nothing is written for a refused frame");
    }

    #[test]
    fn a_truncated_header_is_reported() {
        match read_frame(&mut Cursor::new(b"am\x01".to_vec()), MAX_FRAME_LEN) {
            Err(FrameError::Truncated { expected: 8, got: 3 }) => {}
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn a_truncated_payload_is_reported() {
        let mut buf = encode_header(10).unwrap().to_vec();
        buf.extend_from_slice(b"12345");
        match read_frame(&mut Cursor::new(buf), MAX_FRAME_LEN) {
            Err(FrameError::Truncated { expected: 10, got: 5 }) => {}
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn garbage_is_not_mistaken_for_a_frame() {
        assert!(matches!(
            read_frame(&mut Cursor::new(b"HTTP/1.1 200 OK\r\n".to_vec()), MAX_FRAME_LEN),
            Err(FrameError::BadMagic { found: [b'H', b'T'] })
        ));
    }

    #[test]
    fn unknown_versions_and_flags_are_refused() {
        let mut h = encode_header(0).unwrap();
        h[2] = 2;
        assert!(matches!(decode_header(&h, 16), Err(FrameError::UnsupportedVersion { found: 2 })));
        let mut h = encode_header(0).unwrap();
        h[3] = 0x80;
        assert!(matches!(decode_header(&h, 16), Err(FrameError::UnsupportedFlags { found: 0x80 })));
    }

    #[test]
    fn frames_split_across_reads_are_reassembled() {
        /// Hands out one byte per read call, like a slow socket.
        struct Trickle(Cursor<Vec<u8>>);
        impl Read for Trickle {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                let n = buf.len().min(1);
                self.0.read(&mut buf[..n])
            }
        }
        let mut buf = Vec::new();
        write_frame(&mut buf, b"hello").unwrap();
        write_frame(&mut buf, b"world").unwrap();
        let mut r = Trickle(Cursor::new(buf));
        assert_eq!(read_frame(&mut r, 16).unwrap().unwrap(), b"hello");
        assert_eq!(read_frame(&mut r, 16).unwrap().unwrap(), b"world");
    }
}
