//! The host side of `amphi exec` in a VM container: a relay process. The
//! exec'd process lives in the guest, so what stands for it on the host is
//! a small process forked from `amphi exec` that relays its stdio over
//! vsock streams, forwards the signals it gets to it through the agent,
//! and exits with its status (the same code, or the same signal). Clients
//! treat it exactly as they treat runc's exec'd process: `exec` waits for
//! it in the foreground, `exec --detach` writes its pid to the pid file
//! and conmon or containerd's shim, as subreaper, reap it.

use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::stdio::{self, Local};
use super::vmm_process::{close_others, exit_like, forward_signals, forwarded_set, take_terminal};
use crate::agent::container::{ExecRequest, StdioRequest, StreamKind, WaitRequest};
use crate::agent::AgentError;
use crate::vm::agent_client::{AgentClient, AgentClientError};

/// How long the exec may take to start.
pub const START_DEADLINE: Duration = Duration::from_secs(60);
/// How long the output may take to be copied out after the process ended.
const FLUSH_LIMIT: Duration = Duration::from_secs(5);

/// What the relay tells `amphi exec` once, on its report pipe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Report {
    /// The process runs in the guest with this (guest) pid.
    Started(i32),
    /// The agent refused the exec.
    Refused(AgentError),
    /// Anything else that went wrong, as an error chain.
    Failed(String),
}

pub struct ExecPlan {
    pub id: String,
    pub exec_id: String,
    pub uds: PathBuf,
    pub session: String,
    pub streams: Vec<StreamKind>,
    pub local: Local,
    pub window: Option<(u16, u16)>,
    pub process: serde_json::Value,
    /// Write end of the report pipe.
    pub report: OwnedFd,
}

fn send(report: &OwnedFd, r: &Report) {
    let Ok(mut line) = serde_json::to_vec(r) else { return };
    line.push(b'\n');
    let mut rest = &line[..];
    while !rest.is_empty() {
        match nix::unistd::write(report, rest) {
            Ok(n) => rest = &rest[n..],
            Err(nix::errno::Errno::EINTR) => {}
            Err(_) => return,
        }
    }
}

/// Body of the forked relay. Never returns into the caller's code.
pub fn run(plan: ExecPlan) -> i32 {
    let ExecPlan { id, exec_id, uds, session, streams, local, window, process, report } = plan;
    let _ = nix::unistd::setsid();
    let mut keep = vec![report.as_raw_fd()];
    if let Local::Tty(t) = &local {
        keep.push(t.as_raw_fd());
    }
    keep.extend(crate::logging::timing_fd());
    close_others(&keep);
    let tty = match &local {
        Local::Tty(t) => {
            if let Err(e) = take_terminal(t) {
                send(&report, &Report::Failed(format!("cannot take the exec's terminal: {e}")));
                return 1;
            }
            t.try_clone().ok()
        }
        Local::Inherited => None,
    };
    let sigs = forwarded_set();
    let _ = sigs.thread_block();
    let deadline = Instant::now() + START_DEADLINE;
    let started = (|| -> Result<(AgentClient, stdio::Relays), AgentClientError> {
        let relays = stdio::attach(&uds, &session, &streams, local, deadline)?;
        let mut client = AgentClient::connect(&uds, deadline)?;
        let req = ExecRequest {
            id: id.clone(),
            exec_id: exec_id.clone(),
            process,
            stdio: StdioRequest { session, streams, window },
        };
        let r = client.exec(req)?;
        send(&report, &Report::Started(r.pid));
        Ok((client, relays))
    })();
    let (mut client, relays) = match started {
        Ok(x) => x,
        Err(AgentClientError::Protocol(crate::agent::ProtocolError::Agent(a))) => {
            send(&report, &Report::Refused(a));
            return 1;
        }
        Err(e) => {
            send(&report, &Report::Failed(crate::logging::chain(&e)));
            return 1;
        }
    };
    drop(report);
    {
        let (uds, id, exec_id) = (uds.clone(), id.clone(), exec_id.clone());
        let _ = std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || forward_signals(&uds, &id, Some(&exec_id), sigs, tty));
    }
    match client.wait(WaitRequest { id, exec_id: Some(exec_id) }) {
        Ok(status) => {
            relays.finish(FLUSH_LIMIT);
            exit_like(status)
        }
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "amphi: lost the exec'd process: {}", crate::logging::chain(&e));
            255
        }
    }
}
