//! `amphi bench`: arguments -> `amphi::bench::run`, then the table on
//! stdout and the files asked for.

use amphi::bench::model::{Group, Subject};
use amphi::bench::{Options, Suite};
use anyhow::Context;

use crate::cli::bench::{BenchArgs, GroupArg, PeerArg, SuiteArg};
use crate::cli::{GlobalArgs, IsolationArg};

pub fn run(global: &GlobalArgs, a: BenchArgs) -> anyhow::Result<u8> {
    let isolations = match global.isolation {
        Some(IsolationArg::Container) => vec![Subject::Container],
        Some(IsolationArg::Vm) => vec![Subject::Vm],
        Some(IsolationArg::Both) | None => vec![Subject::Container, Subject::Vm],
    };
    let opts = Options {
        amphi: std::env::current_exe().context("finding the amphi binary")?,
        isolations,
        suite: match (a.bundle, a.suite) {
            (Some(b), _) => Suite::Bundle(b),
            (None, SuiteArg::Standard) => Suite::Standard,
            (None, SuiteArg::Quick) => Suite::Quick,
        },
        runs: a.runs,
        warmup: a.warmup,
        compare: a
            .compare
            .iter()
            .map(|p| match p {
                PeerArg::Runc => Subject::Runc,
                PeerArg::Crun => Subject::Crun,
                PeerArg::Qemu => Subject::QemuMicrovm,
            })
            .collect(),
        density: a.density,
        only: a.only.iter().map(|g| group(*g)).collect(),
    };
    let results = match &a.from {
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            serde_json::from_str(&text)
                .with_context(|| format!("{} is not the JSON of an amphi bench run (--json)", path.display()))?
        }
        None => amphi::bench::run(&opts)?,
    };
    print!("{}", amphi::bench::report::table(&results));
    if let Some(path) = &a.json {
        let text = serde_json::to_string_pretty(&results).context("encoding the results")?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
        eprintln!("bench: results in {}", path.display());
    }
    if let Some(path) = &a.html {
        let page = amphi::bench::report::html(&results).context("making the HTML report")?;
        std::fs::write(path, page).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("bench: report in {}", path.display());
    }
    if amphi::bench::any_failed(&results) {
        eprintln!("bench: some runs failed: their figures are not reported (see \"failed\" above)");
        return Ok(amphi::exit::GENERAL);
    }
    Ok(0)
}

fn group(g: GroupArg) -> Group {
    match g {
        GroupArg::Lifecycle => Group::Lifecycle,
        GroupArg::Boot => Group::Boot,
        GroupArg::Cpu => Group::Cpu,
        GroupArg::Syscall => Group::Syscall,
        GroupArg::Spawn => Group::Spawn,
        GroupArg::FileIo => Group::FileIo,
        GroupArg::Memory => Group::Memory,
        GroupArg::Density => Group::Density,
        GroupArg::Network => Group::Network,
    }
}
