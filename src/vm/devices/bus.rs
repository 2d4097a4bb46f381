//! Port-I/O and MMIO buses: route a vCPU access to the device owning the
//! address, with the offset into the device's window.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// A device on a bus. `offset` is relative to the device's base.
pub trait BusDevice: Send {
    fn read(&mut self, offset: u64, data: &mut [u8]);
    fn write(&mut self, offset: u64, data: &[u8]);
}

#[derive(Debug, thiserror::Error)]
#[error("bus range {base:#x}+{len:#x} overlaps a device already at {other:#x}")]
pub struct BusOverlap {
    pub base: u64,
    pub len: u64,
    pub other: u64,
}

type Shared = Arc<Mutex<dyn BusDevice>>;

#[derive(Default, Clone)]
pub struct Bus {
    devices: BTreeMap<u64, (u64, Shared)>,
}

impl Bus {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn insert(&mut self, base: u64, len: u64, device: Shared) -> Result<(), BusOverlap> {
        if let Some((&other, &(olen, _))) = self.devices.range(..base + len).next_back() {
            if other + olen > base {
                return Err(BusOverlap { base, len, other });
            }
        }
        self.devices.insert(base, (len, device));
        Ok(())
    }

    fn find(&self, addr: u64) -> Option<(u64, &Shared)> {
        let (&base, (len, dev)) = self.devices.range(..=addr).next_back()?;
        (addr < base + len).then_some((addr - base, dev))
    }

    /// Returns false when no device owns `addr`.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.find(addr) {
            Some((offset, dev)) => {
                dev.lock().unwrap_or_else(|e| e.into_inner()).read(offset, data);
                true
            }
            None => false,
        }
    }

    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.find(addr) {
            Some((offset, dev)) => {
                dev.lock().unwrap_or_else(|e| e.into_inner()).write(offset, data);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Recorder(Vec<(u64, Vec<u8>)>);
    impl BusDevice for Recorder {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.0.push((offset, data.to_vec()));
        }
    }

    #[test]
    fn accesses_reach_the_owning_device_with_its_offset() {
        let dev = Arc::new(Mutex::new(Recorder::default()));
        let mut bus = Bus::new();
        bus.insert(0x3f8, 8, dev.clone()).unwrap();
        let mut b = [0u8; 1];
        assert!(bus.read(0x3fa, &mut b));
        assert_eq!(b, [2]);
        assert!(bus.write(0x3ff, &[7]));
        assert!(!bus.write(0x400, &[7]), "past the window");
        assert!(!bus.read(0x3f7, &mut b), "before the window");
        assert_eq!(dev.lock().unwrap().0, vec![(7, vec![7])]);
    }

    #[test]
    fn overlapping_ranges_are_refused() {
        let mut bus = Bus::new();
        bus.insert(0x1000, 0x1000, Arc::new(Mutex::new(Recorder::default()))).unwrap();
        assert!(bus.insert(0x1800, 0x1000, Arc::new(Mutex::new(Recorder::default()))).is_err());
        assert!(bus.insert(0x800, 0x1000, Arc::new(Mutex::new(Recorder::default()))).is_err());
        bus.insert(0x2000, 0x1000, Arc::new(Mutex::new(Recorder::default()))).unwrap();
    }
}
