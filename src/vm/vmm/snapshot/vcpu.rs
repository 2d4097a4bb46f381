//! Saving and restoring one vCPU's KVM state, in the orders KVM's
//! dependencies between the calls require. The calls go through
//! [`VcpuOps`] so that the orders and the MSR handling are tested without
//! KVM.
//!
//! MSRs: only an allow-list of architectural and KVM paravirtual MSRs is
//! saved (the rest of `KVM_GET_MSR_INDEX_LIST` is PMU, feature and
//! host-specific state a Linux guest does not need restored), plus the
//! MTRRs, which KVM emulates without listing them. KVM may list
//! MSRs it then refuses for the vCPU's CPUID (nested hosts do): reads and
//! writes skip a refused MSR and go on, unless it is one the guest cannot
//! run without, which fails the snapshot or the restore instead of
//! producing a guest with a broken clock or system calls.

use kvm_bindings::{
    kvm_cpuid_entry2, kvm_debugregs, kvm_lapic_state, kvm_mp_state, kvm_msr_entry, kvm_regs, kvm_sregs,
    kvm_vcpu_events, kvm_xcrs, kvm_xsave, CpuId, Msrs, Xsave, KVM_MAX_CPUID_ENTRIES, KVM_MAX_MSR_ENTRIES,
    KVM_VCPUEVENT_VALID_NMI_PENDING, KVM_VCPUEVENT_VALID_SIPI_VECTOR,
};
use kvm_ioctls::{Cap, Error, Kvm, VcpuFd, VmFd};

use super::{kvm_err, SnapshotError, VcpuState};

/// MSR ranges (inclusive) worth saving: what a Linux guest programs and
/// expects back.
const SERIALIZABLE_MSRS: &[(u32, u32)] = &[
    (0x10, 0x10),               // IA32_TSC
    (0x11, 0x12),               // KVM wall clock, system time (first ABI)
    (0x1b, 0x1b),               // IA32_APIC_BASE
    (0x3b, 0x3b),               // IA32_TSC_ADJUST
    (0x48, 0x48),               // IA32_SPEC_CTRL
    (0x140, 0x140),             // MISC_FEATURES_ENABLES (CPUID faulting)
    (0x174, 0x176),             // IA32_SYSENTER_CS/ESP/EIP
    (0x1a0, 0x1a0),             // IA32_MISC_ENABLE
    (0x200, 0x2ff),             // MTRRs, PAT (0x277), MTRR_DEF_TYPE (0x2ff)
    (0x6e0, 0x6e0),             // IA32_TSC_DEADLINE
    (0xda0, 0xda0),             // IA32_XSS
    (0xc000_0080, 0xc000_0084), // EFER, STAR, LSTAR, CSTAR, SFMASK
    (0xc000_0100, 0xc000_0103), // FS_BASE, GS_BASE, KERNEL_GS_BASE, TSC_AUX
    (0x4b56_4d00, 0x4b56_4dff), // KVM paravirtual MSRs (kvmclock, async PF, steal time, PV EOI...)
];

/// MSRs that are never skipped: without them a restored guest's time
/// jumps or stops, or its next system call or interrupt entry faults.
const ESSENTIAL_MSRS: &[(u32, &str)] = &[
    (0x10, "IA32_TSC"),
    (0x11, "KVM_WALL_CLOCK"),
    (0x12, "KVM_SYSTEM_TIME"),
    (0x174, "IA32_SYSENTER_CS"),
    (0x175, "IA32_SYSENTER_ESP"),
    (0x176, "IA32_SYSENTER_EIP"),
    (0x6e0, "IA32_TSC_DEADLINE"),
    (0xc000_0080, "EFER"),
    (0xc000_0081, "STAR"),
    (0xc000_0082, "LSTAR"),
    (0xc000_0083, "CSTAR"),
    (0xc000_0084, "SFMASK"),
    (0xc000_0102, "KERNEL_GS_BASE"),
    (0x4b56_4d00, "KVM_WALL_CLOCK_NEW"),
    (0x4b56_4d01, "KVM_SYSTEM_TIME_NEW"),
];

fn essential_msr(index: u32) -> Option<&'static str> {
    ESSENTIAL_MSRS.iter().find(|(i, _)| *i == index).map(|(_, name)| *name)
}

/// Words in the legacy 4 KiB `kvm_xsave` area.
const LEGACY_XSAVE_WORDS: usize = 1024;

/// Bytes KVM reads and writes for a vCPU's xsave area in this process:
/// `KVM_CAP_XSAVE2`, at least the legacy 4 KiB. Only [`XsaveSize::of`]
/// makes one, because a smaller buffer than KVM's would let it read or
/// write past it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct XsaveSize(usize);

impl XsaveSize {
    pub fn of(vm: &VmFd) -> XsaveSize {
        let cap = usize::try_from(vm.check_extension_int(Cap::Xsave2)).unwrap_or(0);
        XsaveSize(cap.max(LEGACY_XSAVE_WORDS * 4))
    }

    pub fn bytes(self) -> usize {
        self.0
    }

    fn words(self) -> usize {
        self.0.div_ceil(4)
    }
}

/// The vCPU ioctls a snapshot uses. MSR calls take at most
/// `KVM_MAX_MSR_ENTRIES` entries and return how many KVM processed: a
/// short count means `entries[count]` was refused.
pub trait VcpuOps {
    fn get_mp_state(&self) -> Result<kvm_mp_state, Error>;
    fn set_mp_state(&self, s: kvm_mp_state) -> Result<(), Error>;
    fn get_regs(&self) -> Result<kvm_regs, Error>;
    fn set_regs(&self, r: &kvm_regs) -> Result<(), Error>;
    fn get_sregs(&self) -> Result<kvm_sregs, Error>;
    fn set_sregs(&self, s: &kvm_sregs) -> Result<(), Error>;
    /// The xsave area as 32-bit words, [`XsaveSize::bytes`] long.
    fn get_xsave(&self, size: XsaveSize) -> Result<Vec<u32>, Error>;
    fn set_xsave(&self, area: &[u32], size: XsaveSize) -> Result<(), Error>;
    fn get_xcrs(&self) -> Result<kvm_xcrs, Error>;
    fn set_xcrs(&self, x: &kvm_xcrs) -> Result<(), Error>;
    fn get_debug_regs(&self) -> Result<kvm_debugregs, Error>;
    fn set_debug_regs(&self, d: &kvm_debugregs) -> Result<(), Error>;
    fn get_lapic(&self) -> Result<kvm_lapic_state, Error>;
    fn set_lapic(&self, l: &kvm_lapic_state) -> Result<(), Error>;
    fn get_tsc_khz(&self) -> Result<u32, Error>;
    fn get_cpuid(&self) -> Result<Vec<kvm_cpuid_entry2>, Error>;
    fn set_cpuid(&self, entries: &[kvm_cpuid_entry2]) -> Result<(), Error>;
    fn get_msrs(&self, entries: &mut [kvm_msr_entry]) -> Result<usize, Error>;
    fn set_msrs(&self, entries: &[kvm_msr_entry]) -> Result<usize, Error>;
    fn get_vcpu_events(&self) -> Result<kvm_vcpu_events, Error>;
    fn set_vcpu_events(&self, e: &kvm_vcpu_events) -> Result<(), Error>;
    fn kvmclock_ctrl(&self) -> Result<(), Error>;
}

/// A fam-wrapper allocation that failed: more entries than KVM takes.
fn too_many<E>(_: E) -> Error {
    Error::new(libc::E2BIG)
}

impl VcpuOps for VcpuFd {
    delegate!(VcpuFd:
        fn get_mp_state(&self) -> Result<kvm_mp_state, Error>;
        fn set_mp_state(&self, s: kvm_mp_state) -> Result<(), Error>;
        fn get_regs(&self) -> Result<kvm_regs, Error>;
        fn set_regs(&self, r: &kvm_regs) -> Result<(), Error>;
        fn get_sregs(&self) -> Result<kvm_sregs, Error>;
        fn set_sregs(&self, s: &kvm_sregs) -> Result<(), Error>;
        fn get_xcrs(&self) -> Result<kvm_xcrs, Error>;
        fn set_xcrs(&self, x: &kvm_xcrs) -> Result<(), Error>;
        fn get_debug_regs(&self) -> Result<kvm_debugregs, Error>;
        fn set_debug_regs(&self, d: &kvm_debugregs) -> Result<(), Error>;
        fn get_lapic(&self) -> Result<kvm_lapic_state, Error>;
        fn set_lapic(&self, l: &kvm_lapic_state) -> Result<(), Error>;
        fn get_tsc_khz(&self) -> Result<u32, Error>;
        fn get_vcpu_events(&self) -> Result<kvm_vcpu_events, Error>;
        fn set_vcpu_events(&self, e: &kvm_vcpu_events) -> Result<(), Error>;
    );

    fn get_xsave(&self, size: XsaveSize) -> Result<Vec<u32>, Error> {
        if size.words() <= LEGACY_XSAVE_WORDS {
            return Ok(VcpuFd::get_xsave(self)?.region.to_vec());
        }
        let mut x = Xsave::new(size.words() - LEGACY_XSAVE_WORDS).map_err(too_many)?;
        // SAFETY: `x` holds `size` bytes, KVM_CAP_XSAVE2 for this process,
        // which bounds what KVM_GET_XSAVE2 writes.
        unsafe { self.get_xsave2(&mut x) }?;
        let mut words = x.as_fam_struct_ref().xsave.region.to_vec();
        words.extend_from_slice(x.as_slice());
        Ok(words)
    }

    fn set_xsave(&self, area: &[u32], size: XsaveSize) -> Result<(), Error> {
        // KVM reads its own size whatever we pass: never hand it less.
        let words = area.len().max(size.words()).max(LEGACY_XSAVE_WORDS);
        let (region, extra) = area.split_at(area.len().min(LEGACY_XSAVE_WORDS));
        if words == LEGACY_XSAVE_WORDS {
            let mut x = kvm_xsave::default();
            x.region[..region.len()].copy_from_slice(region);
            // SAFETY: KVM reads at most `size` bytes, here 4 KiB: all of `x`.
            return unsafe { VcpuFd::set_xsave(self, &x) };
        }
        let mut x = Xsave::new(words - LEGACY_XSAVE_WORDS).map_err(too_many)?;
        // SAFETY: only the fixed-size region is written, never the length
        // the wrapper's invariant rests on.
        unsafe { x.as_mut_fam_struct() }.xsave.region[..region.len()].copy_from_slice(region);
        x.as_mut_slice()[..extra.len()].copy_from_slice(extra);
        // SAFETY: `x` holds at least `size` bytes, which bounds what KVM
        // reads.
        unsafe { self.set_xsave2(&x) }
    }

    fn get_cpuid(&self) -> Result<Vec<kvm_cpuid_entry2>, Error> {
        Ok(self.get_cpuid2(KVM_MAX_CPUID_ENTRIES)?.as_slice().to_vec())
    }
    fn set_cpuid(&self, entries: &[kvm_cpuid_entry2]) -> Result<(), Error> {
        self.set_cpuid2(&CpuId::from_entries(entries).map_err(too_many)?)
    }

    fn get_msrs(&self, entries: &mut [kvm_msr_entry]) -> Result<usize, Error> {
        let mut msrs = Msrs::from_entries(entries).map_err(too_many)?;
        let n = VcpuFd::get_msrs(self, &mut msrs)?.min(entries.len());
        entries[..n].copy_from_slice(&msrs.as_slice()[..n]);
        Ok(n)
    }
    fn set_msrs(&self, entries: &[kvm_msr_entry]) -> Result<usize, Error> {
        VcpuFd::set_msrs(self, &Msrs::from_entries(entries).map_err(too_many)?)
    }

    fn kvmclock_ctrl(&self) -> Result<(), Error> {
        VcpuFd::kvmclock_ctrl(self)
    }
}

/// MTRRs KVM emulates for every vCPU but leaves out of
/// `KVM_GET_MSR_INDEX_LIST`: the 8 variable pairs, the fixed-range ones
/// and MTRR_DEF_TYPE (which amphi's boot sets).
fn unlisted_mtrrs() -> impl Iterator<Item = u32> {
    (0x200..=0x20f).chain([0x250, 0x258, 0x259]).chain(0x268..=0x26f).chain([0x2ff])
}

/// The MSRs to save on this host: KVM's list filtered by the allow-list,
/// plus the MTRRs it does not list.
pub fn snapshot_msr_indices(kvm: &Kvm) -> Result<Vec<u32>, SnapshotError> {
    let list = kvm.get_msr_index_list().map_err(kvm_err("KVM_GET_MSR_INDEX_LIST"))?;
    Ok(to_save(list.as_slice()))
}

fn to_save(listed: &[u32]) -> Vec<u32> {
    let mut out: Vec<u32> =
        listed.iter().copied().filter(|i| SERIALIZABLE_MSRS.iter().any(|(lo, hi)| (lo..=hi).contains(&i))).collect();
    for i in unlisted_mtrrs() {
        if !out.contains(&i) {
            out.push(i);
        }
    }
    out
}

/// Runs `call` over `entries` in batches KVM accepts, skipping each entry
/// it refuses. Returns the entries processed and the indices skipped; a
/// refused essential MSR is an error (`op` names the direction).
fn each_msr(
    mut entries: Vec<kvm_msr_entry>,
    op: &'static str,
    ioctl: &'static str,
    mut call: impl FnMut(&mut [kvm_msr_entry]) -> Result<usize, Error>,
) -> Result<(Vec<kvm_msr_entry>, Vec<u32>), SnapshotError> {
    let mut done = Vec::with_capacity(entries.len());
    let mut skipped = Vec::new();
    let mut at = 0;
    let total = entries.len();
    while at < total {
        let batch = &mut entries[at..(at + KVM_MAX_MSR_ENTRIES).min(total)];
        let n = call(batch).map_err(kvm_err(ioctl))?.min(batch.len());
        done.extend_from_slice(&batch[..n]);
        at += n;
        if n < batch.len() {
            let index = batch[n].index;
            if let Some(name) = essential_msr(index) {
                return Err(SnapshotError::EssentialMsr { op, index, name });
            }
            skipped.push(index);
            at += 1;
        }
    }
    Ok((done, skipped))
}

fn msr_entries(pairs: impl Iterator<Item = (u32, u64)>) -> Vec<kvm_msr_entry> {
    pairs.map(|(index, data)| kvm_msr_entry { index, data, ..Default::default() }).collect()
}

/// Saves a paused vCPU (on its own thread, after its last exit completed).
/// Returns the state and the MSRs of `msr_indices` KVM refused to read.
pub fn save_vcpu(
    ops: &impl VcpuOps,
    msr_indices: &[u32],
    xsave: XsaveSize,
) -> Result<(VcpuState, Vec<u32>), SnapshotError> {
    // First: KVM_GET_MP_STATE processes pending INIT/SIPI into the LAPIC,
    // which the LAPIC saved below must already reflect.
    let mp_state = ops.get_mp_state().map_err(kvm_err("KVM_GET_MP_STATE"))?;
    let regs = ops.get_regs().map_err(kvm_err("KVM_GET_REGS"))?;
    let sregs = ops.get_sregs().map_err(kvm_err("KVM_GET_SREGS"))?;
    let xsave = ops.get_xsave(xsave).map_err(kvm_err("KVM_GET_XSAVE"))?;
    let xcrs = ops.get_xcrs().map_err(kvm_err("KVM_GET_XCRS"))?;
    let debugregs = ops.get_debug_regs().map_err(kvm_err("KVM_GET_DEBUGREGS"))?;
    let lapic = ops.get_lapic().map_err(kvm_err("KVM_GET_LAPIC"))?;
    let tsc_khz = ops.get_tsc_khz().ok();
    let cpuid = ops.get_cpuid().map_err(kvm_err("KVM_GET_CPUID2"))?;
    let (msrs, skipped) =
        each_msr(msr_entries(msr_indices.iter().map(|&i| (i, 0))), "read", "KVM_GET_MSRS", |e| ops.get_msrs(e))?;
    // Last: the calls above may queue events (an exception, an NMI) that
    // only this one reports.
    let vcpu_events = ops.get_vcpu_events().map_err(kvm_err("KVM_GET_VCPU_EVENTS"))?;
    let state = VcpuState {
        cpuid,
        msrs: msrs.iter().map(|e| (e.index, e.data)).collect(),
        regs,
        sregs,
        xsave,
        xcrs,
        debugregs,
        lapic,
        mp_state,
        vcpu_events,
        tsc_khz,
    };
    Ok((state, skipped))
}

/// Restores a vCPU created as for a cold boot, before it first runs.
/// Never changes the TSC rate: a snapshot is only restored where the rate
/// matches (see [`super::HostFingerprint`]).
pub fn restore_vcpu(ops: &impl VcpuOps, s: &VcpuState, xsave: XsaveSize) -> Result<(), SnapshotError> {
    ops.set_cpuid(&s.cpuid).map_err(kvm_err("KVM_SET_CPUID2"))?;
    ops.set_mp_state(s.mp_state).map_err(kvm_err("KVM_SET_MP_STATE"))?;
    // SET_REGS drops pending exceptions: events come after it.
    ops.set_regs(&s.regs).map_err(kvm_err("KVM_SET_REGS"))?;
    ops.set_sregs(&s.sregs).map_err(kvm_err("KVM_SET_SREGS"))?;
    ops.set_xsave(&s.xsave, xsave).map_err(kvm_err("KVM_SET_XSAVE"))?;
    // A CPU without XSAVE reports no XCRs, and KVM refuses to set any.
    if s.xcrs.nr_xcrs > 0 {
        ops.set_xcrs(&s.xcrs).map_err(kvm_err("KVM_SET_XCRS"))?;
    }
    ops.set_debug_regs(&s.debugregs).map_err(kvm_err("KVM_SET_DEBUGREGS"))?;
    // After the sregs (they carry the APIC base) and before the MSRs
    // (TSC_DEADLINE only sticks once the LAPIC timer is in deadline mode).
    ops.set_lapic(&s.lapic).map_err(kvm_err("KVM_SET_LAPIC"))?;
    let (_, skipped) = each_msr(msr_entries(s.msrs.iter().copied()), "write", "KVM_SET_MSRS", |e| ops.set_msrs(e))?;
    if !skipped.is_empty() {
        crate::logging::debug_with(|| {
            format!("snapshot restore: KVM refused MSRs {skipped:#x?}, left at reset values")
        });
    }
    // KVM_GET_VCPU_EVENTS fills the pending NMI and SIPI vector but does
    // not flag them valid; without the flags KVM_SET would ignore them.
    let mut events = s.vcpu_events;
    events.flags |= KVM_VCPUEVENT_VALID_NMI_PENDING | KVM_VCPUEVENT_VALID_SIPI_VECTOR;
    ops.set_vcpu_events(&events).map_err(kvm_err("KVM_SET_VCPU_EVENTS"))?;
    // Tells a kvmclock guest it was stopped, so its soft-lockup watchdog
    // does not fire over the gap; EINVAL when the guest has no kvmclock.
    match ops.kvmclock_ctrl() {
        Err(e) if e.errno() != libc::EINVAL => Err(SnapshotError::Kvm { op: "KVM_KVMCLOCK_CTRL", source: e }),
        _ => Ok(()),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::cell::RefCell;

    /// Records the calls made, refuses the MSRs it is told to, and hands
    /// back on `get_*` whatever a `set_*` stored (or a recognisable
    /// default).
    #[derive(Default)]
    pub(crate) struct FakeVcpu {
        pub calls: RefCell<Vec<&'static str>>,
        pub refuse_read: Vec<u32>,
        pub refuse_write: Vec<u32>,
        pub msrs: RefCell<Vec<(u32, u64)>>,
        pub events: RefCell<Option<kvm_vcpu_events>>,
        pub xsave_words: RefCell<Vec<u32>>,
        pub no_xsave_cpu: bool,
        pub kvmclock_errno: Option<i32>,
    }

    impl FakeVcpu {
        fn call(&self, name: &'static str) {
            self.calls.borrow_mut().push(name);
        }
        fn calls(&self) -> Vec<&'static str> {
            self.calls.borrow().clone()
        }
    }

    /// Setters whose call is recorded and that accept anything.
    macro_rules! recorded_sets {
        ($($name:ident($ty:ty)),*) => {
            $(fn $name(&self, _: $ty) -> Result<(), Error> {
                self.call(stringify!($name));
                Ok(())
            })*
        };
    }

    impl VcpuOps for FakeVcpu {
        recorded_sets!(
            set_mp_state(kvm_mp_state),
            set_regs(&kvm_regs),
            set_sregs(&kvm_sregs),
            set_xcrs(&kvm_xcrs),
            set_debug_regs(&kvm_debugregs),
            set_lapic(&kvm_lapic_state),
            set_cpuid(&[kvm_cpuid_entry2])
        );

        fn get_mp_state(&self) -> Result<kvm_mp_state, Error> {
            self.call("get_mp_state");
            Ok(kvm_mp_state { mp_state: 3 })
        }
        fn get_regs(&self) -> Result<kvm_regs, Error> {
            self.call("get_regs");
            Ok(kvm_regs { rip: 0xffff_ffff_8100_0000, rflags: 2, ..Default::default() })
        }
        fn get_sregs(&self) -> Result<kvm_sregs, Error> {
            self.call("get_sregs");
            Ok(kvm_sregs { cr0: 0x8005_0033, efer: 0xd01, ..Default::default() })
        }
        fn get_xsave(&self, size: XsaveSize) -> Result<Vec<u32>, Error> {
            self.call("get_xsave");
            let mut area = vec![0u32; size.words()];
            // FXSAVE's FCW at 0; XSTATE_BV (x87|SSE) at byte 512 only on an
            // XSAVE CPU.
            area[0] = 0x037f;
            if !self.no_xsave_cpu {
                area[128] = 3;
            }
            Ok(area)
        }
        fn set_xsave(&self, area: &[u32], _: XsaveSize) -> Result<(), Error> {
            self.call("set_xsave");
            *self.xsave_words.borrow_mut() = area.to_vec();
            Ok(())
        }
        fn get_xcrs(&self) -> Result<kvm_xcrs, Error> {
            self.call("get_xcrs");
            let mut x = kvm_xcrs::default();
            if !self.no_xsave_cpu {
                x.nr_xcrs = 1;
                x.xcrs[0].value = 7;
            }
            Ok(x)
        }
        fn get_debug_regs(&self) -> Result<kvm_debugregs, Error> {
            self.call("get_debug_regs");
            Ok(kvm_debugregs::default())
        }
        fn get_lapic(&self) -> Result<kvm_lapic_state, Error> {
            self.call("get_lapic");
            let mut l = kvm_lapic_state::default();
            l.regs[0x20] = 1;
            Ok(l)
        }
        fn get_tsc_khz(&self) -> Result<u32, Error> {
            self.call("get_tsc_khz");
            Ok(2_495_998)
        }
        fn get_cpuid(&self) -> Result<Vec<kvm_cpuid_entry2>, Error> {
            self.call("get_cpuid");
            Ok(vec![kvm_cpuid_entry2 { function: 0, eax: 0xd, ..Default::default() }])
        }
        fn get_msrs(&self, entries: &mut [kvm_msr_entry]) -> Result<usize, Error> {
            self.call("get_msrs");
            for (n, e) in entries.iter_mut().enumerate() {
                if self.refuse_read.contains(&e.index) {
                    return Ok(n);
                }
                e.data = u64::from(e.index) * 2;
            }
            Ok(entries.len())
        }
        fn set_msrs(&self, entries: &[kvm_msr_entry]) -> Result<usize, Error> {
            self.call("set_msrs");
            for (n, e) in entries.iter().enumerate() {
                if self.refuse_write.contains(&e.index) {
                    return Ok(n);
                }
                self.msrs.borrow_mut().push((e.index, e.data));
            }
            Ok(entries.len())
        }
        fn get_vcpu_events(&self) -> Result<kvm_vcpu_events, Error> {
            self.call("get_vcpu_events");
            let mut e = kvm_vcpu_events::default();
            e.nmi.pending = 1;
            Ok(e)
        }
        fn set_vcpu_events(&self, e: &kvm_vcpu_events) -> Result<(), Error> {
            self.call("set_vcpu_events");
            *self.events.borrow_mut() = Some(*e);
            Ok(())
        }
        fn kvmclock_ctrl(&self) -> Result<(), Error> {
            self.call("kvmclock_ctrl");
            self.kvmclock_errno.map_or(Ok(()), |e| Err(Error::new(e)))
        }
    }

    pub(crate) const LEGACY: XsaveSize = XsaveSize(4096);

    fn saved(fake: &FakeVcpu, indices: &[u32]) -> (VcpuState, Vec<u32>) {
        save_vcpu(fake, indices, LEGACY).unwrap()
    }

    #[test]
    fn save_gets_mp_state_first_and_events_last() {
        let fake = FakeVcpu::default();
        let (s, skipped) = saved(&fake, &[0x10, 0xc000_0082]);
        assert_eq!(
            fake.calls(),
            [
                "get_mp_state",
                "get_regs",
                "get_sregs",
                "get_xsave",
                "get_xcrs",
                "get_debug_regs",
                "get_lapic",
                "get_tsc_khz",
                "get_cpuid",
                "get_msrs",
                "get_vcpu_events"
            ]
        );
        assert!(skipped.is_empty());
        assert_eq!(s.msrs, [(0x10, 0x20), (0xc000_0082, 0x1_8000_0104)]);
        assert_eq!(s.tsc_khz, Some(2_495_998));
        assert_eq!(s.xsave.len(), 1024);
    }

    #[test]
    fn restore_runs_in_dependency_order_and_flags_nmi_valid() {
        let fake = FakeVcpu::default();
        let (s, _) = saved(&fake, &[0x10]);
        let fake = FakeVcpu::default();
        restore_vcpu(&fake, &s, LEGACY).unwrap();
        assert_eq!(
            fake.calls(),
            [
                "set_cpuid",
                "set_mp_state",
                "set_regs",
                "set_sregs",
                "set_xsave",
                "set_xcrs",
                "set_debug_regs",
                "set_lapic",
                "set_msrs",
                "set_vcpu_events",
                "kvmclock_ctrl"
            ]
        );
        let events = fake.events.borrow().unwrap();
        assert_eq!(events.nmi.pending, 1);
        assert_ne!(events.flags & KVM_VCPUEVENT_VALID_NMI_PENDING, 0);
        assert_ne!(events.flags & KVM_VCPUEVENT_VALID_SIPI_VECTOR, 0);
        assert_eq!(*fake.msrs.borrow(), [(0x10, 0x20)]);
    }

    #[test]
    fn a_cpu_without_xsave_restores_its_fxsave_area_and_no_xcrs() {
        let fake = FakeVcpu { no_xsave_cpu: true, ..Default::default() };
        let (s, _) = saved(&fake, &[]);
        assert_eq!(s.xcrs.nr_xcrs, 0);
        let fake = FakeVcpu::default();
        restore_vcpu(&fake, &s, LEGACY).unwrap();
        assert!(!fake.calls().contains(&"set_xcrs"));
        assert_eq!(fake.xsave_words.borrow()[0], 0x037f);
    }

    #[test]
    fn kvmclock_ctrl_einval_is_ignored_other_errors_are_not() {
        let (s, _) = saved(&FakeVcpu::default(), &[]);
        let inactive = FakeVcpu { kvmclock_errno: Some(libc::EINVAL), ..Default::default() };
        restore_vcpu(&inactive, &s, LEGACY).unwrap();
        let broken = FakeVcpu { kvmclock_errno: Some(libc::EIO), ..Default::default() };
        let e = restore_vcpu(&broken, &s, LEGACY).unwrap_err();
        assert!(matches!(e, SnapshotError::Kvm { op: "KVM_KVMCLOCK_CTRL", .. }), "{e}");
    }

    #[test]
    fn refused_msrs_are_skipped_and_reported() {
        // PMU and TSX_CTRL refused, as a nested L1 KVM does for its CPUID.
        let fake = FakeVcpu { refuse_read: vec![0xc1, 0x122, 0x4b56_4d05], ..Default::default() };
        let indices = [0xc1, 0x10, 0x122, 0x123, 0x4b56_4d05];
        let (s, skipped) = saved(&fake, &indices);
        assert_eq!(skipped, [0xc1, 0x122, 0x4b56_4d05]);
        assert_eq!(s.msrs, [(0x10, 0x20), (0x123, 0x246)]);
        // One call per refusal, each resuming after the refused index; the
        // last refused index ends the list.
        assert_eq!(fake.calls().iter().filter(|c| **c == "get_msrs").count(), 3);

        let fake = FakeVcpu { refuse_write: vec![0x123], ..Default::default() };
        restore_vcpu(&fake, &s, LEGACY).unwrap();
        assert_eq!(*fake.msrs.borrow(), [(0x10, 0x20)]);
    }

    #[test]
    fn msrs_beyond_one_batch_are_all_processed() {
        let indices: Vec<u32> = (0x200..0x200 + KVM_MAX_MSR_ENTRIES as u32 + 10).collect();
        let fake = FakeVcpu { refuse_read: vec![0x200 + KVM_MAX_MSR_ENTRIES as u32 - 1], ..Default::default() };
        let (s, skipped) = saved(&fake, &indices);
        assert_eq!(skipped.len(), 1);
        assert_eq!(s.msrs.len(), indices.len() - 1);
    }

    #[test]
    fn a_refused_essential_msr_is_named() {
        let (s, _) = saved(&FakeVcpu::default(), &[0x10, 0x6e0, 0xc000_0082]);
        let fake = FakeVcpu { refuse_write: vec![0x6e0], ..Default::default() };
        let e = restore_vcpu(&fake, &s, LEGACY).unwrap_err();
        assert!(matches!(e, SnapshotError::EssentialMsr { index: 0x6e0, op: "write", .. }), "{e}");
        assert!(e.to_string().contains("IA32_TSC_DEADLINE (0x6e0)"), "{e}");
        assert!(!fake.calls().contains(&"set_vcpu_events"));

        let fake = FakeVcpu { refuse_read: vec![0xc000_0082], ..Default::default() };
        let e = save_vcpu(&fake, &[0x10, 0xc000_0082], LEGACY).unwrap_err();
        assert!(e.to_string().contains("read MSR LSTAR"), "{e}");
    }

    #[test]
    fn saved_msrs_are_the_allowed_listed_ones_and_the_mtrrs() {
        let host = [0x10, 0x11, 0x1b, 0x3a, 0xc1, 0x186, 0x277, 0x2ff, 0x6e0, 0xc000_0080, 0xc000_0103, 0x4b56_4d01];
        let saved = to_save(&host);
        let mtrrs: Vec<u32> = unlisted_mtrrs().filter(|i| *i != 0x2ff).collect();
        assert_eq!(saved[..9], [0x10, 0x11, 0x1b, 0x277, 0x2ff, 0x6e0, 0xc000_0080, 0xc000_0103, 0x4b56_4d01]);
        assert_eq!(saved[9..], mtrrs[..]);
        assert_eq!(mtrrs.len(), 16 + 3 + 8);
        for (index, _) in ESSENTIAL_MSRS {
            assert!(to_save(&[*index]).contains(index), "essential MSR {index:#x} must be saved");
        }
    }

    #[test]
    fn vcpu_state_survives_json() {
        let (s, _) = saved(&FakeVcpu::default(), &[0x10, 0x174]);
        let json = serde_json::to_string(&s).unwrap();
        let back: VcpuState = serde_json::from_str(&json).unwrap();
        assert_eq!(serde_json::to_string(&back).unwrap(), json);
        assert_eq!(back.regs.rip, 0xffff_ffff_8100_0000);
        assert_eq!(back.sregs.efer, 0xd01);
        assert_eq!(back.lapic.regs[0x20], 1);
        assert_eq!(back.xcrs.xcrs[0].value, 7);
        assert_eq!(back.cpuid[0].eax, 0xd);
        assert_eq!(back.msrs, s.msrs);
    }
}
