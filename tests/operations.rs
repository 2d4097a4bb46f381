//! Root tier: the operations on running containers besides exec (pause and
//! resume, update, ps, events, kill with every signal), and runc's
//! leniencies (create without a process, blkio weight 0, relative masked
//! and read-only paths), recursive mount attributes and security labels on
//! hosts without AppArmor or SELinux.
//! Run by scripts/test.sh with `cargo test -- --ignored`.

mod common;

use std::io::Write;
use std::process::Stdio;

use common::{cgroups_of, stderr, stdout, unique_id, Amphi, Bundle};

fn run_detached(a: &Amphi, b: &Bundle, prefix: &str) -> String {
    let id = unique_id(prefix);
    a.ok(&["run", "-d", "--bundle", b.path().to_str().unwrap(), &id]);
    id
}

/// The container's cgroup directory in one v1 hierarchy (or the v2 one).
fn cgroup_dir(id: &str, controller: &str) -> Option<std::path::PathBuf> {
    cgroups_of(id).into_iter().find(|p| p.starts_with(format!("/sys/fs/cgroup/{controller}")))
}

fn process_state(pid: i64) -> String {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat.get(stat.rfind(')').unwrap_or(0) + 2..).unwrap_or("").chars().take(1).collect()
}

#[test]
#[ignore = "needs root and busybox-static: run by scripts/test.sh"]
fn pause_and_resume_freeze_the_container_and_show_in_state_and_list() {
    require_root!();
    let a = Amphi::new();
    let b = Bundle::new(&["/bin/sh", "-c", "while :; do sleep 1; done"]);
    let id = run_detached(&a, &b, "pause");
    let out = a.run(&["resume", &id]);
    assert_eq!(out.status.code(), Some(4), "resume of a running container: {}", stderr(&out));
    a.ok(&["pause", &id]);
    assert_eq!(a.status(&id), "paused");
    assert!(a.ok(&["list"]).contains("paused"));
    if let Some(dir) = cgroup_dir(&id, "freezer") {
        assert_eq!(std::fs::read_to_string(dir.join("freezer.state")).unwrap().trim(), "FROZEN");
    }
    let out = a.run(&["pause", &id]);
    assert_eq!(out.status.code(), Some(4));
    assert!(stderr(&out).contains("paused already"), "{}", stderr(&out));
    // kill --all of a paused container keeps it paused.
    a.ok(&["kill", "--all", &id, "CONT"]);
    assert_eq!(a.status(&id), "paused");
    a.ok(&["resume", &id]);
    assert_eq!(a.status(&id), "running");
    // SIGKILL reaches a paused container.
    a.ok(&["pause", &id]);
    a.ok(&["kill", &id, "KILL"]);
    a.wait_status(&id, "stopped");
    a.ok(&["delete", &id]);
    assert!(cgroups_of(&id).is_empty());
}

#[test]
#[ignore = "needs root and busybox-static: run by scripts/test.sh"]
fn update_applies_limits_live_and_keeps_them_in_state() {
    require_root!();
    let a = Amphi::new();
    let mut b = Bundle::new(&["/bin/sleep", "600"]);
    b.edit(|c| c["linux"]["resources"]["memory"] = serde_json::json!({"limit": 268435456}));
    let id = run_detached(&a, &b, "update");
    a.ok(&["update", "--memory", "128m", "--pids-limit", "50", "--cpu-quota", "50000", "--cpu-period", "100000", &id]);
    if let Some(dir) = cgroup_dir(&id, "memory") {
        assert_eq!(std::fs::read_to_string(dir.join("memory.limit_in_bytes")).unwrap().trim(), "134217728");
    }
    if let Some(dir) = cgroup_dir(&id, "pids") {
        assert_eq!(std::fs::read_to_string(dir.join("pids.max")).unwrap().trim(), "50");
    }
    if let Some(dir) = cgroup_dir(&id, "cpu") {
        assert_eq!(std::fs::read_to_string(dir.join("cpu.cfs_quota_us")).unwrap().trim(), "50000");
    }
    // A resources document on stdin; zeros change nothing (as docker sends them).
    let mut child = a
        .cmd()
        .args(["update", "--resources", "-", &id])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(br#"{"pids":{"limit":60},"memory":{"limit":0,"swap":0},"blockIO":{"weight":0}}"#)
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(a.root.path().join(&id).join("state.json")).unwrap()).unwrap();
    assert_eq!(state["resources"]["memory"]["limit"], 134217728, "{state}");
    assert_eq!(state["resources"]["pids"]["limit"], 60);
    assert_eq!(state["resources"]["cpu"]["quota"], 50000);
    // A limit the kernel refuses names the field and the file.
    let out = a.run(&["update", "--cpu-period", "5", &id]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("cpu.period") || stderr(&out).contains("cpu.cfs_period_us"), "{}", stderr(&out));
    a.ok(&["delete", "--force", &id]);
}

#[test]
#[ignore = "needs root and busybox-static: run by scripts/test.sh"]
fn events_print_runcs_stats_records() {
    require_root!();
    let a = Amphi::new();
    let b = Bundle::new(&["/bin/sh", "-c", "sleep 600 & sleep 600"]);
    let id = run_detached(&a, &b, "events");
    let out = a.ok(&["events", "--stats", &id]);
    let e: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!((e["type"].as_str(), e["id"].as_str()), (Some("stats"), Some(id.as_str())));
    let d = &e["data"];
    assert!(d["pids"]["current"].as_u64().unwrap() >= 2, "{d}");
    assert!(d["memory"]["usage"]["usage"].as_u64().unwrap() > 0, "{d}");
    assert!(d["cpu"]["usage"]["total"].as_u64().is_some(), "{d}");
    assert!(d["memory"]["raw"].is_object(), "{d}");
    assert!(d["network_interfaces"].is_null(), "only lo in the container's network namespace: {d}");
    // With an interval: records until the container stops.
    let mut cmd = a.cmd();
    cmd.args(["events", "--interval", "100ms", &id]);
    let watcher = std::thread::spawn(move || common::output_via_files(&mut cmd));
    std::thread::sleep(std::time::Duration::from_millis(450));
    a.ok(&["kill", "--all", &id, "KILL"]);
    let out = watcher.join().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let records: Vec<serde_json::Value> = stdout(&out).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(records.len() >= 2, "{}", stdout(&out));
    assert!(records.iter().all(|r| r["type"] == "stats"));
    let out = a.run(&["events", "--stats", &id]);
    assert_eq!(out.status.code(), Some(4), "a stopped container: {}", stderr(&out));
    a.ok(&["delete", &id]);
}

#[test]
#[ignore = "needs root and busybox-static: run by scripts/test.sh"]
fn kill_takes_every_signal_runc_takes() {
    require_root!();
    let a = Amphi::new();
    // The shell traps SIGRTMIN+3 (37) and SIGUSR1 and says so.
    let b = Bundle::new(&[
        "/bin/sh",
        "-c",
        "trap 'echo rt > /tmp/got; exit 0' 37; trap 'echo usr1 >> /tmp/seen' USR1; while :; do sleep 0.1; done",
    ]);
    let id = run_detached(&a, &b, "signals");
    std::thread::sleep(std::time::Duration::from_millis(300));
    let seen = |n: usize| {
        for _ in 0..200 {
            if std::fs::read_to_string(b.rootfs().join("tmp/seen")).unwrap_or_default().lines().count() >= n {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    };
    // One at a time: a second classic signal sent before the first was
    // handled would merge with it.
    a.ok(&["kill", &id, "usr1"]);
    seen(1);
    a.ok(&["kill", &id, "10"]);
    seen(2);
    assert_eq!(std::fs::read_to_string(b.rootfs().join("tmp/seen")).unwrap(), "usr1\nusr1\n");
    a.ok(&["kill", &id, "SIGRTMIN+3"]);
    a.wait_status(&id, "stopped");
    assert_eq!(std::fs::read_to_string(b.rootfs().join("tmp/got")).unwrap(), "rt\n");
    a.ok(&["delete", &id]);
}

#[test]
#[ignore = "needs root and busybox-static: run by scripts/test.sh"]
fn a_config_without_process_is_created_and_refused_at_start() {
    require_root!();
    let a = Amphi::new();
    let mut b = Bundle::new(&["/bin/true"]);
    b.edit(|c| {
        c.as_object_mut().unwrap().remove("process");
    });
    let id = unique_id("noproc");
    a.ok(&["create", "--bundle", b.path().to_str().unwrap(), &id]);
    assert_eq!(a.status(&id), "created");
    let out = a.run(&["start", &id]);
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    assert!(stderr(&out).contains("no process to start"), "{}", stderr(&out));
    a.wait_status(&id, "stopped");
    a.ok(&["delete", &id]);
    assert!(cgroups_of(&id).is_empty());
    // `run` cannot run nothing, and leaves nothing.
    let out = a.run(&["run", "--bundle", b.path().to_str().unwrap(), &unique_id("noproc")]);
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    assert!(a.leftovers().is_empty());
}

#[test]
#[ignore = "needs root and busybox-static: run by scripts/test.sh"]
fn runcs_leniencies_blkio_weight_zero_and_relative_paths() {
    require_root!();
    let a = Amphi::new();
    let mut b =
        Bundle::new(&["/bin/sh", "-c", "cat /etc/hidden 2>&1 | wc -c; touch /etc/ro/x 2>&1 | grep -c Read-only"]);
    std::fs::write(b.rootfs().join("etc/hidden"), "secret").unwrap();
    std::fs::create_dir(b.rootfs().join("etc/ro")).unwrap();
    b.edit(|c| {
        // docker 20.10's "not set" on hosts without blkio weight.
        c["linux"]["resources"]["blockIO"] = serde_json::json!({"weight": 0});
        c["linux"]["maskedPaths"] = serde_json::json!(["etc/hidden"]);
        c["linux"]["readonlyPaths"] = serde_json::json!(["etc/ro"]);
    });
    let out = a.run(&["run", "--bundle", b.path().to_str().unwrap(), &unique_id("lenient")]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "0\n1\n", "masked and read-only, relative to the rootfs");
}

#[test]
#[ignore = "needs root and busybox-static: run by scripts/test.sh"]
fn recursive_mount_attributes_reach_submounts() {
    require_root!();
    let a = Amphi::new();
    let host = tempfile::tempdir().unwrap();
    std::fs::create_dir(host.path().join("sub")).unwrap();
    let sub = host.path().join("sub");
    assert!(std::process::Command::new("mount").args(["-t", "tmpfs", "tmpfs"]).arg(&sub).status().unwrap().success());
    let mut b = Bundle::new(&[
        "/bin/sh",
        "-c",
        "touch /data/x 2>&1 | grep -c Read-only; touch /data/sub/y 2>&1 | grep -c Read-only; grep ' /data/sub ' /proc/self/mountinfo | grep -c noatime",
    ]);
    b.edit(|c| {
        c["mounts"].as_array_mut().unwrap().push(serde_json::json!({
            "destination": "/data", "type": "bind", "source": host.path(),
            "options": ["rbind", "rro", "rnoatime", "rnosuid"]
        }));
    });
    let out = a.run(&["run", "--bundle", b.path().to_str().unwrap(), &unique_id("rro")]);
    let _ = std::process::Command::new("umount").arg(&sub).status();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "1\n1\n1\n", "rro and rnoatime apply to the submount too");
}

#[test]
#[ignore = "needs root and busybox-static: run by scripts/test.sh"]
fn security_labels_the_host_cannot_apply_are_warned_about() {
    require_root!();
    let host = amphi::linux::lsm::Host::detect();
    if host.apparmor || host.selinux {
        eprintln!("SKIPPED: this host runs AppArmor or SELinux, so the labels would apply");
        return;
    }
    let a = Amphi::new();
    let mut b = Bundle::new(&["/bin/true"]);
    b.edit(|c| {
        c["process"]["apparmorProfile"] = "docker-default".into();
        c["process"]["selinuxLabel"] = "system_u:system_r:container_t:s0".into();
    });
    let out = a.run(&["run", "--bundle", b.path().to_str().unwrap(), &unique_id("lsm")]);
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    assert_eq!(err.matches("AppArmor is not enabled").count(), 1, "once: {err}");
    assert!(err.contains("docker-default"), "{err}");
    assert!(err.contains("SELinux is not enabled"), "{err}");
}

#[test]
#[ignore = "needs root and busybox-static: run by scripts/test.sh"]
fn the_inits_scheduler_and_frozen_state_are_visible_from_the_host() {
    require_root!();
    let a = Amphi::new();
    let mut b = Bundle::new(&["/bin/sleep", "600"]);
    b.edit(|c| c["process"]["scheduler"] = serde_json::json!({"policy": "SCHED_IDLE"}));
    let id = run_detached(&a, &b, "idle");
    let pid = a.state(&id)["pid"].as_i64().unwrap();
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let f: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    assert_eq!(f[38], "5", "SCHED_IDLE: {stat}");
    a.ok(&["pause", &id]);
    assert_ne!(process_state(pid), "R");
    a.ok(&["delete", "--force", &id]);
    // A scheduler the parent refuses fails before anything exists.
    let mut b = Bundle::new(&["/bin/true"]);
    b.edit(|c| c["process"]["scheduler"] = serde_json::json!({"policy": "SCHED_OTHER", "nice": 40}));
    let out = a.run(&["create", "--bundle", b.path().to_str().unwrap(), &unique_id("badsched")]);
    assert!(stderr(&out).contains("process.scheduler: nice 40"), "{}", stderr(&out));
    assert!(a.leftovers().is_empty());
}
