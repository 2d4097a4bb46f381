//! The VM isolation as a [`Sandbox`]: a bundle runs inside a microVM of
//! its own, set up by amphi's container code inside the guest (the agent
//! runs it), behind the same state machine and CLI as a container.
//!
//! - `create` sizes the VM from the bundle ([`plan`]), picks its disks
//!   ([`disks`]: image and block-device mounts, `linux.devices` block
//!   devices), resolves the guest image, makes the container's cgroup on
//!   the host, forks the VMM
//!   process ([`vmm_process`]) and, once the agent listens, asks it to
//!   create the container; the runtime hooks run here on the host when
//!   the guest says they are due. Any failure kills the VMM and removes
//!   what was made.
//! - `start`, `kill` go to the agent; SIGKILL ends the VMM itself when the
//!   agent does not answer or the VM does not go.
//! - `update` goes to the guest's cgroup and the VMM's host cgroup, whose
//!   memory limit follows the balloon ([`live`]).
//! - `destroy` makes sure the VMM is gone and removes its cgroup. Its
//!   mounts lived in its own mount namespace and went with it.
//!
//! A container of a VM pod runs in its sandbox's VM instead ([`pod`]):
//! `create` mounts its files into the running VMM's share, asks the agent
//! to create it with the sandbox's namespaces, and forks a relay process
//! ([`exec_relay`]) that stands for it on the host; `destroy` removes it
//! from the guest and its files from the share, and the VM runs on.

pub mod disks;
pub mod exec_relay;
pub mod live;
pub mod network;
pub mod plan;
pub mod pod;
pub mod stdio;
pub mod vmm_process;

use std::io::{BufRead, BufReader};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use oci_spec::runtime::LinuxResources;
use serde::{Deserialize, Serialize};

use crate::agent::container::{
    CreateContainerRequest, JoinRequest, PsRequest, SignalRequest, StdioRequest, UpdateRequest, GUEST_SHARE_DIR,
};
use crate::agent::{AgentError, ErrorCode, NetworkRequest};
use crate::container::process;
use crate::container::sandbox::{
    Commit, CreateRequest, Created, Exec, ExecRequest, Launch, LaunchMode, RuntimeHooks, Sandbox, SandboxError,
};
use crate::container::signal::Sig;
use crate::container::state::State;
use crate::container::stats::Stats;
use crate::container::store::ContainerDir;
use crate::linux::cgroups::{CgroupConfig, CgroupState, Manager};
use crate::vm::agent_client::{AgentClient, AgentClientError};
use crate::vm::devices::virtio::balloon::BalloonConfig;
use crate::vm::guest::{self, GuestError, GuestOptions};
use crate::vm::host::{self, HostError, SystemHost};
use crate::vm::jail;
use crate::vm::process::ChildEvent;
use crate::vm::template;
use crate::vm::vmm::{api, DiskConfig, FsShare, SerialOutput, VmmConfig, VsockConfig};
use plan::{PlanError, VmSize};
use stdio::Local;
use vmm_process::VmmPlan;

/// What the state file keeps for a VM container.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct VmState {
    /// The VMM's hybrid vsock socket (agent connections).
    pub vsock: PathBuf,
    /// The host cgroup the VMM runs in.
    pub cgroup: CgroupState,
    /// The guest's serial console.
    pub console_log: PathBuf,
    /// The VMM's control socket (`vm::vmm::api`); empty in the state of a
    /// VMM from before it had one.
    #[serde(default)]
    pub api: PathBuf,
    /// The host interfaces redirected to the VM, for `delete` to release.
    #[serde(default)]
    pub net: network::Wired,
    /// A container of a VM pod: the sandbox whose VM it runs in. `vsock`
    /// and `console_log` are then the sandbox's; it has no host cgroup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<pod::MemberState>,
}

/// The directory of the container's state dir that becomes the VMM's root
/// (`vm::jail::root`): the vsock socket and the console log are made in
/// it, where the host finds them.
const VMM_ROOT: &str = "vmm";

fn vmm_root(dir: &Path) -> PathBuf {
    dir.join(VMM_ROOT)
}
/// How long a call to the agent may take (`start`, `kill`).
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a VM has to go after its workload was SIGKILLed.
const KILL_GRACE: Duration = Duration::from_secs(3);
/// How long SIGKILL waits for the agent before killing the VMM.
const KILL_CALL_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error(transparent)]
    Host(#[from] HostError),
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error(transparent)]
    Guest(#[from] GuestError),
    #[error(transparent)]
    Cgroup(#[from] crate::linux::cgroups::CgroupError),
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Config(String),
    #[error("the VM did not come up: {message}{}", tail(.console))]
    Boot { message: String, console: Vec<String> },
    #[error("talking to the guest agent failed")]
    Agent(#[source] AgentClientError),
    #[error("inside the VM: {0}")]
    Guest2(AgentError),
    #[error(transparent)]
    Hook(#[from] crate::container::hooks::HookError),
    #[error("exec: {0}")]
    Relay(String),
    #[error(transparent)]
    Api(#[from] api::ApiError),
    #[error(transparent)]
    Live(#[from] live::LiveError),
    #[error(transparent)]
    Network(#[from] network::NetworkError),
    #[error(transparent)]
    Pod(#[from] pod::PodError),
}

fn tail(lines: &[String]) -> String {
    if lines.is_empty() {
        String::new()
    } else {
        format!("\nlast guest console lines:\n  {}", lines.join("\n  "))
    }
}

impl From<AgentClientError> for VmError {
    fn from(e: AgentClientError) -> VmError {
        match e {
            AgentClientError::Protocol(crate::agent::ProtocolError::Agent(a)) => VmError::Guest2(a),
            e => VmError::Agent(e),
        }
    }
}

impl From<VmError> for SandboxError {
    fn from(e: VmError) -> SandboxError {
        match e {
            VmError::Host(h) => SandboxError::Unsupported(h.to_string()),
            VmError::Plan(PlanError::Unsupported(m)) => SandboxError::Unsupported(m),
            VmError::Plan(p @ PlanError::MountPoint { .. }) => SandboxError::isolation(VmError::Plan(p)),
            VmError::Plan(p) => SandboxError::BadConfig(p.to_string()),
            VmError::Config(m) => SandboxError::BadConfig(m),
            VmError::Guest2(a) if a.code == ErrorCode::InvalidConfig => {
                SandboxError::BadConfig(format!("inside the VM: {}", a.message))
            }
            VmError::Guest2(a) if a.code == ErrorCode::Unsupported => {
                SandboxError::Unsupported(format!("inside the VM: {}", a.message))
            }
            VmError::Hook(h) => SandboxError::Hook(h),
            VmError::Live(l @ live::LiveError::NoHostMemory { .. }) => SandboxError::Unsupported(l.to_string()),
            VmError::Network(n @ (network::NetworkError::Taken { .. } | network::NetworkError::TooMany { .. })) => {
                SandboxError::BadConfig(n.to_string())
            }
            VmError::Pod(p @ (pod::PodError::Mount { .. } | pod::PodError::Namespace { .. })) => {
                SandboxError::isolation(VmError::Pod(p))
            }
            VmError::Pod(pod::PodError::Unsupported(m)) => SandboxError::Unsupported(m),
            VmError::Pod(p) => SandboxError::BadConfig(p.to_string()),
            e => SandboxError::isolation(e),
        }
    }
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> VmError {
    let what = what.into();
    move |source| VmError::Io { what, source }
}

/// The VM isolation.
#[derive(Debug, Default, Clone, Copy)]
pub struct VmSandbox;

fn vm_state(state: &State) -> VmState {
    serde_json::from_value(state.sandbox.clone()).unwrap_or_default()
}

fn connect(state: &State, timeout: Duration) -> Result<AgentClient, VmError> {
    let vs = vm_state(state);
    let mut c = AgentClient::connect(&vs.vsock, Instant::now() + timeout)?;
    c.set_timeout(Some(timeout));
    Ok(c)
}

impl Sandbox for VmSandbox {
    fn plan(&self, id: &str, cgroups_path: Option<&Path>, dir: &Path) -> Result<serde_json::Value, SandboxError> {
        let cgroup = Manager::plan(id, cgroups_path).map_err(VmError::from)?;
        let root = vmm_root(dir);
        let planned = VmState {
            vsock: jail::root::host_path(&root, jail::root::VSOCK),
            cgroup,
            console_log: jail::root::host_path(&root, jail::root::CONSOLE_LOG),
            api: jail::root::host_path(&root, jail::root::API),
            net: network::Wired::default(),
            pod: None,
        };
        Ok(serde_json::to_value(planned).map_err(|e| VmError::Config(format!("cannot record the VM's state: {e}")))?)
    }

    fn create(&self, req: &CreateRequest<'_>, hooks: &mut RuntimeHooks<'_>) -> Result<Created, SandboxError> {
        create(req, hooks).map_err(|e| {
            if matches!(e, VmError::Agent(_)) {
                // The agent stopped answering after it had listened: what the
                // guest printed last (a panic, an agent that died) is the one
                // clue, and the console goes with the container's directory.
                let console = console_tail(&jail::root::host_path(&vmm_root(&req.dir.path), jail::root::CONSOLE_LOG));
                if !console.is_empty() {
                    crate::logging::warn(&format!(
                        "create {}: the guest agent stopped answering{}",
                        req.id,
                        tail(&console)
                    ));
                }
            }
            e.into()
        })
    }

    fn start(&self, dir: &ContainerDir, state: &State) -> Result<(), SandboxError> {
        let mut c = connect(state, CALL_TIMEOUT)?;
        c.start_container(&state.id).map_err(VmError::from)?;
        crate::logging::timing("start:done");
        // The container is running from here on (status: no marker).
        let _ = std::fs::remove_file(dir.fifo_path());
        Ok(())
    }

    fn kill(&self, state: &State, signal: Sig, all: bool) -> Result<(), SandboxError> {
        // SIGKILL has a fallback, so an agent that does not answer (a hung
        // or stopped VM) is given less time before the VMM is killed.
        let deadline = if signal == Sig::KILL { KILL_CALL_TIMEOUT } else { CALL_TIMEOUT };
        let sent = connect(state, deadline).and_then(|mut c| {
            c.signal(SignalRequest { id: state.id.clone(), signal: signal.number(), all, exec_id: None })
                .map_err(VmError::from)
        });
        if signal != Sig::KILL {
            return Ok(sent?);
        }
        // SIGKILL always works: if the agent did not take it, or the VM
        // does not end soon after, the VMM itself is killed.
        if sent.is_err() || !process::wait_gone(state.pid, state.pid_start_time, KILL_GRACE) {
            crate::logging::debug_with(|| {
                format!("kill {}: the VM did not end through its agent, killing the VMM {}", state.id, state.pid)
            });
            let _ = process::signal(state.pid, state.pid_start_time, Sig::KILL);
        }
        Ok(())
    }

    fn destroy(&self, state: &State) -> Result<(), SandboxError> {
        if let Some(member) = vm_state(state).pod {
            return Ok(destroy_member(state, &member)?);
        }
        if process::liveness(state.pid, state.pid_start_time) == process::Liveness::Alive {
            let _ = process::signal(state.pid, state.pid_start_time, Sig::KILL);
            process::wait_gone(state.pid, state.pid_start_time, KILL_GRACE);
        }
        let vs = vm_state(state);
        if let Err(e) = network::unwire(&vs.net) {
            crate::logging::warn(&format!("delete {}: {}", state.id, crate::logging::chain(&e)));
        }
        // A VMM that no state file names (its `create` was killed) is in
        // the container's cgroup all the same.
        Manager::from_state(vs.cgroup).kill_and_destroy().map_err(VmError::from)?;
        Ok(())
    }

    fn exec(&self, _dir: &ContainerDir, state: &State, req: &ExecRequest<'_>) -> Result<Exec, SandboxError> {
        Ok(exec(state, req)?)
    }

    fn pause(&self, state: &State) -> Result<(), SandboxError> {
        connect(state, CALL_TIMEOUT)?.pause(&state.id).map_err(VmError::from)?;
        Ok(())
    }

    fn resume(&self, state: &State) -> Result<(), SandboxError> {
        connect(state, CALL_TIMEOUT)?.resume(&state.id).map_err(VmError::from)?;
        Ok(())
    }

    /// The guest's cgroup gets every change; the VMM's host cgroup the CPU
    /// ones (they limit the vCPU threads) and a memory limit that follows
    /// the balloon ([`live`]).
    fn update(&self, state: &State, resources: &LinuxResources) -> Result<(), SandboxError> {
        let vs = vm_state(state);
        if vs.pod.is_some() {
            // A pod's container: its cgroup is in the guest; the VM's size
            // and host cgroup are the sandbox's.
            let json = serde_json::to_value(resources).map_err(|e| VmError::Config(e.to_string()))?;
            connect(state, CALL_TIMEOUT)?
                .update(UpdateRequest { id: state.id.clone(), resources: json })
                .map_err(VmError::from)?;
            return Ok(());
        }
        let cgroup = Manager::from_state(vs.cgroup.clone());
        let mut vm = Running { state, vs, cgroup };
        live::update(&mut vm, &state.id, resources, live::RETURN_DEADLINE)?;
        Ok(())
    }

    fn pids(&self, state: &State) -> Result<Vec<i32>, SandboxError> {
        let r = connect(state, CALL_TIMEOUT)?
            .ps(PsRequest { id: state.id.clone(), args: Vec::new() })
            .map_err(VmError::from)?;
        Ok(r.pids)
    }

    fn ps(&self, state: &State, args: &[String]) -> Result<String, SandboxError> {
        let r = connect(state, CALL_TIMEOUT)?
            .ps(PsRequest { id: state.id.clone(), args: args.to_vec() })
            .map_err(VmError::from)?;
        Ok(r.table)
    }

    fn stats(&self, state: &State) -> Result<Stats, SandboxError> {
        let r = connect(state, CALL_TIMEOUT)?.stats(&state.id).map_err(VmError::from)?;
        let mut stats: Stats =
            serde_json::from_value(r.stats).map_err(|e| VmError::Config(format!("the guest's stats: {e}")))?;
        // The guest's view comes from the guest; the host's from the VMM's
        // cgroup, whatever the guest says. A pod's container has none of
        // its own (the VM is the sandbox's).
        if vm_state(state).pod.is_some() {
            return Ok(stats);
        }
        stats.host = Some(Box::new(Manager::from_state(vm_state(state).cgroup).runc_stats()));
        Ok(stats)
    }
}

/// A running VM container as `update` acts on it.
struct Running<'a> {
    state: &'a State,
    vs: VmState,
    cgroup: Manager,
}

impl live::LiveVm for Running<'_> {
    fn update_guest(&mut self, resources: &LinuxResources) -> Result<(), VmError> {
        let json = serde_json::to_value(resources).map_err(|e| VmError::Config(e.to_string()))?;
        connect(self.state, CALL_TIMEOUT)?.update(UpdateRequest { id: self.state.id.clone(), resources: json })?;
        Ok(())
    }

    fn vmm_stats(&mut self) -> Result<Option<api::VmmStats>, VmError> {
        if self.vs.api.as_os_str().is_empty() {
            return Ok(None);
        }
        Ok(Some(api::call(&self.vs.api, &api::Request::Stats, CALL_TIMEOUT)?))
    }

    fn set_balloon(&mut self, target_mib: u64) -> Result<(), VmError> {
        api::call(&self.vs.api, &api::Request::Balloon { target_mib }, CALL_TIMEOUT)?;
        Ok(())
    }

    fn host_memory(&mut self) -> Option<live::HostMemory> {
        let m = self.cgroup.stats().ok()?.memory?;
        Some(live::HostMemory { usage: m.usage, limit: m.limit })
    }

    fn update_host(&mut self, resources: &LinuxResources) -> Result<(), VmError> {
        Ok(self.cgroup.update(resources)?)
    }

    fn now(&self) -> Instant {
        Instant::now()
    }

    fn sleep(&mut self, d: Duration) {
        std::thread::sleep(d)
    }
}

fn exec(state: &State, req: &ExecRequest<'_>) -> Result<Exec, VmError> {
    if req.preserve_fds > 0 {
        return Err(PlanError::Unsupported(
            "--preserve-fds cannot pass host descriptors into a VM: drop it or use --isolation container".into(),
        )
        .into());
    }
    let vs = vm_state(state);
    let terminal = req.process.terminal().unwrap_or(false);
    let window = if req.keep_console { window_of_stdin() } else { None };
    let (master, local) = host_terminal(terminal, window, "exec")?;
    let mut process = serde_json::to_value(req.process).map_err(|e| VmError::Config(e.to_string()))?;
    if let (Some((rows, cols)), Some(p)) = (window, process.as_object_mut()) {
        p.entry("consoleSize").or_insert(serde_json::json!({"height": rows, "width": cols}));
    }
    let (report_r, report_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| io("pipe")(e.into()))?;
    let plan = exec_relay::ExecPlan {
        id: state.id.clone(),
        start: exec_relay::Start::Exec { exec_id: session_name(), process },
        uds: vs.vsock,
        session: session_name(),
        streams: stdio::streams(&local),
        local,
        window,
        report: report_w,
    };
    let (pid, guest_pid) = spawn_relay(plan, report_r, None)?;
    crate::logging::debug_with(|| format!("exec {}: guest pid {guest_pid}, relay {pid}", state.id));
    if let (Some(m), Some(path)) = (&master, &req.console_socket) {
        crate::linux::console::send_to_socket(path, m.as_raw_fd())
            .map_err(|e| VmError::Config(crate::logging::chain(&e)))?;
    }
    Ok(Exec { pid, console: if req.keep_console { master } else { None } })
}

/// Forks the relay process of `plan` and waits for its report: its pid
/// and the guest pid of what it started. On error the relay is gone. The
/// child closes its copies of `report_r` and of `close` (the parent's
/// ends of other pipes) first.
fn spawn_relay(plan: exec_relay::ExecPlan, report_r: OwnedFd, close: Option<i32>) -> Result<(i32, i32), VmError> {
    let report_r_raw = report_r.as_raw_fd();
    let pid = crate::linux::process::clone_child(nix::sched::CloneFlags::empty(), None, move || {
        for fd in std::iter::once(report_r_raw).chain(close) {
            // SAFETY: closing the child's copies of the parent's pipe
            // ends, which nothing in the child uses.
            unsafe { libc::close(fd) };
        }
        exec_relay::run(plan)
    })
    .map_err(|e| io("cannot fork the relay process")(e.into()))?;
    let reap = || {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
        let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None);
    };
    let mut line = String::new();
    let read = BufReader::new(std::fs::File::from(report_r)).read_line(&mut line);
    match read.ok().and_then(|_| serde_json::from_str::<exec_relay::Report>(line.trim_end()).ok()) {
        Some(exec_relay::Report::Started(guest_pid)) => Ok((pid, guest_pid)),
        Some(exec_relay::Report::Refused(a)) => {
            reap();
            Err(VmError::Guest2(a))
        }
        Some(exec_relay::Report::Failed(m)) => {
            reap();
            Err(VmError::Relay(m))
        }
        None => {
            reap();
            Err(VmError::Relay("the relay process ended without saying why".into()))
        }
    }
}

/// `create` of a container of a VM pod, in its sandbox's VM.
fn create_member(req: &CreateRequest<'_>, sandbox: &str) -> Result<Created, VmError> {
    let spec = &req.bundle.spec;
    let terminal = check_launch(req)?;
    let host_hooks = spec.hooks().as_ref().is_some_and(|h| {
        h.prestart().as_ref().is_some_and(|l| !l.is_empty())
            || h.create_runtime().as_ref().is_some_and(|l| !l.is_empty())
    });
    if host_hooks {
        return Err(pod::PodError::Unsupported(
            "a container of a VM pod cannot have prestart or createRuntime hooks (they would run on the host while \
             the container is made in the sandbox's VM): drop them or use --isolation container"
                .into(),
        )
        .into());
    }
    let window = if req.keep_console { window_of_stdin() } else { None };
    // The sandbox stays locked (it cannot be deleted) until this returns.
    let found = pod::find_sandbox(&req.dir.path, sandbox)?;
    let sbx = &found.state;
    let svs = vm_state(sbx);
    let mut json = serde_json::to_value(spec).map_err(|e| VmError::Config(e.to_string()))?;
    let joins = pod::decide_joins(&mut json, sandbox, &mut pod::namespace_inode, &mut |k| {
        pod::namespace_inode(&PathBuf::from(format!("/proc/{}/ns/{}", sbx.pid, k.proc_name())))
    })?;
    let stripped: oci_spec::runtime::Spec =
        serde_json::from_value(json).map_err(|e| VmError::Config(format!("config.json: {e}")))?;
    let mut gplan =
        plan::guest_plan(&stripped, &req.bundle.dir, &req.bundle.rootfs, req.cgroups_path.as_deref(), window)?;
    if !gplan.disks.is_empty() {
        return Err(pod::PodError::Unsupported(
            "a container of a VM pod cannot bring disks (image or block-device mounts, block devices in \
             linux.devices): the pod's VM runs already; use bind mounts or --isolation container"
                .into(),
        )
        .into());
    }
    make_read_only_root_mount_points(req, &gplan)?;
    let share = Path::new(GUEST_SHARE_DIR).join(plan::SHARE_TAG);
    pod::place_under_pod(req.id, &mut gplan.entries, &mut gplan.config, &share);

    let client = connect(sbx, CALL_TIMEOUT)?;
    let needs = crate::agent::ProtocolVersion { major: 1, minor: 6 };
    if let Some(v) = client.agent_protocol().filter(|v| v.minor < needs.minor) {
        return Err(VmError::Config(format!(
            "the pod's sandbox {sandbox:?} runs a guest agent of protocol {v}, which cannot take containers into \
             its VM (protocol {needs}): rebuild the guest image with this amphi's agent and recreate the pod"
        )));
    }
    drop(client);

    let member = pod::MemberState {
        sandbox: sandbox.to_string(),
        vmm_pid: sbx.pid,
        vmm_start_time: sbx.pid_start_time,
        entries: gplan.entries.iter().map(|e| e.name.clone()).collect(),
    };
    pod::attach(sbx.pid, sbx.pid_start_time, &gplan.entries)?;
    let mut guard = MemberGuard { relay: None, uds: svs.vsock.clone(), id: req.id.to_string(), member, armed: true };

    let (master, local) = host_terminal(terminal, window, "container")?;
    let pipe = || nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| io("pipe")(e.into()));
    let (report_r, report_w) = pipe()?;
    let (control_r, control_w) = pipe()?;
    let create = CreateContainerRequest {
        id: req.id.to_string(),
        config: gplan.config,
        share: plan::SHARE_TAG.into(),
        stdio: StdioRequest::default(),
        runtime_hooks: false,
        no_pivot: req.no_pivot,
        no_new_keyring: req.no_new_keyring,
        disks: Vec::new(),
        join: Some(JoinRequest { sandbox: sandbox.to_string(), namespaces: joins }),
    };
    let plan = exec_relay::ExecPlan {
        id: req.id.to_string(),
        start: exec_relay::Start::Member { create: Box::new(create), control: control_r },
        uds: svs.vsock.clone(),
        session: session_name(),
        streams: stdio::streams(&local),
        local,
        window,
        report: report_w,
    };
    // The relay must not hold the control pipe's write end: its EOF is
    // how the relay learns that `create` failed.
    let (pid, guest_pid) = spawn_relay(plan, report_r, Some(control_w.as_raw_fd()))?;
    guard.relay = Some(pid);
    crate::logging::debug_with(|| format!("create {}: in pod {sandbox:?}, guest pid {guest_pid}, relay {pid}", req.id));
    if let Some(m) = &master {
        if let Some(path) = &req.console_socket {
            crate::linux::console::send_to_socket(path, m.as_raw_fd())
                .map_err(|e| VmError::Config(crate::logging::chain(&e)))?;
        }
    }
    if req.mode == LaunchMode::Deferred {
        std::fs::write(req.dir.fifo_path(), b"").map_err(io("cannot mark the container created"))?;
    }
    let (start_time, _) =
        process::stat(pid).ok_or_else(|| VmError::Relay("the container's relay process ended".into()))?;
    let launcher: Option<Box<dyn Launch>> = match req.mode {
        LaunchMode::Attached => {
            Some(Box::new(Attached { client: connect(sbx, CALL_TIMEOUT)?, id: req.id.to_string() }))
        }
        LaunchMode::Deferred => None,
    };
    let sandbox_state = serde_json::to_value(VmState {
        vsock: svs.vsock.clone(),
        cgroup: CgroupState::default(),
        console_log: svs.console_log.clone(),
        api: PathBuf::new(),
        net: network::Wired::default(),
        pod: Some(guard.member.clone()),
    })
    .map_err(|e| VmError::Config(format!("cannot record the container's state: {e}")))?;
    guard.armed = false;
    let console = if req.keep_console { master } else { None };
    let commit: Option<Box<dyn Commit>> = Some(Box::new(HandOver { control: control_w }));
    Ok(Created { pid, pid_start_time: start_time, sandbox_state, console, launcher, commit })
}

/// Removes a pod's container: from the guest (its relay then exits with
/// its status), then its files from the VMM's share. A VM that is gone
/// took both with it.
fn destroy_member(state: &State, member: &pod::MemberState) -> Result<(), VmError> {
    if process::liveness(member.vmm_pid, member.vmm_start_time) == process::Liveness::Alive {
        match connect(state, KILL_CALL_TIMEOUT).and_then(|mut c| Ok(c.delete_container(&state.id)?)) {
            Ok(()) => {}
            Err(VmError::Guest2(a)) if a.code == ErrorCode::NoSuchContainer => {}
            Err(e) => crate::logging::warn(&format!(
                "delete {}: removing it from the pod's VM: {}",
                state.id,
                crate::logging::chain(&e)
            )),
        }
    }
    if process::liveness(state.pid, state.pid_start_time) == process::Liveness::Alive {
        let _ = process::signal(state.pid, state.pid_start_time, Sig::KILL);
        process::wait_gone(state.pid, state.pid_start_time, KILL_GRACE);
    }
    pod::detach(member)?;
    Ok(())
}

/// Undoes a half-made pod container: its relay, its container in the
/// guest, its files in the VMM's share. Disarmed once `create` succeeds.
struct MemberGuard {
    relay: Option<i32>,
    uds: PathBuf,
    id: String,
    member: pod::MemberState,
    armed: bool,
}

impl Drop for MemberGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        if let Some(pid) = self.relay {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
            let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None);
            if let Ok(mut c) = AgentClient::connect(&self.uds, Instant::now() + KILL_CALL_TIMEOUT) {
                c.set_timeout(Some(CALL_TIMEOUT));
                let _ = c.delete_container(&self.id);
            }
        }
        let _ = pod::detach(&self.member);
    }
}

/// Host CPUs online, for the vCPU limit.
fn host_cpus() -> u64 {
    std::thread::available_parallelism().map(|n| n.get() as u64).unwrap_or(1)
}

/// A short random name for the stdio session.
fn session_name() -> String {
    let mut b = [0u8; 8];
    if std::fs::File::open("/dev/urandom").and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b)).is_err() {
        b = (std::process::id() as u64 ^ Instant::now().elapsed().as_nanos() as u64).to_le_bytes();
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// What `create` checks of any VM container before it does anything:
/// no descriptors to pass (they cannot cross into the VM), a process, and
/// a terminal setting that fits the console socket. Returns whether the
/// process has a terminal.
fn check_launch(req: &CreateRequest<'_>) -> Result<bool, VmError> {
    if req.preserve_fds > 0 {
        return Err(PlanError::Unsupported(
            "--preserve-fds cannot pass host descriptors into a VM: drop it or use --isolation container".into(),
        )
        .into());
    }
    let process =
        req.bundle.spec.process().as_ref().ok_or_else(|| VmError::Config("config.json has no process".into()))?;
    let terminal = process.terminal().unwrap_or(false);
    crate::container::sandbox::check_terminal(req.console_socket.as_deref(), terminal, req.keep_console)
        .map_err(|m| VmError::Config(m.into()))?;
    Ok(terminal)
}

/// The host side of a process's stdio: a pty (master for the caller, slave
/// for the relay) when it has a terminal, else the caller's own stdio.
/// `what` names the process in the error.
fn host_terminal(terminal: bool, window: Option<(u16, u16)>, what: &str) -> Result<(Option<OwnedFd>, Local), VmError> {
    if !terminal {
        return Ok((None, Local::Inherited));
    }
    let size = window.map(|(r, c)| nix::pty::Winsize { ws_row: r, ws_col: c, ws_xpixel: 0, ws_ypixel: 0 });
    let pty = nix::pty::openpty(size.as_ref(), None)
        .map_err(|e| io(format!("cannot open a host pty for the {what}'s terminal"))(e.into()))?;
    Ok((Some(pty.master), Local::Tty(pty.slave)))
}

/// A read-only root the guest sees through the share needs its mount
/// points made on the host first ([`plan::make_mount_points`]).
fn make_read_only_root_mount_points(req: &CreateRequest<'_>, gplan: &plan::GuestPlan) -> Result<(), VmError> {
    if gplan.entries.iter().any(|e| e.name == "rootfs" && e.read_only) {
        plan::make_mount_points(&req.bundle.spec, &req.bundle.dir, &req.bundle.rootfs)?;
    }
    Ok(())
}

fn window_of_stdin() -> Option<(u16, u16)> {
    let mut ws = libc::winsize { ws_row: 0, ws_col: 0, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: TIOCGWINSZ writes one winsize into the struct we own.
    let ok = unsafe { libc::ioctl(0, libc::TIOCGWINSZ, &mut ws) } == 0 && ws.ws_row > 0;
    ok.then_some((ws.ws_row, ws.ws_col))
}

/// Undoes a half-made VM container: kills and reaps the VMM, removes the
/// cgroup. Disarmed once `create` succeeds.
struct Guard<'a> {
    pid: Option<i32>,
    cgroups: &'a Manager,
    wired: network::Wired,
    armed: bool,
}

impl Drop for Guard<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        if let Some(pid) = self.pid {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
            let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None);
        }
        let _ = network::unwire(&self.wired);
        let _ = self.cgroups.destroy();
    }
}

fn console_tail(path: &Path) -> Vec<String> {
    let Ok(text) = std::fs::read(path) else { return Vec::new() };
    let text = String::from_utf8_lossy(&text);
    let lines: Vec<String> =
        text.lines().map(|l| l.trim_end_matches('\r').to_string()).filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(15)..].to_vec()
}

fn create(req: &CreateRequest<'_>, hooks: &mut RuntimeHooks<'_>) -> Result<Created, VmError> {
    crate::logging::timing("create:start");
    let spec = &req.bundle.spec;
    if let pod::Role::Member { sandbox } = pod::role_of(spec)? {
        return create_member(req, &sandbox);
    }
    host::check(&SystemHost, Path::new(host::DEFAULT_KVM_PATH))?;
    let size: VmSize = plan::size(spec, host_cpus())?;
    let terminal = check_launch(req)?;
    let window = if req.keep_console { window_of_stdin() } else { None };
    let mut gplan = plan::guest_plan(spec, &req.bundle.dir, &req.bundle.rootfs, req.cgroups_path.as_deref(), window)?;
    make_read_only_root_mount_points(req, &gplan)?;
    let net = network::plan(spec)?;
    if net.taps > 0 {
        plan::guest_network_namespace(&mut gplan.config, req.id);
    } else if net.namespace == network::Namespace::Host {
        crate::logging::warn_once(
            "vm-host-network",
            "the container shares the host's network namespace, which a VM cannot: the guest has loopback only \
             (give it a network namespace to reach the network)",
        );
    }
    let exe = crate::linux::exe::original_exe();
    let guest = guest::resolve(
        &GuestOptions {
            kernel: size.kernel.clone(),
            modules: None,
            agent: None,
            cache_dir: PathBuf::from(guest::DEFAULT_CACHE_DIR),
            exe: exe.clone(),
        },
        &mut |m| crate::logging::debug(m),
    )?;
    let boot = {
        let cache = template::Cache::in_cache_dir(Path::new(guest::DEFAULT_CACHE_DIR));
        let builder = template::vmm::VmmBuilder {
            kvm_path: PathBuf::from(host::DEFAULT_KVM_PATH),
            vmm_binary: exe,
            kernel_args: size.kernel_args.clone(),
            free_page_reporting: size.free_page_reporting,
            fingerprint_dir: cache.root().to_path_buf(),
        };
        let wanted = template::vmm::Wanted {
            annotation: plan::template_annotation(spec)?,
            global: req.vm_template,
            disks: gplan.disks.len(),
            nets: net.taps,
        };
        template::vmm::choose(&wanted, &cache, &builder, &guest, size.memory_mib, size.vcpus, &mut |m| {
            crate::logging::progress(m)
        })
    };
    let restore = match boot {
        template::vmm::Boot::Restore { template, source } => {
            crate::logging::debug_with(|| format!("create {}: restoring the VM template {}", req.id, template.key));
            Some(source)
        }
        template::vmm::Boot::Cold(why) => {
            crate::logging::debug_with(|| format!("create {}: cold boot: {why}", req.id));
            None
        }
    };

    // The host pty, when the process has a terminal: the master goes to the
    // console socket (or back to `run`), the VMM keeps the slave.
    let (master, local) = host_terminal(terminal, window, "container")?;
    let streams = stdio::streams(&local);

    let host_res = plan::host_resources_typed(spec, &size);
    let mut cgroups = Manager::new(&CgroupConfig {
        id: req.id,
        cgroups_path: req.cgroups_path.as_deref(),
        resources: Some(&host_res),
        linux_devices: None,
    })?;
    let join = cgroups.prepare()?;
    let mut guard = Guard { pid: None, cgroups: &cgroups, wired: network::Wired::default(), armed: true };

    let dir = &req.dir.path;
    let root = vmm_root(dir);
    std::fs::create_dir(&root).map_err(io(format!("mkdir {}", root.display())))?;
    let uds = jail::root::host_path(&root, jail::root::VSOCK);
    let console_log = jail::root::host_path(&root, jail::root::CONSOLE_LOG);
    let cmdline = match &size.kernel_args {
        Some(extra) => format!("{} {extra}", crate::vm::GUEST_CMDLINE),
        None => crate::vm::GUEST_CMDLINE.to_string(),
    };
    let config = VmmConfig {
        kvm_path: PathBuf::from(host::DEFAULT_KVM_PATH),
        kernel: guest.boot_kernel.clone(),
        initrd: Some(guest.initramfs.clone()),
        cmdline,
        mem_mib: size.memory_mib,
        vcpus: size.vcpus,
        serial: SerialOutput::File(console_log.clone()),
        vsock: Some(VsockConfig {
            guest_cid: crate::vm::devices::virtio::vsock::DEFAULT_GUEST_CID,
            uds_path: uds.clone(),
        }),
        // Read-only entries are read-only bind mounts inside the share
        // (the host kernel enforces them); the share itself is writable.
        shares: vec![FsShare {
            tag: plan::SHARE_TAG.into(),
            path: jail::root::host_path(&root, jail::root::SHARE),
            read_only: false,
        }],
        disks: gplan
            .disks
            .iter()
            .map(|d| DiskConfig { path: d.source.clone(), read_only: d.read_only, serial: d.guest.serial.clone() })
            .collect(),
        // Their TAPs are opened by the VMM process, in its namespace.
        nets: net.devices(),
        api: Some(jail::root::host_path(&root, jail::root::API)),
        // Free page reporting gives back what the guest frees; `update
        // --memory` sets a target through the control socket.
        balloon: Some(BalloonConfig { free_page_reporting: size.free_page_reporting, ..BalloonConfig::default() }),
        template: restore.clone().map(crate::vm::vmm::TemplateMode::Restore),
    };
    let session = session_name();
    let pipe = || nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| io("pipe")(e.into()));
    let (events_r, events_w) = pipe()?;
    let (control_r, control_w) = pipe()?;
    let into = join.clone_into.as_ref().map(|f| f.as_raw_fd());
    let vplan = VmmPlan {
        id: req.id.to_string(),
        config,
        root,
        entries: gplan.entries.clone(),
        session: session.clone(),
        streams: streams.clone(),
        local,
        events: events_w,
        control: control_r,
        join,
        net: net.clone(),
    };
    let (control_w_raw, events_r_raw) = (control_w.as_raw_fd(), events_r.as_raw_fd());
    // In the parent the closure (and with it the VMM's ends of the pipes,
    // the pty slave and the cgroup handles) is dropped on return.
    let pid = crate::linux::process::clone_child(nix::sched::CloneFlags::empty(), into, move || {
        // The child's copies of the parent's pipe ends: nothing in the
        // child uses them, and an open write end would hide the parent's exit.
        let _ = nix::unistd::close(control_w_raw);
        let _ = nix::unistd::close(events_r_raw);
        vmm_process::run(vplan)
    })
    .map_err(|e| io("cannot fork the VMM process")(e.into()))?;
    guard.pid = Some(pid);
    crate::logging::debug_with(|| {
        format!(
            "create {}: VMM {pid}, {} MiB, {} vCPU(s), kernel {}, initramfs {}",
            req.id,
            size.memory_mib,
            size.vcpus,
            guest.kernel.display(),
            guest.initramfs.display()
        )
    });

    crate::logging::timing("create:vmm_forked");
    // Until the agent listens.
    wait_for_agent(events_r, size.boot_timeout, &console_log)?;
    crate::logging::timing("create:agent_listening");
    let deadline = Instant::now() + size.boot_timeout;
    let mut client = AgentClient::connect(&uds, deadline)?;
    client.set_timeout(Some(Duration::from_secs(120)));
    if restore.is_some() {
        // Before anything runs in the guest: its RNG was the template's.
        client.announce_restore()?;
        crate::logging::timing("create:restored_announced");
    }
    // Disks came in 1.2, a rootfs on a disk in 1.3, the network in 1.4.
    let minor = if net.taps > 0 {
        4
    } else if gplan.disks.iter().any(|d| d.guest.rootfs.is_some()) {
        3
    } else {
        2
    };
    let disks_from = crate::agent::ProtocolVersion { major: 1, minor };
    if (!gplan.disks.is_empty() || net.taps > 0) && client.agent_protocol().is_some_and(|v| v.minor < disks_from.minor)
    {
        return Err(VmError::Config(format!(
            "the guest agent speaks protocol {}, which lacks what this container needs (disks or a network: \
             protocol {disks_from}): rebuild the guest image with this amphi's agent",
            client.agent_protocol().map(|v| v.to_string()).unwrap_or_default()
        )));
    }
    let runtime_hooks = spec.hooks().as_ref().is_some_and(|h| {
        h.prestart().as_ref().is_some_and(|l| !l.is_empty())
            || h.create_runtime().as_ref().is_some_and(|l| !l.is_empty())
    });
    // The guest namespace the config names is made before the container;
    // interfaces the engine made before `create` go in at once (sysctls
    // and the runtime find them there), those a hook adds after it.
    if net.taps > 0 {
        let (netreq, wired) = match net.namespace {
            network::Namespace::Path(_) => network::wire(req.id, pid, &net)?,
            _ => (
                NetworkRequest { id: req.id.to_string(), interfaces: Vec::new(), routes: Vec::new() },
                Default::default(),
            ),
        };
        guard.wired = wired;
        configure_network(&mut client, netreq)?;
    }
    let mut created = client.create_container(CreateContainerRequest {
        id: req.id.to_string(),
        config: gplan.config,
        share: plan::SHARE_TAG.into(),
        stdio: StdioRequest { session, streams, window },
        runtime_hooks,
        no_pivot: req.no_pivot,
        no_new_keyring: req.no_new_keyring,
        disks: gplan.disks.iter().map(|d| d.guest.clone()).collect(),
        join: None,
    })?;
    if created.hooks_pending {
        hooks(pid)?;
        created = client.resume_create(req.id)?;
    }
    if net.taps > 0 && net.namespace == network::Namespace::New {
        let (netreq, wired) = network::wire(req.id, pid, &net)?;
        guard.wired = wired;
        if !netreq.interfaces.is_empty() {
            configure_network(&mut client, netreq)?;
        }
    }
    crate::logging::timing("create:container_created");
    crate::logging::debug_with(|| {
        let t = created.timings.unwrap_or_default();
        format!(
            "create {}: guest init is pid {} in the VM (guest: share mounted in {} ms, runtime {} ms)",
            req.id, created.pid, t.share_ms, t.runtime_ms
        )
    });
    if let Some(t) = created.timings {
        crate::logging::timing(&format!("guest:share_ms={}", t.share_ms));
        crate::logging::timing(&format!("guest:runtime_ms={}", t.runtime_ms));
    }

    if let Some(m) = &master {
        if let Some(path) = &req.console_socket {
            crate::linux::console::send_to_socket(path, m.as_raw_fd())
                .map_err(|e| VmError::Config(crate::logging::chain(&e)))?;
        }
    }
    if req.mode == LaunchMode::Deferred {
        std::fs::write(req.dir.fifo_path(), b"").map_err(io("cannot mark the container created"))?;
    }
    let (start_time, _) = process::stat(pid).ok_or_else(|| VmError::Boot {
        message: "the VMM process ended".into(),
        console: console_tail(&console_log),
    })?;
    // The VMM owns the container once the state records it (the commit);
    // until then it ends when `create` does (EOF on the control pipe).
    guard.armed = false;
    let api = jail::root::host_path(&vmm_root(dir), jail::root::API);
    let sandbox_state = serde_json::to_value(VmState {
        vsock: uds,
        cgroup: cgroups.state().clone(),
        console_log,
        api,
        net: guard.wired.clone(),
        pod: None,
    })
    .map_err(|e| VmError::Config(format!("cannot record the VM's state: {e}")))?;
    let launcher: Option<Box<dyn Launch>> = match req.mode {
        LaunchMode::Attached => Some(Box::new(Attached { client, id: req.id.to_string() })),
        LaunchMode::Deferred => None,
    };
    let console = if req.keep_console { master } else { None };
    let commit: Option<Box<dyn Commit>> = Some(Box::new(HandOver { control: control_w }));
    Ok(Created { pid, pid_start_time: start_time, sandbox_state, console, launcher, commit })
}

fn configure_network(client: &mut AgentClient, req: NetworkRequest) -> Result<(), VmError> {
    let id = req.id.clone();
    let r = client.configure_network(req)?;
    crate::logging::debug_with(|| format!("create {id}: guest interfaces [{}]", r.names.join(", ")));
    Ok(())
}

/// The commit: a byte on the control pipe tells the VMM that the container
/// is recorded and outlives `create`.
struct HandOver {
    control: OwnedFd,
}

impl Commit for HandOver {
    fn commit(self: Box<Self>) -> Result<(), SandboxError> {
        nix::unistd::write(&self.control, b"g").map_err(|e| io("cannot hand the VM over")(e.into()))?;
        Ok(())
    }
}

/// Reads the VMM's events until the agent listens; every other ending is
/// an error that says what happened, with the guest console's last lines.
fn wait_for_agent(events: OwnedFd, timeout: Duration, console: &Path) -> Result<(), VmError> {
    let deadline = Instant::now() + timeout;
    let mut reader = BufReader::new(std::fs::File::from(events));
    let mut kernel_entered = false;
    let mut panic_line = None;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let mut fds = [nix::poll::PollFd::new(reader.get_ref().as_fd(), nix::poll::PollFlags::POLLIN)];
        let ready = reader.buffer().is_empty().then(|| {
            nix::poll::poll(&mut fds, nix::poll::PollTimeout::try_from(left).unwrap_or(nix::poll::PollTimeout::MAX))
        });
        if let Some(Ok(0)) = ready {
            let phase = if kernel_entered {
                "the kernel booted but the agent never said it listens"
            } else {
                "the kernel was never entered"
            };
            let message = match panic_line {
                Some(p) => format!("the guest kernel panicked: {p}"),
                None => format!("no agent within {}s ({phase})", timeout.as_secs()),
            };
            return Err(VmError::Boot { message, console: console_tail(console) });
        }
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => {
                return Err(VmError::Boot {
                    message: "the VMM process ended without saying why".into(),
                    console: console_tail(console),
                })
            }
            Ok(_) => {}
        }
        match serde_json::from_str::<ChildEvent>(line.trim_end()) {
            Ok(ChildEvent::KernelEntry) => kernel_entered = true,
            // A VM restored from a template has its agent listening already.
            Ok(ChildEvent::AgentListening | ChildEvent::Restored) => return Ok(()),
            Ok(ChildEvent::GuestPanic { line }) => panic_line = Some(line),
            Ok(ChildEvent::Error { message }) => return Err(VmError::Boot { message, console: console_tail(console) }),
            Ok(ChildEvent::Exit { reason, panic, .. }) => {
                let message = match panic.or(panic_line) {
                    Some(p) => format!("the guest kernel panicked: {p}"),
                    None if reason == "emulation_failure" => format!(
                        "KVM could not emulate a guest instruction: this /dev/kvm cannot run a stock kernel. \
                         What would work: {}",
                        host::WHAT_WORKS
                    ),
                    None => format!("the guest ended ({reason}) before its agent answered"),
                };
                return Err(VmError::Boot { message, console: console_tail(console) });
            }
            Err(_) => {}
        }
    }
}

/// `run`'s in-process start, over the connection `create` used.
struct Attached {
    client: AgentClient,
    id: String,
}

impl Launch for Attached {
    fn launch(mut self: Box<Self>) -> Result<(), SandboxError> {
        self.client.set_timeout(Some(CALL_TIMEOUT));
        self.client.start_container(&self.id).map_err(VmError::from)?;
        crate::logging::timing("start:done");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waiting_for_the_agent_times_out_and_reports_events() {
        let d = tempfile::tempdir().unwrap();
        let console = d.path().join("console.log");
        std::fs::write(&console, "line one\nKernel says hi\n").unwrap();
        let (r, w) = nix::unistd::pipe().unwrap();
        let t = Instant::now();
        let e = wait_for_agent(r, Duration::from_millis(300), &console).unwrap_err();
        assert!(t.elapsed() < Duration::from_secs(5));
        assert!(e.to_string().contains("kernel was never entered"), "{e}");
        assert!(e.to_string().contains("Kernel says hi"), "{e}");
        drop(w);

        let (r, w) = nix::unistd::pipe().unwrap();
        nix::unistd::write(&w, b"{\"event\":\"kernel_entry\"}\n{\"event\":\"agent_listening\"}\n").unwrap();
        wait_for_agent(r, Duration::from_secs(5), &console).unwrap();
        drop(w);

        let (r, w) = nix::unistd::pipe().unwrap();
        nix::unistd::write(&w, b"{\"event\":\"error\",\"message\":\"no kvm\"}\n").unwrap();
        let e = wait_for_agent(r, Duration::from_secs(5), &console).unwrap_err();
        assert!(e.to_string().contains("no kvm"), "{e}");
        let (r, w) = nix::unistd::pipe().unwrap();
        drop(w);
        let e = wait_for_agent(r, Duration::from_secs(5), &console).unwrap_err();
        assert!(e.to_string().contains("ended without saying why"), "{e}");
    }
}
