//! cgroupsPath: what the spec asks for, the default, and where it lands in
//! each hierarchy.
//!
//! - absolute (`/a/b`): relative to the root of every hierarchy;
//! - relative (`a/b`): relative to the runtime's own cgroup in every
//!   hierarchy (from /proc/self/cgroup), as runc does;
//! - absent: `/amphi-<id>`, directly under each hierarchy's root. A flat name
//!   (rather than `/amphi/<id>`) leaves no shared parent behind to create,
//!   enable controllers in, race on or clean up, so removing the container
//!   leaves the hierarchy exactly as it was.
//!
//! Paths are cleaned lexically the way runc's CleanPath does, so `..` can
//! never climb above the hierarchy (or the runtime's cgroup).
//!
//! Systemd-style `slice:prefix:name` paths are for `--systemd-cgroup`, which
//! the caller handles; [`parse_systemd_path`] only splits them.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::error::{CgroupError, Result};
use super::layout::OwnCgroups;

/// Prefix of the default cgroup name (`/amphi-<id>`).
pub const DEFAULT_PREFIX: &str = "amphi-";

/// A cleaned cgroupsPath.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CgroupsPath {
    /// Below the root of each hierarchy; stored without the leading `/`.
    Absolute(PathBuf),
    /// Below the runtime's own cgroup in each hierarchy.
    Relative(PathBuf),
}

impl CgroupsPath {
    /// The spec's cgroupsPath, or the default for container `id`.
    pub fn from_spec(id: &str, spec: Option<&Path>) -> Result<CgroupsPath> {
        let Some(p) = spec.filter(|p| !p.as_os_str().is_empty()) else {
            if id.is_empty() || id == "." || id == ".." || id.contains('/') || id.contains('\0') {
                return Err(CgroupError::InvalidPath {
                    path: format!("{DEFAULT_PREFIX}{id}"),
                    reason: "the container id cannot name a cgroup directory".into(),
                });
            }
            return Ok(CgroupsPath::Absolute(PathBuf::from(format!("{DEFAULT_PREFIX}{id}"))));
        };
        let s = p.to_string_lossy();
        if s.contains('\0') {
            return Err(CgroupError::InvalidPath { path: s.into_owned(), reason: "contains a NUL byte".into() });
        }
        let absolute = p.is_absolute();
        let cleaned = clean(p);
        if cleaned.as_os_str().is_empty() {
            return Err(CgroupError::InvalidPath {
                path: s.into_owned(),
                reason: if absolute {
                    "it names the root cgroup, which cannot hold a container; use a path below it such as /amphi-<id>"
                        .into()
                } else {
                    "it names the runtime's own cgroup; add a directory name".into()
                },
            });
        }
        Ok(if absolute { CgroupsPath::Absolute(cleaned) } else { CgroupsPath::Relative(cleaned) })
    }

    /// The path inside a hierarchy whose root is at `mount_point`; `mount_root`
    /// is the cgroup shown there (mountinfo's root field) and `own` the
    /// runtime's cgroup in that hierarchy (needed for a relative path only).
    pub fn host_path(
        &self,
        mount_point: &Path,
        mount_root: &Path,
        own: Option<&Path>,
        hierarchy: &str,
    ) -> Result<PathBuf> {
        match self {
            CgroupsPath::Absolute(p) => Ok(mount_point.join(p)),
            CgroupsPath::Relative(p) => {
                let err = |reason: &str| CgroupError::NoOwnCgroup {
                    path: p.display().to_string(),
                    hierarchy: hierarchy.to_string(),
                    reason: reason.to_string(),
                };
                let own = own.ok_or_else(|| err("/proc/self/cgroup has no line for it"))?;
                let below = own.strip_prefix(mount_root).map_err(|_| {
                    err(&format!("our cgroup {} is outside the mounted part {}", own.display(), mount_root.display()))
                })?;
                Ok(mount_point.join(below).join(p))
            }
        }
    }

    /// The path as the spec would spell it (for state and messages).
    pub fn display(&self) -> String {
        match self {
            CgroupsPath::Absolute(p) => format!("/{}", p.display()),
            CgroupsPath::Relative(p) => p.display().to_string(),
        }
    }

    pub fn is_relative(&self) -> bool {
        matches!(self, CgroupsPath::Relative(_))
    }

    /// Whether this is the default path of container `id`.
    pub fn is_default_for(&self, id: &str) -> bool {
        matches!(self, CgroupsPath::Absolute(p) if p.as_os_str() == format!("{DEFAULT_PREFIX}{id}").as_str())
    }
}

/// Lexical cleaning: drops `.`, resolves `..` without climbing above the
/// start, and returns the result without a leading `/`.
pub fn clean(p: &Path) -> PathBuf {
    crate::linux::mounts::clean_relative(p)
}

/// Finds the runtime's own cgroup for a relative path (reads /proc/self/cgroup once).
pub fn own_cgroups_if_needed(p: &CgroupsPath) -> Result<Option<OwnCgroups>> {
    if p.is_relative() {
        OwnCgroups::read().map(Some)
    } else {
        Ok(None)
    }
}

/// A systemd cgroupsPath: `slice:prefix:name`, e.g. `system.slice:docker:1234`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SystemdPath {
    pub slice: String,
    pub prefix: String,
    pub name: String,
}

/// Splits a systemd-style cgroupsPath.
pub fn parse_systemd_path(s: &str) -> Result<SystemdPath> {
    let parts: Vec<&str> = s.split(':').collect();
    let [slice, prefix, name] = parts[..] else {
        return Err(CgroupError::InvalidPath {
            path: s.to_string(),
            reason: "with --systemd-cgroup it must be \"slice:prefix:name\", e.g. \"system.slice:amphi:<id>\"".into(),
        });
    };
    if name.is_empty() || name.contains('/') || slice.contains('/') || (!slice.is_empty() && !slice.ends_with(".slice"))
    {
        return Err(CgroupError::InvalidPath {
            path: s.to_string(),
            reason: "the slice must end in .slice and no part may contain '/'; the name must not be empty".into(),
        });
    }
    Ok(SystemdPath { slice: slice.to_string(), prefix: prefix.to_string(), name: name.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from(p: Option<&str>) -> Result<CgroupsPath> {
        CgroupsPath::from_spec("ctr1", p.map(Path::new))
    }

    #[test]
    fn default_is_flat_and_absolute() {
        let p = from(None).unwrap();
        assert_eq!(p, CgroupsPath::Absolute("amphi-ctr1".into()));
        assert_eq!(p.display(), "/amphi-ctr1");
        assert!(p.is_default_for("ctr1"));
        assert_eq!(from(Some("")).unwrap(), p);
        assert!(CgroupsPath::from_spec("a/b", None).is_err());
        assert!(CgroupsPath::from_spec("..", None).is_err());
    }

    #[test]
    fn absolute_and_relative_are_cleaned() {
        assert_eq!(from(Some("/cgrouptest")).unwrap(), CgroupsPath::Absolute("cgrouptest".into()));
        assert_eq!(from(Some("/a/./b/../c")).unwrap(), CgroupsPath::Absolute("a/c".into()));
        assert_eq!(from(Some("/../../etc")).unwrap(), CgroupsPath::Absolute("etc".into()));
        assert_eq!(
            from(Some("testdir/cgrouptest/container")).unwrap(),
            CgroupsPath::Relative("testdir/cgrouptest/container".into())
        );
        assert_eq!(from(Some("../../x")).unwrap(), CgroupsPath::Relative("x".into()));
        let e = from(Some("/")).unwrap_err().to_string();
        assert!(e.contains("root cgroup"), "{e}");
        assert!(from(Some("a/..")).unwrap_err().to_string().contains("own cgroup"));
    }

    #[test]
    fn host_paths() {
        let abs = from(Some("/x/y")).unwrap();
        let m = Path::new("/sys/fs/cgroup/memory");
        assert_eq!(abs.host_path(m, Path::new("/"), None, "memory").unwrap(), Path::new("/sys/fs/cgroup/memory/x/y"));
        let rel = from(Some("a")).unwrap();
        assert_eq!(
            rel.host_path(m, Path::new("/"), Some(Path::new("/process_api/f8")), "memory").unwrap(),
            Path::new("/sys/fs/cgroup/memory/process_api/f8/a")
        );
        // Mounted below the root (cgroup namespace, bind mount): strip it.
        assert_eq!(
            rel.host_path(m, Path::new("/docker/c"), Some(Path::new("/docker/c/sub")), "memory").unwrap(),
            Path::new("/sys/fs/cgroup/memory/sub/a")
        );
        let e = rel.host_path(m, Path::new("/docker/c"), Some(Path::new("/other")), "memory").unwrap_err().to_string();
        assert!(e.contains("outside the mounted part") && e.contains("absolute cgroupsPath"), "{e}");
        assert!(rel.host_path(m, Path::new("/"), None, "memory").is_err());
    }

    #[test]
    fn systemd_paths() {
        assert_eq!(
            parse_systemd_path("system.slice:docker:1234").unwrap(),
            SystemdPath { slice: "system.slice".into(), prefix: "docker".into(), name: "1234".into() }
        );
        assert_eq!(parse_systemd_path(":amphi:x").unwrap().slice, "");
        for bad in ["/a/b", "a:b", "a.slice:b:", "x:y:z", "a.slice:b:c/d"] {
            assert!(parse_systemd_path(bad).is_err(), "{bad}");
        }
    }
}
