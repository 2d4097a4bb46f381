//! The host side of `amphi exec` in a VM container: a relay process. The
//! exec'd process lives in the guest, so what stands for it on the host is
//! a small process forked from `amphi exec` that relays its stdio over
//! vsock streams, forwards the signals it gets to it through the agent,
//! and exits with its status (the same code, or the same signal). Clients
//! treat it exactly as they treat runc's exec'd process: `exec` waits for
//! it in the foreground, `exec --detach` writes its pid to the pid file
//! and conmon or containerd's shim, as subreaper, reap it.
//!
//! A container of a VM pod (`super::pod`) gets the same kind of process
//! from `amphi create`: it creates the container in the sandbox's VM,
//! stands for it in `state` (its pid), and exits as it does, or with 137
//! if the VM goes first.

use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::stdio::{self, Local};
use super::vmm_process::{close_others, exit_like, forward_signals, forwarded_set, take_terminal};
use crate::agent::container::{CreateContainerRequest, ExecRequest, StdioRequest, StreamKind, WaitRequest};
use crate::agent::AgentError;
use crate::vm::agent_client::{AgentClient, AgentClientError};

/// How long the exec may take to start.
pub const START_DEADLINE: Duration = Duration::from_secs(60);
/// How long the agent may take to create a pod's container.
const CREATE_TIMEOUT: Duration = Duration::from_secs(120);

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

/// What the relay starts in the guest.
pub enum Start {
    /// `amphi exec`: a process in a running container.
    Exec { exec_id: String, process: serde_json::Value },
    /// A pod member: the container itself (its `stdio` is filled in
    /// here). Once it is created, a byte on `control` says the member's
    /// state records it; EOF first means `create` failed or was killed,
    /// and the container is removed from the guest again.
    Member { create: Box<CreateContainerRequest>, control: OwnedFd },
}

pub struct ExecPlan {
    pub id: String,
    pub start: Start,
    pub uds: PathBuf,
    pub session: String,
    pub streams: Vec<StreamKind>,
    pub local: Local,
    pub window: Option<(u16, u16)>,
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
    let ExecPlan { id, start, uds, session, streams, local, window, report } = plan;
    let _ = nix::unistd::setsid();
    let mut keep = vec![report.as_raw_fd()];
    if let Start::Member { control, .. } = &start {
        keep.push(control.as_raw_fd());
    }
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
    let mut control = None;
    let mut exec_id = None;
    let started = (|| -> Result<(AgentClient, stdio::Relays), AgentClientError> {
        let relays = stdio::attach(&uds, &session, &streams, local, deadline)?;
        let mut client = AgentClient::connect(&uds, deadline)?;
        let stdio = StdioRequest { session, streams, window };
        let pid = match start {
            Start::Exec { exec_id: e, process } => {
                exec_id = Some(e.clone());
                client.exec(ExecRequest { id: id.clone(), exec_id: e, process, stdio })?.pid
            }
            Start::Member { mut create, control: c } => {
                control = Some(c);
                create.stdio = stdio;
                // As a lone VM container's: the guest runtime makes it.
                client.set_timeout(Some(CREATE_TIMEOUT));
                client.create_container(*create)?.pid
            }
        };
        send(&report, &Report::Started(pid));
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
    if let Some(control) = control {
        let mut b = [0u8; 1];
        if !matches!(nix::unistd::read(control.as_fd(), &mut b), Ok(1)) {
            // `create` did not record the member: it must not stay.
            let _ = client.delete_container(&id);
            return 1;
        }
    }
    {
        let (uds, id, exec_id) = (uds.clone(), id.clone(), exec_id.clone());
        let _ = std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || forward_signals(&uds, &id, exec_id.as_deref(), sigs, tty));
    }
    let member = exec_id.is_none();
    match client.wait(WaitRequest { id, exec_id }) {
        Ok(status) => {
            if let Err(e) = relays.finish(stdio::FLUSH_IDLE) {
                let _ = writeln!(std::io::stderr(), "amphi: the exec'd process: {e}");
            }
            exit_like(status)
        }
        Err(e) if member => {
            // The VM went (the sandbox was deleted): the container was
            // killed with it.
            let _ = writeln!(std::io::stderr(), "amphi: lost the pod's VM: {}", crate::logging::chain(&e));
            exit_like(crate::agent::container::ExitStatus::exited(137))
        }
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "amphi: lost the exec'd process: {}", crate::logging::chain(&e));
            255
        }
    }
}
