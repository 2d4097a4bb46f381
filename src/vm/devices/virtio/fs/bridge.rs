//! The two rust-vmm versions the fs device sits between.
//!
//! The VMM uses vm-memory 0.18 and virtio-queue 0.18; fuse-backend-rs 0.14
//! (the newest release) takes descriptor chains of virtio-queue 0.17 over
//! vm-memory =0.17.1. Rather than move the whole workspace back, the fs
//! device gives fuse-backend-rs its own view of the same guest memory
//! (0.17 regions over the very same host mappings, no copy) and rebuilds
//! each queue from the state the driver programmed through the transport.
//! When fuse-backend-rs moves on, this module goes away (docs/vm.md).

use fuse_vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion, MemoryRegionAddress};

use crate::vm::devices::virtio::persist::QueueSnapshot;

/// Guest memory as fuse-backend-rs sees it.
pub type FuseMemory = fuse_vm_memory::GuestMemoryMmap;
/// A queue as fuse-backend-rs's descriptor chains come from.
pub type FuseQueue = fuse_virtio_queue::Queue;

#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    #[error("guest memory region at {0:#x} cannot be shared with the fs device")]
    Region(u64),
    #[error("queue {0} was configured with a size or address the fs device cannot use")]
    Queue(usize),
}

/// The guest memory with the VMM's own mapping: what keeps [`view`]'s
/// regions valid.
pub struct SharedMemory {
    /// Holds the mappings; the view below only borrows them.
    _owner: vm_memory::GuestMemoryMmap,
    view: FuseMemory,
}

impl SharedMemory {
    pub fn view(&self) -> &FuseMemory {
        &self.view
    }
}

/// A vm-memory 0.17 view of `mem`: the same host mappings at the same guest
/// addresses. `mem` (a clone, sharing its regions) is kept alongside, so
/// the mappings outlive the view whatever happens to the caller's copy.
pub fn view(mem: &vm_memory::GuestMemoryMmap) -> Result<SharedMemory, BridgeError> {
    let mut regions = Vec::new();
    for r in mem.iter() {
        let start = r.start_addr().0;
        let host = r.get_host_address(MemoryRegionAddress(0)).map_err(|_| BridgeError::Region(start))?;
        let len = usize::try_from(r.len()).map_err(|_| BridgeError::Region(start))?;
        // SAFETY: [host, host + len) is exactly one live mapping of `mem`
        // (a region's host address and length). The clone of `mem` stored
        // next to the view in `SharedMemory` keeps that mapping alive as
        // long as the view exists, and a raw-pointer region never unmaps
        // what it was given.
        let builder = unsafe { MmapRegionBuilder::new(len).with_raw_mmap_pointer(host) };
        let region = builder
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
            .with_mmap_flags(libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE)
            .build()
            .map_err(|_| BridgeError::Region(start))?;
        let region = fuse_vm_memory::GuestRegionMmap::new(region, fuse_vm_memory::GuestAddress(start))
            .ok_or(BridgeError::Region(start))?;
        regions.push(region);
    }
    let view = FuseMemory::from_regions(regions).map_err(|_| BridgeError::Region(0))?;
    Ok(SharedMemory { _owner: mem.clone(), view })
}

/// A virtio-queue 0.17 queue in the state the driver left `q` in, rebuilt
/// (and checked) from the state both versions share.
pub fn queue(index: usize, q: &virtio_queue::Queue) -> Result<FuseQueue, BridgeError> {
    FuseQueue::try_from(&QueueSnapshot::from(q)).map_err(|_| BridgeError::Queue(index))
}

#[cfg(test)]
mod tests {
    use super::*;
    use fuse_virtio_queue::QueueT as _;
    use fuse_vm_memory::Bytes as _;
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Bytes, GuestAddress};

    #[test]
    fn the_view_shares_the_vmms_guest_memory() {
        let mem = vm_memory::GuestMemoryMmap::<()>::from_ranges(&[
            (GuestAddress(0), 0x10_0000),
            (GuestAddress(0x100_0000), 0x10_0000),
        ])
        .unwrap();
        let shared = view(&mem).unwrap();
        mem.write_obj(0x1234_5678u32, GuestAddress(0x100_0010)).unwrap();
        assert_eq!(shared.view().read_obj::<u32>(fuse_vm_memory::GuestAddress(0x100_0010)).unwrap(), 0x1234_5678);
        shared.view().write_obj(0xabcdu16, fuse_vm_memory::GuestAddress(0x20)).unwrap();
        assert_eq!(mem.read_obj::<u16>(GuestAddress(0x20)).unwrap(), 0xabcd);
        // The hole between the regions stays a hole.
        assert!(shared.view().read_obj::<u8>(fuse_vm_memory::GuestAddress(0x20_0000)).is_err());
        // The view keeps the memory mapped after the caller's copy is gone.
        drop(mem);
        assert_eq!(shared.view().read_obj::<u16>(fuse_vm_memory::GuestAddress(0x20)).unwrap(), 0xabcd);
    }

    #[test]
    fn a_queue_is_rebuilt_with_its_addresses_and_positions() {
        let mem = vm_memory::GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let mock = MockSplitQueue::create(&mem, GuestAddress(0x1_0000), 16);
        let mut q: virtio_queue::Queue = mock.create_queue().unwrap();
        virtio_queue::QueueT::set_next_avail(&mut q, 3);
        virtio_queue::QueueT::set_next_used(&mut q, 2);
        let f = queue(0, &q).unwrap();
        assert_eq!(f.size(), 16);
        assert_eq!(f.desc_table(), mock.desc_table_addr().0);
        assert_eq!(f.avail_ring(), mock.avail_addr().0);
        assert_eq!(f.used_ring(), mock.used_addr().0);
        assert_eq!((f.next_avail(), f.next_used()), (3, 2));
        assert!(f.ready());
        let shared = view(&mem).unwrap();
        assert!(f.is_valid(shared.view()));
    }
}
