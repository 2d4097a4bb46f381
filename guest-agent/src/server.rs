//! The agent's side of the protocol: one thread per control connection.

use std::fs::File;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use amphi::agent::message::{classify_bad_request, ShutdownResponse};
use amphi::agent::{
    read_frame, send, AgentError, ErrorCode, FrameError, HandshakeResponse, HealthResponse, Request,
    RequestEnvelope, Response, ResponseEnvelope, ShutdownAction, AGENT_VSOCK_PORT, MAX_FRAME_LEN,
    PROTOCOL_VERSION,
};
use nix::sys::socket::{self, accept, bind, socket, AddressFamily, Backlog, SockFlag, SockType, VsockAddr};

pub struct Context {
    pub modules_loaded: Vec<String>,
    pub init_ms: u64,
    pub reaper: Arc<AtomicU64>,
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
                let _ = std::thread::Builder::new().name("conn".into()).spawn(move || handle(File::from(conn), &ctx));
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
    let unavailable = |what: &str, e: std::io::Error| AgentError::new(ErrorCode::HealthUnavailable, format!("{what}: {e}"));
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
        zombies_reaped: ctx.reaper.load(Ordering::Relaxed),
        online_cpus: std::thread::available_parallelism().map(|n| n.get() as u32).unwrap_or(1),
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
        let ms = nix::poll::PollTimeout::try_from(left.as_millis().min(2000) as u16).unwrap_or(nix::poll::PollTimeout::ZERO);
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

/// Serves one connection until it closes or breaks.
fn handle(mut conn: File, ctx: &Context) {
    let mut handshaken = false;
    loop {
        let payload = match read_frame(&mut conn, MAX_FRAME_LEN) {
            Ok(Some(p)) => p,
            Ok(None) => return,
            Err(FrameError::TooLarge { len, max }) => {
                let e = AgentError::new(ErrorCode::FrameTooLarge, format!("frame of {len} bytes exceeds {max}"));
                let _ = send(&mut conn, &ResponseEnvelope::error(0, e));
                return;
            }
            Err(_) => return,
        };
        let env: RequestEnvelope = match serde_json::from_slice(&payload) {
            Ok(r) => r,
            Err(_) => {
                let (id, e) = classify_bad_request(&payload);
                if send(&mut conn, &ResponseEnvelope::error(id, e)).is_err() {
                    return;
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
                }))
            }
            _ if !handshaken => Err(AgentError::new(ErrorCode::HandshakeRequired, "send a handshake request first")),
            Request::Health => health(ctx).map(Response::Health),
            Request::Shutdown(s) => {
                after = Some(s.action);
                Ok(Response::Shutdown(ShutdownResponse { action: s.action }))
            }
        };
        let reply = match outcome {
            Ok(r) => ResponseEnvelope::ok(id, r),
            Err(e) => ResponseEnvelope::error(id, e),
        };
        let sent = send(&mut conn, &reply).is_ok();
        if let Some(action) = after {
            // The reply is only queued in the guest's socket: powering off
            // now could lose it. The host closes the connection once it has
            // the reply; wait for that (bounded), then power off.
            if sent {
                wait_for_close(&mut conn);
            }
            drop(conn);
            let mode = match action {
                ShutdownAction::PowerOff => nix::sys::reboot::RebootMode::RB_POWER_OFF,
                ShutdownAction::Reboot => nix::sys::reboot::RebootMode::RB_AUTOBOOT,
            };
            crate::init::power_off(mode);
        }
        if !sent {
            return;
        }
    }
}
