//! Fuzz target: see amphi::fuzzing::agent.
fn main() {
    afl::fuzz!(|data: &[u8]| amphi::fuzzing::agent::frames(data));
}
