//! The figures in words, for someone choosing between the isolations who
//! will not read a table. Every sentence is computed from the run and says
//! only what was measured: a step that is missing or failed for either side
//! of a comparison gives no sentence rather than a guess.

use super::super::model::{Group, Results, Step, Subject, Unit};
use super::super::stats::{find, worse_factor};
use super::{against_container, number, times};

pub fn plain_summary(results: &Results) -> Vec<String> {
    let step = |id: &str| results.steps.iter().find(|s| s.id == id);
    let mut out = Vec::new();

    if let Some(total) = step("lifecycle.total") {
        if let Some((vm, c)) = against_container(total, Subject::Vm, None) {
            out.push(format!(
                "A VM container goes through a whole lifecycle (create, start, run, delete) in {} (median), {} a container's {}.",
                value(vm.median, total.unit),
                times(vm.median / c.median),
                value(c.median, total.unit)
            ));
        }
        let peers: Vec<String> = [Subject::Runc, Subject::Crun]
            .into_iter()
            .filter_map(|peer| {
                let (p, c) = against_container(total, peer, None)?;
                let (v, r) = (value(p.median, total.unit), times(p.median / c.median));
                Some(format!("{} takes {v} ({r} amphi container's)", peer.label()))
            })
            .collect();
        if !peers.is_empty() {
            out.push(format!("For the same lifecycle, {}.", peers.join(" and ")));
        }
    }

    // The boot step has no container side: amphi's VMM is compared with QEMU.
    if let Some(boot) = step("boot.agent_listening") {
        let amphi = find(boot, Subject::Vm, None);
        let qemu = find(boot, Subject::QemuMicrovm, None);
        match (amphi, qemu) {
            (Some(a), Some(q)) if q.median > 0.0 => out.push(format!(
                "amphi's VMM boots the guest to its agent in {} (median), {} QEMU microvm's {}.",
                value(a.median, boot.unit),
                times(a.median / q.median),
                value(q.median, boot.unit)
            )),
            (Some(a), _) => out
                .push(format!("amphi's VMM boots the guest to its agent in {} (median).", value(a.median, boot.unit))),
            _ => {}
        }
    }

    for s in results.steps.iter().filter(|s| s.group == Group::Cpu) {
        if let Some(f) = vm_factor(s, None) {
            let what = format!("CPU-bound work ({})", short_name(s));
            out.push(format!("{what} runs at {} container speed in a VM.", times(1.0 / f)));
        }
    }

    if let Some((vm, c)) = step("memory.pss").and_then(|s| against_container(s, Subject::Vm, None)) {
        out.push(format!(
            "Each idle VM instance costs {} of host memory (PSS) against {} for a container.",
            value(vm.median, Unit::Mib),
            value(c.median, Unit::Mib)
        ));
    }

    for group in [Group::Syscall, Group::Spawn, Group::FileIo, Group::Memory, Group::Network] {
        let parts: Vec<String> = results
            .steps
            .iter()
            .filter(|s| s.group == group && s.id != "memory.pss")
            .filter_map(|s| Some(format!("{} {}", short_name(s), phrase(s.unit, vm_factor(s, None)?))))
            .collect();
        if !parts.is_empty() {
            out.push(format!("{} in a VM, against a container: {}.", group.title(), parts.join(", ")));
        }
    }

    for s in results.steps.iter().filter(|s| s.group == Group::Density) {
        // The largest count both sides reached says the most about density.
        let Some((n, vm, c)) = s
            .series
            .iter()
            .filter_map(|series| series.x)
            .filter_map(|n| against_container(s, Subject::Vm, Some(n)).map(|(vm, c)| (n, vm, c)))
            .max_by_key(|(n, _, _)| *n)
        else {
            continue;
        };
        let (vm, c) = (value(vm.median, s.unit), value(c.median, s.unit));
        out.push(match s.unit {
            Unit::Mib => format!(
                "With {n} instances running, each VM instance costs {vm} of host memory against {c} per container."
            ),
            _ => format!("With {n} instances, {}: {vm} for VMs against {c} for containers.", s.title),
        });
    }

    let vm_measured = results.steps.iter().flat_map(|s| &s.series).any(|s| s.subject == Subject::Vm);
    if results.host.nested && vm_measured {
        out.push(
            "VMs ran nested (this host is itself a virtual machine), so VM figures are slower than on bare metal."
                .to_string(),
        );
    }
    out
}

/// How many times worse a VM is than a container in `step` (> 1: worse).
fn vm_factor(step: &Step, x: Option<u32>) -> Option<f64> {
    let (vm, c) = against_container(step, Subject::Vm, x)?;
    worse_factor(step.unit, vm.median, c.median)
}

/// A worse-factor in words that hold for its unit: memory is "more", time
/// and throughput are "slower" or "faster".
fn phrase(unit: Unit, factor: f64) -> String {
    if (factor - 1.0).abs() < 0.03 {
        "about the same".to_string()
    } else if unit == Unit::Mib {
        format!("{} the memory", times(factor))
    } else if factor > 1.0 {
        format!("{} slower", times(factor))
    } else {
        format!("{} faster", times(1.0 / factor))
    }
}

fn short_name(step: &Step) -> &str {
    step.id.split_once('.').map_or(&step.id, |(_, name)| name)
}

fn value(v: f64, unit: Unit) -> String {
    format!("{} {}", number(v), unit.symbol())
}

#[cfg(test)]
mod tests {
    use super::super::fixture;
    use super::*;

    fn sentence(all: &[String], start: &str) -> String {
        all.iter().find(|s| s.starts_with(start)).unwrap_or_else(|| panic!("no {start:?} in {all:#?}")).clone()
    }

    #[test]
    fn sentences_quote_medians_and_ratios() {
        let all = plain_summary(&fixture());
        // Medians 432 ms against 41.22 ms.
        assert!(sentence(&all, "A VM container").contains("in 432 ms (median), 10x a container's 41.2 ms."));
        let peers = sentence(&all, "For the same lifecycle");
        assert!(peers.contains("runc takes 46.5 ms (1.13x amphi container's) and crun takes 25.0 ms"), "{peers}");
        // 1024 ms in a VM against 1012.1 ms: slightly slower, so just under 1.
        assert_eq!(sentence(&all, "CPU-bound work"), "CPU-bound work (compute) runs at 0.99x container speed in a VM.");
        assert!(sentence(&all, "Each idle VM").contains("costs 90.9 MiB of host memory (PSS) against 0.41 MiB"));
        assert!(sentence(&all, "With 10 instances running").contains("92.1 MiB of host memory against 0.43 MiB"));
        assert!(sentence(&all, "System calls in a VM").contains("getpid 1.30x slower"));
    }

    #[test]
    fn higher_is_better_is_worded_the_right_way_round() {
        // 885 MiB/s in a VM against 1433.5 MiB/s: fewer MiB/s is slower.
        let all = plain_summary(&fixture());
        assert!(sentence(&all, "File I/O in a VM").contains("seq_write 1.62x slower"));
        let mut r = fixture();
        let vm = r.steps.iter_mut().find(|s| s.id == "fileio.seq_write").unwrap();
        vm.series.iter_mut().filter(|s| s.subject == Subject::Vm).for_each(|s| s.samples = vec![2867.0]);
        assert!(sentence(&plain_summary(&r), "File I/O in a VM").contains("seq_write 2.0x faster"));
    }

    #[test]
    fn failed_or_missing_data_gives_no_sentence() {
        let mut r = fixture();
        r.host.nested = false;
        let cpu = r.steps.iter_mut().find(|s| s.id == "cpu.compute").unwrap();
        cpu.series.iter_mut().filter(|s| s.subject == Subject::Container).for_each(|s| s.error = Some("oom".into()));
        r.steps.retain(|s| s.group != Group::Density);
        let all = plain_summary(&r);
        assert!(all.iter().all(|s| !s.contains("CPU-bound") && !s.contains("nested") && !s.contains("instances")));
        assert!(sentence(&plain_summary(&fixture()), "VMs ran nested").contains("bare metal"));
    }

    #[test]
    fn the_boot_sentence_compares_the_vmms() {
        use super::super::super::model::{Series, Step};
        let mut r = fixture();
        let series = |subject, samples: Vec<f64>| Series { subject, x: None, samples, error: None };
        r.steps.push(Step {
            id: "boot.agent_listening".into(),
            group: Group::Boot,
            title: "VMM launched to the agent listening".into(),
            unit: Unit::Milliseconds,
            series: vec![series(Subject::Vm, vec![400.0, 420.0, 410.0]), series(Subject::QemuMicrovm, vec![820.0])],
        });
        let s = sentence(&plain_summary(&r), "amphi's VMM boots");
        assert_eq!(s, "amphi's VMM boots the guest to its agent in 410 ms (median), 0.50x QEMU microvm's 820 ms.");
        r.steps.last_mut().unwrap().series[1].error = Some("no vhost-vsock".into());
        let s = sentence(&plain_summary(&r), "amphi's VMM boots");
        assert_eq!(s, "amphi's VMM boots the guest to its agent in 410 ms (median).");
    }
}
