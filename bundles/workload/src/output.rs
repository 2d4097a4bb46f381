//! The line protocol on stdout and the one error type.
//!
//! stdout carries only `ready` and `result <name> <value>` lines, each
//! flushed as soon as it is written: the harness reads them through a
//! container's or a VM's console and `ready` gates its next step. Each name
//! has one fixed unit, part of the name (`_ms`, `_ns`, `_us`, `_mibps`);
//! measurements are printed with three decimals, counts as integers, never
//! in exponent form, so any line splits on spaces into three fields.
//!
//! The error type is a message and an optional OS error rather than a
//! thiserror enum: a workload fails in exactly one way (print, exit 1) and
//! this keeps the binary's only dependency libc.

use std::fmt;
use std::io::{self, Write};
use std::time::Duration;

/// What failed (naming the file, port or step) and the OS error behind it.
#[derive(Debug)]
pub struct Failure {
    what: String,
    cause: Option<io::Error>,
}

impl Failure {
    pub fn new(what: impl Into<String>) -> Self {
        Failure { what: what.into(), cause: None }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.cause {
            Some(c) => write!(f, "{}: {c}", self.what),
            None => f.write_str(&self.what),
        }
    }
}

/// `.map_err(failed("open /etc/passwd"))`: names the step an OS error came from.
pub fn failed(what: impl Into<String>) -> impl FnOnce(io::Error) -> Failure {
    let what = what.into();
    move |cause| Failure { what, cause: Some(cause) }
}

/// A reported figure.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value {
    /// A measurement in the name's unit.
    Measured(f64),
    /// An exact integer (a checksum, a count).
    Count(u64),
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Measured(v) => write!(f, "{v:.3}"),
            Value::Count(v) => write!(f, "{v}"),
        }
    }
}

pub fn result_line(name: &str, value: Value) -> String {
    format!("result {name} {value}")
}

fn emit(line: &str) -> Result<(), Failure> {
    let mut out = io::stdout().lock();
    writeln!(out, "{line}").and_then(|_| out.flush()).map_err(failed("write to stdout"))
}

pub fn ready() -> Result<(), Failure> {
    emit("ready")
}

/// A finished workload's figures, in the order they are printed.
pub type Results = Result<Vec<(&'static str, Value)>, Failure>;

pub fn results(results: &[(&'static str, Value)]) -> Result<(), Failure> {
    results.iter().try_for_each(|&(name, value)| emit(&result_line(name, value)))
}

/// Milliseconds as a measurement.
pub fn ms(d: Duration) -> Value {
    Value::Measured(d.as_secs_f64() * 1e3)
}

/// The mean of `n` operations that took `total`, in `unit` per second
/// (1e9 for ns, 1e6 for µs).
pub fn mean(total: Duration, n: u64, unit: f64) -> Value {
    Value::Measured(total.as_secs_f64() * unit / n as f64)
}

/// MiB per second; a zero duration (impossible for real I/O, but a clock
/// is only so fine) counts as one nanosecond so the value stays finite.
pub fn mibps(mib: u64, d: Duration) -> Value {
    Value::Measured(mib as f64 / d.max(Duration::from_nanos(1)).as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_have_three_fields_and_fixed_formats() {
        assert_eq!(result_line("cpu_ms", Value::Measured(101.23456)), "result cpu_ms 101.235");
        assert_eq!(result_line("cpu_checksum", Value::Count(u64::MAX)), "result cpu_checksum 18446744073709551615");
        // Tiny and huge values stay plain decimals, never 1e-7 or 1e20.
        assert_eq!(Value::Measured(1e-7).to_string(), "0.000");
        assert_eq!(Value::Measured(1e20).to_string(), "100000000000000000000.000");
    }

    #[test]
    fn means_and_rates_use_the_unit() {
        assert_eq!(mean(Duration::from_millis(1), 1000, 1e9), Value::Measured(1000.0));
        assert_eq!(mean(Duration::from_millis(10), 10, 1e6), Value::Measured(1000.0));
        assert_eq!(ms(Duration::from_micros(1500)), Value::Measured(1.5));
        assert_eq!(mibps(100, Duration::from_millis(500)), Value::Measured(200.0));
        let Value::Measured(v) = mibps(1, Duration::ZERO) else { unreachable!() };
        assert!(v.is_finite());
    }

    #[test]
    fn failures_name_the_step_and_the_cause() {
        let f = failed("open /x")(io::Error::from_raw_os_error(libc::ENOENT));
        assert_eq!(f.to_string(), "open /x: No such file or directory (os error 2)");
        assert_eq!(Failure::new("checksum mismatch").to_string(), "checksum mismatch");
    }
}
