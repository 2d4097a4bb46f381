//! Fuzz target: see amphi::fuzzing::image.
fn main() {
    afl::fuzz!(|data: &[u8]| amphi::fuzzing::image::modinfo(data));
}
