//! Argument parsing: one subcommand per workload and its positional
//! arguments. Plain matching instead of clap keeps the binary small and
//! static, and the grammar is a handful of fixed positions.
//!
//! Counts are bounded here so the workloads can multiply them without
//! overflow checks: at most `u32::MAX` operations, at most 1 TiB of memory
//! or file data.

use std::fmt;
use std::path::PathBuf;

pub const USAGE: &str = "\
usage: amphi-workload WORKLOAD [ARGS]
  ready              print `ready` and exit
  idle               print `ready`, then sleep until SIGTERM or SIGINT
  cpu N              N units (~100 ms each) of integer mixing: cpu_ms, cpu_checksum
  syscalls N         N x getpid, open+close, stat of /etc/passwd: getpid_ns, open_close_ns, stat_ns
  spawn N            N x fork+exec of /bin/true: spawn_us
  files N DIR        create, stat, remove N 4 KiB files in DIR: small_create_ms, small_stat_ms, small_remove_ms
  seq MIB DIR        write, fsync, drop from cache, read MIB MiB in DIR: seq_write_mibps, seq_read_mibps
  memory MIB         map, touch every 4 KiB page of, unmap MIB MiB, 3 rounds: memory_touch_ms
  serve PORT         TCP server on 0.0.0.0:PORT (first byte T: throughput, P: ping-pong)
Output lines are `ready` or `result NAME VALUE`; an error is one line on stderr and exit 1.
";

/// The largest MiB argument (1 TiB): far beyond any benchmark, and keeps
/// byte counts well inside u64 and usize.
const MAX_MIB: u64 = 1 << 20;

#[derive(Debug, PartialEq, Eq)]
pub enum Workload {
    Ready,
    Idle,
    Cpu { n: u64 },
    Syscalls { n: u64 },
    Spawn { n: u64 },
    Files { n: u64, dir: PathBuf },
    Seq { mib: u64, dir: PathBuf },
    Memory { mib: u64 },
    Serve { port: u16 },
}

impl Workload {
    /// The subcommand, to prefix error messages with.
    pub fn name(&self) -> &'static str {
        match self {
            Workload::Ready => "ready",
            Workload::Idle => "idle",
            Workload::Cpu { .. } => "cpu",
            Workload::Syscalls { .. } => "syscalls",
            Workload::Spawn { .. } => "spawn",
            Workload::Files { .. } => "files",
            Workload::Seq { .. } => "seq",
            Workload::Memory { .. } => "memory",
            Workload::Serve { .. } => "serve",
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    Help,
    Run(Workload),
}

/// A usage error: says what was wrong and the expected form, on one line.
#[derive(Debug, PartialEq, Eq)]
pub struct UsageError(String);

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}; amphi-workload --help lists the workloads", self.0)
    }
}

/// Parses the arguments after the program name.
pub fn parse(args: &[String]) -> Result<Parsed, UsageError> {
    let Some((cmd, rest)) = args.split_first() else {
        return Err(UsageError("no workload given".into()));
    };
    let rest: Vec<&str> = rest.iter().map(String::as_str).collect();
    let form = |expected: &str| {
        if rest.len() == expected.split_whitespace().count() - 1 {
            Ok(())
        } else {
            Err(UsageError(format!("usage: amphi-workload {expected}; got {} argument(s) after {cmd}", rest.len())))
        }
    };
    let workload = match cmd.as_str() {
        "-h" | "--help" | "help" => return Ok(Parsed::Help),
        "ready" => form("ready").map(|_| Workload::Ready)?,
        "idle" => form("idle").map(|_| Workload::Idle)?,
        "cpu" => {
            form("cpu N")?;
            Workload::Cpu { n: count("N", rest[0])? }
        }
        "syscalls" => {
            form("syscalls N")?;
            Workload::Syscalls { n: count("N", rest[0])? }
        }
        "spawn" => {
            form("spawn N")?;
            Workload::Spawn { n: count("N", rest[0])? }
        }
        "files" => {
            form("files N DIR")?;
            Workload::Files { n: count("N", rest[0])?, dir: dir(rest[1])? }
        }
        "seq" => {
            form("seq MIB DIR")?;
            Workload::Seq { mib: mib(rest[0])?, dir: dir(rest[1])? }
        }
        "memory" => {
            form("memory MIB")?;
            Workload::Memory { mib: mib(rest[0])? }
        }
        "serve" => {
            form("serve PORT")?;
            Workload::Serve { port: port(rest[0])? }
        }
        other => return Err(UsageError(format!("unknown workload {other:?}"))),
    };
    Ok(Parsed::Run(workload))
}

fn bounded(what: &str, s: &str, max: u64) -> Result<u64, UsageError> {
    match s.parse::<u64>() {
        Ok(v) if (1..=max).contains(&v) => Ok(v),
        _ => Err(UsageError(format!("{what} must be an integer from 1 to {max}, got {s:?}"))),
    }
}

fn count(what: &str, s: &str) -> Result<u64, UsageError> {
    bounded(what, s, u32::MAX.into())
}

fn mib(s: &str) -> Result<u64, UsageError> {
    bounded("MIB", s, MAX_MIB)
}

fn port(s: &str) -> Result<u16, UsageError> {
    // Port 0 would pick a random port the harness could not learn.
    bounded("PORT", s, u16::MAX.into()).map(|p| p as u16)
}

fn dir(s: &str) -> Result<PathBuf, UsageError> {
    if s.is_empty() {
        return Err(UsageError("DIR must not be empty".into()));
    }
    Ok(PathBuf::from(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(args: &[&str]) -> Result<Parsed, UsageError> {
        parse(&args.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    fn run(args: &[&str]) -> Workload {
        match p(args) {
            Ok(Parsed::Run(w)) => w,
            other => panic!("{args:?} parsed as {other:?}"),
        }
    }

    fn err(args: &[&str]) -> String {
        match p(args) {
            Err(e) => e.to_string(),
            other => panic!("{args:?} parsed as {other:?}"),
        }
    }

    #[test]
    fn every_workload_parses() {
        assert_eq!(run(&["ready"]), Workload::Ready);
        assert_eq!(run(&["idle"]), Workload::Idle);
        assert_eq!(run(&["cpu", "3"]), Workload::Cpu { n: 3 });
        assert_eq!(run(&["syscalls", "1000"]), Workload::Syscalls { n: 1000 });
        assert_eq!(run(&["spawn", "10"]), Workload::Spawn { n: 10 });
        assert_eq!(run(&["files", "100", "/tmp/x"]), Workload::Files { n: 100, dir: "/tmp/x".into() });
        assert_eq!(run(&["seq", "64", "/data"]), Workload::Seq { mib: 64, dir: "/data".into() });
        assert_eq!(run(&["memory", "256"]), Workload::Memory { mib: 256 });
        assert_eq!(run(&["serve", "5201"]), Workload::Serve { port: 5201 });
        assert_eq!(p(&["--help"]), Ok(Parsed::Help));
    }

    #[test]
    fn names_match_the_subcommands() {
        for args in [&["ready"][..], &["cpu", "1"], &["files", "1", "d"], &["serve", "1"]] {
            assert_eq!(run(args).name(), args[0]);
        }
    }

    #[test]
    fn bad_counts_are_refused_with_the_range() {
        assert!(err(&["cpu", "0"]).contains("N must be an integer from 1 to 4294967295, got \"0\""));
        assert!(err(&["cpu", "-1"]).contains("got \"-1\""));
        assert!(err(&["cpu", "1.5"]).contains("got \"1.5\""));
        assert!(err(&["spawn", "4294967296"]).contains("from 1 to 4294967295"));
        assert!(err(&["memory", "1048577"]).contains("MIB must be an integer from 1 to 1048576"));
        assert!(err(&["serve", "0"]).contains("PORT must be an integer from 1 to 65535"));
        assert!(err(&["serve", "65536"]).contains("PORT"));
        assert!(err(&["files", "1", ""]).contains("DIR must not be empty"));
    }

    #[test]
    fn wrong_argument_counts_show_the_form() {
        assert!(err(&[]).contains("no workload given"));
        assert!(err(&["cpu"]).contains("usage: amphi-workload cpu N; got 0 argument(s) after cpu"));
        assert!(err(&["ready", "x"]).contains("usage: amphi-workload ready; got 1"));
        assert!(err(&["files", "10"]).contains("usage: amphi-workload files N DIR"));
        assert!(err(&["seq", "1", "d", "e"]).contains("usage: amphi-workload seq MIB DIR; got 3"));
        assert!(err(&["fly"]).contains("unknown workload \"fly\""));
    }

    #[test]
    fn usage_errors_are_one_line() {
        assert!(!err(&["cpu", "x"]).contains('\n'));
    }
}
