//! Guest RAM: anonymous memory mapped at 2 MiB-aligned host addresses.
//!
//! KVM can back guest memory with 2 MiB pages in its (nested) page tables
//! only where the guest-physical and host-virtual addresses agree modulo
//! 2 MiB. An unaligned mapping forces 4 KiB mappings for every guest page:
//! many more page-table faults, which are very expensive in a nested test
//! host. QEMU aligns its RAM for the same reason; vm-memory's own mmap does
//! not, so amphi maps the memory itself and hands it to vm-memory.
//!
//! The mappings live as long as the VMM process (which ends with the VM);
//! they are not unmapped earlier because device threads may hold clones of
//! the guest memory until the process exits.

use std::num::NonZeroUsize;

use nix::sys::mman::{MapFlags, MmapAdvise, ProtFlags};
use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{GuestAddress, GuestMemoryMmap, GuestRegionMmap};

use crate::vm::boot::layout;

pub const HUGE_PAGE: usize = 2 << 20;

#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("cannot map {size} bytes of guest memory")]
    Mmap {
        size: usize,
        #[source]
        source: nix::Error,
    },
    #[error("cannot set up the guest memory region at {start:#x}")]
    Region { start: u64 },
}

/// Rounds `addr` up to the next multiple of the 2 MiB huge page size.
pub fn align_up(addr: usize) -> usize {
    (addr + HUGE_PAGE - 1) & !(HUGE_PAGE - 1)
}

/// Maps `size` bytes of anonymous memory at a 2 MiB-aligned address.
fn map_aligned(size: usize) -> Result<*mut u8, MemoryError> {
    let err = |source| MemoryError::Mmap { size, source };
    let total = NonZeroUsize::new(size + HUGE_PAGE).ok_or(err(nix::Error::EINVAL))?;
    let flags = MapFlags::MAP_PRIVATE | MapFlags::MAP_NORESERVE;
    // SAFETY: a fresh PROT_NONE reservation at an address the kernel picks;
    // it overlaps nothing of ours.
    let reserve = unsafe { nix::sys::mman::mmap_anonymous(None, total, ProtFlags::PROT_NONE, flags) }.map_err(err)?;
    let base = reserve.as_ptr() as usize;
    let aligned = align_up(base);
    let len = NonZeroUsize::new(size).ok_or(err(nix::Error::EINVAL))?;
    // SAFETY: [aligned, aligned + size) lies inside the reservation made
    // above, which nothing else uses; MAP_FIXED replaces exactly that part.
    let ram = unsafe {
        nix::sys::mman::mmap_anonymous(
            NonZeroUsize::new(aligned),
            len,
            ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
            flags | MapFlags::MAP_FIXED,
        )
    }
    .map_err(err)?;
    // Give back the unaligned head and tail of the reservation.
    let head = aligned - base;
    let tail = total.get() - head - size;
    if head > 0 {
        // SAFETY: the head is part of our own PROT_NONE reservation.
        let _ = unsafe { nix::sys::mman::munmap(reserve, head) };
    }
    if tail > 0 {
        if let Some(t) = std::ptr::NonNull::new((aligned + size) as *mut std::ffi::c_void) {
            // SAFETY: the tail is part of our own PROT_NONE reservation.
            let _ = unsafe { nix::sys::mman::munmap(t, tail) };
        }
    }
    // Only a hint: where THP is "madvise" this makes huge pages possible.
    // SAFETY: the range is the RAM mapping just created.
    let _ = unsafe { nix::sys::mman::madvise(ram, size, MmapAdvise::MADV_HUGEPAGE) };
    Ok(ram.as_ptr() as *mut u8)
}

/// Guest RAM for `mem_size` bytes, laid out by [`layout::ram_regions`].
/// How much of a guest memory region is resident, in KiB (mincore(2)), so
/// that the VMM's own memory can be told apart from the guest's in its RSS.
pub fn resident_kib(region: &GuestRegionMmap) -> u64 {
    use vm_memory::GuestMemoryRegion;
    let Ok(host) = region.get_host_address(vm_memory::MemoryRegionAddress(0)) else { return 0 };
    let len = region.len() as usize;
    let page = 4096usize;
    let mut vec = vec![0u8; len.div_ceil(page)];
    // SAFETY: `host..host+len` is the region's live mapping, page aligned,
    // and `vec` has one byte per page of it.
    let r = unsafe { libc::mincore(host.cast(), len, vec.as_mut_ptr()) };
    if r != 0 {
        return 0;
    }
    vec.iter().filter(|b| *b & 1 != 0).count() as u64 * (page as u64 / 1024)
}

pub fn create(mem_size: u64) -> Result<GuestMemoryMmap, MemoryError> {
    let mut regions = Vec::new();
    for (start, len) in layout::ram_regions(mem_size) {
        let size = len as usize;
        let ptr = map_aligned(size)?;
        // SAFETY: `ptr` points at a live private anonymous mapping of
        // exactly `size` bytes that this process never unmaps (see the
        // module comment), so it stays valid for the region's lifetime.
        let builder = unsafe { MmapRegionBuilder::new(size).with_raw_mmap_pointer(ptr) };
        let region = builder
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
            .with_mmap_flags(libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE)
            .build()
            .map_err(|_| MemoryError::Region { start })?;
        regions.push(GuestRegionMmap::new(region, GuestAddress(start)).ok_or(MemoryError::Region { start })?);
    }
    GuestMemoryMmap::from_regions(regions).map_err(|_| MemoryError::Region { start: 0 })
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestMemoryBackend, GuestMemoryRegion, MemoryRegionAddress};

    #[test]
    fn guest_ram_is_2mib_aligned_and_usable() {
        let mem = create(64 << 20).unwrap();
        let r = mem.iter().next().unwrap();
        let host = r.get_host_address(MemoryRegionAddress(0)).unwrap() as usize;
        assert_eq!(host % HUGE_PAGE, 0);
        assert_eq!(r.len(), 64 << 20);
        mem.write_obj(0xdead_beefu32, GuestAddress(0x3ff_fffc)).unwrap();
        assert_eq!(mem.read_obj::<u32>(GuestAddress(0x3ff_fffc)).unwrap(), 0xdead_beef);
    }

    #[test]
    fn align_up_rounds_to_2mib() {
        assert_eq!(align_up(1), HUGE_PAGE);
        assert_eq!(align_up(HUGE_PAGE), HUGE_PAGE);
        assert_eq!(align_up(HUGE_PAGE + 4096), 2 * HUGE_PAGE);
    }
}
