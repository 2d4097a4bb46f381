//! Power and reset: the hardware-reduced ACPI sleep-control/reset register
//! and the i8042 reset line. There are no host events to handle, so the
//! device has no event handler.

pub mod device;

pub use device::{PowerDevice, PowerEvent, PowerPort};
