//! Fuzz target: see amphi::fuzzing::spec.
fn main() {
    afl::fuzz!(|data: &[u8]| amphi::fuzzing::spec::config_json(data));
}
