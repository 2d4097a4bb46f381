//! The guest physical address map amphi builds for every VM (x86_64).
//!
//! Low memory holds the boot structures at fixed places the boot protocols
//! expect; the kernel goes at 1 MiB (bzImage) or where its ELF headers say
//! (PVH); the initramfs at the top of low RAM. Devices live in the 32-bit
//! hole below 4 GiB, RAM beyond 3 GiB continues at 4 GiB.

/// GDT used for the initial segment state.
pub const GDT_ADDR: u64 = 0x500;
/// A null IDT: the kernel installs its own before enabling interrupts.
pub const IDT_ADDR: u64 = 0x520;
/// PVH `hvm_start_info`.
pub const PVH_INFO_ADDR: u64 = 0x6000;
/// PVH module list (one entry: the initramfs).
pub const PVH_MODLIST_ADDR: u64 = 0x6040;
/// PVH memory map.
pub const PVH_MEMMAP_ADDR: u64 = 0x7000;
/// Linux zero page (`boot_params`) for the bzImage 64-bit boot protocol.
pub const ZERO_PAGE_ADDR: u64 = 0x7000;
/// Initial stack pointer for the boot vCPU.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Identity-mapping page tables for the 64-bit entry (PML4, PDPT, PD).
pub const PML4_ADDR: u64 = 0x9000;
pub const PDPTE_ADDR: u64 = 0xa000;
pub const PDE_ADDR: u64 = 0xb000;
/// Kernel command line.
pub const CMDLINE_ADDR: u64 = 0x20000;
pub const CMDLINE_MAX_LEN: usize = 4096;
/// Start of the extended BIOS data area: low RAM ends here.
pub const EBDA_START: u64 = 0x9fc00;
/// ACPI tables, RSDP first, in the BIOS read-only area the kernel also scans.
pub const ACPI_START: u64 = 0xe0000;
pub const ACPI_END: u64 = 0x10_0000;
/// Where high memory (and a bzImage kernel) starts.
pub const HIMEM_START: u64 = 0x10_0000;
/// The 32-bit MMIO hole: [MMIO_GAP_START, 4 GiB).
pub const MMIO_GAP_START: u64 = 0xc000_0000;
pub const MMIO_GAP_END: u64 = 0x1_0000_0000;
/// virtio-mmio device windows, one page each, from here.
pub const VIRTIO_MMIO_START: u64 = 0xd000_0000;
pub const VIRTIO_MMIO_SIZE: u64 = 0x1000;
/// First GSI handed to virtio-mmio devices (0-4 are legacy ISA: PIT, keyboard,
/// cascade, COM2, COM1).
pub const VIRTIO_IRQ_BASE: u32 = 5;
/// Last usable IOAPIC pin.
pub const IRQ_MAX: u32 = 23;
pub const IOAPIC_ADDR: u32 = 0xfec0_0000;
pub const LAPIC_ADDR: u32 = 0xfee0_0000;
/// KVM's TSS needs three pages inside the hole.
pub const KVM_TSS_ADDR: u64 = 0xfffb_d000;
/// COM1.
pub const SERIAL_PORT: u16 = 0x3f8;
pub const SERIAL_IRQ: u32 = 4;
/// ACPI sleep-control / reset register (hardware-reduced FADT), one byte.
pub const ACPI_PM_PORT: u16 = 0x600;
/// i8042 command port: 0xfe there pulses the reset line.
pub const I8042_PORT: u16 = 0x64;

/// The RAM regions for `mem_size` bytes of guest memory.
pub fn ram_regions(mem_size: u64) -> Vec<(u64, u64)> {
    if mem_size <= MMIO_GAP_START {
        vec![(0, mem_size)]
    } else {
        vec![(0, MMIO_GAP_START), (MMIO_GAP_END, mem_size - MMIO_GAP_START)]
    }
}

/// The MMIO window and GSI of the `index`-th virtio-mmio device: windows
/// one after another from [`VIRTIO_MMIO_START`], GSIs from
/// [`VIRTIO_IRQ_BASE`] up to [`IRQ_MAX`]. `None` once the GSIs run out.
pub fn virtio_mmio_slot(index: usize) -> Option<(u64, u32)> {
    let irq = VIRTIO_IRQ_BASE.checked_add(u32::try_from(index).ok()?)?;
    if irq > IRQ_MAX {
        return None;
    }
    Some((VIRTIO_MMIO_START + index as u64 * VIRTIO_MMIO_SIZE, irq))
}

/// How many virtio-mmio devices fit ([`virtio_mmio_slot`]).
pub const VIRTIO_MMIO_MAX_DEVICES: usize = (IRQ_MAX - VIRTIO_IRQ_BASE + 1) as usize;

/// End (exclusive) of RAM below the MMIO hole.
pub fn low_ram_end(mem_size: u64) -> u64 {
    mem_size.min(MMIO_GAP_START)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_guests_get_one_region() {
        assert_eq!(ram_regions(256 << 20), vec![(0, 256 << 20)]);
    }

    #[test]
    fn large_guests_skip_the_mmio_hole() {
        let r = ram_regions(4 << 30);
        assert_eq!(r, vec![(0, 3 << 30), (4 << 30, 1 << 30)]);
        assert_eq!(r.iter().map(|(_, l)| l).sum::<u64>(), 4 << 30);
    }

    #[test]
    fn virtio_mmio_slots_are_disjoint_and_end_with_the_ioapic_pins() {
        assert_eq!(virtio_mmio_slot(0), Some((VIRTIO_MMIO_START, VIRTIO_IRQ_BASE)));
        assert_eq!(virtio_mmio_slot(1), Some((VIRTIO_MMIO_START + VIRTIO_MMIO_SIZE, VIRTIO_IRQ_BASE + 1)));
        let last = virtio_mmio_slot(VIRTIO_MMIO_MAX_DEVICES - 1).unwrap();
        assert_eq!(last.1, IRQ_MAX);
        assert!(last.0 + VIRTIO_MMIO_SIZE <= u64::from(IOAPIC_ADDR));
        assert_eq!(virtio_mmio_slot(VIRTIO_MMIO_MAX_DEVICES), None);
        assert_eq!(virtio_mmio_slot(usize::MAX), None);
        assert_ne!(SERIAL_IRQ, VIRTIO_IRQ_BASE);
    }

    #[test]
    fn fixed_structures_do_not_overlap() {
        let spans = [
            (GDT_ADDR, 0x20),
            (IDT_ADDR, 8),
            (PVH_INFO_ADDR, 0x40),
            (PVH_MODLIST_ADDR, 0x20),
            (ZERO_PAGE_ADDR, 0x1000),
            (PML4_ADDR, 0x1000),
            (PDPTE_ADDR, 0x1000),
            (PDE_ADDR, 0x1000),
            (CMDLINE_ADDR, CMDLINE_MAX_LEN as u64),
            (ACPI_START, ACPI_END - ACPI_START),
        ];
        for (i, a) in spans.iter().enumerate() {
            for b in &spans[i + 1..] {
                assert!(a.0 + a.1 <= b.0 || b.0 + b.1 <= a.0, "{a:x?} overlaps {b:x?}");
            }
        }
        const { assert!(BOOT_STACK_POINTER < PML4_ADDR && BOOT_STACK_POINTER > ZERO_PAGE_ADDR + 0x1000) };
        assert!(CMDLINE_ADDR + CMDLINE_MAX_LEN as u64 <= EBDA_START);
    }
}
