//! vCPU threads: configuration (CPUID, MSRs, LAPIC, registers) and the run
//! loop that dispatches port-I/O and MMIO exits to the buses and turns the
//! other exits into a reason for the VM to end.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use kvm_bindings::{kvm_msr_entry, CpuId, Msrs};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};

use super::cpuid;
use super::{ExitReason, VmmError};
use crate::vm::boot::{regs, EntryPoint};
use crate::vm::devices::Bus;

const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
const MISC_ENABLE_FAST_STRING: u64 = 1;
/// MTRRs on, default type write-back.
const MTRR_ENABLE_WB: u64 = (1 << 11) | 6;

const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_EXTINT: u32 = 0x7;
const APIC_MODE_NMI: u32 = 0x4;

const KVM_SYSTEM_EVENT_SHUTDOWN: u32 = 1;
const KVM_SYSTEM_EVENT_RESET: u32 = 2;
const KVM_SYSTEM_EVENT_CRASH: u32 = 3;
const KVM_INTERNAL_ERROR_EMULATION: u32 = 1;

/// The initial MSR values (what firmware would leave behind).
pub fn boot_msrs() -> Vec<kvm_msr_entry> {
    [
        (MSR_IA32_SYSENTER_CS, 0),
        (MSR_IA32_SYSENTER_ESP, 0),
        (MSR_IA32_SYSENTER_EIP, 0),
        (MSR_STAR, 0),
        (MSR_CSTAR, 0),
        (MSR_KERNEL_GS_BASE, 0),
        (MSR_SYSCALL_MASK, 0),
        (MSR_LSTAR, 0),
        (MSR_IA32_TSC, 0),
        (MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        (MSR_MTRR_DEF_TYPE, MTRR_ENABLE_WB),
    ]
    .iter()
    .map(|&(index, data)| kvm_msr_entry { index, data, ..Default::default() })
    .collect()
}

fn set_lvt(regs: &mut [i8], offset: usize, mode: u32) {
    let mut b = [0u8; 4];
    for (i, x) in b.iter_mut().enumerate() {
        *x = regs[offset + i] as u8;
    }
    let v = (u32::from_le_bytes(b) & !0x700) | (mode << 8);
    for (i, x) in v.to_le_bytes().iter().enumerate() {
        regs[offset + i] = *x as i8;
    }
}

/// What a KVM_EXIT_INTERNAL_ERROR means.
pub fn internal_error(suberror: u32) -> ExitReason {
    if suberror == KVM_INTERNAL_ERROR_EMULATION {
        ExitReason::EmulationFailure
    } else {
        ExitReason::Error(format!("KVM internal error, suberror {suberror}"))
    }
}

/// Handles one vCPU exit: device accesses go to the buses (unclaimed reads
/// float high on the I/O bus and read zero on MMIO); exits that end the VM
/// return why.
pub fn handle_exit(exit: VcpuExit<'_>, pio: &Bus, mmio: &Bus) -> Option<ExitReason> {
    match exit {
        VcpuExit::IoIn(port, data) => {
            if !pio.read(u64::from(port), data) {
                data.fill(0xff);
            }
            None
        }
        VcpuExit::IoOut(port, data) => {
            pio.write(u64::from(port), data);
            None
        }
        VcpuExit::MmioRead(addr, data) => {
            if !mmio.read(addr, data) {
                data.fill(0);
            }
            None
        }
        VcpuExit::MmioWrite(addr, data) => {
            mmio.write(addr, data);
            None
        }
        VcpuExit::Intr => None,
        VcpuExit::Hlt => Some(ExitReason::Halted),
        VcpuExit::Shutdown => Some(ExitReason::TripleFault),
        VcpuExit::SystemEvent(KVM_SYSTEM_EVENT_SHUTDOWN, _) => Some(ExitReason::PowerOff),
        VcpuExit::SystemEvent(KVM_SYSTEM_EVENT_RESET, _) => Some(ExitReason::Reset),
        VcpuExit::SystemEvent(KVM_SYSTEM_EVENT_CRASH, _) => Some(ExitReason::Crash),
        VcpuExit::SystemEvent(other, _) => Some(ExitReason::Error(format!("unknown KVM system event {other}"))),
        VcpuExit::FailEntry(reason, cpu) => {
            Some(ExitReason::Error(format!("KVM entry failed on cpu {cpu}, reason {reason:#x}")))
        }
        other => Some(ExitReason::Error(format!("unexpected vCPU exit {other:?}"))),
    }
}

pub struct Vcpu {
    pub index: u8,
    fd: VcpuFd,
    pio: Arc<Bus>,
    mmio: Arc<Bus>,
}

impl Vcpu {
    pub fn new(vm: &VmFd, index: u8, pio: Arc<Bus>, mmio: Arc<Bus>) -> Result<Self, VmmError> {
        let fd = vm.create_vcpu(u64::from(index)).map_err(|e| VmmError::Kvm("KVM_CREATE_VCPU", e))?;
        Ok(Vcpu { index, fd, pio, mmio })
    }

    /// Sets up this vCPU. Only the boot vCPU (index 0) gets registers: the
    /// others wait for the kernel's INIT/SIPI in the in-kernel LAPIC.
    pub fn configure(&self, kvm: &Kvm, base_cpuid: &CpuId, count: u8, entry: EntryPoint) -> Result<(), VmmError> {
        let mut cpuid = base_cpuid.clone();
        let tsc_deadline = kvm.check_extension(kvm_ioctls::Cap::TscDeadlineTimer);
        cpuid::adjust(cpuid.as_mut_slice(), self.index, count, tsc_deadline);
        self.fd.set_cpuid2(&cpuid).map_err(|e| VmmError::Kvm("KVM_SET_CPUID2", e))?;

        let msrs = Msrs::from_entries(&boot_msrs()).map_err(|_| VmmError::MsrList)?;
        let written = self.fd.set_msrs(&msrs).map_err(|e| VmmError::Kvm("KVM_SET_MSRS", e))?;
        if written != msrs.as_slice().len() {
            return Err(VmmError::MsrList);
        }

        let mut lapic = self.fd.get_lapic().map_err(|e| VmmError::Kvm("KVM_GET_LAPIC", e))?;
        set_lvt(&mut lapic.regs, APIC_LVT0, APIC_MODE_EXTINT);
        set_lvt(&mut lapic.regs, APIC_LVT1, APIC_MODE_NMI);
        self.fd.set_lapic(&lapic).map_err(|e| VmmError::Kvm("KVM_SET_LAPIC", e))?;

        self.fd.set_fpu(&regs::fpu()).map_err(|e| VmmError::Kvm("KVM_SET_FPU", e))?;
        if self.index == 0 {
            let sregs = self.fd.get_sregs().map_err(|e| VmmError::Kvm("KVM_GET_SREGS", e))?;
            self.fd.set_sregs(&regs::sregs(entry, sregs)).map_err(|e| VmmError::Kvm("KVM_SET_SREGS", e))?;
            self.fd.set_regs(&regs::regs(entry)).map_err(|e| VmmError::Kvm("KVM_SET_REGS", e))?;
        }
        Ok(())
    }

    /// The vCPU's KVM handle, for saving and restoring its state.
    pub fn fd(&self) -> &VcpuFd {
        &self.fd
    }

    /// Runs until the VM must end or `stop` is set (then a signal kicks the
    /// thread out of KVM_RUN). `on_first_entry` runs just before the first
    /// KVM_RUN. A stopped vCPU has its last exit completed, so its state
    /// can be saved.
    pub fn run(&mut self, stop: &AtomicBool, on_first_entry: impl FnOnce()) -> ExitReason {
        let mut first = Some(on_first_entry);
        loop {
            if stop.load(Ordering::Acquire) {
                self.complete_exit();
                return ExitReason::Stopped;
            }
            if let Some(f) = first.take() {
                f();
            }
            match self.fd.run() {
                Ok(VcpuExit::InternalError) => {
                    // SAFETY: KVM filled the `internal` member of the
                    // kvm_run union for a KVM_EXIT_INTERNAL_ERROR exit.
                    let suberror = unsafe { self.fd.get_kvm_run().__bindgen_anon_1.internal.suberror };
                    return internal_error(suberror);
                }
                Ok(exit) => {
                    if let Some(reason) = handle_exit(exit, &self.pio, &self.mmio) {
                        return reason;
                    }
                }
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {}
                Err(e) => return ExitReason::Error(format!("KVM_RUN failed: {e}")),
            }
        }
    }

    /// An I/O or MMIO exit is complete (the read value in the guest's
    /// register, the instruction retired) only once KVM_RUN is entered
    /// again; with `immediate_exit` set KVM finishes it and returns at once
    /// without running guest code (KVM API, "kvm_run").
    fn complete_exit(&mut self) {
        self.fd.set_kvm_immediate_exit(1);
        let _ = self.fd.run();
        self.fd.set_kvm_immediate_exit(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::vm::devices::BusDevice;
    use std::sync::Mutex;

    struct Reg(u8);
    impl BusDevice for Reg {
        fn read(&mut self, _: u64, data: &mut [u8]) {
            data.fill(self.0);
        }
        fn write(&mut self, _: u64, data: &[u8]) {
            self.0 = data[0];
        }
    }

    fn buses() -> (Bus, Bus) {
        let mut pio = Bus::new();
        pio.insert(0x600, 1, Arc::new(Mutex::new(Reg(0)))).unwrap();
        let mut mmio = Bus::new();
        mmio.insert(0xd000_0000, 0x1000, Arc::new(Mutex::new(Reg(7)))).unwrap();
        (pio, mmio)
    }

    #[test]
    fn device_exits_reach_the_buses_and_unclaimed_reads_float() {
        let (pio, mmio) = buses();
        assert_eq!(handle_exit(VcpuExit::IoOut(0x600, &[0x34]), &pio, &mmio), None);
        let mut b = [0u8; 1];
        assert_eq!(handle_exit(VcpuExit::IoIn(0x600, &mut b), &pio, &mmio), None);
        assert_eq!(b, [0x34]);
        let mut b = [0u8; 2];
        handle_exit(VcpuExit::IoIn(0x70, &mut b), &pio, &mmio);
        assert_eq!(b, [0xff, 0xff], "no device: the I/O bus floats high");
        let mut m = [1u8; 4];
        handle_exit(VcpuExit::MmioRead(0xd000_0010, &mut m), &pio, &mmio);
        assert_eq!(m, [7; 4]);
        handle_exit(VcpuExit::MmioRead(0xe000_0000, &mut m), &pio, &mmio);
        assert_eq!(m, [0; 4], "unclaimed MMIO reads zero");
    }

    #[test]
    fn exits_that_end_the_vm_say_why() {
        let (pio, mmio) = buses();
        let h = |e| handle_exit(e, &pio, &mmio);
        assert_eq!(h(VcpuExit::SystemEvent(KVM_SYSTEM_EVENT_SHUTDOWN, &[])), Some(ExitReason::PowerOff));
        assert_eq!(h(VcpuExit::SystemEvent(KVM_SYSTEM_EVENT_RESET, &[])), Some(ExitReason::Reset));
        assert_eq!(h(VcpuExit::SystemEvent(KVM_SYSTEM_EVENT_CRASH, &[])), Some(ExitReason::Crash));
        assert_eq!(h(VcpuExit::Shutdown), Some(ExitReason::TripleFault));
        assert_eq!(h(VcpuExit::Hlt), Some(ExitReason::Halted));
        assert_eq!(h(VcpuExit::Intr), None);
        assert!(matches!(h(VcpuExit::FailEntry(0x80, 0)), Some(ExitReason::Error(_))));
        assert_eq!(internal_error(KVM_INTERNAL_ERROR_EMULATION), ExitReason::EmulationFailure);
        assert!(matches!(internal_error(3), ExitReason::Error(_)));
    }

    #[test]
    fn boot_msrs_enable_fast_strings_and_write_back_mtrrs() {
        let m = boot_msrs();
        let get = |i| m.iter().find(|e| e.index == i).map(|e| e.data);
        assert_eq!(get(MSR_IA32_MISC_ENABLE), Some(1));
        assert_eq!(get(MSR_MTRR_DEF_TYPE), Some(0x806));
    }

    #[test]
    fn lvt_entries_get_their_delivery_mode() {
        let mut regs = [0i8; 1024];
        regs[APIC_LVT0 + 2] = 1; // mask bit (16) survives
        set_lvt(&mut regs, APIC_LVT0, APIC_MODE_EXTINT);
        set_lvt(&mut regs, APIC_LVT1, APIC_MODE_NMI);
        assert_eq!(regs[APIC_LVT0 + 1] as u8, 0x07);
        assert_eq!(regs[APIC_LVT0 + 2], 1);
        assert_eq!(regs[APIC_LVT1 + 1] as u8, 0x04);
    }
}
