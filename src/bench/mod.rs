//! `amphi bench`: the same workloads in both isolations (and, where they are
//! installed, in runc and crun), measured side by side with interleaved runs,
//! and reported as a table, JSON and a self-contained HTML page. The runs go
//! through the runtimes' command lines, exactly as a user's client would, so
//! the figures include everything a user waits for.

pub mod model;
pub mod report;
pub mod stats;
