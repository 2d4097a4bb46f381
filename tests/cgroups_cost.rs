//! Measures what a default spec's cgroups cost on this host: detection and
//! path resolution (`new`), `prepare` (mkdir in every hierarchy + the device
//! rules + opening the join handles), a child that joins them the way the
//! init does, and `destroy` right after it exits. Prints medians; asserts
//! nothing about time (measurements are not tests).
//!
//! Run: `cargo test --release --test cgroups_cost -- --ignored --nocapture`
//! as root (COST_ITERATIONS=N to change the sample size).

mod cgroups_common;

use std::time::{Duration, Instant};

use amphi::linux::cgroups::{CgroupConfig, CgroupManager};
use cgroups_common::*;
use oci_spec::runtime::LinuxResources;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn us(d: Duration) -> String {
    format!("{:>8.1} µs", d.as_secs_f64() * 1e6)
}

#[test]
#[ignore = "needs root and cgroupfs; a measurement, run by hand"]
fn default_spec_cost() {
    if !is_root() {
        skip("needs root");
        return;
    }
    let n: usize = std::env::var("COST_ITERATIONS").ok().and_then(|s| s.parse().ok()).unwrap_or(200);
    let res: LinuxResources = serde_json::from_str(r#"{"devices":[{"allow":false,"access":"rwm"}]}"#).unwrap();
    let (mut t_new, mut t_prep, mut t_child, mut t_base, mut t_destroy, mut t_total) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    let mut nodes = 0;
    for i in 0..n {
        let id = unique("cost");
        // Baseline: the same child without cgroups.
        let t = Instant::now();
        spawn_in(&[], &[], "exit 0").unwrap().wait().unwrap();
        t_base.push(t.elapsed());

        let t0 = Instant::now();
        let cfg = CgroupConfig { id: &id, cgroups_path: None, resources: Some(&res), linux_devices: None };
        let mut m = CgroupManager::new(&cfg).unwrap();
        let t1 = Instant::now();
        let join = m.prepare().unwrap();
        let t2 = Instant::now();
        let tasks: Vec<i32> = join.tasks.iter().map(|(_, fd)| std::os::fd::AsRawFd::as_raw_fd(fd)).collect();
        // The init uses CLONE_INTO_CGROUP for the cgroup2 directory; a
        // Command cannot, so here the child writes cgroup.procs instead.
        let procs: Vec<_> = m.unified_path().map(open_procs).into_iter().collect();
        spawn_in(&tasks, &raw(&procs), "exit 0").unwrap().wait().unwrap();
        let t3 = Instant::now();
        drop(join);
        m.destroy().unwrap();
        let t4 = Instant::now();
        nodes = m.state().nodes.len();
        if i > 0 {
            t_new.push(t1 - t0);
            t_prep.push(t2 - t1);
            t_child.push(t3 - t2);
            t_destroy.push(t4 - t3);
            t_total.push(t4 - t0);
        }
    }
    let (child, base) = (median(t_child), median(t_base));
    println!("cgroups of a default spec, {nodes} hierarchies, median of {} runs:", n - 1);
    println!("  new (detect + resolve)        {}", us(median(t_new)));
    println!("  prepare (mkdir, devices, fds) {}", us(median(t_prep)));
    println!(
        "  child joining, minus baseline {}   (baseline child {})",
        us(child.saturating_sub(base)),
        us(base).trim()
    );
    println!("  destroy                       {}", us(median(t_destroy)));
    println!("  new + prepare + destroy       {}", us(median(t_total).saturating_sub(child)));
}

#[test]
#[ignore = "a measurement, run by hand"]
fn detection_cost() {
    use amphi::linux::cgroups::layout::HostLayout;
    let n = 500;
    let mut t = vec![];
    for _ in 0..n {
        let s = Instant::now();
        let _ = HostLayout::detect().unwrap();
        t.push(s.elapsed());
    }
    let mut r = vec![];
    for _ in 0..n {
        let s = Instant::now();
        let _ = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        r.push(s.elapsed());
    }
    let mut st = vec![];
    for _ in 0..n {
        let s = Instant::now();
        let _ = nix::sys::statfs::statfs("/sys/fs/cgroup");
        st.push(s.elapsed());
    }
    println!("detect {}  read mountinfo {}  statfs {}", us(median(t)), us(median(r)), us(median(st)));
}

#[test]
#[ignore = "a measurement, run by hand"]
fn resolve_cost() {
    use amphi::linux::cgroups::layout::HostLayout;
    use amphi::linux::cgroups::sys::HostSys;
    let res: LinuxResources = serde_json::from_str(r#"{"devices":[{"allow":false,"access":"rwm"}]}"#).unwrap();
    let layout = HostLayout::detect().unwrap();
    let mut t = vec![];
    for _ in 0..500 {
        let s = Instant::now();
        let cfg = CgroupConfig { id: "x", cgroups_path: None, resources: Some(&res), linux_devices: None };
        let _ = CgroupManager::with_layout(HostSys, &layout, None, &cfg).unwrap();
        t.push(s.elapsed());
    }
    println!("with_layout {}", us(median(t)));
}
