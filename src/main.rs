//! The `amphi` binary: parse, dispatch, print the error chain once, exit.

fn main() {}
