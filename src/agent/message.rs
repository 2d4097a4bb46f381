//! The typed messages of the agent protocol and its stable error codes.
//!
//! Requests travel as `{"id": N, "method": "...", "params": {...}}`,
//! responses as `{"id": N, "result": {"method": "...", ...}}` or
//! `{"id": N, "error": {"code": "...", "message": "..."}}`. Error codes are
//! snake_case strings that never change meaning once published; new ones
//! may be added in a minor protocol version.

use serde::{Deserialize, Serialize};

use super::container::{
    AttachStreamRequest, ContainerRef, CreateContainerRequest, CreateContainerResponse, ExecRequest, ExecResponse,
    ExitStatus, PsRequest, PsResponse, ResizeRequest, SignalRequest, StatsResponse, UpdateRequest, WaitRequest,
};

/// vsock port the agent listens on for control connections.
pub const AGENT_VSOCK_PORT: u32 = 1024;

/// This build's protocol version. Same major: compatible; the minor
/// version only adds optional fields, methods and error codes.
pub const PROTOCOL_VERSION: ProtocolVersion = ProtocolVersion { major: 1, minor: 6 };

/// The kernel command-line word that makes a boot a VM template's: the
/// agent then waits for [`Request::Restored`] before it runs anything.
/// It stays in the snapshot's memory, so every restored guest sees it.
pub const TEMPLATE_CMDLINE_WORD: &str = "amphi.template";

/// How many bytes of host randomness a [`RestoredRequest`] may carry: at
/// least 256 bits, and no more than the kernel usefully takes at once.
pub const RESTORE_SEED_LEN: std::ops::RangeInclusive<usize> = 32..=256;

/// The line the agent prints on the guest console once its vsock listener
/// is up; the VMM watches the serial output for it to time the boot.
pub const LISTENING_MARKER: &str = "amphi-agent: listening on vsock port";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProtocolVersion {
    pub major: u32,
    pub minor: u32,
}

impl ProtocolVersion {
    /// Whether a peer speaking `other` can talk to this side.
    pub fn compatible_with(self, other: ProtocolVersion) -> bool {
        self.major == other.major
    }
}

impl std::fmt::Display for ProtocolVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestEnvelope {
    pub id: u64,
    #[serde(flatten)]
    pub request: Request,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "method", content = "params", rename_all = "snake_case")]
pub enum Request {
    /// Must be the first request of a connection.
    Handshake(HandshakeRequest),
    /// Is the agent alive, and what does the guest look like.
    Health,
    /// Power the guest off (or reboot it); the agent answers first.
    Shutdown(ShutdownRequest),
    /// 1.1: the first frame of a stdio stream; raw bytes follow the answer.
    AttachStream(AttachStreamRequest),
    /// 1.1: create a container, its process waiting for `start_container`.
    CreateContainer(CreateContainerRequest),
    /// 1.1: the host ran the runtime hooks; finish the creation.
    ResumeCreate(ContainerRef),
    /// 1.1: release a created container's process.
    StartContainer(ContainerRef),
    /// 1.1: signal a container's init, all its processes, or an exec'd one.
    Signal(SignalRequest),
    /// 1.1: block until a process ended and its output is flushed.
    Wait(WaitRequest),
    /// 1.1: run an extra process in a running container.
    Exec(ExecRequest),
    /// 1.1: a terminal's new window size.
    Resize(ResizeRequest),
    /// 1.1: freeze every process of the container.
    Pause(ContainerRef),
    /// 1.1: thaw a paused container.
    Resume(ContainerRef),
    /// 1.1: the container's processes.
    Ps(PsRequest),
    /// 1.1: the container's cgroup statistics.
    Stats(ContainerRef),
    /// 1.1: change the container's resources.
    Update(UpdateRequest),
    /// 1.4: give the guest's network interfaces the host interfaces'
    /// addresses, routes and MTU.
    ConfigureNetwork(NetworkRequest),
    /// 1.5: the guest was restored from a template: reseed its RNG, set
    /// its wall clock, and (on a template boot) start serving.
    Restored(RestoredRequest),
    /// 1.6: remove a container that ended (or kill and remove it), while
    /// the guest keeps running for the others: a pod member's `delete`.
    DeleteContainer(ContainerRef),
}

/// Every method name, in the order of [`Request`]'s variants.
pub const METHODS: &[&str] = &[
    "handshake",
    "health",
    "shutdown",
    "attach_stream",
    "create_container",
    "resume_create",
    "start_container",
    "signal",
    "wait",
    "exec",
    "resize",
    "pause",
    "resume",
    "ps",
    "stats",
    "update",
    "configure_network",
    "restored",
    "delete_container",
];

impl Request {
    pub fn method(&self) -> &'static str {
        match self {
            Request::Handshake(_) => "handshake",
            Request::Health => "health",
            Request::Shutdown(_) => "shutdown",
            Request::AttachStream(_) => "attach_stream",
            Request::CreateContainer(_) => "create_container",
            Request::ResumeCreate(_) => "resume_create",
            Request::StartContainer(_) => "start_container",
            Request::Signal(_) => "signal",
            Request::Wait(_) => "wait",
            Request::Exec(_) => "exec",
            Request::Resize(_) => "resize",
            Request::Pause(_) => "pause",
            Request::Resume(_) => "resume",
            Request::Ps(_) => "ps",
            Request::Stats(_) => "stats",
            Request::Update(_) => "update",
            Request::ConfigureNetwork(_) => "configure_network",
            Request::Restored(_) => "restored",
            Request::DeleteContainer(_) => "delete_container",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandshakeRequest {
    /// The host side's protocol version.
    pub protocol: ProtocolVersion,
    /// The host side's program version (amphi's crate version).
    pub host_version: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ShutdownAction {
    PowerOff,
    Reboot,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShutdownRequest {
    pub action: ShutdownAction,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResponseEnvelope {
    pub id: u64,
    #[serde(flatten)]
    pub outcome: Outcome,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Result(Response),
    Error(AgentError),
}

impl ResponseEnvelope {
    pub fn ok(id: u64, response: Response) -> Self {
        ResponseEnvelope { id, outcome: Outcome::Result(response) }
    }

    pub fn error(id: u64, error: AgentError) -> Self {
        ResponseEnvelope { id, outcome: Outcome::Error(error) }
    }

    pub fn into_result(self) -> Result<Response, AgentError> {
        match self.outcome {
            Outcome::Result(r) => Ok(r),
            Outcome::Error(e) => Err(e),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "method", rename_all = "snake_case")]
pub enum Response {
    Handshake(HandshakeResponse),
    Health(HealthResponse),
    Shutdown(ShutdownResponse),
    AttachStream,
    CreateContainer(CreateContainerResponse),
    ResumeCreate(CreateContainerResponse),
    StartContainer,
    Signal,
    Wait(ExitStatus),
    Exec(ExecResponse),
    Resize,
    Pause,
    Resume,
    Ps(PsResponse),
    Stats(StatsResponse),
    Update,
    ConfigureNetwork(NetworkResponse),
    Restored(RestoredReply),
    DeleteContainer,
}

impl Response {
    pub fn method(&self) -> &'static str {
        match self {
            Response::Handshake(_) => "handshake",
            Response::Health(_) => "health",
            Response::Shutdown(_) => "shutdown",
            Response::AttachStream => "attach_stream",
            Response::CreateContainer(_) => "create_container",
            Response::ResumeCreate(_) => "resume_create",
            Response::StartContainer => "start_container",
            Response::Signal => "signal",
            Response::Wait(_) => "wait",
            Response::Exec(_) => "exec",
            Response::Resize => "resize",
            Response::Pause => "pause",
            Response::Resume => "resume",
            Response::Ps(_) => "ps",
            Response::Stats(_) => "stats",
            Response::Update => "update",
            Response::ConfigureNetwork(_) => "configure_network",
            Response::Restored(_) => "restored",
            Response::DeleteContainer => "delete_container",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandshakeResponse {
    /// The agent's protocol version (the host's is in the request).
    pub protocol: ProtocolVersion,
    /// The agent's program version.
    pub agent_version: String,
    /// `uname -r` of the guest kernel.
    pub kernel_release: String,
    /// Kernel modules the agent loaded at boot, in load order.
    #[serde(default)]
    pub modules_loaded: Vec<String>,
    /// Milliseconds from the agent's start to its listener being up.
    #[serde(default)]
    pub agent_init_ms: u64,
    /// 1.5: the guest booted as a template and still waits for `restored`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub awaiting_restore: bool,
    /// 1.5: the `generation` of the last `restored`; absent until one came.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthResponse {
    pub uptime_ms: u64,
    pub mem_total_kib: u64,
    pub mem_available_kib: u64,
    /// Children PID 1 has reaped since boot.
    pub zombies_reaped: u64,
    pub online_cpus: u32,
    /// 1.5: as in [`HandshakeResponse::awaiting_restore`].
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub awaiting_restore: bool,
    /// 1.5: as in [`HandshakeResponse::generation`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<u64>,
}

/// What a guest restored from a template needs from the host: the wall
/// clock (the template's stopped when it was snapshotted) and fresh
/// randomness (every guest restored from one template starts with the
/// same RNG state).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoredRequest {
    /// The host's `CLOCK_REALTIME` when it sent the request, in
    /// nanoseconds since the epoch.
    pub realtime_ns: u64,
    /// Bytes from the host's `getrandom`, [`RESTORE_SEED_LEN`] of them.
    pub seed: Vec<u8>,
    /// Which restore this is, as the host counts them; the agent reports
    /// it in `handshake` and `health`.
    pub generation: u64,
}

impl RestoredRequest {
    /// Refuses a seed whose length is outside [`RESTORE_SEED_LEN`].
    pub fn check_seed(&self) -> Result<(), AgentError> {
        if RESTORE_SEED_LEN.contains(&self.seed.len()) {
            return Ok(());
        }
        Err(AgentError::new(
            ErrorCode::InvalidConfig,
            format!(
                "a restore seed of {} bytes (it must have {} to {})",
                self.seed.len(),
                RESTORE_SEED_LEN.start(),
                RESTORE_SEED_LEN.end()
            ),
        ))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoredReply {
    /// The guest's `CLOCK_REALTIME` just before the agent set it.
    pub guest_realtime_before_ns: u64,
    /// How far the agent moved the guest's wall clock (negative: back).
    pub clock_step_ns: i64,
}

/// The guest's side of the host interfaces wired to the VM's TAPs, for
/// the network namespace of container `id` (made if it does not exist).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkRequest {
    pub id: String,
    #[serde(default)]
    pub interfaces: Vec<GuestInterface>,
    /// Main-table routes; `interface` is a position in `interfaces`.
    #[serde(default)]
    pub routes: Vec<crate::linux::net::Route>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestInterface {
    /// The virtio-net device's address: how the agent finds the interface.
    pub device_mac: crate::linux::net::Mac,
    /// The address it takes: the host interface's, so that the neighbours'
    /// caches and the engine's records stay right.
    pub mac: crate::linux::net::Mac,
    pub mtu: u32,
    pub addresses: Vec<crate::linux::net::IpNet>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkResponse {
    /// The guest's names of the interfaces, in the request's order.
    pub names: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShutdownResponse {
    pub action: ShutdownAction,
}

/// Stable error codes. Never reuse or rename one; add new ones at the end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The payload is not JSON, or not a request envelope.
    MalformedRequest,
    /// The method is not one this agent knows (the host is newer).
    UnknownMethod,
    /// The frame was larger than the receiver's maximum.
    FrameTooLarge,
    /// A request other than `handshake` came first on the connection.
    HandshakeRequired,
    /// The protocol major versions differ.
    IncompatibleVersion,
    /// A second handshake on the same connection.
    AlreadyHandshaken,
    /// The guest could not carry out the shutdown.
    ShutdownFailed,
    /// Reading guest state for `health` failed.
    HealthUnavailable,
    /// 1.1: no container (or exec'd process) with that id in the guest.
    NoSuchContainer,
    /// 1.1: a container with that id exists already.
    ContainerExists,
    /// 1.1: the operation does not fit the container's state.
    WrongState,
    /// 1.1: the configuration (or process) is invalid.
    InvalidConfig,
    /// 1.1: valid, but not possible in this guest.
    Unsupported,
    /// 1.1: the guest runtime failed; the message carries its error chain.
    ContainerFailed,
    /// 1.1: the stdio streams named by a session did not all arrive in time.
    StdioTimeout,
    /// 1.1: the guest could not prepare (mount the share, write the bundle).
    GuestSetupFailed,
    /// 1.2: a disk the host attached did not appear in the guest in time.
    DiskNotFound,
    /// 1.4: the guest's network could not be set up as asked.
    NetworkFailed,
    /// 1.5: the guest booted as a template and runs nothing until
    /// `restored` arrived.
    NotRestored,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::MalformedRequest => "malformed_request",
            ErrorCode::UnknownMethod => "unknown_method",
            ErrorCode::FrameTooLarge => "frame_too_large",
            ErrorCode::HandshakeRequired => "handshake_required",
            ErrorCode::IncompatibleVersion => "incompatible_version",
            ErrorCode::AlreadyHandshaken => "already_handshaken",
            ErrorCode::ShutdownFailed => "shutdown_failed",
            ErrorCode::HealthUnavailable => "health_unavailable",
            ErrorCode::NoSuchContainer => "no_such_container",
            ErrorCode::ContainerExists => "container_exists",
            ErrorCode::WrongState => "wrong_state",
            ErrorCode::InvalidConfig => "invalid_config",
            ErrorCode::Unsupported => "unsupported",
            ErrorCode::ContainerFailed => "container_failed",
            ErrorCode::StdioTimeout => "stdio_timeout",
            ErrorCode::GuestSetupFailed => "guest_setup_failed",
            ErrorCode::DiskNotFound => "disk_not_found",
            ErrorCode::NetworkFailed => "network_failed",
            ErrorCode::NotRestored => "not_restored",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message} (agent error code {})", code.as_str())]
pub struct AgentError {
    pub code: ErrorCode,
    pub message: String,
}

impl AgentError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        AgentError { code, message: message.into() }
    }
}

/// What the agent does with the raw payload of a frame it could not turn
/// into a request: the error to answer with, and the id to answer under
/// (0 when even the id is unreadable).
pub fn classify_bad_request(payload: &[u8]) -> (u64, AgentError) {
    let value: serde_json::Value = match serde_json::from_slice(payload) {
        Ok(v) => v,
        Err(e) => return (0, AgentError::new(ErrorCode::MalformedRequest, format!("payload is not JSON: {e}"))),
    };
    let id = value.get("id").and_then(|v| v.as_u64()).unwrap_or(0);
    match value.get("method").and_then(|m| m.as_str()) {
        Some(m) if !METHODS.contains(&m) => {
            (id, AgentError::new(ErrorCode::UnknownMethod, format!("method {m:?} is not known to this agent")))
        }
        _ => (id, AgentError::new(ErrorCode::MalformedRequest, "not a valid request envelope")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_have_the_documented_wire_form() {
        let r = RequestEnvelope {
            id: 3,
            request: Request::Handshake(HandshakeRequest { protocol: PROTOCOL_VERSION, host_version: "0.1.0".into() }),
        };
        let v: serde_json::Value = serde_json::to_value(&r).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"id":3,"method":"handshake","params":{"protocol":{"major":1,"minor":6},"host_version":"0.1.0"}})
        );
        let h: serde_json::Value = serde_json::to_value(RequestEnvelope { id: 4, request: Request::Health }).unwrap();
        assert_eq!(h, serde_json::json!({"id":4,"method":"health"}));
        let s = serde_json::to_value(RequestEnvelope {
            id: 5,
            request: Request::Shutdown(ShutdownRequest { action: ShutdownAction::PowerOff }),
        })
        .unwrap();
        assert_eq!(s, serde_json::json!({"id":5,"method":"shutdown","params":{"action":"power_off"}}));
    }

    #[test]
    fn responses_have_the_documented_wire_form() {
        let ok = ResponseEnvelope::ok(5, Response::Shutdown(ShutdownResponse { action: ShutdownAction::Reboot }));
        assert_eq!(
            serde_json::to_value(&ok).unwrap(),
            serde_json::json!({"id":5,"result":{"method":"shutdown","action":"reboot"}})
        );
        let err = ResponseEnvelope::error(6, AgentError::new(ErrorCode::IncompatibleVersion, "major 2 vs 1"));
        assert_eq!(
            serde_json::to_value(&err).unwrap(),
            serde_json::json!({"id":6,"error":{"code":"incompatible_version","message":"major 2 vs 1"}})
        );
    }

    #[test]
    fn every_error_code_serializes_as_its_stable_name() {
        for code in [
            ErrorCode::MalformedRequest,
            ErrorCode::UnknownMethod,
            ErrorCode::FrameTooLarge,
            ErrorCode::HandshakeRequired,
            ErrorCode::IncompatibleVersion,
            ErrorCode::AlreadyHandshaken,
            ErrorCode::ShutdownFailed,
            ErrorCode::HealthUnavailable,
            ErrorCode::NoSuchContainer,
            ErrorCode::ContainerExists,
            ErrorCode::WrongState,
            ErrorCode::InvalidConfig,
            ErrorCode::Unsupported,
            ErrorCode::ContainerFailed,
            ErrorCode::StdioTimeout,
            ErrorCode::GuestSetupFailed,
            ErrorCode::DiskNotFound,
            ErrorCode::NetworkFailed,
            ErrorCode::NotRestored,
        ] {
            assert_eq!(serde_json::to_value(code).unwrap(), serde_json::Value::String(code.as_str().into()));
        }
    }

    #[test]
    fn configure_network_has_its_documented_wire_form() {
        let json = serde_json::json!({"id": 5, "method": "configure_network", "params": {"id": "c1",
            "interfaces": [{"device_mac": "02:00:00:00:00:01", "mac": "8a:01:02:03:04:05", "mtu": 1400,
                            "addresses": [{"address": "10.88.0.5", "prefix": 16}]}],
            "routes": [{"destination": null, "gateway": "10.88.0.1", "interface": 0}]}});
        let r: RequestEnvelope = serde_json::from_value(json.clone()).unwrap();
        let Request::ConfigureNetwork(n) = &r.request else { panic!("{r:?}") };
        assert_eq!(n.interfaces[0].mac.to_string(), "8a:01:02:03:04:05");
        assert_eq!(n.routes[0].to_string(), "default via 10.88.0.1");
        assert_eq!(serde_json::to_value(&r).unwrap(), json);
        assert!(METHODS.contains(&r.request.method()));
    }

    #[test]
    fn delete_container_has_its_documented_wire_form() {
        let json = serde_json::json!({"id": 3, "method": "delete_container", "params": {"id": "m1"}});
        let r: RequestEnvelope = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(r.request, Request::DeleteContainer(super::super::container::ContainerRef { id: "m1".into() }));
        assert_eq!(serde_json::to_value(&r).unwrap(), json);
        assert_eq!(Some(&r.request.method()), METHODS.last());
        let wire = serde_json::json!({"id": 3, "result": {"method": "delete_container"}});
        assert_eq!(serde_json::to_value(ResponseEnvelope::ok(3, Response::DeleteContainer)).unwrap(), wire);
    }

    #[test]
    fn restored_has_its_documented_wire_form() {
        let json = serde_json::json!({"id": 2, "method": "restored",
            "params": {"realtime_ns": 1_790_000_000_123_456_789_u64, "seed": [1, 2, 255], "generation": 7}});
        let r: RequestEnvelope = serde_json::from_value(json.clone()).unwrap();
        let Request::Restored(q) = &r.request else { panic!("{r:?}") };
        assert_eq!((q.realtime_ns, q.seed.as_slice(), q.generation), (1_790_000_000_123_456_789, &[1, 2, 255][..], 7));
        assert_eq!(serde_json::to_value(&r).unwrap(), json);
        assert!(METHODS.contains(&r.request.method()));

        let ok = ResponseEnvelope::ok(
            2,
            Response::Restored(RestoredReply {
                guest_realtime_before_ns: 1_700_000_000_000_000_000,
                clock_step_ns: -5,
            }),
        );
        let wire = serde_json::json!({"id": 2, "result": {"method": "restored",
            "guest_realtime_before_ns": 1_700_000_000_000_000_000_u64, "clock_step_ns": -5}});
        assert_eq!(serde_json::to_value(&ok).unwrap(), wire);
        assert_eq!(serde_json::from_value::<ResponseEnvelope>(wire).unwrap(), ok);
        assert_eq!(ErrorCode::NotRestored.as_str(), "not_restored");
    }

    #[test]
    fn a_restore_seed_has_32_to_256_bytes() {
        let with = |n: usize| RestoredRequest { realtime_ns: 1, seed: vec![0xa5; n], generation: 1 };
        for n in [32, 64, 256] {
            assert!(with(n).check_seed().is_ok(), "{n} bytes");
        }
        for n in [0, 31, 257, 4096] {
            let e = with(n).check_seed().unwrap_err();
            assert_eq!(e.code, ErrorCode::InvalidConfig, "{n} bytes");
            assert!(e.message.contains(&format!("{n} bytes")), "{e}");
        }
    }

    /// A cold boot's handshake and health read exactly as before 1.5, and
    /// a 1.4 agent's answers still parse.
    #[test]
    fn the_restore_fields_appear_only_when_set() {
        let health = HealthResponse { uptime_ms: 1, online_cpus: 1, ..HealthResponse::default() };
        let v = serde_json::to_value(Response::Health(health.clone())).unwrap();
        assert!(v.get("awaiting_restore").is_none() && v.get("generation").is_none(), "{v}");
        let waiting = HealthResponse { awaiting_restore: true, generation: Some(3), ..health };
        let v = serde_json::to_value(Response::Health(waiting)).unwrap();
        assert_eq!((v["awaiting_restore"].as_bool(), v["generation"].as_u64()), (Some(true), Some(3)));
        let old =
            r#"{"method":"handshake","protocol":{"major":1,"minor":4},"agent_version":"0.1.0","kernel_release":"6.1"}"#;
        let Response::Handshake(h) = serde_json::from_str(old).unwrap() else { panic!() };
        assert_eq!((h.awaiting_restore, h.generation), (false, None));
    }

    #[test]
    fn newer_minor_versions_are_compatible_other_majors_are_not() {
        let v1_0 = ProtocolVersion { major: 1, minor: 1 };
        assert!(v1_0.compatible_with(ProtocolVersion { major: 1, minor: 7 }));
        assert!(!v1_0.compatible_with(ProtocolVersion { major: 2, minor: 0 }));
    }

    #[test]
    fn bad_requests_are_classified() {
        assert_eq!(classify_bad_request(b"not json").1.code, ErrorCode::MalformedRequest);
        let (id, e) = classify_bad_request(br#"{"id":9,"method":"checkpoint","params":{}}"#);
        assert_eq!((id, e.code), (9, ErrorCode::UnknownMethod));
        let (id, e) = classify_bad_request(br#"{"id":2,"method":"handshake","params":{"protocol":3}}"#);
        assert_eq!((id, e.code), (2, ErrorCode::MalformedRequest));
    }

    #[test]
    fn unknown_response_fields_from_a_newer_agent_are_ignored() {
        let wire = r#"{"id":1,"result":{"method":"health","uptime_ms":1,"mem_total_kib":2,"mem_available_kib":1,"zombies_reaped":0,"online_cpus":1,"future":"x"}}"#;
        let r: ResponseEnvelope = serde_json::from_str(wire).unwrap();
        assert!(matches!(r.into_result().unwrap(), Response::Health(_)));
    }
}
