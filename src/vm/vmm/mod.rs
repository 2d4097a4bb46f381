//! amphi's VMM: one KVM VM with guest memory, an in-kernel irqchip and PIT,
//! the legacy devices (COM1, ACPI power/reset), virtio-mmio devices (vsock,
//! one virtio-fs device per shared directory, one virtio-blk device per
//! disk, a virtio-balloon device if asked for, one virtio-net device per
//! TAP), one thread per vCPU and an event loop (event-manager) on the
//! calling thread.
//! [`run`] boots the guest and returns when it powers off, resets,
//! crashes, or the caller stops it.

pub mod api;
pub mod cpuid;
pub mod memory;
pub mod persist;
pub mod snapshot;
pub mod vcpu;

use std::io::Write;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use event_manager::{EventManager, EventOps, EventSet, Events, MutEventSubscriber, SubscriberOps};
use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{IoEventAddress, Kvm, VmFd};
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, MemoryRegionAddress};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

use crate::vm::boot::{self, acpi, layout, params, regs, BootError, EntryPoint};
use crate::vm::devices::power::{PowerDevice, PowerEvent, PowerPort};
use crate::vm::devices::serial::log as serial_log;
use crate::vm::devices::serial::{
    CappedLog, ConsoleEvent, ConsoleOutput, ConsoleWatcher, SerialDevice, SerialSnapshot,
};
use crate::vm::devices::virtio::balloon::{BalloonConfig, BalloonHandle, VirtioBalloon};
use crate::vm::devices::virtio::block::{DiskError, VirtioBlock};
use crate::vm::devices::virtio::fs::{ShareError, VirtioFs};
use crate::vm::devices::virtio::mmio::{MmioTransport, NOTIFY_REG_OFFSET};
use crate::vm::devices::virtio::net::{TapError, VirtioNet};
use crate::vm::devices::virtio::vsock::{Vsock, VsockMuxer};
use crate::vm::devices::virtio::{VirtioDevice, VirtioInterrupt};
use crate::vm::devices::{Bus, IrqTrigger};

/// Where the guest console goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SerialOutput {
    Stdout,
    /// A log file, capped (`devices::serial::log`): the first 256 KiB and
    /// the latest 256 to 512 KiB of output.
    File(PathBuf),
    Discard,
}

#[derive(Debug, Clone)]
pub struct VsockConfig {
    pub guest_cid: u64,
    /// The host AF_UNIX socket; guest connections to port P go to `<path>_P`.
    pub uds_path: PathBuf,
}

/// A host directory the guest mounts with `mount -t virtiofs <tag> <dir>`,
/// served by a virtio-fs device in the VMM process. The guest's root acts
/// as root on the files (the VMM runs as root); with `read_only` every
/// change is refused with EROFS. Mount points inside `path` (bind mounts,
/// also of single files onto files) are followed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsShare {
    pub tag: String,
    pub path: PathBuf,
    pub read_only: bool,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ShareArgError {
    #[error("{0:?}: expected TAG=DIR or TAG=DIR:ro")]
    Syntax(String),
    #[error("{0:?}: the directory must be an absolute path")]
    Relative(String),
    #[error("{0}")]
    Tag(String),
}

/// `TAG=DIR[:ro]` (also `:rw`, so a directory whose name ends in `:ro` can
/// still be shared writable).
impl std::str::FromStr for FsShare {
    type Err = ShareArgError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (tag, rest) = s.split_once('=').ok_or_else(|| ShareArgError::Syntax(s.to_string()))?;
        crate::vm::devices::virtio::fs::check_tag(tag).map_err(|e| ShareArgError::Tag(e.to_string()))?;
        let (dir, read_only) = match rest.rsplit_once(':') {
            Some((d, "ro")) => (d, true),
            Some((d, "rw")) => (d, false),
            _ => (rest, false),
        };
        if dir.is_empty() {
            return Err(ShareArgError::Syntax(s.to_string()));
        }
        if !dir.starts_with('/') {
            return Err(ShareArgError::Relative(s.to_string()));
        }
        Ok(FsShare { tag: tag.to_string(), path: PathBuf::from(dir), read_only })
    }
}

impl std::fmt::Display for FsShare {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let dir = self.path.display().to_string();
        let mode = match (self.read_only, dir.ends_with(":ro") || dir.ends_with(":rw")) {
            (true, _) => ":ro",
            (false, true) => ":rw",
            (false, false) => "",
        };
        write!(f, "{}={dir}{mode}", self.tag)
    }
}

/// A host file or block device the guest sees as a virtio-blk disk
/// (`/dev/vda`, `/dev/vdb`, ... in the order given, after any other
/// virtio-blk devices). The image is opened once when the VMM starts and
/// locked (shared if read-only, exclusive otherwise); with `read_only` the
/// guest's writes fail with an I/O error. `serial` is what the guest reads
/// as the disk's ID (`/sys/block/vdX/serial`); empty means one derived from
/// the image's device and inode numbers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskConfig {
    pub path: PathBuf,
    pub read_only: bool,
    pub serial: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DiskArgError {
    #[error("{0:?}: expected PATH, PATH:ro or ID=PATH[:ro]")]
    Syntax(String),
    #[error("{0:?}: the disk must be an absolute path")]
    Relative(String),
    #[error("{arg:?}: the ID must be 1 to {max} bytes of letters, digits, '.', '_' or '-'")]
    Serial { arg: String, max: usize },
}

/// `[ID=]PATH[:ro]` (also `:rw`, for an image whose name ends in `:ro`).
/// The path is absolute, so an `=` before its first `/` can only end an ID.
impl std::str::FromStr for DiskConfig {
    type Err = DiskArgError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (serial, rest) = match s.split_once('=') {
            Some((id, rest)) if !id.contains('/') => (id, rest),
            _ => ("", s),
        };
        if s.starts_with('=') || (!serial.is_empty() && !crate::vm::devices::virtio::block::check_serial(serial)) {
            return Err(DiskArgError::Serial {
                arg: s.to_string(),
                max: crate::vm::devices::virtio::block::SERIAL_LEN,
            });
        }
        let (path, read_only) = match rest.rsplit_once(':') {
            Some((p, "ro")) => (p, true),
            Some((p, "rw")) => (p, false),
            _ => (rest, false),
        };
        if path.is_empty() {
            return Err(DiskArgError::Syntax(s.to_string()));
        }
        if !path.starts_with('/') {
            return Err(DiskArgError::Relative(s.to_string()));
        }
        Ok(DiskConfig { path: PathBuf::from(path), read_only, serial: serial.to_string() })
    }
}

impl std::fmt::Display for DiskConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let path = self.path.display().to_string();
        let mode = match (self.read_only, path.ends_with(":ro") || path.ends_with(":rw")) {
            (true, _) => ":ro",
            (false, true) => ":rw",
            (false, false) => "",
        };
        if !self.serial.is_empty() {
            write!(f, "{}=", self.serial)?;
        }
        write!(f, "{path}{mode}")
    }
}

/// A network interface of the guest (`eth0`, `eth1`, ... in the order
/// given, with the stock kernel's `virtio_net`), backed by the host TAP
/// interface `tap` (attached, or created if it does not exist: both need
/// CAP_NET_ADMIN in the TAP's network namespace). `mac` is the guest's
/// address, `mtu` the largest frame payload the guest is told to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetConfig {
    pub tap: String,
    pub mac: [u8; 6],
    pub mtu: u16,
    /// The TAP, opened already (by a process that could, in the namespace
    /// it lives in); `None`: the VMM opens `tap` itself.
    pub fd: Option<TapFd>,
}

/// An open TAP handed to the VMM. Shared, so configs stay `Clone`; the
/// device takes a duplicate.
#[derive(Debug, Clone)]
pub struct TapFd(pub Arc<OwnedFd>);

impl PartialEq for TapFd {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for TapFd {}

/// The MTU when none is given: Ethernet's.
pub const DEFAULT_MTU: u16 = 1500;

impl NetConfig {
    /// A locally administered unicast address derived from the TAP's name
    /// (FNV-1a), so a VM gets the same MAC for the same TAP every time.
    pub fn default_mac(tap: &str) -> [u8; 6] {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in tap.bytes() {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        let b = h.to_le_bytes();
        [0x02, b[0], b[1], b[2], b[3], b[4]]
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NetArgError {
    #[error("{0:?}: expected TAP[,mac=XX:XX:XX:XX:XX:XX][,mtu=N]")]
    Syntax(String),
    #[error("{0:?}: the TAP name must be 1 to 15 bytes without '/', ':', ',', '=' or spaces")]
    Name(String),
    #[error("{0:?}: the MAC must be six hex bytes separated by ':' and unicast (even first byte)")]
    Mac(String),
    #[error("{arg:?}: the MTU must be {min} to {max}")]
    Mtu { arg: String, min: u16, max: u16 },
}

fn parse_mac(s: &str) -> Option<[u8; 6]> {
    // Multicast addresses cannot be a station's.
    crate::linux::net::Mac::parse(s).filter(|m| m.is_unicast()).map(|m| m.0)
}

/// `TAP[,mac=XX:XX:XX:XX:XX:XX][,mtu=N]`.
impl std::str::FromStr for NetConfig {
    type Err = NetArgError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        use crate::vm::devices::virtio::net::device::{MAX_MTU, MIN_MTU};
        let mut parts = s.split(',');
        let tap = parts.next().unwrap_or_default();
        if !crate::vm::devices::virtio::net::check_name(tap) || tap.contains('=') {
            return Err(NetArgError::Name(s.to_string()));
        }
        let mut cfg = NetConfig { tap: tap.to_string(), mac: NetConfig::default_mac(tap), mtu: DEFAULT_MTU, fd: None };
        for p in parts {
            match p.split_once('=') {
                Some(("mac", v)) => cfg.mac = parse_mac(v).ok_or_else(|| NetArgError::Mac(s.to_string()))?,
                Some(("mtu", v)) => {
                    cfg.mtu = v
                        .parse()
                        .ok()
                        .filter(|m| (MIN_MTU..=MAX_MTU).contains(m))
                        .ok_or_else(|| NetArgError::Mtu { arg: s.to_string(), min: MIN_MTU, max: MAX_MTU })?
                }
                _ => return Err(NetArgError::Syntax(s.to_string())),
            }
        }
        Ok(cfg)
    }
}

impl std::fmt::Display for NetConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let m = self.mac;
        write!(
            f,
            "{},mac={:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x},mtu={}",
            self.tap, m[0], m[1], m[2], m[3], m[4], m[5], self.mtu
        )
    }
}

#[derive(Debug, Clone)]
pub struct VmmConfig {
    pub kvm_path: PathBuf,
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    pub cmdline: String,
    pub mem_mib: u64,
    pub vcpus: u8,
    pub serial: SerialOutput,
    pub vsock: Option<VsockConfig>,
    /// One virtio-fs device each, after the vsock device.
    pub shares: Vec<FsShare>,
    /// One virtio-blk device each, after the shares.
    pub disks: Vec<DiskConfig>,
    /// Where the VMM listens for host commands (`api.rs`), if anywhere.
    pub api: Option<PathBuf>,
    /// A virtio-balloon device, after the disks; its handle (kept by the
    /// caller) sets the target while the VMM runs.
    pub balloon: Option<BalloonConfig>,
    /// One virtio-net device each, after the disks and the balloon.
    pub nets: Vec<NetConfig>,
    /// Whether this VM makes a template or starts from one.
    pub template: Option<TemplateMode>,
}

/// A VM that becomes a template, or one that starts from a template.
#[derive(Debug, Clone)]
pub enum TemplateMode {
    /// Boot cold; once the agent listens and the guest has given back its
    /// free pages, save the VM into this (empty) directory and end with
    /// [`ExitReason::Snapshotted`].
    Save(PathBuf),
    /// Start from a saved VM instead of booting.
    Restore(Arc<persist::RestoreSource>),
}

/// Milestones the VMM reports while the guest boots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmmEvent {
    /// The boot vCPU is about to enter the kernel for the first time.
    KernelEntry,
    /// The VM was restored from a template and its vCPUs are about to run.
    Restored,
    /// The agent printed its listening line on the console.
    AgentListening,
    /// The kernel printed a panic.
    GuestPanic(String),
}

/// Why the VM ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitReason {
    /// ACPI S5 or KVM shutdown event: a clean power-off.
    PowerOff,
    /// ACPI reset register, i8042 reset line or KVM reset event.
    Reset,
    /// A triple fault (the guest's last resort when nothing else resets it).
    TripleFault,
    /// KVM reported a guest crash (pvpanic-style system event).
    Crash,
    /// A vCPU halted with interrupts off.
    Halted,
    /// KVM could not emulate a guest instruction: typical of a /dev/kvm
    /// that cannot run this kernel (PVM).
    EmulationFailure,
    /// The caller asked the VMM to stop.
    Stopped,
    /// The VM was saved as a template ([`TemplateMode::Save`]).
    Snapshotted,
    Error(String),
}

/// The end of a VM's life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmOutcome {
    pub reason: ExitReason,
    /// The panic line, if the kernel panicked (it then resets or halts).
    pub panic: Option<String>,
    /// Guest memory resident in this process when the VM ended (without a
    /// balloon guest pages are never given back while it runs, so this is
    /// then also their peak).
    pub guest_resident_kib: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    #[error("cannot listen on the VMM's control socket {}", path.display())]
    Api {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot open {path}")]
    OpenKvm {
        path: PathBuf,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("{0} failed")]
    Kvm(&'static str, #[source] kvm_ioctls::Error),
    #[error("cannot allocate {mib} MiB of guest memory")]
    Memory {
        mib: u64,
        #[source]
        source: memory::MemoryError,
    },
    #[error("KVM refused the boot MSRs")]
    MsrList,
    #[error("cannot boot the guest")]
    Boot(#[from] BootError),
    #[error("cannot create the {0} device")]
    Device(&'static str, #[source] std::io::Error),
    #[error("cannot set up the vsock device")]
    Vsock(#[from] crate::vm::devices::virtio::vsock::unix::MuxerError),
    #[error("cannot set up the shared directory")]
    Share(#[from] ShareError),
    #[error("cannot attach the disk")]
    Disk(#[from] DiskError),
    #[error("cannot attach the network interface")]
    Net(#[from] TapError),
    #[error("{count} virtio devices requested; at most {max} fit the interrupt lines")]
    TooManyDevices { count: usize, max: usize },
    #[error("cannot open the serial log {path}")]
    SerialLog {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("device layout conflict")]
    Bus(#[from] crate::vm::devices::bus::BusOverlap),
    #[error("the VMM event loop failed")]
    EventLoop(#[source] event_manager::Error),
    #[error("cannot start a vCPU thread")]
    Thread(#[source] std::io::Error),
    #[error("{vcpus} vCPUs requested; between 1 and {max} are supported")]
    VcpuCount { vcpus: u8, max: usize },
    #[error("{mib} MiB of guest memory is too little; at least {min} MiB are needed")]
    TooLittleMemory { mib: u64, min: u64 },
    #[error("cannot restore the VM from its template")]
    Restore(#[source] persist::PersistenceError),
}

/// The first reason wins; the event loop is woken through `evt`.
struct ExitLatch {
    reason: Mutex<Option<ExitReason>>,
    evt: EventFd,
}

impl ExitLatch {
    fn set(&self, r: ExitReason) {
        let mut g = self.reason.lock().unwrap_or_else(|e| e.into_inner());
        if g.is_none() {
            *g = Some(r);
        }
        let _ = self.evt.write(1);
    }
}

/// Wakes the event loop when the VM must end.
struct ExitSubscriber {
    latch: Arc<ExitLatch>,
    done: Arc<AtomicBool>,
}

impl MutEventSubscriber for ExitSubscriber {
    fn init(&mut self, ops: &mut EventOps) {
        let _ = ops.add(Events::new(&self.latch.evt, EventSet::IN));
    }

    fn process(&mut self, _: Events, _: &mut EventOps) {
        let _ = self.latch.evt.read();
        self.done.store(true, Ordering::Release);
    }
}

/// What the control socket acts on.
struct ApiBackend {
    mem: vm_memory::GuestMemoryMmap,
    mib: u64,
    balloon: Option<BalloonHandle>,
}

/// What a balloon always leaves the guest, whatever the target.
const BALLOON_FLOOR_MIB: u64 = MIN_MEM_MIB;

impl api::Backend for ApiBackend {
    fn stats(&self) -> api::VmmStats {
        api::VmmStats {
            memory_mib: self.mib,
            guest_resident_kib: self.mem.iter().map(memory::resident_kib).sum(),
            balloon: self.balloon.as_ref().map(|b| api::BalloonStatus {
                target_mib: (u64::from(b.target_pages()) * 4096) >> 20,
                actual_mib: b.actual_mib(),
                freed_mib: (b.inflated_bytes() + b.reported_bytes()) >> 20,
            }),
        }
    }

    fn set_balloon(&mut self, target_mib: u64) -> Result<(), String> {
        let Some(b) = &self.balloon else { return Err("this VM has no balloon device".into()) };
        let most = self.mib.saturating_sub(BALLOON_FLOOR_MIB);
        if target_mib > most {
            return Err(format!(
                "a balloon of {target_mib} MiB would leave the guest less than {BALLOON_FLOOR_MIB} MiB of its \
                 {} MiB: ask for at most {most} MiB",
                self.mib
            ));
        }
        b.set_target_mib(target_mib);
        Ok(())
    }
}

extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// How long a guest that printed a panic gets to reset by itself.
pub const PANIC_GRACE: Duration = Duration::from_secs(2);

/// Smallest guest amphi boots: kernel, initramfs and page tables.
pub const MIN_MEM_MIB: u64 = 64;

type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

/// A virtio device on its way to a virtio-mmio window: the device the
/// transport drives, and what the event loop watches for it, if anything.
struct VirtioSlot {
    name: &'static str,
    device: Arc<Mutex<dyn VirtioDevice>>,
    events: Option<Subscriber>,
}

/// A VM before its vCPUs run: KVM objects, guest memory, the buses with
/// every device on them and the event loop. A cold boot and a restore from
/// a template build it the same way, so a restored VM has exactly the
/// devices, MMIO windows and interrupt lines its template had.
struct Machine {
    kvm: Kvm,
    vm: VmFd,
    mem: GuestMemoryMmap,
    pio: Arc<Bus>,
    mmio: Arc<Bus>,
    /// The virtio transports in slot order, typed: the bus only knows them
    /// as bus devices, and saving or restoring a VM needs the transports.
    transports: Vec<Arc<Mutex<MmioTransport>>>,
    mmio_infos: Vec<acpi::MmioDeviceInfo>,
    serial: Arc<Mutex<SerialDevice>>,
    em: EventManager<Subscriber>,
    latch: Arc<ExitLatch>,
    done: Arc<AtomicBool>,
    panic_line: Arc<Mutex<Option<String>>>,
    panic_at: Arc<Mutex<Option<Instant>>>,
}

/// Opens KVM and makes the VM with its in-kernel irqchip and PIT.
fn create_vm(config: &VmmConfig) -> Result<(Kvm, VmFd), VmmError> {
    if config.mem_mib < MIN_MEM_MIB {
        return Err(VmmError::TooLittleMemory { mib: config.mem_mib, min: MIN_MEM_MIB });
    }
    let kvm_path = std::ffi::CString::new(config.kvm_path.as_os_str().as_encoded_bytes()).map_err(|_| {
        VmmError::OpenKvm { path: config.kvm_path.clone(), source: kvm_ioctls::Error::new(libc::EINVAL) }
    })?;
    let kvm =
        Kvm::new_with_path(kvm_path).map_err(|source| VmmError::OpenKvm { path: config.kvm_path.clone(), source })?;
    let max_vcpus = kvm.get_max_vcpus().min(254);
    if config.vcpus == 0 || usize::from(config.vcpus) > max_vcpus {
        return Err(VmmError::VcpuCount { vcpus: config.vcpus, max: max_vcpus });
    }
    let vm = kvm.create_vm().map_err(|e| VmmError::Kvm("KVM_CREATE_VM", e))?;
    vm.set_tss_address(layout::KVM_TSS_ADDR as usize).map_err(|e| VmmError::Kvm("KVM_SET_TSS_ADDR", e))?;
    vm.create_irq_chip().map_err(|e| VmmError::Kvm("KVM_CREATE_IRQCHIP", e))?;
    let pit = kvm_pit_config { flags: KVM_PIT_SPEAKER_DUMMY, ..Default::default() };
    vm.create_pit2(pit).map_err(|e| VmmError::Kvm("KVM_CREATE_PIT2", e))?;
    Ok((kvm, vm))
}

/// Hands every region of `mem` to KVM, one memory slot each.
fn register_memory(vm: &VmFd, mem: &GuestMemoryMmap, mib: u64) -> Result<(), VmmError> {
    for (slot, region) in mem.iter().enumerate() {
        let host = region
            .get_host_address(MemoryRegionAddress(0))
            .map_err(|_| VmmError::Memory { mib, source: memory::MemoryError::Region { start: 0 } })?;
        let r = kvm_userspace_memory_region {
            slot: slot as u32,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: host as u64,
            flags: 0,
        };
        // SAFETY: the region is a live mapping owned by `mem`, which the
        // VMM keeps until the VM is gone (guest memory is never unmapped
        // while the process lives, see memory.rs).
        unsafe { vm.set_user_memory_region(r) }.map_err(|e| VmmError::Kvm("KVM_SET_USER_MEMORY_REGION", e))?;
    }
    Ok(())
}

impl Machine {
    /// Builds the VM around `mem`: legacy devices and the virtio devices in
    /// their fixed order, each with its irqfd, ioeventfds and MMIO window.
    fn build(
        config: &VmmConfig,
        kvm: Kvm,
        vm: VmFd,
        mem: GuestMemoryMmap,
        events: &Arc<dyn Fn(VmmEvent) + Send + Sync>,
        serial_state: Option<&SerialSnapshot>,
    ) -> Result<Machine, VmmError> {
        register_memory(&vm, &mem, config.mem_mib)?;
        let latch = Arc::new(ExitLatch {
            reason: Mutex::new(None),
            evt: EventFd::new(libc::EFD_NONBLOCK).map_err(|e| VmmError::Device("exit", e))?,
        });
        let panic_line: Arc<Mutex<Option<String>>> = Arc::new(Mutex::new(None));
        let panic_at: Arc<Mutex<Option<Instant>>> = Arc::new(Mutex::new(None));

        // Legacy devices.
        let mut pio = Bus::new();
        let console_events = {
            let events = events.clone();
            let (panic_line, panic_at) = (panic_line.clone(), panic_at.clone());
            Arc::new(move |e: ConsoleEvent| match e {
                ConsoleEvent::AgentListening => events(VmmEvent::AgentListening),
                ConsoleEvent::KernelPanic(line) => {
                    *panic_line.lock().unwrap_or_else(|e| e.into_inner()) = Some(line.clone());
                    panic_at.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert_with(Instant::now);
                    events(VmmEvent::GuestPanic(line));
                }
            })
        };
        let sink: Box<dyn Write + Send> = match &config.serial {
            SerialOutput::Stdout => Box::new(std::io::stdout()),
            // Capped: a guest printing without end must not fill the host's disk.
            SerialOutput::File(path) => Box::new(
                CappedLog::create(path, serial_log::DEFAULT_HEAD, serial_log::DEFAULT_TAIL)
                    .map_err(|source| VmmError::SerialLog { path: path.clone(), source })?,
            ),
            SerialOutput::Discard => Box::new(std::io::sink()),
        };
        let serial_irq = IrqTrigger::new().map_err(|e| VmmError::Device("serial", e))?;
        vm.register_irqfd(&serial_irq.0, layout::SERIAL_IRQ).map_err(|e| VmmError::Kvm("KVM_IRQFD", e))?;
        let output = ConsoleOutput::new(sink, ConsoleWatcher::new(console_events));
        let serial = Arc::new(Mutex::new(match serial_state {
            Some(state) => SerialDevice::restore(serial_irq, output, state)
                .map_err(|e| VmmError::Restore(persist::PersistenceError::Serial(e)))?,
            None => SerialDevice::new(serial_irq, output),
        }));
        pio.insert(u64::from(layout::SERIAL_PORT), 8, serial.clone())?;
        let power_notify = {
            let latch = latch.clone();
            Arc::new(move |e: PowerEvent| {
                latch.set(match e {
                    PowerEvent::PowerOff => ExitReason::PowerOff,
                    PowerEvent::Reset => ExitReason::Reset,
                })
            })
        };
        pio.insert(
            u64::from(layout::ACPI_PM_PORT),
            1,
            Arc::new(Mutex::new(PowerDevice::new(PowerPort::Acpi, power_notify.clone()))),
        )?;
        pio.insert(
            u64::from(layout::I8042_PORT),
            1,
            Arc::new(Mutex::new(PowerDevice::new(PowerPort::I8042, power_notify))),
        )?;

        let mut mmio = Bus::new();
        let mut mmio_infos = Vec::new();
        let mut transports = Vec::new();
        let mut em: EventManager<Subscriber> = EventManager::new().map_err(VmmError::EventLoop)?;
        for (index, slot) in virtio_devices(config)?.into_iter().enumerate() {
            let count = index + 1;
            let (base, irq) = layout::virtio_mmio_slot(index)
                .ok_or(VmmError::TooManyDevices { count, max: layout::VIRTIO_MMIO_MAX_DEVICES })?;
            let interrupt =
                Arc::new(VirtioInterrupt::new(IrqTrigger::new().map_err(|e| VmmError::Device(slot.name, e))?));
            // Interrupts reach the guest through an irqfd, queue notifications
            // arrive on ioeventfds (one per queue, told apart by the value
            // written): neither needs a vCPU exit to userspace.
            vm.register_irqfd(interrupt.irq_fd(), irq).map_err(|e| VmmError::Kvm("KVM_IRQFD", e))?;
            {
                let d = slot.device.lock().unwrap_or_else(|e| e.into_inner());
                for (q, evt) in d.queue_events().iter().enumerate() {
                    vm.register_ioevent(evt, &IoEventAddress::Mmio(base + NOTIFY_REG_OFFSET), q as u32)
                        .map_err(|e| VmmError::Kvm("KVM_IOEVENTFD", e))?;
                }
            }
            let transport = Arc::new(Mutex::new(MmioTransport::new(slot.device, mem.clone(), interrupt)));
            mmio.insert(base, layout::VIRTIO_MMIO_SIZE, transport.clone())?;
            transports.push(transport);
            mmio_infos.push(acpi::MmioDeviceInfo { addr: base, len: layout::VIRTIO_MMIO_SIZE, irq });
            if let Some(events) = slot.events {
                em.add_subscriber(events);
            }
        }
        let done = Arc::new(AtomicBool::new(false));
        em.add_subscriber(Arc::new(Mutex::new(ExitSubscriber { latch: latch.clone(), done: done.clone() })));
        if let Some(path) = &config.api {
            let listener = crate::vm::uds::bind(path)
                .and_then(|l| {
                    let balloon = config.balloon.as_ref().map(|b| b.handle.clone());
                    api::ApiServer::new(l, Box::new(ApiBackend { mem: mem.clone(), mib: config.mem_mib, balloon }))
                })
                .map_err(|source| VmmError::Api { path: path.clone(), source })?;
            em.add_subscriber(Arc::new(Mutex::new(listener)));
        }
        Ok(Machine {
            kvm,
            vm,
            mem,
            pio: Arc::new(pio),
            mmio: Arc::new(mmio),
            transports,
            mmio_infos,
            serial,
            em,
            latch,
            done,
            panic_line,
            panic_at,
        })
    }

    /// Loads the kernel, initramfs, command line, ACPI tables and boot
    /// structures, and returns the vCPUs set up to enter the kernel.
    fn boot_cold(&self, config: &VmmConfig) -> Result<Vec<vcpu::Vcpu>, VmmError> {
        let mem = &self.mem;
        let mem_size = config.mem_mib << 20;
        let kernel = boot::load_kernel(mem, &config.kernel)?;
        let initrd = match &config.initrd {
            Some(p) => Some(boot::load_initrd(mem, p, mem_size, &kernel)?),
            None => None,
        };
        boot::write_cmdline(mem, &config.cmdline)?;
        let rsdp = acpi::write_tables(mem, config.vcpus, &self.mmio_infos)?;
        let pvh = matches!(kernel.entry, EntryPoint::Pvh { .. });
        params::write_boot_params(mem, pvh, kernel.setup_header, mem_size, config.cmdline.len(), initrd, rsdp)?;
        regs::write_tables(mem, kernel.entry)?;
        boot::write_reset_stub(mem)?;

        let base_cpuid = self
            .kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(|e| VmmError::Kvm("KVM_GET_SUPPORTED_CPUID", e))?;
        let vcpus = self.create_vcpus(config.vcpus)?;
        for v in &vcpus {
            v.configure(&self.kvm, &base_cpuid, config.vcpus, kernel.entry)?;
        }
        Ok(vcpus)
    }

    fn create_vcpus(&self, count: u8) -> Result<Vec<vcpu::Vcpu>, VmmError> {
        (0..count).map(|i| vcpu::Vcpu::new(&self.vm, i, self.pio.clone(), self.mmio.clone())).collect()
    }

    /// Puts the template's state into this machine's fresh vCPUs, KVM and
    /// devices, and kicks the devices.
    fn restore(&self, snap: &persist::VmSnapshot, count: u8) -> Result<Vec<vcpu::Vcpu>, VmmError> {
        let vcpus = self.create_vcpus(count)?;
        persist::restore(snap, &self.vm, &vcpus, &self.transports).map_err(VmmError::Restore)?;
        persist::after_restore(&self.transports);
        self.serial.lock().unwrap_or_else(|e| e.into_inner()).after_restore();
        Ok(vcpus)
    }

    /// Saves the stopped VM into `dir`.
    fn save(&self, config: &VmmConfig, vcpus: &[vcpu::Vcpu], dir: &Path) -> Result<(), persist::PersistenceError> {
        let serial = self.serial.lock().unwrap_or_else(|e| e.into_inner()).save();
        let parts = persist::SaveParts {
            kvm: &self.kvm,
            vm: &self.vm,
            mem: &self.mem,
            vcpus,
            serial,
            transports: &self.transports,
        };
        persist::save(config, parts, dir).map(|_| ())
    }
}

/// The virtio devices of `config` in their fixed order: vsock first, then
/// one virtio-fs device per share, one virtio-blk device per disk, the
/// balloon, and one virtio-net device per network interface.
fn virtio_devices(config: &VmmConfig) -> Result<Vec<VirtioSlot>, VmmError> {
    let mut virtio: Vec<VirtioSlot> = Vec::new();
    if let Some(vs) = &config.vsock {
        let muxer = VsockMuxer::new(vs.guest_cid, &vs.uds_path)?;
        let dev = Arc::new(Mutex::new(Vsock::new(vs.guest_cid, muxer).map_err(|e| VmmError::Device("vsock", e))?));
        virtio.push(VirtioSlot { name: "vsock", device: dev.clone(), events: Some(dev) });
    }
    for (i, share) in config.shares.iter().enumerate() {
        if config.shares[..i].iter().any(|s| s.tag == share.tag) {
            return Err(ShareError::DuplicateTag(share.tag.clone()).into());
        }
        let dev = VirtioFs::new(&share.tag, &share.path, share.read_only)?;
        // The device serves its queues on its own worker thread.
        virtio.push(VirtioSlot { name: "virtio-fs", device: Arc::new(Mutex::new(dev)), events: None });
    }
    for disk in &config.disks {
        // Opens the image and starts the device's worker thread here, on
        // the VMM's main thread: activation runs on a vCPU thread, whose
        // seccomp filter a disk worker must not inherit.
        let dev = VirtioBlock::new(&disk.path, disk.read_only, &disk.serial)?;
        virtio.push(VirtioSlot { name: "virtio-blk", device: Arc::new(Mutex::new(dev)), events: None });
    }
    if let Some(balloon) = &config.balloon {
        // Starts the device's worker thread here, for the same reason.
        let dev = VirtioBalloon::new(balloon).map_err(|e| VmmError::Device("virtio-balloon", e))?;
        virtio.push(VirtioSlot { name: "virtio-balloon", device: Arc::new(Mutex::new(dev)), events: None });
    }
    for net in &config.nets {
        // As for disks: the TAP is attached and the worker started here,
        // before any seccomp filter (TUNSETIFF is in none).
        let dev = VirtioNet::new(&net.tap, net.fd.as_ref().map(|f| f.0.as_ref()), net.mac, net.mtu)?;
        virtio.push(VirtioSlot { name: "virtio-net", device: Arc::new(Mutex::new(dev)), events: None });
    }
    if virtio.len() > layout::VIRTIO_MMIO_MAX_DEVICES {
        return Err(VmmError::TooManyDevices { count: virtio.len(), max: layout::VIRTIO_MMIO_MAX_DEVICES });
    }
    Ok(virtio)
}

/// The running vCPU threads; each hands its vCPU back when it ends.
struct VcpuThreads {
    stop: Arc<AtomicBool>,
    handles: Vec<std::thread::JoinHandle<vcpu::Vcpu>>,
}

impl VcpuThreads {
    /// One thread per vCPU, each under its seccomp filter. `on_entry` runs
    /// on the boot vCPU's thread just before it first enters the guest.
    fn spawn(
        vcpus: Vec<vcpu::Vcpu>,
        latch: &Arc<ExitLatch>,
        on_entry: Arc<dyn Fn() + Send + Sync>,
    ) -> Result<VcpuThreads, VmmError> {
        // The kick signal only has to interrupt KVM_RUN; registering twice is harmless.
        let _ = register_signal_handler(SIGRTMIN(), kick_handler);
        let stop = Arc::new(AtomicBool::new(false));
        let mut handles = Vec::new();
        for mut v in vcpus {
            let (latch, stop, on_entry) = (latch.clone(), stop.clone(), on_entry.clone());
            let boot_cpu = v.index == 0;
            let h = std::thread::Builder::new()
                .name(format!("vcpu{}", v.index))
                .spawn(move || {
                    crate::vm::jail::seccomp::enter_or_exit(crate::vm::jail::seccomp::ThreadKind::Vcpu);
                    let reason = v.run(&stop, move || {
                        if boot_cpu {
                            on_entry()
                        }
                    });
                    if reason != ExitReason::Stopped {
                        latch.set(reason);
                    }
                    v
                })
                .map_err(VmmError::Thread)?;
            handles.push(h);
        }
        Ok(VcpuThreads { stop, handles })
    }

    /// Stops every vCPU (kicking it out of KVM_RUN) and returns them, in
    /// index order, with their last exit completed.
    fn stop(self) -> Vec<vcpu::Vcpu> {
        self.stop.store(true, Ordering::Release);
        let mut vcpus = Vec::new();
        for h in self.handles {
            while !h.is_finished() {
                let _ = h.kill(SIGRTMIN());
                std::thread::sleep(Duration::from_millis(1));
            }
            if let Ok(v) = h.join() {
                vcpus.push(v);
            }
        }
        vcpus
    }
}

/// Boots the VM described by `config` (or restores it from its template)
/// and runs it to its end. `events` receives the boot milestones (from any
/// thread); setting `stop` ends the VM from outside.
pub fn run(
    config: &VmmConfig,
    events: Arc<dyn Fn(VmmEvent) + Send + Sync>,
    stop: Arc<AtomicBool>,
) -> Result<VmOutcome, VmmError> {
    let (kvm, vm) = create_vm(config)?;
    let mem_size = config.mem_mib << 20;
    let memory_err = |source| VmmError::Memory { mib: config.mem_mib, source };
    let (mem, restore) = match &config.template {
        Some(TemplateMode::Restore(src)) => {
            src.check(config).map_err(VmmError::Restore)?;
            let mem = memory::create_from_file(mem_size, &src.memory, &src.snapshot.memory).map_err(memory_err)?;
            (mem, Some(src.clone()))
        }
        _ => (memory::create(mem_size).map_err(memory_err)?, None),
    };
    // A template is saved once its agent listens.
    let listening = Arc::new(AtomicBool::new(false));
    let events: Arc<dyn Fn(VmmEvent) + Send + Sync> = {
        let listening = listening.clone();
        Arc::new(move |e: VmmEvent| {
            if e == VmmEvent::AgentListening {
                listening.store(true, Ordering::Release);
            }
            events(e)
        })
    };
    let mut machine = Machine::build(config, kvm, vm, mem, &events, restore.as_ref().map(|src| &src.snapshot.serial))?;
    let (vcpus, first) = match &restore {
        Some(src) => (machine.restore(&src.snapshot, config.vcpus)?, VmmEvent::Restored),
        None => (machine.boot_cold(config)?, VmmEvent::KernelEntry),
    };
    let on_entry = {
        let events = events.clone();
        Arc::new(move || events(first.clone()))
    };
    let threads = VcpuThreads::spawn(vcpus, &machine.latch, on_entry)?;

    // From here on this thread only runs the event loop and ends the VM.
    crate::vm::jail::seccomp::enter_or_exit(crate::vm::jail::seccomp::ThreadKind::Vmm);
    let Some(TemplateMode::Save(dir)) = &config.template else {
        machine.event_loop(&stop, &mut || false);
        threads.stop();
        return Ok(machine.outcome());
    };
    let mut settled = Settle::new(config.balloon.as_ref().map(|b| b.handle.clone()));
    let due = machine.event_loop(&stop, &mut || listening.load(Ordering::Acquire) && settled.done(Instant::now()));
    let vcpus = threads.stop();
    if due {
        match machine.save(config, &vcpus, dir) {
            Ok(()) => machine.latch.set(ExitReason::Snapshotted),
            Err(e) => {
                machine.latch.set(ExitReason::Error(format!("saving the template: {}", crate::logging::chain(&e))))
            }
        }
    }
    Ok(machine.outcome())
}

/// When a template's guest has given back the pages it freed after boot
/// (free page reporting): nothing reported for [`SETTLE_QUIET`], or
/// [`SETTLE_MAX`] after the agent listened. Pages given back are zero,
/// holes in the memory file, and never copied into a VM restored from it.
struct Settle {
    balloon: Option<BalloonHandle>,
    start: Option<Instant>,
    last: (u64, Instant),
}

/// How long the reported total must stay still.
const SETTLE_QUIET: Duration = Duration::from_millis(1500);
/// The longest a template build waits for reports.
const SETTLE_MAX: Duration = Duration::from_secs(6);

impl Settle {
    fn new(balloon: Option<BalloonHandle>) -> Settle {
        let now = Instant::now();
        Settle { balloon, start: None, last: (0, now) }
    }

    fn done(&mut self, now: Instant) -> bool {
        let start = *self.start.get_or_insert(now);
        let Some(b) = &self.balloon else { return true };
        let reported = b.reported_bytes();
        if reported != self.last.0 || self.last.1 < start {
            self.last = (reported, now);
        }
        now.duration_since(self.last.1) >= SETTLE_QUIET || now.duration_since(start) >= SETTLE_MAX
    }
}

impl Machine {
    /// Runs the event loop until the VM ends or the caller stops it
    /// (false), or until `until` says so (true).
    fn event_loop(&mut self, stop: &AtomicBool, until: &mut dyn FnMut() -> bool) -> bool {
        while !self.done.load(Ordering::Acquire) {
            if until() {
                return true;
            }
            if stop.load(Ordering::Acquire) {
                self.latch.set(ExitReason::Stopped);
            }
            // A panicked kernel normally resets (panic=-1); one that does not
            // (panic=0, or a reset that never comes) is ended after a grace
            // period that lets it print the rest of its report.
            let since_panic = self.panic_at.lock().unwrap_or_else(|e| e.into_inner()).map(|t| t.elapsed());
            if since_panic.is_some_and(|d| d >= PANIC_GRACE) {
                self.latch.set(ExitReason::Crash);
            }
            if let Err(e) = self.em.run_with_timeout(50) {
                self.latch.set(ExitReason::Error(format!("event loop: {e}")));
                break;
            }
        }
        false
    }

    /// How the VM ended (once its vCPUs are stopped).
    fn outcome(self) -> VmOutcome {
        let reason = self.latch.reason.lock().unwrap_or_else(|e| e.into_inner()).take().unwrap_or(ExitReason::Stopped);
        let panic = self.panic_line.lock().unwrap_or_else(|e| e.into_inner()).take();
        let guest_resident_kib = self.mem.iter().map(memory::resident_kib).sum();
        VmOutcome { reason, panic, guest_resident_kib }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn share_arguments_parse_and_print_back() {
        let s: FsShare = "rootfs=/var/lib/c1/rootfs".parse().unwrap();
        assert_eq!(s, FsShare { tag: "rootfs".into(), path: "/var/lib/c1/rootfs".into(), read_only: false });
        let ro: FsShare = "vol=/srv/data:ro".parse().unwrap();
        assert!(ro.read_only);
        assert_eq!(ro.path, PathBuf::from("/srv/data"));
        let odd: FsShare = "t=/a/b:ro:rw".parse().unwrap();
        assert_eq!((odd.path.to_str().unwrap(), odd.read_only), ("/a/b:ro", false));
        let colon: FsShare = "t=/a:b".parse().unwrap();
        assert_eq!(colon.path, PathBuf::from("/a:b"));
        for share in [s, ro, odd, colon] {
            assert_eq!(share.to_string().parse::<FsShare>().unwrap(), share);
        }
    }

    #[test]
    fn disk_arguments_parse_and_print_back() {
        let d: DiskConfig = "/var/lib/vm/root.img".parse().unwrap();
        assert_eq!(d, DiskConfig { path: "/var/lib/vm/root.img".into(), read_only: false, serial: String::new() });
        let ro: DiskConfig = "/dev/vg0/data:ro".parse().unwrap();
        assert!(ro.read_only);
        assert_eq!(ro.path, PathBuf::from("/dev/vg0/data"));
        let named: DiskConfig = "data-1=/srv/d.img:ro".parse().unwrap();
        assert_eq!(
            (named.serial.as_str(), named.path.to_str().unwrap(), named.read_only),
            ("data-1", "/srv/d.img", true)
        );
        let odd: DiskConfig = "/a=b/c:ro:rw".parse().unwrap();
        assert_eq!((odd.serial.as_str(), odd.path.to_str().unwrap(), odd.read_only), ("", "/a=b/c:ro", false));
        for disk in [d, ro, named, odd] {
            assert_eq!(disk.to_string().parse::<DiskConfig>().unwrap(), disk);
        }
    }

    #[test]
    fn bad_disk_arguments_say_what_is_expected() {
        let err = |a: &str| a.parse::<DiskConfig>().unwrap_err().to_string();
        assert!(err("").contains("expected PATH"));
        assert!(err(":ro").contains("expected PATH"));
        assert!(err("id=").contains("expected PATH"));
        assert!(err("disk.img").contains("absolute path"));
        assert!(err("id=disk.img:ro").contains("absolute path"));
        assert!(err("=/d.img").contains("the ID must be"));
        assert!(err("has space=/d.img").contains("the ID must be"));
        assert!(err(&format!("{}=/d.img", "x".repeat(21))).contains("1 to 20 bytes"));
    }

    #[test]
    fn net_arguments_parse_and_print_back() {
        let n: NetConfig = "tap0".parse().unwrap();
        assert_eq!((n.tap.as_str(), n.mtu), ("tap0", DEFAULT_MTU));
        assert_eq!(n.mac, NetConfig::default_mac("tap0"));
        assert_eq!(n.mac[0], 0x02, "locally administered unicast");
        assert_ne!(NetConfig::default_mac("tap0"), NetConfig::default_mac("tap1"));
        let full: NetConfig = "vm-tap,mac=52:54:00:AB:cd:01,mtu=9000".parse().unwrap();
        assert_eq!(full, NetConfig { tap: "vm-tap".into(), mac: [0x52, 0x54, 0, 0xab, 0xcd, 1], mtu: 9000, fd: None });
        assert_eq!(full.to_string(), "vm-tap,mac=52:54:00:ab:cd:01,mtu=9000");
        let mtu_first: NetConfig = "t,mtu=1400,mac=02:00:00:00:00:01".parse().unwrap();
        assert_eq!((mtu_first.mtu, mtu_first.mac[5]), (1400, 1));
        for net in [n, full, mtu_first] {
            assert_eq!(net.to_string().parse::<NetConfig>().unwrap(), net);
        }
    }

    #[test]
    fn bad_net_arguments_say_what_is_expected() {
        let err = |a: &str| a.parse::<NetConfig>().unwrap_err().to_string();
        assert!(err("").contains("TAP name"));
        assert!(err(",mtu=1500").contains("TAP name"));
        assert!(err("a/b").contains("TAP name"));
        assert!(err(&"t".repeat(16)).contains("1 to 15 bytes"));
        assert!(err("tap0,speed=10").contains("expected TAP"));
        assert!(err("tap0,").contains("expected TAP"));
        assert!(err("tap0,mac=02:00:00:00:00").contains("six hex bytes"));
        assert!(err("tap0,mac=02:00:00:00:00:00:00").contains("six hex bytes"));
        assert!(err("tap0,mac=01:00:5e:00:00:01").contains("unicast"));
        assert!(err("tap0,mac=2:00:00:00:00:01").contains("six hex bytes"));
        assert!(err("tap0,mtu=67").contains("68 to"));
        assert!(err("tap0,mtu=70000").contains("68 to"));
        assert!(err("tap0,mtu=x").contains("68 to"));
    }

    #[test]
    fn bad_share_arguments_say_what_is_expected() {
        let err = |a: &str| a.parse::<FsShare>().unwrap_err().to_string();
        assert!(err("rootfs").contains("expected TAG=DIR"));
        assert!(err("rootfs=").contains("expected TAG=DIR"));
        assert!(err("rootfs=:ro").contains("expected TAG=DIR"));
        assert!(err("rootfs=relative/dir").contains("absolute path"));
        assert!(err("=/dir").contains("tag"));
        assert!(err(&format!("{}=/dir", "t".repeat(37))).contains("1 to 36 bytes"));
    }
}
