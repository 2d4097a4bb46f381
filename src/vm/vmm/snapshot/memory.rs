//! Guest RAM to a sparse file. Each region lands at a 2 MiB-aligned file
//! offset (so that a later file-backed mapping keeps guest-physical and
//! file offsets congruent modulo 2 MiB); only pages that hold data are
//! written, so never-touched and zeroed pages (what the balloon's free page
//! reporting gave back) stay holes and cost no disk or page cache.
//! [`crate::vm::vmm::memory::create_from_file`] maps the file back.

use std::fs::File;
use std::os::fd::AsRawFd;

use serde::{Deserialize, Serialize};
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, MemoryRegionAddress};

use super::SnapshotError;
use crate::vm::vmm::memory::{resident_pages, HUGE_PAGE, PAGE};

/// Where one guest memory region is in the memory file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegionLayout {
    /// Guest-physical start.
    pub gpa: u64,
    /// Bytes.
    pub len: u64,
    /// Byte offset in the file, a multiple of 2 MiB.
    pub offset: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryLayout {
    pub regions: Vec<RegionLayout>,
}

impl MemoryLayout {
    /// The layout of `(gpa, len)` regions: one after another in the file,
    /// each from the next 2 MiB boundary.
    pub fn for_regions(regions: impl IntoIterator<Item = (u64, u64)>) -> MemoryLayout {
        let mut offset = 0u64;
        let regions = regions
            .into_iter()
            .map(|(gpa, len)| {
                let r = RegionLayout { gpa, len, offset };
                offset = offset.saturating_add(len).next_multiple_of(HUGE_PAGE as u64);
                r
            })
            .collect();
        MemoryLayout { regions }
    }

    /// How long the file is: up to the end of its last region.
    pub fn file_len(&self) -> u64 {
        self.regions.iter().map(|r| r.offset.saturating_add(r.len)).max().unwrap_or(0)
    }
}

fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> SnapshotError {
    move |source| SnapshotError::MemoryFile { what, source }
}

/// Writes all of `mem` to `file` (truncated first) and syncs it. The VM
/// must be paused with its devices quiesced, or the image is torn.
pub fn dump(mem: &GuestMemoryMmap, file: &File) -> Result<MemoryLayout, SnapshotError> {
    let layout = MemoryLayout::for_regions(mem.iter().map(|r| (r.start_addr().0, r.len())));
    file.set_len(0).map_err(io("truncate"))?;
    file.set_len(layout.file_len()).map_err(io("size"))?;
    // mincore reports a swapped-out anonymous page as absent: with swap in
    // use, or unknown, every page is looked at.
    let trust_mincore = swapped_kib() == Some(0);
    for (region, place) in mem.iter().zip(&layout.regions) {
        let gpa = place.gpa;
        let host = region.get_host_address(MemoryRegionAddress(0)).map_err(|_| SnapshotError::MemoryRegion { gpa })?;
        let len = usize::try_from(place.len).map_err(|_| SnapshotError::MemoryRegion { gpa })?;
        // A file-backed region's absent pages still have data in its file.
        let resident = (trust_mincore && region.file_offset().is_none()).then(|| resident_pages(host, len)).flatten();
        let pages = len / PAGE;
        let mut run: Option<usize> = None;
        for page in 0..=pages {
            let data = page < pages
                && resident.as_ref().is_none_or(|r| r[page] & 1 != 0)
                && !page_is_zero(host.wrapping_add(page * PAGE));
            match (data, run) {
                (true, None) => run = Some(page),
                (false, Some(first)) => {
                    let at = first * PAGE;
                    write_at(file, host.wrapping_add(at), (page - first) * PAGE, place.offset + at as u64)?;
                    run = None;
                }
                _ => {}
            }
        }
    }
    file.sync_all().map_err(io("sync"))?;
    Ok(layout)
}

/// Whether the 4 KiB page at `page` reads all zero. Volatile reads: the
/// memory is the guest's, not Rust data this thread owns.
fn page_is_zero(page: *const u8) -> bool {
    let words = page.cast::<u64>();
    // SAFETY: `page` is a page-aligned page inside a live guest memory
    // mapping (readable, 8-byte aligned), read word by word.
    (0..PAGE / 8).all(|i| unsafe { std::ptr::read_volatile(words.wrapping_add(i)) } == 0)
}

/// pwrite(2)s all `len` bytes at `src` to `file` at `offset`.
fn write_at(file: &File, src: *const u8, len: usize, offset: u64) -> Result<(), SnapshotError> {
    let mut done = 0;
    while done < len {
        let at = libc::off_t::try_from(offset + done as u64).map_err(|_| SnapshotError::MemoryFile {
            what: "write",
            source: std::io::ErrorKind::InvalidInput.into(),
        })?;
        // SAFETY: `src..src+len` lies inside a live guest memory mapping;
        // the kernel only reads it.
        let n = unsafe { libc::pwrite(file.as_raw_fd(), src.wrapping_add(done).cast(), len - done, at) };
        match n {
            n if n > 0 => done += n as usize,
            0 => return Err(SnapshotError::MemoryFile { what: "write", source: std::io::ErrorKind::WriteZero.into() }),
            _ => {
                let e = std::io::Error::last_os_error();
                if e.kind() != std::io::ErrorKind::Interrupted {
                    return Err(SnapshotError::MemoryFile { what: "write", source: e });
                }
            }
        }
    }
    Ok(())
}

/// This process's swapped-out memory (`VmSwap`), if /proc tells.
fn swapped_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find_map(|l| l.strip_prefix("VmSwap:"))?;
    line.trim().trim_end_matches("kB").trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vm::boot::layout::{MMIO_GAP_END, MMIO_GAP_START};
    use crate::vm::vmm::memory::{create, create_from_file};
    use std::os::unix::fs::{FileExt, MetadataExt};
    use vm_memory::{Bytes, GuestAddress};

    #[test]
    fn layout_puts_regions_at_2mib_boundaries() {
        let l = MemoryLayout::for_regions([(0, 3 << 20), (MMIO_GAP_END, 1 << 20)]);
        assert_eq!(l.regions[0], RegionLayout { gpa: 0, len: 3 << 20, offset: 0 });
        assert_eq!(l.regions[1], RegionLayout { gpa: MMIO_GAP_END, len: 1 << 20, offset: 4 << 20 });
        assert_eq!(l.file_len(), 5 << 20);
        assert_eq!(MemoryLayout::for_regions([]).file_len(), 0);
        let json = serde_json::to_string(&l).unwrap();
        assert_eq!(serde_json::from_str::<MemoryLayout>(&json).unwrap(), l);
    }

    #[test]
    fn dump_writes_only_data_pages_and_maps_back() {
        let size = 16 << 20;
        let mem = create(size).unwrap();
        mem.write_slice(&[0xab; 3 * PAGE], GuestAddress(0x10_0000)).unwrap();
        mem.write_obj(0x1234_5678u32, GuestAddress(size - 4)).unwrap();
        // Touched but zero: resident, yet written as a hole.
        mem.write_slice(&[0; PAGE], GuestAddress(0x20_0000)).unwrap();
        let file = tempfile::tempfile().unwrap();
        let l = dump(&mem, &file).unwrap();
        assert_eq!(l, MemoryLayout::for_regions([(0, size)]));

        let meta = file.metadata().unwrap();
        assert_eq!(meta.len(), size);
        assert!(meta.blocks() * 512 <= 64 << 10, "{} bytes allocated", meta.blocks() * 512);
        let mut b = [0u8; 4];
        file.read_exact_at(&mut b, size - 4).unwrap();
        assert_eq!(u32::from_le_bytes(b), 0x1234_5678);

        let back = create_from_file(size, &file, &l).unwrap();
        let mut buf = vec![0u8; 3 * PAGE];
        back.read_slice(&mut buf, GuestAddress(0x10_0000)).unwrap();
        assert!(buf.iter().all(|b| *b == 0xab));
        assert_eq!(back.read_obj::<u32>(GuestAddress(size - 4)).unwrap(), 0x1234_5678);
        assert_eq!(back.read_obj::<u64>(GuestAddress(0x20_0000)).unwrap(), 0);
        assert_eq!(back.read_obj::<u64>(GuestAddress(0x80_0000)).unwrap(), 0);

        // Copy-on-write: the file keeps the template's bytes.
        back.write_obj(0xdead_beefu32, GuestAddress(0x10_0000)).unwrap();
        back.write_obj(0x5555u16, GuestAddress(0x80_0000)).unwrap();
        assert_eq!(back.read_obj::<u32>(GuestAddress(0x10_0000)).unwrap(), 0xdead_beef);
        file.read_exact_at(&mut b, 0x10_0000).unwrap();
        assert_eq!(b, [0xab; 4]);
        file.read_exact_at(&mut b, 0x80_0000).unwrap();
        assert_eq!(b, [0; 4]);

        // Dumping a restored VM sees its file's pages too.
        let again = tempfile::tempfile().unwrap();
        dump(&back, &again).unwrap();
        again.read_exact_at(&mut b, size - 4).unwrap();
        assert_eq!(u32::from_le_bytes(b), 0x1234_5678);
        again.read_exact_at(&mut b, 0x10_0000).unwrap();
        assert_eq!(u32::from_le_bytes(b), 0xdead_beef);
    }

    #[test]
    fn regions_above_the_mmio_gap_round_trip() {
        let size = MMIO_GAP_START + (4 << 20);
        let mem = create(size).unwrap();
        mem.write_obj(0x1111u16, GuestAddress(MMIO_GAP_START - 2)).unwrap();
        mem.write_obj(0x2222u16, GuestAddress(MMIO_GAP_END)).unwrap();
        let file = tempfile::tempfile().unwrap();
        let l = dump(&mem, &file).unwrap();
        assert_eq!(l.regions.len(), 2);
        assert_eq!(l.regions[1].offset % HUGE_PAGE as u64, 0);
        let back = create_from_file(size, &file, &l).unwrap();
        assert_eq!(back.read_obj::<u16>(GuestAddress(MMIO_GAP_START - 2)).unwrap(), 0x1111);
        assert_eq!(back.read_obj::<u16>(GuestAddress(MMIO_GAP_END)).unwrap(), 0x2222);
    }
}
