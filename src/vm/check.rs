//! `amphi vm check`: boot the guest, handshake with the agent over vsock,
//! report what it says and how long each phase took, power it off, and
//! leave nothing behind (no process, socket or temp file) whatever happens.

use std::io::Write;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::agent::{HandshakeResponse, HealthResponse, ShutdownAction, AGENT_VSOCK_PORT, PROTOCOL_VERSION};
use crate::exit;
use crate::vm::agent_client::{self, AgentClient, AgentClientError};
use crate::vm::guest::{self, Guest, GuestError, GuestOptions};
use crate::vm::host::{self, HostError, SystemHost};
use crate::vm::process::{self, ChildArgs, ChildEvent};
use crate::vm::vmm::{DiskConfig, NetConfig, MIN_MEM_MIB};

/// Default guest memory.
pub const DEFAULT_MEMORY_MIB: u64 = 256;
pub use crate::vm::guest::DEFAULT_CACHE_DIR;
/// How long the guest gets to power off after the agent acknowledged.
const TEARDOWN_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the guest console goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConsoleTarget {
    /// A temporary log, removed afterwards; its tail is shown on failure.
    Temporary,
    Stdout,
    File(PathBuf),
}

#[derive(Debug, Clone)]
pub struct CheckOptions {
    pub kernel: Option<PathBuf>,
    pub modules: Option<PathBuf>,
    pub agent: Option<PathBuf>,
    pub memory_mib: u64,
    pub cpus: u8,
    pub timeout: Duration,
    pub console: ConsoleTarget,
    pub cache_dir: PathBuf,
    /// Extra kernel command-line arguments.
    pub append: Option<String>,
    pub kvm_path: PathBuf,
    /// The `amphi` binary to run the VMM child with (normally this one).
    pub vmm_binary: PathBuf,
    /// Disks to attach over virtio-blk (the check itself does not use them).
    pub disks: Vec<DiskConfig>,
    /// TAPs to attach over virtio-net (the check itself does not use them).
    pub nets: Vec<NetConfig>,
    /// Set (from a signal handler, say) to stop the check early; everything
    /// is still cleaned up.
    pub cancel: Option<&'static AtomicBool>,
    /// Restore the guest from its template (built first if there is none)
    /// instead of booting it.
    pub template: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error(transparent)]
    Host(#[from] HostError),
    #[error(transparent)]
    Guest(#[from] GuestError),
    #[error("{memory} MiB is too little guest memory: pass --memory {MIN_MEM_MIB} or more")]
    Memory { memory: u64 },
    #[error("--cpus must be between 1 and 254, not {0}")]
    Cpus(u32),
    #[error("cannot set up the VM's temporary directory")]
    TempDir(#[source] std::io::Error),
    #[error("cannot start the VMM process {binary}")]
    Spawn {
        binary: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the VMM failed: {message}{}", tail_suffix(.console))]
    Vmm { message: String, console: Vec<String> },
    #[error("the guest kernel panicked: {line}{}", tail_suffix(.console))]
    GuestPanic { line: String, console: Vec<String> },
    #[error("KVM could not emulate a guest instruction at boot: this /dev/kvm cannot run a stock kernel (as on a PVM host). What would work: {}", host::WHAT_WORKS)]
    Emulation,
    #[error("the guest ended ({reason}) before the agent answered{}", tail_suffix(.console))]
    GuestEnded { reason: String, console: Vec<String> },
    #[error("the agent did not answer within {timeout:?} ({phase}); the VM was stopped{}", tail_suffix(.console))]
    Timeout { timeout: Duration, phase: &'static str, console: Vec<String> },
    #[error("talking to the agent failed")]
    Agent(#[source] AgentClientError),
    #[error("the guest did not power off within {0:?} of the shutdown request; the VM was stopped")]
    Teardown(Duration),
    #[error("interrupted; the VM was stopped and its files removed")]
    Interrupted,
    #[error("cannot restore the guest from a template")]
    Template(#[source] crate::vm::template::TemplateError),
    #[error("--template cannot be used with --disk or --net: a template carries no disks or network interfaces")]
    TemplateDevices,
}

fn tail_suffix(lines: &[String]) -> String {
    if lines.is_empty() {
        String::new()
    } else {
        format!("\nlast guest console lines:\n  {}", lines.join("\n  "))
    }
}

impl CheckError {
    /// The `amphi` exit status for this failure.
    pub fn exit_code(&self) -> u8 {
        match self {
            CheckError::Host(_) | CheckError::Emulation => exit::VM_HOST_UNSUPPORTED,
            CheckError::GuestPanic { .. } => exit::VM_GUEST_PANIC,
            CheckError::Timeout { .. } => exit::VM_BOOT_TIMEOUT,
            CheckError::GuestEnded { .. } | CheckError::Teardown(_) => exit::VM_GUEST_FAILED,
            CheckError::Agent(_) => exit::VM_AGENT_PROTOCOL,
            // As a shell reports a command ended by SIGINT.
            CheckError::Interrupted => 130,
            CheckError::Template(e) => e.exit_code(),
            CheckError::TemplateDevices => exit::USAGE,
            _ => exit::GENERAL,
        }
    }
}

/// Phase durations in milliseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Timings {
    pub vmm_start_to_kernel_entry_ms: f64,
    pub kernel_entry_to_agent_listening_ms: f64,
    pub agent_listening_to_handshake_ms: f64,
    pub boot_to_handshake_ms: f64,
    pub teardown_ms: f64,
    /// From the VMM's start to the agent's handshake when the VM was
    /// restored from a template (the kernel and agent phases are then 0).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restore_to_handshake_ms: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CheckReport {
    pub kernel: PathBuf,
    /// What was booted: the cached uncompressed vmlinux (PVH) or `kernel`.
    pub booted: PathBuf,
    pub kernel_release: String,
    pub initramfs: PathBuf,
    pub initramfs_cached: bool,
    pub host_protocol: String,
    pub agent_protocol: String,
    pub agent_version: String,
    pub guest_kernel_release: String,
    pub modules_loaded: Vec<String>,
    pub agent_init_ms: u64,
    pub health: HealthResponse,
    pub exit: String,
    pub timings: Timings,
    pub vmm_peak_rss_kib: u64,
    /// The part of the peak RSS that is guest memory the guest touched.
    pub guest_rss_kib: u64,
    /// The template the VM was restored from, if it was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
}

impl CheckReport {
    pub fn render(&self, w: &mut dyn Write) -> std::io::Result<()> {
        let t = &self.timings;
        writeln!(w, "amphi vm check: ok")?;
        writeln!(w, "  kernel          {} ({})", self.kernel.display(), self.kernel_release)?;
        if self.booted != self.kernel {
            writeln!(w, "  booted as       {} (PVH entry, uncompressed)", self.booted.display())?;
        }
        writeln!(
            w,
            "  initramfs       {}{}",
            self.initramfs.display(),
            if self.initramfs_cached { " (cached)" } else { " (built)" }
        )?;
        writeln!(w, "agent report")?;
        writeln!(w, "  agent version   {}", self.agent_version)?;
        writeln!(w, "  protocol        agent {}, host {}", self.agent_protocol, self.host_protocol)?;
        writeln!(w, "  guest kernel    {}", self.guest_kernel_release)?;
        writeln!(w, "  modules loaded  {}", self.modules_loaded.join(" "))?;
        writeln!(w, "  agent init      {} ms", self.agent_init_ms)?;
        let h = &self.health;
        writeln!(
            w,
            "  health          up {} ms, {} vCPU(s), {} MiB memory ({} MiB available), {} zombies reaped",
            h.uptime_ms,
            h.online_cpus,
            h.mem_total_kib / 1024,
            h.mem_available_kib / 1024,
            h.zombies_reaped
        )?;
        writeln!(w, "  shutdown        {}", self.exit)?;
        writeln!(w, "time breakdown")?;
        if let Some(key) = &self.template {
            writeln!(w, "  restored from the template {key}")?;
        }
        writeln!(w, "  VMM start -> kernel entry        {:9.1} ms", t.vmm_start_to_kernel_entry_ms)?;
        writeln!(w, "  kernel entry -> agent listening  {:9.1} ms", t.kernel_entry_to_agent_listening_ms)?;
        writeln!(w, "  agent listening -> handshake     {:9.1} ms", t.agent_listening_to_handshake_ms)?;
        writeln!(w, "  VMM start -> handshake done      {:9.1} ms", t.boot_to_handshake_ms)?;
        writeln!(w, "  teardown (shutdown -> VMM gone)  {:9.1} ms", t.teardown_ms)?;
        writeln!(
            w,
            "VMM peak RSS: {:.1} MiB ({:.1} MiB guest memory the guest touched, {:.1} MiB the VMM's own)",
            self.vmm_peak_rss_kib as f64 / 1024.0,
            self.guest_rss_kib as f64 / 1024.0,
            self.vmm_peak_rss_kib.saturating_sub(self.guest_rss_kib) as f64 / 1024.0
        )
    }
}

/// A directory removed (with everything in it) when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> std::io::Result<Self> {
        let template = std::env::temp_dir().join("amphi-vm-XXXXXX");
        nix::unistd::mkdtemp(&template).map(TempDir).map_err(std::io::Error::from)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The VMM child, killed and reaped when dropped.
struct VmmChild(Option<Child>);

impl VmmChild {
    fn wait_timeout(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        let child = self.0.as_mut()?;
        loop {
            if let Ok(Some(s)) = child.try_wait() {
                self.0 = None;
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for VmmChild {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub(crate) fn tail(path: Option<&Path>, n: usize) -> Vec<String> {
    let Some(text) = path.and_then(|p| std::fs::read(p).ok()) else {
        return Vec::new();
    };
    let text = String::from_utf8_lossy(&text);
    let lines: Vec<String> =
        text.lines().map(|l| l.trim_end_matches('\r').to_string()).filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].to_vec()
}

/// How often waits look at the cancel flag.
const CANCEL_POLL: Duration = Duration::from_millis(100);

/// What ended a wait for the VMM's next event.
enum WaitEnd {
    Timeout,
    Disconnected,
    Cancelled,
}

/// Waits for the next event until `deadline`, giving up early if `cancel`
/// is set.
fn next_event(
    rx: &mpsc::Receiver<(Instant, ChildEvent)>,
    deadline: Instant,
    cancel: Option<&AtomicBool>,
) -> Result<(Instant, ChildEvent), WaitEnd> {
    loop {
        if cancel.is_some_and(|c| c.load(Ordering::Relaxed)) {
            return Err(WaitEnd::Cancelled);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left.min(CANCEL_POLL)) {
            Ok(e) => return Ok(e),
            Err(RecvTimeoutError::Timeout) if left > CANCEL_POLL => continue,
            Err(RecvTimeoutError::Timeout) => return Err(WaitEnd::Timeout),
            Err(RecvTimeoutError::Disconnected) => return Err(WaitEnd::Disconnected),
        }
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Runs the whole check. `progress` hears about slow steps.
/// The VMM child's events, with their arrival times.
type EventRx = mpsc::Receiver<(Instant, ChildEvent)>;

/// Starts `amphi vm run-vmm` with `args` (its event pipe filled in) in a
/// process group of its own; events arrive on the returned channel.
fn spawn_vmm(
    binary: &Path,
    args: &mut ChildArgs,
    console_on_stdout: bool,
) -> Result<(VmmChild, EventRx, std::thread::JoinHandle<()>), CheckError> {
    let (read_end, write_end) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| CheckError::TempDir(e.into()))?;
    nix::fcntl::fcntl(write_end.as_fd(), nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()))
        .map_err(|e| CheckError::TempDir(e.into()))?;
    // Its write end is made inheritable just for the spawn: another thread
    // spawning at that moment would inherit it too, which is why nothing
    // waits for the pipe's EOF.
    args.event_fd = write_end.as_raw_fd();
    let spawned = Command::new(binary)
        .args(args.to_argv())
        .stdin(Stdio::null())
        .stdout(if console_on_stdout { Stdio::inherit() } else { Stdio::null() })
        .stderr(Stdio::inherit())
        .process_group(0)
        .spawn()
        .map_err(|source| CheckError::Spawn { binary: binary.to_path_buf(), source });
    drop(write_end);
    let child = VmmChild(Some(spawned?));
    let (tx, rx) = mpsc::channel();
    let reader = process::spawn_reader(std::fs::File::from(read_end), tx);
    Ok((child, rx, reader))
}

/// How a template is booted: the guest, the VM's size, and the devices
/// every container VM has (vsock, the `amphi` share, the balloon), so that
/// container VMs can start from it.
#[derive(Debug, Clone)]
pub struct TemplateBoot {
    /// The kernel as the VMM loads it (the boot ELF).
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
    /// The command line of the VMs restored from it, without the word
    /// that makes the boot a template (`agent::TEMPLATE_CMDLINE_WORD`).
    pub cmdline: String,
    pub memory_mib: u64,
    pub cpus: u8,
    pub free_page_reporting: bool,
    pub kvm_path: PathBuf,
    pub vmm_binary: PathBuf,
    /// From VMM start to the saved template.
    pub timeout: Duration,
}

impl TemplateBoot {
    /// The template's own command line: what is in its memory.
    pub fn template_cmdline(&self) -> String {
        format!("{} {}", self.cmdline, crate::agent::TEMPLATE_CMDLINE_WORD)
    }

    /// The VMM's arguments for a VM with this template's devices.
    pub fn child_args(&self, uds: PathBuf, serial: Option<PathBuf>, share: &Path) -> ChildArgs {
        ChildArgs {
            kernel: self.kernel.clone(),
            initrd: self.initramfs.clone(),
            cmdline: self.template_cmdline(),
            memory_mib: self.memory_mib,
            cpus: self.cpus,
            serial,
            vsock_uds: uds,
            vsock_cid: crate::vm::devices::virtio::vsock::DEFAULT_GUEST_CID,
            event_fd: -1,
            kvm_path: self.kvm_path.clone(),
            shares: vec![crate::vm::vmm::FsShare {
                tag: crate::vm::sandbox::plan::SHARE_TAG.into(),
                path: share.to_path_buf(),
                read_only: false,
            }],
            disks: Vec::new(),
            nets: Vec::new(),
            balloon: Some(self.free_page_reporting),
            template_out: None,
            restore: None,
        }
    }

    /// The virtio devices, as the template's state names them.
    pub fn devices(&self) -> Vec<String> {
        let args = self.child_args(PathBuf::new(), None, Path::new("/"));
        args.into_config().map(|c| crate::vm::vmm::persist::device_names(&c)).unwrap_or_default()
    }
}

/// Boots `boot` cold and has the VMM save it into `dir` once the agent
/// listens; the console goes to `dir/console.log`. Returns how long it took.
pub fn build_template(boot: &TemplateBoot, dir: &Path, cancel: Option<&AtomicBool>) -> Result<Duration, CheckError> {
    let tmp = TempDir::new().map_err(CheckError::TempDir)?;
    let share = tmp.0.join("share");
    std::fs::create_dir(&share).map_err(CheckError::TempDir)?;
    let console = dir.join("console.log");
    let console_tail = || tail(Some(&console), 15);
    let mut args = boot.child_args(tmp.0.join("vsock.sock"), Some(console.clone()), &share);
    args.template_out = Some(dir.to_path_buf());
    let t0 = Instant::now();
    let (mut child, rx, _reader) = spawn_vmm(&boot.vmm_binary, &mut args, false)?;
    let deadline = t0 + boot.timeout;
    let mut panic_line = None;
    loop {
        match next_event(&rx, deadline, cancel) {
            Ok((_, ChildEvent::GuestPanic { line })) => panic_line = Some(line),
            Ok((_, ChildEvent::Error { message })) => return Err(CheckError::Vmm { message, console: console_tail() }),
            Ok((_, ChildEvent::Exit { reason, panic, .. })) => {
                child.wait_timeout(TEARDOWN_TIMEOUT);
                if reason == "snapshotted" {
                    return Ok(t0.elapsed());
                }
                if let Some(line) = panic.or(panic_line) {
                    return Err(CheckError::GuestPanic { line, console: console_tail() });
                }
                if reason == "emulation_failure" {
                    return Err(CheckError::Emulation);
                }
                return Err(CheckError::GuestEnded { reason, console: console_tail() });
            }
            Ok(_) => {}
            Err(WaitEnd::Cancelled) => return Err(CheckError::Interrupted),
            Err(WaitEnd::Timeout) => {
                return Err(CheckError::Timeout {
                    timeout: boot.timeout,
                    phase: "the template was not saved",
                    console: console_tail(),
                })
            }
            Err(WaitEnd::Disconnected) => {
                let status = child.wait_timeout(Duration::from_secs(1));
                return Err(CheckError::Vmm {
                    message: format!("the VMM process exited ({status:?}) without reporting why"),
                    console: console_tail(),
                });
            }
        }
    }
}

pub fn check(opts: &CheckOptions, progress: &mut dyn FnMut(&str)) -> Result<CheckReport, CheckError> {
    host::check(&SystemHost, &opts.kvm_path)?;
    if opts.memory_mib < MIN_MEM_MIB {
        return Err(CheckError::Memory { memory: opts.memory_mib });
    }
    if opts.cpus == 0 || opts.cpus == 255 {
        return Err(CheckError::Cpus(u32::from(opts.cpus)));
    }
    let guest = guest::resolve(
        &GuestOptions {
            kernel: opts.kernel.clone(),
            modules: opts.modules.clone(),
            agent: opts.agent.clone(),
            cache_dir: opts.cache_dir.clone(),
            exe: opts.vmm_binary.clone(),
        },
        progress,
    )?;
    let Guest { kernel: kernel_path, boot_kernel, release, initramfs, initramfs_cached } = guest;

    let tmp = TempDir::new().map_err(CheckError::TempDir)?;
    let uds = tmp.0.join("vsock.sock");
    let (console_file, serial_arg) = match &opts.console {
        ConsoleTarget::Temporary => (Some(tmp.0.join("console.log")), Some(tmp.0.join("console.log"))),
        ConsoleTarget::Stdout => (None, Some(PathBuf::from("-"))),
        ConsoleTarget::File(p) => (Some(p.clone()), Some(p.clone())),
    };
    let console_tail = || tail(console_file.as_deref(), 15);

    let template = if opts.template {
        if !opts.disks.is_empty() || !opts.nets.is_empty() {
            return Err(CheckError::TemplateDevices);
        }
        let cache = crate::vm::template::Cache::in_cache_dir(&opts.cache_dir);
        let builder = crate::vm::template::vmm::VmmBuilder {
            kvm_path: opts.kvm_path.clone(),
            vmm_binary: opts.vmm_binary.clone(),
            kernel_args: opts.append.clone(),
            free_page_reporting: true,
            fingerprint_dir: cache.root().to_path_buf(),
        };
        let guest = Guest {
            kernel: kernel_path.clone(),
            boot_kernel: boot_kernel.clone(),
            release: release.clone(),
            initramfs: initramfs.clone(),
            initramfs_cached,
        };
        let built = crate::vm::template::build_for(&cache, &guest, opts.memory_mib, opts.cpus, &builder, progress)
            .map_err(CheckError::Template)?;
        Some((built.template, builder))
    } else {
        None
    };

    let mut args = ChildArgs {
        kernel: boot_kernel.clone(),
        initrd: initramfs.clone(),
        cmdline: match &opts.append {
            Some(extra) => format!("{} {extra}", crate::vm::GUEST_CMDLINE),
            None => crate::vm::GUEST_CMDLINE.into(),
        },
        memory_mib: opts.memory_mib,
        cpus: opts.cpus,
        serial: serial_arg,
        vsock_uds: uds.clone(),
        vsock_cid: crate::vm::devices::virtio::vsock::DEFAULT_GUEST_CID,
        event_fd: -1,
        kvm_path: opts.kvm_path.clone(),
        shares: Vec::new(),
        disks: opts.disks.clone(),
        nets: opts.nets.clone(),
        balloon: None,
        template_out: None,
        restore: None,
    };
    if let Some((t, builder)) = &template {
        let share = tmp.0.join("share");
        std::fs::create_dir(&share).map_err(CheckError::TempDir)?;
        args = builder.boot_args(&t.manifest.inputs, uds.clone(), args.serial.clone(), &share);
        args.restore = Some(t.dir.clone());
    }
    let t0 = Instant::now();
    let (mut child, rx, reader) = spawn_vmm(&opts.vmm_binary, &mut args, opts.console == ConsoleTarget::Stdout)?;

    let deadline = t0 + opts.timeout;
    let mut kernel_entry = None;
    let mut listening = None;
    let mut panic_line = None;
    // Phase 1: until the agent says it listens.
    let cancel = opts.cancel;
    while listening.is_none() {
        match next_event(&rx, deadline, cancel) {
            Ok((t, ChildEvent::KernelEntry)) => kernel_entry = Some(t),
            Ok((t, ChildEvent::AgentListening)) => listening = Some(t),
            // A restored agent listens already: no kernel entry, no line.
            Ok((t, ChildEvent::Restored)) => (kernel_entry, listening) = (Some(t), Some(t)),
            Ok((_, ChildEvent::GuestPanic { line })) => panic_line = Some(line),
            Ok((_, ChildEvent::Error { message })) => {
                return Err(CheckError::Vmm { message, console: console_tail() });
            }
            Ok((_, ChildEvent::Exit { reason, panic, .. })) => {
                drop(child);
                if let Some(line) = panic.or(panic_line) {
                    return Err(CheckError::GuestPanic { line, console: console_tail() });
                }
                if reason == "emulation_failure" {
                    return Err(CheckError::Emulation);
                }
                return Err(CheckError::GuestEnded { reason, console: console_tail() });
            }
            Err(WaitEnd::Cancelled) => return Err(CheckError::Interrupted),
            Err(WaitEnd::Timeout) => {
                drop(child);
                if let Some(line) = panic_line {
                    return Err(CheckError::GuestPanic { line, console: console_tail() });
                }
                let phase = if kernel_entry.is_some() {
                    "the kernel booted but the agent never said it listens"
                } else {
                    "the kernel was never entered"
                };
                return Err(CheckError::Timeout { timeout: opts.timeout, phase, console: console_tail() });
            }
            Err(WaitEnd::Disconnected) => {
                let status = child.wait_timeout(Duration::from_secs(1));
                return Err(CheckError::Vmm {
                    message: format!("the VMM process exited ({status:?}) without reporting why"),
                    console: console_tail(),
                });
            }
        }
    }
    let kernel_entry = kernel_entry.unwrap_or(t0);
    let listening = listening.unwrap_or(kernel_entry);

    // Phase 2: the handshake over vsock.
    let timeout_err = |phase| CheckError::Timeout { timeout: opts.timeout, phase, console: console_tail() };
    let stream = agent_client::connect(&uds, AGENT_VSOCK_PORT, deadline).map_err(|e| match e {
        AgentClientError::Connect { .. } => timeout_err("the agent listens but did not accept a vsock connection"),
        e => CheckError::Agent(e),
    })?;
    let mut client = AgentClient::new(stream);
    let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(100));
    client.set_timeout(Some(left));
    let hello: HandshakeResponse = client.handshake().map_err(CheckError::Agent)?;
    let handshake_done = Instant::now();
    if template.is_some() {
        client.announce_restore().map_err(CheckError::Agent)?;
    }
    let health = client.health().map_err(CheckError::Agent)?;

    // Phase 3: power off, and wait for the VMM to be gone.
    let teardown_start = Instant::now();
    client.shutdown(ShutdownAction::PowerOff).map_err(CheckError::Agent)?;
    drop(client);
    let mut exit_reason = None;
    let mut peak = 0;
    let mut guest_rss = 0;
    let teardown_deadline = Instant::now() + TEARDOWN_TIMEOUT;
    while exit_reason.is_none() {
        match next_event(&rx, teardown_deadline, cancel) {
            Ok((_, ChildEvent::Exit { reason, peak_rss_kib, guest_rss_kib, .. })) => {
                exit_reason = Some(reason);
                peak = peak_rss_kib;
                guest_rss = guest_rss_kib;
            }
            Ok(_) => {}
            Err(WaitEnd::Cancelled) => return Err(CheckError::Interrupted),
            Err(WaitEnd::Timeout) => return Err(CheckError::Teardown(TEARDOWN_TIMEOUT)),
            Err(WaitEnd::Disconnected) => break,
        }
    }
    child.wait_timeout(TEARDOWN_TIMEOUT).ok_or(CheckError::Teardown(TEARDOWN_TIMEOUT))?;
    let teardown_end = Instant::now();
    // The reader ends by itself at EOF; joining could wait on a process that
    // inherited the pipe's write end in the spawn window (see above).
    drop(reader);
    let exit = match exit_reason.as_deref() {
        Some("power_off") => "guest powered off cleanly".to_string(),
        Some(other) => {
            return Err(CheckError::GuestEnded {
                reason: format!("{other} instead of a power-off"),
                console: console_tail(),
            })
        }
        None => {
            return Err(CheckError::Vmm { message: "the VMM exited without reporting".into(), console: console_tail() })
        }
    };

    Ok(CheckReport {
        kernel: kernel_path,
        booted: boot_kernel,
        kernel_release: release,
        initramfs,
        initramfs_cached,
        host_protocol: PROTOCOL_VERSION.to_string(),
        agent_protocol: hello.protocol.to_string(),
        agent_version: hello.agent_version,
        guest_kernel_release: hello.kernel_release,
        modules_loaded: hello.modules_loaded,
        agent_init_ms: hello.agent_init_ms,
        health,
        exit,
        timings: Timings {
            vmm_start_to_kernel_entry_ms: ms(kernel_entry - t0),
            kernel_entry_to_agent_listening_ms: ms(listening - kernel_entry),
            agent_listening_to_handshake_ms: ms(handshake_done - listening),
            boot_to_handshake_ms: ms(handshake_done - t0),
            teardown_ms: ms(teardown_end - teardown_start),
            restore_to_handshake_ms: template.is_some().then(|| ms(handshake_done - t0)),
        },
        vmm_peak_rss_kib: peak,
        guest_rss_kib: guest_rss,
        template: template.map(|(t, _)| t.key.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_map_to_stable_exit_codes() {
        assert_eq!(CheckError::Emulation.exit_code(), exit::VM_HOST_UNSUPPORTED);
        let t = CheckError::Timeout { timeout: Duration::from_secs(1), phase: "p", console: vec![] };
        assert_eq!(t.exit_code(), exit::VM_BOOT_TIMEOUT);
        let p = CheckError::GuestPanic { line: "Kernel panic".into(), console: vec!["a".into()] };
        assert_eq!(p.exit_code(), exit::VM_GUEST_PANIC);
        assert!(p.to_string().contains("last guest console lines:\n  a"));
    }

    #[test]
    fn the_console_tail_skips_blank_lines() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("c");
        std::fs::write(&f, "a\r\n\nb\nc\n").unwrap();
        assert_eq!(tail(Some(&f), 2), vec!["b", "c"]);
        assert!(tail(None, 2).is_empty());
    }

    #[test]
    fn the_temp_dir_is_removed_with_its_contents() {
        let t = TempDir::new().unwrap();
        let p = t.0.clone();
        std::fs::write(p.join("vsock.sock"), b"").unwrap();
        drop(t);
        assert!(!p.exists());
    }
}
