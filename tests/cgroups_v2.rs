//! Root tests of the cgroup v2 code on a real cgroup2 mount: /sys/fs/cgroup on
//! a pure v2 host, /sys/fs/cgroup/unified on a hybrid one (where the eBPF
//! device filter works the same even though the controllers are v1).
//!
//! Run: `cargo test --test cgroups_v2 -- --ignored` as root.

mod cgroups_common;

use std::path::{Path, PathBuf};
use std::process::Output;

use amphi::linux::cgroups::bpf::{self, sys::attached_programs};
use amphi::linux::cgroups::device_rules::{Access, DeviceKind, DeviceRule, DENY_ALL};
use amphi::linux::cgroups::layout::{HostLayout, LayoutKind, V2Mount};
use amphi::linux::cgroups::sys::{CgroupSys, HostSys};
use amphi::linux::cgroups::{CgroupConfig, CgroupManager, FreezerState};
use cgroups_common::*;

/// The cgroup2 mount to test on, or why there is none.
fn v2_mount() -> Result<(PathBuf, bool), String> {
    if !is_root() {
        return Err("needs root".into());
    }
    let l = HostLayout::detect().map_err(|e| e.to_string())?;
    match (l.kind, l.v2) {
        (LayoutKind::V2, Some(m)) => Ok((m.mount_point, true)),
        (LayoutKind::Hybrid, Some(m)) => Ok((m.mount_point, false)),
        _ => Err("no cgroup2 mount on this host".into()),
    }
}

fn run_in(dir: &Path, script: &str) -> Output {
    let procs = [open_procs(dir)];
    spawn_in(&[], &raw(&procs), script).unwrap().wait_with_output().unwrap()
}

fn mkcg(mount: &Path, tag: &str) -> PathBuf {
    let d = mount.join(unique(tag));
    std::fs::create_dir(&d).unwrap();
    d
}

#[test]
#[ignore = "needs root and a cgroup2 mount"]
fn ebpf_device_filter_denies_and_allows() {
    let (mount, _) = match v2_mount() {
        Ok(m) => m,
        Err(r) => {
            skip(&r);
            return;
        }
    };
    let deny = mkcg(&mount, "bpf-deny");
    let allow = mkcg(&mount, "bpf-allow");
    let checks = || {
        let prog = bpf::device_filter(&[DENY_ALL]).unwrap();
        HostSys
            .attach_device_filter(&deny, &prog, false)
            .unwrap_or_else(|f| panic!("{} {}: {}", f.op, f.source, f.log));
        let out = run_in(&deny, ": < /dev/null");
        assert!(!out.status.success(), "deny-all must refuse /dev/null");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("Operation not permitted"), "{err}");

        let rules =
            [DENY_ALL, DeviceRule::new(true, DeviceKind::Char, Some(1), Some(3), Access::READ.union(Access::WRITE))];
        let prog = bpf::device_filter(&rules).unwrap();
        HostSys
            .attach_device_filter(&allow, &prog, false)
            .unwrap_or_else(|f| panic!("{} {}: {}", f.op, f.source, f.log));
        let out = run_in(&allow, ": < /dev/null && echo ok");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok");
        let out = run_in(&allow, ": < /dev/zero");
        assert!(!out.status.success(), "/dev/zero is not allowed");
        assert!(String::from_utf8_lossy(&out.stderr).contains("Operation not permitted"), "{out:?}");

        // Replacing the filter: the new one is in force, the old one gone.
        HostSys.attach_device_filter(&deny, &prog, true).unwrap_or_else(|f| panic!("{} {}: {}", f.op, f.source, f.log));
        assert_eq!(attached_programs(&deny).unwrap().len(), 1);
        let out = run_in(&deny, ": < /dev/null");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    };
    with_cleanup(checks, || {
        let _ = std::fs::remove_dir(&deny);
        let _ = std::fs::remove_dir(&allow);
    });
    assert!(!deny.exists() && !allow.exists());
}

/// A manager for the cgroup2 mount alone: the host's layout on a pure v2
/// host, the unified mount treated as the only hierarchy on a hybrid one.
fn v2_manager(id: &str, res: &oci_spec::runtime::LinuxResources, pure: bool, mount: &Path) -> CgroupManager<HostSys> {
    let cfg = CgroupConfig { id, cgroups_path: None, resources: Some(res), linux_devices: None };
    if pure {
        CgroupManager::new(&cfg).unwrap()
    } else {
        let layout = HostLayout {
            kind: LayoutKind::V2,
            v1: vec![],
            v2: Some(V2Mount { mount_point: mount.to_path_buf(), root: Some("/".into()) }),
        };
        CgroupManager::with_layout(HostSys, &layout, None, &cfg).unwrap()
    }
}

#[test]
#[ignore = "needs root and a cgroup2 mount"]
fn v2_lifecycle_with_default_devices_freeze_and_kill() {
    let (mount, pure) = match v2_mount() {
        Ok(m) => m,
        Err(r) => {
            skip(&r);
            return;
        }
    };
    let id = unique("v2");
    let offered = read(mount.join("cgroup.controllers"));
    let has = |c: &str| offered.split_whitespace().any(|x| x == c);
    let full = pure && ["memory", "pids", "cpu"].iter().all(|c| has(c));
    let huge = has("hugetlb") && Path::new("/sys/kernel/mm/hugepages/hugepages-2048kB").exists();
    let res: oci_spec::runtime::LinuxResources = if full {
        serde_json::from_str(
            r#"{"devices":[{"allow":false,"access":"rwm"}],"memory":{"limit":67108864,"reservation":33554432},
                "pids":{"limit":50},"cpu":{"shares":2048,"quota":50000,"period":100000}}"#,
        )
        .unwrap()
    } else if huge {
        serde_json::from_str(
            r#"{"devices":[{"allow":false,"access":"rwm"}],"hugepageLimits":[{"pageSize":"2MB","limit":4194304}]}"#,
        )
        .unwrap()
    } else {
        serde_json::from_str(r#"{"devices":[{"allow":false,"access":"rwm"}]}"#).unwrap()
    };
    let mut m = v2_manager(&id, &res, pure, &mount);
    let dir = m.unified_path().unwrap().to_path_buf();
    let join = m.prepare().unwrap();
    assert!(join.clone_into.is_some());
    if full {
        assert_eq!(read(dir.join("memory.max")), "67108864");
        assert_eq!(read(dir.join("memory.low")), "33554432");
        assert_eq!(read(dir.join("pids.max")), "50");
        assert_eq!(read(dir.join("cpu.weight")), "174");
        assert_eq!(read(dir.join("cpu.max")), "50000 100000");
    } else if huge {
        assert_eq!(read(dir.join("hugetlb.2MB.max")), "4194304");
    }
    // The default devices work, others do not.
    let out = run_in(&dir, ": < /dev/null && : > /dev/zero && echo ok");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (_node_dir, node) = unlisted_device();
    let out = run_in(&dir, &format!(": < {}", node.display()));
    assert!(!out.status.success(), "c 1:1 is not a default device");
    assert!(String::from_utf8_lossy(&out.stderr).contains("Operation not permitted"), "{out:?}");

    let procs = [open_procs(&dir)];
    let mut child = spawn_in(&[], &raw(&procs), "exec sleep 1000").unwrap();
    let pid = child.id() as i32;
    assert_eq!(m.pids().unwrap(), vec![pid]);
    m.freeze().unwrap();
    assert_eq!(m.freezer_state().unwrap(), FreezerState::Frozen);
    m.thaw().unwrap();
    assert_eq!(m.freezer_state().unwrap(), FreezerState::Thawed);
    let stats = m.stats().unwrap();
    assert!(stats.cpu.is_some());
    if full {
        assert!(stats.memory.unwrap().limit == Some(67108864));
        assert_eq!(stats.pids.unwrap().current, 1);
    }
    m.signal_all(libc::SIGKILL).unwrap();
    let st = child.wait().unwrap();
    assert_eq!(std::os::unix::process::ExitStatusExt::signal(&st), Some(libc::SIGKILL));
    m.destroy().unwrap();
    m.destroy().unwrap();
    assert!(!dir.exists(), "{} left behind", dir.display());
}

#[test]
#[ignore = "needs root and a pure cgroup2 host"]
fn pure_v2_rich_resources() {
    let (mount, pure) = match v2_mount() {
        Ok(m) => m,
        Err(r) => {
            skip(&r);
            return;
        }
    };
    if !pure {
        skip("not a pure cgroup2 host (the nested test host is one); the hybrid cgroup2 mount is covered by the other tests");
        return;
    }
    // Ask only for what the host offers (all of it on a normal v2 host).
    let offered = read(mount.join("cgroup.controllers"));
    let has = |c: &str| offered.split_whitespace().any(|x| x == c);
    let missing: Vec<&str> = ["memory", "cpu", "cpuset", "pids", "io"].into_iter().filter(|c| !has(c)).collect();
    if !missing.is_empty() {
        skip(&format!("cgroup2 here offers no {}: those checks are left out", missing.join(", ")));
    }
    let mut parts = vec![
        r#""devices":[{"allow":false,"access":"rwm"},{"allow":true,"type":"c","major":1,"minor":11,"access":"r"}]"#
            .to_string(),
    ];
    if has("memory") {
        parts.push(r#""memory":{"limit":67108864,"reservation":16777216},"unified":{"memory.high":"50331648"}"#.into());
    }
    match (has("cpu"), has("cpuset")) {
        (true, true) => {
            parts.push(r#""cpu":{"shares":512,"quota":20000,"period":100000,"cpus":"0","mems":"0"}"#.into())
        }
        (true, false) => parts.push(r#""cpu":{"shares":512,"quota":20000,"period":100000}"#.into()),
        (false, true) => parts.push(r#""cpu":{"cpus":"0","mems":"0"}"#.into()),
        (false, false) => {}
    }
    if has("pids") {
        parts.push(r#""pids":{"limit":40}"#.into());
    }
    let dev = block_device().filter(|_| has("io"));
    if let Some((a, b)) = dev {
        parts.push(format!(r#""blockIO":{{"throttleReadBpsDevice":[{{"major":{a},"minor":{b},"rate":1048576}}],"throttleWriteIOPSDevice":[{{"major":{a},"minor":{b},"rate":300}}]}}"#));
    }
    let res: oci_spec::runtime::LinuxResources = serde_json::from_str(&format!("{{{}}}", parts.join(","))).unwrap();
    let id = unique("pure");
    let path = format!("/amphi-t-parent-{id}/{id}");
    let cfg =
        CgroupConfig { id: &id, cgroups_path: Some(Path::new(&path)), resources: Some(&res), linux_devices: None };
    let mut m = CgroupManager::new(&cfg).unwrap();
    let dir = m.unified_path().unwrap().to_path_buf();
    let parent = dir.parent().unwrap().to_path_buf();
    let _join = m.prepare().unwrap();
    let procs = [open_procs(&dir)];
    let mut child = spawn_in(&[], &raw(&procs), "exec sleep 1000").unwrap();
    let pid = child.id() as i32;
    let checks = || {
        if has("memory") {
            assert_eq!(read(dir.join("memory.max")), "67108864");
            assert_eq!(read(dir.join("memory.low")), "16777216");
            assert_eq!(read(dir.join("memory.high")), "50331648");
        }
        if has("cpu") {
            assert_eq!(read(dir.join("cpu.weight")), "59");
            assert_eq!(read(dir.join("cpu.max")), "20000 100000");
        }
        if has("cpuset") {
            assert_eq!(read(dir.join("cpuset.cpus")), "0");
        }
        if has("pids") {
            assert_eq!(read(dir.join("pids.max")), "40");
        }
        if let Some((a, b)) = dev {
            let io = read(dir.join("io.max"));
            assert!(io.contains(&format!("{a}:{b} rbps=1048576")) && io.contains("wiops=300"), "{io}");
        }
        let ctl = read(parent.join("cgroup.subtree_control"));
        for c in ["cpuset", "cpu", "memory", "pids"].into_iter().filter(|c| has(c)) {
            assert!(ctl.split_whitespace().any(|x| x == c), "{c} not enabled in the parent: {ctl}");
        }
        let out = run_in(&dir, ": < /dev/kmsg && : < /dev/null && echo ok");
        assert!(out.status.success(), "{out:?}");
        let out = run_in(&dir, ": > /dev/kmsg");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("Operation not permitted"),
            "write to kmsg is not allowed: {out:?}"
        );
        assert_eq!(m.pids().unwrap(), vec![pid]);
        m.freeze().unwrap();
        assert_eq!(m.freezer_state().unwrap(), FreezerState::Frozen);
        m.thaw().unwrap();
        let st = m.stats().unwrap();
        assert!(st.cpu.is_some());
        if has("pids") {
            assert_eq!(st.pids.unwrap().current, 1);
        }
        if has("memory") {
            assert_eq!(st.memory.unwrap().limit, Some(67108864));
        }
    };
    with_cleanup(checks, || {
        let _ = m.signal_all(libc::SIGKILL);
        let _ = child.wait();
        m.destroy().unwrap();
    });
    assert!(!dir.exists() && !parent.exists(), "the container's cgroup and the parent amphi made are gone");
}
