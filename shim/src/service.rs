//! The Task service containerd calls, for every container of a group.
//!
//! One shim serves a group: a pod's sandbox and its containers (grouped by
//! the CRI's sandbox-id annotation, see [`crate::bootstrap`]), or a lone
//! container. Containers are kept by id; an exit is matched to its
//! container by pid, and the shim stays up until the last one is deleted.
//!
//! Each call maps onto one amphi command (see [`crate::runtime`]) plus the
//! shim's own bookkeeping: the init's phase and exit status
//! ([`crate::process`]), its stdio ([`crate::stdio`]), its rootfs mounts
//! ([`crate::rootfs`]) and the events containerd expects. Extra processes
//! ([`crate::exec`]) are `amphi exec --detach` processes the shim then
//! reaps; pause, resume and update are `amphi pause`, `resume` and
//! `update --resources`. Checkpoint answers Unimplemented and says so.

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use containerd_shim::api::{
    CloseIORequest, ConnectRequest, ConnectResponse, CreateTaskRequest, CreateTaskResponse, DeleteRequest,
    DeleteResponse, Empty, ExecProcessRequest, KillRequest, PidsRequest, PidsResponse, ResizePtyRequest,
    ShutdownRequest, StartRequest, StartResponse, StateRequest, StateResponse, StatsRequest, StatsResponse, Status,
    WaitRequest, WaitResponse,
};
use containerd_shim::protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskIO, TaskPaused, TaskResumed, TaskStart,
};
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::protos::shim::shim::{CheckpointTaskRequest, PauseRequest, ResumeRequest, UpdateTaskRequest};
use containerd_shim::protos::types::task::ProcessInfo;
use containerd_shim::{ExitSignal, Task, TtrpcContext, TtrpcResult};

use crate::error::ShimError;
use crate::events::{send, Publish};
use crate::exec::ExecProcess;
use crate::options::{find_amphi, ShimOptions};
use crate::process::{Exit, ExitBook, InitProcess, Phase};
use crate::reaper::Runner;
use crate::rootfs;
use crate::runtime::{Amphi, CreateFlags, CreateStdio};
use crate::stats::Cgroups;
use crate::stdio::{ConsoleSocket, Io, StdioPaths};

/// How long Delete lets the output copies drain.
const IO_DRAIN: Duration = Duration::from_secs(2);
/// How long Delete waits to reap a created container it force-deleted.
const REAP_WAIT: Duration = Duration::from_secs(10);

/// What the service needs to know about its environment.
pub struct Config {
    pub namespace: String,
    /// The directory of the shim's own binary (amphi is looked up there).
    pub shim_dir: Option<PathBuf>,
    /// PATH, for finding amphi when it is not beside the shim.
    pub path_var: Option<OsString>,
    pub runner: Arc<dyn Runner>,
}

/// The container this shim serves.
struct Container {
    id: String,
    bundle: PathBuf,
    /// `<bundle>/rootfs` when the shim mounted it.
    rootfs: Option<PathBuf>,
    stdio: StdioPaths,
    amphi: Amphi,
    init: Arc<InitProcess>,
    io: Mutex<Option<Io>>,
    cgroups: Option<Cgroups>,
    execs: Mutex<HashMap<String, Arc<ExecProcess>>>,
}

impl Container {
    fn exec(&self, exec_id: &str) -> Result<Arc<ExecProcess>, ShimError> {
        lock(&self.execs).get(exec_id).cloned().ok_or_else(|| {
            ShimError::NotFound(format!("exec process \"{exec_id}\" of container \"{}\" does not exist", self.id))
        })
    }

    fn exec_by_pid(&self, pid: i32) -> Option<Arc<ExecProcess>> {
        lock(&self.execs).values().find(|e| e.pid() == pid).cloned()
    }
}

/// State shared with the exit watcher thread.
struct Shared {
    events: Arc<dyn Publish>,
    book: ExitBook,
    containers: Mutex<HashMap<String, Arc<Container>>>,
    /// Held while a state change and its event go out together, so that
    /// containerd never sees a TaskExit before the TaskStart of the same
    /// process.
    order: Mutex<()>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn timestamp(t: SystemTime) -> Timestamp {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    Timestamp { seconds: d.as_secs() as i64, nanos: d.subsec_nanos() as i32, ..Default::default() }
}

impl Shared {
    fn get(&self, id: &str) -> Option<Arc<Container>> {
        lock(&self.containers).get(id).cloned()
    }

    fn is_empty(&self) -> bool {
        lock(&self.containers).is_empty()
    }

    /// A reaped child: if it is the init, record and report its exit.
    fn on_exit(&self, pid: i32, status: i32, at: SystemTime) {
        let Some((_, exit)) = self.book.record(pid, status, at) else { return };
        // Under the order lock: a create that registered this pid has then
        // also recorded the container and sent TaskCreate.
        let _order = lock(&self.order);
        let all: Vec<Arc<Container>> = lock(&self.containers).values().cloned().collect();
        for c in all {
            if c.init.pid() == pid {
                return self.send_exit(&c, &c.id, pid, exit);
            }
            if let Some(e) = c.exec_by_pid(pid) {
                return self.send_exit(&c, &e.id, pid, exit);
            }
        }
    }

    fn send_exit(&self, c: &Container, id: &str, pid: i32, exit: Exit) {
        send(
            &*self.events,
            TaskExit {
                container_id: c.id.clone(),
                id: id.to_string(),
                pid: pid as u32,
                exit_status: exit.status,
                exited_at: Some(timestamp(exit.at)).into(),
                ..Default::default()
            },
        );
    }
}

/// The Task service.
pub struct Service {
    cfg: Config,
    shared: Arc<Shared>,
    /// Serializes Create, so that an id is checked and taken at once.
    creating: Mutex<()>,
    exit: Arc<ExitSignal>,
}

impl Service {
    pub fn new(cfg: Config, events: Arc<dyn Publish>, exit: Arc<ExitSignal>) -> Service {
        let shared = Arc::new(Shared {
            events,
            book: ExitBook::default(),
            containers: Mutex::new(HashMap::new()),
            order: Mutex::new(()),
        });
        Service { cfg, shared, creating: Mutex::new(()), exit }
    }

    /// Starts the thread that turns reaped pids into exits. The shim's
    /// reaper must be running (it publishes on containerd-shim's monitor).
    pub fn watch_exits(&self) -> std::io::Result<()> {
        let sub = containerd_shim::monitor::monitor_subscribe(containerd_shim::monitor::Topic::Pid)
            .map_err(std::io::Error::other)?;
        let shared = self.shared.clone();
        std::thread::Builder::new().name("exits".into()).spawn(move || {
            while let Ok(e) = sub.rx.recv() {
                if let containerd_shim::monitor::Subject::Pid(pid) = e.subject {
                    shared.on_exit(pid, e.exit_code, SystemTime::now());
                }
            }
        })?;
        Ok(())
    }

    fn container(&self, id: &str) -> Result<Arc<Container>, ShimError> {
        self.shared.get(id).ok_or_else(|| ShimError::NotFound(format!("container \"{id}\" does not exist")))
    }

    /// The exec process a request names, or None for the init.
    fn exec_of(c: &Container, exec_id: &str) -> Result<Option<Arc<ExecProcess>>, ShimError> {
        if exec_id.is_empty() {
            Ok(None)
        } else {
            c.exec(exec_id).map(Some)
        }
    }

    /// The amphi binary and flags for a container in `bundle`.
    fn amphi_for(&self, opts: &ShimOptions, bundle: &std::path::Path) -> Result<Amphi, ShimError> {
        let binary = find_amphi(opts.binary.as_deref(), self.cfg.shim_dir.as_deref(), self.cfg.path_var.as_deref())
            .ok_or_else(|| {
                let looked = match (&opts.binary, &self.cfg.shim_dir) {
                    (Some(b), _) => b.display().to_string(),
                    (None, Some(d)) => format!("in {} or on PATH", d.display()),
                    (None, None) => "on PATH".to_string(),
                };
                ShimError::FailedPrecondition(format!(
                    "cannot find the amphi binary {looked}: install amphi beside the shim or on PATH \
                     (scripts/install.sh), or name it with BinaryName in the runtime options"
                ))
            })?;
        let amphi = Amphi::new(
            binary,
            opts.state_root(&self.cfg.namespace),
            Some(bundle.join("log.json")),
            self.cfg.runner.clone(),
        );
        Ok(amphi.with_systemd_cgroup(opts.systemd_cgroup))
    }

    pub fn do_create(&self, req: CreateTaskRequest) -> Result<CreateTaskResponse, ShimError> {
        let _one = lock(&self.creating);
        if self.shared.get(&req.id).is_some() {
            return Err(ShimError::AlreadyExists(format!("container \"{}\" exists already", req.id)));
        }
        amphi::container::ContainerId::new(&req.id).map_err(|e| ShimError::InvalidArgument(e.to_string()))?;
        if !req.checkpoint.is_empty() {
            return Err(ShimError::Unimplemented(
                "restoring from a checkpoint is not supported: amphi has no checkpoint/restore".into(),
            ));
        }
        let bundle = PathBuf::from(&req.bundle);
        let opts = ShimOptions::from_any(req.options.as_ref())?;
        if opts != ShimOptions::default() {
            // The `delete` action gets no options: keep them with the bundle.
            containerd_shim::util::write_options(&req.bundle, &opts.to_runc()).map_err(|e| ShimError::Io {
                what: format!("cannot store the runtime options in {}", req.bundle),
                source: std::io::Error::other(e),
            })?;
        }
        let amphi = self.amphi_for(&opts, &bundle)?;
        let stdio = StdioPaths {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };

        let rootfs = rootfs::mount_all(&bundle, &req.rootfs)?;
        let undo_mounts = |e: ShimError| {
            if let Some(r) = &rootfs {
                let _ = rootfs::unmount(r);
            }
            e
        };

        let pid_file = bundle.join("init.pid");
        let console = if req.terminal { Some(ConsoleSocket::new().map_err(|e| undo_mounts(e.into()))?) } else { None };
        let (create_stdio, pipes) = match &console {
            Some(_) => (CreateStdio::null(), None),
            None => {
                let (s, io) = Io::pipes(&stdio).map_err(|e| undo_mounts(e.into()))?;
                (s, Some(io))
            }
        };
        let flags = CreateFlags {
            pid_file: pid_file.clone(),
            console_socket: console.as_ref().map(|c| c.path()),
            no_pivot: opts.no_pivot,
            no_new_keyring: opts.no_new_keyring,
            isolation: opts.isolation,
        };

        let creating = self.shared.book.begin_create();
        if let Err(e) = amphi.create(&req.id, &bundle, &flags, create_stdio) {
            if let Some(io) = pipes {
                io.finish(Duration::ZERO);
            }
            return Err(undo_mounts(e.into()));
        }
        // From here the container exists: undo means deleting it too.
        let finish = || -> Result<(i32, Option<Io>), ShimError> {
            let text = std::fs::read_to_string(&pid_file).map_err(|source| ShimError::Io {
                what: format!("cannot read amphi's pid file {}", pid_file.display()),
                source,
            })?;
            let pid: i32 = text.trim().parse().map_err(|_| ShimError::Io {
                what: format!("amphi's pid file {} holds {:?}, not a pid", pid_file.display(), text.trim()),
                source: std::io::Error::from(std::io::ErrorKind::InvalidData),
            })?;
            let io = match &console {
                Some(sock) => Some(Io::console(sock.receive()?, &stdio)?),
                None => pipes,
            };
            Ok((pid, io))
        };
        let (pid, io) = match finish() {
            Ok(v) => v,
            Err(e) => {
                let _ = amphi.delete(&req.id, true);
                return Err(undo_mounts(e));
            }
        };
        drop(console);
        // An exit reaped from now on waits for this lock, so it is reported
        // after TaskCreate.
        let _order = lock(&self.shared.order);
        let init = Arc::new(InitProcess::new(pid));
        let early = self.shared.book.watch(init.clone());
        drop(creating);

        let c = Arc::new(Container {
            id: req.id.clone(),
            bundle,
            rootfs,
            stdio,
            amphi,
            init,
            io: Mutex::new(io),
            cgroups: Cgroups::of(pid as u32),
            execs: Mutex::new(HashMap::new()),
        });
        lock(&self.shared.containers).insert(c.id.clone(), c.clone());
        send(
            &*self.shared.events,
            TaskCreate {
                container_id: req.id.clone(),
                bundle: req.bundle.clone(),
                rootfs: req.rootfs.clone(),
                io: Some(TaskIO {
                    stdin: req.stdin.clone(),
                    stdout: req.stdout.clone(),
                    stderr: req.stderr.clone(),
                    terminal: req.terminal,
                    ..Default::default()
                })
                .into(),
                checkpoint: req.checkpoint.clone(),
                pid: pid as u32,
                ..Default::default()
            },
        );
        if let Some(exit) = early {
            self.shared.send_exit(&c, &c.id, pid, exit);
        }
        Ok(CreateTaskResponse { pid: pid as u32, ..Default::default() })
    }

    pub fn do_exec(&self, req: ExecProcessRequest) -> Result<(), ShimError> {
        let c = self.container(&req.id)?;
        if req.exec_id.is_empty() {
            return Err(ShimError::InvalidArgument("an exec process needs an exec id".into()));
        }
        if matches!(c.init.phase(), Phase::Stopped(_)) {
            return Err(ShimError::FailedPrecondition(format!(
                "container \"{}\" has exited: there is nothing to exec into",
                c.id
            )));
        }
        let spec = req.spec.as_ref().map(|a| a.value.clone()).unwrap_or_default();
        if spec.is_empty() {
            return Err(ShimError::InvalidArgument("the exec request carries no process".into()));
        }
        let stdio = StdioPaths { stdin: req.stdin, stdout: req.stdout, stderr: req.stderr, terminal: req.terminal };
        {
            let mut execs = lock(&c.execs);
            if execs.contains_key(&req.exec_id) {
                return Err(ShimError::AlreadyExists(format!(
                    "exec process \"{}\" of container \"{}\" exists already",
                    req.exec_id, c.id
                )));
            }
            execs.insert(req.exec_id.clone(), Arc::new(ExecProcess::new(req.exec_id.clone(), spec, stdio)));
        }
        send(
            &*self.shared.events,
            TaskExecAdded { container_id: c.id.clone(), exec_id: req.exec_id, ..Default::default() },
        );
        Ok(())
    }

    fn start_exec(&self, c: &Arc<Container>, e: &Arc<ExecProcess>) -> Result<StartResponse, ShimError> {
        if e.phase() != Phase::Created {
            return Err(ShimError::FailedPrecondition(format!("exec process \"{}\" was started already", e.id)));
        }
        let io_err = |what: String| move |source| ShimError::Io { what, source };
        let mut spec_file =
            tempfile::Builder::new().prefix(".exec-").suffix(".json").tempfile_in(&c.bundle).map_err(io_err(
                format!("cannot write the process of exec \"{}\" into {}", e.id, c.bundle.display()),
            ))?;
        std::io::Write::write_all(&mut spec_file, &e.spec)
            .map_err(io_err(format!("cannot write the process of exec \"{}\"", e.id)))?;
        let pid_file = c.bundle.join(format!("{}.pid", e.id));
        let console = if e.stdio.terminal { Some(ConsoleSocket::new()?) } else { None };
        let (stdio, pipes) = match &console {
            Some(_) => (CreateStdio::null(), None),
            None => {
                let (s, io) = Io::pipes(&e.stdio)?;
                (s, Some(io))
            }
        };
        let creating = self.shared.book.begin_create();
        let socket = console.as_ref().map(|c| c.path());
        if let Err(err) = c.amphi.exec(&c.id, spec_file.path(), &pid_file, socket.as_deref(), stdio) {
            if let Some(io) = pipes {
                io.finish(Duration::ZERO);
            }
            return Err(err.into());
        }
        let text = std::fs::read_to_string(&pid_file)
            .map_err(io_err(format!("cannot read amphi's pid file {}", pid_file.display())))?;
        let _ = std::fs::remove_file(&pid_file);
        let pid: i32 = text.trim().parse().map_err(|_| ShimError::Io {
            what: format!("amphi's pid file {} holds {:?}, not a pid", pid_file.display(), text.trim()),
            source: std::io::Error::from(std::io::ErrorKind::InvalidData),
        })?;
        let io = match &console {
            Some(sock) => Some(Io::console(sock.receive()?, &e.stdio)?),
            None => pipes,
        };
        *lock(&e.io) = io;
        let _order = lock(&self.shared.order);
        let p = Arc::new(InitProcess::new(pid));
        p.set_running();
        e.set_started(p.clone());
        let early = self.shared.book.watch(p);
        drop(creating);
        send(
            &*self.shared.events,
            TaskExecStarted {
                container_id: c.id.clone(),
                exec_id: e.id.clone(),
                pid: pid as u32,
                ..Default::default()
            },
        );
        if let Some(exit) = early {
            self.shared.send_exit(c, &e.id, pid, exit);
        }
        Ok(StartResponse { pid: pid as u32, ..Default::default() })
    }

    pub fn do_start(&self, req: StartRequest) -> Result<StartResponse, ShimError> {
        let c = self.container(&req.id)?;
        if let Some(e) = Self::exec_of(&c, &req.exec_id)? {
            return self.start_exec(&c, &e);
        }
        match c.init.phase() {
            Phase::Created => {}
            Phase::Running => {
                return Err(ShimError::FailedPrecondition(format!("container \"{}\" is already running", c.id)))
            }
            Phase::Stopped(_) => {
                return Err(ShimError::FailedPrecondition(format!(
                    "container \"{}\" has exited and cannot start again: delete it and create a new one",
                    c.id
                )))
            }
        }
        let _order = lock(&self.shared.order);
        c.amphi.start(&c.id)?;
        c.init.set_running();
        send(
            &*self.shared.events,
            TaskStart { container_id: c.id.clone(), pid: c.init.pid() as u32, ..Default::default() },
        );
        Ok(StartResponse { pid: c.init.pid() as u32, ..Default::default() })
    }

    pub fn do_state(&self, req: StateRequest) -> Result<StateResponse, ShimError> {
        let c = self.container(&req.id)?;
        if let Some(e) = Self::exec_of(&c, &req.exec_id)? {
            let (status, exit) = match e.phase() {
                Phase::Created => (Status::CREATED, None),
                Phase::Running => (Status::RUNNING, None),
                Phase::Stopped(x) => (Status::STOPPED, Some(x)),
            };
            return Ok(StateResponse {
                id: e.id.clone(),
                bundle: c.bundle.display().to_string(),
                pid: e.pid() as u32,
                status: status.into(),
                stdin: e.stdio.stdin.clone(),
                stdout: e.stdio.stdout.clone(),
                stderr: e.stdio.stderr.clone(),
                terminal: e.stdio.terminal,
                exit_status: exit.map_or(0, |x| x.status),
                exited_at: exit.map(|x| timestamp(x.at)).into(),
                exec_id: e.id.clone(),
                ..Default::default()
            });
        }
        let (status, exit) = match c.init.phase() {
            Phase::Created => (Status::CREATED, None),
            Phase::Stopped(e) => (Status::STOPPED, Some(e)),
            // Started: only amphi knows whether it is paused.
            Phase::Running => match c.amphi.state(&c.id) {
                Ok(s) if s.status == amphi::container::Status::Paused => (Status::PAUSED, None),
                Ok(s) if s.status != amphi::container::Status::Stopped => (Status::RUNNING, None),
                Ok(_) => self.stopped(&c),
                Err(e) if e.is_not_found() => self.stopped(&c),
                Err(e) => return Err(e.into()),
            },
        };
        Ok(StateResponse {
            id: c.id.clone(),
            bundle: c.bundle.display().to_string(),
            pid: c.init.pid() as u32,
            status: status.into(),
            stdin: c.stdio.stdin.clone(),
            stdout: c.stdio.stdout.clone(),
            stderr: c.stdio.stderr.clone(),
            terminal: c.stdio.terminal,
            exit_status: exit.map_or(0, |e| e.status),
            exited_at: exit.map(|e| timestamp(e.at)).into(),
            ..Default::default()
        })
    }

    /// amphi saw the process gone; the reaper may not have collected its
    /// status yet, so give it a moment rather than report a status of 0.
    fn stopped(&self, c: &Container) -> (Status, Option<Exit>) {
        match c.init.wait_timeout(Duration::from_secs(1)) {
            Some(e) => (Status::STOPPED, Some(e)),
            None => (Status::RUNNING, None),
        }
    }

    pub fn do_kill(&self, req: KillRequest) -> Result<(), ShimError> {
        let c = self.container(&req.id)?;
        if let Some(e) = Self::exec_of(&c, &req.exec_id)? {
            let finished =
                || ShimError::NotFound(format!("process already finished: exec process \"{}\" has exited", e.id));
            let p = match e.phase() {
                Phase::Created => {
                    return Err(ShimError::FailedPrecondition(format!(
                        "exec process \"{}\" has not been started",
                        e.id
                    )))
                }
                Phase::Stopped(_) => return Err(finished()),
                Phase::Running => e.process().expect("a running exec has a process"),
            };
            // The shim reaps it, so the pid cannot be recycled until the
            // exit is recorded.
            let sig = nix::sys::signal::Signal::try_from(req.signal as i32).ok();
            // SAFETY: kill(2) with plain integers; the signal number comes
            // from containerd and the kernel checks it.
            let r = unsafe { libc::kill(p.pid(), req.signal as i32) };
            if r != 0 {
                let err = std::io::Error::last_os_error();
                if err.raw_os_error() == Some(libc::ESRCH) {
                    return Err(finished());
                }
                return Err(ShimError::Io {
                    what: format!("cannot send signal {} to exec process \"{}\" ({sig:?})", req.signal, e.id),
                    source: err,
                });
            }
            return Ok(());
        }
        let finished = || ShimError::NotFound(format!("process already finished: container \"{}\" has exited", c.id));
        if c.init.exit().is_some() {
            return Err(finished());
        }
        match c.amphi.kill(&c.id, req.signal, req.all) {
            Ok(()) => Ok(()),
            Err(_) if c.init.wait_timeout(Duration::from_millis(100)).is_some() => Err(finished()),
            Err(e) => Err(e.into()),
        }
    }

    pub fn do_delete(&self, req: DeleteRequest) -> Result<DeleteResponse, ShimError> {
        let c = self.container(&req.id)?;
        if let Some(e) = Self::exec_of(&c, &req.exec_id)? {
            if e.phase() == Phase::Running {
                return Err(ShimError::FailedPrecondition(format!(
                    "exec process \"{}\" is running: kill it first, then delete it",
                    e.id
                )));
            }
            e.abandon();
            lock(&c.execs).remove(&e.id);
            if let Some(io) = lock(&e.io).take() {
                io.finish(IO_DRAIN);
            }
            self.shared.book.forget(e.pid());
            let exit = e.process().and_then(|p| p.exit()).unwrap_or(Exit { status: 0, at: SystemTime::now() });
            return Ok(DeleteResponse {
                pid: e.pid() as u32,
                exit_status: exit.status,
                exited_at: Some(timestamp(exit.at)).into(),
                ..Default::default()
            });
        }
        let phase = c.init.phase();
        if phase == Phase::Running {
            return Err(ShimError::FailedPrecondition(format!(
                "container \"{}\" is running: kill it first (ctr task kill), then delete it",
                c.id
            )));
        }
        // A created container never ran: amphi deletes it only with
        // --force (as the runtime spec asks), which also ends its init.
        match c.amphi.delete(&c.id, phase == Phase::Created) {
            Ok(()) => {}
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e.into()),
        }
        let exit = c
            .init
            .wait_timeout(if phase == Phase::Created { REAP_WAIT } else { Duration::ZERO })
            .unwrap_or(Exit { status: 128 + libc::SIGKILL as u32, at: SystemTime::now() });
        if let Some(io) = lock(&c.io).take() {
            io.finish(IO_DRAIN);
        }
        if let Some(r) = &c.rootfs {
            rootfs::unmount(r)?;
        }
        self.shared.book.forget(c.init.pid());
        lock(&self.shared.containers).remove(&c.id);
        let pid = c.init.pid() as u32;
        send(
            &*self.shared.events,
            TaskDelete {
                container_id: c.id.clone(),
                pid,
                exit_status: exit.status,
                exited_at: Some(timestamp(exit.at)).into(),
                id: c.id.clone(),
                ..Default::default()
            },
        );
        Ok(DeleteResponse {
            pid,
            exit_status: exit.status,
            exited_at: Some(timestamp(exit.at)).into(),
            ..Default::default()
        })
    }

    pub fn do_wait(&self, req: WaitRequest) -> Result<WaitResponse, ShimError> {
        let c = self.container(&req.id)?;
        let exit = match Self::exec_of(&c, &req.exec_id)? {
            Some(e) => e.wait(),
            None => c.init.wait(),
        };
        Ok(WaitResponse { exit_status: exit.status, exited_at: Some(timestamp(exit.at)).into(), ..Default::default() })
    }

    pub fn do_pids(&self, req: PidsRequest) -> Result<PidsResponse, ShimError> {
        let c = self.container(&req.id)?;
        let mut pids = c.cgroups.as_ref().map(Cgroups::pids).unwrap_or_default();
        if pids.is_empty() && !matches!(c.init.phase(), Phase::Stopped(_)) {
            pids.push(c.init.pid() as u32);
        }
        let processes = pids.into_iter().map(|pid| ProcessInfo { pid, ..Default::default() }).collect();
        Ok(PidsResponse { processes, ..Default::default() })
    }

    pub fn do_close_io(&self, req: CloseIORequest) -> Result<(), ShimError> {
        let c = self.container(&req.id)?;
        let e = Self::exec_of(&c, &req.exec_id)?;
        if req.stdin {
            let mut io = match &e {
                Some(e) => lock(&e.io),
                None => lock(&c.io),
            };
            if let Some(io) = io.as_mut() {
                io.close_stdin();
            }
        }
        Ok(())
    }

    pub fn do_resize_pty(&self, req: ResizePtyRequest) -> Result<(), ShimError> {
        let c = self.container(&req.id)?;
        let e = Self::exec_of(&c, &req.exec_id)?;
        let io = match &e {
            Some(e) => lock(&e.io),
            None => lock(&c.io),
        };
        match io.as_ref() {
            Some(io) => Ok(io.resize(req.width, req.height)?),
            None => Err(crate::stdio::StdioError::NoTerminal.into()),
        }
    }

    pub fn do_pause(&self, req: PauseRequest) -> Result<(), ShimError> {
        let c = self.container(&req.id)?;
        c.amphi.pause(&c.id)?;
        send(&*self.shared.events, TaskPaused { container_id: c.id.clone(), ..Default::default() });
        Ok(())
    }

    pub fn do_resume(&self, req: ResumeRequest) -> Result<(), ShimError> {
        let c = self.container(&req.id)?;
        c.amphi.resume(&c.id)?;
        send(&*self.shared.events, TaskResumed { container_id: c.id.clone(), ..Default::default() });
        Ok(())
    }

    /// The resources arrive as runtime-spec LinuxResources JSON, which
    /// `amphi update --resources` reads as it is.
    pub fn do_update(&self, req: UpdateTaskRequest) -> Result<(), ShimError> {
        let c = self.container(&req.id)?;
        let json = req.resources.as_ref().map(|a| a.value.clone()).unwrap_or_default();
        if json.is_empty() {
            return Err(ShimError::InvalidArgument("the update request carries no resources".into()));
        }
        let io_err = |source| ShimError::Io {
            what: format!("cannot write the new resources into {}", c.bundle.display()),
            source,
        };
        let mut f =
            tempfile::Builder::new().prefix(".update-").suffix(".json").tempfile_in(&c.bundle).map_err(io_err)?;
        std::io::Write::write_all(&mut f, &json).map_err(io_err)?;
        c.amphi.update(&c.id, f.path())?;
        Ok(())
    }

    pub fn do_stats(&self, req: StatsRequest) -> Result<StatsResponse, ShimError> {
        let c = self.container(&req.id)?;
        // A container of a VM pod has no host cgroups of its own (its relay
        // runs in the shim's): amphi asks the guest.
        let metrics = match c.cgroups.as_ref() {
            Some(cg) => cg.metrics()?,
            None => crate::stats::from_amphi(&c.amphi.stats(&req.id)?)?,
        };
        Ok(StatsResponse { stats: Some(metrics).into(), ..Default::default() })
    }

    pub fn do_connect(&self, req: ConnectRequest) -> ConnectResponse {
        ConnectResponse {
            shim_pid: std::process::id(),
            task_pid: self.shared.get(&req.id).map_or(0, |c| c.init.pid() as u32),
            version: env!("CARGO_PKG_VERSION").to_string(),
            ..Default::default()
        }
    }

    pub fn do_shutdown(&self, req: ShutdownRequest) {
        // containerd asks after every Delete; a shim with a container left
        // (another of the pod's) keeps serving unless told to stop now.
        if !self.shared.is_empty() && !req.now {
            return;
        }
        self.exit.signal();
    }
}

fn unimplemented<T>(what: &str) -> TtrpcResult<T> {
    Err(ShimError::Unimplemented(what.to_string()).into())
}

impl Task for Service {
    fn create(&self, _: &TtrpcContext, req: CreateTaskRequest) -> TtrpcResult<CreateTaskResponse> {
        Ok(self.do_create(req)?)
    }
    fn start(&self, _: &TtrpcContext, req: StartRequest) -> TtrpcResult<StartResponse> {
        Ok(self.do_start(req)?)
    }
    fn state(&self, _: &TtrpcContext, req: StateRequest) -> TtrpcResult<StateResponse> {
        Ok(self.do_state(req)?)
    }
    fn kill(&self, _: &TtrpcContext, req: KillRequest) -> TtrpcResult<Empty> {
        self.do_kill(req)?;
        Ok(Empty::new())
    }
    fn delete(&self, _: &TtrpcContext, req: DeleteRequest) -> TtrpcResult<DeleteResponse> {
        Ok(self.do_delete(req)?)
    }
    fn wait(&self, _: &TtrpcContext, req: WaitRequest) -> TtrpcResult<WaitResponse> {
        Ok(self.do_wait(req)?)
    }
    fn pids(&self, _: &TtrpcContext, req: PidsRequest) -> TtrpcResult<PidsResponse> {
        Ok(self.do_pids(req)?)
    }
    fn close_io(&self, _: &TtrpcContext, req: CloseIORequest) -> TtrpcResult<Empty> {
        self.do_close_io(req)?;
        Ok(Empty::new())
    }
    fn resize_pty(&self, _: &TtrpcContext, req: ResizePtyRequest) -> TtrpcResult<Empty> {
        self.do_resize_pty(req)?;
        Ok(Empty::new())
    }
    fn stats(&self, _: &TtrpcContext, req: StatsRequest) -> TtrpcResult<StatsResponse> {
        Ok(self.do_stats(req)?)
    }
    fn connect(&self, _: &TtrpcContext, req: ConnectRequest) -> TtrpcResult<ConnectResponse> {
        Ok(self.do_connect(req))
    }
    fn shutdown(&self, _: &TtrpcContext, req: ShutdownRequest) -> TtrpcResult<Empty> {
        self.do_shutdown(req);
        Ok(Empty::new())
    }
    fn exec(&self, _: &TtrpcContext, req: ExecProcessRequest) -> TtrpcResult<Empty> {
        self.do_exec(req)?;
        Ok(Empty::new())
    }
    fn pause(&self, _: &TtrpcContext, req: PauseRequest) -> TtrpcResult<Empty> {
        self.do_pause(req)?;
        Ok(Empty::new())
    }
    fn resume(&self, _: &TtrpcContext, req: ResumeRequest) -> TtrpcResult<Empty> {
        self.do_resume(req)?;
        Ok(Empty::new())
    }
    fn checkpoint(&self, _: &TtrpcContext, _: CheckpointTaskRequest) -> TtrpcResult<Empty> {
        unimplemented("checkpoint is not supported: amphi has no checkpoint/restore")
    }
    fn update(&self, _: &TtrpcContext, req: UpdateTaskRequest) -> TtrpcResult<Empty> {
        self.do_update(req)?;
        Ok(Empty::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::Recorded;
    use crate::reaper::Finished;
    use containerd_shim::protos::ttrpc::Code;
    use std::process::Command;

    /// Plays amphi: writes the pid file on create, records every command
    /// line, and fails the subcommand it is told to.
    struct FakeAmphi {
        pid: i32,
        calls: Mutex<Vec<String>>,
        fail: Mutex<Option<(&'static str, i32, &'static str)>>,
    }

    impl Runner for FakeAmphi {
        fn run(&self, cmd: &mut Command) -> std::io::Result<Finished> {
            let args: Vec<String> = cmd.get_args().map(|a| a.to_string_lossy().into_owned()).collect();
            let sub = args
                .iter()
                .find(|a| {
                    ["create", "start", "state", "kill", "delete", "exec", "pause", "resume", "update"]
                        .contains(&a.as_str())
                })
                .cloned()
                .unwrap_or_default();
            let after_sub: Vec<&String> = args.iter().skip_while(|a| **a != sub).skip(1).collect();
            self.calls
                .lock()
                .unwrap()
                .push(format!("{sub} {}", after_sub.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(" ")));
            if let Some((s, status, msg)) = *self.fail.lock().unwrap() {
                if s == sub {
                    return Ok(Finished { status, stdout: Vec::new(), stderr: msg.as_bytes().to_vec() });
                }
            }
            if sub == "create" || sub == "exec" {
                let i = args.iter().position(|a| a == "--pid-file").unwrap();
                // Each further container of a pod gets its own pid.
                let earlier = self.calls.lock().unwrap().iter().filter(|c| c.starts_with("create ")).count() as i32 - 1;
                let pid = if sub == "exec" { self.pid + 1 } else { self.pid + 100 * earlier };
                std::fs::write(&args[i + 1], pid.to_string()).unwrap();
            }
            Ok(Finished::default())
        }
    }

    struct Fixture {
        dir: tempfile::TempDir,
        bundle: PathBuf,
        svc: Service,
        events: Arc<Recorded>,
        amphi: Arc<FakeAmphi>,
        exit: Arc<ExitSignal>,
    }

    /// `pid` is the init amphi "creates": tests pass pids above any
    /// pid_max, so no real process (and no real cgroup) is involved.
    fn fixture(pid: i32) -> Fixture {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("amphi");
        std::fs::write(&bin, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        let bundle = dir.path().join("bundle");
        std::fs::create_dir(&bundle).unwrap();
        let amphi = Arc::new(FakeAmphi { pid, calls: Mutex::new(Vec::new()), fail: Mutex::new(None) });
        let events = Arc::new(Recorded::default());
        let exit = Arc::new(ExitSignal::default());
        let cfg = Config {
            namespace: "testns".into(),
            shim_dir: Some(dir.path().to_path_buf()),
            path_var: None,
            runner: amphi.clone(),
        };
        let svc = Service::new(cfg, events.clone(), exit.clone());
        Fixture { dir, bundle, svc, events, amphi, exit }
    }

    fn create_req(f: &Fixture, id: &str) -> CreateTaskRequest {
        CreateTaskRequest { id: id.into(), bundle: f.bundle.display().to_string(), ..Default::default() }
    }

    fn id_req<T: Default>(set: impl FnOnce(&mut T)) -> T {
        let mut r = T::default();
        set(&mut r);
        r
    }

    fn signalled(exit: &Arc<ExitSignal>) -> bool {
        let e = exit.clone();
        let t = std::thread::spawn(move || e.wait());
        std::thread::sleep(Duration::from_millis(50));
        let done = t.is_finished();
        if !done {
            // Release the waiter so the test does not leak a thread.
            exit.signal();
        }
        let _ = t.join();
        done
    }

    #[test]
    fn lifecycle_reports_exit_status_and_events_in_order() {
        let f = fixture(999_000_042);
        let r = f.svc.do_create(create_req(&f, "c1")).unwrap();
        assert_eq!(r.pid, 999_000_042);
        let state = f.svc.do_state(id_req(|r: &mut StateRequest| r.id = "c1".into())).unwrap();
        assert_eq!(state.status.enum_value(), Ok(Status::CREATED));
        f.svc.do_start(id_req(|r: &mut StartRequest| r.id = "c1".into())).unwrap();
        let e = f.svc.do_start(id_req(|r: &mut StartRequest| r.id = "c1".into())).unwrap_err();
        assert_eq!(e.code(), Code::FAILED_PRECONDITION);
        let e = f.svc.do_delete(id_req(|r: &mut DeleteRequest| r.id = "c1".into())).unwrap_err();
        assert_eq!(e.code(), Code::FAILED_PRECONDITION, "{e}");

        // The reaper saw the init exit with status 3.
        f.svc.shared.on_exit(999_000_042, 3, UNIX_EPOCH + Duration::from_secs(100));
        let w = f.svc.do_wait(id_req(|r: &mut WaitRequest| r.id = "c1".into())).unwrap();
        assert_eq!((w.exit_status, w.exited_at.seconds), (3, 100));
        let state = f.svc.do_state(id_req(|r: &mut StateRequest| r.id = "c1".into())).unwrap();
        assert_eq!((state.status.enum_value(), state.exit_status), (Ok(Status::STOPPED), 3));
        let e = f
            .svc
            .do_kill(id_req(|r: &mut KillRequest| {
                r.id = "c1".into();
                r.signal = 9;
            }))
            .unwrap_err();
        assert_eq!(e.code(), Code::NOT_FOUND);
        assert!(e.to_string().contains("process already finished"), "{e}");

        let d = f.svc.do_delete(id_req(|r: &mut DeleteRequest| r.id = "c1".into())).unwrap();
        assert_eq!((d.pid, d.exit_status), (999_000_042, 3));
        assert_eq!(
            f.events.topics(),
            ["/tasks/create", "/tasks/start", "/tasks/exit", "/tasks/delete"].map(String::from)
        );
        let calls = f.amphi.calls.lock().unwrap().clone();
        assert_eq!(calls[0], format!("create --bundle {b} --pid-file {b}/init.pid c1", b = f.bundle.display()));
        assert_eq!(calls[1..], ["start c1".to_string(), "delete c1".to_string()]);

        // Gone now: every call says so.
        let e = f.svc.do_state(id_req(|r: &mut StateRequest| r.id = "c1".into())).unwrap_err();
        assert_eq!(e.to_string(), "container \"c1\" does not exist");
        assert_eq!(e.code(), Code::NOT_FOUND);
    }

    #[test]
    fn shutdown_waits_for_the_container_to_be_deleted() {
        let f = fixture(999_000_077);
        f.svc.do_create(create_req(&f, "c")).unwrap();
        f.svc.do_shutdown(ShutdownRequest::default());
        assert!(!signalled(&f.exit), "still serving a container");
        let f = fixture(999_000_078);
        f.svc.do_shutdown(ShutdownRequest::default());
        assert!(signalled(&f.exit));
    }

    #[test]
    fn a_created_container_is_force_deleted_and_its_exit_reported() {
        let f = fixture(999_000_900);
        f.svc.do_create(create_req(&f, "c2")).unwrap();
        let shared = f.svc.shared.clone();
        let reaper = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            shared.on_exit(999_000_900, 137, SystemTime::now());
        });
        let d = f.svc.do_delete(id_req(|r: &mut DeleteRequest| r.id = "c2".into())).unwrap();
        reaper.join().unwrap();
        assert_eq!(d.exit_status, 137);
        assert!(f.amphi.calls.lock().unwrap().contains(&"delete --force c2".to_string()));
        assert_eq!(f.events.topics().last().map(String::as_str), Some("/tasks/delete"));
    }

    #[test]
    fn amphis_failure_reaches_containerd_with_its_code() {
        let f = fixture(999_000_001);
        *f.amphi.fail.lock().unwrap() = Some(("create", 5, "config.json: field `process`: missing"));
        let e = f.svc.do_create(create_req(&f, "c3")).unwrap_err();
        assert_eq!(e.code(), Code::INVALID_ARGUMENT);
        assert!(e.to_string().contains("field `process`"), "{e}");
        assert!(f.events.topics().is_empty());
        // Nothing was recorded: a fixed bundle can be created again.
        *f.amphi.fail.lock().unwrap() = None;
        f.svc.do_create(create_req(&f, "c3")).unwrap();
        let e = f.svc.do_create(create_req(&f, "c3")).unwrap_err();
        assert_eq!(e.code(), Code::ALREADY_EXISTS);
        assert_eq!(e.to_string(), "container \"c3\" exists already");
    }

    #[test]
    fn one_shim_serves_every_container_of_a_pod() {
        let f = fixture(999_001_000);
        assert_eq!(f.svc.do_create(create_req(&f, "sandbox")).unwrap().pid, 999_001_000);
        assert_eq!(f.svc.do_create(create_req(&f, "app")).unwrap().pid, 999_001_100);
        for id in ["sandbox", "app"] {
            f.svc.do_start(id_req(|r: &mut StartRequest| r.id = id.into())).unwrap();
        }
        let pid_of = |id: &str| f.svc.do_connect(id_req(|r: &mut ConnectRequest| r.id = id.into())).task_pid;
        assert_eq!((pid_of("sandbox"), pid_of("app")), (999_001_000, 999_001_100));

        // The app's exit is the app's, and the sandbox keeps running.
        f.svc.shared.on_exit(999_001_100, 7, SystemTime::now());
        let w = f.svc.do_wait(id_req(|r: &mut WaitRequest| r.id = "app".into())).unwrap();
        assert_eq!(w.exit_status, 7);
        let exit = f.events.0.lock().unwrap().iter().find_map(|(_, m)| m.downcast_ref::<TaskExit>().cloned()).unwrap();
        assert_eq!((exit.container_id.as_str(), exit.id.as_str(), exit.exit_status), ("app", "app", 7));
        f.svc
            .do_kill(id_req(|r: &mut KillRequest| {
                r.id = "sandbox".into();
                r.signal = 15;
            }))
            .unwrap();

        // Deleting the app leaves the shim serving the sandbox.
        f.svc.do_delete(id_req(|r: &mut DeleteRequest| r.id = "app".into())).unwrap();
        f.svc.do_shutdown(ShutdownRequest::default());
        assert!(!signalled(&f.exit), "the sandbox is still there");
        f.svc.shared.on_exit(999_001_000, 0, SystemTime::now());
        f.svc.do_delete(id_req(|r: &mut DeleteRequest| r.id = "sandbox".into())).unwrap();
        f.svc.do_shutdown(ShutdownRequest::default());
        assert!(signalled(&f.exit));
    }

    #[test]
    fn bad_requests_are_refused_before_amphi_runs() {
        let f = fixture(999_000_001);
        let e = f.svc.do_create(create_req(&f, "../escape")).unwrap_err();
        assert_eq!(e.code(), Code::INVALID_ARGUMENT);
        let mut req = create_req(&f, "c5");
        req.checkpoint = "/some/checkpoint".into();
        assert_eq!(f.svc.do_create(req).unwrap_err().code(), Code::UNIMPLEMENTED);
        let mut req = create_req(&f, "c5");
        req.stdout = "binary:///usr/bin/log-driver".into();
        assert_eq!(f.svc.do_create(req).unwrap_err().code(), Code::UNIMPLEMENTED);
        assert!(f.amphi.calls.lock().unwrap().is_empty());
    }

    #[test]
    fn a_missing_amphi_binary_is_named() {
        let f = fixture(999_000_006);
        std::fs::remove_file(f.dir.path().join("amphi")).unwrap();
        let e = f.svc.do_create(create_req(&f, "c8")).unwrap_err();
        assert_eq!(e.code(), Code::FAILED_PRECONDITION);
        assert!(e.to_string().contains("cannot find the amphi binary in"), "{e}");
        assert!(e.to_string().contains("BinaryName"), "{e}");
    }

    fn exec_req(id: &str, exec_id: &str) -> ExecProcessRequest {
        let mut spec = containerd_shim::protos::protobuf::well_known_types::any::Any::new();
        spec.type_url = "types.containerd.io/opencontainers/runtime-spec/1/Process".into();
        spec.value = br#"{"args":["/bin/true"],"cwd":"/","user":{"uid":0,"gid":0}}"#.to_vec();
        ExecProcessRequest { id: id.into(), exec_id: exec_id.into(), spec: Some(spec).into(), ..Default::default() }
    }

    #[test]
    fn exec_processes_start_exit_and_are_deleted() {
        let f = fixture(999_000_005);
        f.svc.do_create(create_req(&f, "c6")).unwrap();
        f.svc.do_start(id_req(|r: &mut StartRequest| r.id = "c6".into())).unwrap();
        let e = f
            .svc
            .do_state(id_req(|r: &mut StateRequest| {
                r.id = "c6".into();
                r.exec_id = "e1".into();
            }))
            .unwrap_err();
        assert_eq!(e.code(), Code::NOT_FOUND);
        f.svc.do_exec(exec_req("c6", "e1")).unwrap();
        assert_eq!(f.svc.do_exec(exec_req("c6", "e1")).unwrap_err().code(), Code::ALREADY_EXISTS);
        let state = |f: &Fixture| {
            f.svc
                .do_state(id_req(|r: &mut StateRequest| {
                    r.id = "c6".into();
                    r.exec_id = "e1".into();
                }))
                .unwrap()
        };
        assert_eq!(state(&f).status.enum_value(), Ok(Status::CREATED));
        let started = f
            .svc
            .do_start(id_req(|r: &mut StartRequest| {
                r.id = "c6".into();
                r.exec_id = "e1".into();
            }))
            .unwrap();
        assert_eq!(started.pid, 999_000_006);
        assert_eq!(state(&f).status.enum_value(), Ok(Status::RUNNING));
        f.svc.shared.on_exit(999_000_006, 5, UNIX_EPOCH + Duration::from_secs(7));
        let w = f
            .svc
            .do_wait(id_req(|r: &mut WaitRequest| {
                r.id = "c6".into();
                r.exec_id = "e1".into();
            }))
            .unwrap();
        assert_eq!(w.exit_status, 5);
        let d = f
            .svc
            .do_delete(id_req(|r: &mut DeleteRequest| {
                r.id = "c6".into();
                r.exec_id = "e1".into();
            }))
            .unwrap();
        assert_eq!((d.pid, d.exit_status), (999_000_006, 5));
        assert_eq!(
            f.events.topics(),
            ["/tasks/create", "/tasks/start", "/tasks/exec-added", "/tasks/exec-started", "/tasks/exit"]
                .map(String::from)
        );
        let calls = f.amphi.calls.lock().unwrap().clone();
        assert!(calls[2].starts_with("exec --process "), "{}", calls[2]);
        assert!(calls[2].contains("--detach --pid-file") && calls[2].ends_with("e1.pid c6"), "{}", calls[2]);
        let ttrpc_err: containerd_shim::protos::ttrpc::Error =
            unimplemented::<()>("checkpoint is not supported").unwrap_err();
        let containerd_shim::protos::ttrpc::Error::RpcStatus(s) = ttrpc_err else { panic!("not a status") };
        assert_eq!(s.code(), Code::UNIMPLEMENTED);
    }

    #[test]
    fn pause_resume_and_update_drive_amphi() {
        let f = fixture(999_000_010);
        f.svc.do_create(create_req(&f, "c9")).unwrap();
        f.svc.do_pause(id_req(|r: &mut PauseRequest| r.id = "c9".into())).unwrap();
        f.svc.do_resume(id_req(|r: &mut ResumeRequest| r.id = "c9".into())).unwrap();
        let mut res = containerd_shim::protos::protobuf::well_known_types::any::Any::new();
        res.value = br#"{"memory":{"limit":1048576}}"#.to_vec();
        f.svc
            .do_update(UpdateTaskRequest { id: "c9".into(), resources: Some(res).into(), ..Default::default() })
            .unwrap();
        let calls = f.amphi.calls.lock().unwrap().clone();
        assert_eq!(calls[1..3], ["pause c9".to_string(), "resume c9".to_string()]);
        assert!(calls[3].starts_with("update --resources ") && calls[3].ends_with(" c9"), "{}", calls[3]);
        assert_eq!(f.events.topics()[1..], ["/tasks/paused", "/tasks/resumed"].map(String::from));
        *f.amphi.fail.lock().unwrap() = Some(("pause", 4, "cannot pause container \"c9\": it is created"));
        let e = f.svc.do_pause(id_req(|r: &mut PauseRequest| r.id = "c9".into())).unwrap_err();
        assert_eq!(e.code(), Code::FAILED_PRECONDITION);
    }

    #[test]
    fn resize_needs_a_terminal_and_connect_reports_pids() {
        // A pid that cannot exist: no cgroups to read, the init alone.
        let f = fixture(999_999_999);
        f.svc.do_create(create_req(&f, "c7")).unwrap();
        let e = f
            .svc
            .do_resize_pty(id_req(|r: &mut ResizePtyRequest| {
                r.id = "c7".into();
                r.width = 80;
                r.height = 24;
            }))
            .unwrap_err();
        assert_eq!(e.code(), Code::FAILED_PRECONDITION);
        let c = f.svc.do_connect(id_req(|r: &mut ConnectRequest| r.id = "c7".into()));
        assert_eq!((c.shim_pid, c.task_pid), (std::process::id(), 999_999_999));
        let p = f.svc.do_pids(id_req(|r: &mut PidsRequest| r.id = "c7".into())).unwrap();
        assert_eq!(p.processes.iter().map(|p| p.pid).collect::<Vec<_>>(), [999_999_999]);
    }
}
