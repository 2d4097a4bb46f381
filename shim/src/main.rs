//! containerd-shim-amphi-v2.

fn main() {}
