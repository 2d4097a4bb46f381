//! memory: limit, reservation, swap, kernel, kernelTCP, swappiness,
//! disableOOMKiller; and memory statistics.
//!
//! v1 writes the spec's values as they are (memory.memsw.limit_in_bytes is
//! memory+swap, like the spec's `swap`), ordering the limit and memsw writes
//! so that the kernel's limit <= memsw rule holds at every step. v2 converts
//! as runc does: memory.swap.max = swap - limit, reservation -> memory.low;
//! v2 has no swappiness, OOM-killer switch or TCP buffer limit, so asking for
//! them is an error; `kernel` (deprecated by the spec, which allows ignoring
//! it) is ignored with a warning there, and on v1 where the kernel dropped it.
//! 0 means "not set" for every size, as in runc; -1 means unlimited.

use oci_spec::runtime::{LinuxMemory, LinuxResources};
use serde::Serialize;

use super::{Controller, Ctx};
use crate::linux::cgroups::error::{CgroupError, Result};
use crate::linux::cgroups::layout::Subsystem;
use crate::linux::cgroups::log;

pub struct Memory;

fn set(v: Option<i64>) -> Option<i64> {
    v.filter(|v| *v != 0)
}

/// docker and others pass swappiness -1 (as an unsigned: u64::MAX) for "unset".
fn swappiness(m: &LinuxMemory) -> Option<u64> {
    m.swappiness().filter(|s| *s != u64::MAX && *s as i64 != -1)
}

/// The v2 memory.swap.max value for the spec's memory+swap `swap` (runc's
/// ConvertMemorySwapToCgroupV2Value): None when nothing is to be written.
pub fn swap_v2(swap: Option<i64>, limit: Option<i64>) -> Result<Option<i64>> {
    let (swap, limit) = (swap.unwrap_or(0), limit.unwrap_or(0));
    Ok(match (swap, limit) {
        // Unlimited memory without a swap value: unlimited swap too.
        (0, -1) => Some(-1),
        (0, _) => None,
        (-1, _) => Some(-1),
        (s, -1) => Some(s),
        (s, 0) => {
            return Err(CgroupError::invalid(
                "memory.swap",
                s,
                "on cgroup v2 swap can only be set together with memory.limit (swap is memory+swap)",
            ))
        }
        (s, l) if s < l => {
            return Err(CgroupError::invalid(
                "memory.swap",
                s,
                format!("swap is memory+swap and must be >= memory.limit ({l})"),
            ))
        }
        (s, l) => Some(s - l),
    })
}

fn max_or(v: i64) -> String {
    if v == -1 {
        "max".into()
    } else {
        v.to_string()
    }
}

impl Controller for Memory {
    const SUBSYSTEM: Subsystem = Subsystem::Memory;

    fn requested(res: &LinuxResources) -> Option<&'static str> {
        let m = res.memory().as_ref()?;
        [
            (set(m.limit()).is_some(), "memory.limit"),
            (set(m.reservation()).is_some(), "memory.reservation"),
            (set(m.swap()).is_some(), "memory.swap"),
            (set(m.kernel()).is_some(), "memory.kernel"),
            (set(m.kernel_tcp()).is_some(), "memory.kernelTCP"),
            (swappiness(m).is_some(), "memory.swappiness"),
            (m.disable_oom_killer() == Some(true), "memory.disableOOMKiller"),
        ]
        .into_iter()
        .find(|(on, _)| *on)
        .map(|(_, f)| f)
    }

    fn validate(res: &LinuxResources, v2: bool) -> Result<()> {
        let Some(m) = res.memory() else { return Ok(()) };
        for (field, v) in [
            ("memory.limit", m.limit()),
            ("memory.reservation", m.reservation()),
            ("memory.swap", m.swap()),
            ("memory.kernel", m.kernel()),
            ("memory.kernelTCP", m.kernel_tcp()),
        ] {
            if let Some(v) = v.filter(|v| *v < -1) {
                return Err(CgroupError::invalid(field, v, "use a size in bytes, or -1 for unlimited"));
            }
        }
        if v2 {
            swap_v2(set(m.swap()), set(m.limit()))?;
            if let Some(s) = swappiness(m) {
                return Err(CgroupError::unsupported(
                    "memory.swappiness",
                    format!("cgroup v2 has no per-cgroup swappiness (asked for {s}); remove the field"),
                ));
            }
            if set(m.kernel_tcp()).is_some() {
                return Err(CgroupError::unsupported(
                    "memory.kernelTCP",
                    "cgroup v2 has no TCP buffer limit; remove the field",
                ));
            }
            if m.disable_oom_killer() == Some(true) {
                return Err(CgroupError::unsupported(
                    "memory.disableOOMKiller",
                    "cgroup v2 cannot disable the OOM killer; remove the field or set it to false",
                ));
            }
        } else {
            if let (Some(s), Some(l)) = (set(m.swap()), set(m.limit())) {
                if s != -1 && l != -1 && s < l {
                    return Err(CgroupError::invalid(
                        "memory.swap",
                        s,
                        format!("swap is memory+swap and must be >= memory.limit ({l})"),
                    ));
                }
            }
            if let Some(s) = swappiness(m).filter(|s| *s > 100) {
                return Err(CgroupError::invalid("memory.swappiness", s, "must be between 0 and 100"));
            }
        }
        Ok(())
    }

    fn apply(ctx: &Ctx<'_>, res: &LinuxResources) -> Result<()> {
        let Some(m) = res.memory() else { return Ok(()) };
        if m.use_hierarchy().is_some() {
            log::debug("linux.resources.memory.useHierarchy ignored: the kernel always uses the hierarchy");
        }
        if m.check_before_update() == Some(true) && !ctx.fresh {
            check_usage(ctx, set(m.limit()))?;
        }
        if ctx.v2 {
            apply_v2(ctx, m)
        } else {
            apply_v1(ctx, m)
        }
    }
}

fn check_usage(ctx: &Ctx<'_>, limit: Option<i64>) -> Result<()> {
    let Some(limit) = limit.filter(|l| *l > 0) else { return Ok(()) };
    let file = if ctx.v2 { "memory.current" } else { "memory.usage_in_bytes" };
    let usage: i64 = ctx.read(file)?.trim().parse().unwrap_or(0);
    if usage > limit {
        return Err(CgroupError::invalid(
            "memory.limit",
            limit,
            format!("the container already uses {usage} bytes (checkBeforeUpdate is set)"),
        ));
    }
    Ok(())
}

fn write_limit(ctx: &Ctx<'_>, file: &str, v: &str) -> Result<()> {
    ctx.write("memory.limit", file, v).map_err(|e| match e {
        CgroupError::Apply { field, path, value, source, .. } if source.raw_os_error() == Some(libc::EBUSY) => {
            let usage = ctx.read("memory.usage_in_bytes").map(|s| s.trim().to_string()).unwrap_or_else(|_| "?".into());
            CgroupError::Apply {
                field,
                path,
                value,
                hint: format!("; the container already uses {usage} bytes, more than the new limit"),
                source,
            }
        }
        other => other,
    })
}

fn apply_v1(ctx: &Ctx<'_>, m: &LinuxMemory) -> Result<()> {
    let limit = set(m.limit());
    let mut swap = set(m.swap());
    if limit == Some(-1) && swap.is_none() && ctx.has("memory.memsw.limit_in_bytes") {
        // Unlimited memory without a swap value means unlimited memory+swap.
        swap = Some(-1);
    }
    if let (Some(l), Some(s)) = (limit, swap) {
        // The kernel wants limit <= memsw at every moment: raise memsw first
        // when it grows past the current limit.
        let swap_first = s == -1
            || (!ctx.fresh && {
                let cur: u64 = ctx.read("memory.limit_in_bytes")?.trim().parse().unwrap_or(u64::MAX);
                cur < s as u64
            });
        if swap_first {
            ctx.write("memory.swap", "memory.memsw.limit_in_bytes", &s.to_string())?;
            write_limit(ctx, "memory.limit_in_bytes", &l.to_string())?;
        } else {
            write_limit(ctx, "memory.limit_in_bytes", &l.to_string())?;
            ctx.write("memory.swap", "memory.memsw.limit_in_bytes", &s.to_string())?;
        }
    } else if let Some(l) = limit {
        write_limit(ctx, "memory.limit_in_bytes", &l.to_string())?;
    } else if let Some(s) = swap {
        ctx.write("memory.swap", "memory.memsw.limit_in_bytes", &s.to_string())?;
    }
    if let Some(r) = set(m.reservation()) {
        ctx.write("memory.reservation", "memory.soft_limit_in_bytes", &r.to_string())?;
    }
    if let Some(k) = set(m.kernel()) {
        // Deprecated by the spec; kernels since 5.16 refuse it, or accept the
        // write and keep no limit (read back to tell).
        match ctx.write("memory.kernel", "memory.kmem.limit_in_bytes", &k.to_string()) {
            Err(CgroupError::Apply { source, .. })
                if matches!(source.raw_os_error(), Some(libc::ENOENT) | Some(libc::EOPNOTSUPP)) =>
            {
                log::warn("linux.resources.memory.kernel ignored: this kernel has no kernel memory limit");
            }
            Err(e) => return Err(e),
            Ok(()) => {
                let now = ctx.read("memory.kmem.limit_in_bytes")?;
                if k > 0 && now.trim() != k.to_string() {
                    log::warn("linux.resources.memory.kernel ignored: this kernel keeps no kernel memory limit");
                }
            }
        }
    }
    if let Some(k) = set(m.kernel_tcp()) {
        ctx.write("memory.kernelTCP", "memory.kmem.tcp.limit_in_bytes", &k.to_string())?;
    }
    if let Some(s) = swappiness(m) {
        ctx.write("memory.swappiness", "memory.swappiness", &s.to_string())?;
    }
    if m.disable_oom_killer() == Some(true) {
        ctx.write("memory.disableOOMKiller", "memory.oom_control", "1")?;
    }
    Ok(())
}

fn apply_v2(ctx: &Ctx<'_>, m: &LinuxMemory) -> Result<()> {
    let limit = set(m.limit());
    if let Some(s) = swap_v2(set(m.swap()), limit)? {
        let v = max_or(s);
        match ctx.write("memory.swap", "memory.swap.max", &v) {
            // No swap configured in the kernel: "unlimited" or "none" are moot.
            Err(CgroupError::Apply { source, .. })
                if source.raw_os_error() == Some(libc::ENOENT) && (s == -1 || s == 0) =>
            {
                log::debug("memory.swap.max missing (no swap support); swap setting skipped");
            }
            other => other?,
        }
    }
    if let Some(l) = limit {
        ctx.write("memory.limit", "memory.max", &max_or(l))?;
    }
    if let Some(r) = set(m.reservation()) {
        ctx.write("memory.reservation", "memory.low", &max_or(r))?;
    }
    if set(m.kernel()).is_some() {
        log::warn("linux.resources.memory.kernel ignored: cgroup v2 has no kernel memory limit (the spec deprecates the field)");
    }
    Ok(())
}

/// Memory figures for `events --stats` and the shim.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct MemoryStats {
    /// Bytes in use now.
    pub usage: u64,
    /// Highest usage seen (0 when the kernel does not track it).
    pub max_usage: u64,
    /// The limit in bytes; None when unlimited.
    pub limit: Option<u64>,
    /// Swap in use (v1: memory+swap minus memory).
    pub swap_usage: u64,
    /// Page cache bytes (v1 `cache`, v2 `file`).
    pub cache: u64,
    /// How often the limit was hit (v1 failcnt; v2 the `max` event count).
    pub fail_count: u64,
}

/// Reads the statistics with cgroups-rs's memory controller.
pub fn stats(dir: &std::path::Path, v2: bool) -> MemoryStats {
    let c = cgroups_rs::fs::memory::MemController::new(dir.to_path_buf(), dir.to_path_buf(), v2);
    let m = c.memory_stat();
    let swap = c.memswap();
    // Both versions report "no limit" as a huge number (v1) or -1 (v2 "max").
    let limit = u64::try_from(m.limit_in_bytes).ok().filter(|l| *l < (i64::MAX as u64) / 2);
    let cache = if v2 { m.stat.raw.get("file").copied().unwrap_or(0) } else { m.stat.cache };
    let swap_usage = if v2 { swap.usage_in_bytes } else { swap.usage_in_bytes.saturating_sub(m.usage_in_bytes) };
    let fail_count = if v2 {
        std::fs::read_to_string(dir.join("memory.events"))
            .ok()
            .and_then(|s| s.lines().find_map(|l| l.strip_prefix("max ").and_then(|v| v.trim().parse().ok())))
            .unwrap_or(0)
    } else {
        m.fail_cnt
    };
    MemoryStats { usage: m.usage_in_bytes, max_usage: m.max_usage_in_bytes, limit, swap_usage, cache, fail_count }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::linux::cgroups::controllers::test_support::{res, Dir};

    const MAX: &str = "9223372036854771712";

    fn v1_dir() -> Dir {
        Dir::new(
            false,
            &[
                ("memory.limit_in_bytes", MAX),
                ("memory.memsw.limit_in_bytes", MAX),
                ("memory.soft_limit_in_bytes", MAX),
                ("memory.kmem.limit_in_bytes", MAX),
                ("memory.kmem.tcp.limit_in_bytes", MAX),
                ("memory.swappiness", "60"),
                ("memory.oom_control", "oom_kill_disable 0\n"),
                ("memory.usage_in_bytes", "4096"),
            ],
        )
    }

    fn v2_dir() -> Dir {
        Dir::new(
            true,
            &[("memory.max", "max"), ("memory.low", "0"), ("memory.swap.max", "max"), ("memory.current", "4096")],
        )
    }

    #[test]
    fn v1_writes_every_field() {
        let d = v1_dir();
        let r = res(r#"{"memory":{"limit":50593792,"reservation":40000000,"swap":60000000,"kernel":50593792,
            "kernelTCP":50593792,"swappiness":50,"disableOOMKiller":true}}"#);
        assert_eq!(Memory::requested(&r), Some("memory.limit"));
        d.apply::<Memory>(&r).unwrap();
        assert_eq!(d.get("memory.limit_in_bytes"), "50593792");
        assert_eq!(d.get("memory.memsw.limit_in_bytes"), "60000000");
        assert_eq!(d.get("memory.soft_limit_in_bytes"), "40000000");
        assert_eq!(d.get("memory.kmem.limit_in_bytes"), "50593792");
        assert_eq!(d.get("memory.kmem.tcp.limit_in_bytes"), "50593792");
        assert_eq!(d.get("memory.swappiness"), "50");
        assert_eq!(d.get("memory.oom_control"), "1");
        // Fresh cgroup: limit first, then memsw, and no reads needed.
        let w = d.writes();
        assert_eq!(w[0].0, "memory.limit_in_bytes");
        assert_eq!(w[1].0, "memory.memsw.limit_in_bytes");
    }

    #[test]
    fn v1_update_raising_swap_writes_memsw_first() {
        let d = v1_dir();
        std::fs::write(d.file("memory.limit_in_bytes"), "1000000").unwrap();
        d.apply_updating::<Memory>(&res(r#"{"memory":{"limit":3000000,"swap":4000000}}"#)).unwrap();
        let w = d.writes();
        assert_eq!(w[0], ("memory.memsw.limit_in_bytes".into(), "4000000".into()));
        assert_eq!(w[1], ("memory.limit_in_bytes".into(), "3000000".into()));
    }

    #[test]
    fn v1_unlimited_memory_means_unlimited_swap() {
        let d = v1_dir();
        d.apply::<Memory>(&res(r#"{"memory":{"limit":-1}}"#)).unwrap();
        assert_eq!(
            d.writes(),
            vec![("memory.memsw.limit_in_bytes".into(), "-1".into()), ("memory.limit_in_bytes".into(), "-1".into())]
        );
    }

    #[test]
    fn v1_zero_means_unset_and_kernel_is_optional() {
        let d = v1_dir();
        let r = res(r#"{"memory":{"limit":0,"swappiness":18446744073709551615}}"#);
        assert_eq!(Memory::requested(&r), None);
        d.apply::<Memory>(&r).unwrap();
        assert!(d.writes().is_empty());
        std::fs::remove_file(d.file("memory.kmem.limit_in_bytes")).unwrap();
        d.apply::<Memory>(&res(r#"{"memory":{"kernel":1000000}}"#)).unwrap();
    }

    #[test]
    fn v1_errors_name_the_field() {
        let d = v1_dir();
        let e = d.apply::<Memory>(&res(r#"{"memory":{"limit":2000,"swap":1000}}"#)).unwrap_err().to_string();
        assert!(e.contains("memory.swap") && e.contains(">= memory.limit"), "{e}");
        let e = d.apply::<Memory>(&res(r#"{"memory":{"swappiness":101}}"#)).unwrap_err().to_string();
        assert!(e.contains("memory.swappiness: invalid value 101"), "{e}");
        let e = d.apply::<Memory>(&res(r#"{"memory":{"limit":-7}}"#)).unwrap_err().to_string();
        assert!(e.contains("memory.limit"), "{e}");
        d.sys.fail_writes(&d.file("memory.limit_in_bytes"), &[libc::EBUSY]);
        let e = d.apply::<Memory>(&res(r#"{"memory":{"limit":1}}"#)).unwrap_err().to_string();
        assert!(e.contains("memory.limit_in_bytes") && e.contains("already uses 4096 bytes"), "{e}");
        std::fs::remove_file(d.file("memory.memsw.limit_in_bytes")).unwrap();
        let e = d.apply::<Memory>(&res(r#"{"memory":{"swap":1000}}"#)).unwrap_err().to_string();
        assert!(e.contains("linux.resources.memory.swap") && e.contains("has no memory.memsw.limit_in_bytes"), "{e}");
    }

    #[test]
    fn v1_check_before_update() {
        let d = v1_dir();
        let r = res(r#"{"memory":{"limit":1000,"checkBeforeUpdate":true}}"#);
        d.apply::<Memory>(&r).unwrap();
        let e = d.apply_updating::<Memory>(&r).unwrap_err().to_string();
        assert!(e.contains("already uses 4096"), "{e}");
    }

    #[test]
    fn v2_converts_swap_and_reservation() {
        let d = v2_dir();
        d.apply::<Memory>(&res(r#"{"memory":{"limit":50000000,"reservation":40000000,"swap":60000000}}"#)).unwrap();
        assert_eq!(d.get("memory.max"), "50000000");
        assert_eq!(d.get("memory.low"), "40000000");
        assert_eq!(d.get("memory.swap.max"), "10000000");
        let d = v2_dir();
        d.apply::<Memory>(&res(r#"{"memory":{"limit":-1}}"#)).unwrap();
        assert_eq!(d.get("memory.max"), "max");
        assert_eq!(d.get("memory.swap.max"), "max");
        let d = v2_dir();
        d.apply::<Memory>(&res(r#"{"memory":{"limit":1000,"swap":1000,"kernel":5}}"#)).unwrap();
        assert_eq!(d.get("memory.swap.max"), "0");
    }

    #[test]
    fn v2_swap_conversion_matches_runc() {
        assert_eq!(swap_v2(None, Some(-1)).unwrap(), Some(-1));
        assert_eq!(swap_v2(None, Some(100)).unwrap(), None);
        assert_eq!(swap_v2(Some(-1), Some(100)).unwrap(), Some(-1));
        assert_eq!(swap_v2(Some(300), Some(-1)).unwrap(), Some(300));
        assert_eq!(swap_v2(Some(300), Some(100)).unwrap(), Some(200));
        assert!(swap_v2(Some(300), None).unwrap_err().to_string().contains("together with memory.limit"));
        assert!(swap_v2(Some(50), Some(100)).is_err());
    }

    #[test]
    fn v2_refuses_what_it_cannot_express() {
        let d = v2_dir();
        for (json, field) in [
            (r#"{"memory":{"swappiness":10}}"#, "memory.swappiness"),
            (r#"{"memory":{"kernelTCP":10}}"#, "memory.kernelTCP"),
            (r#"{"memory":{"disableOOMKiller":true}}"#, "memory.disableOOMKiller"),
        ] {
            let e = d.apply::<Memory>(&res(json)).unwrap_err().to_string();
            assert!(e.contains(&format!("linux.resources.{field} is not supported")), "{e}");
        }
        d.apply::<Memory>(&res(r#"{"memory":{"disableOOMKiller":false}}"#)).unwrap();
        assert!(d.writes().is_empty());
        // No swap in the kernel: unlimited swap is moot, a real value is an error.
        std::fs::remove_file(d.file("memory.swap.max")).unwrap();
        d.apply::<Memory>(&res(r#"{"memory":{"limit":-1}}"#)).unwrap();
        assert!(d.apply::<Memory>(&res(r#"{"memory":{"limit":100,"swap":300}}"#)).is_err());
    }

    #[test]
    fn stats_from_both_versions() {
        let d = Dir::new(
            false,
            &[
                ("memory.usage_in_bytes", "4096"),
                ("memory.max_usage_in_bytes", "8192"),
                ("memory.limit_in_bytes", "1048576"),
                ("memory.memsw.usage_in_bytes", "5120"),
                ("memory.failcnt", "3"),
                ("memory.stat", "cache 1024\nrss 2048\n"),
            ],
        );
        let s = stats(d.dir(), false);
        assert_eq!(
            s,
            MemoryStats {
                usage: 4096,
                max_usage: 8192,
                limit: Some(1048576),
                swap_usage: 1024,
                cache: 1024,
                fail_count: 3
            }
        );
        let d = Dir::new(
            true,
            &[
                ("memory.current", "4096"),
                ("memory.peak", "8192"),
                ("memory.max", "max"),
                ("memory.swap.current", "10"),
                ("memory.stat", "anon 2048\nfile 512\n"),
                ("memory.events", "low 0\nhigh 0\nmax 7\noom 0\n"),
            ],
        );
        let s = stats(d.dir(), true);
        assert_eq!(
            s,
            MemoryStats { usage: 4096, max_usage: 8192, limit: None, swap_usage: 10, cache: 512, fail_count: 7 }
        );
    }
}
