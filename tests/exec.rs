//! Root tier: `exec` into running containers (namespaces, cgroup, the
//! process's own settings, fd hygiene, terminals, failures), and the seccomp
//! notify listener, which create and exec both feed.
//! Run by scripts/test.sh with `cargo test -- --ignored`.

mod common;

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::process::Stdio;

use common::{cgroups_of, stderr, stdout, unique_id, Amphi, Bundle};

/// A running `sleep` container; deleted (with --force) when dropped.
struct Running {
    a: Amphi,
    b: Bundle,
    id: String,
}

impl Running {
    fn start(prefix: &str, edit: impl FnOnce(&mut serde_json::Value)) -> Running {
        let a = Amphi::new();
        let mut b = Bundle::new(&["/bin/sleep", "600"]);
        b.edit(edit);
        let id = unique_id(prefix);
        a.ok(&["run", "-d", "--bundle", b.path().to_str().unwrap(), &id]);
        Running { a, b, id }
    }

    fn pid(&self) -> i64 {
        self.a.state(&self.id)["pid"].as_i64().unwrap()
    }

    fn exec(&self, args: &[&str]) -> std::process::Output {
        let mut all = vec!["exec"];
        let split = args.iter().position(|a| *a == "--").unwrap_or(0);
        all.extend_from_slice(&args[..split]);
        all.push(&self.id);
        all.extend_from_slice(&args[if split == 0 { 0 } else { split + 1 }..]);
        self.a.run(&all)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.a.run(&["delete", "--force", &self.id]);
    }
}

fn ns_links(pid: &str) -> Vec<String> {
    ["pid", "mnt", "net", "ipc", "uts", "cgroup"]
        .iter()
        .map(|n| std::fs::read_link(format!("/proc/{pid}/ns/{n}")).unwrap().to_string_lossy().into_owned())
        .collect()
}

#[test]
#[ignore = "needs root and busybox-static: run by scripts/test.sh"]
fn exec_joins_every_namespace_and_the_cgroup_and_reports_the_exit_code() {
    require_root!();
    let r = Running::start("exec", |_| {});
    let init = r.pid().to_string();
    let out = r.exec(&[
        "/bin/sh",
        "-c",
        "for n in pid mnt net ipc uts cgroup; do readlink /proc/self/ns/$n; done; echo $$; hostname; cat /proc/self/cgroup",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let o = stdout(&out);
    let lines: Vec<&str> = o.lines().collect();
    // Same namespaces as the init (time is absent on older kernels).
    assert_eq!(lines[..6].to_vec(), ns_links(&init), "{o}");
    let pid_in_container: i32 = lines[6].parse().unwrap();
    assert!(pid_in_container > 1, "a process of the container's pid namespace: {o}");
    assert_eq!(lines[7], r.b.config["hostname"].as_str().unwrap(), "{o}");
    // The cgroup namespace is the container's, rooted at its cgroup.
    assert!(lines[8..].iter().any(|l| l.ends_with(":/")), "{o}");
    let host_cgroups = std::fs::read_to_string(format!("/proc/{init}/cgroup")).unwrap();
    assert!(host_cgroups.contains(&format!("amphi-{}", r.id)), "{host_cgroups}");

    let out = r.exec(&["/bin/sh", "-c", "exit 7"]);
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
    let out = r.exec(&["/bin/sh", "-c", "kill -9 $$"]);
    assert_eq!(out.status.code(), Some(137), "{}", stderr(&out));
}

#[test]
#[ignore = "needs root and busybox-static: run by scripts/test.sh"]
fn exec_flags_change_the_configs_process() {
    require_root!();
    let r = Running::start("execflags", |c| {
        c["process"]["env"] = serde_json::json!(["PATH=/bin", "FROM_CONFIG=1"]);
    });
    let pidfile = r.b.path().join("exec.pid");
    let out = r.exec(&[
        "--cwd",
        "/tmp",
        "-e",
        "EXTRA=2",
        "-u",
        "65534:65534",
        "-g",
        "7",
        "--pid-file",
        pidfile.to_str().unwrap(),
        "--",
        "/bin/sh",
        "-c",
        "pwd; echo $FROM_CONFIG$EXTRA; id -u; id -g; id -G; grep NoNewPrivs /proc/self/status",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let o = stdout(&out);
    let lines: Vec<&str> = o.lines().collect();
    assert_eq!(lines[..4], ["/tmp", "12", "65534", "65534"], "{o}");
    assert!(lines[4].contains('7'), "{o}");
    assert_eq!(lines[5], "NoNewPrivs:\t1", "the config's noNewPrivileges: {o}");
    let pid: i32 = std::fs::read_to_string(&pidfile).unwrap().trim().parse().unwrap();
    assert!(pid > 0);
    let out = r.exec(&["--no-new-privs=false", "--", "/bin/grep", "NoNewPrivs", "/proc/self/status"]);
    assert_eq!(stdout(&out).trim(), "NoNewPrivs:\t0", "{}", stderr(&out));
}

#[test]
#[ignore = "needs root and busybox-static: run by scripts/test.sh"]
fn a_process_file_brings_its_own_capabilities_and_rlimits_and_the_containers_seccomp() {
    require_root!();
    let r = Running::start("execproc", |c| {
        c["linux"]["seccomp"] = serde_json::json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]
        });
    });
    let process = r.b.path().join("process.json");
    std::fs::write(
        &process,
        serde_json::to_vec(&serde_json::json!({
            "args": ["/bin/sh", "-c", "grep -E '^Cap(Eff|Bnd)' /proc/self/status; ulimit -n; mkdir /tmp/d && echo made || echo denied"],
            "cwd": "/",
            "user": {"uid": 0, "gid": 0},
            "env": ["PATH=/bin"],
            "capabilities": {"bounding": ["CAP_KILL"], "effective": ["CAP_KILL"], "permitted": ["CAP_KILL"]},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 200, "soft": 100}],
            "noNewPrivileges": true
        }))
        .unwrap(),
    )
    .unwrap();
    let out = r.exec(&["--process", process.to_str().unwrap(), "--"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let o = stdout(&out);
    assert!(o.contains("CapEff:\t0000000000000020") && o.contains("CapBnd:\t0000000000000020"), "{o}");
    assert!(o.contains("\n100\n"), "{o}");
    assert!(o.trim_end().ends_with("denied"), "the container's seccomp filter: {o}");
}

#[test]
#[ignore = "needs root and busybox-static: run by scripts/test.sh"]
fn exec_does_not_leak_host_fds_but_keeps_preserved_ones() {
    require_root!();
    let r = Running::start("execfds", |_| {});
    let dir = std::fs::File::open("/").unwrap();
    let raw = dir.as_raw_fd();
    let run = |extra: &[&str]| {
        let mut cmd = r.a.cmd();
        cmd.arg("exec").args(extra).args([&r.id, "/bin/sh", "-c", "ls /proc/self/fd | sort -n | tr '\\n' ' '"]);
        let onto_fd3 = move || {
            // dup2 onto itself would keep close-on-exec: clear the flag then.
            let r = if raw == 3 {
                // SAFETY: F_SETFD on an open fd, in the pre-exec child: async-signal-safe.
                unsafe { libc::fcntl(3, libc::F_SETFD, 0) }
            } else {
                // SAFETY: dup2 of an open fd, in the pre-exec child: async-signal-safe.
                unsafe { libc::dup2(raw, 3) }
            };
            if r < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        };
        // SAFETY: the hook only calls dup2 (onto fd 3, without CLOEXEC).
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, onto_fd3);
        }
        common::output_via_files(&mut cmd)
    };
    let out = run(&[]);
    assert_eq!(stdout(&out).trim(), "0 1 2 3", "host fd leaked (ls opens 3): {}", stderr(&out));
    let out = run(&["--preserve-fds", "1"]);
    assert_eq!(stdout(&out).trim(), "0 1 2 3 4", "{}", stderr(&out));
}

#[test]
#[ignore = "needs root and busybox-static: run by scripts/test.sh"]
fn exec_failures_name_the_cause_and_leave_nothing() {
    require_root!();
    let r = Running::start("execfail", |_| {});
    let out = r.exec(&["no-such-program"]);
    assert_ne!(out.status.code(), Some(0));
    assert!(stderr(&out).contains("executable file not found in $PATH"), "{}", stderr(&out));
    let out = r.exec(&["--cwd", "/no/such/dir", "--", "/bin/true"]);
    assert!(stderr(&out).contains("process.cwd /no/such/dir"), "{}", stderr(&out));
    let out = r.exec(&["-u", "nobody", "--", "/bin/true"]);
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    let out = r.exec(&["-d", "-t", "--", "/bin/true"]);
    assert_eq!(out.status.code(), Some(5));
    assert!(stderr(&out).contains("--console-socket"), "{}", stderr(&out));
    // Only the init is left in the container.
    let pids: Vec<i32> = serde_json::from_str(&r.a.ok(&["ps", "--format", "json", &r.id])).unwrap();
    assert_eq!(pids, vec![r.pid() as i32]);
    // Stopped containers take no exec.
    r.a.ok(&["kill", &r.id, "KILL"]);
    r.a.wait_status(&r.id, "stopped");
    let out = r.exec(&["/bin/true"]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
}

#[test]
#[ignore = "needs root and busybox-static: run by scripts/test.sh"]
fn detached_exec_writes_the_pid_and_returns() {
    require_root!();
    let r = Running::start("execd", |_| {});
    let pidfile = r.b.path().join("d.pid");
    let out = r.exec(&["-d", "--pid-file", pidfile.to_str().unwrap(), "--", "/bin/sleep", "300"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let pid: i32 = std::fs::read_to_string(&pidfile).unwrap().trim().parse().unwrap();
    let pids: Vec<i32> = serde_json::from_str(&r.a.ok(&["ps", "--format", "json", &r.id])).unwrap();
    assert!(pids.contains(&pid), "{pids:?} lacks {pid}");
    let table = r.a.ok(&["ps", &r.id]);
    assert!(table.lines().next().unwrap().contains("PID"), "{table}");
    assert!(table.contains("sleep 300"), "{table}");
    let table = r.a.ok(&["ps", &r.id, "-o", "pid,comm"]);
    assert_eq!(table.lines().count(), 3, "{table}");
}

#[test]
#[ignore = "needs root and busybox-static: run by scripts/test.sh"]
fn exec_with_a_terminal_sends_its_pty_master() {
    require_root!();
    let r = Running::start("exectty", |_| {});
    let sock_dir = tempfile::tempdir().unwrap();
    let sock = sock_dir.path().join("console.sock");
    let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let t = std::thread::spawn(move || receive_fd(&listener));
    let out = r.exec(&[
        "-t",
        "-d",
        "--console-socket",
        sock.to_str().unwrap(),
        "--",
        "/bin/sh",
        "-c",
        "test -t 0 && test -t 1 && echo tty-ok; tty",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let master = t.join().unwrap();
    let text = read_until(&master, "/dev/pts/");
    assert!(text.contains("tty-ok") && text.contains("/dev/pts/"), "{text:?}");
}

#[test]
#[ignore = "needs root, busybox-static and script(1): run by scripts/test.sh"]
fn exec_tty_in_the_foreground_relays_the_terminal() {
    require_root!();
    if common::which("script").is_none() {
        eprintln!("SKIPPED: script(1) is not installed (util-linux)");
        return;
    }
    let r = Running::start("execfg", |_| {});
    let cmd = format!(
        "{} --root {} exec -t {} /bin/sh -c 'tty; exit 3'",
        common::amphi_bin().display(),
        r.a.root.path().display(),
        r.id
    );
    let out = common::output_via_files(
        std::process::Command::new("script").args(["-qec", &cmd, "/dev/null"]).stdin(Stdio::null()),
    );
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stdout(&out).contains("/dev/pts/"), "{}", stdout(&out));
}

#[test]
#[ignore = "needs root and busybox-static: run by scripts/test.sh"]
fn exec_into_a_paused_container_needs_ignore_paused() {
    require_root!();
    let r = Running::start("execpaused", |_| {});
    r.a.ok(&["pause", &r.id]);
    let out = r.exec(&["/bin/true"]);
    assert_eq!(out.status.code(), Some(4));
    assert!(stderr(&out).contains("--ignore-paused"), "{}", stderr(&out));
    // Allowed with the flag: the process joins the frozen cgroup, so the
    // exec completes once the container is resumed (as with runc).
    let mut cmd = r.a.cmd();
    cmd.args(["exec", "--ignore-paused", &r.id, "/bin/sh", "-c", "echo thawed"]);
    let waiter = std::thread::spawn(move || common::output_via_files(&mut cmd));
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(!waiter.is_finished(), "the exec'd process runs only once resumed");
    r.a.ok(&["resume", &r.id]);
    let out = waiter.join().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "thawed\n");
}

#[test]
#[ignore = "needs root and busybox-static: run by scripts/test.sh"]
fn exec_cpu_affinity_and_scheduler() {
    require_root!();
    let r = Running::start("execsched", |c| {
        c["process"]["scheduler"] = serde_json::json!({"policy": "SCHED_BATCH", "nice": 7});
    });
    let process = r.b.path().join("p.json");
    std::fs::write(
        &process,
        serde_json::to_vec(&serde_json::json!({
            "args": ["/bin/sh", "-c", "grep Cpus_allowed_list /proc/self/status; cut -d' ' -f19 /proc/self/stat; cut -d' ' -f41 /proc/self/stat"],
            "cwd": "/", "user": {"uid": 0, "gid": 0}, "env": ["PATH=/bin"],
            "execCPUAffinity": {"initial": "0", "final": "0"},
            "scheduler": {"policy": "SCHED_OTHER", "nice": 3}
        }))
        .unwrap(),
    )
    .unwrap();
    let out = r.exec(&["--process", process.to_str().unwrap(), "--"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let o = stdout(&out);
    let lines: Vec<&str> = o.lines().collect();
    assert_eq!(lines[0], "Cpus_allowed_list:\t0", "{o}");
    assert_eq!(lines[1], "3", "nice: {o}");
    assert_eq!(lines[2], "0", "SCHED_OTHER: {o}");
    // The init got the config's scheduler: SCHED_BATCH (3), nice 7.
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", r.pid())).unwrap();
    let f: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    assert_eq!((f[16], f[38]), ("7", "3"), "{stat}");
}

/// Receives one fd over a UNIX socket (a console socket or a seccomp
/// listener), with the message that came with it.
fn receive(listener: &std::os::unix::net::UnixListener) -> (OwnedFd, Vec<u8>) {
    let (s, _) = listener.accept().unwrap();
    let mut buf = vec![0u8; 64 * 1024];
    let mut cmsg = nix::cmsg_space!([RawFd; 1]);
    let mut iov = [std::io::IoSliceMut::new(&mut buf)];
    let m =
        nix::sys::socket::recvmsg::<()>(s.as_raw_fd(), &mut iov, Some(&mut cmsg), nix::sys::socket::MsgFlags::empty())
            .unwrap();
    let mut fd = None;
    for c in m.cmsgs().unwrap() {
        if let nix::sys::socket::ControlMessageOwned::ScmRights(f) = c {
            fd = f.first().copied();
        }
    }
    let n = m.bytes;
    // SAFETY: the kernel installed this fd for us with the message.
    (unsafe { OwnedFd::from_raw_fd(fd.expect("an fd with the message")) }, buf[..n].to_vec())
}

fn receive_fd(listener: &std::os::unix::net::UnixListener) -> OwnedFd {
    receive(listener).0
}

fn read_until(fd: &OwnedFd, needle: &str) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 256];
    for _ in 0..200 {
        match nix::unistd::read(fd, &mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
        if String::from_utf8_lossy(&out).contains(needle) {
            break;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Answers every notification on `fd` with EACCES until it closes;
/// returns how many it answered.
fn refuse_notifications(fd: OwnedFd) -> usize {
    let mut n = 0;
    loop {
        // SAFETY: zeroed seccomp_notif is valid (plain integers).
        let mut req: libc::seccomp_notif = unsafe { std::mem::zeroed() };
        // SAFETY: NOTIF_RECV fills one seccomp_notif we own.
        let r = unsafe { libc::ioctl(fd.as_raw_fd(), libc::SECCOMP_IOCTL_NOTIF_RECV, &mut req) };
        if r < 0 {
            return n;
        }
        let mut resp = libc::seccomp_notif_resp { id: req.id, val: 0, error: -libc::EACCES, flags: 0 };
        // SAFETY: NOTIF_SEND reads one seccomp_notif_resp we own.
        unsafe { libc::ioctl(fd.as_raw_fd(), libc::SECCOMP_IOCTL_NOTIF_SEND, &mut resp) };
        n += 1;
    }
}

#[test]
#[ignore = "needs root and busybox-static: run by scripts/test.sh"]
fn seccomp_notify_hands_the_listener_its_fd_and_the_state() {
    require_root!();
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("agent.sock");
    let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let agent = std::thread::spawn(move || {
        let mut seen = Vec::new();
        for _ in 0..2 {
            let (fd, msg) = receive(&listener);
            seen.push(serde_json::from_slice::<serde_json::Value>(&msg).unwrap());
            std::thread::spawn(move || refuse_notifications(fd));
        }
        seen
    });
    let a = Amphi::new();
    let mut b = Bundle::new(&["/bin/sleep", "600"]);
    b.edit(|c| {
        c["linux"]["seccomp"] = serde_json::json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "listenerPath": sock,
            "listenerMetadata": "amphi-test",
            "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_NOTIFY"}]
        });
    });
    let id = unique_id("notify");
    a.ok(&["run", "-d", "--bundle", b.path().to_str().unwrap(), &id]);
    let out = a.run(&["exec", &id, "/bin/sh", "-c", "mkdir /tmp/x 2>&1; echo done"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("Permission denied"), "the agent answered EACCES: {}", stdout(&out));
    let seen = agent.join().unwrap();
    assert_eq!(seen[0]["fds"], serde_json::json!(["seccompFd"]));
    assert_eq!(seen[0]["metadata"], "amphi-test");
    assert_eq!(seen[0]["state"]["id"], id.as_str());
    assert_eq!(seen[0]["state"]["status"], "creating");
    assert_eq!(seen[1]["state"]["status"], "running", "the exec'd process's listener fd");
    a.ok(&["delete", "--force", &id]);

    // A listener that is not there fails create at once, leaving nothing.
    drop(dir);
    let id = unique_id("notify");
    let out = a.run(&["create", "--bundle", b.path().to_str().unwrap(), &id]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("listenerPath") && stderr(&out).contains("start the seccomp agent"),
        "{}",
        stderr(&out)
    );
    assert!(a.leftovers().is_empty() && cgroups_of(&id).is_empty());
}

#[test]
#[ignore = "needs root and busybox-static: run by scripts/test.sh"]
fn exec_into_a_container_without_a_mount_namespace_sees_its_root() {
    require_root!();
    let r = Running::start("execnomnt", |c| {
        c["linux"]["namespaces"].as_array_mut().unwrap().retain(|n| n["type"] != "mount");
        c["linux"]["maskedPaths"] = serde_json::json!([]);
        c["linux"]["readonlyPaths"] = serde_json::json!([]);
        c["mounts"] = serde_json::json!([]);
    });
    std::fs::write(r.b.rootfs().join("marker"), "inside\n").unwrap();
    let out = r.exec(&["/bin/cat", "/marker"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "inside\n");
}

#[test]
#[ignore = "needs root and busybox-static: run by scripts/test.sh"]
fn exec_into_a_container_with_a_user_namespace() {
    require_root!();
    let a = Amphi::new();
    let mut b = Bundle::new(&["/bin/sleep", "600"]);
    std::process::Command::new("chown").args(["-R", "100000:100000"]).arg(b.rootfs()).status().unwrap();
    std::process::Command::new("chmod").arg("755").arg(b.path()).status().unwrap();
    // A user other than the namespace's root writes to /tmp.
    std::process::Command::new("chmod").arg("1777").arg(b.rootfs().join("tmp")).status().unwrap();
    b.edit(|c| {
        c["linux"]["namespaces"].as_array_mut().unwrap().push(serde_json::json!({"type": "user"}));
        c["linux"]["uidMappings"] = serde_json::json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
        c["linux"]["gidMappings"] = serde_json::json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
    });
    let id = unique_id("execuserns");
    a.ok(&["run", "-d", "--bundle", b.path().to_str().unwrap(), &id]);
    let out = a.run(&[
        "exec",
        "-u",
        "1000:1000",
        &id,
        "/bin/sh",
        "-c",
        "id -u; cat /proc/self/uid_map; touch /tmp/mine && stat -c %u /tmp/mine",
    ]);
    let pid = a.state(&id)["pid"].as_i64().unwrap();
    let init_userns = std::fs::read_link(format!("/proc/{pid}/ns/user")).unwrap();
    a.ok(&["delete", "--force", &id]);
    assert!(out.status.success(), "{}", stderr(&out));
    let o = stdout(&out);
    let lines: Vec<&str> = o.lines().collect();
    assert_eq!(lines[0], "1000", "{o}");
    assert!(lines[1].split_whitespace().collect::<Vec<_>>() == ["0", "100000", "65536"], "{o}");
    assert_eq!(lines[2], "1000", "{o}");
    // The file belongs to host uid 101000: the user namespace's mapping.
    let host_uid = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(b.rootfs().join("tmp/mine")).unwrap());
    assert_eq!(host_uid, 101000);
    assert!(init_userns.to_string_lossy().starts_with("user:"));
}
