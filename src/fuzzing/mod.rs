//! Harnesses for the coverage-guided fuzz targets in `fuzz/` (feature
//! `fuzzing`, never on in a shipped build). Each takes the fuzzer's bytes,
//! drives one untrusted-input surface the way its real caller does, and
//! panics only when an invariant is broken: any other panic, an abort
//! (release builds abort on panic) or a hang is a finding.
//!
//! They live in the library rather than in the fuzz crate because they
//! reach crate-internal state (a device's queues, the muxer's limits)
//! without making it public.

pub mod agent;
pub mod fs;
pub mod image;
pub mod spec;
pub mod vsock;

/// The fuzzer's bytes, read as a little program of small values. Reading
/// past the end gives zeros, so every input is a complete program.
pub struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Input { data }
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    pub fn u8(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }

    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }

    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }

    pub fn u64(&mut self) -> u64 {
        u64::from(self.u32()) | (u64::from(self.u32()) << 32)
    }

    /// Up to `n` bytes (fewer at the end of the input).
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let (head, rest) = self.data.split_at(n.min(self.data.len()));
        self.data = rest;
        head
    }

    /// One of `choices`, picked by the next byte.
    pub fn pick<T: Copy>(&mut self, choices: &[T]) -> T {
        choices[usize::from(self.u8()) % choices.len()]
    }
}
