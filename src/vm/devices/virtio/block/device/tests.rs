//! The device with its worker thread, on plain guest memory and a
//! temporary image file: activation, kicks, reset, reactivation, drop.

use std::time::{Duration, Instant};

use virtio_bindings::bindings::virtio_blk::{
    VIRTIO_BLK_S_OK, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use vm_memory::GuestMemoryMmap;

use super::*;
use crate::vm::devices::virtio::block::test_driver::{guest_memory, Driver, Req, STATUS_UNSET};
use crate::vm::devices::IrqTrigger;

const OK: u8 = VIRTIO_BLK_S_OK as u8;

/// An image of `sectors` sectors; byte `i` is `i % 251`.
fn image(sectors: u64) -> tempfile::NamedTempFile {
    let f = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(f.path(), (0..sectors * 512).map(|i| (i % 251) as u8).collect::<Vec<u8>>()).unwrap();
    f
}

fn interrupt() -> Arc<VirtioInterrupt> {
    Arc::new(VirtioInterrupt::new(IrqTrigger::new().unwrap()))
}

/// Waits (generously: the worker is another thread) until `f` holds.
fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn activate(dev: &mut VirtioBlock, mem: &GuestMemoryMmap, d: &Driver, irq: &Arc<VirtioInterrupt>) {
    dev.set_acked_features(dev.avail_features());
    dev.activate(mem.clone(), irq.clone(), vec![d.queue()]).unwrap();
}

fn kick(dev: &VirtioBlock) {
    dev.queue_events()[0].write(1).unwrap();
}

/// Kicks and waits for `r`'s status.
fn answered(dev: &VirtioBlock, d: &Driver, r: Req) -> u8 {
    kick(dev);
    eventually("the request is answered", || d.status(r) != STATUS_UNSET);
    d.status(r)
}

#[test]
fn features_and_config_space_describe_the_disk() {
    let f = image(100);
    let dev = VirtioBlock::new(f.path(), false, "").unwrap();
    assert_eq!(dev.device_type(), 2);
    assert_eq!(dev.queue_max_sizes(), &[256]);
    assert_eq!(dev.queue_events().len(), 1);
    let want = VIRTIO_F_VERSION_1 | 1 << 28 | 1 << 9 | 1 << 2 | 1 << 6;
    assert_eq!(dev.avail_features(), want, "VERSION_1, INDIRECT_DESC, FLUSH, SEG_MAX, BLK_SIZE");
    let mut cfg = [0u8; 24];
    dev.read_config(0, &mut cfg);
    assert_eq!(u64::from_le_bytes(cfg[0..8].try_into().unwrap()), 100, "capacity in sectors");
    assert_eq!(u32::from_le_bytes(cfg[8..12].try_into().unwrap()), 0, "size_max not offered");
    assert_eq!(u32::from_le_bytes(cfg[12..16].try_into().unwrap()), 254, "seg_max");
    assert_eq!(u32::from_le_bytes(cfg[20..24].try_into().unwrap()), 512, "blk_size");
    let mut b = [0xffu8; 4];
    dev.read_config(20, &mut b);
    assert_eq!(u32::from_le_bytes(b), 512, "a field read on its own");
    dev.read_config(u64::MAX, &mut b);
    assert_eq!(b, [0; 4], "past the end reads 0");
    drop(dev);
    // The dropped device's worker lets go of the image's lock soon after.
    let mut ro = None;
    eventually("the image is free", || {
        ro = VirtioBlock::new(f.path(), true, "").ok();
        ro.is_some()
    });
    assert_eq!(ro.map(|d| d.avail_features()), Some(want | 1 << 5), "RO");
}

#[test]
fn the_worker_serves_reads_writes_flushes_and_get_id() {
    let f = image(64);
    let mut dev = VirtioBlock::new(f.path(), false, "vol-1").unwrap();
    let mem = guest_memory();
    let mut d = Driver::new(&mem, QUEUE_SIZE);
    let irq = interrupt();
    // Queued before activation: served once the worker has the queue.
    let r1 = d.data(1024, true, 0);
    let early = d.request(VIRTIO_BLK_T_IN, 4, &[r1]);
    activate(&mut dev, &mem, &d, &irq);
    assert!(dev.is_active());
    eventually("the early request is answered", || d.status(early) != STATUS_UNSET);
    assert_eq!(d.status(early), OK);
    let want: Vec<u8> = (2048..3072).map(|i| (i % 251) as u8).collect();
    assert_eq!(d.read(r1), want);
    eventually("the guest is interrupted", || irq.irq_fd().read().is_ok());

    let w = d.data(512, false, 0xc3);
    let r = d.request(VIRTIO_BLK_T_OUT, 10, &[w]);
    assert_eq!(answered(&dev, &d, r), OK);
    let r = d.request(VIRTIO_BLK_T_FLUSH, 0, &[]);
    assert_eq!(answered(&dev, &d, r), OK);
    assert_eq!(&std::fs::read(f.path()).unwrap()[10 * 512..11 * 512], &[0xc3; 512][..]);

    let id = d.data(20, true, 0xff);
    let r = d.request(VIRTIO_BLK_T_GET_ID, 0, &[id]);
    assert_eq!(answered(&dev, &d, r), OK);
    assert_eq!(&d.read(id)[..6], b"vol-1\0");
    let used = d.used();
    assert_eq!(used.iter().map(|u| u.1).collect::<Vec<_>>(), vec![1025, 1, 1, 21]);
}

#[test]
fn a_reset_takes_the_queue_back_and_the_device_can_be_activated_again() {
    let f = image(64);
    let mut dev = VirtioBlock::new(f.path(), false, "").unwrap();
    let mem = guest_memory();
    let irq = interrupt();
    let mut d = Driver::new(&mem, QUEUE_SIZE);
    activate(&mut dev, &mem, &d, &irq);
    let b = d.data(512, true, 0);
    let r = d.request(VIRTIO_BLK_T_IN, 0, &[b]);
    assert_eq!(answered(&dev, &d, r), OK);

    dev.reset();
    assert!(!dev.is_active());
    // The worker let go of the queue before reset returned: a kick now
    // serves nothing. (Waiting for the worker to go idle is what reset
    // did; the sleep only gives a wrongly running worker time to act.)
    let b = d.data(512, true, 0);
    let after = d.request(VIRTIO_BLK_T_IN, 0, &[b]);
    let used_before = d.used_idx();
    kick(&dev);
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!((d.used_idx(), d.status(after)), (used_before, STATUS_UNSET));

    // The driver sets the device up again, with new rings.
    let mut d2 = Driver::at(&mem, 0x4_0000, QUEUE_SIZE);
    activate(&mut dev, &mem, &d2, &irq);
    let b = d2.data(512, true, 0);
    let r = d2.request(VIRTIO_BLK_T_IN, 1, &[b]);
    assert_eq!(answered(&dev, &d2, r), OK);
    assert_eq!(d2.read(b), (512..1024).map(|i| (i % 251) as u8).collect::<Vec<u8>>());
    dev.reset();
    dev.reset();
}

#[test]
fn activation_wants_exactly_one_queue_and_a_reset_before_it_is_harmless() {
    let f = image(8);
    let mut dev = VirtioBlock::new(f.path(), false, "").unwrap();
    dev.reset();
    let mem = guest_memory();
    let d = Driver::new(&mem, QUEUE_SIZE);
    let e = dev.activate(mem.clone(), interrupt(), vec![d.queue(), d.queue()]).unwrap_err();
    assert!(matches!(e, ActivateError::QueueCount { want: 1, got: 2 }), "{e}");
    assert!(dev.activate(mem.clone(), interrupt(), vec![]).is_err());
    assert!(!dev.is_active());
}

#[test]
fn dropping_the_device_ends_its_worker_which_releases_the_disk() {
    let f = image(8);
    let mem = guest_memory();
    let d = Driver::new(&mem, QUEUE_SIZE);
    for activated in [false, true] {
        let mut dev = VirtioBlock::new(f.path(), false, "").unwrap();
        if activated {
            activate(&mut dev, &mem, &d, &interrupt());
        }
        // The worker holds the disk (and its lock) as long as it runs.
        assert!(matches!(DiskFile::open(f.path(), false, ""), Err(DiskError::Locked { .. })));
        drop(dev);
        eventually("the worker ends and unlocks the disk", || DiskFile::open(f.path(), false, "").is_ok());
    }
}

#[test]
fn a_disk_that_cannot_be_opened_is_named_in_the_error() {
    let e = VirtioBlock::new(Path::new("/nonexistent/amphi-disk.img"), true, "").err().unwrap();
    assert!(e.to_string().contains("/nonexistent/amphi-disk.img"), "{e}");
}

/// Requests in flight and the disk behind them cannot be carried into a
/// restored VM: a disk refuses to be saved, by name.
#[test]
fn a_disk_cannot_be_saved() {
    let f = image(8);
    let mut dev = VirtioBlock::new(f.path(), false, "").unwrap();
    let err = dev.save().unwrap_err();
    assert!(matches!(err, crate::vm::devices::virtio::persist::PersistError::Unsupported("virtio-blk")));
    assert_eq!(err.to_string(), "virtio-blk cannot be saved or restored");
}
