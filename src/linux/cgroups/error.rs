//! The one error type of the cgroups module.
//!
//! Messages name the file, field or controller involved and, where there is
//! one, the fix; the underlying OS error is kept as the `#[source]` so the
//! binary prints the chain once.

use std::io;
use std::path::PathBuf;

/// Everything that can go wrong while detecting, creating, programming or
/// removing a container's cgroups.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// No cgroup filesystem could be found.
    #[error(
        "no cgroup filesystem is mounted ({detail}); mount cgroup v2 at /sys/fs/cgroup or the v1 hierarchies under it"
    )]
    NoCgroupfs { detail: String },

    /// A file describing the host (mountinfo, /proc/self/cgroup) could not be read.
    #[error("cannot read {path}")]
    ReadHost {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// A host description file had an unexpected line.
    #[error("cannot parse {what}: unexpected line {line:?}")]
    Parse { what: &'static str, line: String },

    /// The spec's cgroupsPath cannot be used.
    #[error("invalid cgroupsPath {path:?}: {reason}")]
    InvalidPath { path: String, reason: String },

    /// The runtime's own cgroup (needed for a relative cgroupsPath) is unknown
    /// for a hierarchy.
    #[error("cannot place relative cgroupsPath {path:?} in the {hierarchy} hierarchy: {reason}; use an absolute cgroupsPath")]
    NoOwnCgroup { path: String, hierarchy: String, reason: String },

    /// A requested resource has no controller on this host.
    #[error(
        "linux.resources.{field} needs the {controller} controller, which is not available on this host ({reason})"
    )]
    MissingController { field: String, controller: String, reason: String },

    /// A requested resource cannot be expressed with this cgroup version or kernel.
    #[error("linux.resources.{field} is not supported: {reason}")]
    Unsupported { field: String, reason: String },

    /// A requested value is out of range or malformed.
    #[error("linux.resources.{field}: invalid value {value}: {reason}")]
    InvalidValue { field: String, value: String, reason: String },

    /// Writing a requested value into the cgroup failed.
    #[error("cannot set linux.resources.{field}: writing {value:?} to {path} failed{hint}")]
    Apply {
        field: String,
        path: PathBuf,
        value: String,
        /// Starts with "; " when not empty.
        hint: String,
        #[source]
        source: io::Error,
    },

    /// Reading or writing a cgroup file outside of resource programming failed.
    #[error("cannot {op} {path}")]
    File {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// mkdir of a cgroup directory failed.
    #[error("cannot create cgroup {path}{hint}")]
    Create {
        path: PathBuf,
        hint: String,
        #[source]
        source: io::Error,
    },

    /// Moving a process into a cgroup failed.
    #[error("cannot move process {pid} into cgroup {path}{hint}")]
    AddTask {
        pid: i32,
        path: PathBuf,
        hint: String,
        #[source]
        source: io::Error,
    },

    /// rmdir of a cgroup directory failed.
    #[error("cannot remove cgroup {path}{hint}")]
    Remove {
        path: PathBuf,
        hint: String,
        #[source]
        source: io::Error,
    },

    /// Freezing did not complete in time.
    #[error(
        "cgroup {path} did not freeze within {millis} ms (state {state:?}); it was thawed again, retry the operation"
    )]
    FreezeTimeout { path: PathBuf, millis: u64, state: String },

    /// The device rules cannot be expressed with the v1 devices controller.
    #[error("device rule {index} ({rule}) cannot be applied on cgroup v1: {reason}")]
    DeviceRuleV1 { index: usize, rule: String, reason: String },

    /// A device rule of the spec is malformed.
    #[error("invalid device rule {what}: {reason}")]
    DeviceRule { what: String, reason: String },

    /// Loading or attaching the eBPF device filter failed.
    #[error("cannot {op} the eBPF device filter for {path}{log}")]
    Bpf {
        op: &'static str,
        path: PathBuf,
        /// Verifier log (starts with "; verifier: " when not empty).
        log: String,
        #[source]
        source: io::Error,
    },

    /// Sending a signal to a process of the container failed.
    #[error("cannot send signal {signal} to process {pid}")]
    Signal {
        pid: i32,
        signal: i32,
        #[source]
        source: io::Error,
    },
}

/// Shorthand used throughout the module.
pub type Result<T> = std::result::Result<T, CgroupError>;

impl CgroupError {
    pub(crate) fn unsupported(field: impl Into<String>, reason: impl Into<String>) -> Self {
        CgroupError::Unsupported { field: field.into(), reason: reason.into() }
    }

    pub(crate) fn invalid(field: impl Into<String>, value: impl ToString, reason: impl Into<String>) -> Self {
        CgroupError::InvalidValue { field: field.into(), value: value.to_string(), reason: reason.into() }
    }

    pub(crate) fn file(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        CgroupError::File { op, path: path.into(), source }
    }
}

/// A short, errno-specific explanation appended to write errors, so that the
/// usual kernel refusals read as a cause rather than a bare errno.
pub(crate) fn write_hint(file: &str, err: &io::Error) -> String {
    let h = match err.raw_os_error() {
        Some(libc::ENOENT) => {
            format!("this kernel has no {file} in that cgroup (the feature is not built in or not enabled)")
        }
        Some(libc::EACCES) | Some(libc::EPERM) => {
            "permission denied: amphi must run as root with write access to the cgroup filesystem".to_string()
        }
        Some(libc::EINVAL) => {
            "the kernel rejected the value (out of range, or not allowed by the parent cgroup)".to_string()
        }
        Some(libc::EBUSY) => "the kernel refused while the cgroup is in use".to_string(),
        Some(libc::EROFS) => "the cgroup filesystem is mounted read-only".to_string(),
        Some(libc::EOPNOTSUPP) => "the kernel does not support this setting here".to_string(),
        _ => String::new(),
    };
    if h.is_empty() {
        h
    } else {
        format!("; {h}")
    }
}
