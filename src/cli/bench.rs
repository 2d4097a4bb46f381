//! `amphi bench`'s arguments.

use std::path::PathBuf;

use clap::{Args, ValueEnum};

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// The workloads: the standard suite, or the same steps at CI sizes.
    #[arg(long, value_enum, default_value_t = SuiteArg::Standard)]
    pub suite: SuiteArg,

    /// Time this bundle's own process (create, start, exit, delete) instead
    /// of the suite's workloads; its rootfs is never written.
    #[arg(long, value_name = "DIR", conflicts_with = "suite")]
    pub bundle: Option<PathBuf>,

    /// Measured runs per subject [default: 5, quick: 3].
    #[arg(long, value_name = "N")]
    pub runs: Option<u32>,

    /// Runs per subject done first and dropped.
    #[arg(long, value_name = "N")]
    pub warmup: Option<u32>,

    /// Peers measured in the same run: runc and crun beside container
    /// isolation, QEMU microvm booting the same guest beside amphi's VMM.
    #[arg(long, value_enum, value_delimiter = ',', value_name = "runc,crun,qemu")]
    pub compare: Vec<PeerArg>,

    /// Instance counts of the density step [default: 1,5,10,20; quick: 1,2].
    #[arg(long, value_delimiter = ',', value_name = "N,...")]
    pub density: Option<Vec<u32>>,

    /// Only these groups of the suite.
    #[arg(long, value_enum, value_delimiter = ',', value_name = "GROUP,...")]
    pub only: Vec<GroupArg>,

    /// Write the results, raw samples included, as JSON.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,

    /// Write a self-contained HTML report with charts.
    #[arg(long, value_name = "FILE")]
    pub html: Option<PathBuf>,

    /// Measure nothing: print the table (and write --html) of the results
    /// a run wrote with --json.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["bundle", "runs", "warmup", "compare", "density", "only", "json"])]
    pub from: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SuiteArg {
    Standard,
    Quick,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PeerArg {
    Runc,
    Crun,
    Qemu,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum GroupArg {
    Lifecycle,
    Boot,
    Cpu,
    Syscall,
    Spawn,
    FileIo,
    Memory,
    Density,
    Network,
}
