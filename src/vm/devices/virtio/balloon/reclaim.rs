//! Giving guest pages back to the host: `madvise(MADV_DONTNEED)` on the
//! VMM's mapping of guest memory.
//!
//! Guest RAM is a private mapping (`vmm::memory`): anonymous after a cold
//! boot, the template's memory file (copy on write) after a restore. Either
//! way DONTNEED frees the VMM's own pages at once; the next guest access
//! finds a zero-filled page, or the template's page again where the file
//! has data (harmless: the guest gave the page up and zeroes what it
//! allocates). KVM learns of the change through its MMU notifier, so
//! nothing else needs to be told. Every range is checked to lie wholly
//! inside guest memory before anything is discarded, and only whole 4 KiB
//! pages are: a range the guest gives that is not page aligned loses its
//! partial pages at either end (they may hold live data of the guest).

use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, MemoryRegionAddress};

/// The balloon's page size (virtio 1.2, 5.5.6: PFNs are in 4 KiB units,
/// whatever the guest's own page size).
pub const PAGE_SIZE: u64 = 4096;
/// The PFN shift matching [`PAGE_SIZE`] (VIRTIO_BALLOON_PFN_SHIFT).
pub const PFN_SHIFT: u32 = 12;

/// Discards the whole pages inside `[start, start + len)`; returns the
/// bytes discarded: 0 when the range (after rounding inwards to pages) is
/// empty or not wholly inside guest memory.
pub fn discard_range(mem: &GuestMemoryMmap, start: u64, len: u64) -> u64 {
    let Some(end) = start.checked_add(len) else { return 0 };
    let Some(first) = start.checked_next_multiple_of(PAGE_SIZE) else { return 0 };
    let last = end - end % PAGE_SIZE;
    if last <= first {
        return 0;
    }
    let len = last - first;
    let Ok(count) = usize::try_from(len) else { return 0 };
    if !GuestMemoryBackend::check_range(mem, GuestAddress(first), count) {
        return 0;
    }
    let mut addr = first;
    let mut done = 0;
    // The range may span adjacent regions; each has its own mapping.
    while done < len {
        let Some(region) = mem.find_region(GuestAddress(addr)) else { break };
        let offset = addr - region.start_addr().0;
        let chunk = (region.len() - offset).min(len - done);
        let Ok(host) = region.get_host_address(MemoryRegionAddress(offset)) else { break };
        if madvise_dontneed(host, chunk) {
            done += chunk;
        } else {
            break;
        }
        addr += chunk;
    }
    done
}

/// Discards the pages the PFNs name: PFNs outside guest memory are
/// skipped, the rest sorted, deduplicated and coalesced into runs so a
/// batch of neighbouring pages costs one system call. Returns the bytes
/// discarded.
pub fn discard_pfns(mem: &GuestMemoryMmap, pfns: &mut Vec<u32>) -> u64 {
    pfns.sort_unstable();
    pfns.dedup();
    let mut total = 0;
    let mut run: Option<(u64, u64)> = None;
    for &pfn in pfns.iter() {
        let page = u64::from(pfn) << PFN_SHIFT;
        // Checked alone so one bad PFN does not spoil its neighbours.
        if !GuestMemoryBackend::check_range(mem, GuestAddress(page), PAGE_SIZE as usize) {
            continue;
        }
        run = match run {
            Some((start, len)) if start + len == page => Some((start, len + PAGE_SIZE)),
            Some((start, len)) => {
                total += discard_range(mem, start, len);
                Some((page, PAGE_SIZE))
            }
            None => Some((page, PAGE_SIZE)),
        };
    }
    if let Some((start, len)) = run {
        total += discard_range(mem, start, len);
    }
    total
}

fn madvise_dontneed(host: *mut u8, len: u64) -> bool {
    let Ok(len) = usize::try_from(len) else { return false };
    // madvise needs a page-aligned start; guest regions are mapped page
    // aligned and `discard_range` only passes page-aligned offsets, so this
    // only fails for a mapping amphi did not make.
    if host as usize % PAGE_SIZE as usize != 0 {
        return false;
    }
    // SAFETY: `host..host + len` lies inside one guest memory region's
    // live mapping (checked by the caller against the region's length).
    // DONTNEED on a private anonymous mapping only replaces the range's
    // contents with zero pages; guest memory is only ever reached through
    // volatile accessors and the guest itself, for which this is the same
    // as the guest writing zeros, so no Rust reference is invalidated.
    unsafe { libc::madvise(host.cast(), len, libc::MADV_DONTNEED) == 0 }
}

#[cfg(test)]
mod tests {
    use vm_memory::{Bytes, GuestMemoryMmap};

    use super::*;

    /// Two regions with a hole between them: [0, 1 MiB) and [2 MiB, 3 MiB),
    /// and a third right after the second: [3 MiB, 4 MiB).
    fn memory() -> GuestMemoryMmap {
        GuestMemoryMmap::<()>::from_ranges(&[
            (GuestAddress(0), 1 << 20),
            (GuestAddress(2 << 20), 1 << 20),
            (GuestAddress(3 << 20), 1 << 20),
        ])
        .unwrap()
    }

    fn fill(mem: &GuestMemoryMmap, at: u64, len: usize) {
        mem.write_slice(&vec![0xa5; len], GuestAddress(at)).unwrap();
    }

    fn read(mem: &GuestMemoryMmap, at: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        mem.read_slice(&mut v, GuestAddress(at)).unwrap();
        v
    }

    #[test]
    fn a_discarded_range_reads_back_as_zeros() {
        let mem = memory();
        fill(&mem, 0x1_0000, 0x4000);
        assert_eq!(discard_range(&mem, 0x1_1000, 0x2000), 0x2000);
        assert_eq!(read(&mem, 0x1_0000, 0x1000), vec![0xa5; 0x1000], "the page before is kept");
        assert_eq!(read(&mem, 0x1_1000, 0x2000), vec![0; 0x2000]);
        assert_eq!(read(&mem, 0x1_3000, 0x1000), vec![0xa5; 0x1000], "the page after is kept");
    }

    #[test]
    fn unaligned_ranges_keep_their_partial_pages() {
        let mem = memory();
        fill(&mem, 0x2_0000, 0x4000);
        assert_eq!(discard_range(&mem, 0x2_0800, 0x2000), 0x1000, "only the one whole page inside");
        assert_eq!(read(&mem, 0x2_0000, 0x1000), vec![0xa5; 0x1000]);
        assert_eq!(read(&mem, 0x2_1000, 0x1000), vec![0; 0x1000]);
        assert_eq!(read(&mem, 0x2_2000, 0x1000), vec![0xa5; 0x1000]);
        assert_eq!(discard_range(&mem, 0x2_0800, 0x800), 0, "no whole page");
        assert_eq!(discard_range(&mem, 0x2_0000, 0), 0);
    }

    #[test]
    fn ranges_outside_guest_memory_are_refused_whole() {
        let mem = memory();
        fill(&mem, 0xf_f000, 0x1000);
        assert_eq!(discard_range(&mem, 0xf_f000, 0x2000), 0, "runs into the hole");
        assert_eq!(read(&mem, 0xf_f000, 0x1000), vec![0xa5; 0x1000]);
        assert_eq!(discard_range(&mem, 4 << 20, 0x1000), 0, "past the end");
        assert_eq!(discard_range(&mem, u64::MAX - 0xfff, 0x1000), 0);
        assert_eq!(discard_range(&mem, u64::MAX - 0x800, u64::MAX), 0, "overflow");
    }

    #[test]
    fn a_range_may_span_adjacent_regions() {
        let mem = memory();
        fill(&mem, (3 << 20) - 0x1000, 0x2000);
        assert_eq!(discard_range(&mem, (3 << 20) - 0x1000, 0x2000), 0x2000);
        assert_eq!(read(&mem, (3 << 20) - 0x1000, 0x2000), vec![0; 0x2000]);
    }

    #[test]
    fn pfns_are_checked_one_by_one_and_coalesced() {
        let mem = memory();
        fill(&mem, 0, 0x10_0000);
        // 0x10..0x13 in a shuffled order with a duplicate, one PFN in the
        // hole, one past the end, one at the top of the u32 range.
        let mut pfns = vec![0x12, 0x10, 0x180, 0x13, 0x11, 0x12, 0x400, u32::MAX, 0x20];
        assert_eq!(discard_pfns(&mem, &mut pfns), 5 * PAGE_SIZE);
        assert_eq!(read(&mem, 0x1_0000, 0x4000), vec![0; 0x4000]);
        assert_eq!(read(&mem, 0x2_0000, 0x1000), vec![0; 0x1000]);
        assert_eq!(read(&mem, 0xf000, 0x1000), vec![0xa5; 0x1000]);
        assert_eq!(read(&mem, 0x1_4000, 0x1000), vec![0xa5; 0x1000]);
    }
}
