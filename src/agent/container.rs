//! The container half of the agent protocol (minor versions 1 and 2): what the
//! host asks the agent to do with OCI containers inside the guest, and the
//! stdio streams that carry a container's (or an exec'd process's) standard
//! input, output and error.
//!
//! A container's stdio never travels inside control frames: each pipe is a
//! vsock stream of its own. The host opens those streams first (each starts
//! with one [`super::Request::AttachStream`] frame naming a *session* and
//! which stream it is, and is raw bytes after the agent's answer), then
//! names the session in `create_container` or `exec`. The agent waits a
//! bounded time for the session's streams to arrive, so output can never be
//! produced before someone is there to read it.

use serde::{Deserialize, Serialize};

use super::message::ProtocolVersion;

/// Where the agent mounts a virtio-fs share with tag T: `<dir>/T`.
pub const GUEST_SHARE_DIR: &str = "/run/amphi/fs";
/// Where the agent mounts a container's root filesystem when it comes on
/// a disk (`run.amphi.vm.rootfs`) rather than through virtio-fs.
pub const GUEST_BLOCK_ROOT: &str = "/run/amphi/rootfs";
/// Where the agent keeps the network namespace it makes for a container
/// whose VM has interfaces (`<dir>/<id>`, protocol 1.4); the guest config
/// names it as the container's network namespace.
pub const GUEST_NETNS_DIR: &str = "/run/amphi/netns";
/// The guest runtime's state root (the `--root` of amphi inside the guest).
pub const GUEST_STATE_DIR: &str = "/run/amphi/state";
/// Where the agent writes each container's guest bundle (`<dir>/<id>`).
pub const GUEST_BUNDLE_DIR: &str = "/run/amphi/bundles";

/// One standard stream of a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StreamKind {
    Stdin,
    Stdout,
    Stderr,
    /// The terminal: both directions on one stream.
    Tty,
}

impl StreamKind {
    pub fn as_str(self) -> &'static str {
        match self {
            StreamKind::Stdin => "stdin",
            StreamKind::Stdout => "stdout",
            StreamKind::Stderr => "stderr",
            StreamKind::Tty => "tty",
        }
    }
}

/// First frame of a stdio connection (it may come instead of a handshake,
/// which is why it carries the host's protocol version).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachStreamRequest {
    pub protocol: ProtocolVersion,
    pub session: String,
    pub stream: StreamKind,
}

/// The streams a process gets, attached under `session` beforehand.
/// `streams` is `[tty]` for a terminal, else any of stdin, stdout, stderr;
/// a stream not listed is /dev/null in the guest.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StdioRequest {
    pub session: String,
    pub streams: Vec<StreamKind>,
    /// Initial terminal size (rows, columns), for a tty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<(u16, u16)>,
}

impl StdioRequest {
    pub fn terminal(&self) -> bool {
        self.streams.contains(&StreamKind::Tty)
    }
}

/// Create a container up to the point where its process waits to be
/// started (the guest side of `amphi create`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateContainerRequest {
    pub id: String,
    /// The guest's config.json: the bundle's, with the root and bind-mount
    /// sources pointing into the share and the host-only parts removed.
    pub config: serde_json::Value,
    /// The virtio-fs tag holding the rootfs and bind-mount sources; the
    /// agent mounts it at `GUEST_SHARE_DIR/<tag>` if it is not yet.
    pub share: String,
    pub stdio: StdioRequest,
    /// The bundle has prestart or createRuntime hooks: the host runs them.
    /// The agent then answers `hooks_pending` at the point where they must
    /// run and finishes the creation on `resume_create`.
    #[serde(default)]
    pub runtime_hooks: bool,
    #[serde(default)]
    pub no_pivot: bool,
    #[serde(default)]
    pub no_new_keyring: bool,
    /// 1.2: the virtio-blk disks the config's mounts and devices use. A
    /// 1.1 agent does not know them; the host refuses to send disks to it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub disks: Vec<GuestDisk>,
    /// 1.6: the container is a member of a pod whose sandbox runs in this
    /// guest: the namespaces listed are the sandbox's, every other one is
    /// new. A 1.5 agent does not know it; the host refuses to send it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub join: Option<JoinRequest>,
}

/// 1.6: which namespaces of an existing container (the pod's sandbox) a
/// new one shares. The agent points them at the sandbox's init
/// (`/proc/<guest pid>/ns/<kind>`); the config's own paths for them are
/// replaced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinRequest {
    /// The sandbox container's id in this guest.
    pub sandbox: String,
    pub namespaces: Vec<JoinNamespace>,
}

/// A namespace a pod member may share with its sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JoinNamespace {
    Network,
    Ipc,
    Uts,
    Pid,
}

impl JoinNamespace {
    pub const ALL: [JoinNamespace; 4] =
        [JoinNamespace::Network, JoinNamespace::Ipc, JoinNamespace::Uts, JoinNamespace::Pid];

    /// The OCI spec's name of the namespace type (`linux.namespaces[].type`).
    pub fn oci_type(self) -> &'static str {
        match self {
            JoinNamespace::Network => "network",
            JoinNamespace::Ipc => "ipc",
            JoinNamespace::Uts => "uts",
            JoinNamespace::Pid => "pid",
        }
    }

    /// The file of `/proc/<pid>/ns/` that names it.
    pub fn proc_name(self) -> &'static str {
        match self {
            JoinNamespace::Network => "net",
            JoinNamespace::Ipc => "ipc",
            JoinNamespace::Uts => "uts",
            JoinNamespace::Pid => "pid",
        }
    }

    pub fn from_oci_type(t: &str) -> Option<JoinNamespace> {
        JoinNamespace::ALL.into_iter().find(|k| k.oci_type() == t)
    }
}

/// 1.2: one virtio-blk disk of a container. The host cannot know which
/// `/dev/vdX` the guest kernel names it, so it names the disk by its
/// virtio-blk ID and says which parts of the config refer to it; the
/// agent finds the disk (`/sys/block/vd*/serial`) and fills them in.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestDisk {
    /// The disk's virtio-blk ID, as the guest reads it.
    pub serial: String,
    /// The host attached it read-only: writes fail with an I/O error.
    #[serde(default)]
    pub read_only: bool,
    /// Indexes into `config.mounts` whose source becomes `/dev/vdX`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<usize>,
    /// Indexes into `config.linux.devices` whose `major` and `minor`
    /// become the guest's numbers of vdX.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<usize>,
    /// Indexes into `config.linux.resources.devices`: rules naming the
    /// host's numbers of the device, which become the guest's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<usize>,
    /// The container's root filesystem, of this type: the agent mounts it
    /// at `root.path` ([`GUEST_BLOCK_ROOT`]) before the runtime runs
    /// (protocol 1.3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rootfs: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateContainerResponse {
    /// The container's init, as a guest pid.
    pub pid: i32,
    /// True: the runtime hooks must run now, then `resume_create`.
    #[serde(default)]
    pub hooks_pending: bool,
    /// Where the guest spent the time (absent from older agents).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timings: Option<CreateTimings>,
}

/// Milliseconds the guest took for the parts of a creation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateTimings {
    /// Mounting the virtio-fs share (0 when it was mounted already).
    pub share_ms: u64,
    /// The runtime helper, from its start to the container waiting to be
    /// started (hooks excluded).
    pub runtime_ms: u64,
}

/// Names a container (start, resume_create, pause, resume, stats,
/// delete_container).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerRef {
    pub id: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignalRequest {
    pub id: String,
    /// The signal number (guest and host share x86-64's numbering).
    pub signal: i32,
    /// Every process of the container, not only its init.
    #[serde(default)]
    pub all: bool,
    /// An exec'd process instead of the container's init.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec_id: Option<String>,
}

/// Block until the container's init (or an exec'd process) has exited and
/// its output streams are flushed and closed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WaitRequest {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec_id: Option<String>,
}

/// How a process ended, as a shell reports it: `code` is the exit code, or
/// 128 + the signal when `signal` is set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitStatus {
    pub code: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
}

impl ExitStatus {
    pub fn exited(code: i32) -> ExitStatus {
        ExitStatus { code, signal: None }
    }

    pub fn signaled(signal: i32) -> ExitStatus {
        ExitStatus { code: 128 + signal, signal: Some(signal) }
    }
}

/// Run an extra process in a running container (`amphi exec`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecRequest {
    pub id: String,
    /// Chosen by the host, unique per container; names the process in
    /// later `wait`, `signal` and `resize` requests.
    pub exec_id: String,
    /// The OCI `process` object, as `amphi exec --process` takes it.
    pub process: serde_json::Value,
    pub stdio: StdioRequest,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecResponse {
    /// The exec'd process, as a guest pid.
    pub pid: i32,
}

/// A terminal's new size.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResizeRequest {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec_id: Option<String>,
    pub rows: u16,
    pub cols: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PsRequest {
    pub id: String,
    /// ps(1) arguments for the table (`amphi ps -- ARGS`).
    #[serde(default)]
    pub args: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PsResponse {
    /// Guest pids of the container's processes.
    pub pids: Vec<i32>,
    /// The table `amphi ps` prints (header and one line per process).
    pub table: String,
}

/// runc-format resources (`amphi update --resources`), applied to the
/// container's cgroup in the guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateRequest {
    pub id: String,
    pub resources: serde_json::Value,
}

/// runc-format statistics of the container's guest cgroup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatsResponse {
    pub stats: serde_json::Value,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_status_reads_like_a_shell() {
        assert_eq!(ExitStatus::exited(3).code, 3);
        let s = ExitStatus::signaled(9);
        assert_eq!((s.code, s.signal), (137, Some(9)));
        assert_eq!(serde_json::to_value(ExitStatus::exited(0)).unwrap(), serde_json::json!({"code":0}));
        assert_eq!(serde_json::to_value(s).unwrap(), serde_json::json!({"code":137,"signal":9}));
    }

    #[test]
    fn disks_have_the_documented_wire_form_and_are_optional() {
        let d = GuestDisk { serial: "amphi-disk-0".into(), read_only: true, mounts: vec![3], ..Default::default() };
        assert_eq!(
            serde_json::to_value(&d).unwrap(),
            serde_json::json!({"serial":"amphi-disk-0","read_only":true,"mounts":[3]})
        );
        // A 1.1 host sends no disks at all.
        let wire = serde_json::json!({"id":"c","config":{},"share":"amphi","stdio":{"session":"s","streams":[]}});
        let r: CreateContainerRequest = serde_json::from_value(wire.clone()).unwrap();
        assert!(r.disks.is_empty());
        assert_eq!(serde_json::to_value(&r).unwrap().get("disks"), None);
        let mut with = wire;
        with["disks"] = serde_json::json!([{"serial":"x","devices":[0],"rules":[1]}]);
        let r: CreateContainerRequest = serde_json::from_value(with).unwrap();
        assert_eq!(
            r.disks[0],
            GuestDisk { serial: "x".into(), devices: vec![0], rules: vec![1], ..Default::default() }
        );
    }

    #[test]
    fn join_is_optional_and_has_its_documented_wire_form() {
        let wire = serde_json::json!({"id":"c","config":{},"share":"amphi","stdio":{"session":"s","streams":[]}});
        let r: CreateContainerRequest = serde_json::from_value(wire.clone()).unwrap();
        assert_eq!(r.join, None);
        assert_eq!(serde_json::to_value(&r).unwrap().get("join"), None);
        let mut with = wire;
        with["join"] = serde_json::json!({"sandbox":"pod","namespaces":["network","ipc","uts"]});
        let r: CreateContainerRequest = serde_json::from_value(with.clone()).unwrap();
        let j = r.join.clone().unwrap();
        assert_eq!(j.sandbox, "pod");
        assert_eq!(j.namespaces, vec![JoinNamespace::Network, JoinNamespace::Ipc, JoinNamespace::Uts]);
        assert_eq!(serde_json::to_value(&r).unwrap()["join"], with["join"]);
        for k in JoinNamespace::ALL {
            assert_eq!(JoinNamespace::from_oci_type(k.oci_type()), Some(k));
        }
        assert_eq!(JoinNamespace::from_oci_type("mount"), None);
    }

    #[test]
    fn stream_kinds_have_stable_names() {
        for k in [StreamKind::Stdin, StreamKind::Stdout, StreamKind::Stderr, StreamKind::Tty] {
            assert_eq!(serde_json::to_value(k).unwrap(), serde_json::Value::String(k.as_str().into()));
        }
        let s = StdioRequest { session: "s".into(), streams: vec![StreamKind::Tty], window: Some((24, 80)) };
        assert!(s.terminal());
        assert_eq!(
            serde_json::to_value(&s).unwrap(),
            serde_json::json!({"session":"s","streams":["tty"],"window":[24,80]})
        );
    }
}
