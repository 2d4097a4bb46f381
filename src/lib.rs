//! amphi: one OCI runtime, two isolations.
//!
//! The same bundle runs either as a Linux container ([`linux`]) or inside a
//! KVM microVM driven by amphi's own VMM ([`vm`]). Everything a client of the
//! runc CLI can observe (state, exit codes, stdio, errors) lives in
//! [`container`], which talks to either isolation through one trait, so the
//! commands never branch on the isolation themselves.

pub mod agent;
pub mod bench;
pub mod container;
pub mod exit;
pub mod features;
// The fuzz harnesses; the unit tests replay the corpora through them.
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
pub mod isolation;
pub mod linux;
pub mod logging;
pub mod spec;
pub mod vm;
