//! What both isolations share: container ids, the lifecycle state machine,
//! the state store under `--root`, per-container locking, hooks that run in
//! the runtime's namespaces, and the foreground `run` loop.
//!
//! [`Runtime`] is the library entry point the commands call. It never looks
//! at how a container is isolated beyond picking the [`Sandbox`] that the
//! state file (or, at create, the annotation or `--isolation`) names.

pub mod exec;
pub mod fault;
pub mod foreground;
pub mod hooks;
pub mod id;
pub mod process;
pub mod ps;
pub mod sandbox;
pub mod signal;
pub mod state;
pub mod stats;
pub mod store;
pub mod update;

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::spec::{Bundle, Isolation, SpecError};
pub use exec::{ExecError, ExecOptions};
use hooks::{HookError, HookKind};
pub use id::{ContainerId, IdError};
use process::Liveness;
pub use sandbox::{CreateRequest, Created, Exec, ExecRequest, LaunchMode, Sandbox, SandboxError, SandboxFor};
use signal::Sig;
pub use state::{Creator, OciState, Op, State, Status};
pub use stats::{Event, Stats};
use store::{ContainerDir, Store, StoreError};
pub use update::{UpdateError, UpdateOptions};

#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    #[error(transparent)]
    Id(#[from] IdError),
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Signal(#[from] signal::SignalError),
    #[error(transparent)]
    Hook(#[from] HookError),
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    #[error(transparent)]
    Exec(#[from] ExecError),
    #[error(transparent)]
    Update(#[from] UpdateError),
    #[error(transparent)]
    Ps(#[from] ps::PsError),
    #[error("cannot {op} container \"{id}\": it is {status}{hint}")]
    WrongState { id: String, op: Op, status: Status, hint: &'static str },
    #[error(
        "container \"{0}\" has no process to start (config.json has none, which create accepts and start \
         cannot): it was stopped; delete it and create it from a config.json with a process"
    )]
    NoProcessAtStart(String),
    #[error("config.json has no process: `run` needs one to run; add a process to config.json")]
    NoProcessToRun,
    #[error("--interval must be longer than zero")]
    BadInterval,
    #[error(
        "--systemd-cgroup needs systemd, and systemd is not running on this host \
         (no /run/systemd/system): drop the flag and amphi manages cgroupfs itself"
    )]
    NoSystemd,
    #[error("cgroupsPath {0:?} is not in systemd's \"slice:prefix:name\" form, which --systemd-cgroup expects")]
    SystemdPath(String),
    #[error("cannot write pid file {path}")]
    PidFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("container \"{id}\" did not stop within {secs}s of SIGKILL")]
    KillTimeout { id: String, secs: u64 },
    #[error("cannot wait for the container's process")]
    Wait(#[source] nix::errno::Errno),
    #[error("cannot write the output")]
    Output {
        #[source]
        source: std::io::Error,
    },
}

impl ContainerError {
    /// The stable exit code for this error (docs/exit-codes.md).
    pub fn exit_code(&self) -> u8 {
        use crate::exit;
        match self {
            ContainerError::Store(StoreError::NotFound(_)) => exit::NOT_FOUND,
            ContainerError::Store(StoreError::Exists(_)) => exit::CONFLICT,
            ContainerError::WrongState { .. } => exit::CONFLICT,
            ContainerError::Id(_) | ContainerError::Spec(_) | ContainerError::Signal(_) => exit::BAD_INPUT,
            ContainerError::SystemdPath(_) | ContainerError::BadInterval => exit::BAD_INPUT,
            ContainerError::NoProcessAtStart(_) | ContainerError::NoProcessToRun => exit::BAD_INPUT,
            ContainerError::Exec(_) | ContainerError::Update(_) => exit::BAD_INPUT,
            ContainerError::NoSystemd | ContainerError::Sandbox(SandboxError::Unsupported(_)) => exit::UNSUPPORTED,
            ContainerError::Sandbox(SandboxError::BadConfig(_)) => exit::BAD_INPUT,
            _ => exit::GENERAL,
        }
    }
}

/// What `create` and `run` take besides the id.
#[derive(Debug, Default, Clone)]
pub struct CreateOptions {
    pub bundle: Option<PathBuf>,
    pub console_socket: Option<PathBuf>,
    pub pid_file: Option<PathBuf>,
    pub no_pivot: bool,
    pub no_new_keyring: bool,
    pub preserve_fds: u32,
}

/// The runtime as one invocation of the binary sees it.
#[derive(Clone)]
pub struct Runtime {
    store: Store,
    isolation: Option<Isolation>,
    systemd_cgroup: bool,
    sandboxes: SandboxFor,
    hook_delegate: Option<HookDelegate>,
    vm_template: Option<bool>,
}

/// Runs the runtime-namespace hooks (prestart, createRuntime) somewhere
/// else, given the container's pid: how the runtime inside a VM guest hands
/// them to the host, where their paths and namespaces are.
pub type HookDelegate = std::sync::Arc<dyn Fn(i32) -> Result<(), HookError> + Send + Sync>;

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("root", &self.store.root())
            .field("isolation", &self.isolation)
            .field("systemd_cgroup", &self.systemd_cgroup)
            .finish()
    }
}

/// How long `delete --force` waits for a SIGKILLed container.
const KILL_WAIT: Duration = Duration::from_secs(10);

impl Runtime {
    pub fn new(
        root: impl Into<PathBuf>,
        isolation: Option<Isolation>,
        systemd_cgroup: bool,
        sandboxes: SandboxFor,
    ) -> Runtime {
        Runtime {
            store: Store::new(root),
            isolation,
            systemd_cgroup,
            sandboxes,
            hook_delegate: None,
            vm_template: None,
        }
    }

    /// The prestart and createRuntime hooks are not run here but handed to
    /// `delegate` at the moment they are due.
    /// `--vm-template`: whether VM containers may start from a template.
    pub fn with_vm_template(mut self, enabled: Option<bool>) -> Runtime {
        self.vm_template = enabled;
        self
    }

    pub fn with_hook_delegate(mut self, delegate: HookDelegate) -> Runtime {
        self.hook_delegate = Some(delegate);
        self
    }

    pub fn root(&self) -> &Path {
        self.store.root()
    }

    /// `create`: the container ends up `created`, its process waiting for
    /// `start`.
    pub fn create(&self, id: &str, opts: &CreateOptions) -> Result<(), ContainerError> {
        self.create_container(id, opts, LaunchMode::Deferred, false).map(|_| ())
    }

    /// `start`: releases the process of a `created` container, then runs the
    /// poststart hooks.
    pub fn start(&self, id: &str) -> Result<(), ContainerError> {
        let id = ContainerId::new(id)?;
        let dir = self.store.open(&id, true)?;
        let state = self.require(&dir, Op::Start)?;
        let sandbox = (self.sandboxes)(state.isolation);
        if state.no_process {
            // Nothing to run: the container cannot be started, and a
            // created container that can never start is stopped now.
            let _ = sandbox.kill(&state, Sig::KILL, true);
            process::wait_gone(state.pid, state.pid_start_time, KILL_WAIT);
            return Err(ContainerError::NoProcessAtStart(id.to_string()));
        }
        sandbox.start(&dir, &state)?;
        fault::point("start:released");
        crate::logging::debug_with(|| format!("start {id}: process {} released", state.pid));
        self.poststart(&state);
        Ok(())
    }

    /// `run`: create and start; unless detached, wait for the process, delete
    /// the container (unless `keep`) and return the exit code to report.
    pub fn run(&self, id: &str, opts: &CreateOptions, detach: bool, keep: bool) -> Result<i32, ContainerError> {
        // Signals that the foreground loop forwards are blocked from here on,
        // so none can kill amphi between creating the container and
        // watching it. The container's init unblocks them before exec.
        let guard = if detach { None } else { Some(foreground::SignalGuard::block()) };
        let (dir, state, created) = self.create_container(id, opts, LaunchMode::Attached, !detach)?;
        debug_assert!(!state.no_process, "create_container refuses a run without process");
        let Created { console, launcher, .. } = created;
        if let Some(launcher) = launcher {
            if let Err(e) = launcher.launch() {
                let _ = self.teardown(dir, &state, true);
                return Err(e.into());
            }
        }
        // Other commands (kill, state, delete) must reach the container
        // while it runs: release its lock until the teardown.
        drop(dir);
        self.poststart(&state);
        if detach {
            return Ok(0);
        }
        let guard = guard.expect("blocked for foreground runs");
        let code = foreground::supervise(&guard, state.pid, console).map_err(ContainerError::Wait)?;
        crate::logging::timing("run:exited");
        drop(guard);
        crate::logging::debug_with(|| format!("run {id}: process {} ended, exit code {code}", state.pid));
        if !keep {
            // Someone may have deleted it meanwhile (delete --force).
            match self.store.open(&ContainerId::new(id)?, true) {
                Ok(dir) => self.teardown(dir, &state, false)?,
                Err(StoreError::NotFound(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(code)
    }

    /// `state`: the OCI state document.
    pub fn state(&self, id: &str) -> Result<OciState, ContainerError> {
        let id = ContainerId::new(id)?;
        let dir = self.store.open(&id, false)?;
        Ok(match dir.read_state()? {
            Some(state) => {
                let status = status_of(&dir, &state);
                state.to_oci(status)
            }
            None => creating_state(&dir),
        })
    }

    /// `kill`: signals the init (or with `all`, every process).
    pub fn kill(&self, id: &str, signal: &str, all: bool) -> Result<(), ContainerError> {
        let id = ContainerId::new(id)?;
        let sig = signal::parse(signal)?;
        let dir = self.store.open(&id, true)?;
        let state = self.require(&dir, Op::Kill)?;
        crate::logging::debug_with(|| {
            format!("kill {id}: {sig} to pid {}{}", state.pid, if all { " and all others" } else { "" })
        });
        (self.sandboxes)(state.isolation).kill(&state, sig, all)?;
        Ok(())
    }

    /// `exec`: runs another process in the container. Unless detached,
    /// waits for it (forwarding signals and relaying its terminal) and
    /// returns its exit code.
    pub fn exec(&self, id: &str, opts: &ExecOptions) -> Result<i32, ContainerError> {
        let id = ContainerId::new(id)?;
        // Not locked: an exec into a paused container (--ignore-paused)
        // waits until someone resumes it, which needs the lock; and delete
        // or kill must reach the container meanwhile, as with runc.
        let dir = self.store.open(&id, false)?;
        let (state, status) = self.require_status(&dir, Op::Exec)?;
        if status == Status::Paused && !opts.ignore_paused {
            return Err(ContainerError::WrongState {
                id: id.to_string(),
                op: Op::Exec,
                status,
                hint: ": resume it first, or pass --ignore-paused",
            });
        }
        let process = exec::build_process(opts, || Ok(Bundle::load(&state.bundle)?.spec.process().clone()))?;
        exec::check_terminal(&process, opts)?;
        let terminal = process.terminal().unwrap_or(false);
        // As in `run`: the signals the foreground loop forwards stay blocked
        // from before the process exists until it is reaped.
        let guard = if opts.detach { None } else { Some(foreground::SignalGuard::block()) };
        let req = ExecRequest {
            process: &process,
            console_socket: opts.console_socket.clone(),
            keep_console: terminal && opts.console_socket.is_none() && !opts.detach,
            preserve_fds: opts.preserve_fds,
            detach: opts.detach,
        };
        let started = (self.sandboxes)(state.isolation).exec(&dir, &state, &req)?;
        crate::logging::debug_with(|| format!("exec {id}: process {} started", started.pid));
        if let Some(p) = &opts.pid_file {
            if let Err(e) = write_pid_file(p, started.pid) {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(started.pid), nix::sys::signal::SIGKILL);
                if !opts.detach {
                    let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(started.pid), None);
                }
                return Err(e);
            }
        }
        drop(dir);
        let Some(guard) = guard else { return Ok(0) };
        let code = foreground::supervise(&guard, started.pid, started.console).map_err(ContainerError::Wait)?;
        crate::logging::debug_with(|| format!("exec {id}: process {} ended, exit code {code}", started.pid));
        Ok(code)
    }

    /// `pause`: freezes every process of a running container.
    pub fn pause(&self, id: &str) -> Result<(), ContainerError> {
        let id = ContainerId::new(id)?;
        let dir = self.store.open(&id, true)?;
        let mut state = self.require(&dir, Op::Pause)?;
        let sandbox = (self.sandboxes)(state.isolation);
        sandbox.pause(&state)?;
        state.paused = true;
        if let Err(e) = dir.write_state(&state) {
            let _ = sandbox.resume(&state);
            return Err(e.into());
        }
        Ok(())
    }

    /// `resume`: thaws a paused container.
    pub fn resume(&self, id: &str) -> Result<(), ContainerError> {
        let id = ContainerId::new(id)?;
        let dir = self.store.open(&id, true)?;
        let mut state = self.require(&dir, Op::Resume)?;
        (self.sandboxes)(state.isolation).resume(&state)?;
        state.paused = false;
        dir.write_state(&state)?;
        Ok(())
    }

    /// `update`: applies the given resource limits and keeps them in the
    /// state. Zeros mean "unchanged" (runc's convention); nothing to change
    /// is not an error.
    pub fn update(&self, id: &str, opts: &UpdateOptions) -> Result<(), ContainerError> {
        let id = ContainerId::new(id)?;
        let requested = opts.resources(&mut std::io::stdin())?;
        let delta = update::changes(&requested);
        let dir = self.store.open(&id, true)?;
        let mut state = self.require(&dir, Op::Update)?;
        if update::is_empty(&delta) {
            crate::logging::debug_with(|| format!("update {id}: nothing to change"));
            return Ok(());
        }
        (self.sandboxes)(state.isolation).update(&state, &delta)?;
        state.resources = Some(update::merge(&state.resources.clone().unwrap_or_default(), &delta));
        dir.write_state(&state)?;
        Ok(())
    }

    /// `ps`: the container's pids as JSON (`json`), or a ps(1) table run
    /// with `args`.
    pub fn ps(&self, id: &str, json: bool, args: &[String]) -> Result<String, ContainerError> {
        let id = ContainerId::new(id)?;
        let dir = self.store.open(&id, false)?;
        let state = self.require(&dir, Op::Ps)?;
        let sandbox = (self.sandboxes)(state.isolation);
        if json {
            let pids = sandbox.pids(&state)?;
            return Ok(serde_json::to_string(&pids).unwrap_or_else(|_| "[]".into()));
        }
        Ok(sandbox.ps(&state, args)?)
    }

    /// `events`: with `stats_only`, one stats record; otherwise a stats
    /// record every `interval`, and an "oom" record whenever the OOM killer
    /// acted, until the container stops. Each record goes to `out`.
    pub fn events(
        &self,
        id: &str,
        stats_only: bool,
        interval: Duration,
        out: &mut dyn FnMut(&Event) -> std::io::Result<()>,
    ) -> Result<(), ContainerError> {
        if interval.is_zero() {
            return Err(ContainerError::BadInterval);
        }
        let id = ContainerId::new(id)?;
        let dir = self.store.open(&id, false)?;
        let state = self.require(&dir, Op::Events)?;
        let sandbox = (self.sandboxes)(state.isolation);
        let emit = |out: &mut dyn FnMut(&Event) -> std::io::Result<()>, e: &Event| {
            out(e).map_err(|source| ContainerError::Output { source })
        };
        if stats_only {
            return emit(out, &Event::stats(id.as_str(), sandbox.stats(&state)?));
        }
        let mut ooms = None;
        loop {
            std::thread::sleep(interval);
            let running = process::liveness(state.pid, state.pid_start_time) == Liveness::Alive;
            match sandbox.stats(&state) {
                Ok(stats) => {
                    if let (Some(before), Some(now)) = (ooms, stats.oom_kills) {
                        for _ in before..now {
                            emit(out, &Event::oom(id.as_str()))?;
                        }
                    }
                    ooms = stats.oom_kills.or(ooms);
                    if running {
                        emit(out, &Event::stats(id.as_str(), stats))?;
                    }
                }
                Err(e) if running => crate::logging::error(&crate::logging::chain(&e)),
                Err(_) => {}
            }
            if !running {
                return Ok(());
            }
        }
    }

    /// `delete`: removes a stopped container (with `force`, kills it first).
    pub fn delete(&self, id: &str, force: bool) -> Result<(), ContainerError> {
        let id = ContainerId::new(id)?;
        let dir = match self.store.open(&id, true) {
            // As runc: clients clean up with `delete --force` whether or
            // not the container still exists.
            Err(StoreError::NotFound(_)) if force => return Ok(()),
            r => r?,
        };
        let state = match dir.read_state() {
            Ok(Some(state)) => state,
            // A directory without a state file: made by an amphi older than
            // the early record, or a `create` killed before writing it.
            Ok(None) if force => return self.salvage(dir),
            Ok(None) => {
                return Err(ContainerError::WrongState {
                    id: id.to_string(),
                    op: Op::Delete,
                    status: Status::Creating,
                    hint: ": use --force to remove it",
                })
            }
            Err(StoreError::Corrupt { .. }) if force => return self.salvage(dir),
            Err(e) => return Err(e.into()),
        };
        let status = status_of(&dir, &state);
        if status != Status::Stopped {
            if !force {
                let hint = if state.pid == 0 { ": use --force to remove it" } else { ": stop it first or use --force" };
                return Err(ContainerError::WrongState { id: id.to_string(), op: Op::Delete, status, hint });
            }
            // pid 0: never created (its `create` died or is still running);
            // what is in its cgroups is killed by the teardown.
            if state.pid != 0 {
                let sandbox = (self.sandboxes)(state.isolation);
                sandbox.kill(&state, Sig::KILL, true)?;
                if !process::wait_gone(state.pid, state.pid_start_time, KILL_WAIT) {
                    return Err(ContainerError::KillTimeout { id: id.to_string(), secs: KILL_WAIT.as_secs() });
                }
                fault::point("delete:killed");
            }
        }
        self.teardown(dir, &state, false)
    }

    /// `delete --force` of a container whose state file is missing or
    /// unreadable: whatever either isolation makes for this id at its
    /// default places (cgroups named after the id, files in the
    /// directory) is killed and removed, then the directory.
    fn salvage(&self, dir: ContainerDir) -> Result<(), ContainerError> {
        crate::logging::debug_with(|| format!("delete {}: no usable state, removing what the id names", dir.id));
        for isolation in [Isolation::Container, Isolation::Vm] {
            let sandbox = (self.sandboxes)(isolation);
            let plan = match sandbox.plan(&dir.id, None, &dir.path) {
                Ok(p) => p,
                Err(e) => {
                    crate::logging::debug(&format!("delete {}: {isolation}: {}", dir.id, crate::logging::chain(&e)));
                    continue;
                }
            };
            let state = State { sandbox: plan, ..State::bare(&dir.id, isolation) };
            sandbox.destroy(&state)?;
        }
        dir.remove()?;
        Ok(())
    }

    /// `list`: every container with its status, sorted by id.
    pub fn list(&self) -> Result<Vec<OciState>, ContainerError> {
        let mut out = Vec::new();
        for name in self.store.list()? {
            let Ok(id) = ContainerId::new(&name) else { continue };
            let Ok(dir) = self.store.open(&id, false) else { continue };
            match dir.read_state() {
                Ok(Some(state)) => {
                    let status = status_of(&dir, &state);
                    out.push(state.to_oci(status));
                }
                Ok(None) => out.push(creating_state(&dir)),
                // Listed all the same (as stopped: nothing amphi can vouch
                // for runs), with the reason on stderr.
                Err(e) => {
                    crate::logging::warn(&crate::logging::chain(&e));
                    let mut s = creating_state(&dir);
                    s.status = Status::Stopped;
                    out.push(s);
                }
            }
        }
        Ok(out)
    }

    fn require(&self, dir: &ContainerDir, op: Op) -> Result<State, ContainerError> {
        self.require_status(dir, op).map(|(s, _)| s)
    }

    fn require_status(&self, dir: &ContainerDir, op: Op) -> Result<(State, Status), ContainerError> {
        let wrong = |status| ContainerError::WrongState {
            id: dir.id.clone(),
            op,
            status,
            hint: match (op, status) {
                (Op::Start, Status::Running) => ": it was started already",
                (Op::Start | Op::Kill | Op::Exec | Op::Events | Op::Update, Status::Stopped) => {
                    ": its process has exited"
                }
                (Op::Pause, Status::Paused) => ": it is paused already",
                (Op::Pause | Op::Resume, Status::Created) => ": start it first",
                _ => "",
            },
        };
        let Some(state) = dir.read_state()? else { return Err(wrong(Status::Creating)) };
        let status = status_of(dir, &state);
        if state::allowed(op, status) {
            Ok((state, status))
        } else {
            Err(wrong(status))
        }
    }

    fn create_container(
        &self,
        id: &str,
        opts: &CreateOptions,
        mode: LaunchMode,
        foreground: bool,
    ) -> Result<(ContainerDir, State, Created), ContainerError> {
        let id = ContainerId::new(id)?;
        let bundle_dir = match &opts.bundle {
            Some(b) => b.clone(),
            None => std::env::current_dir().map_err(|e| SpecError::Read { path: PathBuf::from("."), source: e })?,
        };
        let bundle = Bundle::load(&bundle_dir)?;
        if mode == LaunchMode::Attached && bundle.spec.process().is_none() {
            return Err(ContainerError::NoProcessToRun);
        }
        let isolation = match self.isolation {
            Some(i) => i,
            None => bundle.requested_isolation()?.unwrap_or(Isolation::Container),
        };
        let cgroups_path = self.cgroups_path(&bundle)?;
        let sandbox = (self.sandboxes)(isolation);
        let dir = self.store.create(&id)?;
        crate::logging::debug_with(|| {
            format!(
                "create {id}: {isolation} isolation, bundle {}, rootfs {}",
                bundle.dir.display(),
                bundle.rootfs.display()
            )
        });

        // The state says what runs: a config's isolation annotation that
        // --isolation overrode would name the other one.
        let mut annotations = bundle.spec.annotations().clone().unwrap_or_default();
        if let Some(v) = annotations.get_mut(crate::spec::ISOLATION_ANNOTATION) {
            *v = isolation.to_string();
        }
        let mut state = State {
            oci_version: bundle.spec.version().clone(),
            id: id.to_string(),
            pid: 0,
            pid_start_time: 0,
            bundle: bundle.dir.clone(),
            rootfs: bundle.rootfs.clone(),
            created: state::now_rfc3339(),
            owner: nix::unistd::geteuid().as_raw(),
            annotations,
            isolation,
            hooks: bundle.spec.hooks().clone(),
            paused: false,
            no_process: bundle.spec.process().is_none(),
            resources: bundle.spec.linux().as_ref().and_then(|l| l.resources().clone()),
            sandbox: serde_json::Value::Null,
            creator: Some(Creator::this_process()),
        };
        // Recorded before anything exists: should this process be killed
        // from here on, the state names what to clean up (pid 0: nothing
        // was handed over) and reads as stopped once this process is gone.
        let planned = sandbox
            .plan(id.as_str(), cgroups_path.as_deref(), &dir.path)
            .map_err(ContainerError::from)
            .and_then(|plan| {
                state.sandbox = plan;
                dir.write_state(&state).map_err(ContainerError::from)
            });
        if let Err(e) = planned {
            let _ = dir.remove();
            return Err(e);
        }
        fault::point("create:planned");
        let terminal = bundle.spec.process().as_ref().and_then(|p| p.terminal()).unwrap_or(false);
        let req = CreateRequest {
            id: id.as_str(),
            bundle: &bundle,
            dir: &dir,
            console_socket: opts.console_socket.clone(),
            preserve_fds: opts.preserve_fds,
            no_pivot: opts.no_pivot,
            no_new_keyring: opts.no_new_keyring,
            cgroups_path,
            mode,
            keep_console: foreground && terminal && opts.console_socket.is_none(),
            vm_template: self.vm_template,
        };
        let hooks = bundle.spec.hooks().clone();
        let mut created = {
            let state_for_hooks = &state;
            let delegate = self.hook_delegate.clone();
            let mut run_hooks = |pid: i32| -> Result<(), HookError> {
                let Some(h) = &hooks else { return Ok(()) };
                if h.prestart().is_none() && h.create_runtime().is_none() {
                    return Ok(());
                }
                if let Some(d) = &delegate {
                    return d(pid);
                }
                let json = |status| {
                    let mut s = state_for_hooks.to_oci(status);
                    s.pid = pid;
                    serde_json::to_vec(&s).unwrap_or_default()
                };
                // prestart is the deprecated twin of createRuntime and runs
                // first, as runc does. It used to run at `start`, and tools
                // written for it expect the status it had then.
                hooks::run_all(HookKind::Prestart, h.prestart().as_deref().unwrap_or(&[]), &json(Status::Created))?;
                hooks::run_all(
                    HookKind::CreateRuntime,
                    h.create_runtime().as_deref().unwrap_or(&[]),
                    &json(Status::Creating),
                )
            };
            match sandbox.create(&req, &mut run_hooks) {
                Ok(c) => c,
                Err(e) => {
                    let _ = dir.remove();
                    return Err(e.into());
                }
            }
        };
        fault::point("create:sandbox-made");
        state.pid = created.pid;
        state.creator = None;
        state.pid_start_time = created.pid_start_time;
        crate::logging::debug_with(|| format!("create {id}: created, pid {}", state.pid));
        state.sandbox = created.sandbox_state.clone();

        let recorded = dir
            .write_state(&state)
            .map_err(ContainerError::from)
            .and_then(|()| match &opts.pid_file {
                Some(p) => write_pid_file(p, state.pid),
                None => Ok(()),
            })
            .and_then(|()| {
                fault::point("create:recorded");
                match created.commit.take() {
                    Some(c) => c.commit().map_err(ContainerError::from),
                    None => Ok(()),
                }
            });
        fault::point("create:committed");
        if let Err(e) = recorded {
            let _ = sandbox.kill(&state, Sig::KILL, true);
            process::wait_gone(state.pid, state.pid_start_time, KILL_WAIT);
            let _ = sandbox.destroy(&state);
            let _ = dir.remove();
            return Err(e);
        }
        Ok((dir, state, created))
    }

    /// Converts the spec's cgroupsPath for `--systemd-cgroup`.
    fn cgroups_path(&self, bundle: &Bundle) -> Result<Option<PathBuf>, ContainerError> {
        let path = bundle.spec.linux().as_ref().and_then(|l| l.cgroups_path().clone());
        if !self.systemd_cgroup {
            return Ok(path);
        }
        if !Path::new("/run/systemd/system").is_dir() {
            return Err(ContainerError::NoSystemd);
        }
        match path {
            None => Ok(None),
            Some(p) => systemd_to_cgroupfs(&p.to_string_lossy()).map(Some),
        }
    }

    fn poststart(&self, state: &State) {
        let Some(list) = state.hooks.as_ref().and_then(|h| h.poststart().clone()) else { return };
        let json = serde_json::to_vec(&state.to_oci(Status::Running)).unwrap_or_default();
        for e in hooks::run_all_collect(HookKind::Poststart, &list, &json) {
            crate::logging::warn(&crate::logging::chain(&e));
        }
    }

    /// Releases everything a stopped (or killed) container holds, runs the
    /// poststop hooks and removes its directory.
    fn teardown(&self, dir: ContainerDir, state: &State, kill_first: bool) -> Result<(), ContainerError> {
        let sandbox = (self.sandboxes)(state.isolation);
        if kill_first {
            let _ = sandbox.kill(state, Sig::KILL, true);
            process::wait_gone(state.pid, state.pid_start_time, KILL_WAIT);
        }
        crate::logging::debug_with(|| format!("delete {}: releasing its resources", state.id));
        let destroyed = sandbox.destroy(state);
        fault::point("delete:destroyed");
        // pid 0: the container was never created, so it never started.
        if let Some(list) = state.hooks.as_ref().filter(|_| state.pid != 0).and_then(|h| h.poststop().clone()) {
            let json = serde_json::to_vec(&state.to_oci(Status::Stopped)).unwrap_or_default();
            for e in hooks::run_all_collect(HookKind::Poststop, &list, &json) {
                crate::logging::warn(&crate::logging::chain(&e));
            }
        }
        destroyed?;
        dir.remove()?;
        Ok(())
    }
}

/// Derives the status from the recorded process and the exec fifo.
pub fn status_of(dir: &ContainerDir, state: &State) -> Status {
    if state.pid == 0 {
        // Recorded by a `create` that has not finished: creating while it
        // runs, stopped once it died without finishing.
        return match state.creator {
            Some(c) if process::liveness(c.pid, c.start_time) == Liveness::Alive => Status::Creating,
            _ => Status::Stopped,
        };
    }
    match process::liveness(state.pid, state.pid_start_time) {
        Liveness::Gone => Status::Stopped,
        Liveness::Alive if dir.has_fifo() => Status::Created,
        Liveness::Alive if state.paused => Status::Paused,
        Liveness::Alive => Status::Running,
    }
}

fn creating_state(dir: &ContainerDir) -> OciState {
    OciState {
        oci_version: crate::spec::OCI_VERSION_MAX.to_string(),
        id: dir.id.clone(),
        pid: 0,
        status: Status::Creating,
        bundle: PathBuf::new(),
        rootfs: PathBuf::new(),
        created: String::new(),
        owner: String::new(),
        annotations: Default::default(),
    }
}

fn write_pid_file(path: &Path, pid: i32) -> Result<(), ContainerError> {
    let path =
        crate::spec::absolute(path).map_err(|source| ContainerError::PidFile { path: path.to_path_buf(), source })?;
    store::write_atomic(&path, pid.to_string().as_bytes(), 0o644)
        .map_err(|source| ContainerError::PidFile { path, source })
}

/// systemd's "slice:prefix:name" to the cgroupfs path systemd would use:
/// `/<slice path>/<prefix>-<name>.scope`, where a slice "a-b.slice" lives
/// under "a.slice/a-b.slice".
pub fn systemd_to_cgroupfs(spec: &str) -> Result<PathBuf, ContainerError> {
    let parts: Vec<&str> = spec.split(':').collect();
    if parts.len() != 3 || parts[2].is_empty() {
        return Err(ContainerError::SystemdPath(spec.to_string()));
    }
    let slice = if parts[0].is_empty() { "system.slice" } else { parts[0] };
    if !slice.ends_with(".slice") || slice.contains('/') {
        return Err(ContainerError::SystemdPath(spec.to_string()));
    }
    let mut path = PathBuf::from("/");
    if slice != "-.slice" {
        let stem = &slice[..slice.len() - ".slice".len()];
        let mut prefix = String::new();
        for (i, part) in stem.split('-').enumerate() {
            if i > 0 {
                prefix.push('-');
            }
            prefix.push_str(part);
            path.push(format!("{prefix}.slice"));
        }
    }
    let unit =
        if parts[1].is_empty() { format!("{}.scope", parts[2]) } else { format!("{}-{}.scope", parts[1], parts[2]) };
    path.push(unit);
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn systemd_paths_convert_like_systemd_lays_them_out() {
        assert_eq!(
            systemd_to_cgroupfs("system.slice:libpod:abc").unwrap(),
            PathBuf::from("/system.slice/libpod-abc.scope")
        );
        assert_eq!(
            systemd_to_cgroupfs("machine-a-b.slice:x:y").unwrap(),
            PathBuf::from("/machine.slice/machine-a.slice/machine-a-b.slice/x-y.scope")
        );
        assert_eq!(systemd_to_cgroupfs(":p:n").unwrap(), PathBuf::from("/system.slice/p-n.scope"));
        assert!(systemd_to_cgroupfs("/plain/path").is_err());
        assert!(systemd_to_cgroupfs("a.slice:p:").is_err());
    }

    #[test]
    fn wrong_state_message_names_the_fix() {
        let e = ContainerError::WrongState {
            id: "c".into(),
            op: Op::Delete,
            status: Status::Running,
            hint: ": stop it first or use --force",
        };
        assert_eq!(e.to_string(), "cannot delete container \"c\": it is running: stop it first or use --force");
        assert_eq!(e.exit_code(), crate::exit::CONFLICT);
    }

    fn no_sandbox(_: Isolation) -> Box<dyn Sandbox> {
        unreachable!("these tests never reach an isolation")
    }

    #[test]
    fn unknown_container_is_not_found() {
        let root = tempfile::tempdir().unwrap();
        let rt = Runtime::new(root.path(), None, false, no_sandbox);
        let e = rt.state("nope").unwrap_err();
        assert!(e.to_string().contains("does not exist"), "{e}");
        assert_eq!(e.exit_code(), crate::exit::NOT_FOUND);
        assert!(rt.list().unwrap().is_empty());
    }

    fn planned(id: &str, creator: Option<Creator>) -> State {
        State { creator, ..State::bare(id, Isolation::Container) }
    }

    #[test]
    fn a_state_recorded_before_create_finished_reads_truthfully() {
        let root = tempfile::tempdir().unwrap();
        let store = Store::new(root.path());
        let dir = store.create(&ContainerId::new("c").unwrap()).unwrap();
        // Its creator still runs (this process): creating.
        assert_eq!(status_of(&dir, &planned("c", Some(Creator::this_process()))), Status::Creating);
        // Its creator is gone (a start time that cannot match): stopped.
        let dead = Creator { pid: std::process::id() as i32, start_time: u64::MAX };
        assert_eq!(status_of(&dir, &planned("c", Some(dead))), Status::Stopped);
        assert_eq!(status_of(&dir, &planned("c", None)), Status::Stopped);
    }

    #[test]
    fn a_corrupt_state_is_listed_as_stopped_and_named_by_state() {
        let root = tempfile::tempdir().unwrap();
        let rt = Runtime::new(root.path(), None, false, no_sandbox);
        let dir = Store::new(root.path()).create(&ContainerId::new("torn").unwrap()).unwrap();
        std::fs::write(dir.state_path(), b"{\"ociVersion\": \"1.2").unwrap();
        drop(dir);
        let listed = rt.list().unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!((listed[0].id.as_str(), listed[0].status), ("torn", Status::Stopped));
        let e = rt.state("torn").unwrap_err().to_string();
        assert!(e.contains("torn/state.json") && e.contains("--force"), "{e}");
    }

    #[test]
    fn bad_input_leaves_no_state_directory() {
        let root = tempfile::tempdir().unwrap();
        let rt = Runtime::new(root.path().join("r"), None, false, no_sandbox);
        let opts = CreateOptions { bundle: Some("/nonexistent".into()), ..Default::default() };
        let e = rt.create("c1", &opts).unwrap_err();
        assert_eq!(e.exit_code(), crate::exit::BAD_INPUT, "{e}");
        assert!(!root.path().join("r/c1").exists());
        let e = rt.create("../x", &opts).unwrap_err();
        assert!(matches!(e, ContainerError::Id(_)), "{e}");
    }
}

/// Left-aligned columns separated by at least two spaces (runc's `list`).
pub fn table<const N: usize>(header: [&str; N], rows: &[[String; N]]) -> String {
    let mut width = header.map(str::len);
    for r in rows {
        for (w, c) in width.iter_mut().zip(r.iter()) {
            *w = (*w).max(c.len());
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let mut l = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == N {
                l.push_str(c);
            } else {
                l.push_str(&format!("{c:<w$}  ", w = width[i]));
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(header.to_vec());
    for r in rows {
        line(r.iter().map(String::as_str).collect());
    }
    out
}

#[cfg(test)]
mod table_tests {
    #[test]
    fn columns_align() {
        let t = super::table(["ID", "PID"], &[["long-name".to_string(), "1".to_string()]]);
        assert_eq!(t, "ID         PID\nlong-name  1\n");
    }
}
