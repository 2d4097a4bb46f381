//! The UART's saved state, for VM templates: its registers and receive
//! FIFO (vm-superio's `SerialState`, which has no serde), and what the
//! console watcher has already reported, so a restored console does not
//! report the agent's listening line of the template's boot again.
//!
//! The output side is not state: the restoring VMM gives the device its
//! own sink (the new VM's console log).

use serde::{Deserialize, Serialize};
use vm_superio::serial::{NoEvents, SerialState};
use vm_superio::{Serial, Trigger};

use super::device::{ConsoleOutput, SerialDevice};
use crate::vm::devices::IrqTrigger;

/// IIR bit 0: set while no interrupt is pending (16550A).
const IIR_NO_INTERRUPT: u8 = 1;

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct SerialSnapshot {
    pub baud_divisor_low: u8,
    pub baud_divisor_high: u8,
    pub interrupt_enable: u8,
    pub interrupt_identification: u8,
    pub line_control: u8,
    pub line_status: u8,
    pub modem_control: u8,
    pub modem_status: u8,
    pub scratch: u8,
    /// Received bytes the guest has not read yet.
    pub in_buffer: Vec<u8>,
    /// The console watcher had reported the agent's listening line.
    pub listening_seen: bool,
    /// The console watcher had reported a kernel panic.
    pub panic_seen: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum SerialRestoreError {
    #[error("the saved serial receive buffer holds {0} bytes, more than the UART's FIFO")]
    FifoOverflow(usize),
    #[error("cannot raise the restored serial interrupt")]
    Interrupt(#[source] std::io::Error),
    #[error("cannot restore the serial device")]
    Io(#[source] std::io::Error),
}

impl SerialDevice {
    pub fn save(&self) -> SerialSnapshot {
        let s = self.uart.state();
        let watcher = &self.uart.writer().watcher;
        SerialSnapshot {
            baud_divisor_low: s.baud_divisor_low,
            baud_divisor_high: s.baud_divisor_high,
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.in_buffer,
            listening_seen: watcher.listening_seen,
            panic_seen: watcher.panic_seen,
        }
    }

    /// COM1 in the saved state, writing to `out` (whose watcher takes over
    /// what the saved one had reported).
    pub fn restore(irq: IrqTrigger, mut out: ConsoleOutput, snap: &SerialSnapshot) -> Result<Self, SerialRestoreError> {
        out.watcher.listening_seen |= snap.listening_seen;
        out.watcher.panic_seen |= snap.panic_seen;
        let state = SerialState {
            baud_divisor_low: snap.baud_divisor_low,
            baud_divisor_high: snap.baud_divisor_high,
            interrupt_enable: snap.interrupt_enable,
            interrupt_identification: snap.interrupt_identification,
            line_control: snap.line_control,
            line_status: snap.line_status,
            modem_control: snap.modem_control,
            modem_status: snap.modem_status,
            scratch: snap.scratch,
            in_buffer: snap.in_buffer.clone(),
        };
        let uart = Serial::from_state(&state, irq, NoEvents, out).map_err(|e| match e {
            vm_superio::serial::Error::FullFifo => SerialRestoreError::FifoOverflow(snap.in_buffer.len()),
            vm_superio::serial::Error::Trigger(e) => SerialRestoreError::Interrupt(e),
            vm_superio::serial::Error::IOError(e) => SerialRestoreError::Io(e),
        })?;
        Ok(SerialDevice { uart })
    }

    /// The kick phase of a restore: raises the interrupt again if one is
    /// pending (an edge raised before the interrupt controllers were
    /// restored is lost).
    pub fn after_restore(&self) {
        if self.uart.state().interrupt_identification & IIR_NO_INTERRUPT == 0 {
            // A lost edge only delays output; the guest polls LSR too.
            let _ = self.uart.interrupt_evt().trigger();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vm::devices::serial::device::tests::watcher;
    use crate::vm::devices::serial::device::ConsoleEvent;
    use crate::vm::devices::BusDevice;

    fn device() -> (SerialDevice, std::sync::Arc<std::sync::Mutex<Vec<ConsoleEvent>>>) {
        let (w, seen) = watcher();
        (SerialDevice::new(IrqTrigger::new().unwrap(), ConsoleOutput::new(Box::new(std::io::sink()), w)), seen)
    }

    fn regs(dev: &mut SerialDevice) -> Vec<u8> {
        (0..8u64)
            .map(|off| {
                let mut b = [0u8];
                dev.read(off, &mut b);
                b[0]
            })
            .collect()
    }

    #[test]
    fn registers_and_reported_lines_survive_save_and_restore() {
        let (mut dev, seen) = device();
        // Divisor latch (DLAB on), then line control, interrupts, scratch.
        dev.write(3, &[0x80]);
        dev.write(0, &[0x0c]);
        dev.write(1, &[0x00]);
        dev.write(3, &[0x03]);
        dev.write(1, &[0x02]);
        dev.write(7, &[0x5a]);
        dev.write(4, &[0x0b]);
        for b in b"amphi-agent: listening on vsock port 1024\n" {
            dev.write(0, &[*b]);
        }
        assert_eq!(*seen.lock().unwrap(), vec![ConsoleEvent::AgentListening]);
        let snap = dev.save();
        assert!(snap.listening_seen && !snap.panic_seen);
        let json = serde_json::to_string(&snap).unwrap();
        let snap: SerialSnapshot = serde_json::from_str(&json).unwrap();

        let irq = IrqTrigger::new().unwrap();
        let (w, seen_after) = watcher();
        let mut back = SerialDevice::restore(irq, ConsoleOutput::new(Box::new(std::io::sink()), w), &snap).unwrap();
        assert_eq!(back.save(), snap);
        // The THR-empty interrupt the last write left pending is raised
        // again in the kick phase.
        let _ = back.uart.interrupt_evt().0.read();
        back.after_restore();
        assert_eq!(back.uart.interrupt_evt().0.read().unwrap(), 1);
        assert_eq!(regs(&mut back), regs(&mut dev));
        back.write(3, &[0x83]);
        let mut divisor = [0u8];
        back.read(0, &mut divisor);
        assert_eq!(divisor[0], 0x0c, "the divisor latch survives");
        back.write(3, &[0x03]);
        // The template boot's listening line is not reported again.
        for b in b"amphi-agent: listening on vsock port 1024\n" {
            back.write(0, &[*b]);
        }
        assert!(seen_after.lock().unwrap().is_empty());
    }

    #[test]
    fn an_overfull_receive_buffer_is_refused() {
        let (dev, _) = device();
        let snap = SerialSnapshot { in_buffer: vec![0; 65], ..dev.save() };
        let (w, _) = watcher();
        let out = ConsoleOutput::new(Box::new(std::io::sink()), w);
        assert!(matches!(
            SerialDevice::restore(IrqTrigger::new().unwrap(), out, &snap),
            Err(SerialRestoreError::FifoOverflow(65))
        ));
    }
}
