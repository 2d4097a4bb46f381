//! containerd-shim-amphi-v2: the containerd shim (runtime v2) for amphi.
//!
//! containerd starts one shim per container (`ctr run --runtime
//! io.containerd.amphi.v2`); the shim serves containerd's Task API over
//! ttrpc and carries out each call with the `amphi` binary, as containerd's
//! runc shim does with runc, so both of amphi's isolations work through it.
//! It reaps the container's init, reports its exit, and relays its stdio.
//! See docs/shim.md.

mod bootstrap;
mod error;
mod events;
mod exec;
mod options;
mod process;
mod reaper;
mod rootfs;
mod runtime;
mod service;
mod stats;
mod stdio;

fn main() -> std::process::ExitCode {
    bootstrap::main()
}
