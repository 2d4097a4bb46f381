//! The UART on the port-I/O bus and its output side.

use std::io::Write;
use std::sync::Arc;

use vm_superio::serial::NoEvents;
use vm_superio::Serial;

use crate::agent::LISTENING_MARKER;
use crate::vm::devices::{BusDevice, IrqTrigger};

/// The kernel's panic banner (panic() in kernel/panic.c).
pub const PANIC_MARKER: &str = "Kernel panic - not syncing";

/// What the watcher saw on the console.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConsoleEvent {
    AgentListening,
    KernelPanic(String),
}

/// Splits console output into lines and reports the interesting ones,
/// each once (a guest that prints them again and again must not flood
/// whoever listens to the events). Memory is bounded whatever the guest
/// prints: only the first [`MAX_LINE`] bytes of a line are looked at.
pub struct ConsoleWatcher {
    line: Vec<u8>,
    notify: Arc<dyn Fn(ConsoleEvent) + Send + Sync>,
    pub(super) listening_seen: bool,
    pub(super) panic_seen: bool,
}

pub const MAX_LINE: usize = 1024;

impl ConsoleWatcher {
    pub fn new(notify: Arc<dyn Fn(ConsoleEvent) + Send + Sync>) -> Self {
        ConsoleWatcher { line: Vec::with_capacity(MAX_LINE), notify, listening_seen: false, panic_seen: false }
    }

    pub fn feed(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if b == b'\n' {
                self.end_line();
            } else if self.line.len() < MAX_LINE {
                self.line.push(b);
            }
        }
    }

    fn end_line(&mut self) {
        let line = String::from_utf8_lossy(&self.line);
        let line = line.trim_end_matches('\r');
        if line.contains(LISTENING_MARKER) {
            if !self.listening_seen {
                self.listening_seen = true;
                (self.notify)(ConsoleEvent::AgentListening);
            }
        } else if let Some(pos) = line.find(PANIC_MARKER) {
            if !self.panic_seen {
                self.panic_seen = true;
                (self.notify)(ConsoleEvent::KernelPanic(line[pos..].to_string()));
            }
        }
        self.line.clear();
    }
}

/// The UART's output: the chosen sink plus the watcher.
pub struct ConsoleOutput {
    sink: Box<dyn Write + Send>,
    pub(super) watcher: ConsoleWatcher,
}

impl ConsoleOutput {
    pub fn new(sink: Box<dyn Write + Send>, watcher: ConsoleWatcher) -> Self {
        ConsoleOutput { sink, watcher }
    }
}

impl Write for ConsoleOutput {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.watcher.feed(buf);
        // The console must never stall the vCPU: output errors are dropped.
        let _ = self.sink.write_all(buf);
        if buf.contains(&b'\n') {
            let _ = self.sink.flush();
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.sink.flush()
    }
}

/// COM1 on the I/O bus.
pub struct SerialDevice {
    pub(super) uart: Serial<IrqTrigger, NoEvents, ConsoleOutput>,
}

impl SerialDevice {
    pub fn new(irq: IrqTrigger, out: ConsoleOutput) -> Self {
        SerialDevice { uart: Serial::new(irq, out) }
    }
}

impl BusDevice for SerialDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if data.len() == 1 && offset < 8 {
            data[0] = self.uart.read(offset as u8);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if data.len() == 1 && offset < 8 {
            // A failed interrupt injection only delays output; the guest polls LSR.
            let _ = self.uart.write(offset as u8, data[0]);
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use std::sync::Mutex;

    pub(in crate::vm::devices::serial) fn watcher() -> (ConsoleWatcher, Arc<Mutex<Vec<ConsoleEvent>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        (ConsoleWatcher::new(Arc::new(move |e| s.lock().unwrap().push(e))), seen)
    }

    #[test]
    fn the_listening_line_is_recognized_across_writes() {
        let (mut w, seen) = watcher();
        w.feed(b"[    1.0] random\r\namphi-agent: listening on vs");
        assert!(seen.lock().unwrap().is_empty());
        w.feed(b"ock port 1024 (protocol 1.0)\r\n");
        assert_eq!(*seen.lock().unwrap(), vec![ConsoleEvent::AgentListening]);
    }

    #[test]
    fn a_panic_is_reported_with_its_reason() {
        let (mut w, seen) = watcher();
        w.feed(b"[    0.9] Kernel panic - not syncing: No working init found.\n");
        assert_eq!(
            *seen.lock().unwrap(),
            vec![ConsoleEvent::KernelPanic("Kernel panic - not syncing: No working init found.".into())]
        );
    }

    /// An endless line without a newline: the watcher keeps at most
    /// MAX_LINE bytes of it, and still sees the lines that follow.
    #[test]
    fn an_endless_line_keeps_memory_bounded() {
        let (mut w, seen) = watcher();
        let junk = [b'A'; 4096];
        for _ in 0..2560 {
            w.feed(&junk);
            assert!(w.line.len() <= MAX_LINE && w.line.capacity() <= MAX_LINE);
        }
        w.feed(b"\r\n[    2.0] amphi-agent: listening on vsock port 1024\n");
        assert_eq!(*seen.lock().unwrap(), vec![ConsoleEvent::AgentListening]);
    }

    /// A guest printing the interesting lines over and over is reported once.
    #[test]
    fn repeated_marker_lines_are_reported_once() {
        let (mut w, seen) = watcher();
        for _ in 0..10_000 {
            w.feed(b"amphi-agent: listening on vsock port 1024\nKernel panic - not syncing: fake\n");
        }
        assert_eq!(
            *seen.lock().unwrap(),
            vec![ConsoleEvent::AgentListening, ConsoleEvent::KernelPanic("Kernel panic - not syncing: fake".into())]
        );
    }

    #[test]
    fn uart_output_reaches_the_sink_byte_by_byte() {
        #[derive(Clone, Default)]
        struct Shared(Arc<Mutex<Vec<u8>>>);
        impl Write for Shared {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let sink = Shared::default();
        let (w, _) = watcher();
        let mut dev = SerialDevice::new(IrqTrigger::new().unwrap(), ConsoleOutput::new(Box::new(sink.clone()), w));
        for b in b"hi\n" {
            dev.write(0, &[*b]);
        }
        assert_eq!(&*sink.0.lock().unwrap(), b"hi\n");
        let mut lsr = [0u8];
        dev.read(5, &mut lsr);
        assert_ne!(lsr[0] & 0x20, 0, "transmitter holding register empty");
    }
}
