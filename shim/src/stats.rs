//! Pids and Stats: read from the cgroups the container's init was placed in,
//! or, for a container without host cgroups of its own (one of a VM pod,
//! whose cgroups are in the guest), from `amphi events --stats`
//! ([`from_amphi`]).
//!
//! amphi puts the container (or, for the VM isolation, its VMM) in its own
//! cgroups; the shim finds them from `/proc/<init>/cgroup` right after
//! create, while the init is certainly alive, and keeps the handle, so
//! stats stay readable for as long as the cgroups exist. The metrics are
//! containerd's own cgroup v1 / v2 types, filled by containerd-shim; on v1
//! the CPU usage comes from cpuacct, which containerd-shim's collector does
//! not read.

use cgroups_rs::fs::{Cgroup, Subsystem};
use containerd_shim::cgroup::{collect_metrics, collect_metrics_v2, get_cgroup};
use containerd_shim::protos::cgroups::metrics::{
    CPUStat, CPUUsage, MemoryEntry, MemoryStat, Metrics, PidsStat, Throttle,
};
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::util::convert_to_any;

#[derive(Debug, thiserror::Error)]
pub enum StatsError {
    #[error("the container's cgroups were not found when it was created, so there are no stats to read")]
    NoCgroup,
    #[error("cannot read the container's cgroup statistics")]
    Collect(#[source] containerd_shim::Error),
}

/// The container's cgroups.
pub struct Cgroups(Cgroup);

impl std::fmt::Debug for Cgroups {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cgroups").field("v2", &self.0.v2()).finish()
    }
}

impl Cgroups {
    /// The cgroups `pid` is in now: `None` if it is gone, or if they are
    /// not its own (the same as the shim's, or every hierarchy's root),
    /// where stats and pids would describe other processes too.
    pub fn of(pid: u32) -> Option<Cgroups> {
        let theirs = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
        let ours = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        if !is_own(&theirs, &ours) {
            return None;
        }
        let cg = get_cgroup(pid).ok()?;
        cg.exists().then_some(Cgroups(cg))
    }

    /// Every process in the container's cgroups.
    pub fn pids(&self) -> Vec<u32> {
        self.0.procs().into_iter().map(|p| p.pid as u32).collect()
    }

    /// containerd's metrics for these cgroups, as an `Any`.
    pub fn metrics(&self) -> Result<Any, StatsError> {
        if self.0.v2() {
            let m = collect_metrics_v2(&self.0).map_err(StatsError::Collect)?;
            return convert_to_any(Box::new(m)).map_err(StatsError::Collect);
        }
        let mut m = collect_metrics(&self.0).map_err(StatsError::Collect)?;
        for s in self.0.subsystems() {
            if let Subsystem::CpuAcct(c) = s {
                let a = c.cpuacct();
                set_cpu_usage(&mut m, a.usage, a.usage_user, a.usage_sys, &a.usage_percpu);
            }
        }
        convert_to_any(Box::new(m)).map_err(StatsError::Collect)
    }
}

/// containerd's v1 metrics, as an `Any`, from what `amphi events --stats`
/// printed (runc's record). The CRI plugin reads either version; v1 has a
/// field for each of runc's numbers, and its working set is usage less
/// the inactive file pages (memory.stat's `total_inactive_file` on v1,
/// `inactive_file` on v2 and in a guest).
pub fn from_amphi(s: &amphi::container::stats::Stats) -> Result<Any, StatsError> {
    let mut m = Metrics::new();
    let mut cpu = CPUStat::new();
    cpu.throttling = Some(Throttle {
        periods: s.cpu.throttling.periods,
        throttled_periods: s.cpu.throttling.throttled_periods,
        throttled_time: s.cpu.throttling.throttled_time,
        ..Default::default()
    })
    .into();
    m.cpu = Some(cpu).into();
    let u = &s.cpu.usage;
    let percpu = u.percpu.iter().map(u64::to_string).collect::<Vec<_>>().join(" ");
    set_cpu_usage(&mut m, u.total, u.user, u.kernel, &percpu);
    let entry = |e: &amphi::container::stats::MemoryEntry| MemoryEntry {
        limit: e.limit,
        usage: e.usage,
        max: e.max,
        failcnt: e.failcnt,
        ..Default::default()
    };
    let raw = |k: &str| s.memory.raw.get(k).copied().unwrap_or(0);
    m.memory = Some(MemoryStat {
        cache: s.memory.cache,
        usage: Some(entry(&s.memory.usage)).into(),
        swap: Some(entry(&s.memory.swap)).into(),
        kernel: Some(entry(&s.memory.kernel)).into(),
        kernel_tcp: Some(entry(&s.memory.kernel_tcp)).into(),
        total_inactive_file: raw("total_inactive_file").max(raw("inactive_file")),
        inactive_file: raw("inactive_file"),
        rss: raw("total_rss").max(raw("rss")).max(raw("anon")),
        ..Default::default()
    })
    .into();
    m.pids = Some(PidsStat { current: s.pids.current, limit: s.pids.limit, ..Default::default() }).into();
    convert_to_any(Box::new(m)).map_err(StatsError::Collect)
}

/// Whether a process's /proc/<pid>/cgroup names cgroups of its own:
/// different from the shim's, and not all at the root.
fn is_own(theirs: &str, ours: &str) -> bool {
    let paths = |t: &str| -> Vec<(String, String)> {
        let mut v: Vec<(String, String)> = t
            .lines()
            .filter_map(|l| {
                let mut f = l.splitn(3, ':');
                let (_, ctrl, path) = (f.next()?, f.next()?, f.next()?);
                Some((ctrl.to_string(), path.to_string()))
            })
            .collect();
        v.sort();
        v
    };
    let t = paths(theirs);
    !t.is_empty() && t != paths(ours) && t.iter().any(|(_, p)| p != "/")
}

/// Fills v1 CPU usage from cpuacct (nanoseconds; `percpu` is
/// cpuacct.usage_percpu, one number per CPU), keeping the throttling data
/// the cpu controller gave.
fn set_cpu_usage(m: &mut Metrics, total: u64, user: u64, kernel: u64, percpu: &str) {
    let usage = CPUUsage {
        total,
        user,
        kernel,
        per_cpu: percpu.split_whitespace().filter_map(|v| v.parse().ok()).collect(),
        ..Default::default()
    };
    let mut cpu = m.cpu.take().unwrap_or_default();
    cpu.usage = Some(usage).into();
    m.cpu = Some(cpu).into();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amphis_record_becomes_v1_metrics_with_a_working_set() {
        use amphi::container::stats::{CpuUsage, MemoryEntry as Entry, Stats};
        let mut s = Stats::default();
        s.cpu.usage = CpuUsage { total: 900, percpu: vec![400, 500], kernel: 300, user: 600, ..Default::default() };
        s.cpu.throttling.periods = 4;
        s.memory.usage = Entry { limit: 1_000_000, usage: 50_000, max: 60_000, failcnt: 0 };
        s.memory.raw = [("inactive_file".to_string(), 8000), ("anon".to_string(), 30_000)].into();
        s.pids.current = 3;
        let any = from_amphi(&s).unwrap();
        assert_eq!(any.type_url, "io.containerd.cgroups.v1.Metrics");
        let m: Metrics = containerd_shim::protos::protobuf::Message::parse_from_bytes(&any.value).unwrap();
        let u = m.cpu.usage.as_ref().unwrap();
        assert_eq!((u.total, u.user, u.kernel, u.per_cpu.clone()), (900, 600, 300, vec![400, 500]));
        assert_eq!(m.cpu.throttling.as_ref().unwrap().periods, 4);
        let mem = m.memory.as_ref().unwrap();
        assert_eq!((mem.usage.usage, mem.usage.limit, mem.usage.max), (50_000, 1_000_000, 60_000));
        assert_eq!((mem.total_inactive_file, mem.rss), (8000, 30_000), "what the CRI's working set subtracts");
        assert_eq!(m.pids.current, 3);
    }

    #[test]
    fn cpuacct_usage_fills_v1_cpu_stats() {
        let mut m = Metrics::new();
        let mut cpu = CPUStat::new();
        cpu.throttling = Some(Throttle { periods: 5, ..Default::default() }).into();
        m.cpu = Some(cpu).into();
        set_cpu_usage(&mut m, 300, 200, 100, "120 180 \n");
        let cpu = m.cpu.as_ref().unwrap();
        let u = cpu.usage.as_ref().unwrap();
        assert_eq!((u.total, u.user, u.kernel), (300, 200, 100));
        assert_eq!(u.per_cpu, vec![120, 180]);
        assert_eq!(cpu.throttling.as_ref().unwrap().periods, 5, "throttling kept");
    }

    #[test]
    fn metrics_have_containerds_type_url() {
        let any = convert_to_any(Box::new(Metrics::new())).unwrap();
        assert_eq!(any.type_url, "io.containerd.cgroups.v1.Metrics");
    }

    #[test]
    fn only_a_cgroup_of_its_own_counts() {
        let shim = "12:pids:/user.slice\n1:name=systemd:/user.slice/s\n0::/user.slice/s\n";
        let container = "12:pids:/default/c1\n1:name=systemd:/default/c1\n0::/user.slice/s\n";
        assert!(is_own(container, shim));
        assert!(!is_own(shim, shim), "the shim's own cgroups");
        assert!(!is_own("12:pids:/\n0::/\n", shim), "the roots");
        assert!(!is_own("", shim));
    }

    #[test]
    fn a_process_that_is_gone_has_no_cgroups() {
        assert!(Cgroups::of(u32::MAX / 2).is_none());
    }
}
