//! `amphi update` on a running VM. The guest's cgroup gets every change
//! (through the agent); the VMM's host cgroup gets the CPU settings, which
//! throttle the vCPU threads, and a memory limit that follows what the VM
//! may still hold. Neither vCPUs nor guest RAM change while the VM runs
//! (no hotplug): a lower memory limit takes RAM back through the balloon
//! ([`plan::balloon_target_mib`]), and a limit past what the boot size
//! leaves the workload stays with the guest's cgroup alone.
//!
//! The host limit is [`plan::host_limit_mib`] of what the balloon leaves,
//! written in the order that keeps the host's OOM killer away from a VMM
//! whose guest does as it is asked:
//! - a limit that does not go down (higher, or none): the host first, then
//!   the guest, so the guest never holds more than the host allows;
//! - a limit that goes down: the guest's cgroup and the balloon first, then
//!   the host once the VMM's memory fits under it ([`fits`], polled while
//!   the guest keeps giving memory back: [`RETURN_DEADLINE`] without any,
//!   [`RETURN_MAX`] in all).
//!
//! A container created without a memory limit has none on the host either;
//! `update --memory` adds one, as runc does for a container, so the host
//! limit always follows the last memory update.
//!
//! The steps go through [`LiveVm`], so the order and the wait are tested
//! without a VM.

use std::time::{Duration, Instant};

use oci_spec::runtime::{LinuxMemory, LinuxResources};

use super::plan;
use super::VmError;
use crate::vm::vmm::api::VmmStats;

/// How long `update` waits for a guest that gives nothing more back of
/// what a lower memory limit asks through the balloon. Linux inflates
/// 1 MiB at a time, each step acknowledged by the VMM: hundreds of MiB take
/// well under a second on a guest with free memory and a fast host; a
/// guest that must first reclaim (page cache, a workload over its new
/// limit), or runs on a slow host (the nested test host: 127 of 192 MiB
/// in 5 s), takes longer and is waited for as long as it makes progress;
/// one that cannot give the memory back at all should not hold `update`
/// long.
pub const RETURN_DEADLINE: Duration = Duration::from_secs(5);
/// The longest `update` waits for the guest in all, progress or not.
pub const RETURN_MAX: Duration = Duration::from_secs(60);
/// How often the VMM is asked meanwhile.
const RETURN_POLL: Duration = Duration::from_millis(100);

#[derive(Debug, thiserror::Error)]
pub enum LiveError {
    #[error(
        "update {id}: after {}s the guest has given back {actual_mib} of the {target_mib} MiB the balloon asks \
         and still holds {resident_mib} MiB, so the VMM's host cgroup keeps its memory limit ({kept}): \
         {limit_mib} MiB now would have the host OOM-kill the VM. The guest's cgroup has the new limit and the \
         balloon goes on inflating: run the same update again once the container uses less memory, or ask for \
         a higher limit",
        waited.as_secs()
    )]
    MemoryNotReturned {
        id: String,
        target_mib: u64,
        actual_mib: u64,
        resident_mib: u64,
        limit_mib: u64,
        kept: String,
        waited: Duration,
    },
    #[error(
        "update {id}: the VMM's host cgroup has no memory controller, so its limit cannot follow a memory \
         update: enable the memory controller for amphi's cgroups (the parent's cgroup.subtree_control) and \
         create the container again, or leave its memory limit as it is"
    )]
    NoHostMemory { id: String },
}

/// The memory of the VMM's host cgroup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostMemory {
    /// Bytes charged to it now.
    pub usage: u64,
    /// Its limit in bytes; None: none.
    pub limit: Option<u64>,
}

/// What an update acts on: the guest's agent, the VMM's control socket,
/// the VMM's host cgroup and the clock.
pub trait LiveVm {
    /// Applies `resources` to the container's cgroup in the guest.
    fn update_guest(&mut self, resources: &LinuxResources) -> Result<(), VmError>;
    /// The VMM's view of guest memory; None for a VMM from before the
    /// control socket.
    fn vmm_stats(&mut self) -> Result<Option<VmmStats>, VmError>;
    fn set_balloon(&mut self, target_mib: u64) -> Result<(), VmError>;
    /// None when the host cgroup has no memory controller.
    fn host_memory(&mut self) -> Option<HostMemory>;
    /// Applies `resources` to the VMM's host cgroup.
    fn update_host(&mut self, resources: &LinuxResources) -> Result<(), VmError>;
    fn now(&self) -> Instant;
    fn sleep(&mut self, d: Duration);
}

/// What a new memory limit does on the host side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryStep {
    /// The balloon's new target; None when the VM has no balloon.
    pub target_mib: Option<u64>,
    /// The host cgroup's new limit; None for none (the limit is -1).
    pub host_limit_mib: Option<u64>,
    /// Whether the host limit is written before the guest changes: it does
    /// not go down.
    pub host_first: bool,
}

/// The host side of a new memory `limit` (bytes, or -1 for none) for a
/// guest of `memory_mib` whose host cgroup is limited to `current` bytes.
pub fn memory_step(memory_mib: u64, has_balloon: bool, limit: i64, current: Option<u64>) -> MemoryStep {
    let target_mib = has_balloon.then(|| plan::balloon_target_mib(memory_mib, Some(limit)));
    let host_limit_mib = (limit > 0).then(|| plan::host_limit_mib(memory_mib, target_mib.unwrap_or(0)));
    let host_first = match (host_limit_mib, current) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(new), Some(cur)) => plan::mib_to_bytes(new) as u64 >= cur,
    };
    MemoryStep { target_mib, host_limit_mib, host_first }
}

/// Whether the VMM can be held to `limit_mib` now without the host's OOM
/// killer ending it. The guest must have given back what the balloon asks
/// (`target_mib`; nothing without a balloon): before that it may still
/// touch memory it is about to give. Then either figure will do: the
/// guest's resident RAM plus the VMM's own overhead (the same allowance as
/// at create), or the cgroup's `usage` in bytes, which is exact but also
/// counts page cache the VMM read for the guest's share, which the kernel
/// reclaims at the limit rather than kill for.
pub fn fits(stats: &VmmStats, target_mib: Option<u64>, limit_mib: u64, usage: Option<u64>) -> bool {
    let given = match (target_mib, &stats.balloon) {
        (Some(t), Some(b)) => b.actual_mib >= t,
        _ => true,
    };
    let estimate = stats.guest_resident_kib.div_ceil(1024).saturating_add(plan::VMM_OVERHEAD_MIB);
    given && (estimate <= limit_mib || usage.is_some_and(|u| u <= plan::mib_to_bytes(limit_mib) as u64))
}

/// The host cgroup's memory limit alone. The host cgroup never gets a swap
/// value (`plan::host_resources` sets none), so on cgroup v1 memsw stays
/// unlimited and the kernel's limit <= memsw rule holds whichever way the
/// limit moves; -1 makes both unlimited, memsw first (the memory
/// controller orders those writes).
fn memory_only(limit: i64) -> LinuxResources {
    let mut m = LinuxMemory::default();
    m.set_limit(Some(limit));
    let mut r = LinuxResources::default();
    r.set_memory(Some(m));
    r
}

fn describe(limit: Option<u64>) -> String {
    match limit {
        Some(b) => format!("{} MiB", b >> 20),
        None => "none".into(),
    }
}

/// Applies `resources` to the running VM `id` (see the module doc for the
/// order); a lower memory limit waits up to `deadline` for the guest.
pub fn update(vm: &mut dyn LiveVm, id: &str, resources: &LinuxResources, deadline: Duration) -> Result<(), VmError> {
    // 0 means "unchanged" and never gets here (update::changes drops it);
    // below -1 the guest's cgroup refuses the value before the host sees it.
    let limit = resources.memory().as_ref().and_then(|m| m.limit()).filter(|l| *l > 0 || *l == -1);
    let memory = match limit {
        Some(l) => match vm.vmm_stats()? {
            // A VMM from before the control socket: the guest's cgroup only.
            None => None,
            Some(stats) => {
                let host = vm.host_memory().ok_or_else(|| LiveError::NoHostMemory { id: id.to_string() })?;
                let (asked_mib, room_mib) = ((l as u64).div_ceil(1 << 20), plan::workload_room_mib(stats.memory_mib));
                if l > 0 && asked_mib > room_mib {
                    crate::logging::warn(&format!(
                        "update {id}: the guest's cgroup gets the memory limit of {asked_mib} MiB, but the VM keeps \
                         the {} MiB of RAM it booted with ({room_mib} MiB of it for the workload): guest RAM cannot \
                         grow while the VM runs",
                        stats.memory_mib
                    ));
                }
                let step = memory_step(stats.memory_mib, stats.balloon.is_some(), l, host.limit);
                Some((step, host))
            }
        },
        None => None,
    };
    let host_limit = |step: &MemoryStep| memory_only(step.host_limit_mib.map_or(-1, plan::mib_to_bytes));

    if let Some((step, host)) = memory.filter(|(s, _)| s.host_first) {
        vm.update_host(&host_limit(&step))?;
        if let Err(e) = vm.update_guest(resources) {
            // The guest did not take more, so its old limit still holds it.
            let old = host.limit.map_or(-1, |b| i64::try_from(b).unwrap_or(i64::MAX));
            let _ = vm.update_host(&memory_only(old));
            return Err(e);
        }
    } else {
        vm.update_guest(resources)?;
    }
    if let Some((step, host)) = memory {
        if let Some(t) = step.target_mib {
            vm.set_balloon(t)?;
        }
        if !step.host_first {
            // host_first is false only for a limit.
            let limit_mib = step.host_limit_mib.unwrap_or(u64::MAX);
            wait_for_return(vm, id, step.target_mib, limit_mib, host.limit, deadline)?;
            vm.update_host(&host_limit(&step))?;
        }
    }
    if let Some(cpu) = resources.cpu() {
        let mut r = LinuxResources::default();
        r.set_cpu(Some(cpu.clone()));
        vm.update_host(&r)?;
    }
    Ok(())
}

/// Polls the VMM until its memory [`fits`] `limit_mib`. `deadline` counts
/// from the guest's last progress (more given to the balloon, or less
/// resident), [`RETURN_MAX`] from the start. Past either the update fails
/// rather than lower the limit anyway: the guest's RAM is anonymous memory
/// that the kernel can only swap or OOM-kill for, so a limit under what
/// the VMM holds ends the VM (or, on v1, is refused with EBUSY).
/// Throttling through memory.high instead was the other choice: it would
/// stall the vCPU threads in reclaim (a VM that seems hung rather than one
/// that was told no), exists on cgroup v2 only, and would need
/// someone to turn it into the real limit later, which nothing in amphi
/// stays around to do. A failed update, named and repeatable, is plainer.
fn wait_for_return(
    vm: &mut dyn LiveVm,
    id: &str,
    target_mib: Option<u64>,
    limit_mib: u64,
    kept: Option<u64>,
    deadline: Duration,
) -> Result<(), VmError> {
    let start = vm.now();
    // The most given to the balloon and the least resident so far (MiB),
    // and when either last moved.
    let (mut most_given, mut least_resident, mut last_progress) = (0, u64::MAX, start);
    loop {
        let stats = vm.vmm_stats()?.unwrap_or_default();
        let usage = vm.host_memory().map(|h| h.usage);
        let given = stats.balloon.as_ref().map_or(0, |b| b.actual_mib);
        let resident = stats.guest_resident_kib >> 10;
        if given > most_given || resident < least_resident {
            (most_given, least_resident, last_progress) =
                (most_given.max(given), least_resident.min(resident), vm.now());
        }
        if fits(&stats, target_mib, limit_mib, usage) {
            crate::logging::debug_with(|| {
                format!("update {id}: the guest gave the memory back in {} ms", (vm.now() - start).as_millis())
            });
            return Ok(());
        }
        let waited = vm.now().saturating_duration_since(start);
        if vm.now().saturating_duration_since(last_progress) >= deadline || waited >= RETURN_MAX {
            return Err(LiveError::MemoryNotReturned {
                id: id.to_string(),
                target_mib: target_mib.unwrap_or(0),
                actual_mib: stats.balloon.map_or(0, |b| b.actual_mib),
                resident_mib: stats.guest_resident_kib.div_ceil(1024),
                limit_mib,
                kept: describe(kept),
                waited,
            }
            .into());
        }
        vm.sleep(RETURN_POLL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vm::vmm::api::BalloonStatus;

    const MIB: u64 = 1 << 20;

    /// A VM of 384 MiB (a 256 MiB limit at boot) whose guest gives back
    /// `step_mib` of the balloon's target at every `every`th look, or
    /// nothing.
    struct Fake {
        log: Vec<String>,
        api: bool,
        balloon: Option<BalloonStatus>,
        resident_mib: u64,
        step_mib: u64,
        every: u32,
        looks: u32,
        host: Option<HostMemory>,
        guest_refuses: bool,
        start: Instant,
        slept: Duration,
    }

    impl Fake {
        fn new() -> Fake {
            Fake {
                log: Vec::new(),
                api: true,
                balloon: Some(BalloonStatus::default()),
                resident_mib: 300,
                step_mib: 64,
                every: 1,
                looks: 0,
                host: Some(HostMemory { usage: 340 * MIB, limit: Some(448 * MIB) }),
                guest_refuses: false,
                start: Instant::now(),
                slept: Duration::ZERO,
            }
        }
    }

    impl LiveVm for Fake {
        fn update_guest(&mut self, r: &LinuxResources) -> Result<(), VmError> {
            self.log.push(format!("guest {}", serde_json::to_string(r).unwrap()));
            if self.guest_refuses {
                return Err(VmError::Config("refused".into()));
            }
            Ok(())
        }

        fn vmm_stats(&mut self) -> Result<Option<VmmStats>, VmError> {
            if !self.api {
                return Ok(None);
            }
            self.looks += 1;
            if let Some(b) = self.balloon.as_mut().filter(|_| self.looks % self.every == 0) {
                b.actual_mib = b.target_mib.min(b.actual_mib + self.step_mib);
                self.resident_mib = self.resident_mib.min(384 - b.actual_mib);
            }
            Ok(Some(VmmStats {
                memory_mib: 384,
                guest_resident_kib: self.resident_mib * 1024,
                balloon: self.balloon.clone(),
            }))
        }

        fn set_balloon(&mut self, target_mib: u64) -> Result<(), VmError> {
            self.log.push(format!("balloon {target_mib}"));
            if let Some(b) = &mut self.balloon {
                b.target_mib = target_mib;
                // Deflating is the guest taking pages back: at once here.
                b.actual_mib = b.actual_mib.min(target_mib);
            }
            Ok(())
        }

        fn host_memory(&mut self) -> Option<HostMemory> {
            self.host
        }

        fn update_host(&mut self, r: &LinuxResources) -> Result<(), VmError> {
            if let Some(l) = r.memory().as_ref().and_then(|m| m.limit()) {
                self.log.push(format!("host memory {}", if l == -1 { "max".into() } else { (l >> 20).to_string() }));
                if let Some(h) = &mut self.host {
                    h.limit = u64::try_from(l).ok();
                }
            }
            if let Some(c) = r.cpu() {
                self.log.push(format!("host cpu {}", serde_json::to_string(c).unwrap()));
            }
            Ok(())
        }

        fn now(&self) -> Instant {
            self.start + self.slept
        }

        fn sleep(&mut self, d: Duration) {
            self.slept += d;
        }
    }

    fn res(json: &str) -> LinuxResources {
        serde_json::from_str(json).unwrap()
    }

    fn run(vm: &mut Fake, json: &str) -> Result<(), VmError> {
        update(vm, "c1", &res(json), RETURN_DEADLINE)
    }

    const GUEST_64M: &str = r#"guest {"memory":{"limit":67108864}}"#;

    #[test]
    fn memory_steps() {
        // 384 MiB at boot, host limited to 448 MiB: 64M takes 192 MiB back
        // and lowers the host to 256 MiB, after the guest.
        let s = memory_step(384, true, 64 << 20, Some(448 * MIB));
        assert_eq!(s, MemoryStep { target_mib: Some(192), host_limit_mib: Some(256), host_first: false });
        // At or past the boot size: nothing taken, the host back to boot size.
        for limit in [256 << 20, 1 << 30] {
            let s = memory_step(384, true, limit, Some(256 * MIB));
            assert_eq!(s, MemoryStep { target_mib: Some(0), host_limit_mib: Some(448), host_first: true });
        }
        // The same limit again is not a lowering.
        assert!(memory_step(384, true, 64 << 20, Some(256 * MIB)).host_first);
        // None: the host limit goes too, first.
        let s = memory_step(384, true, -1, Some(256 * MIB));
        assert_eq!(s, MemoryStep { target_mib: Some(0), host_limit_mib: None, host_first: true });
        // A host without a limit gets one, after the guest.
        let s = memory_step(384, true, 1 << 30, None);
        assert_eq!(s, MemoryStep { target_mib: Some(0), host_limit_mib: Some(448), host_first: false });
        // Without a balloon the guest keeps its RAM, and the host room for it.
        let s = memory_step(384, false, 64 << 20, Some(448 * MIB));
        assert_eq!(s, MemoryStep { target_mib: None, host_limit_mib: Some(448), host_first: true });
    }

    #[test]
    fn fitting_needs_the_balloon_done_and_the_memory_under_the_limit() {
        let stats = |actual_mib, resident_mib: u64| VmmStats {
            memory_mib: 384,
            guest_resident_kib: resident_mib * 1024,
            balloon: Some(BalloonStatus { target_mib: 192, actual_mib, freed_mib: 0 }),
        };
        // Done, and 192 + 64 fits 256.
        assert!(fits(&stats(192, 192), Some(192), 256, None));
        // Not done: whatever the figures say.
        assert!(!fits(&stats(191, 10), Some(192), 256, Some(0)));
        // Done, but more resident than the limit leaves.
        assert!(!fits(&stats(192, 193), Some(192), 256, None));
        assert!(!fits(&stats(192, 193), Some(192), 256, Some(256 * MIB + 1)));
        // ... unless the cgroup's own count fits.
        assert!(fits(&stats(192, 193), Some(192), 256, Some(256 * MIB)));
        // Without a balloon only the memory counts.
        let none = VmmStats { balloon: None, ..stats(0, 300) };
        assert!(fits(&none, None, 448, None));
        assert!(!fits(&none, None, 300, None));
    }

    #[test]
    fn a_lower_limit_reaches_the_host_after_the_guest_gave_the_memory_back() {
        let mut vm = Fake::new();
        run(&mut vm, r#"{"memory":{"limit":67108864}}"#).unwrap();
        assert_eq!(vm.log, [GUEST_64M, "balloon 192", "host memory 256"]);
        // 192 MiB at 64 a look: two sleeps.
        assert_eq!(vm.slept, 2 * RETURN_POLL);
        assert_eq!(vm.host.unwrap().limit, Some(256 * MIB));
    }

    #[test]
    fn a_guest_that_keeps_its_memory_keeps_the_host_limit_and_fails_the_update_by_name() {
        let mut vm = Fake::new();
        vm.step_mib = 0;
        let e = run(&mut vm, r#"{"memory":{"limit":67108864}}"#).unwrap_err().to_string();
        assert_eq!(vm.log, [GUEST_64M, "balloon 192"], "no host limit written");
        assert_eq!(vm.host.unwrap().limit, Some(448 * MIB));
        assert!(vm.slept >= RETURN_DEADLINE && vm.slept < RETURN_DEADLINE + 2 * RETURN_POLL, "{:?}", vm.slept);
        for needle in
            ["update c1", "0 of the 192 MiB", "holds 300 MiB", "(448 MiB)", "256 MiB now", "run the same update"]
        {
            assert!(e.contains(needle), "{needle}: {e}");
        }
        // Once the guest gives it back, the same update goes through.
        vm.step_mib = 192;
        vm.log.clear();
        run(&mut vm, r#"{"memory":{"limit":67108864}}"#).unwrap();
        assert_eq!(vm.log, [GUEST_64M, "balloon 192", "host memory 256"]);
    }

    #[test]
    fn a_slow_guest_is_waited_for_while_it_gives_memory_back() {
        // 1 MiB a look, 192 looks: far past RETURN_DEADLINE, never 5 s
        // without progress.
        let mut vm = Fake::new();
        vm.step_mib = 1;
        run(&mut vm, r#"{"memory":{"limit":67108864}}"#).unwrap();
        assert_eq!(vm.log, [GUEST_64M, "balloon 192", "host memory 256"]);
        assert!(vm.slept > RETURN_DEADLINE, "{:?}", vm.slept);
        // 1 MiB every 6 s: 5 s without progress ends it.
        let mut vm = Fake::new();
        (vm.step_mib, vm.every) = (1, 60);
        let e = run(&mut vm, r#"{"memory":{"limit":67108864}}"#).unwrap_err().to_string();
        assert!(e.contains("0 of the 192 MiB"), "{e}");
        assert_eq!(vm.host.unwrap().limit, Some(448 * MIB));
        // 1 MiB every 2 s: progress all along, but RETURN_MAX in all.
        let mut vm = Fake::new();
        (vm.step_mib, vm.every) = (1, 20);
        let e = run(&mut vm, r#"{"memory":{"limit":67108864}}"#).unwrap_err().to_string();
        assert!(vm.slept >= RETURN_MAX && vm.slept < RETURN_MAX + 2 * RETURN_POLL, "{:?}", vm.slept);
        assert!(e.contains("after 60s the guest has given back 30 of the 192 MiB"), "{e}");
        assert_eq!(vm.host.unwrap().limit, Some(448 * MIB));
    }

    #[test]
    fn a_higher_limit_reaches_the_host_first() {
        let mut vm = Fake::new();
        vm.host = Some(HostMemory { usage: 200 * MIB, limit: Some(256 * MIB) });
        vm.balloon = Some(BalloonStatus { target_mib: 192, actual_mib: 192, freed_mib: 0 });
        run(&mut vm, r#"{"memory":{"limit":1073741824}}"#).unwrap();
        assert_eq!(vm.log, ["host memory 448", r#"guest {"memory":{"limit":1073741824}}"#, "balloon 0"]);
        assert_eq!(vm.slept, Duration::ZERO);
        // None at all: the host's goes first too.
        vm.log.clear();
        run(&mut vm, r#"{"memory":{"limit":-1}}"#).unwrap();
        assert_eq!(vm.log, ["host memory max", r#"guest {"memory":{"limit":-1}}"#, "balloon 0"]);
    }

    #[test]
    fn a_raise_the_guest_refuses_puts_the_host_limit_back() {
        let mut vm = Fake::new();
        vm.host = Some(HostMemory { usage: 200 * MIB, limit: Some(256 * MIB) });
        vm.guest_refuses = true;
        run(&mut vm, r#"{"memory":{"limit":1073741824}}"#).unwrap_err();
        assert_eq!(vm.log, ["host memory 448", r#"guest {"memory":{"limit":1073741824}}"#, "host memory 256"]);
    }

    #[test]
    fn a_container_without_a_limit_gets_one_on_the_host() {
        let mut vm = Fake::new();
        vm.host = Some(HostMemory { usage: 340 * MIB, limit: None });
        run(&mut vm, r#"{"memory":{"limit":67108864}}"#).unwrap();
        assert_eq!(vm.log, [GUEST_64M, "balloon 192", "host memory 256"]);
    }

    #[test]
    fn without_a_memory_controller_or_a_control_socket() {
        let mut vm = Fake::new();
        vm.host = None;
        let e = run(&mut vm, r#"{"memory":{"limit":67108864}}"#).unwrap_err().to_string();
        assert!(e.contains("update c1") && e.contains("no memory controller"), "{e}");
        assert!(vm.log.is_empty(), "nothing changed: {:?}", vm.log);
        // A VMM from before the control socket: the guest only, as before.
        let mut vm = Fake::new();
        vm.api = false;
        run(&mut vm, r#"{"memory":{"limit":67108864}}"#).unwrap();
        assert_eq!(vm.log, [GUEST_64M]);
    }

    #[test]
    fn cpu_settings_reach_the_guest_then_the_host_and_leave_memory_alone() {
        let mut vm = Fake::new();
        run(&mut vm, r#"{"cpu":{"quota":50000,"period":100000,"cpus":"0"}}"#).unwrap();
        assert_eq!(
            vm.log,
            [
                r#"guest {"cpu":{"quota":50000,"period":100000,"cpus":"0"}}"#,
                r#"host cpu {"quota":50000,"period":100000,"cpus":"0"}"#
            ]
        );
        // Other memory settings (a reservation) go to the guest alone.
        vm.log.clear();
        run(&mut vm, r#"{"memory":{"reservation":1048576}}"#).unwrap();
        assert_eq!(vm.log, [r#"guest {"memory":{"reservation":1048576}}"#]);
    }
}
