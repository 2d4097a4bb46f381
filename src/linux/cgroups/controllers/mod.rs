//! One file per controller, each with the same shape: a unit struct
//! implementing [`Controller`] (which spec fields it serves, checks done before
//! anything is created, and the writes for v1 and for v2), plus its tests on
//! fake trees. The manager drives them; nothing here knows about paths other
//! than the one cgroup directory it is handed in [`Ctx`].

pub mod blkio;
pub mod cpu;
pub mod cpuset;
pub mod devices;
pub mod freezer;
pub mod hugetlb;
pub mod memory;
pub mod net_cls;
pub mod net_prio;
pub mod pids;
pub mod rdma;
pub mod unified;

use std::path::Path;

use oci_spec::runtime::LinuxResources;

use super::device_rules::DeviceRule;
use super::error::{write_hint, CgroupError, Result};
use super::layout::Subsystem;
use super::sys::CgroupSys;

/// Everything a controller needs to program one cgroup directory.
pub struct Ctx<'a> {
    pub sys: &'a dyn CgroupSys,
    /// The container's cgroup directory in this hierarchy.
    pub dir: &'a Path,
    pub v2: bool,
    /// The cgroup was created by this very manager and holds no task yet:
    /// its files have the kernel's defaults, so no current value needs reading.
    pub fresh: bool,
    /// The container's effective device rules (used by `devices` only).
    pub device_rules: &'a [DeviceRule],
}

impl Ctx<'_> {
    /// Writes a requested value; errors name the spec field and the file.
    pub fn write(&self, field: &str, file: &str, value: &str) -> Result<()> {
        let path = self.dir.join(file);
        self.sys.write(&path, value).map_err(|source| CgroupError::Apply {
            field: field.to_string(),
            hint: write_hint(file, &source),
            path,
            value: value.to_string(),
            source,
        })
    }

    /// Writes entries one write(2) each, on one open file.
    pub fn write_lines(&self, field: &str, file: &str, lines: &[String]) -> Result<()> {
        if lines.is_empty() {
            return Ok(());
        }
        let path = self.dir.join(file);
        self.sys.write_lines(&path, lines).map_err(|(i, source)| CgroupError::Apply {
            field: field.to_string(),
            hint: write_hint(file, &source),
            path,
            value: lines[i].clone(),
            source,
        })
    }

    pub fn read(&self, file: &str) -> Result<String> {
        let path = self.dir.join(file);
        self.sys.read(&path).map_err(|e| CgroupError::file("read", path, e))
    }

    pub fn has(&self, file: &str) -> bool {
        self.sys.exists(&self.dir.join(file))
    }
}

/// The shape every controller file follows.
pub trait Controller {
    /// The controller whose cgroup directory `apply` writes to. On v2 every
    /// controller writes to the one unified directory.
    const SUBSYSTEM: Subsystem;

    /// The first spec field (as `memory.limit`) this controller is asked to
    /// apply, or None when the resources ask nothing of it.
    fn requested(res: &LinuxResources) -> Option<&'static str>;

    /// Refuses values the kernel would reject, or that cannot be expressed on
    /// this cgroup version, before anything is created.
    fn validate(res: &LinuxResources, v2: bool) -> Result<()>;

    /// Writes the requested values into `ctx.dir`.
    fn apply(ctx: &Ctx<'_>, res: &LinuxResources) -> Result<()>;
}

/// Range check shared by several controllers.
pub(crate) fn check_range<T: PartialOrd + std::fmt::Display + Copy>(field: &str, v: T, lo: T, hi: T) -> Result<()> {
    if v < lo || v > hi {
        return Err(CgroupError::invalid(field, v, format!("must be between {lo} and {hi}")));
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod test_support {
    //! Helpers shared by the controllers' tests: a single fake cgroup
    //! directory, written through the fake sys.

    use std::path::{Path, PathBuf};

    use oci_spec::runtime::LinuxResources;

    use super::{Controller, Ctx};
    use crate::linux::cgroups::device_rules::DeviceRule;
    use crate::linux::cgroups::error::Result;
    use crate::linux::cgroups::testing::FakeSys;

    pub struct Dir {
        _tmp: tempfile::TempDir,
        pub path: PathBuf,
        pub sys: FakeSys,
        pub v2: bool,
    }

    impl Dir {
        /// A directory holding `files` (name, content).
        pub fn new(v2: bool, files: &[(&str, &str)]) -> Dir {
            let tmp = tempfile::tempdir().unwrap();
            let path = tmp.path().join("ctr");
            std::fs::create_dir(&path).unwrap();
            for (f, c) in files {
                std::fs::write(path.join(f), c).unwrap();
            }
            Dir { _tmp: tmp, path, sys: FakeSys::new(), v2 }
        }

        pub fn ctx<'a>(&'a self, rules: &'a [DeviceRule]) -> Ctx<'a> {
            Ctx { sys: &self.sys, dir: &self.path, v2: self.v2, fresh: true, device_rules: rules }
        }

        pub fn apply<C: Controller>(&self, res: &LinuxResources) -> Result<()> {
            C::validate(res, self.v2)?;
            C::apply(&self.ctx(&[]), res)
        }

        pub fn apply_updating<C: Controller>(&self, res: &LinuxResources) -> Result<()> {
            C::validate(res, self.v2)?;
            let mut ctx = self.ctx(&[]);
            ctx.fresh = false;
            C::apply(&ctx, res)
        }

        pub fn get(&self, f: &str) -> String {
            std::fs::read_to_string(self.path.join(f)).unwrap()
        }

        /// Every write made, as (file name, value).
        pub fn writes(&self) -> Vec<(String, String)> {
            self.sys
                .writes()
                .into_iter()
                .map(|(p, v)| (p.file_name().unwrap().to_string_lossy().into_owned(), v))
                .collect()
        }

        pub fn file(&self, f: &str) -> PathBuf {
            self.path.join(f)
        }

        pub fn dir(&self) -> &Path {
            &self.path
        }
    }

    /// Parses a LinuxResources from JSON (the spec's own spelling).
    pub fn res(json: &str) -> LinuxResources {
        serde_json::from_str(json).unwrap()
    }
}
