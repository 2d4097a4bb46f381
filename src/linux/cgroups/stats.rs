//! A container's cgroup statistics in runc's `events --stats` shape
//! ([`crate::container::stats::Stats`]), read from whichever hierarchy
//! hosts each controller: v1 directories, or the one cgroup2 directory.
//!
//! The files and conversions are runc's: cpuacct and cpu.stat (v1) or
//! cpu.stat in microseconds (v2); memory.* with memsw as "swap" (v1), or
//! memory.current/max/peak with swap reported as memory+swap like v1 (v2);
//! the blkio throttle files (v1, as CFQ's are gone) or io.stat (v2); pids;
//! hugetlb per page size; cpuset. A missing file leaves its figures at zero
//! rather than failing the whole record, as runc does for optional files.

use std::collections::BTreeMap;
use std::path::Path;

use super::sys::CgroupSys;
use crate::container::stats::{BlkioEntry, CpuSet, Hugetlb, MemoryEntry, Stats};

/// USER_HZ: cpuacct.stat counts in ticks of 10 ms on every Linux ABI.
const NS_PER_TICK: u64 = 10_000_000;

/// Where each controller's directory is (None: not available).
#[derive(Debug, Default, Clone, Copy)]
pub struct Dirs<'a> {
    /// The cgroup2 directory of a pure v2 host: every controller is there.
    pub v2: Option<&'a Path>,
    pub cpu: Option<&'a Path>,
    pub cpuacct: Option<&'a Path>,
    pub cpuset: Option<&'a Path>,
    pub memory: Option<&'a Path>,
    pub pids: Option<&'a Path>,
    pub blkio: Option<&'a Path>,
    /// With the flag: the directory is a cgroup2 one (hugetlb is a v2-only
    /// controller on some hybrid hosts).
    pub hugetlb: Option<(&'a Path, bool)>,
}

fn read(sys: &dyn CgroupSys, dir: &Path, file: &str) -> Option<String> {
    sys.read(&dir.join(file)).ok()
}

fn num(sys: &dyn CgroupSys, dir: &Path, file: &str) -> u64 {
    read(sys, dir, file).map_or(0, |t| parse_num(t.trim()))
}

/// A cgroup number; "max" is u64::MAX, as runc reports it.
fn parse_num(t: &str) -> u64 {
    if t == "max" {
        u64::MAX
    } else {
        t.parse().unwrap_or(0)
    }
}

/// The value of `key` in a "key value" per line file.
fn keyed(text: &str, key: &str) -> u64 {
    text.lines()
        .find_map(|l| {
            let mut f = l.split_whitespace();
            (f.next()? == key).then(|| f.next()?.parse().ok())?
        })
        .unwrap_or(0)
}

fn keyed_map(text: &str) -> BTreeMap<String, u64> {
    text.lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            Some((f.next()?.to_string(), f.next()?.parse().ok()?))
        })
        .collect()
}

/// Reads every figure it can.
pub fn read_stats(sys: &dyn CgroupSys, d: &Dirs<'_>) -> Stats {
    let mut s = Stats::default();
    match d.v2 {
        Some(dir) => {
            cpu_v2(sys, dir, &mut s);
            memory_v2(sys, dir, &mut s);
            pids(sys, dir, &mut s);
            io_v2(sys, dir, &mut s);
            cpuset_v2(sys, dir, &mut s);
            hugetlb(sys, dir, true, &mut s);
        }
        None => {
            cpu_v1(sys, d.cpu, d.cpuacct, &mut s);
            if let Some(dir) = d.memory {
                memory_v1(sys, dir, &mut s);
            }
            if let Some(dir) = d.pids {
                pids(sys, dir, &mut s);
            }
            if let Some(dir) = d.blkio {
                blkio_v1(sys, dir, &mut s);
            }
            if let Some(dir) = d.cpuset {
                cpuset_v1(sys, dir, &mut s);
            }
            if let Some((dir, v2)) = d.hugetlb {
                hugetlb(sys, dir, v2, &mut s);
            }
        }
    }
    s
}

fn cpu_v1(sys: &dyn CgroupSys, cpu: Option<&Path>, acct: Option<&Path>, s: &mut Stats) {
    if let Some(dir) = acct {
        let u = &mut s.cpu.usage;
        u.total = num(sys, dir, "cpuacct.usage");
        let list = |f: &str| -> Vec<u64> {
            read(sys, dir, f).map(|t| t.split_whitespace().filter_map(|v| v.parse().ok()).collect()).unwrap_or_default()
        };
        u.percpu = list("cpuacct.usage_percpu");
        u.percpu_user = list("cpuacct.usage_percpu_user");
        u.percpu_kernel = list("cpuacct.usage_percpu_sys");
        let stat = read(sys, dir, "cpuacct.stat").unwrap_or_default();
        u.user = keyed(&stat, "user") * NS_PER_TICK;
        u.kernel = keyed(&stat, "system") * NS_PER_TICK;
    }
    if let Some(dir) = cpu {
        let stat = read(sys, dir, "cpu.stat").unwrap_or_default();
        let t = &mut s.cpu.throttling;
        t.periods = keyed(&stat, "nr_periods");
        t.throttled_periods = keyed(&stat, "nr_throttled");
        t.throttled_time = keyed(&stat, "throttled_time");
    }
}

fn cpu_v2(sys: &dyn CgroupSys, dir: &Path, s: &mut Stats) {
    let stat = read(sys, dir, "cpu.stat").unwrap_or_default();
    s.cpu.usage.total = keyed(&stat, "usage_usec") * 1000;
    s.cpu.usage.user = keyed(&stat, "user_usec") * 1000;
    s.cpu.usage.kernel = keyed(&stat, "system_usec") * 1000;
    s.cpu.throttling.periods = keyed(&stat, "nr_periods");
    s.cpu.throttling.throttled_periods = keyed(&stat, "nr_throttled");
    s.cpu.throttling.throttled_time = keyed(&stat, "throttled_usec") * 1000;
}

fn entry_v1(sys: &dyn CgroupSys, dir: &Path, prefix: &str) -> MemoryEntry {
    MemoryEntry {
        limit: num(sys, dir, &format!("{prefix}.limit_in_bytes")),
        usage: num(sys, dir, &format!("{prefix}.usage_in_bytes")),
        max: num(sys, dir, &format!("{prefix}.max_usage_in_bytes")),
        failcnt: num(sys, dir, &format!("{prefix}.failcnt")),
    }
}

fn memory_v1(sys: &dyn CgroupSys, dir: &Path, s: &mut Stats) {
    let raw = keyed_map(&read(sys, dir, "memory.stat").unwrap_or_default());
    let m = &mut s.memory;
    m.cache = raw.get("cache").copied().unwrap_or(0);
    m.usage = entry_v1(sys, dir, "memory");
    m.swap = entry_v1(sys, dir, "memory.memsw");
    m.kernel = entry_v1(sys, dir, "memory.kmem");
    m.kernel_tcp = entry_v1(sys, dir, "memory.kmem.tcp");
    m.raw = raw;
    s.oom_kills = read(sys, dir, "memory.oom_control").map(|t| keyed(&t, "oom_kill"));
}

fn memory_v2(sys: &dyn CgroupSys, dir: &Path, s: &mut Stats) {
    let raw = keyed_map(&read(sys, dir, "memory.stat").unwrap_or_default());
    let events = read(sys, dir, "memory.events").unwrap_or_default();
    let m = &mut s.memory;
    m.cache = raw.get("file").copied().unwrap_or(0);
    m.usage = MemoryEntry {
        limit: num(sys, dir, "memory.max"),
        usage: num(sys, dir, "memory.current"),
        max: num(sys, dir, "memory.peak"),
        failcnt: keyed(&events, "max"),
    };
    // v1 reports memory+swap; so does runc on v2.
    let swap_limit = num(sys, dir, "memory.swap.max");
    m.swap = MemoryEntry {
        limit: if swap_limit == u64::MAX { u64::MAX } else { swap_limit.saturating_add(m.usage.limit) },
        usage: num(sys, dir, "memory.swap.current").saturating_add(m.usage.usage),
        max: 0,
        failcnt: 0,
    };
    m.raw = raw;
    s.oom_kills = (!events.is_empty()).then(|| keyed(&events, "oom_kill"));
}

fn pids(sys: &dyn CgroupSys, dir: &Path, s: &mut Stats) {
    s.pids.current = num(sys, dir, "pids.current");
    // runc reports an unlimited pids.max as 0.
    s.pids.limit = match num(sys, dir, "pids.max") {
        u64::MAX => 0,
        n => n,
    };
}

/// "MAJ:MIN Op value" lines (the v1 throttle files), without the "Total".
fn blkio_entries(text: &str) -> Vec<BlkioEntry> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() != 3 {
                return None;
            }
            let (maj, min) = f[0].split_once(':')?;
            Some(BlkioEntry {
                major: maj.parse().ok()?,
                minor: min.parse().ok()?,
                op: f[1].to_string(),
                value: f[2].parse().ok()?,
            })
        })
        .collect()
}

fn blkio_v1(sys: &dyn CgroupSys, dir: &Path, s: &mut Stats) {
    // CFQ's blkio.io_* files are gone since Linux 5.0; the throttle ones
    // count every I/O, as runc falls back to them.
    let pick = |cfq: &str, throttle: &str| {
        read(sys, dir, cfq).filter(|t| !blkio_entries(t).is_empty()).or_else(|| read(sys, dir, throttle))
    };
    let b = &mut s.blkio;
    b.io_service_bytes_recursive = blkio_entries(
        &pick("blkio.io_service_bytes_recursive", "blkio.throttle.io_service_bytes_recursive").unwrap_or_default(),
    );
    b.io_serviced_recursive =
        blkio_entries(&pick("blkio.io_serviced_recursive", "blkio.throttle.io_serviced_recursive").unwrap_or_default());
    for (file, list) in [
        ("blkio.io_queued_recursive", &mut b.io_queued_recursive),
        ("blkio.io_service_time_recursive", &mut b.io_service_time_recursive),
        ("blkio.io_wait_time_recursive", &mut b.io_wait_time_recursive),
        ("blkio.io_merged_recursive", &mut b.io_merged_recursive),
        ("blkio.time_recursive", &mut b.io_time_recursive),
        ("blkio.sectors_recursive", &mut b.sectors_recursive),
    ] {
        *list = blkio_entries(&read(sys, dir, file).unwrap_or_default());
    }
}

/// io.stat: "MAJ:MIN rbytes=N wbytes=N rios=N wios=N ...".
fn io_v2(sys: &dyn CgroupSys, dir: &Path, s: &mut Stats) {
    let text = read(sys, dir, "io.stat").unwrap_or_default();
    for line in text.lines() {
        let mut f = line.split_whitespace();
        let Some((maj, min)) = f.next().and_then(|d| d.split_once(':')) else { continue };
        let (Ok(major), Ok(minor)) = (maj.parse::<u64>(), min.parse::<u64>()) else { continue };
        for kv in f {
            let Some((k, v)) = kv.split_once('=') else { continue };
            let Ok(value) = v.parse::<u64>() else { continue };
            let (list, op) = match k {
                "rbytes" => (&mut s.blkio.io_service_bytes_recursive, "Read"),
                "wbytes" => (&mut s.blkio.io_service_bytes_recursive, "Write"),
                "rios" => (&mut s.blkio.io_serviced_recursive, "Read"),
                "wios" => (&mut s.blkio.io_serviced_recursive, "Write"),
                _ => continue,
            };
            list.push(BlkioEntry { major, minor, op: op.into(), value });
        }
    }
}

/// "0-3,7" -> [0, 1, 2, 3, 7].
pub fn parse_cpu_list(text: &str) -> Vec<u16> {
    let mut out = Vec::new();
    for part in text.trim().split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                if let (Ok(a), Ok(b)) = (a.parse::<u16>(), b.parse::<u16>()) {
                    out.extend(a..=b);
                }
            }
            None => out.extend(part.parse::<u16>().ok()),
        }
    }
    out
}

fn cpuset_v1(sys: &dyn CgroupSys, dir: &Path, s: &mut Stats) {
    let n = |f: &str| num(sys, dir, f);
    s.cpuset = CpuSet {
        cpus: parse_cpu_list(&read(sys, dir, "cpuset.cpus").unwrap_or_default()),
        cpu_exclusive: n("cpuset.cpu_exclusive"),
        mems: parse_cpu_list(&read(sys, dir, "cpuset.mems").unwrap_or_default()),
        mem_hardwall: n("cpuset.mem_hardwall"),
        mem_exclusive: n("cpuset.mem_exclusive"),
        memory_migrate: n("cpuset.memory_migrate"),
        memory_spread_page: n("cpuset.memory_spread_page"),
        memory_spread_slab: n("cpuset.memory_spread_slab"),
        memory_pressure: n("cpuset.memory_pressure"),
        sched_load_balance: n("cpuset.sched_load_balance"),
        sched_relax_domain_level: read(sys, dir, "cpuset.sched_relax_domain_level")
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(0),
    };
}

fn cpuset_v2(sys: &dyn CgroupSys, dir: &Path, s: &mut Stats) {
    s.cpuset.cpus = parse_cpu_list(&read(sys, dir, "cpuset.cpus.effective").unwrap_or_default());
    s.cpuset.mems = parse_cpu_list(&read(sys, dir, "cpuset.mems.effective").unwrap_or_default());
}

/// Page sizes the kernel offers, as cgroup files name them ("2MB", "1GB").
fn page_sizes() -> Vec<String> {
    let Ok(d) = std::fs::read_dir("/sys/kernel/mm/hugepages") else { return Vec::new() };
    let mut v: Vec<String> = d
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            let kb: u64 = name.strip_prefix("hugepages-")?.strip_suffix("kB")?.parse().ok()?;
            Some(size_name(kb))
        })
        .collect();
    v.sort();
    v
}

fn size_name(kb: u64) -> String {
    match kb {
        kb if kb >= 1 << 20 && kb % (1 << 20) == 0 => format!("{}GB", kb >> 20),
        kb if kb >= 1 << 10 && kb % (1 << 10) == 0 => format!("{}MB", kb >> 10),
        kb => format!("{kb}KB"),
    }
}

fn hugetlb(sys: &dyn CgroupSys, dir: &Path, v2: bool, s: &mut Stats) {
    for size in page_sizes() {
        let h = if v2 {
            let events = read(sys, dir, &format!("hugetlb.{size}.events")).unwrap_or_default();
            Hugetlb { usage: num(sys, dir, &format!("hugetlb.{size}.current")), max: 0, failcnt: keyed(&events, "max") }
        } else {
            Hugetlb {
                usage: num(sys, dir, &format!("hugetlb.{size}.usage_in_bytes")),
                max: num(sys, dir, &format!("hugetlb.{size}.max_usage_in_bytes")),
                failcnt: num(sys, dir, &format!("hugetlb.{size}.failcnt")),
            }
        };
        if sys.exists(&dir.join(format!("hugetlb.{size}.{}", if v2 { "current" } else { "usage_in_bytes" }))) {
            s.hugetlb.insert(size, h);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::linux::cgroups::testing::FakeSys;

    fn dir(files: &[(&str, &str)]) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for (f, c) in files {
            std::fs::write(d.path().join(f), c).unwrap();
        }
        d
    }

    #[test]
    fn v1_figures_from_each_controller() {
        let cpuacct = dir(&[
            ("cpuacct.usage", "3000\n"),
            ("cpuacct.usage_percpu", "1000 2000 \n"),
            ("cpuacct.stat", "user 2\nsystem 1\n"),
        ]);
        let cpu = dir(&[("cpu.stat", "nr_periods 5\nnr_throttled 2\nthrottled_time 700\n")]);
        let mem = dir(&[
            ("memory.stat", "cache 4096\nrss 8192\n"),
            ("memory.usage_in_bytes", "12288\n"),
            ("memory.max_usage_in_bytes", "16384\n"),
            ("memory.limit_in_bytes", "1048576\n"),
            ("memory.failcnt", "1\n"),
            ("memory.memsw.usage_in_bytes", "12288\n"),
            ("memory.oom_control", "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n"),
        ]);
        let pids = dir(&[("pids.current", "4\n"), ("pids.max", "max\n")]);
        let blkio = dir(&[
            ("blkio.throttle.io_service_bytes_recursive", "8:0 Read 100\n8:0 Write 50\n8:0 Total 150\nTotal 150\n"),
            ("blkio.throttle.io_serviced_recursive", "8:0 Read 2\nTotal 2\n"),
            ("blkio.io_service_bytes_recursive", "Total 0\n"),
        ]);
        let cpuset = dir(&[("cpuset.cpus", "0-1\n"), ("cpuset.mems", "0\n"), ("cpuset.sched_load_balance", "1\n")]);
        let d = Dirs {
            cpu: Some(cpu.path()),
            cpuacct: Some(cpuacct.path()),
            memory: Some(mem.path()),
            pids: Some(pids.path()),
            blkio: Some(blkio.path()),
            cpuset: Some(cpuset.path()),
            ..Default::default()
        };
        let s = read_stats(&FakeSys::new(), &d);
        assert_eq!((s.cpu.usage.total, s.cpu.usage.user, s.cpu.usage.kernel), (3000, 20_000_000, 10_000_000));
        assert_eq!(s.cpu.usage.percpu, [1000, 2000]);
        assert_eq!(s.cpu.throttling.throttled_time, 700);
        assert_eq!(s.memory.cache, 4096);
        assert_eq!(s.memory.usage, MemoryEntry { limit: 1048576, usage: 12288, max: 16384, failcnt: 1 });
        assert_eq!(s.memory.swap.usage, 12288);
        assert_eq!(s.memory.raw["rss"], 8192);
        assert_eq!(s.oom_kills, Some(3));
        assert_eq!((s.pids.current, s.pids.limit), (4, 0));
        assert_eq!(s.blkio.io_service_bytes_recursive.len(), 3, "{:?}", s.blkio);
        assert_eq!(s.blkio.io_service_bytes_recursive[0].op, "Read");
        assert_eq!(s.blkio.io_serviced_recursive[0].value, 2);
        assert_eq!(s.cpuset.cpus, [0, 1]);
        assert_eq!(s.cpuset.sched_load_balance, 1);
    }

    #[test]
    fn v2_figures_from_one_directory() {
        let d = dir(&[
            (
                "cpu.stat",
                "usage_usec 30\nuser_usec 20\nsystem_usec 10\nnr_periods 1\nnr_throttled 0\nthrottled_usec 0\n",
            ),
            ("memory.stat", "anon 100\nfile 200\n"),
            ("memory.current", "300\n"),
            ("memory.max", "max\n"),
            ("memory.peak", "400\n"),
            ("memory.swap.current", "5\n"),
            ("memory.swap.max", "max\n"),
            ("memory.events", "low 0\nhigh 0\nmax 2\noom 1\noom_kill 1\n"),
            ("pids.current", "1\n"),
            ("pids.max", "10\n"),
            ("io.stat", "8:16 rbytes=10 wbytes=20 rios=1 wios=2 dbytes=0 dios=0\n"),
            ("cpuset.cpus.effective", "0,2-3\n"),
        ]);
        let s = read_stats(&FakeSys::new(), &Dirs { v2: Some(d.path()), ..Default::default() });
        assert_eq!((s.cpu.usage.total, s.cpu.usage.user, s.cpu.usage.kernel), (30_000, 20_000, 10_000));
        assert_eq!(s.memory.cache, 200);
        assert_eq!(s.memory.usage, MemoryEntry { limit: u64::MAX, usage: 300, max: 400, failcnt: 2 });
        assert_eq!((s.memory.swap.usage, s.memory.swap.limit), (305, u64::MAX));
        assert_eq!(s.oom_kills, Some(1));
        assert_eq!((s.pids.current, s.pids.limit), (1, 10));
        assert_eq!(s.blkio.io_service_bytes_recursive.len(), 2);
        assert_eq!(s.blkio.io_serviced_recursive[1], BlkioEntry { major: 8, minor: 16, op: "Write".into(), value: 2 });
        assert_eq!(s.cpuset.cpus, [0, 2, 3]);
    }

    #[test]
    fn missing_files_read_as_zero() {
        let d = dir(&[]);
        let s =
            read_stats(&FakeSys::new(), &Dirs { memory: Some(d.path()), pids: Some(d.path()), ..Default::default() });
        assert_eq!(s.memory.usage, MemoryEntry::default());
        assert_eq!(s.oom_kills, None);
    }

    #[test]
    fn cpu_lists_and_page_size_names() {
        assert_eq!(parse_cpu_list("0-2,5\n"), [0, 1, 2, 5]);
        assert!(parse_cpu_list("").is_empty());
        assert_eq!(size_name(2048), "2MB");
        assert_eq!(size_name(1 << 20), "1GB");
        assert_eq!(size_name(64), "64KB");
    }
}
