//! The containers of this guest: creating them through the runtime helper,
//! relaying their stdio to the host's vsock streams, starting, signalling
//! and waiting for them.
//!
//! The guest runs amphi's own container runtime (the same code as the
//! host's container isolation), so the workload gets its namespaces,
//! mounts, cgroup, capabilities and seccomp filter inside the VM too. Its
//! state lives under [`GUEST_STATE_DIR`]; the agent only adds what the
//! runtime has no notion of: the stdio relays and who is waiting for whom.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::BufReader;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use amphi::agent::container::{
    CreateContainerRequest, CreateContainerResponse, CreateTimings, ExecRequest, ExecResponse, ExitStatus,
    JoinNamespace, PsRequest, PsResponse, ResizeRequest, SignalRequest, StatsResponse, StreamKind, UpdateRequest,
    WaitRequest, GUEST_BUNDLE_DIR, GUEST_SHARE_DIR, GUEST_STATE_DIR,
};
use amphi::agent::relay;
use amphi::agent::{AgentError, ErrorCode};
use amphi::container::{ContainerError, ContainerId, Runtime};
use amphi::spec::Isolation;

use crate::disks;
use crate::helper::{self, ToAgent, ToHelper, CHANNEL_FD};
use crate::reaper::Exits;
use crate::sessions::Sessions;

/// How long the host has to open a process's stdio streams.
const STDIO_WAIT: Duration = Duration::from_secs(30);
/// How long the runtime helper may take to create a container (hooks
/// excluded: the clock restarts after them).
const HELPER_DEADLINE: Duration = Duration::from_secs(120);

fn err(code: ErrorCode, message: impl Into<String>) -> AgentError {
    AgentError::new(code, message)
}

/// The agent error for a failure of the guest runtime, by amphi's exit code.
pub fn runtime_error(exit_code: u8, message: String) -> AgentError {
    let code = match exit_code {
        amphi::exit::NOT_FOUND => ErrorCode::NoSuchContainer,
        amphi::exit::CONFLICT => ErrorCode::WrongState,
        amphi::exit::BAD_INPUT | amphi::exit::USAGE => ErrorCode::InvalidConfig,
        amphi::exit::UNSUPPORTED => ErrorCode::Unsupported,
        _ => ErrorCode::ContainerFailed,
    };
    AgentError::new(code, message)
}

fn from_runtime(e: ContainerError) -> AgentError {
    runtime_error(e.exit_code(), amphi::logging::chain(&e))
}

/// A process whose stdio the agent relays.
struct Proc {
    pid: i32,
    io: Mutex<Option<Relays>>,
    /// The pty master, for window size changes.
    console: Option<OwnedFd>,
}

struct Relays {
    drain: Arc<AtomicBool>,
    outputs: Vec<JoinHandle<()>>,
}

struct Container {
    init: Proc,
    /// exec'd processes by exec id, until someone waited for them.
    execs: Mutex<HashMap<String, Arc<Proc>>>,
}

/// exec'd processes one container may have in flight.
const MAX_EXECS: usize = 1024;

/// A creation parked while the host runs the runtime hooks.
struct Parked {
    helper: Helper,
    stdio: Stdio3,
    timings: CreateTimings,
}

/// The helper process of one creation and its channel.
struct Helper {
    chan: UnixStream,
    reader: BufReader<UnixStream>,
}

/// The agent's ends of a process's stdio, before the relays start.
struct Stdio3 {
    streams: HashMap<StreamKind, File>,
    /// Our end of each pipe: the write end for stdin, read ends for output.
    ends: HashMap<StreamKind, OwnedFd>,
    console: Option<(UnixListener, PathBuf)>,
}

pub struct Containers {
    exits: Arc<Exits>,
    sessions: Arc<Sessions>,
    table: Mutex<HashMap<String, Arc<Container>>>,
    appeared: Condvar,
    parked: Mutex<HashMap<String, Parked>>,
    shares: Mutex<HashSet<String>>,
}

impl Containers {
    pub fn new(exits: Arc<Exits>, sessions: Arc<Sessions>) -> Containers {
        Containers {
            exits,
            sessions,
            table: Mutex::new(HashMap::new()),
            appeared: Condvar::new(),
            parked: Mutex::new(HashMap::new()),
            shares: Mutex::new(HashSet::new()),
        }
    }

    fn runtime() -> Runtime {
        Runtime::new(GUEST_STATE_DIR, Some(Isolation::Container), false, amphi::isolation::sandbox_for)
    }

    fn exists(&self, id: &str) -> bool {
        self.table.lock().unwrap_or_else(|e| e.into_inner()).contains_key(id)
            || self.parked.lock().unwrap_or_else(|e| e.into_inner()).contains_key(id)
    }

    fn mount_share(&self, tag: &str) -> Result<PathBuf, AgentError> {
        if tag.is_empty() || tag.len() > 36 || tag.contains('/') || tag.starts_with('.') {
            return Err(err(ErrorCode::InvalidConfig, format!("{tag:?} is not a virtio-fs tag")));
        }
        let dir = Path::new(GUEST_SHARE_DIR).join(tag);
        let mut shares = self.shares.lock().unwrap_or_else(|e| e.into_inner());
        if shares.contains(tag) {
            return Ok(dir);
        }
        let setup = |e: String| err(ErrorCode::GuestSetupFailed, e);
        std::fs::create_dir_all(&dir).map_err(|e| setup(format!("mkdir {}: {e}", dir.display())))?;
        nix::mount::mount(Some(tag), &dir, Some("virtiofs"), nix::mount::MsFlags::empty(), None::<&str>)
            .map_err(|e| setup(format!("cannot mount the virtio-fs share {tag:?} on {}: {e}", dir.display())))?;
        shares.insert(tag.to_string());
        Ok(dir)
    }

    /// `create_container`: up to the runtime hooks (then `hooks_pending`)
    /// or to the end.
    pub fn create(&self, req: CreateContainerRequest) -> Result<CreateContainerResponse, AgentError> {
        let id = ContainerId::new(&req.id).map_err(|e| err(ErrorCode::InvalidConfig, e.to_string()))?;
        let id = id.as_str().to_string();
        if self.exists(&id) {
            return Err(err(ErrorCode::ContainerExists, format!("container {id:?} exists already in the guest")));
        }
        let t0 = Instant::now();
        self.mount_share(&req.share)?;
        let share_ms = t0.elapsed().as_millis() as u64;
        let setup = |e: String| err(ErrorCode::GuestSetupFailed, e);
        let mut config = req.config;
        if let Some(join) = &req.join {
            let sandbox = self.container(&join.sandbox).map_err(|_| {
                err(
                    ErrorCode::NoSuchContainer,
                    format!(
                        "the pod's sandbox {:?} does not run in this guest: create the sandbox first",
                        join.sandbox
                    ),
                )
            })?;
            // A sandbox whose init ended has no namespaces left to join.
            if nix::sys::signal::kill(nix::unistd::Pid::from_raw(sandbox.init.pid), None).is_err() {
                return Err(err(
                    ErrorCode::WrongState,
                    format!("the pod's sandbox {:?} has stopped: start a new pod", join.sandbox),
                ));
            }
            join_namespaces(&mut config, sandbox.init.pid, &join.namespaces);
        }
        if !req.disks.is_empty() {
            let filesystems = std::fs::read_to_string("/proc/filesystems").unwrap_or_default();
            if let Some(root) =
                disks::apply(&mut config, &req.disks, Path::new("/sys/block"), &filesystems, disks::WAIT)?
            {
                root.mount()?;
            }
        }
        let bundle = Path::new(GUEST_BUNDLE_DIR).join(&id);
        std::fs::create_dir_all(&bundle).map_err(|e| setup(format!("mkdir {}: {e}", bundle.display())))?;
        let config = serde_json::to_vec(&config).map_err(|e| setup(e.to_string()))?;
        std::fs::write(bundle.join("config.json"), config)
            .map_err(|e| setup(format!("cannot write the guest config.json: {e}")))?;

        let streams = self.sessions.take(&req.stdio.session, &req.stdio.streams, STDIO_WAIT)?;
        let (stdio, child_fds) = prepare_stdio(streams, req.stdio.terminal())?;
        let mut args: Vec<String> = vec!["runtime".into(), "create".into(), "--bundle".into()];
        args.push(bundle.display().to_string());
        if let Some((_, path)) = &stdio.console {
            args.push("--console-socket".into());
            args.push(path.display().to_string());
        }
        if req.no_pivot {
            args.push("--no-pivot".into());
        }
        if req.no_new_keyring {
            args.push("--no-new-keyring".into());
        }
        if req.runtime_hooks {
            args.push("--runtime-hooks".into());
        }
        args.push(id.clone());
        let t1 = Instant::now();
        let helper = spawn_helper(&args, child_fds)?;
        self.drive(id, helper, stdio, CreateTimings { share_ms, runtime_ms: 0 }, t1)
    }

    /// `delete_container`: a pod member goes while the guest stays. What
    /// is left of it is killed, the runtime's state and the bundle go.
    pub fn delete(&self, id: &str) -> Result<(), AgentError> {
        let parked = self.parked.lock().unwrap_or_else(|e| e.into_inner()).remove(id);
        let known = self.table.lock().unwrap_or_else(|e| e.into_inner()).get(id).cloned();
        if parked.is_none() && known.is_none() {
            return Err(err(ErrorCode::NoSuchContainer, format!("no container {id:?} in the guest")));
        }
        // A parked creation's helper ends when its channel closes.
        drop(parked);
        let r = Self::runtime().delete(id, true).map_err(from_runtime);
        if let Some(c) = known {
            // The wait of whoever stands for it on the host answers first.
            let _ = self.exits.wait(c.init.pid, Some(Instant::now() + Duration::from_secs(5)));
            finish_relays(&c.init);
            self.table.lock().unwrap_or_else(|e| e.into_inner()).remove(id);
        }
        let _ = std::fs::remove_dir_all(Path::new(GUEST_BUNDLE_DIR).join(id));
        r
    }

    /// `resume_create`: the host ran the hooks.
    pub fn resume_create(&self, id: &str) -> Result<CreateContainerResponse, AgentError> {
        let parked = self.parked.lock().unwrap_or_else(|e| e.into_inner()).remove(id);
        let Some(mut p) = parked else {
            return Err(err(ErrorCode::NoSuchContainer, format!("no creation of {id:?} waits for its hooks")));
        };
        helper::send(&mut p.helper.chan, &ToHelper::HooksDone)
            .map_err(|e| err(ErrorCode::ContainerFailed, format!("the runtime helper went away: {e}")))?;
        self.drive(id.to_string(), p.helper, p.stdio, p.timings, Instant::now())
    }

    /// Reads the helper's messages until the container is created, the
    /// hooks are due, or it failed.
    fn drive(
        &self,
        id: String,
        mut helper: Helper,
        stdio: Stdio3,
        mut timings: CreateTimings,
        since: Instant,
    ) -> Result<CreateContainerResponse, AgentError> {
        let _ = helper.chan.set_read_timeout(Some(HELPER_DEADLINE));
        let msg = helper::recv::<ToAgent>(&mut helper.reader);
        timings.runtime_ms += since.elapsed().as_millis() as u64;
        match msg {
            Ok(Some(ToAgent::Hooks(pid))) => {
                self.parked.lock().unwrap_or_else(|e| e.into_inner()).insert(id, Parked { helper, stdio, timings });
                Ok(CreateContainerResponse { pid, hooks_pending: true, timings: Some(timings) })
            }
            Ok(Some(ToAgent::Created(pid))) => {
                let init = start_relays(pid, stdio)?;
                let c = Arc::new(Container { init, execs: Mutex::new(HashMap::new()) });
                self.table.lock().unwrap_or_else(|e| e.into_inner()).insert(id, c);
                self.appeared.notify_all();
                Ok(CreateContainerResponse { pid, hooks_pending: false, timings: Some(timings) })
            }
            Ok(Some(ToAgent::Failed { exit_code, message })) => Err(runtime_error(exit_code, message)),
            Ok(Some(other)) => {
                Err(err(ErrorCode::ContainerFailed, format!("the runtime helper said {other:?} during create")))
            }
            Ok(None) => Err(err(ErrorCode::ContainerFailed, "the runtime helper ended without saying how create went")),
            Err(e) => Err(err(ErrorCode::ContainerFailed, format!("no answer from the runtime helper: {e}"))),
        }
    }

    pub fn start(&self, id: &str) -> Result<(), AgentError> {
        Self::runtime().start(id).map_err(from_runtime)
    }

    fn container(&self, id: &str) -> Result<Arc<Container>, AgentError> {
        let t = self.table.lock().unwrap_or_else(|e| e.into_inner());
        t.get(id).cloned().ok_or_else(|| err(ErrorCode::NoSuchContainer, format!("no container {id:?} in the guest")))
    }

    fn exec_proc(&self, id: &str, exec_id: &str) -> Result<Arc<Proc>, AgentError> {
        let c = self.container(id)?;
        let e = c.execs.lock().unwrap_or_else(|e| e.into_inner());
        e.get(exec_id).cloned().ok_or_else(|| {
            err(ErrorCode::NoSuchContainer, format!("no exec'd process {exec_id:?} in container {id:?}"))
        })
    }

    pub fn signal(&self, req: &SignalRequest) -> Result<(), AgentError> {
        if let Some(exec_id) = &req.exec_id {
            let p = self.exec_proc(&req.id, exec_id)?;
            if self.exits.get(p.pid).is_some() {
                return Ok(());
            }
            if !(1..=64).contains(&req.signal) {
                return Err(err(ErrorCode::InvalidConfig, format!("{} is not a signal number", req.signal)));
            }
            // SAFETY: kill(2) with a pid and a signal number; no memory involved.
            let r = unsafe { libc::kill(p.pid, req.signal) };
            return nix::errno::Errno::result(r)
                .map(drop)
                .map_err(|e| err(ErrorCode::ContainerFailed, format!("cannot signal the exec'd process: {e}")));
        }
        Self::runtime().kill(&req.id, &req.signal.to_string(), req.all).map_err(from_runtime)
    }

    /// `wait`: blocks until the process exits (for a container's init,
    /// waiting for the container to appear first if its creation is still
    /// under way), then flushes its output streams before answering.
    pub fn wait(&self, req: &WaitRequest) -> Result<ExitStatus, AgentError> {
        if let Some(exec_id) = &req.exec_id {
            let p = self.exec_proc(&req.id, exec_id)?;
            let status = self.exits.wait(p.pid, None).unwrap_or(ExitStatus::exited(255));
            finish_relays(&p);
            if let Ok(c) = self.container(&req.id) {
                c.execs.lock().unwrap_or_else(|e| e.into_inner()).remove(exec_id);
            }
            return Ok(status);
        }
        let c = {
            let mut t = self.table.lock().unwrap_or_else(|e| e.into_inner());
            loop {
                if let Some(c) = t.get(&req.id) {
                    break c.clone();
                }
                t = self.appeared.wait(t).unwrap_or_else(|e| e.into_inner());
            }
        };
        let status = self.exits.wait(c.init.pid, None).unwrap_or(ExitStatus::exited(255));
        finish_relays(&c.init);
        nix::unistd::sync();
        Ok(status)
    }

    pub fn resize(&self, req: &ResizeRequest) -> Result<(), AgentError> {
        let proc_ = match &req.exec_id {
            Some(e) => self.exec_proc(&req.id, e)?,
            None => {
                let c = self.container(&req.id)?;
                return resize(&c.init, req);
            }
        };
        resize(&proc_, req)
    }

    /// `exec`: an extra process in a running container, through the
    /// runtime helper (`runtime exec --detach`: the process is reparented
    /// to the agent, which reaps it).
    pub fn exec(&self, req: ExecRequest) -> Result<ExecResponse, AgentError> {
        let c = self.container(&req.id)?;
        let valid = !req.exec_id.is_empty()
            && req.exec_id.len() <= 64
            && req.exec_id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !valid {
            return Err(err(ErrorCode::InvalidConfig, format!("{:?} is not a valid exec id", req.exec_id)));
        }
        {
            let e = c.execs.lock().unwrap_or_else(|e| e.into_inner());
            if e.contains_key(&req.exec_id) {
                return Err(err(ErrorCode::ContainerExists, format!("exec id {:?} is in use", req.exec_id)));
            }
            if e.len() >= MAX_EXECS {
                return Err(err(ErrorCode::Unsupported, format!("more than {MAX_EXECS} exec'd processes at once")));
            }
        }
        let setup = |e: String| err(ErrorCode::GuestSetupFailed, e);
        let dir = Path::new(GUEST_BUNDLE_DIR).join(&req.id);
        let process = dir.join(format!("exec-{}.json", req.exec_id));
        let pid_file = dir.join(format!("exec-{}.pid", req.exec_id));
        std::fs::write(&process, serde_json::to_vec(&req.process).map_err(|e| setup(e.to_string()))?)
            .map_err(|e| setup(format!("cannot write the process file: {e}")))?;
        let streams = self.sessions.take(&req.stdio.session, &req.stdio.streams, STDIO_WAIT)?;
        let (stdio, child_fds) = prepare_stdio(streams, req.stdio.terminal())?;
        let mut args: Vec<String> = vec!["runtime".into(), "exec".into(), "--process".into()];
        args.push(process.display().to_string());
        args.push("--pid-file".into());
        args.push(pid_file.display().to_string());
        if let Some((_, path)) = &stdio.console {
            args.push("--console-socket".into());
            args.push(path.display().to_string());
        }
        args.push(req.id.clone());
        let mut helper = spawn_helper(&args, child_fds)?;
        let _ = helper.chan.set_read_timeout(Some(HELPER_DEADLINE));
        let msg = helper::recv::<ToAgent>(&mut helper.reader);
        let _ = std::fs::remove_file(&process);
        let _ = std::fs::remove_file(&pid_file);
        match msg {
            Ok(Some(ToAgent::Started(pid))) => {
                let p = Arc::new(start_relays(pid, stdio)?);
                c.execs.lock().unwrap_or_else(|e| e.into_inner()).insert(req.exec_id, p);
                Ok(ExecResponse { pid })
            }
            Ok(Some(ToAgent::Failed { exit_code, message })) => Err(runtime_error(exit_code, message)),
            Ok(Some(other)) => {
                Err(err(ErrorCode::ContainerFailed, format!("the runtime helper said {other:?} during exec")))
            }
            Ok(None) => Err(err(ErrorCode::ContainerFailed, "the runtime helper ended without saying how exec went")),
            Err(e) => Err(err(ErrorCode::ContainerFailed, format!("no answer from the runtime helper: {e}"))),
        }
    }

    pub fn pause(&self, id: &str) -> Result<(), AgentError> {
        Self::runtime().pause(id).map_err(from_runtime)
    }

    pub fn resume(&self, id: &str) -> Result<(), AgentError> {
        Self::runtime().resume(id).map_err(from_runtime)
    }

    /// `ps`: the pids from the runtime; the table from ps(1) when the
    /// guest has one for the arguments given, else (no arguments) built
    /// from /proc: the guest image carries no ps binary.
    pub fn ps(&self, req: &PsRequest) -> Result<PsResponse, AgentError> {
        let rt = Self::runtime();
        let json = rt.ps(&req.id, true, &[]).map_err(from_runtime)?;
        let pids: Vec<i32> = serde_json::from_str(&json)
            .map_err(|e| err(ErrorCode::ContainerFailed, format!("the runtime's pid list: {e}")))?;
        let table = if req.args.is_empty() {
            amphi::container::ps::proc_table(&pids)
        } else {
            amphi::container::ps::table(&req.args, &pids).map_err(|e| {
                err(
                    ErrorCode::Unsupported,
                    format!(
                        "ps {} in the guest: {}; without arguments amphi shows the -ef table, or run ps in the \
                         container with amphi exec",
                        req.args.join(" "),
                        amphi::logging::chain(&e)
                    ),
                )
            })?
        };
        Ok(PsResponse { pids, table })
    }

    pub fn stats(&self, id: &str) -> Result<StatsResponse, AgentError> {
        let mut got = None;
        Self::runtime()
            .events(id, true, Duration::from_secs(1), &mut |e| {
                got = e.data.as_ref().map(serde_json::to_value);
                Ok(())
            })
            .map_err(from_runtime)?;
        match got {
            Some(Ok(stats)) => Ok(StatsResponse { stats }),
            Some(Err(e)) => Err(err(ErrorCode::ContainerFailed, format!("cannot encode the stats: {e}"))),
            None => Err(err(ErrorCode::ContainerFailed, "the runtime gave no stats")),
        }
    }

    pub fn update(&self, req: &UpdateRequest) -> Result<(), AgentError> {
        let dir = Path::new(GUEST_BUNDLE_DIR).join(&req.id);
        let file = dir.join("update.json");
        std::fs::create_dir_all(&dir)
            .and_then(|()| std::fs::write(&file, serde_json::to_vec(&req.resources).unwrap_or_default()))
            .map_err(|e| err(ErrorCode::GuestSetupFailed, format!("cannot write the resources: {e}")))?;
        let opts = amphi::container::update::UpdateOptions { resources: Some(file.clone()), ..Default::default() };
        let r = Self::runtime().update(&req.id, &opts).map_err(from_runtime);
        let _ = std::fs::remove_file(&file);
        r
    }
}

/// Points the namespaces a pod member shares with its sandbox at the
/// sandbox's init, adding the ones the config does not list; the others
/// keep what the config says (new ones: the host refuses other paths).
fn join_namespaces(config: &mut serde_json::Value, sandbox_pid: i32, kinds: &[JoinNamespace]) {
    if !config["linux"].is_object() {
        config["linux"] = serde_json::json!({});
    }
    if !config["linux"]["namespaces"].is_array() {
        config["linux"]["namespaces"] = serde_json::json!([]);
    }
    let Some(nss) = config["linux"]["namespaces"].as_array_mut() else { return };
    for k in kinds {
        let path = format!("/proc/{sandbox_pid}/ns/{}", k.proc_name());
        match nss.iter_mut().find(|n| n["type"] == k.oci_type()) {
            Some(n) => n["path"] = serde_json::json!(path),
            None => nss.push(serde_json::json!({"type": k.oci_type(), "path": path})),
        }
    }
}

fn resize(p: &Proc, req: &ResizeRequest) -> Result<(), AgentError> {
    let Some(master) = &p.console else {
        return Err(err(ErrorCode::WrongState, "the process has no terminal"));
    };
    set_window(master.as_fd(), req.rows, req.cols)
        .map_err(|e| err(ErrorCode::ContainerFailed, format!("cannot set the window size: {e}")))
}

pub fn set_window(fd: std::os::fd::BorrowedFd<'_>, rows: u16, cols: u16) -> nix::Result<()> {
    let ws = libc::winsize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: TIOCSWINSZ reads one winsize from the pointer.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
    nix::errno::Errno::result(r).map(drop)
}

/// A fresh console socket path. Named by a counter, not by the ids: a
/// container id and an exec id may each be 64 characters (podman's are),
/// which would not fit in a socket address (108 bytes).
fn console_socket_path() -> std::io::Result<PathBuf> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let dir = Path::new(CONSOLE_DIR);
    std::fs::create_dir_all(dir)?;
    Ok(dir.join(format!("{}.sock", NEXT.fetch_add(1, Ordering::Relaxed))))
}

/// Where the agent's console sockets live (short, for the address limit).
const CONSOLE_DIR: &str = "/run/amphi/console";

/// Pipes (or a console socket) for a process's stdio: the agent's ends and
/// the helper's fds 0, 1, 2.
fn prepare_stdio(streams: HashMap<StreamKind, File>, terminal: bool) -> Result<(Stdio3, [OwnedFd; 3]), AgentError> {
    let setup = |what: &str, e: std::io::Error| err(ErrorCode::GuestSetupFailed, format!("{what}: {e}"));
    let null = || -> Result<OwnedFd, AgentError> {
        File::options().read(true).write(true).open("/dev/null").map(OwnedFd::from).map_err(|e| setup("/dev/null", e))
    };
    let mut ends = HashMap::new();
    let mut console = None;
    let fds = if terminal {
        let path = console_socket_path().map_err(|e| setup("console socket directory", e))?;
        let _ = std::fs::remove_file(&path);
        let l = UnixListener::bind(&path).map_err(|e| setup("console socket", e))?;
        console = Some((l, path));
        [null()?, null()?, null()?]
    } else {
        let pipe = || nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| setup("pipe", e.into()));
        let stdin = if streams.contains_key(&StreamKind::Stdin) {
            let (r, w) = pipe()?;
            ends.insert(StreamKind::Stdin, w);
            r
        } else {
            null()?
        };
        let mut out = |k: StreamKind| -> Result<OwnedFd, AgentError> {
            if streams.contains_key(&k) {
                let (r, w) = pipe()?;
                ends.insert(k, r);
                Ok(w)
            } else {
                null()
            }
        };
        let stdout = out(StreamKind::Stdout)?;
        let stderr = out(StreamKind::Stderr)?;
        [stdin, stdout, stderr]
    };
    Ok((Stdio3 { streams, ends, console }, fds))
}

fn spawn_helper(args: &[String], fds: [OwnedFd; 3]) -> Result<Helper, AgentError> {
    let fail = |what: &str, e: std::io::Error| err(ErrorCode::GuestSetupFailed, format!("{what}: {e}"));
    let (ours, theirs) = UnixStream::pair().map_err(|e| fail("helper channel", e))?;
    let theirs_fd = theirs.as_raw_fd();
    let [i, o, e] = fds;
    let mut cmd = Command::new("/proc/self/exe");
    cmd.args(args).stdin(Stdio::from(i)).stdout(Stdio::from(o)).stderr(Stdio::from(e)).env_clear();
    let onto_channel_fd = move || {
        // SAFETY: dup2 of an open fd is async-signal-safe; it runs in the
        // forked child before exec (and clears close-on-exec on the copy).
        if unsafe { libc::dup2(theirs_fd, CHANNEL_FD) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    };
    // SAFETY: the hook only moves the channel to the fd the helper expects.
    unsafe {
        cmd.pre_exec(onto_channel_fd);
    }
    // The reaper collects the helper's status; the Child handle is dropped
    // without waiting.
    cmd.spawn().map_err(|e| fail("cannot start the runtime helper", e))?;
    drop(theirs);
    let reader = BufReader::new(ours.try_clone().map_err(|e| fail("helper channel", e))?);
    Ok(Helper { chan: ours, reader })
}

/// Receives the pty master the container's init sends to the console
/// socket.
fn receive_console(listener: &UnixListener) -> Result<OwnedFd, AgentError> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    use std::os::fd::FromRawFd;
    let fail = |e: String| err(ErrorCode::ContainerFailed, format!("cannot receive the container's terminal: {e}"));
    listener.set_nonblocking(true).map_err(|e| fail(e.to_string()))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    let conn = loop {
        match listener.accept() {
            Ok((c, _)) => break c,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Err(e) => return Err(fail(e.to_string())),
        }
    };
    let _ = conn.set_nonblocking(false);
    let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
    let mut buf = [0u8; 4096];
    let mut iov = [std::io::IoSliceMut::new(&mut buf)];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let msg = recvmsg::<()>(conn.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC)
        .map_err(|e| fail(e.to_string()))?;
    for c in msg.cmsgs().map_err(|e| fail(e.to_string()))? {
        if let ControlMessageOwned::ScmRights(fds) = c {
            if let Some(&fd) = fds.first() {
                // SAFETY: SCM_RIGHTS gave us a new descriptor we now own.
                return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
            }
        }
    }
    Err(fail("no descriptor in the message".into()))
}

/// Starts the threads that copy a process's output to its streams and its
/// input from them.
fn start_relays(pid: i32, mut stdio: Stdio3) -> Result<Proc, AgentError> {
    let drain = Arc::new(AtomicBool::new(false));
    let mut outputs = Vec::new();
    let mut console = None;
    let spawn_out = |src: OwnedFd, mut dst: File, drain: Arc<AtomicBool>| {
        std::thread::Builder::new().name("stdout".into()).spawn(move || {
            relay::pump(src.as_fd(), &mut dst, Some(&drain));
            let _ = nix::sys::socket::shutdown(dst.as_raw_fd(), nix::sys::socket::Shutdown::Write);
        })
    };
    let spawn_in = |mut src: File, dst: OwnedFd| {
        std::thread::Builder::new().name("stdin".into()).spawn(move || {
            let _ = relay::pump_into_fd(&mut src, dst.as_fd());
        })
    };
    let thread = |e: std::io::Error| err(ErrorCode::GuestSetupFailed, format!("cannot start a relay thread: {e}"));
    if let Some((listener, path)) = stdio.console.take() {
        let master = receive_console(&listener);
        let _ = std::fs::remove_file(&path);
        let master = master?;
        if let Some(stream) = stdio.streams.remove(&StreamKind::Tty) {
            let dup = |f: &OwnedFd| f.try_clone().map_err(thread);
            let back = stream.try_clone().map_err(thread)?;
            outputs.push(spawn_out(dup(&master)?, stream, drain.clone()).map_err(thread)?);
            spawn_in(back, dup(&master)?).map_err(thread)?;
        }
        console = Some(master);
    } else {
        for kind in [StreamKind::Stdout, StreamKind::Stderr] {
            if let (Some(src), Some(dst)) = (stdio.ends.remove(&kind), stdio.streams.remove(&kind)) {
                outputs.push(spawn_out(src, dst, drain.clone()).map_err(thread)?);
            }
        }
        if let (Some(dst), Some(src)) =
            (stdio.ends.remove(&StreamKind::Stdin), stdio.streams.remove(&StreamKind::Stdin))
        {
            spawn_in(src, dst).map_err(thread)?;
        }
    }
    Ok(Proc { pid, io: Mutex::new(Some(Relays { drain, outputs })), console })
}

/// After the process ended: lets the output relays copy what is buffered
/// and waits for them, so nothing written before the exit is lost.
fn finish_relays(p: &Proc) {
    let relays = p.io.lock().unwrap_or_else(|e| e.into_inner()).take();
    if let Some(r) = relays {
        r.drain.store(true, Ordering::Release);
        for h in r.outputs {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_member_joins_the_sandboxs_namespaces_and_keeps_its_own_others() {
        let mut config = serde_json::json!({"linux": {"namespaces": [
            {"type": "mount"}, {"type": "network"}, {"type": "ipc", "path": "/somewhere"}, {"type": "pid"}
        ]}});
        join_namespaces(&mut config, 42, &[JoinNamespace::Network, JoinNamespace::Ipc, JoinNamespace::Uts]);
        assert_eq!(
            config["linux"]["namespaces"],
            serde_json::json!([
                {"type": "mount"},
                {"type": "network", "path": "/proc/42/ns/net"},
                {"type": "ipc", "path": "/proc/42/ns/ipc"},
                {"type": "pid"},
                {"type": "uts", "path": "/proc/42/ns/uts"}
            ])
        );
        let mut bare = serde_json::json!({});
        join_namespaces(&mut bare, 7, &[JoinNamespace::Pid]);
        assert_eq!(bare["linux"]["namespaces"], serde_json::json!([{"type": "pid", "path": "/proc/7/ns/pid"}]));
    }
}
