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
pub const PROTOCOL_VERSION: ProtocolVersion = ProtocolVersion { major: 1, minor: 4 };

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
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthResponse {
    pub uptime_ms: u64,
    pub mem_total_kib: u64,
    pub mem_available_kib: u64,
    /// Children PID 1 has reaped since boot.
    pub zombies_reaped: u64,
    pub online_cpus: u32,
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
            serde_json::json!({"id":3,"method":"handshake","params":{"protocol":{"major":1,"minor":4},"host_version":"0.1.0"}})
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
        assert_eq!(Some(&r.request.method()), METHODS.last());
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
