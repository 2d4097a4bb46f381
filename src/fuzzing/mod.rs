//! Harnesses for the coverage-guided fuzz targets in `fuzz/` (feature
//! `fuzzing`, never on in a shipped build). Each takes the fuzzer's bytes,
//! drives one untrusted-input surface the way its real caller does, and
//! panics only when an invariant is broken: any other panic, an abort
//! (release builds abort on panic) or a hang is a finding.
//!
//! They live in the library rather than in the fuzz crate because they
//! reach crate-internal state (a device's queues, the muxer's limits)
//! without making it public. The unit tests below replay every seed
//! (`fuzz/corpus/<target>/`) and every input that once broke something
//! (`fuzz/regressions/<target>/`) through the harnesses, so the unit tier
//! keeps the fixes without a fuzzer.

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

#[cfg(test)]
mod tests {
    use std::path::Path;

    /// The seeds and regression inputs of `target`, by file name.
    fn inputs(target: &str) -> Vec<(String, Vec<u8>)> {
        let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
        let mut out = Vec::new();
        for dir in ["corpus", "regressions"] {
            let Ok(entries) = std::fs::read_dir(fuzz.join(dir).join(target)) else { continue };
            for e in entries.flatten() {
                out.push((
                    format!("{dir}/{target}/{}", e.file_name().to_string_lossy()),
                    std::fs::read(e.path()).unwrap(),
                ));
            }
        }
        out.sort();
        out
    }

    fn replay(target: &str, harness: fn(&[u8])) {
        let inputs = inputs(target);
        assert!(!inputs.is_empty(), "fuzz/corpus/{target} has no seeds");
        for (name, data) in inputs {
            // Shown with the panic, should one input break the harness.
            println!("replaying fuzz/{name}");
            harness(&data);
        }
    }

    #[test]
    fn spec_config_inputs_replay() {
        replay("spec_config", super::spec::config_json);
    }

    #[test]
    fn agent_frames_inputs_replay() {
        replay("agent_frames", super::agent::frames);
    }

    #[test]
    fn vsock_device_inputs_replay() {
        replay("vsock_device", super::vsock::device);
    }

    #[test]
    fn virtio_fs_inputs_replay() {
        replay("virtio_fs", super::fs::requests);
    }

    #[test]
    fn modinfo_inputs_replay() {
        replay("modinfo", super::image::modinfo);
    }

    #[test]
    fn cpio_inputs_replay() {
        replay("cpio", super::image::cpio);
    }
}
