//! `amphi bench`: the same workloads in both isolations (and, where they are
//! installed, in runc and crun), measured side by side with interleaved runs,
//! and reported as a table, JSON and a self-contained HTML page. The runs go
//! through the runtimes' command lines, exactly as a user's client would, so
//! the figures include everything a user waits for.

pub mod host;
pub mod hostmem;
pub mod model;
pub mod proc;
pub mod report;
pub mod runtime;
pub mod stats;
pub mod suite;
pub mod workspace;

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use model::{Group, Results, Settings, Subject};
use runtime::Runtime;
use suite::{Plan, Runner, Sizes};
use workspace::{Programs, Workspace, WorkspaceError};

/// Which suite to run.
#[derive(Debug, Clone, PartialEq)]
pub enum Suite {
    Standard,
    /// The standard steps at sizes small enough for CI under TCG.
    Quick,
    /// The lifecycle of a user's bundle's own process.
    Bundle(PathBuf),
}

/// What `amphi bench` was asked for.
#[derive(Debug, Clone)]
pub struct Options {
    /// The amphi binary measured (the running one).
    pub amphi: PathBuf,
    /// amphi's isolations to measure: Container, Vm, or both.
    pub isolations: Vec<Subject>,
    pub suite: Suite,
    pub runs: Option<u32>,
    pub warmup: Option<u32>,
    /// Peer runtimes (runc, crun) measured in the same run.
    pub compare: Vec<Subject>,
    pub density: Option<Vec<u32>>,
    /// Only these groups (all of the suite's when empty).
    pub only: Vec<Group>,
}

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("amphi bench creates containers: run it as root")]
    NotRoot,
    #[error("VM isolation cannot run on this host")]
    NoVm(#[source] crate::vm::host::HostError),
    #[error("{0} is not installed: install it (apt-get install {1}) or leave it out of --compare")]
    PeerMissing(&'static str, &'static str),
    #[error("--runs must be at least 1")]
    NoRuns,
    #[error("--density needs instance counts of at least 1")]
    BadDensity,
    #[error("--only {0} has nothing to measure for --bundle (it measures the bundle's lifecycle only)")]
    OnlyForBundle(&'static str),
    #[error("cannot make the benchmark's private mount namespace")]
    MountNamespace(#[source] nix::Error),
    #[error(transparent)]
    Workspace(#[from] WorkspaceError),
    #[error("interrupted: everything the run created was removed")]
    Interrupted,
}

impl BenchError {
    pub fn exit_code(&self) -> u8 {
        match self {
            BenchError::NotRoot | BenchError::NoVm(_) => crate::exit::UNSUPPORTED,
            BenchError::PeerMissing(..) => crate::exit::NOT_FOUND,
            BenchError::NoRuns | BenchError::BadDensity | BenchError::OnlyForBundle(_) => crate::exit::USAGE,
            BenchError::Workspace(WorkspaceError::Missing { .. } | WorkspaceError::NotStatic { .. }) => {
                crate::exit::NOT_FOUND
            }
            BenchError::Workspace(_) | BenchError::MountNamespace(_) => crate::exit::GENERAL,
            // 128 + SIGINT, as a shell reports an interrupted program.
            BenchError::Interrupted => 130,
        }
    }
}

extern "C" fn on_signal(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    proc::INTERRUPTED.store(true, Ordering::Relaxed);
}

/// The plan for these options.
pub fn plan(opts: &Options) -> Result<Plan, BenchError> {
    let quick = opts.suite == Suite::Quick;
    let own_process = matches!(opts.suite, Suite::Bundle(_));
    let runs = opts.runs.unwrap_or(if quick { 3 } else { 5 });
    if runs == 0 {
        return Err(BenchError::NoRuns);
    }
    let density = opts.density.clone().unwrap_or_else(|| if quick { vec![1, 2] } else { vec![1, 5, 10, 20] });
    if density.is_empty() || density.contains(&0) {
        return Err(BenchError::BadDensity);
    }
    let groups: Vec<Group> = if own_process {
        if let Some(g) = opts.only.iter().find(|g| **g != Group::Lifecycle) {
            return Err(BenchError::OnlyForBundle(g.title()));
        }
        vec![Group::Lifecycle]
    } else if opts.only.is_empty() {
        Group::ALL.to_vec()
    } else {
        Group::ALL.iter().copied().filter(|g| opts.only.contains(g)).collect()
    };
    Ok(Plan {
        sizes: if quick { Sizes::quick() } else { Sizes::standard() },
        runs,
        warmup: opts.warmup.unwrap_or(1),
        density,
        groups,
        own_process,
    })
}

/// Runs the benchmark. Everything it creates (containers, mounts, the
/// network namespace, files) is gone when it returns, whatever the outcome.
pub fn run(opts: &Options) -> Result<Results, BenchError> {
    if !nix::unistd::geteuid().is_root() {
        return Err(BenchError::NotRoot);
    }
    let plan = plan(opts)?;
    let mut warnings = Vec::new();
    let mut subjects: Vec<Subject> = opts.isolations.clone();
    if subjects.contains(&Subject::Vm) {
        if let Err(e) =
            crate::vm::host::check(&crate::vm::host::SystemHost, Path::new(crate::vm::host::DEFAULT_KVM_PATH))
        {
            if subjects.len() == 1 {
                return Err(BenchError::NoVm(e));
            }
            warnings.push(format!("VM isolation is not measured: {e}"));
            subjects.retain(|s| *s != Subject::Vm);
        }
    }
    let mut runtimes_for_peers = Vec::new();
    for &peer in &opts.compare {
        if peer == Subject::QemuMicrovm && !subjects.contains(&Subject::Vm) {
            warnings.push(
                "QEMU microvm is compared with amphi's VMM only: VM isolation is not measured, so it is left out"
                    .into(),
            );
            continue;
        }
        match runtime::peer_program(peer) {
            Some(p) => runtimes_for_peers.push((peer, p)),
            None => {
                let (name, package) = match peer {
                    Subject::Runc => ("runc", "runc"),
                    Subject::Crun => ("crun", "crun"),
                    _ => ("qemu-system-x86_64", "qemu-system-x86"),
                };
                return Err(BenchError::PeerMissing(name, package));
            }
        }
    }
    private_mounts(opts.compare.contains(&Subject::Crun), &mut warnings)?;
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // Failing to catch Ctrl-C only loses the orderly cleanup on it.
        let _ = vmm_sys_util::signal::register_signal_handler(sig, on_signal);
    }
    let _lock = match host::lock() {
        Ok(Some(l)) => Some(l),
        Ok(None) => {
            warnings.push("another amphi bench is running: both runs' figures are disturbed".into());
            None
        }
        Err(_) => None,
    };
    let facts = host::facts();
    warnings.extend(host::busy_warnings(&facts));
    let started_unix =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);

    let mut ws = match &opts.suite {
        Suite::Bundle(b) => Workspace::for_bundle(b)?,
        _ => Workspace::standard(&Programs::find(&opts.amphi)?)?,
    };
    let mut rts = Vec::new();
    for &s in &subjects {
        ws.prepare(s)?;
        rts.push(Runtime::new(s, opts.amphi.clone(), ws.dir.join("state").join(format!("{s:?}").to_lowercase())));
    }
    for (peer, program) in runtimes_for_peers {
        // QEMU boots a bare guest: no bundle.
        if peer != Subject::QemuMicrovm {
            ws.prepare(peer)?;
        }
        rts.push(Runtime::new(peer, program, ws.dir.join("state").join(format!("{peer:?}").to_lowercase())));
        subjects.push(peer);
    }
    for w in &warnings {
        eprintln!("bench: warning: {w}");
    }
    eprintln!(
        "bench: {} with {}; {} runs after {} warm-up, interleaved",
        plan.groups.iter().map(|g| g.title()).collect::<Vec<_>>().join(", "),
        subjects.iter().map(|s| s.label()).collect::<Vec<_>>().join(", "),
        plan.runs,
        plan.warmup
    );
    let mut runner = Runner::new(&mut ws, &rts, &plan);
    let outcome = runner.run();
    runner.sweep();
    let mut steps = std::mem::take(&mut runner.steps);
    // Rounds rotate the subjects; the report lists them in a fixed order.
    for step in &mut steps {
        step.series.sort_by_key(|s| (s.x, s.subject));
    }
    drop(runner);
    warnings.append(&mut ws.warnings);
    drop(ws);
    if outcome.is_err() || proc::INTERRUPTED.load(Ordering::Relaxed) {
        return Err(BenchError::Interrupted);
    }
    Ok(Results {
        schema: model::SCHEMA,
        amphi_version: env!("CARGO_PKG_VERSION").to_string(),
        started_unix,
        host: facts,
        settings: Settings {
            suite: match &opts.suite {
                Suite::Standard => "standard".into(),
                Suite::Quick => "quick".into(),
                Suite::Bundle(_) => "bundle".into(),
            },
            bundle: match &opts.suite {
                Suite::Bundle(b) => Some(b.display().to_string()),
                _ => None,
            },
            subjects,
            runs: plan.runs,
            warmup: plan.warmup,
            density: if plan.groups.contains(&Group::Density) { plan.density.clone() } else { Vec::new() },
        },
        warnings,
        steps,
    })
}

/// Moves the benchmark into a mount namespace of its own (receiving the
/// host's mounts, never sending): its overlays and the network namespace's
/// mount vanish with it even after a kill -9. crun 1.8 refuses a hybrid
/// cgroup host whose cgroup2 mount holds a controller, so there the
/// cgroup2's controller list is masked too, for every subject alike.
fn private_mounts(crun: bool, warnings: &mut Vec<String>) -> Result<(), BenchError> {
    use nix::mount::{mount, MsFlags};
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).map_err(BenchError::MountNamespace)?;
    mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_SLAVE, None::<&str>)
        .map_err(BenchError::MountNamespace)?;
    let controllers = Path::new("/sys/fs/cgroup/unified/cgroup.controllers");
    let busy = std::fs::read_to_string(controllers).map(|s| !s.trim().is_empty()).unwrap_or(false);
    if crun && busy {
        mount(Some("/dev/null"), controllers, None::<&str>, MsFlags::MS_BIND, None::<&str>)
            .map_err(BenchError::MountNamespace)?;
        warnings.push(
            "crun 1.8 refuses this hybrid cgroup host: the run masks /sys/fs/cgroup/unified/cgroup.controllers for every subject".into(),
        );
    }
    Ok(())
}

/// Whether any series failed (the command then exits non-zero).
pub fn any_failed(results: &Results) -> bool {
    results.steps.iter().flat_map(|s| &s.series).any(|s| s.error.is_some())
}
