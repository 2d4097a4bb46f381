//! The device with its worker thread, on plain guest memory: features,
//! config space, the host's handle, activation with the queues the
//! accepted features call for, kicks, stats requests, reset,
//! reactivation, drop.

use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::*;
use crate::vm::devices::virtio::balloon::persist::BalloonExtra;
use crate::vm::devices::virtio::balloon::reclaim::PAGE_SIZE;
use crate::vm::devices::virtio::block::test_driver::{guest_memory, Buf, Driver};
use crate::vm::devices::virtio::INT_CONFIG;
use crate::vm::devices::IrqTrigger;

const VICTIM: u64 = 0x100_0000;
const ALL: u64 = VIRTIO_F_VERSION_1
    | 1 << VIRTIO_BALLOON_F_STATS_VQ
    | 1 << VIRTIO_BALLOON_F_DEFLATE_ON_OOM
    | 1 << VIRTIO_BALLOON_F_REPORTING;

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

fn drivers(mem: &GuestMemoryMmap, count: usize) -> Vec<Driver<'_>> {
    (0..count).map(|i| Driver::at(mem, 0x1_0000 * (i as u64 + 1), QUEUE_SIZE)).collect()
}

fn activate(dev: &mut VirtioBalloon, features: u64, mem: &GuestMemoryMmap, d: &[Driver], irq: &Arc<VirtioInterrupt>) {
    dev.set_acked_features(features);
    assert_eq!(dev.active_queue_count(), d.len());
    dev.activate(mem.clone(), irq.clone(), d.iter().map(Driver::queue).collect()).unwrap();
}

fn config_u32(dev: &VirtioBalloon, offset: u64) -> u32 {
    let mut b = [0u8; 4];
    dev.read_config(offset, &mut b);
    u32::from_le_bytes(b)
}

fn fill(mem: &GuestMemoryMmap, at: u64, len: u64) {
    mem.write_slice(&vec![0xa5; len as usize], GuestAddress(at)).unwrap();
}

fn zeroed(mem: &GuestMemoryMmap, at: u64, len: u64) -> bool {
    let mut v = vec![1u8; len as usize];
    mem.read_slice(&mut v, GuestAddress(at)).unwrap();
    v.iter().all(|&b| b == 0)
}

/// Publishes a one-buffer chain on `d` and kicks queue `q`.
fn send(dev: &VirtioBalloon, d: &mut Driver, q: usize, bytes: &[u8], write: bool) -> u16 {
    let addr = d.alloc(bytes.len());
    d.mem.write_slice(bytes, GuestAddress(addr)).unwrap();
    let head = d.chain(&[Buf { addr, len: bytes.len() as u32, write }]);
    d.publish(head);
    dev.queue_events()[q].write(1).unwrap();
    head
}

/// One stats entry: le16 tag, le64 value.
fn stat_entry(tag: u16, v: u64) -> Vec<u8> {
    tag.to_le_bytes().into_iter().chain(v.to_le_bytes()).collect()
}

fn pfns(list: &[u64]) -> Vec<u8> {
    list.iter().flat_map(|a| ((a / PAGE_SIZE) as u32).to_le_bytes()).collect()
}

#[test]
fn features_queues_and_config_space() {
    let dev = VirtioBalloon::new(&BalloonConfig::default()).unwrap();
    assert_eq!(dev.device_type(), 5);
    assert_eq!(dev.avail_features(), ALL);
    assert_eq!(dev.queue_max_sizes(), &[QUEUE_SIZE; 4]);
    assert_eq!(dev.queue_events().len(), 4);
    let plain =
        VirtioBalloon::new(&BalloonConfig { free_page_reporting: false, handle: BalloonHandle::new() }).unwrap();
    assert_eq!(plain.avail_features() & 1 << VIRTIO_BALLOON_F_REPORTING, 0);
    assert_eq!(plain.queue_max_sizes().len(), 3);
    let mut config = [0xffu8; CONFIG_LEN + 4];
    dev.read_config(0, &mut config);
    assert_eq!(config, [0u8; CONFIG_LEN + 4], "target 0, actual 0, the rest and beyond read 0");
}

#[test]
fn the_queue_count_follows_the_accepted_features() {
    let mut dev = VirtioBalloon::new(&BalloonConfig::default()).unwrap();
    let cases = [
        (VIRTIO_F_VERSION_1, 2),
        (VIRTIO_F_VERSION_1 | 1 << VIRTIO_BALLOON_F_STATS_VQ, 3),
        (VIRTIO_F_VERSION_1 | 1 << VIRTIO_BALLOON_F_REPORTING, 3),
        (ALL, 4),
        // Not offered, so not accepted: takes no index.
        (ALL | 1 << VIRTIO_BALLOON_F_FREE_PAGE_HINT, 4),
    ];
    for (features, count) in cases {
        dev.set_acked_features(features);
        assert_eq!(dev.active_queue_count(), count, "features {features:#x}");
    }
    let mem = guest_memory();
    let d = drivers(&mem, 3);
    dev.set_acked_features(ALL);
    let err = dev.activate(mem.clone(), interrupt(), d.iter().map(Driver::queue).collect()).unwrap_err();
    assert!(matches!(err, ActivateError::QueueCount { want: 4, got: 3 }));
    assert!(!dev.is_active());
}

#[test]
fn the_handle_sets_the_target_and_reads_actual() {
    let config = BalloonConfig::default();
    let handle = config.handle.clone();
    handle.set_target_mib(3);
    let mut dev = VirtioBalloon::new(&config).unwrap();
    assert_eq!(config_u32(&dev, 0), 3 * 256, "the target set before the device exists");
    handle.set_target_pages(1000);
    assert_eq!((config_u32(&dev, 0), handle.target_pages()), (1000, 1000));
    handle.set_target_mib(u64::MAX);
    assert_eq!(handle.target_pages(), u32::MAX, "saturates");
    // The driver writes actual, in any width; num_pages is not its to write.
    dev.write_config(4, &512u32.to_le_bytes());
    assert_eq!((handle.actual_pages(), handle.actual_mib()), (512, 2));
    dev.write_config(5, &[1]);
    assert_eq!(handle.actual_pages(), 256, "512 is 0x200: its second byte became 1");
    dev.write_config(0, &[0; 16]);
    assert_eq!((handle.target_pages(), handle.actual_pages()), (u32::MAX, 0));
    dev.write_config(u64::MAX, &[1; 8]);
    assert_eq!(config_u32(&dev, 4), 0);
    assert_eq!(dev.handle().target_pages(), u32::MAX);
}

#[test]
fn a_new_target_raises_a_config_change_interrupt_only_while_active() {
    let mem = guest_memory();
    let mut dev = VirtioBalloon::new(&BalloonConfig::default()).unwrap();
    let handle = dev.handle();
    let irq = interrupt();
    handle.set_target_pages(10);
    assert_eq!(irq.status(), 0);
    let d = drivers(&mem, 4);
    activate(&mut dev, ALL, &mem, &d, &irq);
    handle.set_target_pages(20);
    assert_eq!(irq.status() & INT_CONFIG, INT_CONFIG);
    assert_eq!(irq.irq_fd().read().unwrap(), 1);
    irq.ack(INT_CONFIG);
    dev.reset();
    handle.set_target_pages(30);
    assert_eq!(irq.status(), 0, "not after a reset");
    assert_eq!(config_u32(&dev, 0), 30, "the target outlives the reset");
}

#[test]
fn inflated_and_reported_pages_go_back_to_the_host() {
    let mem = guest_memory();
    let mut dev = VirtioBalloon::new(&BalloonConfig::default()).unwrap();
    let handle = dev.handle();
    let irq = interrupt();
    let mut d = drivers(&mem, 4);
    fill(&mem, VICTIM, 8 * PAGE_SIZE);
    // Queued before activation: served when it comes.
    send(&dev, &mut d[0], 0, &pfns(&[VICTIM, VICTIM + PAGE_SIZE]), false);
    activate(&mut dev, ALL, &mem, &d, &irq);
    eventually("the inflate chain is used", || d[0].used_idx() == 1);
    assert!(zeroed(&mem, VICTIM, 2 * PAGE_SIZE));
    assert_eq!(handle.inflated_bytes(), 2 * PAGE_SIZE);
    send(&dev, &mut d[3], 3, &[], true);
    let head = d[3].chain(&[Buf { addr: VICTIM + 4 * PAGE_SIZE, len: 4 * PAGE_SIZE as u32, write: true }]);
    d[3].publish(head);
    dev.queue_events()[3].write(1).unwrap();
    eventually("the report is used", || d[3].used_idx() == 2);
    assert!(zeroed(&mem, VICTIM + 4 * PAGE_SIZE, 4 * PAGE_SIZE));
    assert!(!zeroed(&mem, VICTIM + 2 * PAGE_SIZE, PAGE_SIZE));
    assert_eq!(handle.reported_bytes(), 4 * PAGE_SIZE);
    assert!(irq.irq_fd().read().is_ok(), "the guest was told");
}

#[test]
fn without_stats_the_reporting_queue_takes_index_2() {
    let mem = guest_memory();
    let mut dev = VirtioBalloon::new(&BalloonConfig::default()).unwrap();
    let irq = interrupt();
    let mut d = drivers(&mem, 3);
    activate(&mut dev, VIRTIO_F_VERSION_1 | 1 << VIRTIO_BALLOON_F_REPORTING, &mem, &d, &irq);
    fill(&mem, VICTIM, PAGE_SIZE);
    let head = d[2].chain(&[Buf { addr: VICTIM, len: PAGE_SIZE as u32, write: true }]);
    d[2].publish(head);
    dev.queue_events()[2].write(1).unwrap();
    eventually("the report is used", || d[2].used_idx() == 1);
    assert!(zeroed(&mem, VICTIM, PAGE_SIZE));
    // A kick of the queue the driver did not set up does nothing.
    dev.queue_events()[3].write(1).unwrap();
}

#[test]
fn stats_arrive_and_are_asked_for_again_through_the_handle() {
    let mem = guest_memory();
    let mut dev = VirtioBalloon::new(&BalloonConfig::default()).unwrap();
    let handle = dev.handle();
    let irq = interrupt();
    let mut d = drivers(&mem, 4);
    handle.request_stats(); // while inactive: dropped
    activate(&mut dev, ALL, &mem, &d, &irq);
    send(&dev, &mut d[2], 2, &stat_entry(4, 77), false);
    eventually("the stats arrive", || handle.stats().updates() == 1);
    assert_eq!(handle.stats().free_memory(), Some(77));
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(d[2].used_idx(), 0, "the buffer is held");
    handle.request_stats();
    eventually("the buffer is given back", || d[2].used_idx() == 1);
    send(&dev, &mut d[2], 2, &stat_entry(4, 78), false);
    eventually("new stats arrive", || handle.stats().updates() == 2);
    assert_eq!(handle.stats().free_memory(), Some(78));
}

#[test]
fn reset_reactivation_and_drop() {
    let mem = guest_memory();
    let config = BalloonConfig::default();
    let mut dev = VirtioBalloon::new(&config).unwrap();
    let irq = interrupt();
    let mut d = drivers(&mem, 4);
    activate(&mut dev, ALL, &mem, &d, &irq);
    dev.write_config(4, &100u32.to_le_bytes());
    dev.reset();
    assert!(!dev.is_active());
    assert_eq!(config.handle.actual_pages(), 0, "a new driver starts from an empty balloon");
    // After the reset the worker lets the queue be: a kick serves nothing.
    fill(&mem, VICTIM, PAGE_SIZE);
    send(&dev, &mut d[0], 0, &pfns(&[VICTIM]), false);
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(d[0].used_idx(), 0);
    assert!(!zeroed(&mem, VICTIM, PAGE_SIZE));
    // The guest sets the queues up afresh.
    let mut d = drivers(&mem, 4);
    activate(&mut dev, ALL, &mem, &d, &irq);
    send(&dev, &mut d[0], 0, &pfns(&[VICTIM]), false);
    eventually("served after reactivation", || d[0].used_idx() == 1);
    assert!(zeroed(&mem, VICTIM, PAGE_SIZE));
    // Activating again without a reset takes the queues back first.
    let mut d = drivers(&mem, 4);
    activate(&mut dev, ALL, &mem, &d, &irq);
    send(&dev, &mut d[1], 1, &pfns(&[VICTIM]), false);
    eventually("served after a second activation", || d[1].used_idx() == 1);
    drop(dev);
    // The handle outlives the device.
    config.handle.set_target_pages(5);
    config.handle.request_stats();
    assert_eq!(config.handle.target_pages(), 5);
}

/// A save stops the worker and takes back its queues and the stats buffer
/// it held; a fresh device restored from it goes on from the saved ring
/// positions, with `actual`, and still holds the buffer: it gives it back
/// when the host asks for stats.
#[test]
fn queues_the_held_stats_buffer_and_actual_survive_save_and_restore() {
    let mem = guest_memory();
    let mut dev = VirtioBalloon::new(&BalloonConfig::default()).unwrap();
    let handle = dev.handle();
    let mut d = drivers(&mem, 4);
    activate(&mut dev, ALL, &mem, &d, &interrupt());
    fill(&mem, VICTIM, 2 * PAGE_SIZE);
    send(&dev, &mut d[0], 0, &pfns(&[VICTIM]), false);
    eventually("the inflate chain is used", || d[0].used_idx() == 1);
    let stats_head = send(&dev, &mut d[2], 2, &stat_entry(4, 77), false);
    eventually("the stats arrive", || handle.stats().updates() == 1);
    dev.write_config(4, &256u32.to_le_bytes());

    let snap = dev.save().unwrap();
    assert!(!dev.is_active(), "a saved device stays stopped");
    let positions: Vec<_> = snap.queues.iter().map(|q| (q.next_avail, q.next_used)).collect();
    assert_eq!(positions, [(1, 1), (0, 0), (1, 0), (0, 0)]);
    let extra: BalloonExtra = serde_json::from_value(snap.extra.clone()).unwrap();
    assert_eq!(extra, BalloonExtra { actual: 256, stats_head: Some(stats_head) });
    // Nothing is served after the save.
    send(&dev, &mut d[0], 0, &pfns(&[VICTIM + PAGE_SIZE]), false);
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(d[0].used_idx(), 1);
    assert!(!zeroed(&mem, VICTIM + PAGE_SIZE, PAGE_SIZE));
    drop(dev);

    let snap: DeviceSnapshot = serde_json::from_str(&serde_json::to_string(&snap).unwrap()).unwrap();
    let config = BalloonConfig::default();
    let mut back = VirtioBalloon::new(&config).unwrap();
    back.restore(mem.clone(), interrupt(), &snap).unwrap();
    assert!(back.is_active());
    assert_eq!(config.handle.actual_pages(), 256);
    assert_eq!(config_u32(&back, 4), 256);
    eventually("the chain queued meanwhile is served", || d[0].used_idx() == 2);
    assert!(zeroed(&mem, VICTIM + PAGE_SIZE, PAGE_SIZE));
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(d[2].used_idx(), 0, "the stats buffer is still held");
    config.handle.request_stats();
    eventually("the held buffer is given back", || d[2].used_idx() == 1);
    assert_eq!(d[2].used(), [(u32::from(stats_head), 0)]);
}

#[test]
fn a_held_stats_buffer_that_cannot_be_is_refused() {
    let mem = guest_memory();
    let mut dev = VirtioBalloon::new(&BalloonConfig::default()).unwrap();
    let d = drivers(&mem, 4);
    activate(&mut dev, ALL, &mem, &d, &interrupt());
    let snap = dev.save().unwrap();
    let with = |features: u64, queues: usize, stats_head: u16| {
        let mut s = snap.clone();
        s.acked_features = features;
        s.queues.truncate(queues);
        s.extra = serde_json::to_value(BalloonExtra { actual: 0, stats_head: Some(stats_head) }).unwrap();
        s
    };
    let mut back = VirtioBalloon::new(&BalloonConfig::default()).unwrap();
    let bad = [
        with(ALL, 4, QUEUE_SIZE),
        with(VIRTIO_F_VERSION_1 | 1 << VIRTIO_BALLOON_F_REPORTING, 3, 0),
        DeviceSnapshot { activated: false, queues: Vec::new(), ..with(ALL, 4, 0) },
    ];
    for s in bad {
        assert!(matches!(back.restore(mem.clone(), interrupt(), &s), Err(PersistError::BadExtra { .. })), "{s:?}");
        assert!(!back.is_active());
    }
    let mut s = snap.clone();
    s.extra = serde_json::json!({"actual": "lots"});
    assert!(matches!(back.restore(mem.clone(), interrupt(), &s), Err(PersistError::Extra { .. })));
    back.restore(mem.clone(), interrupt(), &with(ALL, 4, QUEUE_SIZE - 1)).unwrap();
    assert!(back.is_active());
}
