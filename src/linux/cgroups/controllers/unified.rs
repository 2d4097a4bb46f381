//! unified: `linux.resources.unified`, raw cgroup v2 files (such as
//! memory.high) written as given, after every other controller so they win.
//! Only on a pure v2 host: on v1 and hybrid hosts the spec's v1 fields are the
//! interface. Keys must be plain file names of a controller or of cgroup.*
//! settings; amphi's own management files are refused.

use oci_spec::runtime::LinuxResources;

use super::{Controller, Ctx};
use crate::linux::cgroups::error::{CgroupError, Result};
use crate::linux::cgroups::layout::Subsystem;

pub struct Unified;

/// Files amphi manages itself.
const RESERVED: [&str; 7] = [
    "cgroup.procs",
    "cgroup.threads",
    "cgroup.subtree_control",
    "cgroup.type",
    "cgroup.freeze",
    "cgroup.kill",
    "cgroup.events",
];

fn entries(res: &LinuxResources) -> Vec<(&String, &String)> {
    let mut v: Vec<_> = res.unified().iter().flatten().collect();
    v.sort();
    v
}

/// The controllers the keys belong to (they must be enabled for the files to exist).
pub fn controllers(res: &LinuxResources) -> Vec<Subsystem> {
    let mut out: Vec<Subsystem> = entries(res)
        .into_iter()
        .filter_map(|(k, _)| k.split_once('.').map(|(c, _)| c))
        .filter(|c| *c != "cgroup")
        .map(Subsystem::parse)
        .collect();
    out.sort();
    out.dedup();
    out
}

impl Controller for Unified {
    const SUBSYSTEM: Subsystem = Subsystem::Other(String::new());

    fn requested(res: &LinuxResources) -> Option<&'static str> {
        (!entries(res).is_empty()).then_some("unified")
    }

    fn validate(res: &LinuxResources, v2: bool) -> Result<()> {
        let e = entries(res);
        if e.is_empty() {
            return Ok(());
        }
        if !v2 {
            return Err(CgroupError::unsupported(
                "unified",
                "it needs a pure cgroup v2 host; use the v1 fields of linux.resources",
            ));
        }
        for (k, _) in e {
            let plain = !k.is_empty() && !k.contains('/') && k != "." && k != ".." && k.contains('.');
            if !plain || RESERVED.contains(&k.as_str()) {
                return Err(CgroupError::invalid(
                    format!("unified[{k:?}]"),
                    format!("{k:?}"),
                    "use the name of a cgroup v2 interface file such as \"memory.high\"; amphi manages cgroup.procs, cgroup.subtree_control and the like itself",
                ));
            }
        }
        Ok(())
    }

    fn apply(ctx: &Ctx<'_>, res: &LinuxResources) -> Result<()> {
        for (k, v) in entries(res) {
            ctx.write(&format!("unified[{k:?}]"), k, v)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::linux::cgroups::controllers::test_support::{res, Dir};

    #[test]
    fn writes_raw_files_on_v2_only() {
        let d = Dir::new(true, &[("memory.high", "max"), ("pids.max", "max")]);
        let r = res(r#"{"unified":{"memory.high":"1000000","pids.max":"7"}}"#);
        assert_eq!(controllers(&r), vec![Subsystem::Memory, Subsystem::Pids]);
        d.apply::<Unified>(&r).unwrap();
        assert_eq!(d.get("memory.high"), "1000000");
        assert_eq!(d.get("pids.max"), "7");
        let e = Dir::new(false, &[]).apply::<Unified>(&r).unwrap_err().to_string();
        assert!(e.contains("unified is not supported") && e.contains("pure cgroup v2"), "{e}");
        for bad in ["cgroup.procs", "../x.y", "nodot", "a/b.c"] {
            let r = res(&format!(r#"{{"unified":{{"{bad}":"1"}}}}"#));
            assert!(d.apply::<Unified>(&r).is_err(), "{bad}");
        }
        let e = d.apply::<Unified>(&res(r#"{"unified":{"io.nope":"1"}}"#)).unwrap_err().to_string();
        assert!(e.contains("unified[\"io.nope\"]") && e.contains("has no io.nope"), "{e}");
    }
}
