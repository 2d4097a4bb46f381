//! CgroupManager on fake v1, hybrid and v2 trees: paths, node choice,
//! creation and rollback, controller wiring, freezing, signalling, stats,
//! mounts and removal.

use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxDeviceBuilder, LinuxDeviceType, LinuxResources};

use super::*;
use crate::linux::cgroups::bpf::interp::run_device_filter;
use crate::linux::cgroups::device_rules::{Access, DeviceKind};
use crate::linux::cgroups::layout::host_facts_from;
use crate::linux::cgroups::testing::{FakeHost, FakeSys, FakeTree};

struct Host {
    _tmp: tempfile::TempDir,
    tree: FakeTree,
}

fn host(h: FakeHost) -> Host {
    let tmp = tempfile::tempdir().unwrap();
    let tree = FakeTree::new(tmp.path(), &h);
    Host { _tmp: tmp, tree }
}

fn res(json: &str) -> LinuxResources {
    serde_json::from_str(json).unwrap()
}

/// The resources of `amphi spec` / `runc spec`.
fn default_res() -> LinuxResources {
    res(r#"{"devices":[{"allow":false,"access":"rwm"}]}"#)
}

fn manager<'a>(
    h: &'a Host,
    id: &str,
    path: Option<&str>,
    r: Option<&LinuxResources>,
) -> Result<CgroupManager<&'a FakeSys>> {
    let cfg = CgroupConfig { id, cgroups_path: path.map(Path::new), resources: r, linux_devices: None };
    CgroupManager::with_layout(&h.tree.sys, &h.tree.layout, Some(&h.tree.own), &cfg)
}

/// All directories under the fake root, to compare before and after.
fn tree_dirs(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                out.push(p.clone());
                stack.push(p);
            }
        }
    }
    out.sort();
    out
}

/// Empties cgroup.procs everywhere below `dir` (the container's tasks exited).
fn exit_tasks(dir: &Path) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            exit_tasks(&p);
            if p.join("cgroup.procs").exists() {
                std::fs::write(p.join("cgroup.procs"), "").unwrap();
            }
        }
    }
}

fn read(p: impl AsRef<Path>) -> String {
    std::fs::read_to_string(p).unwrap()
}

#[test]
fn hybrid_default_spec_lifecycle_leaves_nothing() {
    let h = host(FakeHost::hybrid());
    let before = tree_dirs(&h.tree.root);
    let r = default_res();
    let mut m = manager(&h, "c1", None, Some(&r)).unwrap();
    assert_eq!(m.state().cgroups_path.display(), "/amphi-c1");
    // 9 v1 hierarchies + unified.
    assert_eq!(m.state().nodes.len(), 10);
    m.create_apply_add(4242).unwrap();
    for n in &m.state().nodes {
        assert_eq!(n.path, n.mount_point.join("amphi-c1"));
        assert_eq!(read(n.path.join("cgroup.procs")), "4242", "{}", n.path.display());
        assert_eq!(n.created, vec![n.path.clone()]);
    }
    let cpuset = h.tree.mount("cpuset").join("amphi-c1");
    assert_eq!(read(cpuset.join("cpuset.cpus")), "0-1");
    assert_eq!(read(cpuset.join("cpuset.mems")), "0");
    let writes = h.tree.sys.writes();
    let dev = h.tree.mount("devices").join("amphi-c1");
    assert!(writes.contains(&(dev.join("devices.deny"), "a *:* rwm".into())));
    assert!(writes.contains(&(dev.join("devices.allow"), "c 1:3 rwm".into())));
    // Nothing enabled in the cgroup2 mount: the default spec needs no v2 controller.
    let unified = h.tree.mount("hugetlb");
    assert!(!writes.iter().any(|(p, _)| p.ends_with("cgroup.subtree_control")), "{writes:?}");
    assert!(h.tree.sys.programs(&unified.join("amphi-c1")).is_empty(), "v1 devices filter, no eBPF on hybrid");
    // No read-modify-write on fresh cgroups beyond cpuset's copy.
    assert_eq!(m.pids().unwrap(), vec![4242]);
    // State survives a round trip and can destroy.
    let json = serde_json::to_string(m.state()).unwrap();
    let state: CgroupState = serde_json::from_str(&json).unwrap();
    assert_eq!(&state, m.state());
    exit_tasks(&h.tree.root);
    let m2 = CgroupManager::from_state_with(&h.tree.sys, state);
    m2.destroy().unwrap();
    m2.destroy().unwrap();
    assert_eq!(tree_dirs(&h.tree.root), before);
}

#[test]
fn relative_paths_land_below_our_own_cgroup() {
    let mut fh = FakeHost::hybrid();
    fh.own = "/process_api/f8";
    let h = host(fh);
    let m = manager(&h, "c1", Some("testdir/cgrouptest/container"), None).unwrap();
    assert_eq!(m.state().cgroups_path, CgroupsPath::Relative("testdir/cgrouptest/container".into()));
    let mem = m.state().nodes.iter().find(|n| n.hosts(&Subsystem::Memory)).unwrap();
    assert_eq!(mem.path, h.tree.mount("memory").join("process_api/f8/testdir/cgrouptest/container"));
    let v2 = m.state().nodes.iter().find(|n| n.v2).unwrap();
    assert_eq!(v2.path, h.tree.mount("hugetlb").join("process_api/f8/testdir/cgrouptest/container"));
}

#[test]
fn nested_absolute_paths_create_and_remove_parents() {
    let h = host(FakeHost::v1());
    let before = tree_dirs(&h.tree.root);
    let mut a = manager(&h, "a", Some("/cgrouptest/a"), Some(&default_res())).unwrap();
    a.create_apply_add(10).unwrap();
    let mem = h.tree.mount("memory");
    let node = a.state().nodes.iter().find(|n| n.hosts(&Subsystem::Memory)).unwrap().clone();
    assert_eq!(node.created, vec![mem.join("cgrouptest"), mem.join("cgrouptest/a")]);
    // cpuset: the new parent got values before the container's cgroup did.
    assert_eq!(read(h.tree.mount("cpuset").join("cgrouptest/cpuset.cpus")), "0-1");
    // A second container shares the parent: created() only names its own dir.
    let mut b = manager(&h, "b", Some("/cgrouptest/b"), Some(&default_res())).unwrap();
    b.create_apply_add(11).unwrap();
    let bnode = b.state().nodes.iter().find(|n| n.hosts(&Subsystem::Memory)).unwrap();
    assert_eq!(bnode.created, vec![mem.join("cgrouptest/b")]);
    exit_tasks(&h.tree.root);
    // a goes first: the parent is busy with b and stays.
    a.destroy().unwrap();
    assert!(mem.join("cgrouptest").is_dir() && !mem.join("cgrouptest/a").exists());
    b.destroy().unwrap();
    assert!(mem.join("cgrouptest").is_dir(), "b did not create the parent");
    // (a's state would remove it; here we check the tree minus that parent.)
    a.destroy().unwrap();
    let after: Vec<PathBuf> = tree_dirs(&h.tree.root).into_iter().filter(|p| !p.ends_with("cgrouptest")).collect();
    assert_eq!(after, before);
}

#[test]
fn create_is_idempotent_and_rolls_back_on_failure() {
    let h = host(FakeHost::hybrid());
    let before = tree_dirs(&h.tree.root);
    let mut m = manager(&h, "c1", Some("/nested/c1"), None).unwrap();
    m.create().unwrap();
    m.create().unwrap();
    assert_eq!(m.state().nodes[0].created.len(), 2, "the second create keeps the parents the first made");
    m.destroy().unwrap();
    assert_eq!(tree_dirs(&h.tree.root), before);
    let pids_dir = h.tree.mount("pids").join("amphi-c1");
    h.tree.sys.fail_mkdirs(&pids_dir, &[libc::ENOSPC]);
    let mut m = manager(&h, "c1", None, None).unwrap();
    let e = m.create().unwrap_err().to_string();
    assert!(e.contains("cannot create cgroup") && e.contains("pids/amphi-c1"), "{e}");
    assert_eq!(tree_dirs(&h.tree.root), before, "nothing left behind");
}

#[test]
fn failure_after_create_removes_everything() {
    let h = host(FakeHost::hybrid());
    let before = tree_dirs(&h.tree.root);
    let r = res(r#"{"memory":{"limit":1000000}}"#);
    let mut m = manager(&h, "c1", None, Some(&r)).unwrap();
    h.tree.sys.fail_writes(&h.tree.mount("memory").join("amphi-c1/memory.limit_in_bytes"), &[libc::EINVAL]);
    let e = m.create_apply_add(7).unwrap_err().to_string();
    assert!(e.contains("linux.resources.memory.limit") && e.contains("memory.limit_in_bytes"), "{e}");
    assert_eq!(tree_dirs(&h.tree.root), before);
}

#[test]
fn rich_resources_reach_their_hierarchies() {
    let h = host(FakeHost::v1());
    let r = res(r#"{
        "devices":[{"allow":false,"access":"rwm"},{"allow":true,"type":"b","major":8,"minor":0,"access":"r"}],
        "memory":{"limit":50593792,"reservation":40000000,"swap":60000000,"swappiness":30,"disableOOMKiller":true},
        "cpu":{"shares":512,"quota":50000,"period":100000,"cpus":"0","mems":"0"},
        "pids":{"limit":32},
        "blockIO":{"weight":300,"throttleReadBpsDevice":[{"major":8,"minor":0,"rate":1048576}]},
        "hugepageLimits":[{"pageSize":"2MB","limit":4194304}],
        "network":{"classID":1048577,"priorities":[{"name":"lo","priority":5}]},
        "rdma":{"mlx4_0":{"hcaHandles":2}}}"#);
    let mut m = manager(&h, "rich", None, Some(&r)).unwrap();
    m.create_apply_add(99).unwrap();
    let d = |c: &str| h.tree.mount(c).join("amphi-rich");
    assert_eq!(read(d("memory").join("memory.limit_in_bytes")), "50593792");
    assert_eq!(read(d("memory").join("memory.memsw.limit_in_bytes")), "60000000");
    assert_eq!(read(d("memory").join("memory.swappiness")), "30");
    assert_eq!(read(d("cpu").join("cpu.shares")), "512");
    assert_eq!(read(d("cpu").join("cpu.cfs_quota_us")), "50000");
    assert_eq!(read(d("cpuset").join("cpuset.cpus")), "0");
    assert_eq!(read(d("pids").join("pids.max")), "32");
    assert_eq!(read(d("blkio").join("blkio.weight")), "300");
    assert_eq!(read(d("blkio").join("blkio.throttle.read_bps_device")), "8:0 1048576");
    assert_eq!(read(d("hugetlb").join("hugetlb.2MB.limit_in_bytes")), "4194304");
    assert_eq!(read(d("net_cls").join("net_cls.classid")), "1048577");
    assert_eq!(read(d("net_prio").join("net_prio.ifpriomap")), "lo 5");
    assert_eq!(read(d("rdma").join("rdma.max")), "mlx4_0 hca_handle=2");
    assert!(h.tree.sys.writes().contains(&(d("devices").join("devices.allow"), "b 8:0 r".into())));
    // The requested cpuset values were not overwritten by the parent's copy.
    let cpuset_writes: Vec<_> = h.tree.sys.writes().into_iter().filter(|(p, _)| p.starts_with(d("cpuset"))).collect();
    assert_eq!(cpuset_writes.iter().filter(|(p, _)| p.ends_with("cpuset.cpus")).count(), 1, "{cpuset_writes:?}");
    // co-mounted cpu,cpuacct is one node.
    assert!(d("cpu").ends_with("cpu,cpuacct/amphi-rich"));
}

#[test]
fn missing_controllers_are_named() {
    let h = host(FakeHost::hybrid());
    let e = manager(&h, "c", None, Some(&res(r#"{"network":{"classID":5}}"#))).unwrap_err().to_string();
    assert_eq!(
        e,
        "linux.resources.network.classID needs the net_cls controller, which is not available on this host \
         (it is neither mounted as v1 nor offered by the cgroup2 mount (hugetlb))"
    );
    let e = manager(&h, "c", None, Some(&res(r#"{"rdma":{"x":{"hcaHandles":1}}}"#))).unwrap_err().to_string();
    assert!(e.contains("needs the rdma controller"), "{e}");
    let h2 = host(FakeHost::v2());
    let e = manager(&h2, "c", None, Some(&res(r#"{"network":{"classID":5}}"#))).unwrap_err().to_string();
    assert!(e.contains("network.classID is not supported: cgroup v2 has no net_cls"), "{e}");
    let e = manager(&h, "c", None, Some(&res(r#"{"unified":{"memory.high":"5"}}"#))).unwrap_err().to_string();
    assert!(e.contains("unified is not supported"), "{e}");
    // Nothing was created by the failed attempts.
    assert!(!h.tree.mount("memory").join("amphi-c").exists());
}

#[test]
fn v1_without_devices_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let fh = FakeHost { v1: vec![vec!["memory"], vec!["freezer"]], v2: None, own: "/" };
    let tree = FakeTree::new(tmp.path(), &fh);
    let cfg = CgroupConfig { id: "c", cgroups_path: None, resources: None, linux_devices: None };
    let e = CgroupManager::with_layout(&tree.sys, &tree.layout, None, &cfg).err().unwrap().to_string();
    assert!(e.contains("needs the devices controller") && e.contains("could open any device"), "{e}");
}

#[test]
fn hybrid_hugetlb_goes_to_the_cgroup2_mount() {
    let h = host(FakeHost::hybrid());
    let r = res(r#"{"hugepageLimits":[{"pageSize":"2MB","limit":2147483648}]}"#);
    let mut m = manager(&h, "c1", None, Some(&r)).unwrap();
    let v2 = m.state().nodes.iter().find(|n| n.v2).unwrap().clone();
    assert_eq!(v2.subsystems, vec![Subsystem::Hugetlb]);
    m.create_apply_add(5).unwrap();
    let unified = h.tree.mount("hugetlb");
    assert_eq!(read(unified.join("cgroup.subtree_control")), "+hugetlb");
    assert_eq!(read(unified.join("amphi-c1/hugetlb.2MB.max")), "2147483648");
}

#[test]
fn pure_v2_enables_controllers_and_attaches_the_filter() {
    let h = host(FakeHost::v2());
    let before = tree_dirs(&h.tree.root);
    let r = res(r#"{"devices":[{"allow":false,"access":"rwm"}],"memory":{"limit":1000000,"swap":3000000},
        "cpu":{"shares":1024,"cpus":"1"},"unified":{"memory.high":"900000"}}"#);
    let dev = LinuxDeviceBuilder::default().path("/dev/sda").typ(LinuxDeviceType::B).major(8).minor(0).build().unwrap();
    let devs = [dev];
    let cfg = CgroupConfig {
        id: "c1",
        cgroups_path: Some(Path::new("/pods/c1")),
        resources: Some(&r),
        linux_devices: Some(&devs),
    };
    let mut m = CgroupManager::with_layout(&h.tree.sys, &h.tree.layout, None, &cfg).unwrap();
    assert_eq!(m.state().nodes.len(), 1);
    m.create_apply_add(77).unwrap();
    let leaf = h.tree.root.join("pods/c1");
    assert_eq!(m.unified_path(), Some(leaf.as_path()));
    // Ancestors from the mount point down, each enabling the same set.
    let enables: Vec<_> =
        h.tree.sys.writes().into_iter().filter(|(p, _)| p.ends_with("cgroup.subtree_control")).collect();
    assert_eq!(
        enables,
        vec![
            (h.tree.root.join("cgroup.subtree_control"), "+cpu +cpuset +memory +io +pids".into()),
            (h.tree.root.join("pods/cgroup.subtree_control"), "+cpu +cpuset +memory +io +pids".into()),
        ]
    );
    assert_eq!(read(leaf.join("memory.max")), "1000000");
    assert_eq!(read(leaf.join("memory.swap.max")), "2000000");
    assert_eq!(read(leaf.join("memory.high")), "900000");
    assert_eq!(read(leaf.join("cpu.weight")), "100");
    assert_eq!(read(leaf.join("cpuset.cpus")), "1");
    assert_eq!(read(leaf.join("cgroup.procs")), "77");
    let progs = h.tree.sys.programs(&leaf);
    assert_eq!(progs.len(), 1);
    assert!(run_device_filter(&progs[0], DeviceKind::Block, 8, 0, Access::READ.union(Access::WRITE)).unwrap());
    assert!(run_device_filter(&progs[0], DeviceKind::Char, 1, 3, Access::WRITE).unwrap());
    assert!(!run_device_filter(&progs[0], DeviceKind::Char, 4, 1, Access::WRITE).unwrap());
    assert_eq!(m.state().extra_device_rules.len(), 1);
    exit_tasks(&h.tree.root);
    m.destroy().unwrap();
    assert_eq!(tree_dirs(&h.tree.root), before);
}

#[test]
fn v2_statistics_controllers_are_optional_requested_ones_are_not() {
    let h = host(FakeHost::v2());
    let root_ctl = h.tree.root.join("cgroup.subtree_control");
    // The combined write fails, then io alone fails: io is dropped.
    h.tree.sys.fail_writes(&root_ctl, &[libc::EINVAL, 0, 0, libc::EINVAL]);
    let mut m = manager(&h, "c1", None, None).unwrap();
    m.create().unwrap();
    let n = &m.state().nodes[0];
    assert!(!n.hosts(&Subsystem::Blkio) && n.hosts(&Subsystem::Memory), "{:?}", n.subsystems);
    m.destroy().unwrap();
    // A requested controller that cannot be enabled fails creation, naming why.
    let r = res(r#"{"pids":{"limit":5}}"#);
    h.tree.sys.fail_writes(&root_ctl, &[libc::EBUSY, 0, 0, 0, libc::EBUSY]);
    let mut m = manager(&h, "c2", None, Some(&r)).unwrap();
    let e = m.create().unwrap_err().to_string();
    assert!(
        e.contains("(the pids controller)") && e.contains("holds processes") && e.contains("absolute cgroupsPath"),
        "{e}"
    );
    assert!(!h.tree.root.join("amphi-c2").exists());
}

#[test]
fn v2_missing_controller_lists_what_is_there() {
    let tmp = tempfile::tempdir().unwrap();
    let fh = FakeHost { v1: vec![], v2: Some(("", vec!["memory", "pids"])), own: "/" };
    let tree = FakeTree::new(tmp.path(), &fh);
    let r = res(r#"{"cpu":{"cpus":"0"}}"#);
    let cfg = CgroupConfig { id: "c", cgroups_path: None, resources: Some(&r), linux_devices: None };
    let e = CgroupManager::with_layout(&tree.sys, &tree.layout, None, &cfg).err().unwrap().to_string();
    assert!(e.contains("cpu.cpus needs the cpuset controller") && e.contains("offers only: memory pids"), "{e}");
}

#[test]
fn rmdir_ebusy_is_retried_then_explained() {
    let h = host(FakeHost::hybrid());
    let mut m = manager(&h, "c1", None, None).unwrap();
    m.create().unwrap();
    let leaf = h.tree.mount("memory").join("amphi-c1");
    h.tree.sys.fail_rmdirs(&leaf, &[libc::EBUSY, libc::EBUSY, libc::EBUSY]);
    m.destroy().unwrap();
    assert!(!leaf.exists());
    assert_eq!(h.tree.sys.slept(), Duration::from_millis(1 + 2 + 4));
    // Tasks still inside: bounded retries, then an error naming them.
    let mut m = manager(&h, "c2", None, None).unwrap();
    m.create_apply_add(31).unwrap();
    let e = m.destroy().unwrap_err().to_string();
    assert!(e.contains("amphi-c2") && e.contains("processes [31] are still in it"), "{e}");
    exit_tasks(&h.tree.root);
    m.destroy().unwrap();
}

#[test]
fn sub_cgroups_made_inside_the_container_are_removed_first() {
    let h = host(FakeHost::v2());
    let mut m = manager(&h, "c1", None, None).unwrap();
    m.create().unwrap();
    let leaf = h.tree.root.join("amphi-c1");
    h.tree.sys.mkdir(&leaf.join("inner")).unwrap();
    h.tree.sys.mkdir(&leaf.join("inner/deeper")).unwrap();
    std::fs::write(leaf.join("inner/deeper/cgroup.procs"), "12\n13\n").unwrap();
    std::fs::write(leaf.join("cgroup.procs"), "11\n").unwrap();
    assert_eq!(m.pids().unwrap(), vec![11, 12, 13]);
    exit_tasks(&h.tree.root);
    m.destroy().unwrap();
    assert!(!leaf.exists());
}

#[test]
fn freeze_thaw_and_signal_all() {
    let h = host(FakeHost::hybrid());
    let mut m = manager(&h, "c1", None, None).unwrap();
    m.create_apply_add(50).unwrap();
    let fz = h.tree.mount("freezer").join("amphi-c1");
    m.freeze().unwrap();
    assert_eq!(m.freezer_state().unwrap(), FreezerState::Frozen);
    m.thaw().unwrap();
    assert_eq!(m.freezer_state().unwrap(), FreezerState::Thawed);
    std::fs::write(fz.join("cgroup.procs"), "50\n51\n").unwrap();
    h.tree.sys.clear_writes();
    m.signal_all(libc::SIGTERM).unwrap();
    assert_eq!(h.tree.sys.signals(), vec![(50, libc::SIGTERM), (51, libc::SIGTERM)]);
    let fw: Vec<String> = h.tree.sys.writes().into_iter().filter(|(p, _)| p.starts_with(&fz)).map(|(_, v)| v).collect();
    assert_eq!(fw, ["FROZEN", "THAWED"]);
    // Pure v2: SIGKILL goes through cgroup.kill.
    let h2 = host(FakeHost::v2());
    let mut m2 = manager(&h2, "c1", None, None).unwrap();
    m2.create_apply_add(60).unwrap();
    m2.signal_all(libc::SIGKILL).unwrap();
    assert_eq!(read(h2.tree.root.join("amphi-c1/cgroup.kill")), "1");
    assert!(h2.tree.sys.signals().is_empty());
    m2.freeze().unwrap();
    assert_eq!(m2.freezer_state().unwrap(), FreezerState::Frozen);
}

#[test]
fn sigkill_thaws_a_cgroup_left_frozen() {
    // A command killed between freeze and thaw leaves the cgroup frozen;
    // SIGKILL must still end the processes, so it thaws afterwards.
    let h = host(FakeHost::hybrid());
    let mut m = manager(&h, "c1", None, None).unwrap();
    m.create_apply_add(50).unwrap();
    let fz = h.tree.mount("freezer").join("amphi-c1");
    m.freeze().unwrap();
    h.tree.sys.clear_writes();
    m.signal_all(libc::SIGTERM).unwrap();
    let fw: Vec<String> = h.tree.sys.writes().into_iter().filter(|(p, _)| p.starts_with(&fz)).map(|(_, v)| v).collect();
    assert!(fw.is_empty(), "a paused container stays paused for SIGTERM: {fw:?}");
    m.signal_all(libc::SIGKILL).unwrap();
    let fw: Vec<String> = h.tree.sys.writes().into_iter().filter(|(p, _)| p.starts_with(&fz)).map(|(_, v)| v).collect();
    assert_eq!(fw, ["THAWED"]);
    assert_eq!(m.freezer_state().unwrap(), FreezerState::Thawed);
}

#[test]
fn stats_come_from_the_right_hierarchies() {
    let h = host(FakeHost::hybrid());
    let mut m = manager(&h, "c1", None, None).unwrap();
    m.create().unwrap();
    let s = m.stats().unwrap();
    let mem = s.memory.unwrap();
    assert_eq!((mem.usage, mem.max_usage, mem.limit, mem.cache), (4096, 8192, None, 1024));
    let cpu = s.cpu.unwrap();
    assert_eq!((cpu.usage_total_ns, cpu.usage_user_ns, cpu.throttled_periods), (123456789, 100_000_000, 1));
    assert_eq!(s.pids.unwrap().current, 1);
    let h2 = host(FakeHost::v2());
    let mut m2 = manager(&h2, "c1", None, None).unwrap();
    m2.create().unwrap();
    let s = m2.stats().unwrap();
    assert_eq!(s.cpu.unwrap().usage_total_ns, 1_500_000);
    assert_eq!(s.memory.unwrap().cache, 1024);
}

#[test]
fn mounts_describe_each_hierarchy() {
    let h = host(FakeHost::v1());
    let m = manager(&h, "c1", None, None).unwrap();
    let mounts = m.mounts();
    let cpu = mounts.iter().find(|x| x.dir_name == "cpu,cpuacct").unwrap();
    assert_eq!(cpu.options, "cpu,cpuacct");
    assert_eq!(cpu.symlinks, vec!["cpu".to_string(), "cpuacct".to_string()]);
    assert_eq!(cpu.host_path, cpu.mount_point.join("amphi-c1"));
    let sd = mounts.iter().find(|x| x.dir_name == "systemd").unwrap();
    assert_eq!(sd.options, "name=systemd");
    assert!(sd.symlinks.is_empty());
    let h2 = host(FakeHost::v2());
    let m2 = manager(&h2, "c1", None, None).unwrap();
    let v2 = &m2.mounts()[0];
    assert!(v2.v2 && v2.dir_name.is_empty() && v2.options.is_empty());
    let h3 = host(FakeHost::hybrid());
    let m3 = manager(&h3, "c1", None, None).unwrap();
    assert_eq!(m3.mounts().iter().filter(|x| x.v2).map(|x| x.dir_name.as_str()).collect::<Vec<_>>(), ["unified"]);
}

#[test]
fn update_touches_only_what_is_set() {
    let h = host(FakeHost::hybrid());
    let mut m = manager(&h, "c1", None, Some(&default_res())).unwrap();
    m.create_apply_add(8).unwrap();
    let mem = h.tree.mount("memory").join("amphi-c1");
    std::fs::write(mem.join("memory.limit_in_bytes"), "1000").unwrap();
    // Reflect the v1 devices state the kernel would now list.
    let dev = h.tree.mount("devices").join("amphi-c1");
    let list: String = h
        .tree
        .sys
        .writes()
        .into_iter()
        .filter(|(p, _)| *p == dev.join("devices.allow"))
        .map(|(_, l)| l + "\n")
        .collect();
    std::fs::write(dev.join("devices.list"), list).unwrap();
    h.tree.sys.clear_writes();
    let mut m = CgroupManager::from_state_with(&h.tree.sys, m.state().clone());
    m.update(&res(r#"{"memory":{"limit":4000,"swap":8000}}"#)).unwrap();
    let w = h.tree.sys.writes();
    assert_eq!(
        w,
        vec![
            (mem.join("memory.memsw.limit_in_bytes"), "8000".into()),
            (mem.join("memory.limit_in_bytes"), "4000".into())
        ]
    );
    // Same device rules again: nothing to write.
    h.tree.sys.clear_writes();
    m.update(&default_res()).unwrap();
    assert!(h.tree.sys.writes().is_empty(), "{:?}", h.tree.sys.writes());
    // A controller the cgroups were made without is refused by name.
    let e = m.update(&res(r#"{"network":{"classID":1}}"#)).unwrap_err().to_string();
    assert!(e.contains("network.classID needs the net_cls controller"), "{e}");
}

#[test]
fn realtime_budget_flows_down_new_parents() {
    let h = host(FakeHost::hybrid());
    let r = res(r#"{"cpu":{"realtimeRuntime":20000,"realtimePeriod":1000000}}"#);
    let mut m = manager(&h, "c1", Some("/rt/parent/c1"), Some(&r)).unwrap();
    m.create_apply_add(3).unwrap();
    let cpu = h.tree.mount("cpu");
    for d in ["rt", "rt/parent", "rt/parent/c1"] {
        assert_eq!(read(cpu.join(d).join("cpu.rt_runtime_us")), "20000", "{d}");
    }
}

#[test]
fn host_facts_list_controllers() {
    let h = host(FakeHost::hybrid());
    let f = host_facts_from(&h.tree.layout, &h.tree.sys, &h.tree.root.join("no-systemd")).unwrap();
    assert_eq!(f.layout, LayoutKind::Hybrid);
    assert!(f.v1 && f.v2 && !f.rdma && !f.systemd_running);
    assert_eq!(f.v2_controllers, vec!["hugetlb"]);
    assert!(f.controllers.contains(&"memory".to_string()) && f.controllers.contains(&"hugetlb".to_string()));
    assert!(!f.controllers.iter().any(|c| c.starts_with("name=")));
    assert!(f.v1_hierarchies.contains(&vec!["name=systemd".to_string()]));
}

#[test]
fn bad_paths_and_ids() {
    let h = host(FakeHost::hybrid());
    assert!(manager(&h, "c1", Some("/"), None).err().unwrap().to_string().contains("root cgroup"));
    assert!(manager(&h, "a/b", None, None).is_err());
    // A relative path needs our own cgroup for each hierarchy.
    let cfg = CgroupConfig { id: "c", cgroups_path: Some(Path::new("rel")), resources: None, linux_devices: None };
    let e = CgroupManager::with_layout(&h.tree.sys, &h.tree.layout, None, &cfg).err().unwrap().to_string();
    assert!(e.contains("relative cgroupsPath") && e.contains("absolute cgroupsPath"), "{e}");
}

#[test]
fn prepare_opens_join_handles_and_view_matches() {
    let h = host(FakeHost::hybrid());
    let mut m = manager(&h, "c1", None, Some(&default_res())).unwrap();
    let join = m.prepare().unwrap();
    assert_eq!(join.tasks.len(), 9);
    assert!(join.clone_into.is_some(), "hybrid: placed in unified at clone time");
    join.join_self().unwrap();
    for (p, _) in &join.tasks {
        assert!(p.ends_with("amphi-c1/tasks"));
        assert_eq!(read(p), "0");
    }
    let view = m.view();
    assert!(!view.v2);
    assert_eq!(view.hierarchies.len(), 9);
    let sd = view.hierarchies.iter().find(|(n, _, _)| n == "systemd").unwrap();
    assert_eq!(sd.1, "none,name=systemd");
    assert_eq!(sd.2, h.tree.mount("name=systemd").join("amphi-c1"));
    let h2 = host(FakeHost::v1());
    let m2 = manager(&h2, "c1", None, None).unwrap();
    let v = m2.view();
    assert!(
        v.links.contains(&("cpu".into(), "cpu,cpuacct".into()))
            && v.links.contains(&("cpuacct".into(), "cpu,cpuacct".into()))
    );
    let h3 = host(FakeHost::v2());
    let mut m3 = manager(&h3, "c1", None, None).unwrap();
    let j3 = m3.prepare().unwrap();
    assert!(j3.tasks.is_empty() && j3.clone_into.is_some());
    let v3 = m3.view();
    assert!(v3.v2);
    assert_eq!(v3.hierarchies, vec![(String::new(), String::new(), h3.tree.root.join("amphi-c1"))]);
}

#[test]
fn prepare_failure_leaves_nothing() {
    let h = host(FakeHost::v1());
    let before = tree_dirs(&h.tree.root);
    let r = res(r#"{"pids":{"limit":3}}"#);
    let mut m = manager(&h, "c1", None, Some(&r)).unwrap();
    std::fs::remove_file(h.tree.mount("pids").join("tasks")).unwrap();
    h.tree.sys.fail_writes(&h.tree.mount("pids").join("amphi-c1/pids.max"), &[libc::EACCES]);
    let e = m.prepare().unwrap_err().to_string();
    assert!(e.contains("pids.max") && e.contains("permission denied"), "{e}");
    assert_eq!(tree_dirs(&h.tree.root), before);
}
