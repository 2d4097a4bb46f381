//! Stable exit codes of the `amphi` binary (documented in docs/exit-codes.md).
//!
//! runc exits 1 for every failure and clients only test for non-zero, so 1
//! stays the general failure; the other codes let scripts tell classes of
//! failure apart without parsing messages.

/// Any failure not listed below.
pub const GENERAL: u8 = 1;
/// Bad command-line usage (unknown flag, missing argument).
pub const USAGE: u8 = 2;
/// The container does not exist.
pub const NOT_FOUND: u8 = 3;
/// The operation does not fit the container's state, or the id is taken.
pub const CONFLICT: u8 = 4;
/// Bad input: an invalid id, bundle, config.json or signal.
pub const BAD_INPUT: u8 = 5;
/// The host or this build lacks what the request needs.
pub const UNSUPPORTED: u8 = 6;

// VM isolation (`amphi vm ...` and the VMM process), 20-29.
/// The host cannot run a stock guest: no /dev/kvm, no permission, PVM.
pub const VM_HOST_UNSUPPORTED: u8 = 20;
/// The guest did not reach the agent within the timeout.
pub const VM_BOOT_TIMEOUT: u8 = 21;
/// The guest kernel panicked.
pub const VM_GUEST_PANIC: u8 = 22;
/// The guest ended (powered off, halted) before it should have.
pub const VM_GUEST_FAILED: u8 = 23;
/// The agent answered, but the protocol exchange failed.
pub const VM_AGENT_PROTOCOL: u8 = 24;
/// The guest rebooted (the VMM ends the VM rather than restart it).
pub const VM_GUEST_REBOOT: u8 = 25;
