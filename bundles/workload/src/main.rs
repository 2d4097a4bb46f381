//! `amphi-workload`: the program `amphi bench` runs inside its benchmark
//! containers and VMs.
//!
//! The same static binary runs under every isolation, so the numbers compare
//! the isolation and not the workload: it needs nothing from the rootfs but
//! a busybox-static `/bin/true` and `/etc/passwd`. Each subcommand is one
//! workload that measures itself from the inside and reports on stdout in a
//! line protocol the harness parses (`ready`, `result <name> <value>`, see
//! [`output`]); on any error it writes one line to stderr naming what failed
//! and exits 1, so a broken run is never mistaken for a slow one.

mod cli;
mod output;
mod serve;
mod workloads;

use cli::Workload;
use output::Failure;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let workload = match cli::parse(&args) {
        Ok(cli::Parsed::Help) => {
            print!("{}", cli::USAGE);
            return;
        }
        Ok(cli::Parsed::Run(w)) => w,
        Err(e) => {
            eprintln!("amphi-workload: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = run(&workload) {
        eprintln!("amphi-workload: {}: {e}", workload.name());
        std::process::exit(1);
    }
}

fn run(workload: &Workload) -> Result<(), Failure> {
    match workload {
        Workload::Ready => output::ready(),
        Workload::Idle => serve::idle(),
        Workload::Serve { port } => serve::serve(*port),
        Workload::Cpu { n } => output::results(&workloads::cpu(*n)?),
        Workload::Syscalls { n } => output::results(&workloads::syscalls(*n)?),
        Workload::Spawn { n } => output::results(&workloads::spawn(*n)?),
        Workload::Files { n, dir } => output::results(&workloads::files(*n, dir)?),
        Workload::Seq { mib, dir } => output::results(&workloads::seq(*mib, dir)?),
        Workload::Memory { mib } => output::results(&workloads::memory(*mib)?),
    }
}
