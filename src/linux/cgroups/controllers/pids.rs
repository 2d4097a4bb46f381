//! pids: pids.limit, and the pids statistics.
//!
//! Same file on both versions (pids.max). As in runc, a positive limit is
//! written as is, a negative one means "max", and 0 means "not set" (the
//! spec's type cannot tell 0 from absent).

use std::path::Path;

use oci_spec::runtime::LinuxResources;
use serde::Serialize;

use super::{Controller, Ctx};
use crate::linux::cgroups::error::Result;
use crate::linux::cgroups::layout::Subsystem;

pub struct Pids;

fn limit(res: &LinuxResources) -> Option<i64> {
    res.pids().as_ref().map(|p| p.limit()).filter(|l| *l != 0)
}

impl Controller for Pids {
    const SUBSYSTEM: Subsystem = Subsystem::Pids;

    fn requested(res: &LinuxResources) -> Option<&'static str> {
        limit(res).map(|_| "pids.limit")
    }

    fn validate(_res: &LinuxResources, _v2: bool) -> Result<()> {
        Ok(())
    }

    fn apply(ctx: &Ctx<'_>, res: &LinuxResources) -> Result<()> {
        if let Some(l) = limit(res) {
            let v = if l > 0 { l.to_string() } else { "max".to_string() };
            ctx.write("pids.limit", "pids.max", &v)?;
        }
        Ok(())
    }
}

/// Process counts for `events --stats`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PidsStats {
    pub current: u64,
    /// None when unlimited.
    pub limit: Option<u64>,
}

/// Reads pids.current and pids.max with cgroups-rs's pids controller.
pub fn stats(dir: &Path, v2: bool) -> PidsStats {
    let c = cgroups_rs::fs::pid::PidController::new(dir.to_path_buf(), dir.to_path_buf(), v2);
    let limit = match c.get_pid_max() {
        Ok(cgroups_rs::fs::MaxValue::Value(v)) => u64::try_from(v).ok(),
        _ => None,
    };
    PidsStats { current: c.get_pid_current().unwrap_or(0), limit }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::linux::cgroups::controllers::test_support::{res, Dir};

    #[test]
    fn limit_max_and_unset() {
        for v2 in [false, true] {
            let d = Dir::new(v2, &[("pids.max", "max")]);
            d.apply::<Pids>(&res(r#"{"pids":{"limit":64}}"#)).unwrap();
            assert_eq!(d.get("pids.max"), "64");
            d.apply::<Pids>(&res(r#"{"pids":{"limit":-1}}"#)).unwrap();
            assert_eq!(d.get("pids.max"), "max");
            d.sys.clear_writes();
            let r = res(r#"{"pids":{"limit":0}}"#);
            assert_eq!(Pids::requested(&r), None);
            d.apply::<Pids>(&r).unwrap();
            assert!(d.writes().is_empty());
        }
    }

    #[test]
    fn missing_controller_file_is_named() {
        let d = Dir::new(false, &[]);
        let e = d.apply::<Pids>(&res(r#"{"pids":{"limit":5}}"#)).unwrap_err().to_string();
        assert!(e.contains("linux.resources.pids.limit") && e.contains("pids.max"), "{e}");
    }

    #[test]
    fn stats_read_current_and_max() {
        let d = Dir::new(false, &[("pids.max", "64\n"), ("pids.current", "3\n")]);
        assert_eq!(stats(d.dir(), false), PidsStats { current: 3, limit: Some(64) });
        let d = Dir::new(true, &[("pids.max", "max\n"), ("pids.current", "1\n")]);
        assert_eq!(stats(d.dir(), true), PidsStats { current: 1, limit: None });
    }
}
