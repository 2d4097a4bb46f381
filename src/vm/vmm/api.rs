//! The VMM's control socket: what host commands ask of the VMM itself
//! rather than of the guest's agent, because only the VMM knows or can
//! change it: how much of the guest's memory the host really holds, and
//! the balloon's target (which `update --memory` moves).
//!
//! One request per connection, one JSON line each way, served on the VMM's
//! event loop without blocking it: sockets are non-blocking, a request is
//! at most [`REQUEST_MAX`] bytes, at most [`MAX_CLIENTS`] connections are
//! open at once and a new one evicts those older than [`CLIENT_DEADLINE`].
//! Only root on the host reaches the socket (it is in the container's
//! state dir); the bounds are there so a stuck client cannot hold the VMM.

use std::io::{ErrorKind, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use serde::{Deserialize, Serialize};

pub const REQUEST_MAX: usize = 4096;
pub const MAX_CLIENTS: usize = 8;
pub const CLIENT_DEADLINE: Duration = Duration::from_secs(2);
/// The most a reply may hold, for the client's read.
const REPLY_MAX: u64 = 64 * 1024;

/// What a host command asks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// The VMM's view of the VM's memory.
    Stats,
    /// Asks the guest to give `target_mib` of its memory back (0: none).
    Balloon { target_mib: u64 },
}

/// The VMM's view of the VM.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmmStats {
    /// The guest's RAM as sized at boot.
    pub memory_mib: u64,
    /// How much of it the host holds now (pages the guest touched and the
    /// host has not taken back).
    pub guest_resident_kib: u64,
    /// Absent when the VM has no balloon.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub balloon: Option<BalloonStatus>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BalloonStatus {
    /// What the host asked for.
    pub target_mib: u64,
    /// What the guest says it has given.
    pub actual_mib: u64,
}

/// The answer: the stats, or why the request failed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stats: Option<VmmStats>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What the API acts on.
pub trait Backend: Send {
    fn stats(&self) -> VmmStats;
    /// Sets the balloon's target; fails when the VM has no balloon or the
    /// target is more than the guest has.
    fn set_balloon(&mut self, target_mib: u64) -> Result<(), String>;
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("cannot reach the VMM's control socket {}", path.display())]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the VMM did not answer on {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the VMM's answer on {} is not valid", path.display())]
    Reply {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("the VMM refused: {0}")]
    Refused(String),
}

/// Asks the VMM listening on `path`; the whole call takes at most `timeout`.
pub fn call(path: &Path, request: &Request, timeout: Duration) -> Result<VmmStats, ApiError> {
    let io = |source| ApiError::Io { path: path.to_path_buf(), source };
    let mut s =
        crate::vm::uds::connect(path).map_err(|source| ApiError::Connect { path: path.to_path_buf(), source })?;
    s.set_read_timeout(Some(timeout)).map_err(io)?;
    s.set_write_timeout(Some(timeout)).map_err(io)?;
    let mut line = serde_json::to_vec(request).map_err(|e| io(std::io::Error::other(e)))?;
    line.push(b'\n');
    s.write_all(&line).map_err(io)?;
    let mut buf = Vec::new();
    (&mut s).take(REPLY_MAX).read_to_end(&mut buf).map_err(io)?;
    let reply: Reply =
        serde_json::from_slice(&buf).map_err(|source| ApiError::Reply { path: path.to_path_buf(), source })?;
    match reply {
        Reply { error: Some(e), .. } => Err(ApiError::Refused(e)),
        Reply { stats, .. } => Ok(stats.unwrap_or_default()),
    }
}

struct Client {
    stream: UnixStream,
    buf: Vec<u8>,
    since: Instant,
}

/// The server side, a subscriber of the VMM's event loop.
pub struct ApiServer {
    listener: UnixListener,
    clients: Vec<Client>,
    backend: Box<dyn Backend>,
}

impl ApiServer {
    /// `listener` is bound before the VMM is jailed.
    pub fn new(listener: UnixListener, backend: Box<dyn Backend>) -> std::io::Result<Self> {
        listener.set_nonblocking(true)?;
        Ok(ApiServer { listener, clients: Vec::new(), backend })
    }

    fn answer(&mut self, line: &[u8]) -> Reply {
        match serde_json::from_slice::<Request>(line) {
            Ok(Request::Stats) => Reply { stats: Some(self.backend.stats()), error: None },
            Ok(Request::Balloon { target_mib }) => match self.backend.set_balloon(target_mib) {
                Ok(()) => Reply { stats: Some(self.backend.stats()), error: None },
                Err(e) => Reply { stats: None, error: Some(e) },
            },
            Err(e) => Reply { stats: None, error: Some(format!("not a request: {e}")) },
        }
    }

    fn accept(&mut self, ops: &mut EventOps) {
        loop {
            let stream = match self.listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => return,
            };
            // Clients past their deadline make room first; when none are,
            // the new one is turned away (closed).
            let now = Instant::now();
            let (stale, keep): (Vec<Client>, Vec<Client>) =
                self.clients.drain(..).partition(|c| now.duration_since(c.since) > CLIENT_DEADLINE);
            self.clients = keep;
            for c in stale {
                let _ = ops.remove(Events::new(&c.stream, EventSet::IN));
            }
            if self.clients.len() >= MAX_CLIENTS || stream.set_nonblocking(true).is_err() {
                continue;
            }
            if ops.add(Events::new(&stream, EventSet::IN)).is_ok() {
                self.clients.push(Client { stream, buf: Vec::new(), since: now });
            }
        }
    }

    fn read(&mut self, at: usize, ops: &mut EventOps) {
        let mut chunk = [0u8; 1024];
        let done = loop {
            let c = &mut self.clients[at];
            match c.stream.read(&mut chunk) {
                Ok(0) => break None,
                Ok(n) => {
                    c.buf.extend_from_slice(&chunk[..n]);
                    if let Some(end) = c.buf.iter().position(|b| *b == b'\n') {
                        break Some(end);
                    }
                    if c.buf.len() > REQUEST_MAX {
                        break None;
                    }
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(_) => break None,
            }
        };
        let mut c = self.clients.swap_remove(at);
        let _ = ops.remove(Events::new(&c.stream, EventSet::IN));
        if let Some(end) = done {
            let line = c.buf[..end].to_vec();
            let reply = self.answer(&line);
            if let Ok(mut out) = serde_json::to_vec(&reply) {
                out.push(b'\n');
                // A reply is far smaller than a socket buffer; a client
                // that does not read it loses it.
                let _ = c.stream.write(&out);
            }
        }
    }
}

impl MutEventSubscriber for ApiServer {
    fn init(&mut self, ops: &mut EventOps) {
        // Registration only fails for a closed or duplicate fd: a bug.
        let _ = ops.add(Events::new(&self.listener, EventSet::IN));
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let fd = events.fd();
        if fd == self.listener.as_raw_fd() {
            self.accept(ops);
        } else if let Some(at) = self.clients.iter().position(|c| c.stream.as_raw_fd() == fd) {
            self.read(at, ops);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use event_manager::{EventManager, SubscriberOps};
    use std::sync::{Arc, Mutex};

    #[derive(Default)]
    struct Fake {
        balloon: Arc<Mutex<Option<u64>>>,
    }

    impl Backend for Fake {
        fn stats(&self) -> VmmStats {
            let b = *self.balloon.lock().unwrap();
            VmmStats {
                memory_mib: 512,
                guest_resident_kib: 1000,
                balloon: b.map(|t| BalloonStatus { target_mib: t, actual_mib: t }),
            }
        }

        fn set_balloon(&mut self, target_mib: u64) -> Result<(), String> {
            if target_mib > 512 {
                return Err(format!("{target_mib} MiB is more than the guest's 512 MiB"));
            }
            *self.balloon.lock().unwrap() = Some(target_mib);
            Ok(())
        }
    }

    /// A server on a temporary socket, its event loop run on a thread
    /// until the test ends.
    fn serve() -> (tempfile::TempDir, PathBuf, Arc<std::sync::atomic::AtomicBool>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api");
        let server = ApiServer::new(UnixListener::bind(&path).unwrap(), Box::new(Fake::default())).unwrap();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s = stop.clone();
        std::thread::spawn(move || {
            let mut em = EventManager::<Arc<Mutex<ApiServer>>>::new().unwrap();
            em.add_subscriber(Arc::new(Mutex::new(server)));
            while !s.load(std::sync::atomic::Ordering::Acquire) {
                let _ = em.run_with_timeout(20);
            }
        });
        (dir, path, stop)
    }

    #[test]
    fn stats_and_balloon_requests_are_answered() {
        let (_d, path, stop) = serve();
        let t = Duration::from_secs(5);
        let s = call(&path, &Request::Stats, t).unwrap();
        assert_eq!((s.memory_mib, s.guest_resident_kib, s.balloon), (512, 1000, None));
        let s = call(&path, &Request::Balloon { target_mib: 128 }, t).unwrap();
        assert_eq!(s.balloon, Some(BalloonStatus { target_mib: 128, actual_mib: 128 }));
        let e = call(&path, &Request::Balloon { target_mib: 4096 }, t).unwrap_err().to_string();
        assert!(e.contains("more than the guest's 512 MiB"), "{e}");
        stop.store(true, std::sync::atomic::Ordering::Release);
    }

    #[test]
    fn bad_oversized_and_idle_clients_do_not_hold_the_server() {
        let (_d, path, stop) = serve();
        let t = Duration::from_secs(5);
        // Not a request: an error comes back.
        let mut s = UnixStream::connect(&path).unwrap();
        s.write_all(b"{\"op\":\"reboot\"}\n").unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        assert!(out.contains("not a request"), "{out}");
        // Over the limit without a newline: the server hangs up.
        let mut s = UnixStream::connect(&path).unwrap();
        s.set_read_timeout(Some(t)).unwrap();
        let _ = s.write_all(&vec![b' '; REQUEST_MAX * 2]);
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        assert!(out.is_empty());
        // Clients that never finish a line fill the slots, then age out:
        // a later call still gets through.
        let idle: Vec<UnixStream> = (0..MAX_CLIENTS + 2).map(|_| UnixStream::connect(&path).unwrap()).collect();
        std::thread::sleep(CLIENT_DEADLINE + Duration::from_millis(200));
        assert_eq!(call(&path, &Request::Stats, t).unwrap().memory_mib, 512);
        drop(idle);
        stop.store(true, std::sync::atomic::Ordering::Release);
    }
}
