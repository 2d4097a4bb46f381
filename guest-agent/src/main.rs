//! `amphi-agent`: PID 1 in the guest.

fn main() {}
