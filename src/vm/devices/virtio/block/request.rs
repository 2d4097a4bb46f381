//! One virtio-blk request (virtio 1.2, 5.2.6), from a descriptor chain to
//! its status byte: a 16-byte header (type, reserved, sector) the device
//! reads, the data (device-readable for a write, device-writable for a
//! read or GET_ID), and one status byte the device writes last.
//!
//! The chain is taken as the guest wrote it, whatever that is (DEVELOPERS.md
//! rule 9). The status byte is the last byte of the chain's last
//! descriptor; a chain without one the device may write (it ends in a
//! device-readable or empty descriptor, lies outside guest memory, or was
//! cut short because it loops or runs past its table) cannot be answered
//! and is used with length 0. Every other mistake is answered with
//! VIRTIO_BLK_S_IOERR before any data moves: a descriptor outside guest
//! memory or of length 0, more descriptors than SEG_MAX allows, readable
//! after writable buffers, a header shorter than 16 bytes, data that is
//! empty, not a whole number of sectors, or reaches past the disk's end
//! (sector arithmetic is checked, so no overflow wraps it back inside),
//! and any write to a read-only disk. Unknown types get
//! VIRTIO_BLK_S_UNSUPP. Buffers may be split anywhere (VIRTIO_F_VERSION_1
//! implies any layout): a header over several descriptors, a write's data
//! in the header's descriptor, a read's data and the status in one.
//!
//! Data moves between the disk and guest memory directly (pread/pwrite
//! on guest memory, no host copy), at most [`CHUNK`] bytes per call; the
//! worker checks between two calls whether a reset wants the queue back,
//! so a large request cannot hold up a reset. Nothing here allocates more
//! than one small entry per descriptor, and descriptors are bounded.

use std::sync::atomic::{AtomicBool, Ordering};

use virtio_bindings::bindings::virtio_blk::{
    VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN,
    VIRTIO_BLK_T_OUT,
};
use virtio_queue::desc::split::Descriptor;
use virtio_queue::DescriptorChain;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemory, GuestMemoryMmap, Permissions};

use super::disk::{DiskBackend, SECTOR_SIZE, SERIAL_LEN};

/// Data buffers one request may have (config `seg_max`): the queue size
/// less the header and the status, so a request always fits the ring
/// without indirect descriptors (as QEMU sizes it).
pub const SEG_MAX: u32 = super::device::QUEUE_SIZE as u32 - 2;
/// Descriptors one request may have: data buffers, header and status.
const MAX_DESCRIPTORS: usize = SEG_MAX as usize + 2;
/// `struct virtio_blk_outhdr`: le32 type, le32 reserved (ioprio), le64 sector.
pub const HEADER_LEN: usize = 16;
/// The most one pread or pwrite moves; between two, a reset can stop the
/// request.
pub const CHUNK: usize = 1 << 20;

/// What became of a chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Answered (or dropped, with 0): give the chain back with this many
    /// bytes written for the guest.
    Used(u32),
    /// A reset came while the request was served: the chain is abandoned
    /// with the rest of the queue, as a reset does.
    Cancelled,
}

/// One buffer (or part of one) of a chain, known to lie in guest memory.
#[derive(Debug, Clone, Copy)]
struct Seg {
    addr: GuestAddress,
    len: u64,
}

/// A chain with a status byte the device can write.
struct Walked {
    status: GuestAddress,
    /// The buffers, or the status the request gets without looking further.
    bufs: Result<Buffers, u32>,
}

struct Buffers {
    /// Device-readable: the header, then a write's data.
    readable: Vec<Seg>,
    /// Device-writable, without the status byte: a read's data or the ID.
    writable: Vec<Seg>,
}

enum Fail {
    Status(u32),
    Cancelled,
}

const IOERR: Fail = Fail::Status(VIRTIO_BLK_S_IOERR);

/// Serves one chain against `disk`. `writethrough` flushes after every
/// write (a driver that did not accept VIRTIO_BLK_F_FLUSH expects a
/// write-through disk); `cancel` is checked between data transfers.
pub fn serve<D: DiskBackend>(
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
    disk: &D,
    writethrough: bool,
    cancel: &AtomicBool,
) -> Outcome {
    let Some(walked) = walk(mem, chain) else { return Outcome::Used(0) };
    let (status, written) = match walked.bufs {
        Err(status) => (status, 0),
        Ok(bufs) => match execute(mem, &bufs, disk, writethrough, cancel) {
            Ok(written) => (VIRTIO_BLK_S_OK, written),
            Err(Fail::Status(status)) => (status, 0),
            Err(Fail::Cancelled) => return Outcome::Cancelled,
        },
    };
    // The status goes last: for a FLUSH (and any write in write-through
    // mode) only after the data reached stable storage. Its address was
    // checked with the chain, so this only fails if guest memory went away.
    if mem.write_obj(status as u8, walked.status).is_err() {
        return Outcome::Used(0);
    }
    Outcome::Used(u32::try_from(written.saturating_add(1)).unwrap_or(u32::MAX))
}

/// Reads the chain's descriptors: `None` when there is no status byte to
/// answer in.
fn walk(mem: &GuestMemoryMmap, chain: DescriptorChain<&GuestMemoryMmap>) -> Option<Walked> {
    let mut descs: Vec<Descriptor> = Vec::new();
    let mut count = 0usize;
    let mut last = None;
    // The iterator ends a chain that loops at the queue size (at an
    // indirect table's length inside one), so this loop is bounded; past
    // MAX_DESCRIPTORS only the last descriptor is kept.
    for d in chain {
        if descs.len() < MAX_DESCRIPTORS {
            descs.push(d);
        }
        count += 1;
        last = Some(d);
    }
    let last = last?;
    // A last descriptor that still points onwards means the iterator cut
    // the chain (a loop, a next index past the table, a table outside
    // guest memory, more than 4 GiB): its end is unknown.
    if last.has_next() || !last.is_write_only() || last.len() == 0 {
        return None;
    }
    let status = last.addr().checked_add(u64::from(last.len()) - 1)?;
    if !GuestMemory::check_range(mem, status, 1, Permissions::Write) {
        return None;
    }
    let bufs = buffers(mem, &descs, count);
    Some(Walked { status, bufs })
}

/// Checks the chain's shape and splits it into readable and writable
/// buffers (the status byte taken off the end).
fn buffers(mem: &GuestMemoryMmap, descs: &[Descriptor], count: usize) -> Result<Buffers, u32> {
    const ERR: u32 = VIRTIO_BLK_S_IOERR;
    if count > MAX_DESCRIPTORS {
        return Err(ERR);
    }
    for d in descs {
        let perm = if d.is_write_only() { Permissions::Write } else { Permissions::Read };
        if d.len() == 0 || !GuestMemory::check_range(mem, d.addr(), d.len() as usize, perm) {
            return Err(ERR);
        }
    }
    // Device-readable buffers come first (virtio 1.2, 2.7.4.2).
    let first_writable = descs.iter().position(|d| d.is_write_only()).ok_or(ERR)?;
    if descs[first_writable..].iter().any(|d| !d.is_write_only()) {
        return Err(ERR);
    }
    let seg = |d: &Descriptor| Seg { addr: d.addr(), len: u64::from(d.len()) };
    let readable = descs[..first_writable].iter().map(seg).collect();
    let mut writable: Vec<Seg> = descs[first_writable..].iter().map(seg).collect();
    if let Some(tail) = writable.last_mut() {
        tail.len -= 1;
        if tail.len == 0 {
            writable.pop();
        }
    }
    Ok(Buffers { readable, writable })
}

struct Header {
    kind: u32,
    sector: u64,
}

fn execute<D: DiskBackend>(
    mem: &GuestMemoryMmap,
    bufs: &Buffers,
    disk: &D,
    writethrough: bool,
    cancel: &AtomicBool,
) -> Result<u64, Fail> {
    let header = read_header(mem, &bufs.readable)?;
    let out_data = skip(&bufs.readable, HEADER_LEN as u64)?;
    let in_data = &bufs.writable;
    match header.kind {
        VIRTIO_BLK_T_IN => {
            if !out_data.is_empty() {
                return Err(IOERR);
            }
            let len = total(in_data);
            let offset = disk_offset(disk, header.sector, len)?;
            transfer(mem, in_data, offset, disk, Direction::ToGuest, cancel)?;
            Ok(len)
        }
        VIRTIO_BLK_T_OUT => {
            if !in_data.is_empty() || disk.read_only() {
                return Err(IOERR);
            }
            let offset = disk_offset(disk, header.sector, total(&out_data))?;
            transfer(mem, &out_data, offset, disk, Direction::FromGuest, cancel)?;
            if writethrough {
                disk.flush().map_err(|_| IOERR)?;
            }
            Ok(0)
        }
        VIRTIO_BLK_T_FLUSH => {
            if !out_data.is_empty() || !in_data.is_empty() {
                return Err(IOERR);
            }
            // A read-only disk holds nothing of the guest's to flush.
            if !disk.read_only() {
                disk.flush().map_err(|_| IOERR)?;
            }
            Ok(0)
        }
        VIRTIO_BLK_T_GET_ID => {
            if !out_data.is_empty() || in_data.is_empty() {
                return Err(IOERR);
            }
            // Up to 20 bytes, fewer if the driver gave less room.
            let id = disk.serial();
            let mut written = 0usize;
            for s in in_data {
                if written == SERIAL_LEN {
                    break;
                }
                let n = (SERIAL_LEN - written).min(usize::try_from(s.len).unwrap_or(usize::MAX));
                mem.write_slice(&id[written..written + n], s.addr).map_err(|_| IOERR)?;
                written += n;
            }
            Ok(written as u64)
        }
        _ => Err(Fail::Status(VIRTIO_BLK_S_UNSUPP)),
    }
}

fn read_header(mem: &GuestMemoryMmap, readable: &[Seg]) -> Result<Header, Fail> {
    let mut h = [0u8; HEADER_LEN];
    let mut filled = 0;
    for s in readable {
        if filled == HEADER_LEN {
            break;
        }
        let n = (HEADER_LEN - filled).min(usize::try_from(s.len).unwrap_or(usize::MAX));
        mem.read_slice(&mut h[filled..filled + n], s.addr).map_err(|_| IOERR)?;
        filled += n;
    }
    if filled < HEADER_LEN {
        return Err(IOERR);
    }
    let kind = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
    let sector = u64::from_le_bytes([h[8], h[9], h[10], h[11], h[12], h[13], h[14], h[15]]);
    Ok(Header { kind, sector })
}

/// The buffers after their first `n` bytes.
fn skip(segs: &[Seg], mut n: u64) -> Result<Vec<Seg>, Fail> {
    let mut out = Vec::new();
    for s in segs {
        if n >= s.len {
            n -= s.len;
            continue;
        }
        out.push(Seg { addr: s.addr.checked_add(n).ok_or(IOERR)?, len: s.len - n });
        n = 0;
    }
    Ok(out)
}

fn total(segs: &[Seg]) -> u64 {
    segs.iter().fold(0u64, |t, s| t.saturating_add(s.len))
}

/// The byte offset of a transfer of `len` bytes at `sector`, if all of it
/// lies on the disk.
fn disk_offset<D: DiskBackend>(disk: &D, sector: u64, len: u64) -> Result<u64, Fail> {
    if len == 0 || len % SECTOR_SIZE != 0 {
        return Err(IOERR);
    }
    let offset = sector.checked_mul(SECTOR_SIZE).ok_or(IOERR)?;
    let end = offset.checked_add(len).ok_or(IOERR)?;
    let size = disk.capacity().checked_mul(SECTOR_SIZE).ok_or(IOERR)?;
    if end > size {
        return Err(IOERR);
    }
    Ok(offset)
}

#[derive(Clone, Copy)]
enum Direction {
    /// A read: disk to guest memory.
    ToGuest,
    /// A write: guest memory to disk.
    FromGuest,
}

fn transfer<D: DiskBackend>(
    mem: &GuestMemoryMmap,
    segs: &[Seg],
    mut offset: u64,
    disk: &D,
    dir: Direction,
    cancel: &AtomicBool,
) -> Result<(), Fail> {
    let perm = match dir {
        Direction::ToGuest => Permissions::Write,
        Direction::FromGuest => Permissions::Read,
    };
    for s in segs {
        let len = usize::try_from(s.len).map_err(|_| IOERR)?;
        // A buffer may span guest memory regions: one slice per region.
        for slice in GuestMemory::get_slices(mem, s.addr, len, perm).map_err(|_| IOERR)? {
            let slice = slice.map_err(|_| IOERR)?;
            let mut done = 0;
            while done < slice.len() {
                if cancel.load(Ordering::Acquire) {
                    return Err(Fail::Cancelled);
                }
                let n = CHUNK.min(slice.len() - done);
                let part = slice.subslice(done, n).map_err(|_| IOERR)?;
                match dir {
                    Direction::ToGuest => disk.read_exact_at(offset, &part),
                    Direction::FromGuest => disk.write_all_at(offset, &part),
                }
                .map_err(|_| IOERR)?;
                offset += n as u64;
                done += n;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
