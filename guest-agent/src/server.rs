//! The agent's side of the protocol: one thread per control connection.

use std::fs::File;
use std::os::fd::OwnedFd;
use std::sync::Arc;

use crate::containers::Containers;
use crate::reaper::Exits;
use crate::restore::Restore;
use crate::sessions::Sessions;

use amphi::agent::message::{classify_bad_request, ShutdownResponse};
use amphi::agent::{
    read_frame, send, AgentError, ErrorCode, FrameError, HandshakeResponse, HealthResponse, Request, RequestEnvelope,
    Response, ResponseEnvelope, ShutdownAction, AGENT_VSOCK_PORT, MAX_FRAME_LEN, PROTOCOL_VERSION,
};
use nix::sys::socket::{self, accept, bind, socket, AddressFamily, Backlog, SockFlag, SockType, VsockAddr};

pub struct Context {
    pub modules_loaded: Vec<String>,
    pub init_ms: u64,
    pub exits: Arc<Exits>,
    pub sessions: Arc<Sessions>,
    pub containers: Containers,
    pub restore: Restore,
}

impl Context {
    pub fn new(modules_loaded: Vec<String>, init_ms: u64, exits: Arc<Exits>, restore: Restore) -> Context {
        let sessions = Arc::new(Sessions::default());
        Context {
            modules_loaded,
            init_ms,
            containers: Containers::new(exits.clone(), sessions.clone()),
            exits,
            sessions,
            restore,
        }
    }
}

pub fn listen() -> nix::Result<OwnedFd> {
    let fd = socket(AddressFamily::Vsock, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)?;
    bind(std::os::fd::AsRawFd::as_raw_fd(&fd), &VsockAddr::new(libc::VMADDR_CID_ANY, AGENT_VSOCK_PORT))?;
    socket::listen(&fd, Backlog::new(16)?)?;
    Ok(fd)
}

pub fn serve(listener: OwnedFd, ctx: Context) -> ! {
    let ctx = Arc::new(ctx);
    loop {
        match accept(&listener) {
            Ok(conn) => {
                let ctx = ctx.clone();
                let _ = std::thread::Builder::new().name("conn".into()).spawn(move || {
                    if let Some((action, mut conn)) = handle(File::from(conn), &ctx) {
                        // The reply is only queued in the guest's socket:
                        // powering off now could lose it. The host closes the
                        // connection once it has the reply; wait for that
                        // (bounded), then power off.
                        wait_for_close(&mut conn);
                        drop(conn);
                        crate::init::power_off(match action {
                            ShutdownAction::PowerOff => nix::sys::reboot::RebootMode::RB_POWER_OFF,
                            ShutdownAction::Reboot => nix::sys::reboot::RebootMode::RB_AUTOBOOT,
                        });
                    }
                });
            }
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => {
                crate::init::console(&format!("amphi-agent: accept failed: {e}"));
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        }
    }
}

fn kernel_release() -> String {
    nix::sys::utsname::uname().map(|u| u.release().to_string_lossy().into_owned()).unwrap_or_default()
}

fn health(ctx: &Context) -> Result<HealthResponse, AgentError> {
    let unavailable =
        |what: &str, e: std::io::Error| AgentError::new(ErrorCode::HealthUnavailable, format!("{what}: {e}"));
    let uptime = std::fs::read_to_string("/proc/uptime").map_err(|e| unavailable("/proc/uptime", e))?;
    let uptime_s: f64 = uptime.split_whitespace().next().and_then(|s| s.parse().ok()).unwrap_or(0.0);
    let meminfo = std::fs::read_to_string("/proc/meminfo").map_err(|e| unavailable("/proc/meminfo", e))?;
    let field = |name: &str| {
        meminfo
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    Ok(HealthResponse {
        uptime_ms: (uptime_s * 1000.0) as u64,
        mem_total_kib: field("MemTotal:"),
        mem_available_kib: field("MemAvailable:"),
        zombies_reaped: ctx.exits.reaped(),
        online_cpus: std::thread::available_parallelism().map(|n| n.get() as u32).unwrap_or(1),
        awaiting_restore: ctx.restore.awaiting(),
        generation: ctx.restore.generation(),
    })
}

/// Waits until the peer closes `conn` (EOF), at most two seconds.
fn wait_for_close(conn: &mut File) {
    use std::io::Read;
    use std::os::fd::AsFd;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    let mut buf = [0u8; 256];
    while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
        let mut fds = [nix::poll::PollFd::new(conn.as_fd(), nix::poll::PollFlags::POLLIN)];
        let ms = nix::poll::PollTimeout::from(left.as_millis().min(2000) as u16);
        match nix::poll::poll(&mut fds, ms) {
            Ok(0) => return,
            Ok(_) => match conn.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            },
            Err(nix::errno::Errno::EINTR) => {}
            Err(_) => return,
        }
    }
}

/// Serves one connection until it closes, breaks, turns into a stdio
/// stream, or a shutdown was acknowledged (then returns the action and the
/// connection, for the caller to carry out).
pub fn handle(mut conn: File, ctx: &Context) -> Option<(ShutdownAction, File)> {
    let mut handshaken = false;
    loop {
        let payload = match read_frame(&mut conn, MAX_FRAME_LEN) {
            Ok(Some(p)) => p,
            Ok(None) => return None,
            Err(FrameError::TooLarge { len, max }) => {
                let e = AgentError::new(ErrorCode::FrameTooLarge, format!("frame of {len} bytes exceeds {max}"));
                let _ = send(&mut conn, &ResponseEnvelope::error(0, e));
                return None;
            }
            Err(_) => return None,
        };
        // For `restored`: the guest's time since this point is added to
        // the host's wall clock.
        let received = ctx.restore.monotonic_ns();
        let env: RequestEnvelope = match serde_json::from_slice(&payload) {
            Ok(r) => r,
            Err(_) => {
                let (id, e) = classify_bad_request(&payload);
                if send(&mut conn, &ResponseEnvelope::error(id, e)).is_err() {
                    return None;
                }
                continue;
            }
        };
        let id = env.id;
        let mut after = None;
        let outcome = match env.request {
            Request::Handshake(_) if handshaken => {
                Err(AgentError::new(ErrorCode::AlreadyHandshaken, "this connection has already shaken hands"))
            }
            Request::Handshake(h) if !PROTOCOL_VERSION.compatible_with(h.protocol) => Err(AgentError::new(
                ErrorCode::IncompatibleVersion,
                format!("host speaks protocol {}, this agent {}", h.protocol, PROTOCOL_VERSION),
            )),
            Request::Handshake(_) => {
                handshaken = true;
                Ok(Response::Handshake(HandshakeResponse {
                    protocol: PROTOCOL_VERSION,
                    agent_version: env!("CARGO_PKG_VERSION").into(),
                    kernel_release: kernel_release(),
                    modules_loaded: ctx.modules_loaded.clone(),
                    agent_init_ms: ctx.init_ms,
                    awaiting_restore: ctx.restore.awaiting(),
                    generation: ctx.restore.generation(),
                }))
            }
            // A stdio stream: its one frame stands in for the handshake.
            Request::AttachStream(a) if !handshaken => {
                if !PROTOCOL_VERSION.compatible_with(a.protocol) {
                    let e = AgentError::new(
                        ErrorCode::IncompatibleVersion,
                        format!("host speaks protocol {}, this agent {}", a.protocol, PROTOCOL_VERSION),
                    );
                    let _ = send(&mut conn, &ResponseEnvelope::error(id, e));
                    return None;
                }
                if send(&mut conn, &ResponseEnvelope::ok(id, Response::AttachStream)).is_err() {
                    return None;
                }
                let _ = ctx.sessions.attach(&a.session, a.stream, conn);
                return None;
            }
            _ if !handshaken => Err(AgentError::new(ErrorCode::HandshakeRequired, "send a handshake request first")),
            r if !ctx.restore.admits(&r) => Err(crate::restore::not_restored(&r)),
            Request::Restored(r) => ctx.restore.restored(&r, received).map(Response::Restored),
            Request::Health => health(ctx).map(Response::Health),
            Request::Shutdown(s) => {
                after = Some(s.action);
                Ok(Response::Shutdown(ShutdownResponse { action: s.action }))
            }
            Request::AttachStream(_) => Err(AgentError::new(
                ErrorCode::MalformedRequest,
                "attach_stream must be the first request of a stdio connection",
            )),
            Request::CreateContainer(c) => ctx.containers.create(c).map(Response::CreateContainer),
            Request::ResumeCreate(c) => ctx.containers.resume_create(&c.id).map(Response::ResumeCreate),
            Request::StartContainer(c) => ctx.containers.start(&c.id).map(|()| Response::StartContainer),
            Request::Signal(s) => ctx.containers.signal(&s).map(|()| Response::Signal),
            Request::Wait(w) => ctx.containers.wait(&w).map(Response::Wait),
            Request::Resize(r) => ctx.containers.resize(&r).map(|()| Response::Resize),
            Request::Exec(e) => ctx.containers.exec(e).map(Response::Exec),
            Request::Pause(c) => ctx.containers.pause(&c.id).map(|()| Response::Pause),
            Request::Resume(c) => ctx.containers.resume(&c.id).map(|()| Response::Resume),
            Request::Ps(p) => ctx.containers.ps(&p).map(Response::Ps),
            Request::Stats(c) => ctx.containers.stats(&c.id).map(Response::Stats),
            Request::Update(u) => ctx.containers.update(&u).map(|()| Response::Update),
            Request::DeleteContainer(c) => ctx.containers.delete(&c.id).map(|()| Response::DeleteContainer),
            Request::ConfigureNetwork(n) => crate::network::configure(&n).map(Response::ConfigureNetwork),
        };
        let reply = match outcome {
            Ok(r) => ResponseEnvelope::ok(id, r),
            Err(e) => ResponseEnvelope::error(id, e),
        };
        let sent = send(&mut conn, &reply).is_ok();
        if let Some(action) = after {
            return Some((action, conn));
        }
        if !sent {
            return None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use amphi::agent::{Client, HandshakeRequest, ProtocolError, ProtocolVersion, ShutdownRequest};
    use std::os::unix::net::UnixStream;

    fn booted(template: bool) -> Context {
        let exits = Arc::new(Exits::default());
        for pid in 0..3 {
            exits.record(100 + pid, amphi::agent::container::ExitStatus::exited(0));
        }
        let kernel = crate::restore::tests::FakeKernel { realtime_ns: 5_000, ..Default::default() };
        Context::new(vec!["vsock".into()], 7, exits, Restore::new(template, Box::new(kernel)))
    }

    fn ctx() -> Context {
        booted(false)
    }

    fn file(s: UnixStream) -> File {
        File::from(OwnedFd::from(s))
    }

    /// Runs the agent's handler on one end of a socketpair.
    fn agent() -> (Client<UnixStream>, std::thread::JoinHandle<Option<ShutdownAction>>) {
        agent_of(ctx())
    }

    fn agent_of(ctx: Context) -> (Client<UnixStream>, std::thread::JoinHandle<Option<ShutdownAction>>) {
        let (host, guest) = UnixStream::pair().unwrap();
        let h = std::thread::spawn(move || handle(file(guest), &ctx).map(|(a, _)| a));
        (Client::new(host), h)
    }

    fn refused(c: &mut Client<UnixStream>, request: Request) -> AgentError {
        match c.call(request) {
            Err(ProtocolError::Agent(e)) => e,
            other => panic!("{other:?}"),
        }
    }

    /// What a template boot must not do before `restored`: make a
    /// container, run a process in one, or touch the network.
    fn starters() -> Vec<Request> {
        use amphi::agent::container::{CreateContainerRequest, ExecRequest, StdioRequest};
        let stdio = StdioRequest { session: "s".into(), streams: vec![], window: None };
        vec![
            Request::CreateContainer(CreateContainerRequest {
                id: "c".into(),
                config: serde_json::json!({}),
                share: "fs0".into(),
                stdio: stdio.clone(),
                runtime_hooks: false,
                no_pivot: false,
                no_new_keyring: false,
                disks: vec![],
                join: None,
            }),
            Request::Exec(ExecRequest { id: "c".into(), exec_id: "e".into(), process: serde_json::json!({}), stdio }),
            Request::ConfigureNetwork(amphi::agent::NetworkRequest {
                id: String::new(),
                interfaces: vec![],
                routes: vec![],
            }),
            Request::StartContainer(amphi::agent::container::ContainerRef { id: "c".into() }),
        ]
    }

    fn restored(seed_len: usize, generation: u64) -> Request {
        Request::Restored(amphi::agent::RestoredRequest { realtime_ns: 9_000, seed: vec![1; seed_len], generation })
    }

    #[test]
    fn a_template_boot_starts_nothing_until_restored() {
        let (mut c, _h) = agent_of(booted(true));
        match c.call(hello()).unwrap() {
            Response::Handshake(r) => assert_eq!((r.awaiting_restore, r.generation), (true, None)),
            other => panic!("{other:?}"),
        }
        for r in starters() {
            let method = r.method();
            let e = refused(&mut c, r);
            assert_eq!(e.code, ErrorCode::NotRestored, "{method}: {e}");
        }
        match c.call(Request::Health).unwrap() {
            Response::Health(h) => assert!(h.awaiting_restore),
            other => panic!("{other:?}"),
        }
        assert_eq!(refused(&mut c, restored(31, 1)).code, ErrorCode::InvalidConfig);
        assert_eq!(refused(&mut c, restored(257, 1)).code, ErrorCode::InvalidConfig);
        match c.call(restored(64, 2)).unwrap() {
            Response::Restored(r) => {
                // From the fake's 5000 ns to the host's 9000 (its
                // monotonic clock stands still).
                assert_eq!((r.guest_realtime_before_ns, r.clock_step_ns), (5_000, 4_000));
            }
            other => panic!("{other:?}"),
        }
        // Served now: an invalid network request is judged on its merits.
        let network = starters().remove(2);
        assert_eq!(refused(&mut c, network).code, ErrorCode::InvalidConfig);
        match c.call(Request::Health).unwrap() {
            Response::Health(h) => assert_eq!((h.awaiting_restore, h.generation), (false, Some(2))),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_cold_boot_serves_as_before() {
        let (mut c, _h) = agent();
        match c.call(hello()).unwrap() {
            Response::Handshake(r) => assert_eq!((r.awaiting_restore, r.generation), (false, None)),
            other => panic!("{other:?}"),
        }
        let network = starters().remove(2);
        assert_eq!(refused(&mut c, network).code, ErrorCode::InvalidConfig);
    }

    #[test]
    fn restored_needs_the_handshake_too() {
        let (mut c, _h) = agent_of(booted(true));
        assert_eq!(refused(&mut c, restored(64, 1)).code, ErrorCode::HandshakeRequired);
    }

    fn hello() -> Request {
        Request::Handshake(HandshakeRequest { protocol: PROTOCOL_VERSION, host_version: "test".into() })
    }

    #[test]
    fn handshake_then_health_then_shutdown() {
        let (mut c, h) = agent();
        match c.call(hello()).unwrap() {
            Response::Handshake(r) => {
                assert_eq!(r.protocol, PROTOCOL_VERSION);
                assert_eq!(r.modules_loaded, vec!["vsock"]);
                assert!(!r.kernel_release.is_empty());
            }
            other => panic!("{other:?}"),
        }
        match c.call(Request::Health).unwrap() {
            Response::Health(r) => assert_eq!(r.zombies_reaped, 3),
            other => panic!("{other:?}"),
        }
        c.call(Request::Shutdown(ShutdownRequest { action: ShutdownAction::PowerOff })).unwrap();
        assert_eq!(h.join().unwrap(), Some(ShutdownAction::PowerOff), "the caller powers off, not the handler");
    }

    #[test]
    fn requests_before_the_handshake_are_refused() {
        let (mut c, _h) = agent();
        match c.call(Request::Health) {
            Err(ProtocolError::Agent(e)) => assert_eq!(e.code, ErrorCode::HandshakeRequired),
            other => panic!("{other:?}"),
        }
        match c.call(Request::Shutdown(ShutdownRequest { action: ShutdownAction::PowerOff })) {
            Err(ProtocolError::Agent(e)) => assert_eq!(e.code, ErrorCode::HandshakeRequired),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_incompatible_major_version_and_a_second_handshake_are_refused() {
        let (mut c, _h) = agent();
        let v2 = Request::Handshake(HandshakeRequest {
            protocol: ProtocolVersion { major: 2, minor: 0 },
            host_version: "x".into(),
        });
        match c.call(v2) {
            Err(ProtocolError::Agent(e)) => assert_eq!(e.code, ErrorCode::IncompatibleVersion),
            other => panic!("{other:?}"),
        }
        c.call(hello()).unwrap();
        match c.call(hello()) {
            Err(ProtocolError::Agent(e)) => assert_eq!(e.code, ErrorCode::AlreadyHandshaken),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn unknown_methods_and_garbage_get_error_codes_and_the_connection_survives() {
        let (host, guest) = UnixStream::pair().unwrap();
        let h = std::thread::spawn(move || handle(file(guest), &ctx()).map(|(a, _)| a));
        let mut host = host;
        amphi::agent::write_frame(&mut host, br#"{"id":5,"method":"checkpoint","params":{}}"#).unwrap();
        let r: ResponseEnvelope = amphi::agent::receive(&mut host).unwrap().unwrap();
        assert_eq!(r.id, 5);
        assert_eq!(r.into_result().unwrap_err().code, ErrorCode::UnknownMethod);
        amphi::agent::write_frame(&mut host, b"{not json").unwrap();
        let r: ResponseEnvelope = amphi::agent::receive(&mut host).unwrap().unwrap();
        assert_eq!(r.into_result().unwrap_err().code, ErrorCode::MalformedRequest);
        drop(host);
        assert_eq!(h.join().unwrap(), None);
    }

    #[test]
    fn an_oversized_frame_is_answered_then_the_connection_closed() {
        let (mut host, guest) = UnixStream::pair().unwrap();
        let h = std::thread::spawn(move || handle(file(guest), &ctx()).map(|(a, _)| a));
        let mut header = b"am\x01\x00".to_vec();
        header.extend_from_slice(&((MAX_FRAME_LEN as u32) + 1).to_be_bytes());
        std::io::Write::write_all(&mut host, &header).unwrap();
        let r: ResponseEnvelope = amphi::agent::receive(&mut host).unwrap().unwrap();
        assert_eq!(r.into_result().unwrap_err().code, ErrorCode::FrameTooLarge);
        assert_eq!(h.join().unwrap(), None);
        let closed: Option<ResponseEnvelope> = amphi::agent::receive(&mut host).unwrap();
        assert!(closed.is_none(), "the agent closed the connection");
    }
}
