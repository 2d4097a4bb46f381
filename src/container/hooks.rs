//! OCI hooks: each gets the container's state JSON on stdin, runs with its
//! own args and env, and is killed when its timeout passes.
//!
//! The same runner serves hooks run by the runtime (createRuntime, prestart,
//! poststart, poststop) and hooks the container's init runs inside the
//! container's namespaces (createContainer, startContainer).

use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use oci_spec::runtime::Hook;

/// The lifecycle points hooks attach to, named as in config.json.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookKind {
    Prestart,
    CreateRuntime,
    CreateContainer,
    StartContainer,
    Poststart,
    Poststop,
}

impl std::fmt::Display for HookKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            HookKind::Prestart => "prestart",
            HookKind::CreateRuntime => "createRuntime",
            HookKind::CreateContainer => "createContainer",
            HookKind::StartContainer => "startContainer",
            HookKind::Poststart => "poststart",
            HookKind::Poststop => "poststop",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error("{kind} hook #{index} ({path}) could not be started")]
    Spawn {
        kind: HookKind,
        index: usize,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{kind} hook #{index} ({path}) failed: {status}")]
    Failed { kind: HookKind, index: usize, path: PathBuf, status: String },
    #[error("{kind} hook #{index} ({path}) did not finish within its timeout of {secs}s and was killed")]
    Timeout { kind: HookKind, index: usize, path: PathBuf, secs: i64 },
    /// The runtime hooks ran elsewhere (the host, for a runtime inside a
    /// VM guest) and failed there.
    #[error("runtime hooks: {0}")]
    Delegated(String),
}

/// Runs `hooks` in order and stops at the first failure.
pub fn run_all(kind: HookKind, hooks: &[Hook], state_json: &[u8]) -> Result<(), HookError> {
    for (index, hook) in hooks.iter().enumerate() {
        run_one(kind, index, hook, state_json)?;
    }
    Ok(())
}

/// Runs every hook even when some fail, and returns the failures (for
/// poststart and poststop, whose failures the spec says to log only).
pub fn run_all_collect(kind: HookKind, hooks: &[Hook], state_json: &[u8]) -> Vec<HookError> {
    hooks.iter().enumerate().filter_map(|(index, hook)| run_one(kind, index, hook, state_json).err()).collect()
}

fn run_one(kind: HookKind, index: usize, hook: &Hook, state_json: &[u8]) -> Result<(), HookError> {
    let path = hook.path().clone();
    let mut cmd = Command::new(&path);
    if let Some(args) = hook.args() {
        if let Some((arg0, rest)) = args.split_first() {
            cmd.arg0(arg0).args(rest);
        }
    }
    cmd.env_clear();
    for kv in hook.env().iter().flatten() {
        if let Some((k, v)) = kv.split_once('=') {
            cmd.env(k, v);
        }
    }
    cmd.stdin(Stdio::piped());
    // SAFETY: the closure only calls async-signal-safe functions (sigprocmask)
    // between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            // The runtime may block signals it forwards; a hook must start
            // with a clean mask.
            let empty = nix::sys::signal::SigSet::empty();
            nix::sys::signal::pthread_sigmask(nix::sys::signal::SigmaskHow::SIG_SETMASK, Some(&empty), None)
                .map_err(std::io::Error::from)
        });
    }
    let mut child = cmd.spawn().map_err(|source| HookError::Spawn { kind, index, path: path.clone(), source })?;
    // The timeout covers feeding stdin too: a hook that never reads a
    // state larger than the pipe would otherwise block us before it starts.
    let timeout = hook.timeout().filter(|s| *s > 0).map(|s| (s, Instant::now() + Duration::from_secs(s as u64)));
    if let Some(stdin) = child.stdin.take() {
        if !feed(stdin, state_json, timeout.map(|(_, d)| d)) {
            let _ = child.kill();
            let _ = child.wait();
            let secs = timeout.map(|(s, _)| s).unwrap_or_default();
            return Err(HookError::Timeout { kind, index, path, secs });
        }
    }
    let status = match timeout {
        Some((secs, deadline)) => match wait_timeout(&mut child, deadline.saturating_duration_since(Instant::now())) {
            Some(s) => s,
            None => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(HookError::Timeout { kind, index, path, secs });
            }
        },
        _ => child.wait().map_err(|source| HookError::Spawn { kind, index, path: path.clone(), source })?,
    };
    if status.success() {
        Ok(())
    } else {
        let status = match (status.code(), status.signal()) {
            (Some(c), _) => format!("exit status {c}"),
            (None, Some(s)) => format!("killed by signal {s}"),
            _ => status.to_string(),
        };
        Err(HookError::Failed { kind, index, path, status })
    }
}

/// Writes the state to a hook's stdin and closes it; false when `deadline`
/// passed first. A hook that closes its stdin early (EPIPE) is fine.
fn feed(stdin: std::process::ChildStdin, data: &[u8], deadline: Option<Instant>) -> bool {
    let Some(deadline) = deadline else {
        let mut stdin = stdin;
        let _ = stdin.write_all(data);
        return true;
    };
    let fd = OwnedFd::from(stdin);
    if nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK)).is_err() {
        return true;
    }
    let mut off = 0;
    while off < data.len() {
        match nix::unistd::write(&fd, &data[off..]) {
            Ok(n) => off += n,
            Err(nix::errno::Errno::EINTR) => {}
            Err(nix::errno::Errno::EAGAIN) => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return false;
                }
                let mut pfd = libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLOUT, revents: 0 };
                // SAFETY: one valid pollfd for the duration of the call.
                unsafe { libc::poll(&mut pfd, 1, left.as_millis().clamp(1, i32::MAX as u128) as i32) };
            }
            Err(_) => return true,
        }
    }
    true
}

/// Waits for `child` for at most `timeout`; `None` when it is still running.
fn wait_timeout(child: &mut std::process::Child, timeout: Duration) -> Option<std::process::ExitStatus> {
    // SAFETY: pidfd_open on our own unreaped child; returns an fd or -1.
    let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, child.id() as libc::pid_t, 0) };
    if raw < 0 {
        return child.wait().ok();
    }
    // SAFETY: a fresh fd from the kernel that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw as i32) };
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return child.try_wait().ok().flatten();
        }
        let mut pfd = libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd for the duration of the call.
        let r = unsafe { libc::poll(&mut pfd, 1, left.as_millis().min(i32::MAX as u128) as i32) };
        if r > 0 {
            return child.wait().ok();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hook(json: &str) -> Hook {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn hook_reads_state_on_stdin_with_its_env_and_args() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let h = hook(&format!(
            r#"{{"path":"/bin/sh","args":["sh","-c","cat > {0}; echo \"$FOO $0\" >> {0}","argzero"],
                "env":["FOO=bar"]}}"#,
            out.display()
        ));
        run_all(HookKind::CreateRuntime, &[h], br#"{"id":"x"}"#).unwrap();
        assert_eq!(std::fs::read_to_string(&out).unwrap(), "{\"id\":\"x\"}bar argzero\n");
    }

    #[test]
    fn failure_and_order() {
        let ok = hook(r#"{"path":"/bin/true"}"#);
        let bad = hook(r#"{"path":"/bin/false"}"#);
        let e = run_all(HookKind::Prestart, &[ok.clone(), bad.clone(), ok.clone()], b"{}").unwrap_err();
        assert!(matches!(e, HookError::Failed { index: 1, .. }), "{e}");
        assert!(e.to_string().contains("prestart hook #1"), "{e}");
        let errs = run_all_collect(HookKind::Poststop, &[bad.clone(), ok, bad], b"{}");
        assert_eq!(errs.len(), 2);
    }

    #[test]
    fn timeout_kills_the_hook() {
        let h = hook(r#"{"path":"/bin/sleep","args":["sleep","30"],"timeout":1}"#);
        let e = run_all(HookKind::Poststart, &[h], b"{}").unwrap_err();
        assert!(matches!(e, HookError::Timeout { secs: 1, .. }), "{e}");
    }

    #[test]
    fn a_hook_that_never_reads_a_large_state_times_out() {
        // More than a pipe holds: writing it used to block until the hook
        // exited (after 30 s, successfully, since the timeout only started
        // after the write).
        let h = hook(r#"{"path":"/bin/sleep","args":["sleep","30"],"timeout":1}"#);
        let state = vec![b' '; 1 << 20];
        let e = run_all(HookKind::CreateRuntime, &[h], &state).unwrap_err();
        assert!(matches!(e, HookError::Timeout { secs: 1, .. }), "{e}");
    }

    #[test]
    fn missing_hook_binary_is_a_spawn_error() {
        let h = hook(r#"{"path":"/nonexistent/hook"}"#);
        let e = run_all(HookKind::CreateRuntime, &[h], b"{}").unwrap_err();
        assert!(matches!(e, HookError::Spawn { .. }), "{e}");
    }
}
