//! The lifecycle state machine and what amphi records about a container.
//!
//! Status is derived, never stored: a recorded pid plus its start time say
//! whether the container's process still exists, and the exec fifo says
//! whether `start` has happened. A state file can therefore never claim that
//! a dead (or recycled) process is running.

use std::collections::HashMap;
use std::path::PathBuf;

use oci_spec::runtime::Hooks;
use serde::{Deserialize, Serialize};

use crate::spec::Isolation;

/// The OCI lifecycle statuses (plus `paused`, as runc reports it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Creating,
    Created,
    Running,
    Paused,
    Stopped,
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Status::Creating => "creating",
            Status::Created => "created",
            Status::Running => "running",
            Status::Paused => "paused",
            Status::Stopped => "stopped",
        })
    }
}

/// An operation on a container, for the transition table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Start,
    Kill,
    Delete,
    Pause,
    Resume,
    Exec,
    Update,
    Ps,
    Events,
}

impl std::fmt::Display for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Op::Start => "start",
            Op::Kill => "kill",
            Op::Delete => "delete",
            Op::Pause => "pause",
            Op::Resume => "resume",
            Op::Exec => "exec in",
            Op::Update => "update",
            Op::Ps => "list the processes of",
            Op::Events => "watch",
        })
    }
}

/// Whether `op` is allowed in `status` (delete's `--force` is handled by the
/// caller, which kills first).
pub fn allowed(op: Op, status: Status) -> bool {
    use Status::*;
    match op {
        Op::Start => status == Created,
        Op::Kill => matches!(status, Created | Running | Paused),
        Op::Delete => status == Stopped,
        Op::Pause => status == Running,
        Op::Resume => status == Paused,
        // runc lets exec into a created container too (its namespaces
        // exist); a paused one needs --ignore-paused, checked by the caller.
        Op::Exec | Op::Update | Op::Events => matches!(status, Created | Running | Paused),
        Op::Ps => status != Creating,
    }
}

/// What `state.json` in a container's directory holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct State {
    #[serde(rename = "ociVersion")]
    pub oci_version: String,
    pub id: String,
    /// The host pid that stands for the container: the container's init, or
    /// the VMM process.
    pub pid: i32,
    /// The pid's start time (clock ticks after boot), to detect recycling.
    pub pid_start_time: u64,
    pub bundle: PathBuf,
    pub rootfs: PathBuf,
    /// RFC 3339 creation time in UTC.
    pub created: String,
    /// Uid of the user that created the container.
    pub owner: u32,
    #[serde(default)]
    pub annotations: HashMap<String, String>,
    pub isolation: Isolation,
    /// Hooks that run after create (poststart, poststop).
    #[serde(default)]
    pub hooks: Option<Hooks>,
    /// Set by pause, cleared by resume.
    #[serde(default)]
    pub paused: bool,
    /// config.json had no process (accepted at create, refused at start).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub no_process: bool,
    /// The container's resource limits: the spec's, with every `update`
    /// laid over them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<oci_spec::runtime::LinuxResources>,
    /// Whatever the isolation needs to find its resources again (cgroup
    /// paths, VMM sockets).
    #[serde(default)]
    pub sandbox: serde_json::Value,
    /// Set while `create` runs: the process creating the container. The
    /// state is written once before anything exists (pid 0, `sandbox` the
    /// paths the isolation is about to make) and again when the container
    /// is created; a `create` killed in between leaves a state that says
    /// what to clean up, and reads as stopped once its creator is gone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creator: Option<Creator>,
}

/// The process running `create` (pid and start time, as for [`State::pid`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Creator {
    pub pid: i32,
    pub start_time: u64,
}

impl Creator {
    /// This process.
    pub fn this_process() -> Creator {
        let pid = std::process::id() as i32;
        let start_time = super::process::stat(pid).map(|(t, _)| t).unwrap_or(0);
        Creator { pid, start_time }
    }
}

/// The state document the OCI runtime spec defines (`amphi state`), with
/// runc's extra `created` and `owner` fields that clients read.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct OciState {
    #[serde(rename = "ociVersion")]
    pub oci_version: String,
    pub id: String,
    pub pid: i32,
    pub status: Status,
    pub bundle: PathBuf,
    pub rootfs: PathBuf,
    pub created: String,
    pub owner: String,
    #[serde(skip_serializing_if = "HashMap::is_empty", default)]
    pub annotations: HashMap<String, String>,
}

impl State {
    /// A state naming nothing but the id and isolation (pid 0, no bundle):
    /// where a state is built rather than read (a salvage, tests).
    pub fn bare(id: &str, isolation: Isolation) -> State {
        State {
            oci_version: crate::spec::OCI_VERSION_MAX.to_string(),
            id: id.to_string(),
            pid: 0,
            pid_start_time: 0,
            bundle: PathBuf::new(),
            rootfs: PathBuf::new(),
            created: String::new(),
            owner: 0,
            annotations: HashMap::new(),
            isolation,
            hooks: None,
            paused: false,
            no_process: false,
            resources: None,
            sandbox: serde_json::Value::Null,
            creator: None,
        }
    }

    /// The OCI view of this state for a given status (pid 0 once stopped,
    /// as runc reports it).
    pub fn to_oci(&self, status: Status) -> OciState {
        OciState {
            oci_version: self.oci_version.clone(),
            id: self.id.clone(),
            pid: if status == Status::Stopped { 0 } else { self.pid },
            status,
            bundle: self.bundle.clone(),
            rootfs: self.rootfs.clone(),
            created: self.created.clone(),
            owner: user_name(self.owner),
            annotations: self.annotations.clone(),
        }
    }
}

/// The user name for a uid, from /etc/passwd, or the number.
pub fn user_name(uid: u32) -> String {
    if uid == 0 {
        return "root".into();
    }
    std::fs::read_to_string("/etc/passwd")
        .ok()
        .and_then(|p| {
            p.lines().find_map(|l| {
                let mut f = l.split(':');
                let name = f.next()?;
                f.next()?;
                (f.next()?.parse::<u32>().ok()? == uid).then(|| name.to_string())
            })
        })
        .unwrap_or_else(|| uid.to_string())
}

/// Formats the current time as RFC 3339 with nanoseconds, in UTC.
pub fn now_rfc3339() -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    rfc3339(now.as_secs() as i64, now.subsec_nanos())
}

/// RFC 3339 for a Unix time, computed without a time zone database.
pub fn rfc3339(secs: i64, nanos: u32) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{nanos:09}Z", rem / 3600, (rem % 3600) / 60, rem % 60)
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transitions_follow_the_spec() {
        use Status::*;
        assert!(allowed(Op::Start, Created));
        for s in [Creating, Running, Paused, Stopped] {
            assert!(!allowed(Op::Start, s), "{s}");
        }
        assert!(allowed(Op::Kill, Created) && allowed(Op::Kill, Running));
        assert!(!allowed(Op::Kill, Stopped));
        assert!(allowed(Op::Delete, Stopped));
        assert!(!allowed(Op::Delete, Created) && !allowed(Op::Delete, Running));
        assert!(allowed(Op::Pause, Running) && !allowed(Op::Pause, Created));
        assert!(allowed(Op::Resume, Paused) && !allowed(Op::Resume, Running));
        for op in [Op::Exec, Op::Update, Op::Events] {
            assert!(allowed(op, Running) && allowed(op, Paused) && allowed(op, Created), "{op}");
            assert!(!allowed(op, Stopped) && !allowed(op, Creating), "{op}");
        }
        assert!(allowed(Op::Ps, Stopped) && !allowed(Op::Ps, Creating));
    }

    #[test]
    fn rfc3339_known_dates() {
        assert_eq!(rfc3339(0, 0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(rfc3339(951_782_400, 5), "2000-02-29T00:00:00.000000005Z");
        assert_eq!(rfc3339(1_798_761_599, 0), "2026-12-31T23:59:59.000000000Z");
    }

    #[test]
    fn stopped_state_reports_pid_zero() {
        let s = State { pid: 42, pid_start_time: 1, created: rfc3339(0, 0), ..State::bare("c", Isolation::Container) };
        assert_eq!(s.to_oci(Status::Running).pid, 42);
        let stopped = s.to_oci(Status::Stopped);
        assert_eq!(stopped.pid, 0);
        let json = serde_json::to_value(&stopped).unwrap();
        assert_eq!(json["status"], "stopped");
        assert_eq!(json["owner"], "root");
        assert!(json.get("annotations").is_none());
    }
}
