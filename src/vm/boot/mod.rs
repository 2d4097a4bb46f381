//! Guest boot: load the kernel (ELF through its PVH entry, or a bzImage
//! through the 64-bit boot protocol) and the initramfs with linux-loader,
//! write the command line, the memory map (e820) and the boot structures,
//! the ACPI tables, and say where and how the boot vCPU starts.

pub mod acpi;
pub mod layout;
pub mod params;
pub mod regs;

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use linux_loader::loader::{bzimage::BzImage, elf::Elf, elf::PvhBootCapability, KernelLoader};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

pub use params::E820Entry;

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("cannot open kernel {path}")]
    OpenKernel {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is neither an ELF vmlinux nor a bzImage kernel; pass a Linux kernel with --kernel")]
    UnknownKernelFormat { path: PathBuf },
    #[error("cannot load kernel {path} into guest memory")]
    LoadKernel {
        path: PathBuf,
        #[source]
        source: linux_loader::loader::Error,
    },
    #[error("the ELF kernel {path} has no PVH entry point (XEN_ELFNOTE_PHYS32_ENTRY); build it with CONFIG_PVH=y or pass its bzImage")]
    NoPvhEntry { path: PathBuf },
    #[error("cannot read initramfs {path}")]
    ReadInitrd {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("initramfs of {size} bytes does not fit below {limit:#x} next to a kernel ending at {kernel_end:#x}; give the VM more memory")]
    InitrdTooLarge { size: u64, limit: u64, kernel_end: u64 },
    #[error("kernel command line is {len} bytes, more than the {max} the boot protocol allows")]
    CmdlineTooLong { len: usize, max: usize },
    #[error("cannot write boot structures into guest memory")]
    GuestMemory(#[from] vm_memory::GuestMemoryError),
    #[error("cannot write the boot parameters")]
    Configurator(#[from] linux_loader::configurator::Error),
    #[error("the ACPI tables do not fit in {0} bytes")]
    AcpiTooLarge(u64),
}

/// Kernel image formats amphi boots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelFormat {
    Elf,
    BzImage,
}

/// Recognizes a kernel image by its magic numbers.
pub fn detect_format(head: &[u8]) -> Option<KernelFormat> {
    if head.len() >= 4 && &head[..4] == b"\x7fELF" {
        return Some(KernelFormat::Elf);
    }
    if head.len() >= 0x206 && &head[0x202..0x206] == b"HdrS" {
        return Some(KernelFormat::BzImage);
    }
    None
}

/// How the boot vCPU enters the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryPoint {
    /// 32-bit protected mode, paging off, %ebx = start_info (PVH).
    Pvh { entry: u64 },
    /// 64-bit long mode with identity paging, %rsi = zero page.
    Linux64 { entry: u64 },
}

/// What the kernel loader produced.
#[derive(Debug, Clone, Copy)]
pub struct LoadedKernel {
    pub entry: EntryPoint,
    pub kernel_end: u64,
    pub setup_header: Option<linux_loader::bootparam::setup_header>,
}

/// Loads the kernel at `path` into guest memory.
pub fn load_kernel(mem: &GuestMemoryMmap, path: &Path) -> Result<LoadedKernel, BootError> {
    let mut file = File::open(path).map_err(|source| BootError::OpenKernel { path: path.into(), source })?;
    let mut head = vec![0u8; 0x400];
    let n = file.read(&mut head).map_err(|source| BootError::OpenKernel { path: path.into(), source })?;
    head.truncate(n);
    file.seek(SeekFrom::Start(0)).map_err(|source| BootError::OpenKernel { path: path.into(), source })?;
    let load_err = |source| BootError::LoadKernel { path: path.into(), source };
    match detect_format(&head) {
        Some(KernelFormat::Elf) => {
            let r = Elf::load(mem, None, &mut file, Some(GuestAddress(layout::HIMEM_START))).map_err(load_err)?;
            match r.pvh_boot_cap {
                PvhBootCapability::PvhEntryPresent(entry) => Ok(LoadedKernel {
                    entry: EntryPoint::Pvh { entry: entry.0 },
                    kernel_end: r.kernel_end,
                    setup_header: None,
                }),
                _ => Err(BootError::NoPvhEntry { path: path.into() }),
            }
        }
        Some(KernelFormat::BzImage) => {
            let r = BzImage::load(mem, None, &mut file, Some(GuestAddress(layout::HIMEM_START))).map_err(load_err)?;
            Ok(LoadedKernel {
                // The 64-bit entry sits 0x200 bytes into the protected-mode code.
                entry: EntryPoint::Linux64 { entry: r.kernel_load.0 + 0x200 },
                kernel_end: r.kernel_end,
                setup_header: r.setup_header,
            })
        }
        None => Err(BootError::UnknownKernelFormat { path: path.into() }),
    }
}

/// Where the initramfs went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InitrdPlacement {
    pub addr: u64,
    pub size: u64,
}

/// Picks the initramfs address: the top of low RAM, page aligned, below the
/// kernel's `initrd_addr_max`, above the kernel.
pub fn place_initrd(
    mem_size: u64,
    kernel_end: u64,
    size: u64,
    addr_max: Option<u64>,
) -> Result<InitrdPlacement, BootError> {
    let mut limit = layout::low_ram_end(mem_size);
    if let Some(max) = addr_max {
        limit = limit.min(max + 1);
    }
    let addr = limit.checked_sub(size).map(|a| a & !0xfff).filter(|a| *a >= kernel_end);
    match addr {
        Some(addr) => Ok(InitrdPlacement { addr, size }),
        None => Err(BootError::InitrdTooLarge { size, limit, kernel_end }),
    }
}

/// Reads the initramfs into guest memory.
pub fn load_initrd(
    mem: &GuestMemoryMmap,
    path: &Path,
    mem_size: u64,
    kernel: &LoadedKernel,
) -> Result<InitrdPlacement, BootError> {
    let mut file = File::open(path).map_err(|source| BootError::ReadInitrd { path: path.into(), source })?;
    let size = file.metadata().map_err(|source| BootError::ReadInitrd { path: path.into(), source })?.len();
    let addr_max = kernel.setup_header.map(|h| u64::from(h.initrd_addr_max)).filter(|m| *m != 0);
    let placement = place_initrd(mem_size, kernel.kernel_end, size, addr_max)?;
    mem.read_exact_volatile_from(GuestAddress(placement.addr), &mut file, size as usize)?;
    Ok(placement)
}

/// Real-mode address the CPU resets to (F000:FFF0).
pub const RESET_VECTOR: u64 = 0xffff0;

/// What a firmware's reset vector would do on a warm reboot, reduced to
/// "reset the machine": `mov al, 1; mov dx, 0x600; out dx, al; hlt; jmp $-1`,
/// a write of the FADT reset value to the ACPI reset register. Kernels that
/// reboot through the BIOS (the x86 fallback, and what a 6.1 kernel does
/// after a panic here) jump to this vector; without it they would run
/// zeroed memory forever instead of ending the VM.
pub const RESET_STUB: [u8; 9] = [0xb0, acpi::RESET_VALUE, 0xba, 0x00, 0x06, 0xee, 0xf4, 0xeb, 0xfd];

pub fn write_reset_stub(mem: &GuestMemoryMmap) -> Result<(), BootError> {
    mem.write_slice(&RESET_STUB, GuestAddress(RESET_VECTOR))?;
    Ok(())
}

/// Writes the NUL-terminated command line.
pub fn write_cmdline(mem: &GuestMemoryMmap, cmdline: &str) -> Result<(), BootError> {
    if cmdline.len() + 1 > layout::CMDLINE_MAX_LEN {
        return Err(BootError::CmdlineTooLong { len: cmdline.len(), max: layout::CMDLINE_MAX_LEN - 1 });
    }
    let mut bytes = cmdline.as_bytes().to_vec();
    bytes.push(0);
    mem.write_slice(&bytes, GuestAddress(layout::CMDLINE_ADDR))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reset_stub_writes_the_reset_value_to_the_acpi_port() {
        assert_eq!(u16::from_le_bytes([RESET_STUB[3], RESET_STUB[4]]), layout::ACPI_PM_PORT);
        assert_eq!(RESET_STUB[1], acpi::RESET_VALUE);
        const {
            assert!(
                RESET_VECTOR >= layout::ACPI_START && RESET_VECTOR + 16 <= layout::ACPI_END,
                "inside the reserved BIOS area"
            )
        };
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 2 << 20)]).unwrap();
        write_reset_stub(&mem).unwrap();
        let mut b = [0u8; 9];
        mem.read_slice(&mut b, GuestAddress(RESET_VECTOR)).unwrap();
        assert_eq!(b, RESET_STUB);
    }

    #[test]
    fn kernel_formats_are_recognized_by_magic() {
        assert_eq!(detect_format(b"\x7fELF\x02\x01\x01"), Some(KernelFormat::Elf));
        let mut bz = vec![0u8; 0x300];
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        assert_eq!(detect_format(&bz), Some(KernelFormat::BzImage));
        assert_eq!(detect_format(b"#!/bin/sh\n"), None);
        assert_eq!(detect_format(&[]), None);
    }

    #[test]
    fn the_initrd_goes_to_the_top_of_low_ram_page_aligned() {
        let p = place_initrd(256 << 20, 0x200_0000, 5000, Some(0x7fff_ffff)).unwrap();
        assert_eq!(p.addr, ((256 << 20) - 5000) & !0xfff);
        assert_eq!(p.addr % 4096, 0);
        assert!(p.addr + p.size <= 256 << 20);
    }

    #[test]
    fn the_initrd_respects_initrd_addr_max_and_the_mmio_hole() {
        let p = place_initrd(8 << 30, 0x200_0000, 4096, Some(0x7fff_ffff)).unwrap();
        assert_eq!(p.addr, 0x8000_0000 - 4096);
        let p = place_initrd(8 << 30, 0x200_0000, 4096, None).unwrap();
        assert_eq!(p.addr, layout::MMIO_GAP_START - 4096);
    }

    #[test]
    fn an_initrd_that_would_overlap_the_kernel_is_refused() {
        assert!(matches!(place_initrd(64 << 20, 60 << 20, 8 << 20, None), Err(BootError::InitrdTooLarge { .. })));
    }

    #[test]
    fn an_overlong_command_line_is_refused() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let long = "x".repeat(layout::CMDLINE_MAX_LEN);
        assert!(matches!(write_cmdline(&mem, &long), Err(BootError::CmdlineTooLong { .. })));
        write_cmdline(&mem, "console=ttyS0").unwrap();
        let mut buf = [0u8; 14];
        mem.read_slice(&mut buf, GuestAddress(layout::CMDLINE_ADDR)).unwrap();
        assert_eq!(&buf, b"console=ttyS0\0");
    }
}
