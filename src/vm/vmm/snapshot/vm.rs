//! Saving and restoring the VM-wide in-kernel devices (PIC pair, IOAPIC,
//! PIT) and kvmclock, behind [`VmOps`] so that the order is tested without
//! KVM.
//!
//! The clock is restored without `KVM_CLOCK_REALTIME`: kvmclock continues
//! from the saved value, so the guest's monotonic time is continuous and
//! only as old as the snapshot's last seconds. With the flag, KVM would add
//! the whole host wall-clock gap since the snapshot (days, for a template)
//! in one jump; the guest's wall clock is set by its agent instead.

use kvm_bindings::{
    kvm_clock_data, kvm_irqchip, kvm_pit_state2, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE,
};
use kvm_ioctls::{Error, VmFd};

use super::{kvm_err, SnapshotError, VmState};

/// The VM ioctls a snapshot uses.
pub trait VmOps {
    /// The state of irqchip `chip_id` (`KVM_IRQCHIP_*`).
    fn get_irqchip(&self, chip_id: u32) -> Result<kvm_irqchip, Error>;
    fn set_irqchip(&self, chip: &kvm_irqchip) -> Result<(), Error>;
    fn get_pit2(&self) -> Result<kvm_pit_state2, Error>;
    fn set_pit2(&self, pit: &kvm_pit_state2) -> Result<(), Error>;
    fn get_clock(&self) -> Result<kvm_clock_data, Error>;
    fn set_clock(&self, clock: &kvm_clock_data) -> Result<(), Error>;
}

impl VmOps for VmFd {
    fn get_irqchip(&self, chip_id: u32) -> Result<kvm_irqchip, Error> {
        let mut chip = kvm_irqchip { chip_id, ..Default::default() };
        VmFd::get_irqchip(self, &mut chip)?;
        Ok(chip)
    }
    delegate!(VmFd:
        fn set_irqchip(&self, chip: &kvm_irqchip) -> Result<(), Error>;
        fn get_pit2(&self) -> Result<kvm_pit_state2, Error>;
        fn set_pit2(&self, pit: &kvm_pit_state2) -> Result<(), Error>;
        fn get_clock(&self) -> Result<kvm_clock_data, Error>;
        fn set_clock(&self, clock: &kvm_clock_data) -> Result<(), Error>;
    );
}

/// Saves the VM-wide state of a VM whose vCPUs are all paused.
pub fn save_vm(ops: &impl VmOps) -> Result<VmState, SnapshotError> {
    Ok(VmState {
        pit: ops.get_pit2().map_err(kvm_err("KVM_GET_PIT2"))?,
        clock: ops.get_clock().map_err(kvm_err("KVM_GET_CLOCK"))?,
        pic_master: ops.get_irqchip(KVM_IRQCHIP_PIC_MASTER).map_err(kvm_err("KVM_GET_IRQCHIP (PIC master)"))?,
        pic_slave: ops.get_irqchip(KVM_IRQCHIP_PIC_SLAVE).map_err(kvm_err("KVM_GET_IRQCHIP (PIC slave)"))?,
        ioapic: ops.get_irqchip(KVM_IRQCHIP_IOAPIC).map_err(kvm_err("KVM_GET_IRQCHIP (IOAPIC)"))?,
    })
}

/// Restores the VM-wide state into a VM created with its irqchip and PIT
/// as for a cold boot, after the vCPUs were restored and before any device
/// can raise an interrupt (SET_IRQCHIP would overwrite it).
pub fn restore_vm(ops: &impl VmOps, s: &VmState) -> Result<(), SnapshotError> {
    ops.set_pit2(&s.pit).map_err(kvm_err("KVM_SET_PIT2"))?;
    // Flags 0: no REALTIME (see the module comment); TSC_STABLE is only
    // ever output.
    let clock = kvm_clock_data { flags: 0, ..s.clock };
    ops.set_clock(&clock).map_err(kvm_err("KVM_SET_CLOCK"))?;
    // Each chip by the id it is restored as, whatever the file says.
    for (id, chip, op) in [
        (KVM_IRQCHIP_PIC_MASTER, &s.pic_master, "KVM_SET_IRQCHIP (PIC master)"),
        (KVM_IRQCHIP_PIC_SLAVE, &s.pic_slave, "KVM_SET_IRQCHIP (PIC slave)"),
        (KVM_IRQCHIP_IOAPIC, &s.ioapic, "KVM_SET_IRQCHIP (IOAPIC)"),
    ] {
        ops.set_irqchip(&kvm_irqchip { chip_id: id, ..*chip }).map_err(kvm_err(op))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_bindings::{KVM_CLOCK_REALTIME, KVM_CLOCK_TSC_STABLE};
    use std::cell::RefCell;

    #[derive(Default)]
    struct FakeVm {
        calls: RefCell<Vec<String>>,
        clock_set: RefCell<Option<kvm_clock_data>>,
    }

    impl VmOps for FakeVm {
        fn get_irqchip(&self, chip_id: u32) -> Result<kvm_irqchip, Error> {
            self.calls.borrow_mut().push(format!("get_irqchip {chip_id}"));
            Ok(kvm_irqchip { chip_id, ..Default::default() })
        }
        fn set_irqchip(&self, chip: &kvm_irqchip) -> Result<(), Error> {
            self.calls.borrow_mut().push(format!("set_irqchip {}", chip.chip_id));
            Ok(())
        }
        fn get_pit2(&self) -> Result<kvm_pit_state2, Error> {
            self.calls.borrow_mut().push("get_pit2".into());
            let mut pit = kvm_pit_state2::default();
            pit.channels[0].count = 0x1234;
            Ok(pit)
        }
        fn set_pit2(&self, _: &kvm_pit_state2) -> Result<(), Error> {
            self.calls.borrow_mut().push("set_pit2".into());
            Ok(())
        }
        fn get_clock(&self) -> Result<kvm_clock_data, Error> {
            self.calls.borrow_mut().push("get_clock".into());
            Ok(kvm_clock_data {
                clock: 5_000_000_000,
                flags: KVM_CLOCK_TSC_STABLE | KVM_CLOCK_REALTIME,
                realtime: 1_700_000_000_000_000_000,
                ..Default::default()
            })
        }
        fn set_clock(&self, clock: &kvm_clock_data) -> Result<(), Error> {
            self.calls.borrow_mut().push("set_clock".into());
            *self.clock_set.borrow_mut() = Some(*clock);
            Ok(())
        }
    }

    #[test]
    fn restore_order_is_pit_clock_pics_ioapic_and_clock_is_not_realtime() {
        let saved = save_vm(&FakeVm::default()).unwrap();
        let mut shuffled = saved.clone();
        std::mem::swap(&mut shuffled.pic_master, &mut shuffled.ioapic);
        let vm = FakeVm::default();
        restore_vm(&vm, &shuffled).unwrap();
        assert_eq!(*vm.calls.borrow(), ["set_pit2", "set_clock", "set_irqchip 0", "set_irqchip 1", "set_irqchip 2"]);
        let clock = vm.clock_set.borrow().unwrap();
        assert_eq!(clock.flags, 0);
        assert_eq!(clock.clock, 5_000_000_000);
    }

    #[test]
    fn vm_state_survives_json() {
        let saved = save_vm(&FakeVm::default()).unwrap();
        let json = serde_json::to_string(&saved).unwrap();
        let back: VmState = serde_json::from_str(&json).unwrap();
        assert_eq!(back.pit.channels[0].count, 0x1234);
        assert_eq!(back.clock.flags, KVM_CLOCK_TSC_STABLE | KVM_CLOCK_REALTIME);
        assert_eq!(back.ioapic.chip_id, KVM_IRQCHIP_IOAPIC);
        assert_eq!(serde_json::to_string(&back).unwrap(), json);
    }
}
