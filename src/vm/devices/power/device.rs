//! One byte-wide register at [`crate::vm::boot::layout::ACPI_PM_PORT`]
//! serves as FADT sleep-control, sleep-status and reset register; a write
//! of 0xfe to the i8042 command port also resets, for kernels booted with
//! `reboot=k`.

use std::sync::Arc;

use crate::vm::boot::acpi::{RESET_VALUE, S5_SLEEP_TYPE, SLEEP_ENABLE};
use crate::vm::devices::BusDevice;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PowerEvent {
    PowerOff,
    Reset,
}

/// Which register a [`PowerDevice`] instance sits on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PowerPort {
    Acpi,
    I8042,
}

pub struct PowerDevice {
    port: PowerPort,
    notify: Arc<dyn Fn(PowerEvent) + Send + Sync>,
}

const I8042_RESET: u8 = 0xfe;

impl PowerDevice {
    pub fn new(port: PowerPort, notify: Arc<dyn Fn(PowerEvent) + Send + Sync>) -> Self {
        PowerDevice { port, notify }
    }

    /// What a byte written to this register means.
    pub fn decode(port: PowerPort, value: u8) -> Option<PowerEvent> {
        match port {
            PowerPort::Acpi if value == RESET_VALUE => Some(PowerEvent::Reset),
            PowerPort::Acpi if value & SLEEP_ENABLE != 0 && (value >> 2) & 0x7 == S5_SLEEP_TYPE => {
                Some(PowerEvent::PowerOff)
            }
            PowerPort::I8042 if value == I8042_RESET => Some(PowerEvent::Reset),
            _ => None,
        }
    }
}

impl BusDevice for PowerDevice {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        // Sleep status: WAK_STS never set; i8042 status: nothing to read.
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset == 0 && data.len() == 1 {
            if let Some(e) = Self::decode(self.port, data[0]) {
                (self.notify)(e);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s5_with_sleep_enable_powers_off() {
        // What Linux's acpi_hw_extended_sleep writes for SLP_TYP=5.
        assert_eq!(PowerDevice::decode(PowerPort::Acpi, (5 << 2) | 0x20), Some(PowerEvent::PowerOff));
        assert_eq!(PowerDevice::decode(PowerPort::Acpi, 5 << 2), None, "no SLP_EN");
        assert_eq!(PowerDevice::decode(PowerPort::Acpi, (3 << 2) | 0x20), None, "S3 is not offered");
        assert_eq!(PowerDevice::decode(PowerPort::Acpi, 0x80), None, "clearing WAK_STS");
    }

    #[test]
    fn the_reset_value_and_i8042_pulse_reset() {
        assert_eq!(PowerDevice::decode(PowerPort::Acpi, RESET_VALUE), Some(PowerEvent::Reset));
        assert_eq!(PowerDevice::decode(PowerPort::I8042, 0xfe), Some(PowerEvent::Reset));
        assert_eq!(PowerDevice::decode(PowerPort::I8042, 0xd1), None);
    }

    #[test]
    fn writes_notify_the_vmm() {
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let s = seen.clone();
        let mut dev = PowerDevice::new(PowerPort::Acpi, Arc::new(move |e| s.lock().unwrap().push(e)));
        dev.write(0, &[0x80]);
        dev.write(0, &[0x34]);
        assert_eq!(*seen.lock().unwrap(), vec![PowerEvent::PowerOff]);
    }
}
