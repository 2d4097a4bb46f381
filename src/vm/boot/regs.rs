//! Initial vCPU register state for the two entry protocols, and the tables
//! it points at (GDT, null IDT, identity page tables).
//!
//! PVH enters in 32-bit protected mode with paging off and %ebx pointing at
//! `hvm_start_info`. The bzImage 64-bit protocol enters in long mode, so it
//! needs page tables identity-mapping the first GiB (kernel, zero page,
//! command line) and 64-bit segments; %rsi points at the zero page.

use kvm_bindings::{kvm_fpu, kvm_regs, kvm_segment, kvm_sregs};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout;
use super::{BootError, EntryPoint};

const X86_CR0_PE: u64 = 0x1;
const X86_CR0_ET: u64 = 0x10;
const X86_CR0_PG: u64 = 0x8000_0000;
const X86_CR4_PAE: u64 = 0x20;
const EFER_LME: u64 = 0x100;
const EFER_LMA: u64 = 0x400;

/// A GDT entry from flags (access byte + flags nibble as in the manuals'
/// 16-bit "type" notation), base and limit.
pub const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << (56 - 24))
        | ((flags as u64 & 0x0000_f0ff) << 40)
        | ((limit as u64 & 0x000f_0000) << (48 - 16))
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
}

/// The KVM segment a GDT entry describes, loaded through `selector`.
pub fn segment_from_gdt(entry: u64, index: u8) -> kvm_segment {
    let base = ((entry >> 16) & 0xff_ffff) | ((entry >> 32) & 0xff00_0000);
    let limit_raw = ((entry & 0xffff) | ((entry >> 32) & 0xf_0000)) as u32;
    let g = ((entry >> 55) & 1) as u8;
    let limit = if g == 1 { (limit_raw << 12) | 0xfff } else { limit_raw };
    kvm_segment {
        base,
        limit,
        selector: u16::from(index) * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present: ((entry >> 47) & 1) as u8,
        dpl: ((entry >> 45) & 3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g,
        avl: ((entry >> 52) & 1) as u8,
        unusable: if (entry >> 47) & 1 == 1 { 0 } else { 1 },
        padding: 0,
    }
}

/// The GDT for an entry protocol: null, code, data, TSS.
pub fn gdt(entry: EntryPoint) -> [u64; 4] {
    match entry {
        // 32-bit flat code (D=1) and data, 4 GiB limit.
        EntryPoint::Pvh { .. } => {
            [0, gdt_entry(0xc09b, 0, 0xfffff), gdt_entry(0xc093, 0, 0xfffff), gdt_entry(0x008b, 0, 0x67)]
        }
        // 64-bit code (L=1), flat data.
        EntryPoint::Linux64 { .. } => {
            [0, gdt_entry(0xa09b, 0, 0xfffff), gdt_entry(0xc093, 0, 0xfffff), gdt_entry(0x808b, 0, 0xfffff)]
        }
    }
}

/// Special registers at entry.
pub fn sregs(entry: EntryPoint, mut base: kvm_sregs) -> kvm_sregs {
    let table = gdt(entry);
    let code = segment_from_gdt(table[1], 1);
    let data = segment_from_gdt(table[2], 2);
    let tss = segment_from_gdt(table[3], 3);
    base.gdt.base = layout::GDT_ADDR;
    base.gdt.limit = (table.len() * 8 - 1) as u16;
    base.idt.base = layout::IDT_ADDR;
    base.idt.limit = 7;
    base.cs = code;
    base.ds = data;
    base.es = data;
    base.fs = data;
    base.gs = data;
    base.ss = data;
    base.tr = tss;
    match entry {
        EntryPoint::Pvh { .. } => {
            base.cr0 = X86_CR0_PE | X86_CR0_ET;
            base.cr3 = 0;
            base.cr4 = 0;
            base.efer = 0;
        }
        EntryPoint::Linux64 { .. } => {
            base.cr0 = X86_CR0_PE | X86_CR0_ET | X86_CR0_PG;
            base.cr3 = layout::PML4_ADDR;
            base.cr4 = X86_CR4_PAE;
            base.efer = EFER_LME | EFER_LMA;
        }
    }
    base
}

/// General registers at entry.
pub fn regs(entry: EntryPoint) -> kvm_regs {
    let mut r = kvm_regs { rflags: 0x2, ..Default::default() };
    match entry {
        EntryPoint::Pvh { entry } => {
            r.rip = entry;
            r.rbx = layout::PVH_INFO_ADDR;
        }
        EntryPoint::Linux64 { entry } => {
            r.rip = entry;
            r.rsp = layout::BOOT_STACK_POINTER;
            r.rbp = layout::BOOT_STACK_POINTER;
            r.rsi = layout::ZERO_PAGE_ADDR;
        }
    }
    r
}

/// x87 control word and MXCSR as after FNINIT / reset.
pub fn fpu() -> kvm_fpu {
    kvm_fpu { fcw: 0x37f, mxcsr: 0x1f80, ..Default::default() }
}

/// Writes the GDT, the null IDT and (for the 64-bit entry) the identity
/// page tables: PML4[0] -> PDPT[0] -> PD with 512 2-MiB pages = 1 GiB.
pub fn write_tables(mem: &GuestMemoryMmap, entry: EntryPoint) -> Result<(), BootError> {
    for (i, e) in gdt(entry).iter().enumerate() {
        mem.write_obj(*e, GuestAddress(layout::GDT_ADDR + 8 * i as u64))?;
    }
    mem.write_obj(0u64, GuestAddress(layout::IDT_ADDR))?;
    if let EntryPoint::Linux64 { .. } = entry {
        mem.write_obj(layout::PDPTE_ADDR | 0x03, GuestAddress(layout::PML4_ADDR))?;
        mem.write_obj(layout::PDE_ADDR | 0x03, GuestAddress(layout::PDPTE_ADDR))?;
        for i in 0..512u64 {
            mem.write_obj((i << 21) | 0x83, GuestAddress(layout::PDE_ADDR + i * 8))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gdt_entries_encode_as_the_manuals_say() {
        assert_eq!(gdt_entry(0xa09b, 0, 0xfffff), 0x00af_9b00_0000_ffff);
        assert_eq!(gdt_entry(0xc093, 0, 0xfffff), 0x00cf_9300_0000_ffff);
        assert_eq!(gdt_entry(0xc09b, 0, 0xfffff), 0x00cf_9b00_0000_ffff);
    }

    #[test]
    fn segments_decode_back_from_the_gdt() {
        let code64 = segment_from_gdt(gdt_entry(0xa09b, 0, 0xfffff), 1);
        assert_eq!((code64.selector, code64.l, code64.db, code64.type_, code64.present), (8, 1, 0, 0xb, 1));
        assert_eq!(code64.limit, 0xffff_ffff);
        let code32 = segment_from_gdt(gdt_entry(0xc09b, 0, 0xfffff), 1);
        assert_eq!((code32.l, code32.db, code32.g), (0, 1, 1));
        let data = segment_from_gdt(gdt_entry(0xc093, 0, 0xfffff), 2);
        assert_eq!((data.selector, data.type_, data.s), (16, 3, 1));
    }

    #[test]
    fn pvh_enters_protected_mode_without_paging() {
        let e = EntryPoint::Pvh { entry: 0x100_0000 };
        let s = sregs(e, kvm_sregs::default());
        assert_eq!(s.cr0 & X86_CR0_PG, 0);
        assert_ne!(s.cr0 & X86_CR0_PE, 0);
        assert_eq!(s.efer, 0);
        assert_eq!(s.cs.l, 0);
        let r = regs(e);
        assert_eq!((r.rip, r.rbx, r.rflags), (0x100_0000, layout::PVH_INFO_ADDR, 2));
    }

    #[test]
    fn the_64bit_entry_runs_in_long_mode_on_identity_tables() {
        let e = EntryPoint::Linux64 { entry: 0x10_0200 };
        let s = sregs(e, kvm_sregs::default());
        assert_eq!(s.efer, EFER_LME | EFER_LMA);
        assert_eq!((s.cr3, s.cr4 & X86_CR4_PAE), (layout::PML4_ADDR, X86_CR4_PAE));
        assert_eq!(s.cs.l, 1);
        let r = regs(e);
        assert_eq!((r.rip, r.rsi, r.rsp), (0x10_0200, layout::ZERO_PAGE_ADDR, layout::BOOT_STACK_POINTER));

        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        write_tables(&mem, e).unwrap();
        let pml4: u64 = mem.read_obj(GuestAddress(layout::PML4_ADDR)).unwrap();
        assert_eq!(pml4, layout::PDPTE_ADDR | 3);
        let pde511: u64 = mem.read_obj(GuestAddress(layout::PDE_ADDR + 511 * 8)).unwrap();
        assert_eq!(pde511, (511 << 21) | 0x83, "the last 2 MiB page ends at 1 GiB");
    }
}
