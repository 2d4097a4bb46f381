//! Fuzz target: see amphi::fuzzing::vsock.
fn main() {
    afl::fuzz!(|data: &[u8]| amphi::fuzzing::vsock::device(data));
}
