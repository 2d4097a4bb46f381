//! cpuset: cpu.cpus and cpu.mems of the spec.
//!
//! A new v1 cpuset cgroup starts with empty cpuset.cpus and cpuset.mems, and
//! the kernel refuses to move a task into it until both are set, so every
//! directory amphi creates gets its parent's values copied down
//! ([`populate_new_dirs`]), except where the spec sets the value itself. v2
//! inherits effective values and needs none of this.

use std::path::PathBuf;

use oci_spec::runtime::LinuxResources;

use super::{Controller, Ctx};
use crate::linux::cgroups::error::{CgroupError, Result};
use crate::linux::cgroups::layout::Subsystem;
use crate::linux::cgroups::sys::CgroupSys;

pub struct Cpuset;

fn cpus(res: &LinuxResources) -> Option<&str> {
    res.cpu().as_ref()?.cpus().as_deref().filter(|s| !s.is_empty())
}

fn mems(res: &LinuxResources) -> Option<&str> {
    res.cpu().as_ref()?.mems().as_deref().filter(|s| !s.is_empty())
}

fn check_list(field: &str, v: &str) -> Result<()> {
    let ok = v.split(',').all(|part| {
        let mut it = part.splitn(2, '-');
        let a = it.next().unwrap_or("");
        let b = it.next();
        let num = |s: &str| !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit());
        num(a) && b.is_none_or(|b| num(b) && a.parse::<u32>().ok() <= b.parse::<u32>().ok())
    });
    if !ok {
        return Err(CgroupError::invalid(field, format!("{v:?}"), "use a list such as \"0-3,6\""));
    }
    Ok(())
}

impl Controller for Cpuset {
    const SUBSYSTEM: Subsystem = Subsystem::Cpuset;

    fn requested(res: &LinuxResources) -> Option<&'static str> {
        if cpus(res).is_some() {
            Some("cpu.cpus")
        } else if mems(res).is_some() {
            Some("cpu.mems")
        } else {
            None
        }
    }

    fn validate(res: &LinuxResources, _v2: bool) -> Result<()> {
        if let Some(c) = cpus(res) {
            check_list("cpu.cpus", c)?;
        }
        if let Some(m) = mems(res) {
            check_list("cpu.mems", m)?;
        }
        Ok(())
    }

    fn apply(ctx: &Ctx<'_>, res: &LinuxResources) -> Result<()> {
        if let Some(c) = cpus(res) {
            ctx.write("cpu.cpus", "cpuset.cpus", c)?;
        }
        if let Some(m) = mems(res) {
            ctx.write("cpu.mems", "cpuset.mems", m)?;
        }
        Ok(())
    }
}

/// Copies cpuset.cpus and cpuset.mems from parent to child down `dirs` (v1
/// cpuset cgroups this manager just created, outermost first, so their own
/// values are known to be empty). The first parent is read once; each new
/// directory then passes the same values down. For the last directory (the
/// container's), values the spec sets are skipped: `apply` writes them before
/// any task joins.
pub fn populate_new_dirs(sys: &dyn CgroupSys, dirs: &[PathBuf], res: Option<&LinuxResources>) -> Result<()> {
    let Some(top) = dirs.first().and_then(|d| d.parent()) else { return Ok(()) };
    let mut values = Vec::with_capacity(2);
    for file in ["cpuset.cpus", "cpuset.mems"] {
        let p = top.join(file);
        values.push(sys.read(&p).map_err(|e| CgroupError::file("read", p, e))?.trim().to_string());
    }
    for (i, dir) in dirs.iter().enumerate() {
        let last = i + 1 == dirs.len();
        for ((file, requested), v) in
            [("cpuset.cpus", res.and_then(cpus)), ("cpuset.mems", res.and_then(mems))].into_iter().zip(&values)
        {
            if last && requested.is_some() {
                continue;
            }
            let p = dir.join(file);
            sys.write(&p, v).map_err(|e| CgroupError::file("write", p, e))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::linux::cgroups::controllers::test_support::{res, Dir};

    #[test]
    fn writes_both_versions() {
        for v2 in [false, true] {
            let d = Dir::new(v2, &[("cpuset.cpus", ""), ("cpuset.mems", "")]);
            let r = res(r#"{"cpu":{"cpus":"0-1","mems":"0"}}"#);
            assert_eq!(Cpuset::requested(&r), Some("cpu.cpus"));
            d.apply::<Cpuset>(&r).unwrap();
            assert_eq!(d.get("cpuset.cpus"), "0-1");
            assert_eq!(d.get("cpuset.mems"), "0");
        }
        assert_eq!(Cpuset::requested(&res(r#"{"cpu":{"cpus":"","shares":5}}"#)), None);
    }

    #[test]
    fn bad_lists_are_refused() {
        let d = Dir::new(false, &[("cpuset.cpus", "")]);
        for bad in ["a", "1-", "3-1", "1,,2", " 1"] {
            let e = d.apply::<Cpuset>(&res(&format!(r#"{{"cpu":{{"cpus":"{bad}"}}}}"#))).unwrap_err().to_string();
            assert!(e.contains("cpu.cpus: invalid value"), "{e}");
        }
        d.sys.fail_writes(&d.file("cpuset.cpus"), &[libc::EINVAL]);
        let e = d.apply::<Cpuset>(&res(r#"{"cpu":{"cpus":"0-63"}}"#)).unwrap_err().to_string();
        assert!(e.contains("cpuset.cpus") && e.contains("\"0-63\""), "{e}");
    }

    #[test]
    fn new_dirs_inherit_unless_requested() {
        let d = Dir::new(false, &[("cpuset.cpus", "0-3\n"), ("cpuset.mems", "0\n")]);
        let a = d.path.join("a");
        let b = a.join("b");
        for dir in [&a, &b] {
            std::fs::create_dir(dir).unwrap();
            std::fs::write(dir.join("cpuset.cpus"), "").unwrap();
            std::fs::write(dir.join("cpuset.mems"), "").unwrap();
        }
        populate_new_dirs(&d.sys, &[a.clone(), b.clone()], Some(&res(r#"{"cpu":{"cpus":"1"}}"#))).unwrap();
        assert_eq!(std::fs::read_to_string(a.join("cpuset.cpus")).unwrap(), "0-3");
        assert_eq!(std::fs::read_to_string(a.join("cpuset.mems")).unwrap(), "0");
        assert_eq!(std::fs::read_to_string(b.join("cpuset.cpus")).unwrap(), "");
        assert_eq!(std::fs::read_to_string(b.join("cpuset.mems")).unwrap(), "0");
    }
}
