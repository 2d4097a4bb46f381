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
//!
//! A VM restored from a snapshot maps the snapshot's memory file private
//! (copy-on-write) into the same kind of aligned reservation: every VM
//! restored from one template shares its unmodified pages through the page
//! cache, and each pays only for the pages it writes. The file's large
//! holes (memory the guest never used or gave back) are mapped anonymous
//! instead: the guest's first write to a hole page of a file mapping would
//! make the filesystem allocate a zeroed page cache page for the hole and
//! then copy it, two pages and a copy for each of the guest's (a restored
//! guest zeroes every page it allocates, so its balloon inflated at a
//! seventh of a cold guest's speed), and the page cache page would stay
//! with the template, growing it for every VM.

use std::fs::File;
use std::num::NonZeroUsize;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, OnceLock};

use nix::sys::mman::{MapFlags, MmapAdvise, ProtFlags};
use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{FileOffset, GuestAddress, GuestMemoryMmap, GuestMemoryRegion, GuestRegionMmap};

use super::snapshot::memory::MemoryLayout;
use crate::vm::boot::layout;

pub const HUGE_PAGE: usize = 2 << 20;
pub const PAGE: usize = 4096;

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
    #[error("the memory file's layout is not that of {mem_size} bytes of guest RAM")]
    LayoutMismatch { mem_size: u64 },
    #[error("the memory file has {len} bytes where its layout needs {need}")]
    FileTooShort { len: u64, need: u64 },
    #[error("cannot {what} the memory file")]
    File {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// Rounds `addr` up to the next multiple of the 2 MiB huge page size.
pub fn align_up(addr: usize) -> usize {
    (addr + HUGE_PAGE - 1) & !(HUGE_PAGE - 1)
}

/// Maps `size` bytes at a 2 MiB-aligned address: anonymous memory, or
/// `backing` (a file and an offset in it) mapped private, so that writes
/// stay in this process.
fn map_aligned(size: usize, backing: Option<(&File, u64)>) -> Result<*mut u8, MemoryError> {
    let err = |source| MemoryError::Mmap { size, source };
    let total = NonZeroUsize::new(size + HUGE_PAGE).ok_or(err(nix::Error::EINVAL))?;
    let flags = MapFlags::MAP_PRIVATE | MapFlags::MAP_NORESERVE;
    // SAFETY: a fresh PROT_NONE reservation at an address the kernel picks;
    // it overlaps nothing of ours.
    let reserve = unsafe { nix::sys::mman::mmap_anonymous(None, total, ProtFlags::PROT_NONE, flags) }.map_err(err)?;
    let base = reserve.as_ptr() as usize;
    let aligned = align_up(base);
    let placed = NonZeroUsize::new(size).ok_or(nix::Error::EINVAL).and_then(|len| {
        let at = NonZeroUsize::new(aligned);
        let prot = ProtFlags::PROT_READ | ProtFlags::PROT_WRITE;
        let fixed = flags | MapFlags::MAP_FIXED;
        // [aligned, aligned + size) lies inside the reservation made above,
        // which nothing else uses; MAP_FIXED replaces exactly that part.
        match backing {
            Some((file, offset)) => {
                let offset = libc::off_t::try_from(offset).map_err(|_| nix::Error::EINVAL)?;
                // SAFETY: see above.
                unsafe { nix::sys::mman::mmap(at, len, prot, fixed, file, offset) }
            }
            // SAFETY: see above.
            None => unsafe { nix::sys::mman::mmap_anonymous(at, len, prot, fixed) },
        }
    });
    let ram = match placed {
        Ok(ram) => ram,
        Err(e) => {
            // SAFETY: the whole reservation is ours and nothing uses it.
            let _ = unsafe { nix::sys::mman::munmap(reserve, total.get()) };
            return Err(err(e));
        }
    };
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
    match backing {
        None => {
            // Only a hint: where THP is "madvise" this makes huge pages
            // possible. (A file mapping's copied pages are 4 KiB whatever.)
            // SAFETY: the range is the RAM mapping just created.
            let _ = unsafe { nix::sys::mman::madvise(ram, size, MmapAdvise::MADV_HUGEPAGE) };
        }
        // The holes get no such hint: a restored guest allocates scattered
        // pages (its page allocator shuffles), and a huge page for each
        // would undo the memory a template saves.
        Some((file, offset)) => {
            for (at, len) in huge_holes(&file_holes(file, offset, size as u64), size) {
                let (Some(start), Some(len)) = (NonZeroUsize::new(ram.as_ptr() as usize + at), NonZeroUsize::new(len))
                else {
                    continue;
                };
                let prot = ProtFlags::PROT_READ | ProtFlags::PROT_WRITE;
                let fixed = flags | MapFlags::MAP_FIXED;
                // SAFETY: [start, start + len) lies inside the file mapping
                // just made (huge_holes keeps to `size`), which nothing uses
                // yet; the file has no data there, so the anonymous zero
                // pages read the same as the file would.
                let placed = unsafe { nix::sys::mman::mmap_anonymous(Some(start), len, prot, fixed) };
                if let Err(e) = placed {
                    // A failed MAP_FIXED may have unmapped part of the
                    // range: the whole mapping goes, so no guest runs on it.
                    // SAFETY: `ram` is the mapping of `size` bytes made
                    // above, not yet handed to anyone.
                    let _ = unsafe { nix::sys::mman::munmap(ram, size) };
                    return Err(err(e));
                }
            }
        }
    }
    Ok(ram.as_ptr() as *mut u8)
}

/// The holes of `file` in `[offset, offset + len)`, as `(start, end)`
/// relative to `offset`, from SEEK_DATA and SEEK_HOLE. A filesystem that
/// cannot tell (or any error) gives none: the whole range is then file
/// data, which is only slower.
fn file_holes(file: &File, offset: u64, len: u64) -> Vec<(u64, u64)> {
    use nix::unistd::{lseek, Whence};
    let seek = |at: u64, whence| {
        let at = libc::off_t::try_from(at).map_err(|_| nix::Error::EINVAL)?;
        lseek(file, at, whence).map(|p| p as u64)
    };
    let end = offset.saturating_add(len);
    let mut holes = Vec::new();
    let mut pos = offset;
    while pos < end {
        let data = match seek(pos, Whence::SeekData) {
            Ok(d) => d.min(end),
            // No data from here to the end of the file.
            Err(nix::Error::ENXIO) => end,
            Err(_) => return Vec::new(),
        };
        if data > pos {
            holes.push((pos - offset, data - offset));
        }
        if data >= end {
            break;
        }
        pos = match seek(data, Whence::SeekHole) {
            // Past `data`, or the filesystem is not making progress.
            Ok(h) if h > data => h,
            _ => return holes,
        };
    }
    holes
}

/// The parts of `holes` (relative `(start, end)` pairs, sorted) that are
/// whole 2 MiB-aligned stretches inside `[0, size)`, as `(start, len)`:
/// small holes stay in the file mapping, which bounds the number of
/// mappings a fragmented file makes to one per 2 MiB.
fn huge_holes(holes: &[(u64, u64)], size: usize) -> Vec<(usize, usize)> {
    holes
        .iter()
        .filter_map(|&(a, b)| {
            let a = align_up(usize::try_from(a).ok()?);
            let b = usize::try_from(b).ok()?.min(size) & !(HUGE_PAGE - 1);
            (b > a).then(|| (a, b - a))
        })
        .collect()
}

/// One byte per page of `[host, host + len)`, bit 0 set where the page is
/// resident (mincore(2)); None if the kernel would not say.
pub(crate) fn resident_pages(host: *mut u8, len: usize) -> Option<Vec<u8>> {
    let mut vec = vec![0u8; len.div_ceil(PAGE)];
    // SAFETY: `host..host+len` is a live mapping of guest memory, page
    // aligned, and `vec` has one byte per page of it.
    let r = unsafe { libc::mincore(host.cast(), len, vec.as_mut_ptr()) };
    (r == 0).then_some(vec)
}

/// `/proc/self/smaps` of the VMM, kept open by [`keep_smaps`].
static SMAPS: OnceLock<File> = OnceLock::new();

/// Opens `/proc/self/smaps` for [`resident_kib`] to read later: call it in
/// the VMM process itself (after any fork: the file names the opener's
/// pid), before the jail hides /proc.
pub fn keep_smaps() -> std::io::Result<()> {
    let f = File::open("/proc/self/smaps")?;
    let _ = SMAPS.set(f);
    Ok(())
}

/// KiB of anonymous pages in the mappings overlapping `[start, end)`, from
/// the text of a smaps file.
fn anonymous_kib(smaps: &str, start: usize, end: usize) -> u64 {
    let mut inside = false;
    let mut kib = 0;
    for line in smaps.lines() {
        let header = line.split_once(' ').and_then(|(range, _)| range.split_once('-'));
        if let Some((a, b)) = header {
            if let (Ok(a), Ok(b)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16)) {
                inside = a < end && b > start;
                continue;
            }
        }
        if let Some(value) = line.strip_prefix("Anonymous:").filter(|_| inside) {
            kib += value.trim().trim_end_matches("kB").trim().parse::<u64>().unwrap_or(0);
        }
    }
    kib
}

/// KiB of this process's own (copied) pages in a private file mapping.
fn private_kib(host: usize, len: usize) -> Option<u64> {
    let text = match SMAPS.get() {
        Some(f) => {
            let mut buf = Vec::new();
            let mut chunk = vec![0u8; 64 << 10];
            loop {
                let n = f.read_at(&mut chunk, buf.len() as u64).ok()?;
                if n == 0 {
                    break;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            String::from_utf8_lossy(&buf).into_owned()
        }
        None => std::fs::read_to_string("/proc/self/smaps").ok()?,
    };
    Some(anonymous_kib(&text, host, host + len))
}

/// How much of a guest memory region is this VM's own resident memory, in
/// KiB, so that it can be told apart from the VMM's in its RSS. Anonymous
/// regions: mincore(2). File-backed (restored) regions: mincore would also
/// count the snapshot's page cache, shared with every VM restored from it,
/// so only the pages copied on write count, from smaps (see
/// [`keep_smaps`]); where smaps cannot be read, mincore's overestimate is
/// the safe side for the memory limits derived from this.
pub fn resident_kib(region: &GuestRegionMmap) -> u64 {
    let Ok(host) = region.get_host_address(vm_memory::MemoryRegionAddress(0)) else { return 0 };
    let len = region.len() as usize;
    if region.file_offset().is_some() {
        if let Some(kib) = private_kib(host as usize, len) {
            return kib;
        }
    }
    resident_pages(host, len).map_or(0, |v| v.iter().filter(|b| *b & 1 != 0).count() as u64 * (PAGE as u64 / 1024))
}

/// Maps every `(gpa, len, backing)` and hands the mappings to vm-memory.
fn build<'a>(
    regions: impl Iterator<Item = (u64, u64, Option<(&'a File, u64)>)>,
) -> Result<GuestMemoryMmap, MemoryError> {
    // One descriptor for the file, shared by the regions' metadata (which
    // is what tells restored regions apart, see resident_kib).
    let mut shared: Option<Arc<File>> = None;
    let mut out = Vec::new();
    for (start, len, backing) in regions {
        let size = usize::try_from(len).map_err(|_| MemoryError::Region { start })?;
        let ptr = map_aligned(size, backing)?;
        // SAFETY: `ptr` points at a live private mapping of exactly `size`
        // bytes that this process never unmaps (see the module comment),
        // so it stays valid for the region's lifetime.
        let builder = unsafe { MmapRegionBuilder::new(size).with_raw_mmap_pointer(ptr) }
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE);
        let builder = match backing {
            None => builder.with_mmap_flags(libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE),
            Some((file, offset)) => {
                let f = match &shared {
                    Some(f) => f.clone(),
                    None => {
                        let dup = file.try_clone().map_err(|source| MemoryError::File { what: "duplicate", source })?;
                        shared.insert(Arc::new(dup)).clone()
                    }
                };
                builder
                    .with_mmap_flags(libc::MAP_PRIVATE | libc::MAP_NORESERVE)
                    .with_file_offset(FileOffset::from_arc(f, offset))
            }
        };
        let region = builder.build().map_err(|_| MemoryError::Region { start })?;
        out.push(GuestRegionMmap::new(region, GuestAddress(start)).ok_or(MemoryError::Region { start })?);
    }
    GuestMemoryMmap::from_regions(out).map_err(|_| MemoryError::Region { start: 0 })
}

/// Guest RAM for `mem_size` bytes, laid out by [`layout::ram_regions`].
pub fn create(mem_size: u64) -> Result<GuestMemoryMmap, MemoryError> {
    build(layout::ram_regions(mem_size).into_iter().map(|(start, len)| (start, len, None)))
}

/// Guest RAM for `mem_size` bytes with the contents of a snapshot's memory
/// file (laid out as [`super::snapshot::memory::dump`] wrote it), mapped
/// copy-on-write: the file is never written. `saved` must be the layout
/// of `mem_size` bytes. The file must stay as it is
/// while the VM runs: a page past its end would kill the VMM with SIGBUS,
/// so a file shorter than its layout is refused here.
pub fn create_from_file(mem_size: u64, file: &File, saved: &MemoryLayout) -> Result<GuestMemoryMmap, MemoryError> {
    if *saved != MemoryLayout::for_regions(layout::ram_regions(mem_size)) {
        return Err(MemoryError::LayoutMismatch { mem_size });
    }
    let len = file.metadata().map_err(|source| MemoryError::File { what: "stat", source })?.len();
    let need = saved.file_len();
    if len < need {
        return Err(MemoryError::FileTooShort { len, need });
    }
    build(saved.regions.iter().map(|r| (r.gpa, r.len, Some((file, r.offset)))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;
    use vm_memory::{Bytes, GuestMemoryBackend, MemoryRegionAddress};

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

    fn template(size: u64) -> (File, MemoryLayout) {
        let file = tempfile::tempfile().unwrap();
        file.set_len(size).unwrap();
        file.write_all_at(&[0x5a; 2 * PAGE], 0).unwrap();
        (file, MemoryLayout::for_regions(layout::ram_regions(size)))
    }

    #[test]
    fn file_backed_ram_is_2mib_aligned_and_private() {
        let (file, l) = template(8 << 20);
        let mem = create_from_file(8 << 20, &file, &l).unwrap();
        let r = mem.iter().next().unwrap();
        assert_eq!(r.get_host_address(MemoryRegionAddress(0)).unwrap() as usize % HUGE_PAGE, 0);
        assert!(r.file_offset().is_some());
        assert_eq!(mem.read_obj::<u8>(GuestAddress(PAGE as u64)).unwrap(), 0x5a);
        mem.write_obj(1u8, GuestAddress(0)).unwrap();
        let mut b = [0u8];
        file.read_exact_at(&mut b, 0).unwrap();
        assert_eq!(b, [0x5a]);
    }

    #[test]
    fn a_short_file_or_another_layout_is_refused() {
        let (file, l) = template(8 << 20);
        file.set_len((8 << 20) - 1).unwrap();
        let e = create_from_file(8 << 20, &file, &l).unwrap_err();
        assert!(matches!(e, MemoryError::FileTooShort { len, need } if need == 8 << 20 && len == need - 1), "{e}");

        let (file, l) = template(8 << 20);
        let e = create_from_file(16 << 20, &file, &l).unwrap_err();
        assert!(matches!(e, MemoryError::LayoutMismatch { mem_size: 0x100_0000 }), "{e}");
        let mut moved = l.clone();
        moved.regions[0].offset = HUGE_PAGE as u64;
        assert!(matches!(create_from_file(8 << 20, &file, &moved), Err(MemoryError::LayoutMismatch { .. })));
    }

    #[test]
    fn resident_counts_only_copied_pages_of_a_file_mapping() {
        let (file, l) = template(8 << 20);
        let mem = create_from_file(8 << 20, &file, &l).unwrap();
        let region = mem.iter().next().unwrap();
        // Reading maps the file's (shared) pages: not this VM's memory.
        let mut buf = vec![0u8; 64 * PAGE];
        mem.read_slice(&mut buf, GuestAddress(0)).unwrap();
        assert_eq!(resident_kib(region), 0);
        mem.write_obj(1u8, GuestAddress(0)).unwrap();
        mem.write_obj(1u8, GuestAddress(10 * PAGE as u64)).unwrap();
        assert_eq!(resident_kib(region), 8);
        // Anonymous RAM still counts what mincore sees.
        let anon = create(8 << 20).unwrap();
        anon.write_slice(&[1u8; 3 * PAGE], GuestAddress(0)).unwrap();
        assert!(resident_kib(anon.iter().next().unwrap()) >= 12);
    }

    #[test]
    fn only_whole_aligned_2mib_stretches_of_holes_go_anonymous() {
        const M: u64 = HUGE_PAGE as u64;
        // A small hole, one straddling 2 MiB boundaries, one past the end.
        let holes = [(4096, 8192), (M / 2, 3 * M + 4096), (5 * M, 9 * M)];
        assert_eq!(huge_holes(&holes, 8 * HUGE_PAGE), vec![(HUGE_PAGE, 2 * HUGE_PAGE), (5 * HUGE_PAGE, 3 * HUGE_PAGE)]);
        assert_eq!(huge_holes(&[(M, 2 * M - 1)], 8 * HUGE_PAGE), vec![]);
    }

    #[test]
    fn a_memory_files_large_holes_are_mapped_anonymous_and_read_zero() {
        const M: u64 = HUGE_PAGE as u64;
        let (file, l) = template(8 << 20);
        // Data in the first and the last 2 MiB; holes between.
        file.write_all_at(&[0x77; PAGE], 3 * M + 4096).unwrap();
        let holes = file_holes(&file, 0, 4 * M);
        assert_eq!(holes, vec![(2 * PAGE as u64, 3 * M + 4096), (3 * M + 8192, 4 * M)]);
        assert_eq!(huge_holes(&holes, 4 * HUGE_PAGE), vec![(HUGE_PAGE, 2 * HUGE_PAGE)]);
        let mem = create_from_file(8 << 20, &file, &l).unwrap();
        let region = mem.iter().next().unwrap();
        let host = region.get_host_address(MemoryRegionAddress(0)).unwrap() as usize;
        assert_eq!(mem.read_obj::<u8>(GuestAddress(PAGE as u64)).unwrap(), 0x5a);
        assert_eq!(mem.read_obj::<u8>(GuestAddress(3 * M + 4096)).unwrap(), 0x77);
        assert_eq!(mem.read_obj::<u64>(GuestAddress(2 * M)).unwrap(), 0);
        // /proc/self/maps: the hole's mapping has no file (inode 0).
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        let line = maps
            .lines()
            .find(|l| {
                let (a, b) = l.split_once(' ').unwrap().0.split_once('-').unwrap();
                let (a, b) = (usize::from_str_radix(a, 16).unwrap(), usize::from_str_radix(b, 16).unwrap());
                a <= host + 2 * HUGE_PAGE && host + 2 * HUGE_PAGE < b
            })
            .unwrap();
        assert_eq!(line.split_whitespace().nth(4), Some("0"), "{line}");
        // Writes to either kind count as this VM's own memory.
        mem.write_obj(1u8, GuestAddress(0)).unwrap();
        mem.write_obj(1u8, GuestAddress(2 * M)).unwrap();
        // (A huge page, where THP is "always", for the hole's write.)
        let kib = resident_kib(region);
        assert!(kib == 8 || kib == 4 + 2048, "{kib} KiB");
    }

    #[test]
    fn smaps_anonymous_is_summed_over_the_range() {
        let smaps = "\
7f0000000000-7f0000200000 rw-p 00000000 fe:01 1234 /tmp/memory
Size:               2048 kB
Anonymous:            12 kB
VmFlags: rd wr mr mw me ac
7f0000200000-7f0000400000 rw-p 00200000 fe:01 1234 /tmp/memory
Anonymous:             4 kB
7f0000400000-7f0000600000 rw-p 00000000 00:00 0
Anonymous:          2048 kB
";
        assert_eq!(anonymous_kib(smaps, 0x7f00_0000_0000, 0x7f00_0040_0000), 16);
        assert_eq!(anonymous_kib(smaps, 0x7f00_0020_0000, 0x7f00_0030_0000), 4);
        assert_eq!(anonymous_kib(smaps, 0x1000, 0x2000), 0);
    }
}
