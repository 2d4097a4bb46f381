//! Fuzz target: see amphi::fuzzing::fs.
fn main() {
    afl::fuzz!(|data: &[u8]| amphi::fuzzing::fs::requests(data));
}
