//! The shim binary's command line and life cycle, by containerd's shim v2
//! conventions:
//!
//! - `start`: run with the bundle as working directory; starts the serving
//!   shim as a separate process (it outlives this one), or finds the one
//!   already serving the container's group (its pod), writes the socket
//!   address to `<bundle>/address` and prints it.
//! - no action: serve the Task API on `-socket` until Shutdown.
//! - `delete`: clean up after a shim that died: delete the container with
//!   amphi, unmount its rootfs, print a DeleteResponse.
//!
//! containerd-shim's own `run` entry point is not used: its 0.12 release
//! serves only the task API v3 (`containerd.task.v3.Task`) and answers
//! `start` in JSON, while containerd 1.6 calls `containerd.task.v2.Task` and
//! reads a plain address. This module keeps to the older convention, which
//! newer containerd versions accept too, and serves the Task service under
//! both names. Everything else (flags, socket address, logger, publisher,
//! monitor, mounts, cgroups, protocol types) is containerd-shim's.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::fd::IntoRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::Message;
use containerd_shim::protos::shim::shim_ttrpc::create_task;
use containerd_shim::protos::ttrpc::{MethodHandler, Server};
use containerd_shim::protos::types::introspection::RuntimeInfo;
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::{DeleteResponse, ExitSignal, Flags};

use crate::events::Publisher;
use crate::options::{find_amphi, ShimOptions};
use crate::reaper::{self, Reaped};
use crate::rootfs;
use crate::runtime::Amphi;
use crate::service::{Config, Service};

/// The runtime name containerd knows this shim by.
pub const RUNTIME_NAME: &str = "io.containerd.amphi.v2";

/// The environment variable with containerd's ttrpc address (events).
const TTRPC_ADDRESS: &str = "TTRPC_ADDRESS";

/// How long the shim waits for queued events on its way out.
const EVENTS_FLUSH: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("bad arguments: {0}")]
    Args(String),
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}")]
    Shim {
        what: String,
        #[source]
        source: containerd_shim::Error,
    },
    #[error("cannot serve ttrpc on {socket}")]
    Ttrpc {
        socket: String,
        #[source]
        source: containerd_shim::protos::ttrpc::Error,
    },
    #[error("the shim exited while starting: {0}")]
    Daemon(String),
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> BootError {
    let what = what.into();
    move |source| BootError::Io { what, source }
}

/// What the command line asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Version,
    Info,
    Start,
    Delete,
    Serve,
}

pub fn action(flags: &Flags) -> Result<Action, BootError> {
    if flags.version {
        return Ok(Action::Version);
    }
    if flags.info {
        return Ok(Action::Info);
    }
    let needs = |what: &str, v: &str| {
        if v.is_empty() {
            Err(BootError::Args(format!("-{what} is required: containerd passes it when it starts the shim")))
        } else {
            Ok(())
        }
    };
    needs("namespace", &flags.namespace)?;
    match flags.action.as_str() {
        "start" => {
            needs("id", &flags.id)?;
            Ok(Action::Start)
        }
        "delete" => {
            needs("id", &flags.id)?;
            Ok(Action::Delete)
        }
        "" => {
            needs("socket", &flags.socket)?;
            Ok(Action::Serve)
        }
        other => Err(BootError::Args(format!("unknown action {other:?}: use start or delete (or none, to serve)"))),
    }
}

pub fn main() -> ExitCode {
    // Before any thread exists, so that every thread inherits the mask.
    if let Err(e) = reaper::block_signals() {
        eprintln!("containerd-shim-amphi-v2: cannot block signals: {e}");
        return ExitCode::FAILURE;
    }
    let args: Vec<_> = std::env::args_os().skip(1).collect();
    let result = containerd_shim::parse(&args)
        .map_err(|e| BootError::Args(e.to_string()))
        .and_then(|flags| Ok((action(&flags)?, flags)));
    let (act, flags) = match result {
        Ok(v) => v,
        Err(e) => {
            eprintln!("containerd-shim-amphi-v2: {}", amphi::logging::chain(&e));
            return ExitCode::FAILURE;
        }
    };
    let done = match act {
        Action::Version => {
            println!("containerd-shim-amphi-v2 {}\n  runtime: {RUNTIME_NAME}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        Action::Info => info(),
        Action::Start => start(&flags),
        Action::Delete => delete(&flags),
        Action::Serve => serve(&flags),
    };
    match done {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let msg = format!("containerd-shim-amphi-v2: {}", amphi::logging::chain(&e));
            // A serving shim that fails before it is ready tells `start`
            // through its stdout, the pipe `start` reads.
            if act == Action::Serve {
                println!("{msg}");
            }
            containerd_shim::error!("{msg}");
            eprintln!("{msg}");
            ExitCode::FAILURE
        }
    }
}

/// `-info` (containerd 2.x asks for it before any task exists).
fn info() -> Result<(), BootError> {
    let info = RuntimeInfo { name: RUNTIME_NAME.to_string(), ..Default::default() };
    let bytes = info.write_to_bytes().map_err(|e| BootError::Io {
        what: "cannot encode the runtime info".into(),
        source: std::io::Error::other(e),
    })?;
    std::io::stdout().write_all(&bytes).map_err(io_err("cannot write the runtime info"))
}

/// A ttrpc socket address ("unix:///run/containerd/s/…") as a path.
pub fn socket_path(address: &str) -> &str {
    address.strip_prefix("unix://").unwrap_or(address)
}

fn stdin_options() -> ShimOptions {
    let mut input = Vec::new();
    if std::io::stdin().read_to_end(&mut input).is_err() || input.is_empty() {
        return ShimOptions::default();
    }
    Any::parse_from_bytes(&input).ok().and_then(|any| ShimOptions::from_any(Some(&any)).ok()).unwrap_or_default()
}

/// `start`: launch the serving shim and print its address.
fn start(flags: &Flags) -> Result<(), BootError> {
    let bundle = std::env::current_dir().map_err(io_err("cannot read the working directory (the bundle)"))?;
    let group = group_of(&bundle, &flags.id);
    let address = containerd_shim::socket_address(&flags.address, &flags.namespace, &group);
    let path = socket_path(&address);
    if Path::new(path).exists() {
        if UnixStream::connect(path).is_ok() {
            // A shim already serves this group (the pod's sandbox started
            // it, or containerd retried).
            return announce(&address);
        }
        std::fs::remove_file(path).map_err(io_err(format!("cannot remove the stale socket {path}")))?;
    }
    let ttrpc = std::env::var(TTRPC_ADDRESS).map_err(|_| {
        BootError::Args(format!("{TTRPC_ADDRESS} is not set: containerd sets it when it starts the shim"))
    })?;
    let opts = stdin_options();
    let exe = std::env::current_exe().map_err(io_err("cannot find the shim's own binary"))?;

    let mut cmd = Command::new(&exe);
    cmd.args(["-namespace", &flags.namespace, "-id", &flags.id, "-address", &flags.address, "-socket", &address]);
    if !flags.publish_binary.is_empty() {
        cmd.args(["-publish-binary", &flags.publish_binary]);
    }
    if flags.debug {
        cmd.arg("-debug");
    }
    cmd.env(TTRPC_ADDRESS, ttrpc)
        .current_dir(&bundle)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut child = cmd.spawn().map_err(io_err(format!("cannot start {}", exe.display())))?;
    // The serving shim closes its stdout once it listens, or writes why it
    // could not.
    let mut said = String::new();
    if let Some(mut out) = child.stdout.take() {
        let _ = out.read_to_string(&mut said);
    }
    if !said.trim().is_empty() {
        let _ = child.wait();
        if UnixStream::connect(path).is_ok() {
            // Another container of the group started its shim first.
            return announce(&address);
        }
        return Err(BootError::Daemon(said.trim().to_string()));
    }
    if let Ok(Some(status)) = child.try_wait() {
        return Err(BootError::Daemon(format!("it exited with {status} before listening on {address}")));
    }
    // As containerd's shims: the shim may join a configured cgroup, and is
    // a little more likely than containerd to be picked by the OOM killer.
    // Best effort: nothing may reach stdout but the address.
    let _ = containerd_shim::cgroup::set_cgroup_and_oom_score(child.id(), opts.shim_cgroup.as_deref().unwrap_or(""));
    announce(&address)
}

/// Annotations that put containers in one shim, first match wins: ours,
/// then the CRI's pod (sandbox) id, which the sandbox carries too.
const GROUP_ANNOTATIONS: [&str; 2] = ["io.containerd.amphi.v2.group", "io.kubernetes.cri.sandbox-id"];

/// The shim group of the container in `bundle`: a pod's containers share
/// one shim (one VM in VM isolation), as containerd's shim v2 protocol
/// expects of a runtime that serves pods. A lone container, or a bundle
/// whose config cannot be read here (amphi's create reports that), is a
/// group of its own.
pub fn group_of(bundle: &Path, id: &str) -> String {
    let config = std::fs::read(bundle.join("config.json")).ok();
    let annotations = config
        .as_deref()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(b).ok())
        .and_then(|v| v.get("annotations").cloned());
    GROUP_ANNOTATIONS
        .iter()
        .find_map(|k| annotations.as_ref()?.get(k)?.as_str().filter(|g| !g.is_empty()).map(str::to_string))
        .unwrap_or_else(|| id.to_string())
}

/// Records the address in the bundle (containerd reads it back after a
/// restart) and prints it for containerd.
fn announce(address: &str) -> Result<(), BootError> {
    containerd_shim::util::write_address(address)
        .map_err(|source| BootError::Shim { what: "cannot write the address file in the bundle".into(), source })?;
    let mut out = std::io::stdout();
    out.write_all(address.as_bytes()).and_then(|()| out.flush()).map_err(io_err("cannot print the address"))
}

/// The Task service under both the v2 name (containerd 1.x) and the v3 name
/// containerd-shim generates.
pub fn task_methods(service: Arc<Service>) -> HashMap<String, Box<dyn MethodHandler + Send + Sync>> {
    let mut methods = create_task(service.clone());
    let v2: Vec<_> = create_task(service)
        .into_iter()
        .map(|(k, v)| (k.replace("/containerd.task.v3.Task/", "/containerd.task.v2.Task/"), v))
        .collect();
    methods.extend(v2);
    methods
}

/// Binds the serving socket, replacing a stale one.
fn listen(socket: &str) -> Result<UnixListener, BootError> {
    let path = Path::new(socket_path(socket));
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io_err(format!("cannot create {}", dir.display())))?;
    }
    match UnixListener::bind(path) {
        Ok(l) => Ok(l),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && UnixStream::connect(path).is_err() => {
            std::fs::remove_file(path).map_err(io_err(format!("cannot remove the stale socket {}", path.display())))?;
            UnixListener::bind(path).map_err(io_err(format!("cannot listen on {}", path.display())))
        }
        Err(e) => Err(io_err(format!("cannot listen on {}", path.display()))(e)),
    }
}

/// Serving: the Task API until Shutdown (or SIGTERM).
fn serve(flags: &Flags) -> Result<(), BootError> {
    reaper::become_subreaper().map_err(|e| BootError::Io {
        what: "cannot become a child subreaper (needed to reap the container)".into(),
        source: e.into(),
    })?;
    let exit = Arc::new(ExitSignal::default());
    {
        let exit = exit.clone();
        reaper::spawn(move || exit.signal()).map_err(io_err("cannot start the reaper thread"))?;
    }
    // containerd reads the shim's log from the `log` fifo in the bundle;
    // run by hand, there is none and the shim logs nowhere.
    let _ = containerd_shim::logger::init(flags.debug, "info", &flags.namespace, &flags.id);

    let ttrpc = std::env::var(TTRPC_ADDRESS).map_err(|_| {
        BootError::Args(format!("{TTRPC_ADDRESS} is not set: containerd sets it when it starts the shim"))
    })?;
    let remote = RemotePublisher::new(&ttrpc)
        .map_err(|source| BootError::Shim { what: format!("cannot reach containerd's events at {ttrpc}"), source })?;
    let events =
        Arc::new(Publisher::spawn(remote, flags.namespace.clone()).map_err(io_err("cannot start the events thread"))?);

    let exe = std::env::current_exe().ok();
    let cfg = Config {
        namespace: flags.namespace.clone(),
        shim_dir: exe.as_deref().and_then(Path::parent).map(Path::to_path_buf),
        path_var: std::env::var_os("PATH"),
        runner: Arc::new(Reaped),
    };
    let service = Arc::new(Service::new(cfg, events.clone(), exit.clone()));
    service.watch_exits().map_err(io_err("cannot start the exit watcher"))?;

    let listener = listen(&flags.socket)?;
    let ttrpc_err = |source| BootError::Ttrpc { socket: flags.socket.clone(), source };
    let mut server =
        Server::new().add_listener(listener.into_raw_fd()).map_err(ttrpc_err)?.register_service(task_methods(service));
    server.start().map_err(ttrpc_err)?;
    ready()?;
    containerd_shim::info!("serving {} for the group of container {} on {}", RUNTIME_NAME, flags.id, flags.socket);

    exit.wait();
    server.shutdown();
    let _ = std::fs::remove_file(socket_path(&flags.socket));
    events.flush(EVENTS_FLUSH);
    Ok(())
}

/// Tells `start` the shim listens: stdout (its pipe) becomes stderr.
fn ready() -> Result<(), BootError> {
    // SAFETY: dup2 on the process's own standard descriptors; no Rust
    // object owns descriptor 1 in a way this invalidates.
    if unsafe { libc::dup2(libc::STDERR_FILENO, libc::STDOUT_FILENO) } < 0 {
        return Err(io_err("cannot close the startup pipe")(std::io::Error::last_os_error()));
    }
    Ok(())
}

/// `delete`: containerd lost the shim; remove what it left.
fn delete(flags: &Flags) -> Result<(), BootError> {
    reaper::spawn(|| {}).map_err(io_err("cannot start the reaper thread"))?;
    let bundle = if flags.bundle.is_empty() {
        std::env::current_dir().map_err(io_err("cannot read the working directory (the bundle)"))?
    } else {
        PathBuf::from(&flags.bundle)
    };
    let opts = containerd_shim::util::read_options(&bundle).map(|o| ShimOptions::from_runc(&o)).unwrap_or_default();
    let exe = std::env::current_exe().ok();
    let shim_dir = exe.as_deref().and_then(Path::parent);
    match find_amphi(opts.binary.as_deref(), shim_dir, std::env::var_os("PATH").as_deref()) {
        Some(binary) => {
            let amphi =
                Amphi::new(binary, opts.state_root(&flags.namespace), Some(bundle.join("log.json")), Arc::new(Reaped))
                    .with_systemd_cgroup(opts.systemd_cgroup);
            match amphi.delete(&flags.id, true) {
                Ok(()) => {}
                Err(e) if e.is_not_found() => {}
                Err(e) => eprintln!("warning: {}", amphi::logging::chain(&e)),
            }
        }
        None => eprintln!("warning: cannot find the amphi binary: container {} may be left in amphi's state", flags.id),
    }
    if let Err(e) = rootfs::unmount(&rootfs::rootfs_dir(&bundle)) {
        eprintln!("warning: {}", amphi::logging::chain(&e));
    }
    let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let resp = DeleteResponse {
        exit_status: 128 + libc::SIGKILL as u32,
        exited_at: Some(containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp {
            seconds: now.as_secs() as i64,
            nanos: now.subsec_nanos() as i32,
            ..Default::default()
        })
        .into(),
        ..Default::default()
    };
    let bytes = resp.write_to_bytes().map_err(|e| BootError::Io {
        what: "cannot encode the delete response".into(),
        source: std::io::Error::other(e),
    })?;
    std::io::stdout().write_all(&bytes).map_err(io_err("cannot write the delete response"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(args: &[&str]) -> Flags {
        containerd_shim::parse(args).unwrap()
    }

    #[test]
    fn actions_follow_containerds_calls() {
        let start = flags(&[
            "-namespace",
            "default",
            "-address",
            "/run/containerd/containerd.sock",
            "-publish-binary",
            "/usr/bin/containerd",
            "-id",
            "c1",
            "start",
        ]);
        assert_eq!(action(&start).unwrap(), Action::Start);
        let serve =
            flags(&["-namespace", "default", "-id", "c1", "-address", "/a", "-socket", "unix:///run/containerd/s/x"]);
        assert_eq!(action(&serve).unwrap(), Action::Serve);
        let delete = flags(&["-namespace", "default", "-id", "c1", "-bundle", "/b", "delete"]);
        assert_eq!(action(&delete).unwrap(), Action::Delete);
        assert_eq!(action(&flags(&["-v"])).unwrap(), Action::Version);
        assert_eq!(action(&flags(&["-info"])).unwrap(), Action::Info);
    }

    #[test]
    fn incomplete_command_lines_say_what_is_missing() {
        let e = action(&flags(&["start"])).unwrap_err();
        assert!(e.to_string().contains("-namespace is required"), "{e}");
        let e = action(&flags(&["-namespace", "n", "start"])).unwrap_err();
        assert!(e.to_string().contains("-id is required"), "{e}");
        let e = action(&flags(&["-namespace", "n", "-id", "c"])).unwrap_err();
        assert!(e.to_string().contains("-socket is required"), "{e}");
        let e = action(&flags(&["-namespace", "n", "-id", "c", "bogus"])).unwrap_err();
        assert!(e.to_string().contains("unknown action \"bogus\""), "{e}");
    }

    #[test]
    fn socket_addresses_are_containerds() {
        let a = containerd_shim::socket_address("/run/containerd/containerd.sock", "default", "c1");
        assert!(a.starts_with("unix:///run/containerd/s/"), "{a}");
        assert_eq!(socket_path(&a).len(), "/run/containerd/s/".len() + 64);
        assert_eq!(socket_path("/plain/path"), "/plain/path");
    }

    #[test]
    fn a_pods_containers_share_the_sandboxs_group() {
        let dir = tempfile::tempdir().unwrap();
        let write = |annotations: serde_json::Value| {
            let config = serde_json::json!({ "annotations": annotations });
            std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap()
        };
        let cri = "io.kubernetes.cri.sandbox-id";
        write(serde_json::json!({ cri: "pod1", "io.kubernetes.cri.container-type": "container" }));
        assert_eq!(group_of(dir.path(), "app"), "pod1");
        write(serde_json::json!({ "io.containerd.amphi.v2.group": "g", cri: "pod1" }));
        assert_eq!(group_of(dir.path(), "app"), "g");
        write(serde_json::json!({ cri: "" }));
        assert_eq!(group_of(dir.path(), "app"), "app");
        std::fs::write(dir.path().join("config.json"), "not json").unwrap();
        assert_eq!(group_of(dir.path(), "lone"), "lone");
        assert_eq!(group_of(&dir.path().join("missing"), "lone"), "lone");
    }

    #[test]
    fn the_task_service_answers_to_v2_and_v3_names() {
        let cfg = Config { namespace: "n".into(), shim_dir: None, path_var: None, runner: Arc::new(Reaped) };
        let svc =
            Arc::new(Service::new(cfg, Arc::new(crate::events::Recorded::default()), Arc::new(ExitSignal::default())));
        let m = task_methods(svc);
        for method in ["Create", "Start", "Delete", "Kill", "Wait", "State", "Exec", "Shutdown"] {
            assert!(m.contains_key(&format!("/containerd.task.v2.Task/{method}")), "{method} v2");
            assert!(m.contains_key(&format!("/containerd.task.v3.Task/{method}")), "{method} v3");
        }
        assert_eq!(m.len(), 2 * 17);
    }
}
