//! freezer: no spec field, but pause/resume and `kill --all` rely on it. v1
//! uses freezer.state (FROZEN / THAWED, with FREEZING in between); v2 the
//! core files cgroup.freeze and cgroup.events (`frozen 1`).
//!
//! Freezing waits until the kernel reports the cgroup frozen, polling with
//! short, growing sleeps; on v1 it writes FROZEN again now and then, because
//! a task caught mid-vfork can keep a cgroup in FREEZING until retried. If the
//! cgroup does not freeze in time it is thawed again and the caller told so.

use std::path::Path;
use std::time::Duration;

use oci_spec::runtime::LinuxResources;
use serde::{Deserialize, Serialize};

use super::{Controller, Ctx};
use crate::linux::cgroups::error::{CgroupError, Result};
use crate::linux::cgroups::layout::Subsystem;
use crate::linux::cgroups::sys::CgroupSys;

pub struct Freezer;

impl Controller for Freezer {
    const SUBSYSTEM: Subsystem = Subsystem::Freezer;

    fn requested(_res: &LinuxResources) -> Option<&'static str> {
        None
    }

    fn validate(_res: &LinuxResources, _v2: bool) -> Result<()> {
        Ok(())
    }

    fn apply(_ctx: &Ctx<'_>, _res: &LinuxResources) -> Result<()> {
        Ok(())
    }
}

/// Whether a cgroup's processes run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FreezerState {
    Thawed,
    /// Asked to freeze, not all tasks stopped yet.
    Freezing,
    Frozen,
}

/// How long freezing may take before it is undone.
pub const FREEZE_TIMEOUT: Duration = Duration::from_secs(2);

fn write(sys: &dyn CgroupSys, dir: &Path, file: &str, v: &str) -> Result<()> {
    let p = dir.join(file);
    sys.write(&p, v).map_err(|e| CgroupError::file("write", p, e))
}

fn read(sys: &dyn CgroupSys, dir: &Path, file: &str) -> Result<String> {
    let p = dir.join(file);
    sys.read(&p).map_err(|e| CgroupError::file("read", p, e))
}

pub fn state(sys: &dyn CgroupSys, dir: &Path, v2: bool) -> Result<FreezerState> {
    if v2 {
        let asked = read(sys, dir, "cgroup.freeze")?.trim() == "1";
        let frozen = read(sys, dir, "cgroup.events")?.lines().any(|l| l.trim() == "frozen 1");
        return Ok(match (asked, frozen) {
            (_, true) => FreezerState::Frozen,
            (true, false) => FreezerState::Freezing,
            (false, false) => FreezerState::Thawed,
        });
    }
    Ok(match read(sys, dir, "freezer.state")?.trim() {
        "FROZEN" => FreezerState::Frozen,
        "FREEZING" => FreezerState::Freezing,
        _ => FreezerState::Thawed,
    })
}

/// Freezes every task of the cgroup and waits until they are all stopped.
pub fn freeze(sys: &dyn CgroupSys, dir: &Path, v2: bool) -> Result<()> {
    let (file, on) = if v2 { ("cgroup.freeze", "1") } else { ("freezer.state", "FROZEN") };
    write(sys, dir, file, on)?;
    let mut waited = Duration::ZERO;
    let mut nap = Duration::from_micros(100);
    let mut tries = 0u32;
    loop {
        let s = state(sys, dir, v2)?;
        if s == FreezerState::Frozen {
            return Ok(());
        }
        if waited >= FREEZE_TIMEOUT {
            let _ = thaw(sys, dir, v2);
            return Err(CgroupError::FreezeTimeout {
                path: dir.to_path_buf(),
                millis: waited.as_millis() as u64,
                state: format!("{s:?}"),
            });
        }
        sys.sleep(nap);
        waited += nap;
        nap = (nap * 2).min(Duration::from_millis(10));
        tries += 1;
        if !v2 && tries % 25 == 0 {
            write(sys, dir, file, on)?;
        }
    }
}

/// Lets the tasks run again.
pub fn thaw(sys: &dyn CgroupSys, dir: &Path, v2: bool) -> Result<()> {
    if v2 {
        write(sys, dir, "cgroup.freeze", "0")
    } else {
        write(sys, dir, "freezer.state", "THAWED")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::linux::cgroups::controllers::test_support::Dir;

    #[test]
    fn v1_freeze_thaw_state() {
        let d = Dir::new(false, &[("freezer.state", "THAWED\n")]);
        assert_eq!(state(&d.sys, d.dir(), false).unwrap(), FreezerState::Thawed);
        freeze(&d.sys, d.dir(), false).unwrap();
        assert_eq!(d.get("freezer.state"), "FROZEN");
        assert_eq!(state(&d.sys, d.dir(), false).unwrap(), FreezerState::Frozen);
        thaw(&d.sys, d.dir(), false).unwrap();
        assert_eq!(state(&d.sys, d.dir(), false).unwrap(), FreezerState::Thawed);
    }

    #[test]
    fn v2_waits_for_the_frozen_event() {
        let d = Dir::new(true, &[("cgroup.freeze", "0"), ("cgroup.events", "populated 1\nfrozen 0\n")]);
        freeze(&d.sys, d.dir(), true).unwrap();
        assert_eq!(state(&d.sys, d.dir(), true).unwrap(), FreezerState::Frozen);
        thaw(&d.sys, d.dir(), true).unwrap();
        assert_eq!(state(&d.sys, d.dir(), true).unwrap(), FreezerState::Thawed);
    }

    #[test]
    fn stuck_freezing_times_out_and_thaws() {
        let d = Dir::new(false, &[("freezer.state", "FREEZING")]);
        // The kernel keeps saying FREEZING whatever is written.
        d.sys.ignore_writes(&d.file("freezer.state"));
        let e = freeze(&d.sys, d.dir(), false).unwrap_err();
        assert!(matches!(e, CgroupError::FreezeTimeout { .. }), "{e}");
        assert!(e.to_string().contains("did not freeze") && e.to_string().contains("Freezing"), "{e}");
        assert!(d.sys.slept() >= FREEZE_TIMEOUT);
        let w = d.writes();
        assert!(w.iter().filter(|(_, v)| v == "FROZEN").count() > 2, "FROZEN is written again now and then");
        assert_eq!(w.last().unwrap().1, "THAWED");
    }
}
