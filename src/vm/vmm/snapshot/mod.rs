//! Snapshots of a paused VM's KVM state and memory, the building blocks of
//! VM templates: a guest booted once is saved, and every later VM restores
//! it instead of booting. This module holds the KVM half (vCPU registers,
//! MSRs, LAPIC, irqchip, PIT, clock) as serde types over the kvm-bindings
//! ABI structs, plus the host fingerprint that keeps a snapshot on the host
//! and kernel that made it; [`memory`] writes guest RAM to a sparse file.
//! Device state and the composite snapshot live with their owners.

/// Trait methods that only call the type's inherent method of the same
/// name (`KVM` wrappers implementing the ops traits).
macro_rules! delegate {
    ($ty:ident: $(fn $name:ident(&self $(, $arg:ident: $argty:ty)*) -> $ret:ty;)*) => {
        $(fn $name(&self $(, $arg: $argty)*) -> $ret {
            $ty::$name(self $(, $arg)*)
        })*
    };
}

pub mod memory;
pub mod vcpu;
pub mod vm;

use kvm_bindings::{
    kvm_clock_data, kvm_cpuid_entry2, kvm_debugregs, kvm_irqchip, kvm_lapic_state, kvm_mp_state, kvm_pit_state2,
    kvm_regs, kvm_sregs, kvm_vcpu_events, kvm_xcrs, KVM_MAX_CPUID_ENTRIES,
};
use kvm_ioctls::Kvm;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Version of the snapshot format; a snapshot of another version is not
/// restored.
pub const SNAPSHOT_FORMAT: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("{op} failed")]
    Kvm {
        op: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
    /// KVM refused an MSR without which the restored guest would misbehave
    /// (time, system calls, long mode).
    #[error("KVM refused to {op} MSR {name} ({index:#x}), which a restored guest cannot do without")]
    EssentialMsr { op: &'static str, index: u32, name: &'static str },
    #[error("cannot read the host's kernel release")]
    HostRelease(#[source] nix::Error),
    #[error("the vCPU TSC runs at {} on this host, the snapshot was taken at {}", rate(*.host), rate(*.saved))]
    TscFrequency { saved: Option<u32>, host: Option<u32> },
    #[error("the snapshot was taken on another host, KVM or kernel (host fingerprint {saved}, this host {host})")]
    HostMismatch { saved: String, host: String },
    #[error("cannot {what} the memory file")]
    MemoryFile {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("guest memory region at {gpa:#x} has no host mapping")]
    MemoryRegion { gpa: u64 },
}

fn rate(khz: Option<u32>) -> String {
    khz.map_or_else(|| "an unknown rate".to_string(), |k| format!("{k} kHz"))
}

/// Builds the error for a failed KVM call `op`.
pub(crate) fn kvm_err(op: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> SnapshotError {
    move |source| SnapshotError::Kvm { op, source }
}

/// Everything KVM holds for one vCPU. The ABI structs serialize as their
/// raw bytes (kvm-bindings' `serde` feature), so the state is only
/// meaningful on the host and kernel of [`HostFingerprint`].
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VcpuState {
    pub cpuid: Vec<kvm_cpuid_entry2>,
    /// (index, value) of every MSR saved; see [`vcpu::snapshot_msr_indices`].
    pub msrs: Vec<(u32, u64)>,
    pub regs: kvm_regs,
    pub sregs: kvm_sregs,
    /// The `kvm_xsave` area in 32-bit words: 1024 (4 KiB) with
    /// `KVM_GET_XSAVE`, more when `KVM_CAP_XSAVE2` reports a larger area.
    /// On a CPU without XSAVE KVM fills only the legacy FXSAVE part.
    pub xsave: Vec<u32>,
    /// Zero entries on a CPU without XSAVE.
    pub xcrs: kvm_xcrs,
    pub debugregs: kvm_debugregs,
    pub lapic: kvm_lapic_state,
    pub mp_state: kvm_mp_state,
    pub vcpu_events: kvm_vcpu_events,
    /// None where KVM could not tell (an unstable host TSC).
    pub tsc_khz: Option<u32>,
}

/// The VM-wide in-kernel devices: PIC pair, IOAPIC, PIT and kvmclock.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VmState {
    pub pic_master: kvm_irqchip,
    pub pic_slave: kvm_irqchip,
    pub ioapic: kvm_irqchip,
    pub pit: kvm_pit_state2,
    /// As saved; its `flags` (e.g. `KVM_CLOCK_TSC_STABLE`) are kept for
    /// diagnostics and cleared on restore.
    pub clock: kvm_clock_data,
}

/// What makes saved KVM state valid on a host: CPUID and MSRs KVM offers,
/// its API version, the vCPU TSC rate and the kernel. Two hosts with the
/// same digest can exchange snapshots.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostFingerprint {
    /// sha256, hex, over the inputs above.
    pub digest: String,
    /// Also kept apart so that the most likely mismatch (a recalibrated
    /// TSC) can be named. None where KVM could not tell.
    pub tsc_khz: Option<u32>,
}

impl HostFingerprint {
    /// Whether a snapshot taken with fingerprint `self` can be restored on
    /// the host whose fingerprint is `host`.
    pub fn check(&self, host: &HostFingerprint) -> Result<(), SnapshotError> {
        if self.tsc_khz != host.tsc_khz {
            return Err(SnapshotError::TscFrequency { saved: self.tsc_khz, host: host.tsc_khz });
        }
        if self.digest != host.digest {
            return Err(SnapshotError::HostMismatch { saved: self.digest.clone(), host: host.digest.clone() });
        }
        Ok(())
    }
}

/// The inputs of a [`HostFingerprint`].
struct HostFacts<'a> {
    api_version: i32,
    cpuid: &'a [kvm_cpuid_entry2],
    msr_indices: &'a [u32],
    tsc_khz: Option<u32>,
    release: &'a str,
}

impl HostFacts<'_> {
    fn fingerprint(&self) -> HostFingerprint {
        let mut h = Sha256::new();
        h.update(b"amphi-host-v1\0");
        h.update(self.api_version.to_le_bytes());
        // Field by field: the structs' padding is not part of the facts.
        h.update((self.cpuid.len() as u64).to_le_bytes());
        for e in self.cpuid {
            for v in [e.function, e.index, e.flags, e.eax, e.ebx, e.ecx, e.edx] {
                h.update(v.to_le_bytes());
            }
        }
        h.update((self.msr_indices.len() as u64).to_le_bytes());
        for i in self.msr_indices {
            h.update(i.to_le_bytes());
        }
        h.update(self.tsc_khz.map_or([0u8; 5], |k| {
            let mut b = [1u8; 5];
            b[1..].copy_from_slice(&k.to_le_bytes());
            b
        }));
        h.update((self.release.len() as u64).to_le_bytes());
        h.update(self.release.as_bytes());
        let digest = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
        HostFingerprint { digest, tsc_khz: self.tsc_khz }
    }
}

/// This host's fingerprint. Creates a scratch VM with one vCPU for the TSC
/// rate, so it costs about as much as starting a VM: callers cache it.
pub fn host_fingerprint(kvm: &Kvm) -> Result<HostFingerprint, SnapshotError> {
    let cpuid = kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES).map_err(kvm_err("KVM_GET_SUPPORTED_CPUID"))?;
    let msrs = kvm.get_msr_index_list().map_err(kvm_err("KVM_GET_MSR_INDEX_LIST"))?;
    let vm = kvm.create_vm().map_err(kvm_err("KVM_CREATE_VM"))?;
    let vcpu = vm.create_vcpu(0).map_err(kvm_err("KVM_CREATE_VCPU"))?;
    let tsc_khz = vcpu.get_tsc_khz().ok();
    let uts = nix::sys::utsname::uname().map_err(SnapshotError::HostRelease)?;
    let release = uts.release().to_string_lossy();
    Ok(HostFacts {
        api_version: kvm.get_api_version(),
        cpuid: cpuid.as_slice(),
        msr_indices: msrs.as_slice(),
        tsc_khz,
        release: &release,
    }
    .fingerprint())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts<'a>(cpuid: &'a [kvm_cpuid_entry2], msrs: &'a [u32], tsc: Option<u32>) -> HostFacts<'a> {
        HostFacts { api_version: 12, cpuid, msr_indices: msrs, tsc_khz: tsc, release: "6.1.0-57-cloud-amd64" }
    }

    #[test]
    fn fingerprint_changes_with_each_input_and_only_then() {
        let cpuid = [kvm_cpuid_entry2 { function: 1, eax: 0x806f8, ..Default::default() }];
        let msrs = [0x10, 0x174];
        let base = facts(&cpuid, &msrs, Some(2_000_000)).fingerprint();
        assert_eq!(base, facts(&cpuid, &msrs, Some(2_000_000)).fingerprint());
        assert_eq!(base.digest.len(), 64);
        assert_eq!(base.tsc_khz, Some(2_000_000));

        let other_cpuid = [kvm_cpuid_entry2 { function: 1, eax: 0x806f9, ..Default::default() }];
        let mut variants = vec![
            facts(&other_cpuid, &msrs, Some(2_000_000)).fingerprint(),
            facts(&cpuid, &msrs[..1], Some(2_000_000)).fingerprint(),
            facts(&cpuid, &msrs, Some(2_000_001)).fingerprint(),
            facts(&cpuid, &msrs, None).fingerprint(),
            HostFacts { api_version: 13, ..facts(&cpuid, &msrs, Some(2_000_000)) }.fingerprint(),
            HostFacts { release: "6.1.0-58-cloud-amd64", ..facts(&cpuid, &msrs, Some(2_000_000)) }.fingerprint(),
        ];
        variants.push(base.clone());
        let mut digests: Vec<_> = variants.iter().map(|f| f.digest.clone()).collect();
        digests.sort();
        digests.dedup();
        assert_eq!(digests.len(), variants.len());
    }

    #[test]
    fn fingerprint_check_names_the_tsc_first() {
        let cpuid = [kvm_cpuid_entry2::default()];
        let saved = facts(&cpuid, &[0x10], Some(2_000_000)).fingerprint();
        assert!(saved.check(&saved.clone()).is_ok());

        let retimed = facts(&cpuid, &[0x10], Some(1_999_000)).fingerprint();
        let e = saved.check(&retimed).unwrap_err();
        assert!(matches!(e, SnapshotError::TscFrequency { .. }), "{e}");
        assert!(e.to_string().contains("1999000 kHz"), "{e}");

        let other = facts(&cpuid, &[0x10, 0x11], Some(2_000_000)).fingerprint();
        assert!(matches!(saved.check(&other), Err(SnapshotError::HostMismatch { .. })));
    }
}
