//! Boot parameters: the e820 memory map, and the structure each boot
//! protocol reads it from (the zero page for bzImage, `hvm_start_info` for
//! PVH).

use linux_loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::elf::start_info::{hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info};
use vm_memory::{GuestAddress, GuestMemoryMmap};

use super::layout;
use super::{BootError, InitrdPlacement};

pub const E820_RAM: u32 = 1;
pub const E820_RESERVED: u32 = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct E820Entry {
    pub addr: u64,
    pub size: u64,
    pub kind: u32,
}

/// The memory map for `mem_size` bytes of RAM: low RAM up to the EBDA, the
/// BIOS area holding the ACPI tables as reserved, then RAM from 1 MiB
/// (split around the MMIO hole).
pub fn e820_map(mem_size: u64) -> Vec<E820Entry> {
    let mut map = vec![
        E820Entry { addr: 0, size: layout::EBDA_START, kind: E820_RAM },
        E820Entry { addr: layout::ACPI_START, size: layout::ACPI_END - layout::ACPI_START, kind: E820_RESERVED },
    ];
    for (start, len) in layout::ram_regions(mem_size) {
        let (s, e) = (start.max(layout::HIMEM_START), start + len);
        if e > s {
            map.push(E820Entry { addr: s, size: e - s, kind: E820_RAM });
        }
    }
    map
}

const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448;
const KERNEL_LOADER_OTHER: u8 = 0xff;
/// 16 MiB: the alignment the kernel asks for when the header gives none.
const KERNEL_MIN_ALIGNMENT_BYTES: u32 = 0x0100_0000;
const XEN_HVM_START_MAGIC_VALUE: u32 = 0x336e_c578;

/// Builds the zero page for the 64-bit boot protocol.
pub fn zero_page(
    header: Option<setup_header>,
    mem_size: u64,
    cmdline_len: usize,
    initrd: Option<InitrdPlacement>,
    rsdp: u64,
) -> boot_params {
    let mut params = boot_params::default();
    if let Some(h) = header {
        params.hdr = h;
    }
    params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
    params.hdr.header = KERNEL_HDR_MAGIC;
    params.hdr.cmd_line_ptr = layout::CMDLINE_ADDR as u32;
    params.hdr.cmdline_size = cmdline_len as u32 + 1;
    if params.hdr.kernel_alignment == 0 {
        params.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT_BYTES;
    }
    if let Some(i) = initrd {
        params.hdr.ramdisk_image = i.addr as u32;
        params.hdr.ramdisk_size = i.size as u32;
    }
    params.acpi_rsdp_addr = rsdp;
    let map = e820_map(mem_size);
    for (i, e) in map.iter().enumerate() {
        params.e820_table[i] = boot_e820_entry { addr: e.addr, size: e.size, r#type: e.kind };
    }
    params.e820_entries = map.len() as u8;
    params
}

/// Writes the boot structures for the protocol the kernel is entered by.
pub fn write_boot_params(
    mem: &GuestMemoryMmap,
    pvh: bool,
    header: Option<setup_header>,
    mem_size: u64,
    cmdline_len: usize,
    initrd: Option<InitrdPlacement>,
    rsdp: u64,
) -> Result<(), BootError> {
    if !pvh {
        let params = zero_page(header, mem_size, cmdline_len, initrd, rsdp);
        let bp = BootParams::new::<boot_params>(&params, GuestAddress(layout::ZERO_PAGE_ADDR));
        LinuxBootConfigurator::write_bootparams::<GuestMemoryMmap>(&bp, mem)?;
        return Ok(());
    }
    let memmap: Vec<hvm_memmap_table_entry> = e820_map(mem_size)
        .iter()
        .map(|e| hvm_memmap_table_entry { addr: e.addr, size: e.size, type_: e.kind, reserved: 0 })
        .collect();
    let mut info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC_VALUE,
        version: 1,
        cmdline_paddr: layout::CMDLINE_ADDR,
        rsdp_paddr: rsdp,
        memmap_paddr: layout::PVH_MEMMAP_ADDR,
        memmap_entries: memmap.len() as u32,
        ..Default::default()
    };
    let mut bp = BootParams::new::<hvm_start_info>(&info, GuestAddress(layout::PVH_INFO_ADDR));
    if let Some(i) = initrd {
        info.nr_modules = 1;
        info.modlist_paddr = layout::PVH_MODLIST_ADDR;
        bp = BootParams::new::<hvm_start_info>(&info, GuestAddress(layout::PVH_INFO_ADDR));
        let module = hvm_modlist_entry { paddr: i.addr, size: i.size, ..Default::default() };
        bp.set_modules::<hvm_modlist_entry>(&[module], GuestAddress(layout::PVH_MODLIST_ADDR));
    }
    bp.set_sections::<hvm_memmap_table_entry>(&memmap, GuestAddress(layout::PVH_MEMMAP_ADDR));
    PvhBootConfigurator::write_bootparams::<GuestMemoryMmap>(&bp, mem)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::Bytes;

    #[test]
    fn the_e820_map_covers_ram_and_reserves_the_acpi_area() {
        let map = e820_map(256 << 20);
        assert_eq!(
            map,
            vec![
                E820Entry { addr: 0, size: 0x9fc00, kind: E820_RAM },
                E820Entry { addr: 0xe0000, size: 0x20000, kind: E820_RESERVED },
                E820Entry { addr: 0x10_0000, size: (256 << 20) - 0x10_0000, kind: E820_RAM },
            ]
        );
    }

    #[test]
    fn the_e820_map_of_a_large_guest_resumes_at_4g() {
        let map = e820_map(5 << 30);
        let last = map.last().unwrap();
        assert_eq!((last.addr, last.size, last.kind), (4 << 30, 2 << 30, E820_RAM));
        let ram: u64 = map.iter().filter(|e| e.kind == E820_RAM).map(|e| e.size).sum();
        assert_eq!(ram, (5 << 30) - (layout::HIMEM_START - layout::EBDA_START));
    }

    #[test]
    fn the_zero_page_carries_cmdline_initrd_rsdp_and_e820() {
        let initrd = InitrdPlacement { addr: 0x0f00_0000, size: 0x1234 };
        let p = zero_page(None, 256 << 20, 20, Some(initrd), 0xe0000);
        let (flag, hdr, loader) = (p.hdr.boot_flag, p.hdr.header, p.hdr.type_of_loader);
        assert_eq!((flag, hdr, loader), (0xaa55, 0x5372_6448, 0xff));
        let (cmd, cmdsz) = (p.hdr.cmd_line_ptr, p.hdr.cmdline_size);
        assert_eq!((cmd, cmdsz), (0x20000, 21));
        let (ri, rs) = (p.hdr.ramdisk_image, p.hdr.ramdisk_size);
        assert_eq!((ri, rs), (0x0f00_0000, 0x1234));
        let rsdp = p.acpi_rsdp_addr;
        assert_eq!(rsdp, 0xe0000);
        assert_eq!(p.e820_entries, 3);
        let e2 = p.e820_table[2];
        let (a, s, t) = (e2.addr, e2.size, e2.r#type);
        assert_eq!((a, s, t), (0x10_0000, (256 << 20) - 0x10_0000, E820_RAM));
    }

    #[test]
    fn pvh_start_info_is_written_with_its_memmap_and_module() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let initrd = InitrdPlacement { addr: 0x80000, size: 0x100 };
        write_boot_params(&mem, true, None, 256 << 20, 10, Some(initrd), 0xe0000).unwrap();
        let info: hvm_start_info = mem.read_obj(GuestAddress(layout::PVH_INFO_ADDR)).unwrap();
        assert_eq!(info.magic, XEN_HVM_START_MAGIC_VALUE);
        assert_eq!((info.nr_modules, info.modlist_paddr), (1, layout::PVH_MODLIST_ADDR));
        assert_eq!((info.rsdp_paddr, info.cmdline_paddr), (0xe0000, layout::CMDLINE_ADDR));
        assert_eq!(info.memmap_entries, 3);
        let m: hvm_modlist_entry = mem.read_obj(GuestAddress(layout::PVH_MODLIST_ADDR)).unwrap();
        assert_eq!((m.paddr, m.size), (0x80000, 0x100));
        let e: hvm_memmap_table_entry = mem.read_obj(GuestAddress(layout::PVH_MEMMAP_ADDR + 2 * 24)).unwrap();
        assert_eq!((e.addr, e.type_), (0x10_0000, E820_RAM));
    }
}
