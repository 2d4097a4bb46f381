//! The host side of the agent protocol over the hybrid vsock socket:
//! connect to the VMM's AF_UNIX socket, ask for the agent's port with
//! `CONNECT <port>\n`, then speak [`crate::agent`] frames.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::agent::container::{
    AttachStreamRequest, ContainerRef, CreateContainerRequest, CreateContainerResponse, ExecRequest, ExecResponse,
    ExitStatus, PsRequest, PsResponse, ResizeRequest, SignalRequest, StatsResponse, StreamKind, UpdateRequest,
    WaitRequest,
};
use crate::agent::{
    self, Client, HandshakeRequest, HandshakeResponse, HealthResponse, NetworkRequest, NetworkResponse, ProtocolError,
    Request, Response, RestoredReply, RestoredRequest, ShutdownAction, ShutdownRequest, PROTOCOL_VERSION,
};

#[derive(Debug, thiserror::Error)]
pub enum AgentClientError {
    #[error("the agent did not accept a connection on vsock port {port} through {path} before the deadline")]
    Connect {
        path: PathBuf,
        port: u32,
        #[source]
        source: std::io::Error,
    },
    #[error("the VMM answered {answer:?} to CONNECT {port} (expected \"OK <port>\")")]
    BadConnectReply { port: u32, answer: String },
    #[error("agent protocol error")]
    Protocol(#[from] ProtocolError),
    #[error("the agent speaks protocol {agent}, this amphi speaks {host}: upgrade the agent in the guest image")]
    IncompatibleVersion { host: agent::ProtocolVersion, agent: agent::ProtocolVersion },
    #[error("the agent speaks protocol {agent}, which lacks `{method}` (protocol {needs})")]
    TooOld { method: &'static str, needs: agent::ProtocolVersion, agent: agent::ProtocolVersion },
    #[error("the host's wall clock is before 1970")]
    HostClock(#[source] std::time::SystemTimeError),
    #[error("cannot read the host's random number generator")]
    HostRandom(#[source] std::io::Error),
}

/// Fills `buf` from getrandom(2) (the host's CRNG, ready long after boot).
fn fill_random(buf: &mut [u8]) -> std::io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        let rest = &mut buf[done..];
        // SAFETY: getrandom writes at most `rest.len()` bytes into `rest`,
        // a live mutable slice.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(e);
            }
            continue;
        }
        done += n as usize;
    }
    Ok(())
}

/// Reads the `OK <port>\n` line byte by byte, leaving the stream at the
/// first frame.
fn read_ok_line(s: &mut UnixStream) -> std::io::Result<String> {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while line.len() < 64 {
        if s.read(&mut b)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        if b[0] == b'\n' {
            break;
        }
        line.push(b[0]);
    }
    Ok(String::from_utf8_lossy(&line).into_owned())
}

/// Opens a stream to guest port `port`, retrying until `deadline` while the
/// guest is not listening yet (the VMM then closes the stream).
pub fn connect(uds: &Path, port: u32, deadline: Instant) -> Result<UnixStream, AgentClientError> {
    loop {
        let attempt = (|| -> Result<Result<UnixStream, String>, std::io::Error> {
            let mut s = crate::vm::uds::connect(uds)?;
            s.set_read_timeout(Some(Duration::from_secs(2)))?;
            s.write_all(format!("CONNECT {port}\n").as_bytes())?;
            let line = read_ok_line(&mut s)?;
            if line.starts_with("OK ") {
                Ok(Ok(s))
            } else {
                Ok(Err(line))
            }
        })();
        match attempt {
            Ok(Ok(s)) => return Ok(s),
            Ok(Err(answer)) => return Err(AgentClientError::BadConnectReply { port, answer }),
            Err(e) if Instant::now() >= deadline => {
                return Err(AgentClientError::Connect { path: uds.into(), port, source: e })
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// The control connection with a total deadline per call: every read and
/// write gets only what is left of it, so a guest that answers one byte at
/// a time cannot stretch a call past its deadline.
pub struct Conn {
    stream: UnixStream,
    deadline: Option<Instant>,
}

impl Conn {
    fn left(&self) -> std::io::Result<Option<Duration>> {
        match self.deadline {
            None => Ok(None),
            Some(d) => match d.checked_duration_since(Instant::now()) {
                Some(left) if !left.is_zero() => Ok(Some(left)),
                _ => Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "the agent did not answer in time")),
            },
        }
    }
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let left = self.left()?;
        self.stream.set_read_timeout(left)?;
        self.stream.read(buf)
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let left = self.left()?;
        self.stream.set_write_timeout(left)?;
        self.stream.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.stream.flush()
    }
}

/// The deadline of a call on a connection made by [`AgentClient::connect`],
/// unless the caller sets another.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(30);

pub struct AgentClient {
    client: Client<Conn>,
    /// Applied to each call that does not give its own deadline.
    timeout: Option<Duration>,
    /// The agent's protocol version, once it shook hands.
    agent_protocol: Option<agent::ProtocolVersion>,
}

macro_rules! expect {
    ($resp:expr, $sent:literal, $pat:pat => $val:expr) => {
        match $resp {
            $pat => Ok($val),
            other => Err(AgentClientError::Protocol(ProtocolError::WrongResponse { sent: $sent, got: other.method() })),
        }
    };
}

impl AgentClient {
    pub fn new(stream: UnixStream) -> Self {
        AgentClient { client: Client::new(Conn { stream, deadline: None }), timeout: None, agent_protocol: None }
    }

    /// Connects to the agent through the VMM's socket and shakes hands,
    /// all before `deadline`.
    pub fn connect(uds: &Path, deadline: Instant) -> Result<Self, AgentClientError> {
        let stream = connect(uds, crate::agent::AGENT_VSOCK_PORT, deadline)?;
        let mut c = AgentClient::new(stream);
        c.timeout = Some(deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1)));
        c.handshake()?;
        c.timeout = Some(DEFAULT_CALL_TIMEOUT);
        Ok(c)
    }

    /// Every later call must finish within `t` (`None`: calls may block,
    /// as `wait` does by design).
    pub fn set_timeout(&mut self, t: Option<Duration>) {
        self.timeout = t;
    }

    fn call(&mut self, request: Request) -> Result<Response, AgentClientError> {
        self.client.get_mut().deadline = self.timeout.map(|t| Instant::now() + t);
        Ok(self.client.call(request)?)
    }

    pub fn handshake(&mut self) -> Result<HandshakeResponse, AgentClientError> {
        let req = HandshakeRequest { protocol: PROTOCOL_VERSION, host_version: env!("CARGO_PKG_VERSION").into() };
        match self.call(Request::Handshake(req))? {
            Response::Handshake(h) if PROTOCOL_VERSION.compatible_with(h.protocol) => {
                self.agent_protocol = Some(h.protocol);
                Ok(h)
            }
            Response::Handshake(h) => {
                Err(AgentClientError::IncompatibleVersion { host: PROTOCOL_VERSION, agent: h.protocol })
            }
            other => Err(ProtocolError::WrongResponse { sent: "handshake", got: other.method() }.into()),
        }
    }

    /// The agent's protocol version (after the handshake), for features
    /// added in a minor version.
    pub fn agent_protocol(&self) -> Option<agent::ProtocolVersion> {
        self.agent_protocol
    }

    pub fn health(&mut self) -> Result<HealthResponse, AgentClientError> {
        expect!(self.call(Request::Health)?, "health", Response::Health(h) => h)
    }

    pub fn shutdown(&mut self, action: ShutdownAction) -> Result<(), AgentClientError> {
        expect!(self.call(Request::Shutdown(ShutdownRequest { action }))?, "shutdown", Response::Shutdown(_) => ())
    }

    pub fn create_container(
        &mut self,
        req: CreateContainerRequest,
    ) -> Result<CreateContainerResponse, AgentClientError> {
        expect!(self.call(Request::CreateContainer(req))?, "create_container", Response::CreateContainer(r) => r)
    }

    pub fn resume_create(&mut self, id: &str) -> Result<CreateContainerResponse, AgentClientError> {
        expect!(self.call(Request::ResumeCreate(ContainerRef { id: id.into() }))?, "resume_create",
            Response::ResumeCreate(r) => r)
    }

    pub fn start_container(&mut self, id: &str) -> Result<(), AgentClientError> {
        expect!(self.call(Request::StartContainer(ContainerRef { id: id.into() }))?, "start_container",
            Response::StartContainer => ())
    }

    pub fn signal(&mut self, req: SignalRequest) -> Result<(), AgentClientError> {
        expect!(self.call(Request::Signal(req))?, "signal", Response::Signal => ())
    }

    /// Blocks (whatever the timeout) until the process ended and its
    /// output was flushed.
    pub fn wait(&mut self, req: WaitRequest) -> Result<ExitStatus, AgentClientError> {
        let saved = self.timeout.take();
        let r = self.call(Request::Wait(req));
        self.timeout = saved;
        expect!(r?, "wait", Response::Wait(s) => s)
    }

    pub fn resize(&mut self, req: ResizeRequest) -> Result<(), AgentClientError> {
        expect!(self.call(Request::Resize(req))?, "resize", Response::Resize => ())
    }

    pub fn exec(&mut self, req: ExecRequest) -> Result<ExecResponse, AgentClientError> {
        expect!(self.call(Request::Exec(req))?, "exec", Response::Exec(r) => r)
    }

    pub fn pause(&mut self, id: &str) -> Result<(), AgentClientError> {
        expect!(self.call(Request::Pause(ContainerRef { id: id.into() }))?, "pause", Response::Pause => ())
    }

    pub fn resume(&mut self, id: &str) -> Result<(), AgentClientError> {
        expect!(self.call(Request::Resume(ContainerRef { id: id.into() }))?, "resume", Response::Resume => ())
    }

    pub fn ps(&mut self, req: PsRequest) -> Result<PsResponse, AgentClientError> {
        expect!(self.call(Request::Ps(req))?, "ps", Response::Ps(r) => r)
    }

    pub fn stats(&mut self, id: &str) -> Result<StatsResponse, AgentClientError> {
        expect!(self.call(Request::Stats(ContainerRef { id: id.into() }))?, "stats", Response::Stats(r) => r)
    }

    pub fn update(&mut self, req: UpdateRequest) -> Result<(), AgentClientError> {
        expect!(self.call(Request::Update(req))?, "update", Response::Update => ())
    }

    /// Removes a container from the guest, killing what is left of it;
    /// refused without a round trip by an agent older than 1.6.
    pub fn delete_container(&mut self, id: &str) -> Result<(), AgentClientError> {
        let needs = agent::ProtocolVersion { major: 1, minor: 6 };
        if let Some(v) = self.agent_protocol.filter(|v| v.minor < needs.minor) {
            return Err(AgentClientError::TooOld { method: "delete_container", needs, agent: v });
        }
        expect!(self.call(Request::DeleteContainer(ContainerRef { id: id.into() }))?, "delete_container",
            Response::DeleteContainer => ())
    }

    pub fn configure_network(&mut self, req: NetworkRequest) -> Result<NetworkResponse, AgentClientError> {
        expect!(self.call(Request::ConfigureNetwork(req))?, "configure_network", Response::ConfigureNetwork(r) => r)
    }

    /// Tells a guest restored from a template that it was: it takes
    /// `seed` (host randomness, [`agent::RESTORE_SEED_LEN`] bytes) into
    /// its RNG and the host's wall clock, read here, as its own. Refused
    /// without a round trip by an agent older than 1.5.
    /// [`Self::restored`] with a seed and generation from the host's RNG:
    /// what a VM restored from a template is told before anything runs.
    pub fn announce_restore(&mut self) -> Result<RestoredReply, AgentClientError> {
        let mut b = [0u8; 72];
        fill_random(&mut b).map_err(AgentClientError::HostRandom)?;
        let (seed, generation) = b.split_at(64);
        let generation = u64::from_le_bytes(generation.try_into().unwrap_or_default());
        self.restored(seed, generation)
    }

    pub fn restored(&mut self, seed: &[u8], generation: u64) -> Result<RestoredReply, AgentClientError> {
        let needs = agent::ProtocolVersion { major: 1, minor: 5 };
        if let Some(v) = self.agent_protocol.filter(|v| v.minor < needs.minor) {
            return Err(AgentClientError::TooOld { method: "restored", needs, agent: v });
        }
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
        let realtime_ns = u64::try_from(now.map_err(AgentClientError::HostClock)?.as_nanos()).unwrap_or(u64::MAX);
        let req = RestoredRequest { realtime_ns, seed: seed.to_vec(), generation };
        expect!(self.call(Request::Restored(req))?, "restored", Response::Restored(r) => r)
    }
}

/// Opens one stdio stream of `session` to the agent. The stream carries
/// raw bytes once this returns.
pub fn attach_stream(
    uds: &Path,
    session: &str,
    stream: StreamKind,
    deadline: Instant,
) -> Result<UnixStream, AgentClientError> {
    let s = connect(uds, crate::agent::AGENT_VSOCK_PORT, deadline)?;
    let mut c = Client::new(Conn { stream: s, deadline: Some(deadline) });
    let req = AttachStreamRequest { protocol: PROTOCOL_VERSION, session: session.into(), stream };
    expect!(c.call(Request::AttachStream(req))?, "attach_stream", Response::AttachStream => ())?;
    let conn = c.into_inner();
    conn.stream.set_read_timeout(None).map_err(|e| ProtocolError::Frame(e.into()))?;
    conn.stream.set_write_timeout(None).map_err(|e| ProtocolError::Frame(e.into()))?;
    Ok(conn.stream)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::{receive, send, RequestEnvelope, ResponseEnvelope};
    use std::io::BufRead;
    use std::os::unix::net::UnixListener;

    /// Reads a handshake request and answers it as an agent of `protocol`.
    fn answer_handshake(
        r: &mut impl Read,
        w: &mut impl Write,
        protocol: agent::ProtocolVersion,
        awaiting_restore: bool,
    ) {
        let req: RequestEnvelope = receive(r).unwrap().unwrap();
        let reply = Response::Handshake(HandshakeResponse {
            protocol,
            agent_version: "9.9.9".into(),
            kernel_release: "6.1.0-test".into(),
            modules_loaded: vec![],
            agent_init_ms: 1,
            awaiting_restore,
            generation: None,
        });
        send(w, &ResponseEnvelope::ok(req.id, reply)).unwrap();
    }

    /// A VMM-side stand-in: refuses the first CONNECT (guest not listening
    /// yet), accepts the second and answers one handshake.
    fn fake_vmm(path: &Path) -> std::thread::JoinHandle<String> {
        let listener = UnixListener::bind(path).unwrap();
        std::thread::spawn(move || {
            drop(listener.accept().unwrap());
            let (s, _) = listener.accept().unwrap();
            let mut r = std::io::BufReader::new(s.try_clone().unwrap());
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            let mut w = s;
            w.write_all(b"OK 1073741824\n").unwrap();
            answer_handshake(&mut r, &mut w, PROTOCOL_VERSION, false);
            line
        })
    }

    #[test]
    fn connect_retries_until_the_guest_listens_then_handshakes() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("v.sock");
        let vmm = fake_vmm(&path);
        let s = connect(&path, AGENT_PORT_FOR_TEST, Instant::now() + Duration::from_secs(10)).unwrap();
        let mut c = AgentClient::new(s);
        let h = c.handshake().unwrap();
        assert_eq!((h.agent_version.as_str(), h.kernel_release.as_str()), ("9.9.9", "6.1.0-test"));
        assert_eq!(vmm.join().unwrap(), "CONNECT 1024\n");
    }

    #[test]
    fn connect_gives_up_at_the_deadline() {
        let d = tempfile::tempdir().unwrap();
        let e = connect(&d.path().join("absent.sock"), 1024, Instant::now() + Duration::from_millis(100)).unwrap_err();
        assert!(matches!(e, AgentClientError::Connect { port: 1024, .. }), "{e}");
    }

    #[test]
    fn a_bad_connect_reply_is_reported() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("v.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let t = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            s.write_all(b"NO\n").unwrap();
            std::thread::sleep(Duration::from_millis(100));
        });
        let e = connect(&path, 1024, Instant::now() + Duration::from_secs(5)).unwrap_err();
        assert!(matches!(e, AgentClientError::BadConnectReply { .. }), "{e}");
        t.join().unwrap();
    }

    /// A guest agent that answers one byte at a time, each well within
    /// any per-read timeout, with a frame announcing the largest payload
    /// there is: the call still ends at its total deadline, with a
    /// timeout error, however long the guest would go on.
    #[test]
    fn a_slow_agent_cannot_stretch_a_call_past_its_deadline() {
        let (host, guest) = UnixStream::pair().unwrap();
        let agent = std::thread::spawn(move || {
            let mut r = std::io::BufReader::new(guest.try_clone().unwrap());
            let _: RequestEnvelope = receive(&mut r).unwrap().unwrap();
            let mut w = guest;
            let mut frame = crate::agent::frame::encode_header(crate::agent::MAX_FRAME_LEN).unwrap().to_vec();
            frame.extend(std::iter::repeat_n(b' ', crate::agent::MAX_FRAME_LEN));
            // Until the host hangs up (EPIPE).
            for b in frame {
                if w.write_all(&[b]).is_err() {
                    return true;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            false
        });
        let mut c = AgentClient::new(host);
        c.set_timeout(Some(Duration::from_millis(300)));
        let t0 = Instant::now();
        let e = c.health().unwrap_err();
        let waited = t0.elapsed();
        match &e {
            AgentClientError::Protocol(ProtocolError::Frame(agent::FrameError::Io(io))) => {
                assert!(matches!(io.kind(), std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock), "{io:?}");
            }
            other => panic!("expected a timeout, got {other:?}"),
        }
        // The trickle would take over an hour; the deadline cut it.
        assert!(waited < Duration::from_secs(30), "the call took {waited:?}");
        drop(c);
        assert!(agent.join().unwrap(), "the agent saw the host hang up");
    }

    /// An agent of protocol `minor` on the other end of a socketpair:
    /// answers the handshake, then one `restored` if it gets one, and
    /// returns that request.
    fn restorable_agent(minor: u32) -> (AgentClient, std::thread::JoinHandle<Option<RestoredRequest>>) {
        let (host, guest) = UnixStream::pair().unwrap();
        let agent = std::thread::spawn(move || {
            let mut r = std::io::BufReader::new(guest.try_clone().unwrap());
            let mut w = guest;
            answer_handshake(&mut r, &mut w, agent::ProtocolVersion { major: 1, minor }, true);
            let env: RequestEnvelope = receive(&mut r).unwrap()?;
            let Request::Restored(req) = env.request else { panic!("{env:?}") };
            let reply = RestoredReply { guest_realtime_before_ns: 5, clock_step_ns: 6 };
            send(&mut w, &ResponseEnvelope::ok(env.id, Response::Restored(reply))).unwrap();
            Some(req)
        });
        let mut c = AgentClient::new(host);
        c.set_timeout(Some(Duration::from_secs(10)));
        assert!(c.handshake().unwrap().awaiting_restore);
        (c, agent)
    }

    #[test]
    fn restored_sends_the_seed_the_generation_and_the_host_clock() {
        let (mut c, agent) = restorable_agent(5);
        let before = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
        let reply = c.restored(&[9; 64], 4).unwrap();
        let after = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
        assert_eq!(reply, RestoredReply { guest_realtime_before_ns: 5, clock_step_ns: 6 });
        let req = agent.join().unwrap().unwrap();
        assert_eq!((req.seed, req.generation), (vec![9; 64], 4));
        assert!((before..=after).contains(&req.realtime_ns), "{before} <= {} <= {after}", req.realtime_ns);
    }

    #[test]
    fn restored_is_not_sent_to_an_agent_older_than_1_5() {
        let (mut c, agent) = restorable_agent(4);
        let e = c.restored(&[9; 64], 1).unwrap_err();
        assert!(matches!(e, AgentClientError::TooOld { method: "restored", .. }), "{e}");
        assert_eq!(e.to_string(), "the agent speaks protocol 1.4, which lacks `restored` (protocol 1.5)");
        drop(c);
        assert!(agent.join().unwrap().is_none(), "nothing reached the agent");
    }

    const AGENT_PORT_FOR_TEST: u32 = crate::agent::AGENT_VSOCK_PORT;
}
