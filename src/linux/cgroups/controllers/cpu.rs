//! cpu: shares, quota, period, burst, idle and the realtime budget; and CPU
//! statistics (v1 takes usage from cpuacct, throttling from cpu).
//!
//! v1 writes cpu.shares / cpu.cfs_* / cpu.rt_*; when the kernel refuses a
//! new period or burst because of the old quota (EINVAL), the quota is
//! written first and the refused value again afterwards, as runc does. v2
//! writes cpu.weight (from shares with runc's conversion), cpu.max and
//! cpu.max.burst; it has no realtime group scheduling, so realtime values
//! are an error there.

use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxCpu, LinuxResources};
use serde::Serialize;

use super::{check_range, Controller, Ctx};
use crate::linux::cgroups::error::{CgroupError, Result};
use crate::linux::cgroups::layout::Subsystem;
use crate::linux::cgroups::sys::CgroupSys;

pub struct Cpu;

/// cpu.shares range the v1 kernel accepts (it silently clamps otherwise).
pub const SHARES_MIN: u64 = 2;
pub const SHARES_MAX: u64 = 262_144;

/// runc's shares -> cpu.weight conversion: a quadratic in log2(shares) that
/// maps 2 -> 1, 1024 -> 100 and 262144 -> 10000.
pub fn shares_to_weight(shares: u64) -> u64 {
    if shares == 0 {
        return 0;
    }
    if shares <= 2 {
        return 1;
    }
    if shares >= SHARES_MAX {
        return 10_000;
    }
    let l = (shares as f64).log2();
    let exponent = (l * l + 125.0 * l) / 612.0 - 7.0 / 34.0;
    10f64.powf(exponent).ceil() as u64
}

fn nz<T: Default + PartialEq>(v: Option<T>) -> Option<T> {
    v.filter(|v| *v != T::default())
}

fn cpu_fields(c: &LinuxCpu) -> [(bool, &'static str); 7] {
    [
        (nz(c.shares()).is_some(), "cpu.shares"),
        (nz(c.quota()).is_some(), "cpu.quota"),
        (nz(c.period()).is_some(), "cpu.period"),
        (c.burst().is_some(), "cpu.burst"),
        (c.idle().is_some(), "cpu.idle"),
        (nz(c.realtime_runtime()).is_some(), "cpu.realtimeRuntime"),
        (nz(c.realtime_period()).is_some(), "cpu.realtimePeriod"),
    ]
}

impl Controller for Cpu {
    const SUBSYSTEM: Subsystem = Subsystem::Cpu;

    fn requested(res: &LinuxResources) -> Option<&'static str> {
        let c = res.cpu().as_ref()?;
        cpu_fields(c).into_iter().find(|(on, _)| *on).map(|(_, f)| f)
    }

    fn validate(res: &LinuxResources, v2: bool) -> Result<()> {
        let Some(c) = res.cpu() else { return Ok(()) };
        if let Some(s) = nz(c.shares()) {
            check_range("cpu.shares", s, SHARES_MIN, SHARES_MAX)?;
        }
        if let Some(q) = nz(c.quota()) {
            if q != -1 && q < 1000 {
                return Err(CgroupError::invalid(
                    "cpu.quota",
                    q,
                    "must be -1 (unlimited) or at least 1000 microseconds",
                ));
            }
        }
        if let Some(p) = nz(c.period()) {
            check_range("cpu.period", p, 1000, 1_000_000)?;
        }
        if let Some(i) = c.idle() {
            check_range("cpu.idle", i, 0, 1)?;
        }
        if v2 {
            for (on, f) in &cpu_fields(c)[5..] {
                if *on {
                    return Err(CgroupError::unsupported(
                        *f,
                        "cgroup v2 has no realtime group scheduling; remove the realtime fields",
                    ));
                }
            }
        } else if let Some(r) = nz(c.realtime_runtime()) {
            if r < -1 {
                return Err(CgroupError::invalid("cpu.realtimeRuntime", r, "use microseconds, or -1 for no limit"));
            }
        }
        Ok(())
    }

    fn apply(ctx: &Ctx<'_>, res: &LinuxResources) -> Result<()> {
        let Some(c) = res.cpu() else { return Ok(()) };
        if ctx.v2 {
            apply_v2(ctx, c)
        } else {
            apply_v1(ctx, c)
        }
    }
}

fn is_einval(e: &CgroupError) -> bool {
    matches!(e, CgroupError::Apply { source, .. } if source.raw_os_error() == Some(libc::EINVAL))
}

fn apply_v1(ctx: &Ctx<'_>, c: &LinuxCpu) -> Result<()> {
    if let Some(s) = nz(c.shares()) {
        ctx.write("cpu.shares", "cpu.shares", &s.to_string())?;
    }
    let quota = nz(c.quota());
    // Period and burst may be refused (EINVAL) while the old quota is in
    // place; then they are written again after the quota.
    let mut retry: Vec<(&str, &str, String)> = Vec::new();
    if let Some(p) = nz(c.period()) {
        let v = p.to_string();
        match ctx.write("cpu.period", "cpu.cfs_period_us", &v) {
            Err(e) if quota.is_some() && is_einval(&e) => retry.push(("cpu.period", "cpu.cfs_period_us", v)),
            other => other?,
        }
    }
    if let Some(b) = c.burst() {
        let v = b.to_string();
        match ctx.write("cpu.burst", "cpu.cfs_burst_us", &v) {
            Err(e) if quota.is_some() && is_einval(&e) => retry.push(("cpu.burst", "cpu.cfs_burst_us", v)),
            other => other?,
        }
    }
    if let Some(q) = quota {
        ctx.write("cpu.quota", "cpu.cfs_quota_us", &q.to_string())?;
        for (field, file, v) in &retry {
            ctx.write(field, file, v)?;
        }
    }
    if let Some(i) = c.idle() {
        ctx.write("cpu.idle", "cpu.idle", &i.to_string())?;
    }
    apply_rt(ctx, c)
}

/// Realtime period and runtime, which constrain each other: a period the
/// kernel refuses with the old runtime is written again after the runtime.
fn apply_rt(ctx: &Ctx<'_>, c: &LinuxCpu) -> Result<()> {
    let runtime = nz(c.realtime_runtime());
    let mut period_again = None;
    if let Some(p) = nz(c.realtime_period()) {
        let v = p.to_string();
        match ctx.write("cpu.realtimePeriod", "cpu.rt_period_us", &v) {
            Err(e) if runtime.is_some() && is_einval(&e) => period_again = Some(v),
            other => other?,
        }
    }
    if let Some(r) = runtime {
        ctx.write("cpu.realtimeRuntime", "cpu.rt_runtime_us", &r.to_string()).map_err(|e| match e {
            CgroupError::Apply { field, path, value, source, .. } if source.raw_os_error() == Some(libc::EINVAL) => CgroupError::Apply {
                field,
                path,
                value,
                hint: "; the parent cgroup's realtime budget (cpu.rt_runtime_us) is smaller, or the value exceeds the period: \
                       give the parent a budget first"
                    .into(),
                source,
            },
            other => other,
        })?;
        if let Some(v) = period_again {
            ctx.write("cpu.realtimePeriod", "cpu.rt_period_us", &v)?;
        }
    }
    Ok(())
}

/// New v1 cgroups get a realtime budget of 0, so a container below cgroups
/// amphi just created could never get one: give those ancestors (outermost
/// first) the container's period and runtime, which they hold for it alone.
pub fn give_rt_budget_to_new_ancestors(sys: &dyn CgroupSys, ancestors: &[PathBuf], res: &LinuxResources) -> Result<()> {
    let Some(c) = res.cpu() else { return Ok(()) };
    let Some(runtime) = nz(c.realtime_runtime()).filter(|r| *r > 0) else { return Ok(()) };
    for dir in ancestors {
        let ctx = Ctx { sys, dir, v2: false, fresh: true, device_rules: &[] };
        if let Some(p) = nz(c.realtime_period()) {
            ctx.write("cpu.realtimePeriod", "cpu.rt_period_us", &p.to_string())?;
        }
        ctx.write("cpu.realtimeRuntime", "cpu.rt_runtime_us", &runtime.to_string())?;
    }
    Ok(())
}

fn apply_v2(ctx: &Ctx<'_>, c: &LinuxCpu) -> Result<()> {
    if let Some(i) = c.idle() {
        ctx.write("cpu.idle", "cpu.idle", &i.to_string())?;
    }
    if let Some(s) = nz(c.shares()) {
        ctx.write("cpu.shares", "cpu.weight", &shares_to_weight(s).to_string())?;
    }
    let (quota, period) = (nz(c.quota()), nz(c.period()));
    let mut burst_again = None;
    if let Some(b) = c.burst() {
        let v = b.to_string();
        match ctx.write("cpu.burst", "cpu.max.burst", &v) {
            Err(e) if quota.is_some() && is_einval(&e) => burst_again = Some(v),
            other => other?,
        }
    }
    if quota.is_some() || period.is_some() {
        let q = quota.filter(|q| *q > 0).map_or_else(|| "max".to_string(), |q| q.to_string());
        let field = if quota.is_some() { "cpu.quota" } else { "cpu.period" };
        ctx.write(field, "cpu.max", &format!("{q} {}", period.unwrap_or(100_000)))?;
        if let Some(v) = burst_again {
            ctx.write("cpu.burst", "cpu.max.burst", &v)?;
        }
    }
    Ok(())
}

/// CPU figures for `events --stats` and the shim.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CpuStats {
    /// Total CPU time used, in nanoseconds.
    pub usage_total_ns: u64,
    pub usage_user_ns: u64,
    pub usage_system_ns: u64,
    /// CFS bandwidth periods, throttled periods, and time throttled (ns).
    pub periods: u64,
    pub throttled_periods: u64,
    pub throttled_time_ns: u64,
}

fn keyed(text: &str, key: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix(' ')).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0)
}

/// v2: everything is in cpu.stat (present even without the cpu controller).
/// v1: usage from the cpuacct directory (through cgroups-rs), throttling
/// from cpu.stat in the cpu directory.
pub fn stats(cpu_dir: Option<&Path>, cpuacct_dir: Option<&Path>, v2: bool) -> CpuStats {
    let mut s = CpuStats::default();
    if v2 {
        if let Some(d) = cpu_dir {
            let text = std::fs::read_to_string(d.join("cpu.stat")).unwrap_or_default();
            s.usage_total_ns = keyed(&text, "usage_usec") * 1000;
            s.usage_user_ns = keyed(&text, "user_usec") * 1000;
            s.usage_system_ns = keyed(&text, "system_usec") * 1000;
            s.periods = keyed(&text, "nr_periods");
            s.throttled_periods = keyed(&text, "nr_throttled");
            s.throttled_time_ns = keyed(&text, "throttled_usec") * 1000;
        }
        return s;
    }
    if let Some(d) = cpuacct_dir {
        let acct = cgroups_rs::fs::cpuacct::CpuAcctController::new(d.to_path_buf(), d.to_path_buf()).cpuacct();
        s.usage_total_ns = acct.usage;
        // cpuacct.stat is in USER_HZ ticks (10 ms on every Linux ABI).
        s.usage_user_ns = keyed(&acct.stat, "user") * 10_000_000;
        s.usage_system_ns = keyed(&acct.stat, "system") * 10_000_000;
    }
    if let Some(d) = cpu_dir {
        let cpu = cgroups_rs::fs::cpu::CpuController::new(d.to_path_buf(), d.to_path_buf(), false).cpu();
        s.periods = keyed(&cpu.stat, "nr_periods");
        s.throttled_periods = keyed(&cpu.stat, "nr_throttled");
        s.throttled_time_ns = keyed(&cpu.stat, "throttled_time");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::linux::cgroups::controllers::test_support::{res, Dir};

    fn v1_dir() -> Dir {
        Dir::new(
            false,
            &[
                ("cpu.shares", "1024"),
                ("cpu.cfs_period_us", "100000"),
                ("cpu.cfs_quota_us", "-1"),
                ("cpu.cfs_burst_us", "0"),
                ("cpu.rt_period_us", "1000000"),
                ("cpu.rt_runtime_us", "0"),
                ("cpu.idle", "0"),
            ],
        )
    }

    fn v2_dir() -> Dir {
        Dir::new(true, &[("cpu.weight", "100"), ("cpu.max", "max 100000"), ("cpu.max.burst", "0"), ("cpu.idle", "0")])
    }

    #[test]
    fn shares_to_weight_matches_runc() {
        assert_eq!(shares_to_weight(0), 0);
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(1024), 100);
        assert_eq!(shares_to_weight(262_144), 10_000);
        assert_eq!(shares_to_weight(512), 59);
        assert_eq!(shares_to_weight(2048), 174);
        let mut last = 0;
        for s in (2..=262_144).step_by(97) {
            let w = shares_to_weight(s);
            assert!((1..=10_000).contains(&w) && w >= last);
            last = w;
        }
    }

    #[test]
    fn v1_writes_every_field() {
        let d = v1_dir();
        let r = res(r#"{"cpu":{"shares":2048,"quota":50000,"period":500000,"burst":1000,"idle":1,
            "realtimeRuntime":950000,"realtimePeriod":1000000}}"#);
        assert_eq!(Cpu::requested(&r), Some("cpu.shares"));
        d.apply::<Cpu>(&r).unwrap();
        assert_eq!(d.get("cpu.shares"), "2048");
        assert_eq!(d.get("cpu.cfs_quota_us"), "50000");
        assert_eq!(d.get("cpu.cfs_period_us"), "500000");
        assert_eq!(d.get("cpu.cfs_burst_us"), "1000");
        assert_eq!(d.get("cpu.idle"), "1");
        assert_eq!(d.get("cpu.rt_runtime_us"), "950000");
        assert_eq!(d.get("cpu.rt_period_us"), "1000000");
    }

    #[test]
    fn v1_period_refused_before_quota_is_retried() {
        let d = v1_dir();
        d.sys.fail_writes(&d.file("cpu.cfs_period_us"), &[libc::EINVAL]);
        d.sys.fail_writes(&d.file("cpu.rt_period_us"), &[libc::EINVAL]);
        d.apply::<Cpu>(&res(r#"{"cpu":{"quota":20000,"period":10000,"realtimeRuntime":5000,"realtimePeriod":10000}}"#))
            .unwrap();
        let files: Vec<String> = d.writes().into_iter().map(|(f, _)| f).collect();
        assert_eq!(
            files,
            [
                "cpu.cfs_period_us",
                "cpu.cfs_quota_us",
                "cpu.cfs_period_us",
                "cpu.rt_period_us",
                "cpu.rt_runtime_us",
                "cpu.rt_period_us"
            ]
        );
        assert_eq!(d.get("cpu.cfs_period_us"), "10000");
        // Without a quota to write, the refusal is the answer.
        d.sys.fail_writes(&d.file("cpu.cfs_period_us"), &[libc::EINVAL]);
        let e = d.apply::<Cpu>(&res(r#"{"cpu":{"period":10000}}"#)).unwrap_err().to_string();
        assert!(e.contains("cpu.period") && e.contains("rejected the value"), "{e}");
    }

    #[test]
    fn v1_rt_budget_error_says_what_to_do() {
        let d = v1_dir();
        d.sys.fail_writes(&d.file("cpu.rt_runtime_us"), &[libc::EINVAL]);
        let e = d.apply::<Cpu>(&res(r#"{"cpu":{"realtimeRuntime":5000}}"#)).unwrap_err().to_string();
        assert!(e.contains("realtime budget") && e.contains("parent"), "{e}");
    }

    #[test]
    fn new_ancestors_get_the_rt_budget() {
        let a = v1_dir();
        let r = res(r#"{"cpu":{"realtimeRuntime":5000,"realtimePeriod":10000}}"#);
        give_rt_budget_to_new_ancestors(&a.sys, std::slice::from_ref(&a.path), &r).unwrap();
        assert_eq!(a.get("cpu.rt_runtime_us"), "5000");
        assert_eq!(a.get("cpu.rt_period_us"), "10000");
        give_rt_budget_to_new_ancestors(&a.sys, std::slice::from_ref(&a.path), &res(r#"{"cpu":{"shares":2}}"#))
            .unwrap();
    }

    #[test]
    fn validation_names_fields() {
        let d = v1_dir();
        for (json, needle) in [
            (r#"{"cpu":{"shares":1}}"#, "cpu.shares: invalid value 1: must be between 2 and 262144"),
            (r#"{"cpu":{"shares":300000}}"#, "cpu.shares"),
            (r#"{"cpu":{"quota":500}}"#, "cpu.quota: invalid value 500"),
            (r#"{"cpu":{"period":100}}"#, "cpu.period"),
            (r#"{"cpu":{"idle":2}}"#, "cpu.idle"),
        ] {
            let e = d.apply::<Cpu>(&res(json)).unwrap_err().to_string();
            assert!(e.contains(needle), "{e}");
        }
        let e = v2_dir().apply::<Cpu>(&res(r#"{"cpu":{"realtimePeriod":1000}}"#)).unwrap_err().to_string();
        assert!(e.contains("linux.resources.cpu.realtimePeriod is not supported"), "{e}");
    }

    #[test]
    fn v2_weight_max_and_burst() {
        let d = v2_dir();
        d.apply::<Cpu>(&res(r#"{"cpu":{"shares":1024,"quota":50000,"period":200000,"burst":1000,"idle":0}}"#)).unwrap();
        assert_eq!(d.get("cpu.weight"), "100");
        assert_eq!(d.get("cpu.max"), "50000 200000");
        assert_eq!(d.get("cpu.max.burst"), "1000");
        assert_eq!(d.get("cpu.idle"), "0");
        let d = v2_dir();
        d.apply::<Cpu>(&res(r#"{"cpu":{"quota":-1}}"#)).unwrap();
        assert_eq!(d.get("cpu.max"), "max 100000");
        let d = v2_dir();
        d.sys.fail_writes(&d.file("cpu.max.burst"), &[libc::EINVAL]);
        d.apply::<Cpu>(&res(r#"{"cpu":{"quota":10000,"burst":20000}}"#)).unwrap();
        let files: Vec<String> = d.writes().into_iter().map(|(f, _)| f).collect();
        assert_eq!(files, ["cpu.max.burst", "cpu.max", "cpu.max.burst"]);
    }

    #[test]
    fn stats_from_both_versions() {
        let acct = Dir::new(false, &[("cpuacct.usage", "123456789"), ("cpuacct.stat", "user 10\nsystem 2\n")]);
        let cpu = Dir::new(false, &[("cpu.stat", "nr_periods 4\nnr_throttled 1\nthrottled_time 5000\n")]);
        let s = stats(Some(cpu.dir()), Some(acct.dir()), false);
        assert_eq!(
            s,
            CpuStats {
                usage_total_ns: 123456789,
                usage_user_ns: 100_000_000,
                usage_system_ns: 20_000_000,
                periods: 4,
                throttled_periods: 1,
                throttled_time_ns: 5000
            }
        );
        let v2 = Dir::new(
            true,
            &[(
                "cpu.stat",
                "usage_usec 1500\nuser_usec 1000\nsystem_usec 500\nnr_periods 3\nnr_throttled 1\nthrottled_usec 7\n",
            )],
        );
        let s = stats(Some(v2.dir()), None, true);
        assert_eq!(s.usage_total_ns, 1_500_000);
        assert_eq!(s.usage_system_ns, 500_000);
        assert_eq!(s.throttled_time_ns, 7000);
    }
}
