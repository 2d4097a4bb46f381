//! COM1: a 16550A UART (vm-superio) whose output goes to a log file or
//! stdout, with a watcher that recognizes the lines the VMM cares about
//! (the agent's "listening" line, a kernel panic). The guest console has no
//! input in this stage, so the device has no event handler. `log.rs`: the
//! log file's size cap; `persist.rs`: the UART's saved state.

pub mod device;
pub mod log;
pub mod persist;

pub use device::{ConsoleEvent, ConsoleOutput, ConsoleWatcher, SerialDevice};
pub use log::CappedLog;
pub use persist::{SerialRestoreError, SerialSnapshot};
