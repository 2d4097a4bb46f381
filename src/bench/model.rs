//! The results of one `amphi bench` run, as they are written to `--json` and
//! read back by the report. Everything a reader needs to judge a figure is
//! here: the raw samples (never only a summary), the host it ran on and the
//! settings, so that a report can be regenerated or compared later.

use serde::{Deserialize, Serialize};

/// The version of this JSON layout; raised when a field changes meaning.
pub const SCHEMA: u32 = 1;

/// One whole run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Results {
    pub schema: u32,
    /// `amphi --version`'s number.
    pub amphi_version: String,
    /// When the run started, seconds since the Unix epoch.
    pub started_unix: u64,
    pub host: HostFacts,
    pub settings: Settings,
    /// Warnings about the run as a whole (a busy host, a peer not installed).
    pub warnings: Vec<String>,
    pub steps: Vec<Step>,
}

/// What the figures depend on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostFacts {
    pub cpu_model: String,
    pub cpus: usize,
    pub kernel: String,
    pub memory_mib: u64,
    /// The host is itself a virtual machine (the CPU's hypervisor flag), so
    /// VM isolation runs nested.
    pub nested: bool,
    /// /dev/kvm exists and can be opened.
    pub kvm: bool,
    /// The 1-minute load average when the run started.
    pub load_average: f64,
}

/// How the run was asked for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    /// "standard", "quick", or "bundle" for `--bundle`.
    pub suite: String,
    /// The bundle of `--bundle`.
    pub bundle: Option<String>,
    /// The subjects measured, in the order they were interleaved.
    pub subjects: Vec<Subject>,
    pub runs: u32,
    pub warmup: u32,
    /// The instance counts of the density step.
    pub density: Vec<u32>,
}

/// Who ran a sample: amphi in one of its isolations, or a peer runtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Subject {
    /// amphi, container isolation: the baseline every ratio is taken against.
    Container,
    /// amphi, VM isolation.
    Vm,
    Runc,
    Crun,
    /// QEMU's microvm machine booting amphi's guest (the boot step only).
    QemuMicrovm,
}

impl Subject {
    /// The name shown in tables and charts.
    pub fn label(self) -> &'static str {
        match self {
            Subject::Container => "amphi container",
            Subject::Vm => "amphi vm",
            Subject::Runc => "runc",
            Subject::Crun => "crun",
            Subject::QemuMicrovm => "qemu microvm",
        }
    }
}

/// The groups of the standard suite, in report order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Group {
    Lifecycle,
    /// A bare guest booted to the agent: amphi's VMM against QEMU microvm.
    Boot,
    Cpu,
    Syscall,
    Spawn,
    FileIo,
    Memory,
    Density,
    Network,
}

impl Group {
    /// Every group, in suite and report order.
    pub const ALL: [Group; 9] = [
        Group::Lifecycle,
        Group::Boot,
        Group::Cpu,
        Group::Syscall,
        Group::Spawn,
        Group::FileIo,
        Group::Memory,
        Group::Density,
        Group::Network,
    ];

    pub fn title(self) -> &'static str {
        match self {
            Group::Lifecycle => "Lifecycle",
            Group::Boot => "Boot to the guest agent",
            Group::Cpu => "CPU-bound",
            Group::Syscall => "System calls",
            Group::Spawn => "Process spawn",
            Group::FileIo => "File I/O",
            Group::Memory => "Memory",
            Group::Density => "Density",
            Group::Network => "Network",
        }
    }
}

/// The unit of a step's samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Unit {
    Milliseconds,
    Microseconds,
    Nanoseconds,
    Mib,
    MibPerSecond,
}

impl Unit {
    pub fn symbol(self) -> &'static str {
        match self {
            Unit::Milliseconds => "ms",
            Unit::Microseconds => "µs",
            Unit::Nanoseconds => "ns",
            Unit::Mib => "MiB",
            Unit::MibPerSecond => "MiB/s",
        }
    }

    /// Whether a smaller number is the better one.
    pub fn lower_is_better(self) -> bool {
        !matches!(self, Unit::MibPerSecond)
    }
}

/// One measured figure (say "lifecycle.create"), for every subject.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Step {
    /// Stable dotted name: "<group>.<figure>".
    pub id: String,
    pub group: Group,
    /// What it is, in words ("create returns").
    pub title: String,
    pub unit: Unit,
    pub series: Vec<Series>,
}

/// The samples of one subject for one step (and, for density, one count).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Series {
    pub subject: Subject,
    /// The x value where the step is a curve: the instance count of the
    /// density step. None elsewhere.
    pub x: Option<u32>,
    /// The kept samples, in the order they were taken (warm-up excluded).
    pub samples: Vec<f64>,
    /// Set when a run failed: the series is then not reported as a figure,
    /// and this says which run and why.
    pub error: Option<String>,
}
