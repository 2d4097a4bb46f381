//! `amphi-agent runtime ...`: the guest-side runtime helper.
//!
//! amphi's container code clones the container's init from the calling
//! process and assumes that process is single-threaded. The agent is not
//! (a thread per connection, the reaper), so it never creates containers
//! itself: it runs its own binary again as this helper, with the
//! container's stdio as the helper's fds 0-2 (the init inherits them) and a
//! socket on fd 3 for the result and for the runtime-hook hand-off. The
//! helper never writes to its stdio: that is the container's.
//!
//! Messages on fd 3 are JSON lines ([`ToAgent`], [`ToHelper`]).

use std::io::{BufRead, BufReader, Write};
use std::os::fd::FromRawFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use amphi::agent::container::GUEST_STATE_DIR;
use amphi::container::exec::ExecOptions;
use amphi::container::hooks::HookError;
use amphi::container::{CreateOptions, Runtime};
use amphi::spec::Isolation;
use serde::{Deserialize, Serialize};

/// The descriptor the agent hands the helper its channel on.
pub const CHANNEL_FD: i32 = 3;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ToAgent {
    /// The runtime hooks are due; the container's init is `pid`.
    Hooks(i32),
    /// The container exists and waits to be started; its init is `pid`.
    Created(i32),
    /// An exec'd process started (detached); it is `pid`.
    Started(i32),
    /// The operation failed; `exit_code` is amphi's (docs/exit-codes.md).
    Failed { exit_code: u8, message: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ToHelper {
    HooksDone,
    HooksFailed(String),
}

/// Writes one message as a JSON line.
pub fn send<T: Serialize>(w: &mut impl Write, msg: &T) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(msg).map_err(std::io::Error::from)?;
    line.push(b'\n');
    w.write_all(&line)?;
    w.flush()
}

/// Reads one JSON line (`None` at EOF). Lines are bounded: the channel is
/// the agent's own, but a garbled one must not make it allocate forever.
pub fn recv<T: for<'de> Deserialize<'de>>(r: &mut impl BufRead) -> std::io::Result<Option<T>> {
    let mut line = String::new();
    let n = std::io::Read::take(r, 64 * 1024).read_line(&mut line)?;
    if n == 0 {
        return Ok(None);
    }
    serde_json::from_str(line.trim_end()).map(Some).map_err(std::io::Error::from)
}

struct Args {
    op: String,
    id: String,
    bundle: Option<PathBuf>,
    process: Option<PathBuf>,
    pid_file: Option<PathBuf>,
    console_socket: Option<PathBuf>,
    no_pivot: bool,
    no_new_keyring: bool,
    runtime_hooks: bool,
}

fn parse(args: &[String]) -> Result<Args, String> {
    let mut it = args.iter();
    let op = it.next().ok_or("no operation")?.clone();
    let mut a = Args {
        op,
        id: String::new(),
        bundle: None,
        process: None,
        pid_file: None,
        console_socket: None,
        no_pivot: false,
        no_new_keyring: false,
        runtime_hooks: false,
    };
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--bundle" => a.bundle = Some(it.next().ok_or("--bundle needs a value")?.into()),
            "--process" => a.process = Some(it.next().ok_or("--process needs a value")?.into()),
            "--pid-file" => a.pid_file = Some(it.next().ok_or("--pid-file needs a value")?.into()),
            "--console-socket" => a.console_socket = Some(it.next().ok_or("--console-socket needs a value")?.into()),
            "--no-pivot" => a.no_pivot = true,
            "--no-new-keyring" => a.no_new_keyring = true,
            "--runtime-hooks" => a.runtime_hooks = true,
            other if other.starts_with("--") => return Err(format!("unknown option {other}")),
            id => a.id = id.to_string(),
        }
    }
    if a.id.is_empty() {
        return Err("no container id".into());
    }
    Ok(a)
}

/// Body of `amphi-agent runtime OP ...`; returns the exit status.
pub fn main(args: &[String]) -> i32 {
    // SAFETY: the agent passes the channel on this fd; nothing else in this
    // fresh process owns it.
    let chan = unsafe { UnixStream::from_raw_fd(CHANNEL_FD) };
    let Ok(reader) = chan.try_clone() else { return 1 };
    let chan = Arc::new(Mutex::new((chan, BufReader::new(reader))));
    let fail = |code: u8, message: String| {
        let mut c = chan.lock().unwrap_or_else(|e| e.into_inner());
        let _ = send(&mut c.0, &ToAgent::Failed { exit_code: code, message });
        1
    };
    let a = match parse(args) {
        Ok(a) => a,
        Err(e) => return fail(amphi::exit::USAGE, format!("runtime helper: {e}")),
    };
    let mut rt = Runtime::new(GUEST_STATE_DIR, Some(Isolation::Container), false, amphi::isolation::sandbox_for);
    if a.runtime_hooks {
        let c = chan.clone();
        rt = rt.with_hook_delegate(Arc::new(move |pid| {
            let mut c = c.lock().unwrap_or_else(|e| e.into_inner());
            let (w, r) = &mut *c;
            send(w, &ToAgent::Hooks(pid)).map_err(|e| HookError::Delegated(format!("cannot ask the host: {e}")))?;
            match recv::<ToHelper>(r) {
                Ok(Some(ToHelper::HooksDone)) => Ok(()),
                Ok(Some(ToHelper::HooksFailed(m))) => Err(HookError::Delegated(m)),
                Ok(None) => Err(HookError::Delegated("the agent went away".into())),
                Err(e) => Err(HookError::Delegated(format!("cannot hear from the host: {e}"))),
            }
        }));
    }
    match a.op.as_str() {
        "create" => {
            let opts = CreateOptions {
                bundle: a.bundle,
                console_socket: a.console_socket,
                pid_file: None,
                no_pivot: a.no_pivot,
                no_new_keyring: a.no_new_keyring,
                preserve_fds: 0,
            };
            match rt.create(&a.id, &opts).and_then(|()| rt.state(&a.id)) {
                Ok(state) => {
                    let mut c = chan.lock().unwrap_or_else(|e| e.into_inner());
                    if send(&mut c.0, &ToAgent::Created(state.pid)).is_err() {
                        return 1;
                    }
                    0
                }
                Err(e) => fail(e.exit_code(), amphi::logging::chain(&e)),
            }
        }
        // Detached: the exec'd process outlives this helper and is
        // reparented to the agent, which reaps it.
        "exec" => {
            let opts = ExecOptions {
                process: a.process,
                console_socket: a.console_socket,
                pid_file: a.pid_file.clone(),
                detach: true,
                ..Default::default()
            };
            let pid = rt.exec(&a.id, &opts).and_then(|_| {
                let path = a.pid_file.clone().unwrap_or_default();
                std::fs::read_to_string(&path).ok().and_then(|p| p.trim().parse::<i32>().ok()).ok_or(
                    amphi::container::ContainerError::PidFile {
                        path,
                        source: std::io::Error::from(std::io::ErrorKind::InvalidData),
                    },
                )
            });
            match pid {
                Ok(pid) => {
                    let mut c = chan.lock().unwrap_or_else(|e| e.into_inner());
                    if send(&mut c.0, &ToAgent::Started(pid)).is_err() {
                        return 1;
                    }
                    0
                }
                Err(e) => fail(e.exit_code(), amphi::logging::chain(&e)),
            }
        }
        other => fail(amphi::exit::USAGE, format!("runtime helper: unknown operation {other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_as_json_lines() {
        let mut buf = Vec::new();
        send(&mut buf, &ToAgent::Hooks(7)).unwrap();
        send(&mut buf, &ToAgent::Failed { exit_code: 5, message: "bad".into() }).unwrap();
        let mut r = std::io::Cursor::new(buf);
        assert_eq!(recv::<ToAgent>(&mut r).unwrap(), Some(ToAgent::Hooks(7)));
        assert_eq!(recv::<ToAgent>(&mut r).unwrap(), Some(ToAgent::Failed { exit_code: 5, message: "bad".into() }));
        assert_eq!(recv::<ToAgent>(&mut r).unwrap(), None);
    }

    #[test]
    fn arguments_parse() {
        let a =
            parse(&["create".into(), "--bundle".into(), "/b".into(), "--runtime-hooks".into(), "c1".into()]).unwrap();
        assert_eq!((a.op.as_str(), a.id.as_str(), a.runtime_hooks), ("create", "c1", true));
        assert!(parse(&["create".into(), "--bogus".into(), "x".into()]).is_err());
        assert!(parse(&["create".into()]).is_err());
    }
}
