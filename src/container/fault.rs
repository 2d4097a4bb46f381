//! Named points where a test can make amphi die as a `kill -9` would, at a
//! moment chosen exactly rather than by a random delay: with
//! `AMPHI_FAULT=<point>` in its environment, a process SIGKILLs itself
//! when it reaches that point. The crash-consistency test
//! (tests/crash/kill9.sh) walks every point; docs/security.md lists them.
//! Unset, a point costs one comparison after the first.

use std::sync::OnceLock;

/// The environment variable naming the point to die at.
pub const ENV: &str = "AMPHI_FAULT";

/// Every point, in the order a lifecycle reaches them.
pub const POINTS: &[&str] = &[
    "create:planned",
    "create:sandbox-made",
    "create:recorded",
    "create:committed",
    "start:released",
    "delete:killed",
    "delete:destroyed",
];

/// Dies here (SIGKILL to this process) when `AMPHI_FAULT` names `name`.
pub fn point(name: &str) {
    static WANT: OnceLock<Option<String>> = OnceLock::new();
    debug_assert!(POINTS.contains(&name), "fault point {name} is not listed in POINTS");
    if WANT.get_or_init(|| std::env::var(ENV).ok()).as_deref() == Some(name) {
        crate::logging::debug(&format!("{ENV}={name}: killing this process here"));
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
    }
}
