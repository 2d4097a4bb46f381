//! What the guest puts in the balloon's queues (virtio 1.2, 5.5.6), from
//! a descriptor chain to the pages given back to the host:
//! - inflate: device-readable buffers holding le32 PFNs of 4 KiB pages the
//!   guest gave up; their memory is discarded;
//! - deflate: the same for pages the guest takes back; nothing to do (a
//!   discarded page comes back, zeroed, when the guest touches it);
//! - stats: device-readable `{ le16 tag; le64 val; }` entries (10 bytes,
//!   packed);
//! - reporting: device-writable buffers, each one a range of free guest
//!   memory (its address and length, not its contents, are the message);
//!   the whole pages inside are discarded.
//!
//! The chain is taken as the guest wrote it, whatever that is (DEVELOPERS.md
//! rule 9). A chain that is cut short (it loops or runs past its table),
//! has more than [`MAX_DESCRIPTORS`] descriptors, a descriptor outside
//! guest memory, or one of the wrong direction is ignored as a whole:
//! nothing is discarded and it is given back with used length 0. Zero-length
//! descriptors carry nothing and are skipped. A PFN array is read up to
//! [`MAX_PFNS`] entries (the rest is ignored), a trailing partial PFN or
//! stats entry is ignored, and so are PFNs outside guest memory and stats
//! tags amphi does not know; memory per chain is bounded by these limits.

use virtio_queue::DescriptorChain;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemory, GuestMemoryMmap, Permissions};

use super::reclaim;

/// Descriptors one chain may have: the Linux driver uses one for a PFN
/// array or the stats, and at most 32 (PAGE_REPORTING_CAPACITY) for a
/// report.
pub const MAX_DESCRIPTORS: usize = 128;
/// PFNs read from one inflate or deflate chain: 16 times what the Linux
/// driver sends at once (VIRTIO_BALLOON_ARRAY_PFNS_MAX, 256).
pub const MAX_PFNS: usize = 4096;
/// Size of one stats entry: le16 tag, le64 value, packed.
pub const STAT_LEN: usize = 10;
/// Stats tags amphi keeps (0 to 15: up to VIRTIO_BALLOON_S_DIRECT_RECLAIM).
pub const STAT_TAGS: usize = 16;
/// Stats entries read from one buffer: each tag once, with room to spare
/// for a driver that repeats or adds some.
pub const MAX_STATS: usize = 4 * STAT_TAGS;

/// One descriptor of a chain, known to lie in guest memory.
#[derive(Debug, Clone, Copy)]
struct Seg {
    addr: GuestAddress,
    len: u32,
}

/// The non-empty descriptors of a chain, all in the direction `write`
/// (device-writable or not) and inside guest memory; `None` if the chain
/// is to be ignored.
fn segments(mem: &GuestMemoryMmap, chain: DescriptorChain<&GuestMemoryMmap>, write: bool) -> Option<Vec<Seg>> {
    let mut segs = Vec::new();
    let mut count = 0usize;
    let mut last = None;
    // The iterator ends a chain that loops at the queue size (at an
    // indirect table's length inside one), so this loop is bounded.
    for d in chain {
        count += 1;
        if count > MAX_DESCRIPTORS {
            return None;
        }
        last = Some(d);
        if d.is_write_only() != write {
            return None;
        }
        if d.len() == 0 {
            continue;
        }
        let perm = if write { Permissions::Write } else { Permissions::Read };
        if !GuestMemory::check_range(mem, d.addr(), d.len() as usize, perm) {
            return None;
        }
        segs.push(Seg { addr: d.addr(), len: d.len() });
    }
    // A last descriptor that still points onwards means the iterator cut
    // the chain (a loop, a next index past the table, a table outside
    // guest memory): the guest's intent is unknown.
    if last?.has_next() {
        return None;
    }
    Some(segs)
}

/// Reads up to `max` bytes of the chain's buffers, in order.
fn read_bytes(mem: &GuestMemoryMmap, segs: &[Seg], max: usize) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    for s in segs {
        let room = max - out.len();
        if room == 0 {
            break;
        }
        let take = (s.len as usize).min(room);
        let at = out.len();
        out.resize(at + take, 0);
        // Checked with the chain; fails only if guest memory went away.
        mem.read_slice(&mut out[at..], s.addr).ok()?;
    }
    Some(out)
}

/// The PFNs of an inflate or deflate chain (at most [`MAX_PFNS`]), or
/// `None` if the chain is ignored.
pub fn pfns(mem: &GuestMemoryMmap, chain: DescriptorChain<&GuestMemoryMmap>) -> Option<Vec<u32>> {
    let segs = segments(mem, chain, false)?;
    let bytes = read_bytes(mem, &segs, MAX_PFNS * 4)?;
    Some(bytes.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
}

/// Serves an inflate chain: discards the pages it names. Returns the bytes
/// discarded.
pub fn inflate(mem: &GuestMemoryMmap, chain: DescriptorChain<&GuestMemoryMmap>) -> u64 {
    match pfns(mem, chain) {
        Some(mut pfns) => reclaim::discard_pfns(mem, &mut pfns),
        None => 0,
    }
}

/// Serves a free page report: discards the whole pages of each range.
/// Returns the bytes discarded.
pub fn report(mem: &GuestMemoryMmap, chain: DescriptorChain<&GuestMemoryMmap>) -> u64 {
    let Some(segs) = segments(mem, chain, true) else { return 0 };
    segs.iter().map(|s| reclaim::discard_range(mem, s.addr.raw_value(), u64::from(s.len))).sum()
}

/// The values of one stats buffer, by tag; `None` if the chain is ignored.
pub fn stats(mem: &GuestMemoryMmap, chain: DescriptorChain<&GuestMemoryMmap>) -> Option<[Option<u64>; STAT_TAGS]> {
    let segs = segments(mem, chain, false)?;
    let bytes = read_bytes(mem, &segs, MAX_STATS * STAT_LEN)?;
    let mut values = [None; STAT_TAGS];
    for e in bytes.chunks_exact(STAT_LEN) {
        let tag = usize::from(u16::from_le_bytes([e[0], e[1]]));
        let mut v = [0u8; 8];
        v.copy_from_slice(&e[2..]);
        if let Some(slot) = values.get_mut(tag) {
            *slot = Some(u64::from_le_bytes(v));
        }
    }
    Some(values)
}

#[cfg(test)]
mod tests;
