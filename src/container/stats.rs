//! Resource statistics of a container, shaped and serialized exactly like
//! runc's `events --stats` records (runc's `types.Stats` and `types.Event`),
//! so that tools written against runc's JSON read amphi's unchanged.
//!
//! Both isolations fill the same struct: the container isolation from the
//! container's cgroups (v1 or v2), the VM isolation from the guest's. Field
//! names, `omitempty` behaviour and units (bytes, nanoseconds) are runc's;
//! the always-present objects (`usage`, `throttling`, `swap`, ...) follow
//! runc 1.1, which every later runc reader accepts.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

fn zero<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

/// One record of `events`: `{"type":"stats","id":...,"data":{...}}`, or
/// `{"type":"oom","id":...}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    #[serde(rename = "type")]
    pub kind: String,
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Box<Stats>>,
}

impl Event {
    pub fn stats(id: &str, stats: Stats) -> Event {
        Event { kind: "stats".into(), id: id.into(), data: Some(Box::new(stats)) }
    }

    pub fn oom(id: &str) -> Event {
        Event { kind: "oom".into(), id: id.into(), data: None }
    }
}

/// What `events --stats` prints as `data`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    pub cpu: Cpu,
    pub cpuset: CpuSet,
    pub memory: Memory,
    pub pids: Pids,
    pub blkio: Blkio,
    /// Per page size ("2MB", "1GB").
    pub hugetlb: BTreeMap<String, Hugetlb>,
    /// Intel RDT is not managed by amphi: always an empty object, as runc
    /// prints it without RDT.
    pub intel_rdt: IntelRdt,
    /// The interfaces of the container's own network namespace (none when
    /// it shares the host's): `null` when there are none, as in runc.
    pub network_interfaces: Option<Vec<NetworkInterface>>,
    /// How many times the OOM killer acted in the container so far (not
    /// part of runc's JSON; `events` turns increments into "oom" records).
    #[serde(skip)]
    pub oom_kills: Option<u64>,
    /// VM isolation only: the host's view, the VMM's own host cgroup (its
    /// vCPUs and device threads, and guest memory as the host pays for
    /// it), next to the guest's view above. Not in runc's JSON; readers
    /// of runc's ignore it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<Box<Stats>>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Cpu {
    pub usage: CpuUsage,
    pub throttling: Throttling,
}

/// Nanoseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CpuUsage {
    #[serde(default, skip_serializing_if = "zero")]
    pub total: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub percpu: Vec<u64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub percpu_kernel: Vec<u64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub percpu_user: Vec<u64>,
    pub kernel: u64,
    pub user: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Throttling {
    #[serde(default, skip_serializing_if = "zero")]
    pub periods: u64,
    #[serde(default, rename = "throttledPeriods", skip_serializing_if = "zero")]
    pub throttled_periods: u64,
    /// Nanoseconds.
    #[serde(default, rename = "throttledTime", skip_serializing_if = "zero")]
    pub throttled_time: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CpuSet {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cpus: Vec<u16>,
    pub cpu_exclusive: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mems: Vec<u16>,
    pub mem_hardwall: u64,
    pub mem_exclusive: u64,
    pub memory_migrate: u64,
    pub memory_spread_page: u64,
    pub memory_spread_slab: u64,
    pub memory_pressure: u64,
    pub sched_load_balance: u64,
    pub sched_relax_domain_level: i64,
}

/// Bytes; `limit` 0 means unlimited only where runc says so (it prints the
/// kernel's "no limit" number on v1).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MemoryEntry {
    pub limit: u64,
    #[serde(default, skip_serializing_if = "zero")]
    pub usage: u64,
    #[serde(default, skip_serializing_if = "zero")]
    pub max: u64,
    pub failcnt: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Memory {
    #[serde(default, skip_serializing_if = "zero")]
    pub cache: u64,
    pub usage: MemoryEntry,
    pub swap: MemoryEntry,
    pub kernel: MemoryEntry,
    #[serde(rename = "kernelTCP")]
    pub kernel_tcp: MemoryEntry,
    /// memory.stat as it is.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub raw: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Pids {
    #[serde(default, skip_serializing_if = "zero")]
    pub current: u64,
    /// 0 when unlimited.
    #[serde(default, skip_serializing_if = "zero")]
    pub limit: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BlkioEntry {
    #[serde(default, skip_serializing_if = "zero")]
    pub major: u64,
    #[serde(default, skip_serializing_if = "zero")]
    pub minor: u64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub op: String,
    #[serde(default, skip_serializing_if = "zero")]
    pub value: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Blkio {
    #[serde(default, rename = "ioServiceBytesRecursive", skip_serializing_if = "Vec::is_empty")]
    pub io_service_bytes_recursive: Vec<BlkioEntry>,
    #[serde(default, rename = "ioServicedRecursive", skip_serializing_if = "Vec::is_empty")]
    pub io_serviced_recursive: Vec<BlkioEntry>,
    /// runc spells this one without the "d".
    #[serde(default, rename = "ioQueueRecursive", skip_serializing_if = "Vec::is_empty")]
    pub io_queued_recursive: Vec<BlkioEntry>,
    #[serde(default, rename = "ioServiceTimeRecursive", skip_serializing_if = "Vec::is_empty")]
    pub io_service_time_recursive: Vec<BlkioEntry>,
    #[serde(default, rename = "ioWaitTimeRecursive", skip_serializing_if = "Vec::is_empty")]
    pub io_wait_time_recursive: Vec<BlkioEntry>,
    #[serde(default, rename = "ioMergedRecursive", skip_serializing_if = "Vec::is_empty")]
    pub io_merged_recursive: Vec<BlkioEntry>,
    #[serde(default, rename = "ioTimeRecursive", skip_serializing_if = "Vec::is_empty")]
    pub io_time_recursive: Vec<BlkioEntry>,
    #[serde(default, rename = "sectorsRecursive", skip_serializing_if = "Vec::is_empty")]
    pub sectors_recursive: Vec<BlkioEntry>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Hugetlb {
    #[serde(default, skip_serializing_if = "zero")]
    pub usage: u64,
    #[serde(default, skip_serializing_if = "zero")]
    pub max: u64,
    pub failcnt: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct IntelRdt {}

/// Counters of one interface; runc prints Go's field names as they are.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct NetworkInterface {
    pub name: String,
    pub rx_bytes: u64,
    pub rx_packets: u64,
    pub rx_errors: u64,
    pub rx_dropped: u64,
    pub tx_bytes: u64,
    pub tx_packets: u64,
    pub tx_errors: u64,
    pub tx_dropped: u64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("--interval {0:?} is not a duration: use a number with a unit, such as 5s, 500ms or 1m30s")]
pub struct DurationError(pub String);

/// A duration as Go writes them (`events --interval`): one or more
/// number+unit pairs, units ns, us (or µs), ms, s, m, h.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, DurationError> {
    let err = || DurationError(s.to_string());
    let mut rest = s.trim();
    if rest.is_empty() {
        return Err(err());
    }
    if rest == "0" {
        return Ok(std::time::Duration::ZERO);
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let n_end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).ok_or_else(err)?;
        let n: f64 = rest[..n_end].parse().map_err(|_| err())?;
        rest = &rest[n_end..];
        let u_end = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let secs = match &rest[..u_end] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(err()),
        };
        total += n * secs;
        rest = &rest[u_end..];
    }
    std::time::Duration::try_from_secs_f64(total).map_err(|_| err())
}

/// Parses /proc/<pid>/net/dev into interface counters, leaving out `lo`.
pub fn parse_net_dev(text: &str) -> Vec<NetworkInterface> {
    text.lines()
        .skip(2)
        .filter_map(|l| {
            let (name, rest) = l.split_once(':')?;
            let name = name.trim();
            if name == "lo" {
                return None;
            }
            let v: Vec<u64> = rest.split_whitespace().filter_map(|x| x.parse().ok()).collect();
            if v.len() < 12 {
                return None;
            }
            Some(NetworkInterface {
                name: name.to_string(),
                rx_bytes: v[0],
                rx_packets: v[1],
                rx_errors: v[2],
                rx_dropped: v[3],
                tx_bytes: v[8],
                tx_packets: v[9],
                tx_errors: v[10],
                tx_dropped: v[11],
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_stats_serialize_like_runc() {
        let e = Event::stats("c1", Stats::default());
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["type"], "stats");
        assert_eq!(v["id"], "c1");
        let d = &v["data"];
        // Always present, as runc 1.1 prints them.
        assert_eq!(d["cpu"]["usage"], serde_json::json!({"kernel": 0, "user": 0}));
        assert_eq!(d["cpu"]["throttling"], serde_json::json!({}));
        assert_eq!(d["memory"]["usage"], serde_json::json!({"limit": 0, "failcnt": 0}));
        assert!(d["memory"]["kernelTCP"].is_object());
        assert_eq!(d["pids"], serde_json::json!({}));
        assert_eq!(d["blkio"], serde_json::json!({}));
        assert_eq!(d["hugetlb"], serde_json::json!({}));
        assert_eq!(d["intel_rdt"], serde_json::json!({}));
        assert!(d["network_interfaces"].is_null());
        assert_eq!(d["cpuset"]["sched_relax_domain_level"], 0);
        assert!(d.get("oom_kills").is_none());
        assert!(d.get("host").is_none(), "only VM containers have a host view");
        let oom = serde_json::to_string(&Event::oom("c1")).unwrap();
        assert_eq!(oom, r#"{"type":"oom","id":"c1"}"#);
    }

    #[test]
    fn filled_stats_use_runcs_names() {
        let mut s = Stats::default();
        s.cpu.usage.total = 10;
        s.cpu.usage.percpu = vec![4, 6];
        s.cpu.throttling.throttled_periods = 2;
        s.memory.cache = 5;
        s.memory.kernel_tcp.limit = 7;
        s.memory.raw.insert("rss".into(), 9);
        s.pids = Pids { current: 3, limit: 0 };
        s.blkio.io_queued_recursive.push(BlkioEntry { major: 8, minor: 0, op: "Read".into(), value: 1 });
        s.hugetlb.insert("2MB".into(), Hugetlb { usage: 0, max: 0, failcnt: 0 });
        s.network_interfaces = Some(vec![NetworkInterface { name: "eth0".into(), rx_bytes: 1, ..Default::default() }]);
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(v["cpu"]["usage"]["percpu"], serde_json::json!([4, 6]));
        assert_eq!(v["cpu"]["throttling"], serde_json::json!({"throttledPeriods": 2}));
        assert_eq!(v["memory"]["kernelTCP"]["limit"], 7);
        assert_eq!(v["memory"]["raw"]["rss"], 9);
        assert_eq!(v["pids"], serde_json::json!({"current": 3}));
        assert_eq!(v["blkio"]["ioQueueRecursive"][0], serde_json::json!({"major": 8, "op": "Read", "value": 1}));
        assert_eq!(v["hugetlb"]["2MB"], serde_json::json!({"failcnt": 0}));
        assert_eq!(v["network_interfaces"][0]["Name"], "eth0");
        assert_eq!(v["network_interfaces"][0]["RxBytes"], 1);
        let back: Stats = serde_json::from_value(v).unwrap();
        assert_eq!(back, s);
        // A VM container's record carries the host's view beside it, in
        // the same shape.
        let vm = Stats { host: Some(Box::new(s)), ..Default::default() };
        let v = serde_json::to_value(&vm).unwrap();
        assert_eq!(v["host"]["pids"], serde_json::json!({"current": 3}));
        assert_eq!(serde_json::from_value::<Stats>(v).unwrap(), vm);
    }

    #[test]
    fn go_durations() {
        use std::time::Duration;
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1.5h"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        for bad in ["", "5", "s", "5x", "1m30", "-1s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn net_dev_without_loopback() {
        let text = "Inter-|   Receive                                                |  Transmit\n \
face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    \
lo:     100       1    0    0    0     0          0         0      100       1    0    0    0     0       0          0\n  \
eth0:    2000      20    1    2    0     0          0         0     3000      30    3    4    0     0       0          0\n";
        let v = parse_net_dev(text);
        assert_eq!(v.len(), 1);
        assert_eq!(
            v[0],
            NetworkInterface {
                name: "eth0".into(),
                rx_bytes: 2000,
                rx_packets: 20,
                rx_errors: 1,
                rx_dropped: 2,
                tx_bytes: 3000,
                tx_packets: 30,
                tx_errors: 3,
                tx_dropped: 4
            }
        );
    }
}
