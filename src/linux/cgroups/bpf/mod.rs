//! The cgroup v2 device filter: an eBPF program of type
//! BPF_PROG_TYPE_CGROUP_DEVICE compiled from the container's device rules
//! ([`program`]), the bytes emitted by our own small emitter ([`insn`]), and
//! the bpf(2) calls that load and attach it ([`sys`]).

pub mod insn;
#[cfg(any(test, feature = "test-utils"))]
pub mod interp;
pub mod program;
pub mod sys;

pub use insn::Insn;
pub use program::device_filter;
