//! Stdio streams waiting to be claimed. The host opens a vsock stream per
//! standard stream of a process, names a session in its first frame, and
//! then asks for the process (create_container, exec) with that session;
//! whichever arrives first waits for the other, for a bounded time. The
//! table is bounded too: a host (or a hostile guest process connecting to
//! nothing, which cannot happen over vsock from inside, but a buggy host
//! can) cannot make it grow without limit.

use std::collections::HashMap;
use std::fs::File;
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use amphi::agent::container::StreamKind;
use amphi::agent::{AgentError, ErrorCode};

/// Unclaimed sessions kept at most; the oldest is dropped beyond this.
const MAX_SESSIONS: usize = 64;
/// An unclaimed session is dropped after this long.
const SESSION_TTL: Duration = Duration::from_secs(120);
const MAX_SESSION_NAME: usize = 128;

struct Pending {
    streams: HashMap<StreamKind, File>,
    since: Instant,
}

#[derive(Default)]
pub struct Sessions {
    pending: Mutex<HashMap<String, Pending>>,
    arrived: Condvar,
}

impl Sessions {
    /// Parks one stream of `session`.
    pub fn attach(&self, session: &str, kind: StreamKind, stream: File) -> Result<(), AgentError> {
        if session.is_empty() || session.len() > MAX_SESSION_NAME {
            return Err(AgentError::new(
                ErrorCode::InvalidConfig,
                format!("a stdio session name must have 1 to {MAX_SESSION_NAME} bytes"),
            ));
        }
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        p.retain(|_, s| s.since.elapsed() < SESSION_TTL);
        if !p.contains_key(session) && p.len() >= MAX_SESSIONS {
            if let Some(oldest) = p.iter().min_by_key(|(_, s)| s.since).map(|(k, _)| k.clone()) {
                p.remove(&oldest);
            }
        }
        let entry =
            p.entry(session.to_string()).or_insert_with(|| Pending { streams: HashMap::new(), since: Instant::now() });
        if entry.streams.contains_key(&kind) {
            return Err(AgentError::new(
                ErrorCode::InvalidConfig,
                format!("stdio session {session:?} has a {} stream already", kind.as_str()),
            ));
        }
        entry.streams.insert(kind, stream);
        self.arrived.notify_all();
        Ok(())
    }

    /// Takes the streams `kinds` of `session`, waiting up to `timeout` for
    /// them all to arrive.
    pub fn take(
        &self,
        session: &str,
        kinds: &[StreamKind],
        timeout: Duration,
    ) -> Result<HashMap<StreamKind, File>, AgentError> {
        let deadline = Instant::now() + timeout;
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            let complete = p.get(session).is_some_and(|s| kinds.iter().all(|k| s.streams.contains_key(k)));
            if complete || kinds.is_empty() {
                let mut s = p.remove(session).map(|s| s.streams).unwrap_or_default();
                s.retain(|k, _| kinds.contains(k));
                return Ok(s);
            }
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                let got: Vec<&str> =
                    p.get(session).map(|s| s.streams.keys().map(|k| k.as_str()).collect()).unwrap_or_default();
                p.remove(session);
                return Err(AgentError::new(
                    ErrorCode::StdioTimeout,
                    format!(
                        "the stdio streams of session {session:?} did not all arrive within {}s (have: [{}])",
                        timeout.as_secs(),
                        got.join(", ")
                    ),
                ));
            };
            p = self.arrived.wait_timeout(p, left).unwrap_or_else(|e| e.into_inner()).0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn file() -> File {
        File::open("/dev/null").unwrap()
    }

    #[test]
    fn streams_arriving_after_the_request_are_waited_for() {
        let s = Arc::new(Sessions::default());
        s.attach("a", StreamKind::Stdout, file()).unwrap();
        let s2 = s.clone();
        let h = std::thread::spawn(move || {
            s2.take("a", &[StreamKind::Stdout, StreamKind::Stderr], Duration::from_secs(10)).map(|m| m.len())
        });
        std::thread::sleep(Duration::from_millis(20));
        s.attach("a", StreamKind::Stderr, file()).unwrap();
        assert_eq!(h.join().unwrap().unwrap(), 2);
        // Claimed sessions are gone.
        let e = s.take("a", &[StreamKind::Stdout], Duration::from_millis(10)).unwrap_err();
        assert_eq!(e.code, ErrorCode::StdioTimeout);
    }

    #[test]
    fn duplicates_bad_names_and_floods_are_refused_or_bounded() {
        let s = Sessions::default();
        s.attach("x", StreamKind::Stdin, file()).unwrap();
        assert_eq!(s.attach("x", StreamKind::Stdin, file()).unwrap_err().code, ErrorCode::InvalidConfig);
        assert_eq!(s.attach("", StreamKind::Stdin, file()).unwrap_err().code, ErrorCode::InvalidConfig);
        assert!(s.attach(&"n".repeat(200), StreamKind::Stdin, file()).is_err());
        for i in 0..(MAX_SESSIONS * 3) {
            s.attach(&format!("s{i}"), StreamKind::Stdout, file()).unwrap();
        }
        assert!(s.pending.lock().unwrap().len() <= MAX_SESSIONS);
    }

    #[test]
    fn no_streams_means_nothing_to_wait_for() {
        let s = Sessions::default();
        assert!(s.take("none", &[], Duration::from_secs(5)).unwrap().is_empty());
    }
}
