//! A whole VM saved into a template directory, and a VM built from one.
//!
//! The pieces come from `snapshot` (vCPUs, the VM's irqchip, PIT and clock,
//! guest memory) and from the devices' own `save`/`restore`; this module
//! puts them in one [`VmSnapshot`], checks that a snapshot fits the VM it
//! is restored into (same memory size, vCPU count, devices and host), and
//! keeps the order that makes a restore correct: vCPUs, then the VM's
//! interrupt controllers and clock, then the devices, and only then the
//! devices' kicks, so that no interrupt a device raises is overwritten by
//! the irqchip state restored after it.

use std::fs::File;
use std::io::Write;
// The memory holds the template kernel's secrets (docs/security.md): 0600.
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use kvm_ioctls::{Kvm, VmFd};
use serde::{Deserialize, Serialize};
use vm_memory::GuestMemoryMmap;

use super::snapshot::memory::MemoryLayout;
use super::snapshot::vcpu::XsaveSize;
use super::snapshot::{self, HostFingerprint, SnapshotError, VcpuState, VmState, SNAPSHOT_FORMAT};
use super::vcpu::Vcpu;
use super::VmmConfig;
use crate::vm::devices::serial::SerialSnapshot;
use crate::vm::devices::virtio::persist::{PersistError, TransportSnapshot};

/// The state file of a template directory.
pub const STATE_FILE: &str = "state.json";
/// The guest memory file of a template directory (sparse: holes are zero).
pub const MEMORY_FILE: &str = "memory";

/// What a snapshot must match in the VM restoring it: everything that is
/// baked into the guest's memory at boot (the e820 map, the ACPI tables'
/// CPUs and device windows, what the drivers probed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigDigest {
    pub mem_mib: u64,
    pub vcpus: u8,
    /// The virtio devices in slot order, as [`device_names`] names them.
    pub devices: Vec<String>,
}

impl ConfigDigest {
    pub fn of(config: &VmmConfig) -> ConfigDigest {
        ConfigDigest { mem_mib: config.mem_mib, vcpus: config.vcpus, devices: device_names(config) }
    }
}

/// The virtio devices `config` makes, in slot order, with what their
/// drivers read at probe time (the vsock CID, the share's tag, whether the
/// balloon reports free pages). Disks and network interfaces are named too,
/// although templates leave them out: their backends cannot be swapped
/// under a running driver.
pub fn device_names(config: &VmmConfig) -> Vec<String> {
    let mut v = Vec::new();
    if let Some(vs) = &config.vsock {
        v.push(format!("vsock:{}", vs.guest_cid));
    }
    for s in &config.shares {
        v.push(format!("fs:{}{}", s.tag, if s.read_only { ":ro" } else { "" }));
    }
    for d in &config.disks {
        v.push(format!("blk:{}", d.serial));
    }
    if let Some(b) = &config.balloon {
        v.push(if b.free_page_reporting { "balloon:fpr".into() } else { "balloon".into() });
    }
    for n in &config.nets {
        v.push(format!("net:{}", n.tap));
    }
    v
}

/// Everything of a VM but its memory's content.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VmSnapshot {
    pub format: u32,
    pub config: ConfigDigest,
    pub host: HostFingerprint,
    pub memory: MemoryLayout,
    pub vcpus: Vec<VcpuState>,
    pub vm: VmState,
    pub serial: SerialSnapshot,
    pub transports: Vec<TransportSnapshot>,
    /// MSRs KVM listed but would not read on this host (left out).
    pub skipped_msrs: Vec<u32>,
}

/// A template ready to restore: its parsed state and its memory file,
/// opened before the VMM enters its jail.
#[derive(Debug)]
pub struct RestoreSource {
    pub snapshot: VmSnapshot,
    pub memory: File,
}

#[derive(Debug, thiserror::Error)]
pub enum PersistenceError {
    #[error("cannot read the template state {}", path.display())]
    ReadState {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the template state {} is not valid", path.display())]
    ParseState {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("the template has format {found}, this amphi reads format {SNAPSHOT_FORMAT}: rebuild it")]
    Format { found: u32 },
    #[error("the template was made for {template}, this VM is {vm}: it cannot be restored here")]
    Mismatch { template: String, vm: String },
    #[error("cannot open the template memory {}", path.display())]
    OpenMemory {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write the template into {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0} vCPU(s) stopped, the VM has {1}")]
    VcpuCount(usize, usize),
    #[error("the device in slot {slot}")]
    Device {
        slot: usize,
        #[source]
        source: PersistError,
    },
    #[error("the template has {found} virtio devices, the VM {want}")]
    DeviceCount { found: usize, want: usize },
    #[error("the template's console state")]
    Serial(#[source] crate::vm::devices::serial::SerialRestoreError),
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
}

impl RestoreSource {
    /// Reads `dir`'s state and opens its memory file.
    pub fn open(dir: &Path) -> Result<RestoreSource, PersistenceError> {
        let path = dir.join(STATE_FILE);
        let text = std::fs::read(&path).map_err(|source| PersistenceError::ReadState { path: path.clone(), source })?;
        let snapshot: VmSnapshot =
            serde_json::from_slice(&text).map_err(|source| PersistenceError::ParseState { path, source })?;
        if snapshot.format != SNAPSHOT_FORMAT {
            return Err(PersistenceError::Format { found: snapshot.format });
        }
        let path = dir.join(MEMORY_FILE);
        let memory = File::open(&path).map_err(|source| PersistenceError::OpenMemory { path, source })?;
        Ok(RestoreSource { snapshot, memory })
    }

    /// Refuses a snapshot that does not fit the VM `config` describes.
    /// The host is checked where templates are looked up: their key holds
    /// the host's fingerprint.
    pub fn check(&self, config: &VmmConfig) -> Result<(), PersistenceError> {
        let want = ConfigDigest::of(config);
        if self.snapshot.config != want {
            return Err(PersistenceError::Mismatch { template: describe(&self.snapshot.config), vm: describe(&want) });
        }
        Ok(())
    }
}

fn describe(c: &ConfigDigest) -> String {
    format!("{} MiB, {} vCPU(s), devices [{}]", c.mem_mib, c.vcpus, c.devices.join(", "))
}

/// The parts of a running VM a save reads, its vCPUs stopped.
pub struct SaveParts<'a> {
    pub kvm: &'a Kvm,
    pub vm: &'a VmFd,
    pub mem: &'a GuestMemoryMmap,
    pub vcpus: &'a [Vcpu],
    pub serial: SerialSnapshot,
    pub transports: &'a [Arc<std::sync::Mutex<crate::vm::devices::virtio::mmio::MmioTransport>>],
}

/// Saves the VM into `dir` (which exists and is empty): `memory`, then
/// `state.json` last, so a directory with a state file is complete.
pub fn save(config: &VmmConfig, parts: SaveParts<'_>, dir: &Path) -> Result<VmSnapshot, PersistenceError> {
    if parts.vcpus.len() != usize::from(config.vcpus) {
        return Err(PersistenceError::VcpuCount(parts.vcpus.len(), usize::from(config.vcpus)));
    }
    let host = snapshot::host_fingerprint(parts.kvm)?;
    let msrs = snapshot::vcpu::snapshot_msr_indices(parts.kvm)?;
    let xsave = XsaveSize::of(parts.vm);
    let mut vcpus = Vec::new();
    let mut skipped_msrs = Vec::new();
    for v in parts.vcpus {
        let (state, skipped) = snapshot::vcpu::save_vcpu(v.fd(), &msrs, xsave)?;
        for m in skipped {
            if !skipped_msrs.contains(&m) {
                skipped_msrs.push(m);
            }
        }
        vcpus.push(state);
    }
    let vm = snapshot::vm::save_vm(parts.vm)?;
    let mut transports = Vec::new();
    for (slot, t) in parts.transports.iter().enumerate() {
        let s = t.lock().unwrap_or_else(|e| e.into_inner()).save();
        transports.push(s.map_err(|source| PersistenceError::Device { slot, source })?);
    }
    let write_err = |path: PathBuf| move |source| PersistenceError::Write { path, source };
    let mem_path = dir.join(MEMORY_FILE);
    let mem_file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&mem_path)
        .map_err(write_err(mem_path.clone()))?;
    let memory = snapshot::memory::dump(parts.mem, &mem_file)?;
    let snap = VmSnapshot {
        format: SNAPSHOT_FORMAT,
        config: ConfigDigest::of(config),
        host,
        memory,
        vcpus,
        vm,
        serial: parts.serial,
        transports,
        skipped_msrs,
    };
    let state_path = dir.join(STATE_FILE);
    let json = serde_json::to_vec(&snap)
        .map_err(|e| PersistenceError::Write { path: state_path.clone(), source: std::io::Error::other(e) })?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&state_path)
        .map_err(write_err(state_path.clone()))?;
    f.write_all(&json).and_then(|_| f.sync_all()).map_err(write_err(state_path))?;
    Ok(snap)
}

/// Restores the vCPUs' and the VM's KVM state, then the devices, in that
/// order (module comment). The devices' kicks are left to
/// [`after_restore`], once nothing else is written into KVM.
pub fn restore(
    snap: &VmSnapshot,
    vm: &VmFd,
    vcpus: &[Vcpu],
    transports: &[Arc<std::sync::Mutex<crate::vm::devices::virtio::mmio::MmioTransport>>],
) -> Result<(), PersistenceError> {
    if vcpus.len() != snap.vcpus.len() {
        return Err(PersistenceError::VcpuCount(snap.vcpus.len(), vcpus.len()));
    }
    if transports.len() != snap.transports.len() {
        return Err(PersistenceError::DeviceCount { found: snap.transports.len(), want: transports.len() });
    }
    // A TSC running at another rate would make the guest's clocks run
    // fast or slow; KVM can scale it only where the CPU can, which a
    // nested test host's cannot (design: never set the rate).
    if let (Some(v), Some(saved)) = (vcpus.first(), snap.host.tsc_khz) {
        let here = v.fd().get_tsc_khz().ok();
        if here != Some(saved) {
            return Err(SnapshotError::TscFrequency { saved: Some(saved), host: here }.into());
        }
    }
    let xsave = XsaveSize::of(vm);
    for (v, s) in vcpus.iter().zip(&snap.vcpus) {
        snapshot::vcpu::restore_vcpu(v.fd(), s, xsave)?;
    }
    snapshot::vm::restore_vm(vm, &snap.vm)?;
    for (slot, (t, s)) in transports.iter().zip(&snap.transports).enumerate() {
        t.lock()
            .unwrap_or_else(|e| e.into_inner())
            .restore(s)
            .map_err(|source| PersistenceError::Device { slot, source })?;
    }
    Ok(())
}

/// The devices' kicks after a restore: vsock's transport reset, and the
/// interrupts that were pending when the template was saved.
pub fn after_restore(transports: &[Arc<std::sync::Mutex<crate::vm::devices::virtio::mmio::MmioTransport>>]) {
    for t in transports {
        t.lock().unwrap_or_else(|e| e.into_inner()).after_restore();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vm::devices::virtio::balloon::BalloonConfig;
    use crate::vm::vmm::{FsShare, SerialOutput, VsockConfig};

    fn config() -> VmmConfig {
        VmmConfig {
            kvm_path: "/dev/kvm".into(),
            kernel: "/k".into(),
            initrd: None,
            cmdline: String::new(),
            mem_mib: 256,
            vcpus: 1,
            serial: SerialOutput::Discard,
            vsock: Some(VsockConfig { guest_cid: 3, uds_path: "/v".into() }),
            shares: vec![FsShare { tag: "amphi".into(), path: "/s".into(), read_only: false }],
            disks: Vec::new(),
            api: None,
            balloon: Some(BalloonConfig { free_page_reporting: true, ..BalloonConfig::default() }),
            nets: Vec::new(),
            template: None,
        }
    }

    #[test]
    fn devices_are_named_with_what_their_drivers_probe() {
        assert_eq!(device_names(&config()), ["vsock:3", "fs:amphi", "balloon:fpr"]);
        let mut c = config();
        c.balloon = Some(BalloonConfig { free_page_reporting: false, ..BalloonConfig::default() });
        c.shares[0].read_only = true;
        assert_eq!(device_names(&c), ["vsock:3", "fs:amphi:ro", "balloon"]);
    }

    #[test]
    fn a_digest_differs_when_the_memory_cpus_or_devices_do() {
        let base = ConfigDigest::of(&config());
        let mut c = config();
        c.mem_mib = 512;
        assert_ne!(ConfigDigest::of(&c), base);
        let mut c = config();
        c.vcpus = 2;
        assert_ne!(ConfigDigest::of(&c), base);
        let mut c = config();
        c.balloon = None;
        assert_ne!(ConfigDigest::of(&c), base);
        let mut c = config();
        c.shares[0].path = "/elsewhere".into();
        c.serial = SerialOutput::Stdout;
        assert_eq!(ConfigDigest::of(&c), base, "the share's host path and the console are not in the guest");
        assert_eq!(describe(&base), "256 MiB, 1 vCPU(s), devices [vsock:3, fs:amphi, balloon:fpr]");
    }
}
