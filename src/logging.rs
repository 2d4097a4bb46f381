//! runc-compatible logging: `--log FILE` and `--log-format text|json`.
//!
//! containerd and podman (through conmon) pass `--log <file> --log-format
//! json` and read the last `error` entry of that file when a command fails,
//! so the json format is one object a line with `level`, `msg` and `time`,
//! exactly as runc writes it. The text format is logrus's `key=value` line.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::{Mutex, OnceLock};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Debug,
    Info,
    Warn,
    Error,
}

impl Level {
    fn as_str(self) -> &'static str {
        match self {
            Level::Debug => "debug",
            Level::Info => "info",
            Level::Warn => "warning",
            Level::Error => "error",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
}

#[derive(Debug)]
struct Logger {
    min: Level,
    format: Format,
    /// None: stderr.
    file: Option<Mutex<File>>,
}

static LOGGER: OnceLock<Logger> = OnceLock::new();

/// Sets up logging once per process. Without a file, messages go to stderr.
pub fn init(file: Option<&Path>, format: Format, debug: bool) -> std::io::Result<()> {
    let file = match file {
        Some(p) => Some(Mutex::new(OpenOptions::new().create(true).append(true).open(p)?)),
        None => None,
    };
    let _ = LOGGER.set(Logger { min: if debug { Level::Debug } else { Level::Warn }, format, file });
    Ok(())
}

/// Whether messages go to a log file (rather than stderr).
pub fn has_file() -> bool {
    LOGGER.get().is_some_and(|l| l.file.is_some())
}

/// Whether debug messages are wanted (to skip building them otherwise).
pub fn debug_enabled() -> bool {
    LOGGER.get().is_some_and(|l| l.min <= Level::Debug)
}

pub fn log(level: Level, msg: &str) {
    let Some(l) = LOGGER.get() else {
        if level >= Level::Warn {
            eprintln!("{}: {msg}", level.as_str());
        }
        return;
    };
    if level < l.min {
        return;
    }
    let line = format_line(l.format, level, msg, &crate::container::state::now_rfc3339());
    match &l.file {
        Some(f) => {
            if let Ok(mut f) = f.lock() {
                let _ = f.write_all(line.as_bytes());
            }
        }
        None => {
            let _ = std::io::stderr().write_all(line.as_bytes());
        }
    }
}

pub fn debug(msg: &str) {
    log(Level::Debug, msg);
}

/// Logs a debug message built only when debug logging is on.
pub fn debug_with(msg: impl FnOnce() -> String) {
    if debug_enabled() {
        log(Level::Debug, &msg());
    }
}

/// A step a user waits on (a VM template being built): on a terminal it
/// is shown, elsewhere it is an info line (seen with --debug).
pub fn progress(msg: &str) {
    use std::io::IsTerminal;
    if !has_file() && std::io::stderr().is_terminal() {
        eprintln!("amphi: {msg}");
    } else {
        log(Level::Info, msg);
    }
}

pub fn warn(msg: &str) {
    log(Level::Warn, msg);
}

pub fn error(msg: &str) {
    log(Level::Error, msg);
}

/// A warning given at most once per process for each `key` (a setting the
/// host cannot honour, met again for every process of a container).
pub fn warn_once(key: &str, msg: &str) {
    static SEEN: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let Ok(mut seen) = SEEN.lock() else { return };
    if seen.iter().any(|k| k == key) {
        return;
    }
    seen.push(key.to_string());
    drop(seen);
    warn(msg);
}

fn format_line(format: Format, level: Level, msg: &str, time: &str) -> String {
    match format {
        Format::Json => {
            let v = serde_json::json!({ "level": level.as_str(), "msg": msg, "time": time });
            format!("{v}\n")
        }
        Format::Text => {
            let quoted = serde_json::to_string(msg).unwrap_or_default();
            format!("time=\"{time}\" level={} msg={quoted}\n", level.as_str())
        }
    }
}

/// The environment variable naming a file that collects timing marks
/// (`bench/vm-run.sh` sets it; nothing else should).
pub const TIMING_ENV: &str = "AMPHI_TIMING";

/// Appends "<label> <CLOCK_MONOTONIC nanoseconds>" to the file named by
/// [`TIMING_ENV`], if it is set: every amphi process of one run (the
/// command, the VMM) marks its milestones on the same clock, so a
/// benchmark can split a run into phases without timed logging.
pub fn timing(label: &str) {
    let Some(file) = timing_file() else { return };
    let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as i128 * 1_000_000_000 + t.tv_nsec() as i128)
        .unwrap_or(0);
    let _ = (&*file).write_all(format!("{label} {now}\n").as_bytes());
}

/// The timing file, opened once per process: the VMM keeps writing to it
/// from a root where its path does not exist.
fn timing_file() -> Option<&'static File> {
    static FILE: std::sync::OnceLock<Option<File>> = std::sync::OnceLock::new();
    FILE.get_or_init(|| {
        let path = std::env::var_os(TIMING_ENV)?;
        OpenOptions::new().create(true).append(true).open(path).ok()
    })
    .as_ref()
}

/// The timing file's descriptor, for a process that closes the others.
pub fn timing_fd() -> Option<std::os::fd::RawFd> {
    use std::os::fd::AsRawFd;
    timing_file().map(|f| f.as_raw_fd())
}

/// An error and all its sources, joined with ": " (each printed once).
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        // Some foreign errors repeat their source in their own message.
        if !s.ends_with(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_lines_match_runc() {
        let l = format_line(Format::Json, Level::Error, "boom \"x\"", "2026-01-01T00:00:00.000000000Z");
        let v: serde_json::Value = serde_json::from_str(l.trim_end()).unwrap();
        assert_eq!(v["level"], "error");
        assert_eq!(v["msg"], "boom \"x\"");
        assert_eq!(v["time"], "2026-01-01T00:00:00.000000000Z");
        assert!(l.ends_with('\n') && !l.trim_end().contains('\n'));
    }

    #[test]
    fn text_lines_are_logfmt() {
        let l = format_line(Format::Text, Level::Warn, "a b", "T");
        assert_eq!(l, "time=\"T\" level=warning msg=\"a b\"\n");
    }

    #[test]
    fn chain_joins_sources_once() {
        #[derive(Debug, thiserror::Error)]
        #[error("outer")]
        struct Outer(#[source] std::io::Error);
        let e = Outer(std::io::Error::from_raw_os_error(libc::ENOENT));
        assert_eq!(chain(&e), format!("outer: {}", std::io::Error::from_raw_os_error(libc::ENOENT)));
    }
}
