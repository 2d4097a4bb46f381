//! The shim as a child subreaper, and running commands under it.
//!
//! The container's init is re-parented to the shim when `amphi create`
//! exits, so the shim must reap it to learn its exit status. One thread
//! waits for SIGCHLD (blocked in every thread, taken with sigwait), reaps
//! every exited child and publishes each exit on containerd-shim's monitor,
//! where both the exit bookkeeping and the commands the shim runs listen.
//! Nobody else may call `waitpid`: a command's exit status reaches its caller
//! through the monitor ([`Reaped`]), never through `Child::wait`, which the
//! reaper would race.

use std::io::{self, Read};
use std::process::{Child, Command};
use std::thread::JoinHandle;

use containerd_shim::monitor::{self, Topic};
use nix::errno::Errno;
use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

/// Signals the reaper thread takes: child exits, and the two that ask the
/// shim to stop serving (it leaves the container running, as containerd's
/// shims do).
fn handled() -> SigSet {
    let mut set = SigSet::empty();
    set.add(Signal::SIGCHLD);
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGINT);
    set
}

/// Blocks the handled signals in the calling thread. Call it first thing in
/// `main`, before any thread exists, so that every thread inherits the mask
/// and only the reaper's sigwait sees them. Children get a clean mask from
/// std's spawn.
pub fn block_signals() -> nix::Result<()> {
    nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&handled()), None)
}

/// Makes this process the reaper of its orphaned descendants.
pub fn become_subreaper() -> nix::Result<()> {
    nix::sys::prctl::set_child_subreaper(true)
}

/// Starts the reaper thread; `on_stop` runs on SIGTERM or SIGINT.
pub fn spawn(on_stop: impl Fn() + Send + 'static) -> io::Result<JoinHandle<()>> {
    std::thread::Builder::new().name("reaper".into()).spawn(move || {
        let set = handled();
        loop {
            match set.wait() {
                Ok(Signal::SIGCHLD) => reap_all(),
                Ok(Signal::SIGTERM | Signal::SIGINT) => on_stop(),
                Ok(_) | Err(_) => {}
            }
        }
    })
}

/// Reaps every child that has exited (one SIGCHLD can stand for several).
fn reap_all() {
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) => notify(pid.as_raw(), code),
            Ok(WaitStatus::Signaled(pid, sig, _)) => notify(pid.as_raw(), 128 + sig as i32),
            Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return,
            Ok(_) => {}
            Err(Errno::EINTR) => {}
            Err(e) => {
                containerd_shim::warn!("reaper: waitpid: {e}");
                return;
            }
        }
    }
}

fn notify(pid: i32, status: i32) {
    if let Err(e) = monitor::monitor_notify_by_pid(pid, status) {
        containerd_shim::warn!("reaper: cannot report the exit of pid {pid}: {e}");
    }
}

/// What a finished command left: its status (exit code, or 128 + signal)
/// and what it wrote to piped stdout and stderr.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Finished {
    pub status: i32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

/// How the shim runs a command to completion.
pub trait Runner: Send + Sync {
    fn run(&self, cmd: &mut Command) -> io::Result<Finished>;
}

/// Runs commands while the reaper thread is active: waits for the exit on
/// the monitor (subscribed before the spawn, so it cannot be missed).
#[derive(Debug, Default, Clone, Copy)]
pub struct Reaped;

impl Runner for Reaped {
    fn run(&self, cmd: &mut Command) -> io::Result<Finished> {
        let sub = monitor::monitor_subscribe(Topic::Pid).map_err(io::Error::other)?;
        let mut child = cmd.spawn()?;
        let pid = child.id() as i32;
        let (stdout, stderr) = collect_output(&mut child);
        let status = monitor::wait_pid(pid, sub);
        Ok(Finished { status, stdout, stderr })
    }
}

/// Reads whatever the child writes to its piped stdout and stderr until
/// both close (stderr on a helper thread so neither pipe can fill up and
/// stall the child).
pub fn collect_output(child: &mut Child) -> (Vec<u8>, Vec<u8>) {
    let err_reader = child.stderr.take().map(|mut e| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = e.read_to_end(&mut buf);
            buf
        })
    });
    let mut stdout = Vec::new();
    if let Some(mut o) = child.stdout.take() {
        let _ = o.read_to_end(&mut stdout);
    }
    let stderr = err_reader.and_then(|t| t.join().ok()).unwrap_or_default();
    (stdout, stderr)
}
