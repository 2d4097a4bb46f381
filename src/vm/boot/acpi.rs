//! ACPI tables (acpi_tables crate): RSDP -> XSDT -> {FADT -> DSDT, MADT}.
//!
//! The FADT is hardware-reduced: there is no PM timer, no GPE block, no
//! SCI; power-off and reset go through the sleep-control and reset registers
//! at [`layout::ACPI_PM_PORT`]. The DSDT describes COM1, every virtio-mmio
//! device as `LNRO0005` with its MMIO window and interrupt (distro kernels do
//! not take virtio-mmio devices from the command line), and `\_S5` so the
//! kernel knows how to power off.

use acpi_tables::aml;
use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::madt::{EnabledStatus, IoApic, LocalInterruptController, ProcessorLocalApic, MADT};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::Aml;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout;
use super::BootError;

const OEM_ID: [u8; 6] = *b"AMPHI ";
const OEM_TABLE_ID: [u8; 8] = *b"AMPHIVM ";
const OEM_REVISION: u32 = 1;

/// Value the guest writes to the reset register to reset the machine.
pub const RESET_VALUE: u8 = 1;
/// The S5 sleep type advertised in `\_S5`; the guest writes
/// `(S5_SLEEP_TYPE << 2) | SLP_EN` to the sleep-control register.
pub const S5_SLEEP_TYPE: u8 = 5;
pub const SLEEP_ENABLE: u8 = 1 << 5;

/// A virtio-mmio device as the DSDT announces it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MmioDeviceInfo {
    pub addr: u64,
    pub len: u64,
    pub irq: u32,
}

/// IAPC_BOOT_ARCH: no VGA, no MSI, no CMOS RTC (nothing to probe).
const IAPC_VGA_NOT_PRESENT: u16 = 1 << 2;
const IAPC_MSI_NOT_SUPPORTED: u16 = 1 << 3;
const IAPC_CMOS_RTC_NOT_PRESENT: u16 = 1 << 5;

/// The DSDT's AML body.
pub fn dsdt_aml(devices: &[MmioDeviceInfo]) -> Vec<u8> {
    let mut body = Vec::new();

    let com1_io = aml::IO::new(layout::SERIAL_PORT, layout::SERIAL_PORT, 1, 8);
    let com1_irq = aml::Interrupt::new(true, true, false, false, layout::SERIAL_IRQ);
    let com1_crs = aml::ResourceTemplate::new(vec![&com1_io, &com1_irq]);
    let com1_hid = aml::EISAName::new("PNP0501");
    aml::Device::new(
        "_SB_.COM1".into(),
        vec![
            &aml::Name::new("_HID".into(), &com1_hid),
            &aml::Name::new("_UID".into(), &aml::ZERO),
            &aml::Name::new("_CRS".into(), &com1_crs),
        ],
    )
    .to_aml_bytes(&mut body);

    for (i, d) in devices.iter().enumerate() {
        let mem = aml::Memory32Fixed::new(true, d.addr as u32, d.len as u32);
        let irq = aml::Interrupt::new(true, true, false, false, d.irq);
        let crs = aml::ResourceTemplate::new(vec![&mem, &irq]);
        let uid = i as u32;
        let name = format!("_SB_.V{i:03X}");
        aml::Device::new(
            name.as_str().into(),
            vec![
                &aml::Name::new("_HID".into(), &"LNRO0005"),
                &aml::Name::new("_UID".into(), &uid),
                &aml::Name::new("_CCA".into(), &aml::ONE),
                &aml::Name::new("_CRS".into(), &crs),
            ],
        )
        .to_aml_bytes(&mut body);
    }

    aml::Name::new("_S5_".into(), &aml::Package::new(vec![&S5_SLEEP_TYPE])).to_aml_bytes(&mut body);
    body
}

fn sdt_bytes(aml: &dyn Aml) -> Vec<u8> {
    let mut v = Vec::new();
    aml.to_aml_bytes(&mut v);
    v
}

fn align8(x: u64) -> u64 {
    (x + 7) & !7
}

/// All tables with their guest addresses, RSDP first at [`layout::ACPI_START`].
pub fn build_tables(vcpus: u8, devices: &[MmioDeviceInfo]) -> Result<Vec<(u64, Vec<u8>)>, BootError> {
    let rsdp_addr = layout::ACPI_START;
    let xsdt_addr = align8(rsdp_addr + Rsdp::len() as u64);
    // XSDT: header + 2 entries.
    let fadt_addr = align8(xsdt_addr + 36 + 2 * 8);

    let mut dsdt = Sdt::new(*b"DSDT", 36, 6, OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    dsdt.append_slice(&dsdt_aml(devices));

    let port = GAS {
        address_space_id: AddressSpace::SystemIo,
        register_bit_width: 8,
        register_bit_offset: 0,
        access_size: AccessSize::ByteAccess,
        address: u64::from(layout::ACPI_PM_PORT).into(),
    };
    let mut fadt = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::ResetRegSup)
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton);
    fadt.reset_reg = port;
    fadt.reset_value = RESET_VALUE;
    fadt.sleep_control_reg = port;
    fadt.sleep_status_reg = port;
    fadt.iapc_boot_arch = (IAPC_VGA_NOT_PRESENT | IAPC_MSI_NOT_SUPPORTED | IAPC_CMOS_RTC_NOT_PRESENT).into();
    fadt.hypervisor_vendor_identity = u64::from_le_bytes(*b"AMPHIVMM").into();
    let fadt_len = acpi_tables::fadt::FADT::len() as u64;
    let madt_addr = align8(fadt_addr + fadt_len);

    let mut madt = MADT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION, LocalInterruptController::Address(layout::LAPIC_ADDR));
    for cpu in 0..vcpus {
        madt.add_structure(ProcessorLocalApic::new(cpu, cpu, EnabledStatus::Enabled));
    }
    madt.add_structure(IoApic::new(0, layout::IOAPIC_ADDR, 0));
    let madt_bytes = sdt_bytes(&madt);
    let dsdt_addr = align8(madt_addr + madt_bytes.len() as u64);
    let dsdt_bytes = dsdt.as_slice().to_vec();

    let fadt_bytes = sdt_bytes(&fadt.dsdt_64(dsdt_addr).finalize());
    let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    xsdt.add_entry(fadt_addr);
    xsdt.add_entry(madt_addr);
    let xsdt_bytes = sdt_bytes(&xsdt);
    let rsdp_bytes = sdt_bytes(&Rsdp::new(OEM_ID, xsdt_addr));

    let end = dsdt_addr + dsdt_bytes.len() as u64;
    if end > layout::ACPI_END {
        return Err(BootError::AcpiTooLarge(layout::ACPI_END - layout::ACPI_START));
    }
    Ok(vec![
        (rsdp_addr, rsdp_bytes),
        (xsdt_addr, xsdt_bytes),
        (fadt_addr, fadt_bytes),
        (madt_addr, madt_bytes),
        (dsdt_addr, dsdt_bytes),
    ])
}

/// Writes the tables into guest memory and returns the RSDP address.
pub fn write_tables(mem: &GuestMemoryMmap, vcpus: u8, devices: &[MmioDeviceInfo]) -> Result<u64, BootError> {
    let tables = build_tables(vcpus, devices)?;
    for (addr, bytes) in &tables {
        mem.write_slice(bytes, GuestAddress(*addr))?;
    }
    Ok(tables[0].0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }

    fn u32_at(b: &[u8], off: usize) -> u32 {
        u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
    }

    fn u64_at(b: &[u8], off: usize) -> u64 {
        u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
    }

    fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
        hay.windows(needle.len()).position(|w| w == needle)
    }

    fn tables() -> Vec<(u64, Vec<u8>)> {
        let devs = [
            MmioDeviceInfo { addr: 0xd000_0000, len: 0x1000, irq: 5 },
            MmioDeviceInfo { addr: 0xd000_1000, len: 0x1000, irq: 6 },
        ];
        build_tables(2, &devs).unwrap()
    }

    #[test]
    fn every_table_checksums_to_zero_and_has_its_length() {
        let t = tables();
        let (_, rsdp) = &t[0];
        assert_eq!(&rsdp[..8], b"RSD PTR ");
        assert_eq!(sum(&rsdp[..20]), 0, "RSDP v1 checksum");
        assert_eq!(sum(rsdp), 0, "RSDP extended checksum");
        for (_, table) in &t[1..] {
            assert_eq!(sum(table), 0, "{} checksum", String::from_utf8_lossy(&table[..4]));
            assert_eq!(u32_at(table, 4) as usize, table.len());
        }
        let sigs: Vec<&[u8]> = t[1..].iter().map(|(_, b)| &b[..4]).collect();
        assert_eq!(sigs, vec![&b"XSDT"[..], b"FACP", b"APIC", b"DSDT"]);
    }

    #[test]
    fn the_pointers_chain_rsdp_xsdt_fadt_dsdt() {
        let t = tables();
        let addr_of = |sig: &[u8]| t.iter().find(|(_, b)| &b[..4] == sig).unwrap().0;
        assert_eq!(u64_at(&t[0].1, 24), addr_of(b"XSDT"));
        let xsdt = &t[1].1;
        assert_eq!(u64_at(xsdt, 36), addr_of(b"FACP"));
        assert_eq!(u64_at(xsdt, 44), addr_of(b"APIC"));
        let fadt = &t[2].1;
        assert_eq!(u64_at(fadt, 140), addr_of(b"DSDT"), "X_DSDT");
        for (a, b) in t.iter().zip(t.iter().skip(1)) {
            assert!(a.0 + a.1.len() as u64 <= b.0, "tables overlap");
        }
        assert!(t.last().map(|(a, b)| a + b.len() as u64).unwrap() <= layout::ACPI_END);
    }

    #[test]
    fn the_fadt_is_hardware_reduced_with_sleep_and_reset_registers() {
        let t = tables();
        let fadt = &t[2].1;
        let flags = u32_at(fadt, 112);
        assert_ne!(flags & (1 << 20), 0, "HW_REDUCED_ACPI");
        assert_ne!(flags & (1 << 10), 0, "RESET_REG_SUP");
        // RESET_REG (GAS at 116): system I/O, 8 bits, our port; value at 128.
        assert_eq!(fadt[116], 1);
        assert_eq!(u64_at(fadt, 120), u64::from(layout::ACPI_PM_PORT));
        assert_eq!(fadt[128], RESET_VALUE);
        // SLEEP_CONTROL_REG at 244, SLEEP_STATUS_REG at 256.
        assert_eq!(u64_at(fadt, 248), u64::from(layout::ACPI_PM_PORT));
        assert_eq!(u64_at(fadt, 260), u64::from(layout::ACPI_PM_PORT));
        assert_eq!(fadt.len(), 276);
    }

    #[test]
    fn the_madt_lists_each_vcpu_and_the_ioapic() {
        let t = tables();
        let madt = &t[3].1;
        assert_eq!(u32_at(madt, 36), layout::LAPIC_ADDR);
        // Structures start at 44: two local APICs (type 0, len 8), one IOAPIC (type 1, len 12).
        assert_eq!(&madt[44..48], &[0, 8, 0, 0]);
        assert_eq!(u32_at(madt, 48), 1, "cpu 0 enabled");
        assert_eq!(&madt[52..56], &[0, 8, 1, 1]);
        assert_eq!(&madt[60..62], &[1, 12]);
        assert_eq!(u32_at(madt, 64), layout::IOAPIC_ADDR);
        assert_eq!(u32_at(madt, 68), 0, "GSI base");
        assert_eq!(madt.len(), 72);
    }

    #[test]
    fn the_dsdt_describes_each_virtio_mmio_device_and_s5() {
        let t = tables();
        let dsdt = &t[4].1;
        let aml = &dsdt[36..];
        let hid = b"\x0dLNRO0005\x00";
        let first = find(aml, hid).expect("LNRO0005 _HID");
        assert!(find(&aml[first + 1..], hid).is_some(), "second device");
        assert!(find(aml, b"V000").is_some() && find(aml, b"V001").is_some());
        // Memory32Fixed descriptor (0x86, len 9, rw) with base and length.
        let mut m = vec![0x86, 0x09, 0x00, 0x01];
        m.extend_from_slice(&0xd000_1000u32.to_le_bytes());
        m.extend_from_slice(&0x1000u32.to_le_bytes());
        assert!(find(aml, &m).is_some(), "MMIO window of device 1");
        // Extended interrupt descriptor: consumer, edge, active high, exclusive.
        let mut irq = vec![0x89, 0x06, 0x00, 0x03, 0x01];
        irq.extend_from_slice(&6u32.to_le_bytes());
        assert!(find(aml, &irq).is_some(), "IRQ 6 of device 1");
        assert!(find(aml, b"_S5_").is_some());
        assert!(find(aml, b"COM1").is_some());
    }

    #[test]
    fn too_many_devices_do_not_overflow_the_acpi_area() {
        let devs: Vec<MmioDeviceInfo> =
            (0..3000).map(|i| MmioDeviceInfo { addr: 0xd000_0000 + i * 0x1000, len: 0x1000, irq: 5 }).collect();
        assert!(matches!(build_tables(1, &devs), Err(BootError::AcpiTooLarge(_))));
    }
}
