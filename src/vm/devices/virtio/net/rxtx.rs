//! The data path: frames from the TX queue to the TAP, and from the TAP
//! into the RX queue's buffers, each with its 12-byte virtio-net header
//! (`virtio_net_hdr_v1`) passed through, checked against the offloads the
//! driver accepted.
//!
//! Frames move straight between guest memory and the TAP (writev and
//! readv on guest memory, no host copy); only the header goes through a
//! 12-byte buffer of the device's, so what is checked is what is sent or
//! delivered, whatever the guest writes meanwhile.
//!
//! Chains are taken as the guest wrote them (DEVELOPERS.md rule 9).
//! Every TX chain is given back (used length 0) whatever it holds; its
//! frame is sent only if the chain is device-readable throughout, lies in
//! guest memory, ends where the driver ended it (not cut by a loop or a
//! runaway table), has at most [`MAX_SEGS`] buffers, a whole header, at
//! least an Ethernet header of frame, at most [`MAX_PACKET`] bytes in all,
//! and asks for no offload the driver did not accept. An RX chain must be
//! device-writable throughout, in guest memory, not cut short, and have
//! room for a header and an Ethernet header; one that is not is given
//! back empty. The TAP is read only into an RX chain in hand, so a guest
//! that posts no buffers leaves frames in the host's queue in front of
//! the TAP (which drops past its length), never in the VMM. A frame too
//! big for the chain (VIRTIO_NET_F_MRG_RXBUF is not offered, so a frame
//! never spans chains) or with an offload the driver did not accept is
//! dropped, and the chain stays in the ring for the next frame. Each call
//! serves at most [`BUDGET`] chains or frames, so neither a guest nor the
//! network can keep the worker from its other events.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use virtio_bindings::bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6,
    VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_HDR_F_DATA_VALID, VIRTIO_NET_HDR_F_NEEDS_CSUM,
    VIRTIO_NET_HDR_GSO_NONE, VIRTIO_NET_HDR_GSO_TCPV4, VIRTIO_NET_HDR_GSO_TCPV6,
};
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemory, GuestMemoryMmap, Permissions};

use super::tap::{GuestSlice, TapBackend, MAX_PACKET, VNET_HDR_LEN};
use crate::vm::devices::virtio::VirtioInterrupt;

/// Chains (TX) or frames and chains (RX) served per event before the
/// worker looks at its other events again.
pub const BUDGET: usize = 64;
/// Buffers one chain may have. Linux uses 2 for small TX frames, up to
/// MAX_SKB_FRAGS + 2 (19) for a 64 KiB GSO frame in either direction.
pub const MAX_SEGS: usize = 64;
/// An Ethernet header: the least a frame can be.
const ETH_HLEN: usize = 14;

/// What the device counts; read by tests and kept for a later stats query.
#[derive(Debug, Default)]
pub struct NetStats {
    pub tx_frames: AtomicU64,
    pub tx_bytes: AtomicU64,
    /// TX chains whose frame was not sent (malformed, oversized, an offload
    /// not negotiated, or refused by the TAP).
    pub tx_dropped: AtomicU64,
    pub rx_frames: AtomicU64,
    pub rx_bytes: AtomicU64,
    /// Frames from the TAP that reached no guest buffer (too big for the
    /// chain in hand, too short, an offload not negotiated).
    pub rx_dropped: AtomicU64,
    /// RX chains given back unused because they were malformed or too
    /// small for any frame.
    pub rx_bad_chains: AtomicU64,
}

fn bump(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

/// What the worker owns while the device is active.
pub(crate) struct Active {
    pub mem: GuestMemoryMmap,
    pub rx: Queue,
    pub tx: Queue,
    pub interrupt: Arc<VirtioInterrupt>,
    /// The features the driver accepted.
    pub features: u64,
}

impl Active {
    fn acked(&self, bit: u32) -> bool {
        self.features & (1 << bit) != 0
    }

    /// The TUN_F_* offloads the host may use towards the guest: what the
    /// driver accepted (segmentation only with checksum offload, which
    /// the TAP requires).
    pub fn tap_offload(&self) -> u32 {
        if !self.acked(VIRTIO_NET_F_GUEST_CSUM) {
            return 0;
        }
        let mut f = libc::TUN_F_CSUM;
        if self.acked(VIRTIO_NET_F_GUEST_TSO4) {
            f |= libc::TUN_F_TSO4;
        }
        if self.acked(VIRTIO_NET_F_GUEST_TSO6) {
            f |= libc::TUN_F_TSO6;
        }
        f
    }
}

/// How the RX side left things.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RxState {
    /// The TAP has nothing more: watch it.
    Drained,
    /// The budget ran out with frames perhaps waiting: the TAP stays
    /// readable, so watching it brings the worker back.
    More,
    /// The guest has no buffer posted: stop watching the TAP until it
    /// kicks the RX queue (frames wait in the host's queue meanwhile).
    NeedBuffers,
    /// The TAP failed for good (its interface was deleted): stop watching
    /// it, so a TAP that stays in error cannot spin the worker; an RX kick
    /// tries again.
    Failed,
}

/// One buffer of a chain, known to lie in guest memory.
#[derive(Debug, Clone, Copy)]
struct Seg {
    addr: GuestAddress,
    len: usize,
}

/// The worker's side of the data path: the TAP and a list of buffers
/// reused from chain to chain.
pub(crate) struct Io<T> {
    pub tap: T,
    segs: Vec<Seg>,
    pub stats: Arc<NetStats>,
}

/// Walks a chain into `segs`: `None` if it is malformed (a buffer of the
/// wrong direction or outside guest memory, cut short, or longer than
/// [`MAX_SEGS`]). Zero-length buffers are skipped.
fn walk(
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
    writable: bool,
    segs: &mut Vec<Seg>,
) -> Option<()> {
    segs.clear();
    let mut last = None;
    let perm = if writable { Permissions::Write } else { Permissions::Read };
    // The iterator ends a looping chain at the queue size (at an indirect
    // table's length, at most 65535, inside one), so this is bounded even
    // before MAX_SEGS.
    for d in chain {
        last = Some(d);
        if d.is_write_only() != writable {
            return None;
        }
        if d.len() == 0 {
            continue;
        }
        if segs.len() == MAX_SEGS {
            return None;
        }
        let len = d.len() as usize;
        if !GuestMemory::check_range(mem, d.addr(), len, perm) {
            return None;
        }
        segs.push(Seg { addr: d.addr(), len });
    }
    // A last descriptor that still points on means the iterator cut the
    // chain: its real end is unknown.
    match last {
        Some(d) if !d.has_next() => Some(()),
        _ => None,
    }
}

/// Whether a header's offload requests are within what was negotiated:
/// `csum` for NEEDS_CSUM, `tso4`/`tso6` for the GSO types. ECN and UDP
/// segmentation are never negotiated.
fn offloads_allowed(hdr: &[u8], csum: bool, tso4: bool, tso6: bool) -> bool {
    let (flags, gso) = (u32::from(hdr[0]), u32::from(hdr[1]));
    if flags & VIRTIO_NET_HDR_F_NEEDS_CSUM != 0 && !csum {
        return false;
    }
    match gso {
        VIRTIO_NET_HDR_GSO_NONE => true,
        VIRTIO_NET_HDR_GSO_TCPV4 => tso4 && csum,
        VIRTIO_NET_HDR_GSO_TCPV6 => tso6 && csum,
        _ => false,
    }
}

/// Guest memory of `segs` after their first `skip` bytes, as slices (a
/// buffer may span guest memory regions), and the first `skip` bytes as
/// (address, length) pieces; `None` if guest memory went away.
fn slices<'m>(
    mem: &'m GuestMemoryMmap,
    segs: &[Seg],
    mut skip: usize,
    perm: Permissions,
    head: &mut Vec<(GuestAddress, usize)>,
) -> Option<Vec<GuestSlice<'m>>> {
    head.clear();
    let mut out = Vec::with_capacity(segs.len());
    for s in segs {
        let (mut addr, mut len) = (s.addr, s.len);
        if skip > 0 {
            let n = skip.min(len);
            head.push((addr, n));
            skip -= n;
            len -= n;
            if len == 0 {
                continue;
            }
            addr = addr.checked_add(n as u64)?;
        }
        for slice in GuestMemory::get_slices(mem, addr, len, perm).ok()? {
            out.push(slice.ok()?);
        }
    }
    Some(out)
}

impl<T: TapBackend> Io<T> {
    pub fn new(tap: T, stats: Arc<NetStats>) -> Self {
        Io { tap, segs: Vec::with_capacity(MAX_SEGS), stats }
    }

    /// Sends up to [`BUDGET`] TX chains; returns whether more may be waiting.
    pub fn process_tx(&mut self, a: &mut Active) -> bool {
        let mut served = 0;
        while served < BUDGET {
            let Some(chain) = a.tx.pop_descriptor_chain(&a.mem) else { break };
            let head = chain.head_index();
            match self.send(a, chain) {
                Some(len) => {
                    bump(&self.stats.tx_frames, 1);
                    bump(&self.stats.tx_bytes, (len - VNET_HDR_LEN) as u64);
                }
                None => bump(&self.stats.tx_dropped, 1),
            }
            // The head came from this queue, so this fails only if the used
            // ring left guest memory; the chain is lost then.
            let _ = a.tx.add_used(&a.mem, head, 0);
            served += 1;
        }
        if served > 0 {
            // One interrupt per batch; a lost edge only delays the guest.
            let _ = a.interrupt.signal_used_queue();
        }
        served == BUDGET
    }

    /// Sends a TX chain's frame: its length with the header, or `None` if
    /// it was not sent.
    fn send(&mut self, a: &Active, chain: DescriptorChain<&GuestMemoryMmap>) -> Option<usize> {
        walk(&a.mem, chain, false, &mut self.segs)?;
        let len = self.segs.iter().try_fold(0usize, |t, s| t.checked_add(s.len))?;
        if !(VNET_HDR_LEN + ETH_HLEN..=MAX_PACKET).contains(&len) {
            return None;
        }
        let mut pieces = Vec::new();
        let data = slices(&a.mem, &self.segs, VNET_HDR_LEN, Permissions::Read, &mut pieces)?;
        let mut hdr = [0u8; VNET_HDR_LEN];
        let mut at = 0;
        for (addr, n) in pieces {
            a.mem.read_slice(&mut hdr[at..at + n], addr).ok()?;
            at += n;
        }
        let csum = a.acked(VIRTIO_NET_F_CSUM);
        if !offloads_allowed(&hdr, csum, a.acked(VIRTIO_NET_F_HOST_TSO4), a.acked(VIRTIO_NET_F_HOST_TSO6)) {
            return None;
        }
        // Only NEEDS_CSUM means something from the driver; num_buffers is
        // the device's.
        hdr[0] &= VIRTIO_NET_HDR_F_NEEDS_CSUM as u8;
        hdr[10..12].fill(0);
        // A full or downed TAP drops the frame, as a NIC with a full ring
        // would: TCP retransmits, and the worker never waits on the host.
        self.tap.write_frame(&hdr, &data).ok()?;
        Some(len)
    }

    /// Moves frames from the TAP into RX chains, at most [`BUDGET`] steps.
    pub fn process_rx(&mut self, a: &mut Active) -> RxState {
        let mut used = false;
        let mut state = RxState::More;
        let mut pieces = Vec::new();
        for _ in 0..BUDGET {
            let Some(chain) = a.rx.pop_descriptor_chain(&a.mem) else {
                state = RxState::NeedBuffers;
                break;
            };
            let head = chain.head_index();
            let room = walk(&a.mem, chain, true, &mut self.segs)
                .and_then(|()| self.segs.iter().try_fold(0usize, |t, s| t.checked_add(s.len)));
            let data = match room {
                Some(room) if room >= VNET_HDR_LEN + ETH_HLEN => {
                    slices(&a.mem, &self.segs, VNET_HDR_LEN, Permissions::Write, &mut pieces)
                }
                _ => None,
            };
            let Some(data) = data else {
                // Given back empty: it can never hold a frame.
                bump(&self.stats.rx_bad_chains, 1);
                let _ = a.rx.add_used(&a.mem, head, 0);
                used = true;
                continue;
            };
            let mut hdr = [0u8; VNET_HDR_LEN];
            let len = match self.tap.read_frame(&mut hdr, &data) {
                Ok(len) => len,
                Err(e) => {
                    // The chain goes back to the ring, for the next frame.
                    a.rx.go_to_previous_position();
                    match (e.kind(), e.raw_os_error()) {
                        (io::ErrorKind::WouldBlock, _) => state = RxState::Drained,
                        (io::ErrorKind::Interrupted, _) => continue,
                        // The TAP's interface is gone (EBADFD) or down for
                        // good (EIO): reading again would fail again.
                        (_, Some(libc::EBADFD | libc::EIO)) => state = RxState::Failed,
                        // Anything else concerns one frame, which the TAP
                        // has consumed: EFAULT for one too big for the chain.
                        _ => {
                            bump(&self.stats.rx_dropped, 1);
                            continue;
                        }
                    }
                    break;
                }
            };
            if !fix_rx_header(a, &mut hdr, len) {
                a.rx.go_to_previous_position();
                bump(&self.stats.rx_dropped, 1);
                continue;
            }
            let mut at = 0;
            let mut ok = true;
            for (addr, n) in &pieces {
                ok &= a.mem.write_slice(&hdr[at..at + n], *addr).is_ok();
                at += n;
            }
            if ok {
                bump(&self.stats.rx_frames, 1);
                bump(&self.stats.rx_bytes, (len - VNET_HDR_LEN) as u64);
                let _ = a.rx.add_used(&a.mem, head, u32::try_from(len).unwrap_or(0));
            } else {
                // Checked with the chain, so only if guest memory went away.
                bump(&self.stats.rx_dropped, 1);
                let _ = a.rx.add_used(&a.mem, head, 0);
            }
            used = true;
        }
        if used {
            let _ = a.interrupt.signal_used_queue();
        }
        state
    }
}

/// Checks a frame from the TAP (`len` bytes with its header) and completes
/// its header for the guest; false if it is to be dropped.
fn fix_rx_header(a: &Active, hdr: &mut [u8; VNET_HDR_LEN], len: usize) -> bool {
    if len < VNET_HDR_LEN + ETH_HLEN {
        return false;
    }
    let csum = a.acked(VIRTIO_NET_F_GUEST_CSUM);
    // The TAP only uses the offloads it was given (`tap_offload`); this
    // also holds when setting them failed or a new driver accepted less.
    if !offloads_allowed(hdr, csum, a.acked(VIRTIO_NET_F_GUEST_TSO4), a.acked(VIRTIO_NET_F_GUEST_TSO6)) {
        return false;
    }
    if !csum {
        // DATA_VALID is for a driver that accepted GUEST_CSUM.
        hdr[0] &= !(VIRTIO_NET_HDR_F_DATA_VALID as u8);
    }
    // Without VIRTIO_NET_F_MRG_RXBUF every frame is in one buffer (virtio
    // 1.2, 5.1.6.4: the device sets num_buffers to 1). The TAP leaves
    // these two bytes as they were.
    hdr[10..12].copy_from_slice(&1u16.to_le_bytes());
    true
}

#[cfg(test)]
mod tests;
