//! `update`: new resource limits for a running container, as runc takes
//! them: a `linux.resources` document (`--resources FILE`, `-` for stdin),
//! or runc's individual flags (`--memory 512m`, `--cpu-quota`,
//! `--pids-limit`, ...).
//!
//! As in runc, 0 (and an empty string) means "not given": docker sends
//! every field and zeros for those it does not change. Only the values that
//! are given reach the isolation ([`changes`]), and they are merged into the
//! resources the state file keeps ([`merge`]), so the state always says
//! what the container's limits are.

use std::io::Read;
use std::path::PathBuf;

use oci_spec::runtime::LinuxResources;
use serde_json::{Map, Value};

/// What `update` takes besides the container id.
#[derive(Debug, Default, Clone)]
pub struct UpdateOptions {
    /// `--resources FILE`, or `-` for stdin; the flags are ignored then.
    pub resources: Option<PathBuf>,
    pub blkio_weight: Option<u16>,
    pub cpu_period: Option<u64>,
    pub cpu_quota: Option<i64>,
    pub cpu_share: Option<u64>,
    pub cpu_rt_period: Option<u64>,
    pub cpu_rt_runtime: Option<i64>,
    pub cpuset_cpus: Option<String>,
    pub cpuset_mems: Option<String>,
    /// Sizes as runc takes them: bytes, or with a unit (`512m`, `1.5g`), or -1.
    pub memory: Option<String>,
    pub memory_reservation: Option<String>,
    pub memory_swap: Option<String>,
    pub kernel_memory: Option<String>,
    pub kernel_memory_tcp: Option<String>,
    pub pids_limit: Option<i64>,
}

#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    #[error("cannot read the resources from {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a linux.resources document: {msg}")]
    Parse { path: PathBuf, msg: String },
    #[error("--{flag} {value:?}: not a size; use bytes or a number with a unit (k, m, g, t), or -1 for unlimited")]
    BadSize { flag: &'static str, value: String },
    #[error("update needs something to change: pass --resources FILE or flags such as --memory or --pids-limit")]
    Nothing,
}

impl UpdateOptions {
    /// The requested resources, before pruning.
    pub fn resources(&self, stdin: &mut dyn Read) -> Result<LinuxResources, UpdateError> {
        if let Some(path) = &self.resources {
            let mut text = String::new();
            let read = if path.as_os_str() == "-" {
                stdin.read_to_string(&mut text).map(|_| ())
            } else {
                std::fs::read_to_string(path).map(|t| text = t)
            };
            read.map_err(|source| UpdateError::Read { path: path.clone(), source })?;
            return serde_json::from_str(&text)
                .map_err(|e| UpdateError::Parse { path: path.clone(), msg: e.to_string() });
        }
        let size = |flag: &'static str, v: &Option<String>| -> Result<Option<i64>, UpdateError> {
            v.as_deref()
                .map(|s| ram_in_bytes(s).ok_or_else(|| UpdateError::BadSize { flag, value: s.to_string() }))
                .transpose()
        };
        let mut memory = Map::new();
        for (key, flag, v) in [
            ("limit", "memory", &self.memory),
            ("reservation", "memory-reservation", &self.memory_reservation),
            ("swap", "memory-swap", &self.memory_swap),
            ("kernel", "kernel-memory", &self.kernel_memory),
            ("kernelTCP", "kernel-memory-tcp", &self.kernel_memory_tcp),
        ] {
            if let Some(n) = size(flag, v)? {
                memory.insert(key.into(), n.into());
            }
        }
        let mut cpu = Map::new();
        let mut put = |k: &str, v: Option<Value>| {
            if let Some(v) = v {
                cpu.insert(k.into(), v);
            }
        };
        put("shares", self.cpu_share.map(Value::from));
        put("quota", self.cpu_quota.map(Value::from));
        put("period", self.cpu_period.map(Value::from));
        put("realtimeRuntime", self.cpu_rt_runtime.map(Value::from));
        put("realtimePeriod", self.cpu_rt_period.map(Value::from));
        put("cpus", self.cpuset_cpus.clone().map(Value::from));
        put("mems", self.cpuset_mems.clone().map(Value::from));
        let mut doc = Map::new();
        doc.insert("memory".into(), Value::Object(memory));
        doc.insert("cpu".into(), Value::Object(cpu));
        if let Some(w) = self.blkio_weight {
            doc.insert("blockIO".into(), serde_json::json!({ "weight": w }));
        }
        if let Some(l) = self.pids_limit {
            doc.insert("pids".into(), serde_json::json!({ "limit": l }));
        }
        serde_json::from_value(Value::Object(doc))
            .map_err(|e| UpdateError::Parse { path: "(flags)".into(), msg: e.to_string() })
    }
}

/// Only what is given: zeros, empty strings, `false`, empty lists and
/// objects left empty by that are dropped (runc's "0 means unset").
pub fn changes(res: &LinuxResources) -> LinuxResources {
    let mut v = serde_json::to_value(res).unwrap_or(Value::Null);
    prune(&mut v);
    serde_json::from_value(v).unwrap_or_default()
}

/// Whether `res` (after [`changes`]) asks for anything.
pub fn is_empty(res: &LinuxResources) -> bool {
    serde_json::to_value(res).map(|v| v.as_object().is_none_or(Map::is_empty)).unwrap_or(true)
}

/// `base` with the values `delta` sets laid over it (objects merged field
/// by field, lists replaced).
pub fn merge(base: &LinuxResources, delta: &LinuxResources) -> LinuxResources {
    let mut b = serde_json::to_value(base).unwrap_or(Value::Null);
    let mut d = serde_json::to_value(delta).unwrap_or(Value::Null);
    prune(&mut d);
    overlay(&mut b, d);
    serde_json::from_value(b).unwrap_or_else(|_| base.clone())
}

fn prune(v: &mut Value) -> bool {
    match v {
        Value::Null => true,
        Value::Bool(b) => !*b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => {
            o.retain(|_, v| !prune(v));
            o.is_empty()
        }
    }
}

fn overlay(base: &mut Value, delta: Value) {
    match (base, delta) {
        (Value::Object(b), Value::Object(d)) => {
            for (k, v) in d {
                match b.get_mut(&k) {
                    Some(slot) if slot.is_object() && v.is_object() => overlay(slot, v),
                    _ => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (b, d) => *b = d,
    }
}

/// Parses a size the way runc's flags take it (go-units RAMInBytes): a
/// number, optionally fractional, with an optional binary unit b, k, m, g,
/// t or p (also kb, kib, ...), any case; "-1" is unlimited.
pub fn ram_in_bytes(s: &str) -> Option<i64> {
    let s = s.trim();
    if s == "-1" {
        return Some(-1);
    }
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().ok()?;
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" | "kib" => 1024.0,
        "m" | "mb" | "mib" => 1024.0 * 1024.0,
        "g" | "gb" | "gib" => 1024.0 * 1024.0 * 1024.0,
        "t" | "tb" | "tib" => 1024f64.powi(4),
        "p" | "pb" | "pib" => 1024f64.powi(5),
        _ => return None,
    };
    let v = n * mult;
    (v.is_finite() && v >= 0.0 && v < i64::MAX as f64).then_some(v as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res(json: &str) -> LinuxResources {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn zeros_are_not_changes() {
        // What docker sends for `docker update --memory 64m`.
        let d = res(r#"{"memory":{"limit":67108864,"reservation":0,"swap":0,"kernel":0},
            "cpu":{"shares":0,"quota":0,"period":0,"cpus":"","mems":""},"blockIO":{"weight":0},"pids":{"limit":0}}"#);
        let c = changes(&d);
        assert_eq!(serde_json::to_value(&c).unwrap(), serde_json::json!({"memory":{"limit":67108864}}));
        assert!(!is_empty(&c));
        assert!(is_empty(&changes(&res(r#"{"memory":{"limit":0},"blockIO":{"weight":0}}"#))));
    }

    #[test]
    fn merge_keeps_what_is_not_changed() {
        let base = res(
            r#"{"memory":{"limit":100,"swap":200},"pids":{"limit":10},"devices":[{"allow":false,"access":"rwm"}]}"#,
        );
        let m = merge(&base, &res(r#"{"memory":{"limit":150,"swap":0},"cpu":{"quota":5000,"period":0}}"#));
        let v = serde_json::to_value(&m).unwrap();
        assert_eq!(v["memory"], serde_json::json!({"limit":150,"swap":200}));
        assert_eq!(v["pids"]["limit"], 10);
        assert_eq!(v["cpu"]["quota"], 5000);
        assert_eq!(v["devices"][0]["access"], "rwm");
        let m = merge(&base, &res(r#"{"memory":{"limit":-1}}"#));
        assert_eq!(m.memory().as_ref().unwrap().limit(), Some(-1));
    }

    #[test]
    fn flags_become_resources() {
        let o = UpdateOptions {
            memory: Some("512m".into()),
            memory_swap: Some("-1".into()),
            cpu_quota: Some(50000),
            cpu_period: Some(100000),
            cpuset_cpus: Some("0".into()),
            pids_limit: Some(20),
            blkio_weight: Some(300),
            ..Default::default()
        };
        let r = changes(&o.resources(&mut std::io::empty()).unwrap());
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["memory"], serde_json::json!({"limit": 536870912, "swap": -1}));
        assert_eq!(v["cpu"], serde_json::json!({"quota": 50000, "period": 100000, "cpus": "0"}));
        assert_eq!(v["pids"]["limit"], 20);
        assert_eq!(v["blockIO"]["weight"], 300);
        let e = UpdateOptions { memory: Some("lots".into()), ..Default::default() }
            .resources(&mut std::io::empty())
            .unwrap_err();
        assert!(e.to_string().contains("--memory \"lots\""), "{e}");
    }

    #[test]
    fn a_resources_document_from_stdin() {
        let o = UpdateOptions { resources: Some("-".into()), memory: Some("1g".into()), ..Default::default() };
        let r = o.resources(&mut r#"{"pids":{"limit":7}}"#.as_bytes()).unwrap();
        assert_eq!(r.pids().as_ref().unwrap().limit(), 7);
        assert!(r.memory().is_none(), "flags are ignored with --resources");
        let e = o.resources(&mut "nope".as_bytes()).unwrap_err();
        assert!(matches!(e, UpdateError::Parse { .. }), "{e}");
    }

    #[test]
    fn sizes_like_runc() {
        assert_eq!(ram_in_bytes("1024"), Some(1024));
        assert_eq!(ram_in_bytes("1k"), Some(1024));
        assert_eq!(ram_in_bytes("1.5G"), Some(1610612736));
        assert_eq!(ram_in_bytes("64MiB"), Some(64 << 20));
        assert_eq!(ram_in_bytes("-1"), Some(-1));
        for bad in ["", "x", "1q", "-2", "1..2m"] {
            assert_eq!(ram_in_bytes(bad), None, "{bad}");
        }
    }
}
