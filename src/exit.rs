//! Stable exit codes of the `amphi` binary (documented in docs/exit-codes.md).
//!
//! runc exits 1 for every failure and clients only test for non-zero, so 1
//! stays the general failure; the other codes let scripts tell classes of
//! failure apart without parsing messages.

/// Any failure not listed below.
pub const GENERAL: u8 = 1;
/// Bad command-line usage (unknown flag, missing argument).
pub const USAGE: u8 = 2;
