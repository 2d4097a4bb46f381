//! Register file of one virtio-mmio device window, and its saved state
//! ([`MmioTransport::save`], [`MmioTransport::restore`]).

use std::sync::{Arc, Mutex};

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;

use crate::vm::devices::virtio::persist::{self, PersistError, QueueSnapshot, TransportSnapshot};
use crate::vm::devices::virtio::{status, VirtioDevice, VirtioInterrupt};
use crate::vm::devices::BusDevice;

const MAGIC: u32 = 0x7472_6976; // "virt"
const VERSION: u32 = 2;
const VENDOR_ID: u32 = 0x414d_5048; // "AMPH"

/// Offset of QueueNotify: the VMM registers an ioeventfd here per queue.
pub const NOTIFY_REG_OFFSET: u64 = 0x50;
const CONFIG_SPACE_OFFSET: u64 = 0x100;

pub struct MmioTransport {
    device: Arc<Mutex<dyn VirtioDevice>>,
    mem: GuestMemoryMmap,
    interrupt: Arc<VirtioInterrupt>,
    queues: Vec<Queue>,
    queue_select: u32,
    features_select: u32,
    acked_features_select: u32,
    acked_features: u64,
    status: u32,
    config_generation: u32,
    activated: bool,
}

impl MmioTransport {
    pub fn new(device: Arc<Mutex<dyn VirtioDevice>>, mem: GuestMemoryMmap, interrupt: Arc<VirtioInterrupt>) -> Self {
        let queues = Self::fresh_queues(&device);
        MmioTransport {
            device,
            mem,
            interrupt,
            queues,
            queue_select: 0,
            features_select: 0,
            acked_features_select: 0,
            acked_features: 0,
            status: 0,
            config_generation: 0,
            activated: false,
        }
    }

    fn fresh_queues(device: &Arc<Mutex<dyn VirtioDevice>>) -> Vec<Queue> {
        let d = device.lock().unwrap_or_else(|e| e.into_inner());
        // Sizes come from the device's own constants, all powers of two.
        d.queue_max_sizes().iter().map(|&s| Queue::new(s).unwrap_or_default()).collect()
    }

    fn dev(&self) -> std::sync::MutexGuard<'_, dyn VirtioDevice + 'static> {
        self.device.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_select as usize)
    }

    pub fn status(&self) -> u32 {
        self.status
    }

    fn reset(&mut self) {
        if self.activated {
            self.dev().reset();
        }
        self.queues = Self::fresh_queues(&self.device);
        self.queue_select = 0;
        self.features_select = 0;
        self.acked_features_select = 0;
        self.acked_features = 0;
        self.status = 0;
        self.activated = false;
        self.interrupt.ack(u32::MAX);
    }

    fn set_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        // The driver only ever adds bits (virtio 1.2, 3.1.1).
        if value & self.status != self.status {
            return;
        }
        let added = value & !self.status;
        self.status = value;
        if added & status::FEATURES_OK != 0 {
            let f = self.acked_features;
            self.dev().set_acked_features(f);
        }
        if added & status::DRIVER_OK != 0 && !self.activated {
            // Queues past those the accepted features call for are left
            // alone: the driver need not (and Linux does not) set them up.
            let count = self.dev().active_queue_count();
            let mut queues: Vec<Queue> = std::mem::take(&mut self.queues);
            queues.truncate(count);
            let ok = queues.iter().all(|q| q.is_valid(&self.mem));
            self.queues = Self::fresh_queues(&self.device);
            let result = if ok {
                self.dev().activate(self.mem.clone(), self.interrupt.clone(), queues)
            } else {
                Err(crate::vm::devices::virtio::ActivateError::QueueCount { want: 0, got: 0 })
            };
            match result {
                Ok(()) => self.activated = true,
                Err(_) => self.status |= status::DEVICE_NEEDS_RESET,
            }
        }
    }

    /// The registers and the device's state. Stops the device (see
    /// [`VirtioDevice::save`]): call it once, with the vCPUs paused; the
    /// interrupt status is read after the device stopped raising any.
    pub fn save(&mut self) -> Result<TransportSnapshot, PersistError> {
        let device = self.dev().save()?;
        Ok(TransportSnapshot {
            queue_select: self.queue_select,
            features_select: self.features_select,
            acked_features_select: self.acked_features_select,
            acked_features: self.acked_features,
            status: self.status,
            config_generation: self.config_generation,
            interrupt_status: self.interrupt.status(),
            queues: self.queues.iter().map(QueueSnapshot::from).collect(),
            device,
        })
    }

    /// Puts this transport, made like the saved one (same device model, in
    /// the same slot), back in the saved state, and its device with it
    /// ([`VirtioDevice::restore`]). Everything is checked before anything
    /// changes but the device's own restore; the saved interrupt status is
    /// back, its interrupt is raised by [`MmioTransport::after_restore`].
    pub fn restore(&mut self, s: &TransportSnapshot) -> Result<(), PersistError> {
        let (max_sizes, offered) = {
            let d = self.dev();
            persist::check_device(&*d, &s.device)?;
            (d.queue_max_sizes().to_vec(), d.avail_features())
        };
        if s.acked_features & !offered != 0 {
            return Err(PersistError::FeaturesNotOffered { acked: s.acked_features, offered });
        }
        if s.queues.len() != max_sizes.len() {
            return Err(PersistError::QueueCount { saved: s.queues.len(), device: max_sizes.len() });
        }
        let queues = persist::queues_from(&s.queues, &max_sizes, None)?;
        if s.device.activated && s.status & status::DRIVER_OK == 0 {
            return Err(PersistError::Inconsistent("the device is active but the driver never set DRIVER_OK"));
        }
        self.reset();
        self.dev().restore(self.mem.clone(), self.interrupt.clone(), &s.device)?;
        self.queues = queues;
        self.queue_select = s.queue_select;
        self.features_select = s.features_select;
        self.acked_features_select = s.acked_features_select;
        self.acked_features = s.acked_features;
        self.status = s.status;
        self.config_generation = s.config_generation;
        self.activated = s.device.activated;
        self.interrupt.restore_status(s.interrupt_status);
        Ok(())
    }

    /// The kick phase of a restore, once the interrupt controllers are
    /// back: the device's own ([`VirtioDevice::after_restore`]), then the
    /// interrupt again if the status word holds anything, saved or raised
    /// by the device since (an edge before the controllers' restore is
    /// lost; a spurious one is harmless, the driver reads the status).
    pub fn after_restore(&mut self) {
        self.dev().after_restore();
        if self.interrupt.status() != 0 {
            // The edge raised before the interrupt controllers were back is
            // lost, and a queue with no further traffic would never raise
            // another: raise it again.
            let _ = self.interrupt.resignal();
        }
    }

    fn read_reg(&mut self, offset: u64) -> u32 {
        match offset {
            0x00 => MAGIC,
            0x04 => VERSION,
            0x08 => self.dev().device_type(),
            0x0c => VENDOR_ID,
            0x10 => {
                let f = self.dev().avail_features();
                match self.features_select {
                    0 => f as u32,
                    1 => (f >> 32) as u32,
                    _ => 0,
                }
            }
            0x34 => self.selected_queue().map_or(0, |q| u32::from(q.max_size())),
            0x44 => self.selected_queue().map_or(0, |q| u32::from(q.ready())),
            0x60 => self.interrupt.status(),
            0x70 => self.status,
            // SHMLenLow/High, SHMBaseLow/High: amphi's devices have no
            // shared memory regions, which reads as a length of -1 (virtio
            // 1.2, 4.2.2). 0 would announce an empty region at address 0,
            // which the virtio-fs driver then fails to reserve for DAX.
            0xb0 | 0xb4 | 0xb8 | 0xbc => u32::MAX,
            0xfc => self.config_generation,
            _ => 0,
        }
    }

    fn write_reg(&mut self, offset: u64, v: u32) {
        let writable_queue = self.status & status::DRIVER_OK == 0;
        match offset {
            0x14 => self.features_select = v,
            // Features are fixed once FEATURES_OK is set.
            0x20 if self.status & status::FEATURES_OK == 0 => {
                match self.acked_features_select {
                    0 => self.acked_features = (self.acked_features & !0xffff_ffff) | u64::from(v),
                    1 => self.acked_features = (self.acked_features & 0xffff_ffff) | (u64::from(v) << 32),
                    _ => {}
                }
                let avail = self.dev().avail_features();
                self.acked_features &= avail;
            }
            0x24 => self.acked_features_select = v,
            0x30 => self.queue_select = v,
            0x38 if writable_queue => {
                if let Some(q) = self.selected_queue() {
                    q.set_size(v as u16);
                }
            }
            0x44 if writable_queue => {
                if let Some(q) = self.selected_queue() {
                    q.set_ready(v == 1);
                }
            }
            // Notifications normally end in an ioeventfd; a write that
            // reaches us (no ioeventfd, or a datamatch miss) is forwarded.
            0x50 => {
                let d = self.dev();
                if let Some(e) = d.queue_events().get(v as usize) {
                    let _ = e.write(1);
                }
            }
            0x64 => self.interrupt.ack(v),
            0x70 => self.set_status(v),
            0x80 if writable_queue => {
                if let Some(q) = self.selected_queue() {
                    q.set_desc_table_address(Some(v), None)
                }
            }
            0x84 if writable_queue => {
                if let Some(q) = self.selected_queue() {
                    q.set_desc_table_address(None, Some(v))
                }
            }
            0x90 if writable_queue => {
                if let Some(q) = self.selected_queue() {
                    q.set_avail_ring_address(Some(v), None)
                }
            }
            0x94 if writable_queue => {
                if let Some(q) = self.selected_queue() {
                    q.set_avail_ring_address(None, Some(v))
                }
            }
            0xa0 if writable_queue => {
                if let Some(q) = self.selected_queue() {
                    q.set_used_ring_address(Some(v), None)
                }
            }
            0xa4 if writable_queue => {
                if let Some(q) = self.selected_queue() {
                    q.set_used_ring_address(None, Some(v))
                }
            }
            _ => {}
        }
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG_SPACE_OFFSET {
            self.dev().read_config(offset - CONFIG_SPACE_OFFSET, data);
        } else if data.len() == 4 {
            let v = self.read_reg(offset);
            data.copy_from_slice(&v.to_le_bytes());
        } else {
            data.fill(0);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG_SPACE_OFFSET {
            self.dev().write_config(offset - CONFIG_SPACE_OFFSET, data);
        } else if data.len() == 4 {
            let v = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
            self.write_reg(offset, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vm::devices::virtio::persist::DeviceSnapshot;
    use crate::vm::devices::virtio::{ActivateError, INT_VRING, VIRTIO_F_VERSION_1};
    use crate::vm::devices::IrqTrigger;
    use vm_memory::GuestAddress;
    use vmm_sys_util::eventfd::EventFd;

    struct Dummy {
        sizes: Vec<u16>,
        evts: Vec<EventFd>,
        acked: u64,
        activated_with: Option<usize>,
        resets: u32,
        /// Queues the accepted features call for, if not all.
        needed: Option<usize>,
        /// The queues it was activated with, for a save.
        queues: Vec<Queue>,
        after_restores: u32,
        /// Uses a queue as soon as it is activated (or restored).
        used_on_activation: bool,
    }

    impl VirtioDevice for Dummy {
        fn device_type(&self) -> u32 {
            19
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &self.sizes
        }
        fn queue_events(&self) -> &[EventFd] {
            &self.evts
        }
        fn avail_features(&self) -> u64 {
            VIRTIO_F_VERSION_1 | 1
        }
        fn set_acked_features(&mut self, f: u64) {
            self.acked = f;
        }
        fn active_queue_count(&self) -> usize {
            self.needed.unwrap_or(self.sizes.len())
        }
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8 + 0x10);
        }
        fn write_config(&mut self, _: u64, _: &[u8]) {}
        fn activate(
            &mut self,
            _: GuestMemoryMmap,
            interrupt: Arc<VirtioInterrupt>,
            q: Vec<Queue>,
        ) -> Result<(), ActivateError> {
            self.activated_with = Some(q.len());
            self.queues = q;
            if self.used_on_activation {
                // As a worker that finds requests waiting does.
                interrupt.signal_used_queue().map_err(ActivateError::Notify)?;
            }
            Ok(())
        }
        fn reset(&mut self) {
            self.resets += 1;
            self.activated_with = None;
            self.queues.clear();
        }
        fn save(&mut self) -> Result<DeviceSnapshot, PersistError> {
            Ok(DeviceSnapshot {
                device_type: self.device_type(),
                acked_features: self.acked,
                activated: self.activated_with.is_some(),
                queues: self.queues.iter().map(QueueSnapshot::from).collect(),
                extra: serde_json::Value::Null,
            })
        }
        fn after_restore(&mut self) {
            self.after_restores += 1;
        }
    }

    fn setup() -> (MmioTransport, Arc<Mutex<Dummy>>) {
        let dev = Arc::new(Mutex::new(Dummy {
            sizes: vec![16, 16],
            evts: vec![EventFd::new(libc::EFD_NONBLOCK).unwrap(), EventFd::new(libc::EFD_NONBLOCK).unwrap()],
            acked: 0,
            activated_with: None,
            resets: 0,
            needed: None,
            queues: Vec::new(),
            after_restores: 0,
            used_on_activation: false,
        }));
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let irq = Arc::new(VirtioInterrupt::new(IrqTrigger::new().unwrap()));
        (MmioTransport::new(dev.clone(), mem, irq), dev)
    }

    fn rd(t: &mut MmioTransport, off: u64) -> u32 {
        let mut b = [0u8; 4];
        t.read(off, &mut b);
        u32::from_le_bytes(b)
    }

    fn wr(t: &mut MmioTransport, off: u64, v: u32) {
        t.write(off, &v.to_le_bytes());
    }

    #[test]
    fn identification_registers() {
        let (mut t, _) = setup();
        assert_eq!(rd(&mut t, 0x00), MAGIC);
        assert_eq!(rd(&mut t, 0x04), 2);
        assert_eq!(rd(&mut t, 0x08), 19);
        wr(&mut t, 0x14, 1);
        assert_eq!(rd(&mut t, 0x10), 1, "VERSION_1 is bit 0 of the high word");
        let mut cfg = [0u8; 8];
        t.read(0x100, &mut cfg);
        assert_eq!(cfg, [0x10; 8]);
    }

    #[test]
    fn driver_initialization_activates_the_device_with_its_queues() {
        let (mut t, dev) = setup();
        wr(&mut t, 0x70, status::ACKNOWLEDGE);
        wr(&mut t, 0x70, status::ACKNOWLEDGE | status::DRIVER);
        wr(&mut t, 0x24, 1);
        wr(&mut t, 0x20, 1);
        wr(&mut t, 0x24, 0);
        wr(&mut t, 0x20, 0xffff_ffff);
        wr(&mut t, 0x70, status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK);
        assert_eq!(dev.lock().unwrap().acked, VIRTIO_F_VERSION_1 | 1, "unoffered bits are dropped");
        for (q, base) in [(0u32, 0x1000u32), (1, 0x4000)] {
            wr(&mut t, 0x30, q);
            assert_eq!(rd(&mut t, 0x34), 16);
            wr(&mut t, 0x38, 16);
            wr(&mut t, 0x80, base);
            wr(&mut t, 0x90, base + 0x100);
            wr(&mut t, 0xa0, base + 0x200);
            wr(&mut t, 0x44, 1);
            assert_eq!(rd(&mut t, 0x44), 1);
        }
        wr(&mut t, 0x70, status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK);
        assert_eq!(dev.lock().unwrap().activated_with, Some(2));
        assert_eq!(rd(&mut t, 0x70) & status::DEVICE_NEEDS_RESET, 0);
        wr(&mut t, 0x70, 0);
        assert_eq!(dev.lock().unwrap().resets, 1);
        assert_eq!(rd(&mut t, 0x70), 0);
    }

    #[test]
    fn an_unconfigured_queue_fails_activation() {
        let (mut t, dev) = setup();
        wr(&mut t, 0x70, status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK);
        assert!(dev.lock().unwrap().activated_with.is_none());
        assert_ne!(rd(&mut t, 0x70) & status::DEVICE_NEEDS_RESET, 0);
    }

    #[test]
    fn notify_writes_that_reach_the_transport_kick_the_queue_event() {
        let (mut t, dev) = setup();
        wr(&mut t, 0x50, 1);
        assert_eq!(dev.lock().unwrap().evts[1].read().unwrap(), 1);
        assert!(dev.lock().unwrap().evts[0].read().is_err(), "queue 0 not kicked");
    }

    #[test]
    fn no_shared_memory_region_reads_as_length_minus_one() {
        let (mut t, _) = setup();
        wr(&mut t, 0xac, 0);
        for reg in [0xb0, 0xb4, 0xb8, 0xbc] {
            assert_eq!(rd(&mut t, reg), u32::MAX, "register {reg:#x}");
        }
    }

    #[test]
    fn interrupt_status_is_acknowledged_bit_by_bit() {
        let (mut t, _) = setup();
        t.interrupt.signal_used_queue().unwrap();
        assert_eq!(rd(&mut t, 0x60), 1);
        wr(&mut t, 0x64, 1);
        assert_eq!(rd(&mut t, 0x60), 0);
        t.interrupt.signal_config_change().unwrap();
        t.interrupt.signal_used_queue().unwrap();
        assert_eq!(rd(&mut t, 0x60), 3, "config change is bit 1");
        wr(&mut t, 0x64, 2);
        assert_eq!(rd(&mut t, 0x60), 1);
    }

    #[test]
    fn queues_the_features_do_not_call_for_need_no_setup() {
        let (mut t, dev) = setup();
        dev.lock().unwrap().needed = Some(1);
        wr(&mut t, 0x30, 0);
        wr(&mut t, 0x38, 16);
        wr(&mut t, 0x80, 0x1000);
        wr(&mut t, 0x90, 0x1100);
        wr(&mut t, 0xa0, 0x1200);
        wr(&mut t, 0x44, 1);
        wr(&mut t, 0x70, status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK);
        assert_eq!(dev.lock().unwrap().activated_with, Some(1), "queue 1 was never set up");
        assert_eq!(rd(&mut t, 0x70) & status::DEVICE_NEEDS_RESET, 0);
    }

    /// The driver's side of initialisation up to (not including)
    /// DRIVER_OK: features, then both queues at 0x1000 and 0x4000.
    fn initialize(t: &mut MmioTransport) {
        wr(t, 0x70, status::ACKNOWLEDGE | status::DRIVER);
        wr(t, 0x24, 1);
        wr(t, 0x20, 1);
        wr(t, 0x24, 0);
        wr(t, 0x20, 1);
        wr(t, 0x70, status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK);
        for (q, base) in [(0u32, 0x1000u32), (1, 0x4000)] {
            wr(t, 0x30, q);
            wr(t, 0x38, 16);
            wr(t, 0x80, base);
            wr(t, 0x90, base + 0x100);
            wr(t, 0xa0, base + 0x200);
            wr(t, 0x44, 1);
        }
    }

    const DRIVER_OK: u32 = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK;

    /// What the driver can read back: the registers, per queue and per
    /// feature word.
    fn registers(t: &mut MmioTransport) -> Vec<u32> {
        let mut out = Vec::new();
        for q in 0..2 {
            wr(t, 0x30, q);
            out.extend([rd(t, 0x34), rd(t, 0x44)]);
        }
        for f in 0..2 {
            wr(t, 0x14, f);
            out.push(rd(t, 0x10));
        }
        out.extend([0x08, 0x60, 0x70, 0xfc].map(|r| rd(t, r)));
        out
    }

    fn round_trip(s: &TransportSnapshot) -> TransportSnapshot {
        serde_json::from_str(&serde_json::to_string(s).unwrap()).unwrap()
    }

    #[test]
    fn an_active_device_and_its_registers_survive_save_and_restore() {
        let (mut t, dev) = setup();
        initialize(&mut t);
        wr(&mut t, 0x70, DRIVER_OK);
        // The device moved along its rings before the save.
        for q in &mut dev.lock().unwrap().queues {
            q.set_next_avail(9);
            q.set_next_used(8);
        }
        t.interrupt.signal_used_queue().unwrap();
        wr(&mut t, 0x30, 1);
        wr(&mut t, 0x14, 1);
        wr(&mut t, 0x24, 1);
        let s = round_trip(&t.save().unwrap());
        assert_eq!((s.status, s.interrupt_status, s.queue_select, s.features_select), (DRIVER_OK, 1, 1, 1));
        assert_eq!(s.acked_features, VIRTIO_F_VERSION_1 | 1);
        assert!(s.device.activated);
        assert_eq!(s.device.queues.iter().map(|q| (q.next_avail, q.next_used)).collect::<Vec<_>>(), [(9, 8); 2]);

        let (mut back, back_dev) = setup();
        back.restore(&s).unwrap();
        {
            let d = back_dev.lock().unwrap();
            assert_eq!(d.activated_with, Some(2), "activated with the saved queues");
            assert_eq!(d.acked, VIRTIO_F_VERSION_1 | 1);
            assert!(d.queues.iter().all(|q| (q.next_avail(), q.next_used()) == (9, 8)));
        }
        assert_eq!(back.save().unwrap(), s, "the restored transport saves the same state");
        assert_eq!(back.interrupt.irq_fd().read().ok(), None, "no interrupt before the kick phase");
        back.after_restore();
        assert_eq!(back_dev.lock().unwrap().after_restores, 1);
        assert_eq!(back.interrupt.irq_fd().read().unwrap(), 1, "the pending interrupt is raised again");
        assert_eq!(registers(&mut back), registers(&mut t));
        // A guest reset still reaches the device.
        wr(&mut back, 0x70, 0);
        assert_eq!(back_dev.lock().unwrap().resets, 1);
    }

    #[test]
    fn a_queue_used_while_the_device_restores_is_not_forgotten() {
        let (mut t, _) = setup();
        initialize(&mut t);
        wr(&mut t, 0x70, DRIVER_OK);
        let s = round_trip(&t.save().unwrap());
        assert_eq!(s.interrupt_status, 0, "nothing pending at the save");
        let (mut back, back_dev) = setup();
        back_dev.lock().unwrap().used_on_activation = true;
        back.restore(&s).unwrap();
        assert_eq!(rd(&mut back, 0x60), INT_VRING, "the saved status did not wipe the worker's bit");
        let _ = back.interrupt.irq_fd().read();
        back.after_restore();
        assert_eq!(back.interrupt.irq_fd().read().unwrap(), 1, "raised again once the controllers are back");
    }

    #[test]
    fn a_device_saved_before_driver_ok_goes_on_initializing() {
        let (mut t, _) = setup();
        initialize(&mut t);
        let s = round_trip(&t.save().unwrap());
        assert!(!s.device.activated);
        let (mut back, back_dev) = setup();
        back.restore(&s).unwrap();
        back.after_restore();
        assert_eq!(back.interrupt.irq_fd().read().ok(), None, "nothing was pending");
        assert_eq!(registers(&mut back), registers(&mut t));
        wr(&mut back, 0x70, DRIVER_OK);
        assert_eq!(back_dev.lock().unwrap().activated_with, Some(2), "with the queues programmed before the save");
        assert_eq!(rd(&mut back, 0x70), DRIVER_OK);
    }

    #[test]
    fn mismatched_snapshots_are_refused() {
        let (mut t, _) = setup();
        initialize(&mut t);
        wr(&mut t, 0x70, DRIVER_OK);
        let good = t.save().unwrap();
        let (mut back, back_dev) = setup();

        let mut s = good.clone();
        s.device.device_type = 5;
        assert!(matches!(back.restore(&s), Err(PersistError::TypeMismatch { saved: 5, device: 19 })));
        let mut s = good.clone();
        s.acked_features |= 1 << 40;
        assert!(matches!(back.restore(&s), Err(PersistError::FeaturesNotOffered { .. })));
        let mut s = good.clone();
        s.device.acked_features |= 1 << 3;
        assert!(matches!(back.restore(&s), Err(PersistError::FeaturesNotOffered { .. })));
        let mut s = good.clone();
        s.queues.pop();
        assert!(matches!(back.restore(&s), Err(PersistError::QueueCount { saved: 1, device: 2 })));
        let mut s = good.clone();
        s.device.queues[1].size = 32;
        assert!(matches!(back.restore(&s), Err(PersistError::BadQueue { index: 1, .. })));
        let mut s = good.clone();
        s.device.queues[0].max_size = 32;
        assert!(matches!(back.restore(&s), Err(PersistError::QueueSize { index: 0, .. })));
        let mut s = good.clone();
        s.device.queues[0].used_ring = 1 << 30;
        assert!(matches!(back.restore(&s), Err(PersistError::QueueNotUsable { index: 0 })));
        let mut s = good.clone();
        s.status = 0;
        assert!(matches!(back.restore(&s), Err(PersistError::Inconsistent(_))));
        assert!(back_dev.lock().unwrap().activated_with.is_none(), "nothing was activated");
        back.restore(&good).unwrap();
    }
}
