//! The VMM process of one VM container: what it does besides running the
//! VM. `create` forks it (no exec: the fork is cheap and needs no path to
//! a binary); it is the container's pid in `state` and outlives `create`.
//!
//! Before the VM starts, still single-threaded, it
//! - leaves the caller's session (signals for the workload reach it
//!   through `kill`, or through `run`'s forwarding, and it forwards them
//!   to the guest),
//! - joins the container's cgroup on the host,
//! - joins (or makes) the container's network namespace and opens the
//!   VM's TAPs there (`network`), and makes IPC and UTS namespaces of its
//!   own (a pod's containers name the sandbox's by the VMM's pid),
//! - closes every descriptor it does not need (a client's sync pipe must
//!   not be held open by the VMM, nor the container's lock),
//! - makes a private mount namespace holding the virtio-fs share: a small
//!   tmpfs with the rootfs and each bind-mount source bind-mounted into it,
//!   so nothing is mounted on the host and nothing is left when it ends,
//! - takes the host pty as its controlling terminal, so window size
//!   changes reach it as SIGWINCH,
//! - jails itself (`vm::jail`): its own root, fewer capabilities, rlimits,
//!   a seccomp filter per thread.
//!
//! Then it runs the VM, relays stdio, waits (through the agent) for the
//! workload to end and exits with the workload's status: its code, or the
//! same signal, so conmon, containerd and `amphi run` see what they would
//! see with runc.

use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::mount::{mount, MsFlags};
use nix::sys::signal::{SigSet, Signal};

use super::network::{Namespace, NetPlan};
use super::plan::ShareEntry;
use super::stdio::{self, Local};
use crate::agent::container::{ExitStatus, ResizeRequest, SignalRequest, StreamKind, WaitRequest};
use crate::linux::cgroups::Join;
use crate::vm::agent_client::AgentClient;
use crate::vm::devices::virtio::net::tap::Tap;
use crate::vm::jail::{self, seccomp::ThreadKind};
use crate::vm::process::{self, ChildEvent};
use crate::vm::vmm::{self, SerialOutput, TapFd, VmmConfig, VmmEvent};

/// Everything the VMM process needs, prepared by `create`.
pub struct VmmPlan {
    pub id: String,
    /// The VMM's host paths; rewritten to the paths inside its root.
    pub config: VmmConfig,
    /// The directory that becomes the VMM's root (`vm::jail::root`).
    pub root: PathBuf,
    pub entries: Vec<ShareEntry>,
    pub session: String,
    pub streams: Vec<StreamKind>,
    pub local: Local,
    /// Write end of the event pipe to `create` (JSON lines).
    pub events: OwnedFd,
    /// Read end of the control pipe from `create`: one byte once the
    /// container exists; EOF before it means `create` failed or died.
    pub control: OwnedFd,
    pub join: Join,
    /// The network namespace to live in, and the TAPs to open there.
    pub net: NetPlan,
}

/// The signals the VMM forwards to the workload (those `run` forwards to
/// it, and those clients send to the container's pid directly).
pub const FORWARDED: &[Signal] = &[
    Signal::SIGHUP,
    Signal::SIGINT,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGTERM,
    Signal::SIGALRM,
    Signal::SIGCONT,
    Signal::SIGPWR,
    Signal::SIGWINCH,
];

/// How long the stdio streams may take to open once the agent listens.
const ATTACH_DEADLINE: Duration = Duration::from_secs(30);

struct Events(Mutex<std::fs::File>);

impl Events {
    fn send(&self, e: &ChildEvent) {
        if let Ok(mut line) = serde_json::to_vec(e) {
            line.push(b'\n');
            let mut f = self.0.lock().unwrap_or_else(|e| e.into_inner());
            let _ = f.write_all(&line);
        }
    }
}

/// Closes every descriptor above 2 except `keep`.
pub(super) fn close_others(keep: &[RawFd]) {
    let fds: Vec<RawFd> = match std::fs::read_dir("/proc/self/fd") {
        Ok(d) => d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect(),
        Err(_) => return,
    };
    for fd in fds {
        if fd > 2 && !keep.contains(&fd) {
            // SAFETY: closing a descriptor nothing else in this (still
            // single-threaded) process uses; the directory handle used
            // for the listing is gone already.
            unsafe { libc::close(fd) };
        }
    }
}

/// Joins or makes the VMM's network namespace and opens its TAPs there
/// (`config.nets` gets their descriptors).
fn enter_network(net: &NetPlan, config: &mut VmmConfig) -> Result<(), String> {
    use nix::sched::CloneFlags;
    match &net.namespace {
        Namespace::Host => {}
        Namespace::New => {
            nix::sched::unshare(CloneFlags::CLONE_NEWNET).map_err(|e| format!("make a network namespace: {e}"))?
        }
        Namespace::Path(p) => {
            let f = std::fs::File::open(p).map_err(|e| format!("open the network namespace {}: {e}", p.display()))?;
            nix::sched::setns(&f, CloneFlags::CLONE_NEWNET)
                .map_err(|e| format!("join the network namespace {}: {e}", p.display()))?;
        }
    }
    for n in &mut config.nets {
        let tap = Tap::open(&n.tap).map_err(|e| crate::logging::chain(&e))?;
        n.fd = Some(TapFd(Arc::new(tap.into_fd())));
    }
    Ok(())
}

/// The share: a private tmpfs with each entry bind-mounted into it, in the
/// VMM's mount namespace (made by `jail::root::prepare`).
fn mount_share(root: &Path, entries: &[ShareEntry]) -> Result<(), String> {
    std::fs::create_dir_all(root).map_err(|e| format!("create {}: {e}", root.display()))?;
    mount(Some("amphi-share"), root, Some("tmpfs"), MsFlags::MS_NOSUID | MsFlags::MS_NODEV, Some("mode=0755,size=1m"))
        .map_err(|e| format!("mount the share's tmpfs on {}: {e}", root.display()))?;
    for e in entries {
        let target = root.join(&e.name);
        if let Some(parent) = target.parent().filter(|p| *p != root) {
            std::fs::create_dir_all(parent).map_err(|err| format!("create {}: {err}", parent.display()))?;
        }
        let is_dir = std::fs::metadata(&e.source).map(|m| m.is_dir()).unwrap_or(false);
        let made = if is_dir { std::fs::create_dir(&target) } else { std::fs::write(&target, b"") };
        made.map_err(|err| format!("create {}: {err}", target.display()))?;
        let mut flags = MsFlags::MS_BIND;
        if e.recursive {
            flags |= MsFlags::MS_REC;
        }
        mount(Some(&e.source), &target, None::<&str>, flags, None::<&str>)
            .map_err(|err| format!("bind {} into the share: {err}", e.source.display()))?;
        if e.read_only {
            mount(
                None::<&str>,
                &target,
                None::<&str>,
                MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY,
                None::<&str>,
            )
            .map_err(|err| format!("make {} read-only: {err}", e.source.display()))?;
        }
    }
    Ok(())
}

/// Makes the pty slave our controlling terminal, in raw mode: the guest's
/// pty does the line discipline, this one only carries bytes. It also
/// becomes our stdin, stdout and stderr, as runc's init gets the pty for
/// its stdio: the ones inherited from `create` may be a pipe its caller
/// reads to EOF (go-runc does, for containerd's runc shim), which must not
/// stay open for the container's whole life.
pub(super) fn take_terminal(slave: &OwnedFd) -> Result<(), String> {
    // SAFETY: TIOCSCTTY with argument 0 on a terminal fd; we are a session
    // leader without a controlling terminal.
    if unsafe { libc::ioctl(slave.as_raw_fd(), libc::TIOCSCTTY, 0) } < 0 {
        return Err(format!("TIOCSCTTY: {}", std::io::Error::last_os_error()));
    }
    for fd in 0..=2 {
        // SAFETY: dup2 of an fd we own onto a standard descriptor, which
        // nothing in this process holds a handle to.
        if unsafe { libc::dup2(slave.as_raw_fd(), fd) } < 0 {
            return Err(format!("dup2 onto fd {fd}: {}", std::io::Error::last_os_error()));
        }
    }
    let mut t = nix::sys::termios::tcgetattr(slave.as_fd()).map_err(|e| format!("tcgetattr: {e}"))?;
    nix::sys::termios::cfmakeraw(&mut t);
    nix::sys::termios::tcsetattr(slave.as_fd(), nix::sys::termios::SetArg::TCSANOW, &t)
        .map_err(|e| format!("tcsetattr: {e}"))
}

pub(super) fn window_of(fd: &OwnedFd) -> Option<(u16, u16)> {
    let mut ws = libc::winsize { ws_row: 0, ws_col: 0, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: TIOCGWINSZ writes one winsize into the struct we own.
    (unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCGWINSZ, &mut ws) } == 0).then_some((ws.ws_row, ws.ws_col))
}

/// Ends this process the way the workload ended.
pub(super) fn exit_like(status: ExitStatus) -> ! {
    if let Some(sig) = status.signal.and_then(|s| Signal::try_from(s).ok()) {
        // No core dump of the VMM (it would hold guest memory).
        let _ = nix::sys::prctl::set_dumpable(false);
        let _ = nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_CORE, 0, 0);
        // SAFETY: restoring the default action of a signal.
        let _ = unsafe { nix::sys::signal::signal(sig, nix::sys::signal::SigHandler::SigDfl) };
        let mut set = SigSet::empty();
        set.add(sig);
        let _ = set.thread_unblock();
        let _ = nix::sys::signal::kill(nix::unistd::getpid(), sig);
        std::thread::sleep(Duration::from_millis(100));
    }
    std::process::exit(status.code & 0xff)
}

/// Body of the forked VMM process. Never returns into the caller's code.
pub fn run(plan: VmmPlan) -> i32 {
    let VmmPlan { id, mut config, root, entries, session, streams, local, events, control, join, net } = plan;
    let events = Arc::new(Events(Mutex::new(std::fs::File::from(events))));
    let fail = |what: &str, e: String| {
        events.send(&ChildEvent::Error { message: format!("{what}: {e}") });
        1
    };
    crate::logging::timing("vmm:forked");
    let _ = nix::unistd::setsid();
    if let Err(e) = join.join_self() {
        return fail("cannot join the container's cgroup", crate::logging::chain(&e));
    }
    // The network namespace first: hooks find it through this pid, and the
    // TAPs need CAP_NET_ADMIN there, which the jail drops.
    if let Err(e) = enter_network(&net, &mut config) {
        return fail("cannot set up the VM's network", e);
    }
    // IPC and UTS namespaces of its own: the VMM uses neither, and a pod's
    // containers name the sandbox's by the VMM's pid (`super::pod`), which
    // must then be the sandbox's and not the host's.
    if let Err(e) = nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWIPC | nix::sched::CloneFlags::CLONE_NEWUTS) {
        return fail("cannot make the VMM's IPC and UTS namespaces", e.to_string());
    }
    let mut keep = vec![events.0.lock().unwrap_or_else(|e| e.into_inner()).as_raw_fd(), control.as_raw_fd()];
    keep.extend(config.nets.iter().filter_map(|n| n.fd.as_ref().map(|f| f.0.as_raw_fd())));
    if let Local::Tty(t) = &local {
        keep.push(t.as_raw_fd());
    }
    keep.extend(crate::logging::timing_fd());
    // The template's memory, opened before the jail (which has no path to it).
    if let Some(crate::vm::vmm::TemplateMode::Restore(src)) = &config.template {
        keep.push(src.memory.as_raw_fd());
    }
    drop(join);
    close_others(&keep);
    // Guest memory stats read it once /proc is out of reach (memory.rs).
    let _ = crate::vm::vmm::memory::keep_smaps();
    process::limit_open_files();
    if let Err(e) = jail::root::prepare(&root) {
        return fail("cannot prepare the VMM's root", crate::logging::chain(&e));
    }
    if let Err(e) = mount_share(&jail::root::host_path(&root, jail::root::SHARE), &entries) {
        return fail("cannot prepare the container's virtio-fs share", e);
    }
    if let Local::Tty(t) = &local {
        if let Err(e) = take_terminal(t) {
            return fail("cannot take the container's terminal", e);
        }
    }
    let disks: Vec<(PathBuf, bool)> = config.disks.iter().map(|d| (d.path.clone(), d.read_only)).collect();
    let entered = jail::root::enter(&jail::root::RootPlan {
        dir: &root,
        kvm: &config.kvm_path,
        kernel: &config.kernel,
        initrd: config.initrd.as_deref(),
        disks: &disks,
    });
    if let Err(e) = entered {
        return fail("cannot move the VMM into its root", crate::logging::chain(&e));
    }
    config.kvm_path = jail::root::KVM.into();
    config.kernel = jail::root::KERNEL.into();
    config.initrd = config.initrd.map(|_| jail::root::INITRD.into());
    config.serial = SerialOutput::File(jail::root::CONSOLE_LOG.into());
    if let Some(vs) = config.vsock.as_mut() {
        vs.uds_path = jail::root::VSOCK.into();
    }
    if config.api.is_some() {
        config.api = Some(jail::root::API.into());
    }
    for share in &mut config.shares {
        share.path = jail::root::SHARE.into();
    }
    for (i, disk) in config.disks.iter_mut().enumerate() {
        disk.path = jail::root::disk_path(i);
    }
    let uds = PathBuf::from(jail::root::VSOCK);
    // Setup needed root's every power (the share's mounts, the root);
    // running the guest does not.
    if let Err(e) = jail::seccomp::prepare() {
        return fail("cannot prepare the VMM's seccomp filters", crate::logging::chain(&e));
    }
    if let Err(e) = jail::confine() {
        return fail("cannot confine the VMM", crate::logging::chain(&e));
    }
    let sigs = forwarded_set();
    // Blocked here, before any thread exists, so every thread inherits it
    // and only the forwarder takes them.
    let _ = sigs.thread_block();

    let stop = Arc::new(AtomicBool::new(false));
    let status: Arc<Mutex<Option<ExitStatus>>> = Arc::new(Mutex::new(None));
    let (tx, rx) = mpsc::channel::<VmmEvent>();

    // create's verdict: a byte means the container exists; EOF first means
    // create failed or was killed, and the VM must go.
    {
        let stop = stop.clone();
        let _ = std::thread::Builder::new().name("control".into()).spawn(move || {
            jail::seccomp::enter_or_exit(ThreadKind::Io);
            let mut b = [0u8; 1];
            let ok = matches!(nix::unistd::read(control.as_fd(), &mut b), Ok(1));
            if !ok {
                stop.store(true, Ordering::Release);
            }
        });
    }
    let tty = match &local {
        Local::Tty(t) => t.try_clone().ok(),
        Local::Inherited => None,
    };
    {
        let (uds, session, id, stop, status) = (uds.clone(), session, id.clone(), stop.clone(), status.clone());
        let _ = std::thread::Builder::new().name("supervisor".into()).spawn(move || {
            // Its stdio relays inherit this filter.
            jail::seccomp::enter_or_exit(ThreadKind::Io);
            // A restored agent listens from the first instruction on.
            if !rx.iter().any(|e| matches!(e, VmmEvent::AgentListening | VmmEvent::Restored)) {
                return;
            }
            let deadline = Instant::now() + ATTACH_DEADLINE;
            let relays = match stdio::attach(&uds, &session, &streams, local, deadline) {
                Ok(r) => r,
                Err(_) => return,
            };
            let Ok(mut client) = AgentClient::connect(&uds, deadline) else { return };
            if let Ok(s) = client.wait(WaitRequest { id: id.clone(), exec_id: None }) {
                crate::logging::timing("vmm:exit_seen");
                if let Err(e) = relays.finish(stdio::FLUSH_IDLE) {
                    let _ = writeln!(std::io::stderr(), "amphi: container {id}: {e}");
                }
                *status.lock().unwrap_or_else(|e| e.into_inner()) = Some(s);
                stop.store(true, Ordering::Release);
            }
        });
    }
    {
        let (uds, id) = (uds.clone(), id.clone());
        let _ = std::thread::Builder::new().name("signals".into()).spawn(move || {
            jail::seccomp::enter_or_exit(ThreadKind::Io);
            forward_signals(&uds, &id, None, sigs, tty)
        });
    }

    let on_event = {
        let events = events.clone();
        let tx = Mutex::new(tx);
        Arc::new(move |e: VmmEvent| {
            match &e {
                VmmEvent::KernelEntry => crate::logging::timing("vmm:kernel_entry"),
                VmmEvent::Restored => crate::logging::timing("vmm:restored"),
                VmmEvent::AgentListening => crate::logging::timing("vmm:agent_listening"),
                VmmEvent::GuestPanic(_) => {}
            }
            events.send(&match &e {
                VmmEvent::KernelEntry => ChildEvent::KernelEntry,
                VmmEvent::Restored => ChildEvent::Restored,
                VmmEvent::AgentListening => ChildEvent::AgentListening,
                VmmEvent::GuestPanic(line) => ChildEvent::GuestPanic { line: line.clone() },
            });
            let _ = tx.lock().unwrap_or_else(|e| e.into_inner()).send(e);
        })
    };
    let outcome = vmm::run(&config, on_event, stop);
    let known = *status.lock().unwrap_or_else(|e| e.into_inner());
    crate::logging::timing("vmm:vm_stopped");
    if std::env::var_os(crate::logging::TIMING_ENV).is_some() {
        crate::logging::timing(&format!("vmm:peak_rss_kib={}", process::peak_rss_kib()));
        let guest = outcome.as_ref().map(|o| o.guest_resident_kib).unwrap_or(0);
        crate::logging::timing(&format!("vmm:guest_rss_kib={guest}"));
    }
    if let Some(s) = known {
        exit_like(s);
    }
    // The VM ended before the workload was seen to end: say why, on the
    // container's stderr as runc reports its own failures there.
    let (message, code) = match outcome {
        Ok(o) => {
            events.send(&ChildEvent::Exit {
                reason: process::reason_name(&o.reason),
                panic: o.panic.clone(),
                peak_rss_kib: process::peak_rss_kib(),
                guest_rss_kib: o.guest_resident_kib,
            });
            let code = process::exit_code(&o.reason, o.panic.is_some());
            let why = match &o.panic {
                Some(p) => format!("the guest kernel panicked: {p}"),
                None => format!("the VM ended ({})", process::reason_name(&o.reason)),
            };
            (why, code)
        }
        Err(e) => {
            let m = crate::logging::chain(&e);
            events.send(&ChildEvent::Error { message: m.clone() });
            (format!("the VMM failed: {m}"), crate::exit::GENERAL)
        }
    };
    let _ = writeln!(std::io::stderr(), "amphi: container {id}: {message}");
    i32::from(code)
}

/// The set of [`FORWARDED`] signals.
pub(super) fn forwarded_set() -> SigSet {
    let mut sigs = SigSet::empty();
    for s in FORWARDED {
        sigs.add(*s);
    }
    sigs
}

/// Takes the forwarded signals and hands them to the workload (or to the
/// exec'd process `exec_id`) through the agent; SIGWINCH becomes a window
/// size change.
pub(super) fn forward_signals(uds: &Path, id: &str, exec_id: Option<&str>, set: SigSet, tty: Option<OwnedFd>) {
    let mut client: Option<AgentClient> = None;
    loop {
        let Ok(sig) = set.wait() else { continue };
        if client.is_none() {
            client = AgentClient::connect(uds, Instant::now() + Duration::from_secs(5)).ok();
        }
        let Some(c) = client.as_mut() else { continue };
        let sent = if sig == Signal::SIGWINCH {
            match tty.as_ref().and_then(window_of) {
                Some((rows, cols)) => {
                    c.resize(ResizeRequest { id: id.into(), exec_id: exec_id.map(str::to_string), rows, cols })
                }
                None => Ok(()),
            }
        } else {
            c.signal(SignalRequest {
                id: id.into(),
                signal: sig as i32,
                all: false,
                exec_id: exec_id.map(str::to_string),
            })
        };
        if sent.is_err() {
            client = None;
        }
    }
}
