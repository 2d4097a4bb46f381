//! Fakes for tests (compiled for this crate's tests and behind the
//! `test-utils` feature): [`FakeSys`], which works on ordinary files but
//! behaves like cgroupfs where the logic depends on it, and [`FakeTree`],
//! which lays out v1, hybrid or v2 hierarchies in a caller-provided
//! directory and describes them as a [`HostLayout`].

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use super::bpf::sys::BpfFailure;
use super::bpf::Insn;
use super::layout::{HostLayout, LayoutKind, OwnCgroups, Subsystem, V1Hierarchy, V2Mount};
use super::sys::CgroupSys;

#[derive(Default)]
struct State {
    writes: Vec<(PathBuf, String)>,
    /// Injected failures: path -> errnos returned by the next calls, in order.
    write_errors: HashMap<PathBuf, Vec<i32>>,
    rmdir_errors: HashMap<PathBuf, Vec<i32>>,
    mkdir_errors: HashMap<PathBuf, Vec<i32>>,
    bpf_error: Option<i32>,
    /// Files whose writes succeed without changing them.
    sticky: Vec<PathBuf>,
    /// Files a new directory under each mount point gets: (mount, [(name, content)]).
    templates: Vec<(PathBuf, Vec<(String, String)>)>,
    /// Device programs attached per directory (latest last).
    programs: HashMap<PathBuf, Vec<Vec<Insn>>>,
    signals: Vec<(i32, i32)>,
    slept: Duration,
    rmdirs: Vec<PathBuf>,
}

/// A [`CgroupSys`] on plain files. Like cgroupfs, it never creates files on
/// write (ENOENT), gives new directories their controller files, refuses
/// rmdir of a cgroup with tasks or children (EBUSY), and keeps cgroup.events
/// in step with cgroup.freeze. It records writes, signals and attached device
/// programs, does not really sleep, and can be told to fail calls.
#[derive(Default)]
pub struct FakeSys {
    st: Mutex<State>,
}

fn take_error(map: &mut HashMap<PathBuf, Vec<i32>>, p: &Path) -> Option<io::Error> {
    let v = map.get_mut(p)?;
    if v.is_empty() {
        return None;
    }
    // 0 stands for "this call succeeds".
    Some(v.remove(0)).filter(|e| *e != 0).map(io::Error::from_raw_os_error)
}

impl FakeSys {
    pub fn new() -> FakeSys {
        FakeSys::default()
    }

    fn st(&self) -> std::sync::MutexGuard<'_, State> {
        self.st.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Directories created under `mount` get these files.
    pub fn add_template(&self, mount: &Path, files: Vec<(String, String)>) {
        self.st().templates.push((mount.to_path_buf(), files));
    }

    /// The next writes to `path` fail with these errnos, in order (0: succeeds).
    pub fn fail_writes(&self, path: &Path, errnos: &[i32]) {
        self.st().write_errors.insert(path.to_path_buf(), errnos.to_vec());
    }

    pub fn fail_rmdirs(&self, path: &Path, errnos: &[i32]) {
        self.st().rmdir_errors.insert(path.to_path_buf(), errnos.to_vec());
    }

    pub fn fail_mkdirs(&self, path: &Path, errnos: &[i32]) {
        self.st().mkdir_errors.insert(path.to_path_buf(), errnos.to_vec());
    }

    /// Writes to `path` succeed but leave the file as it is (a kernel state
    /// that does not move, such as a cgroup stuck in FREEZING).
    pub fn ignore_writes(&self, path: &Path) {
        self.st().sticky.push(path.to_path_buf());
    }

    pub fn fail_bpf(&self, errno: i32) {
        self.st().bpf_error = Some(errno);
    }

    /// Every write, in order: (path, value); one entry per line for write_lines.
    pub fn writes(&self) -> Vec<(PathBuf, String)> {
        self.st().writes.clone()
    }

    pub fn clear_writes(&self) {
        self.st().writes.clear();
    }

    /// Device programs currently attached to `dir`.
    pub fn programs(&self, dir: &Path) -> Vec<Vec<Insn>> {
        self.st().programs.get(dir).cloned().unwrap_or_default()
    }

    pub fn signals(&self) -> Vec<(i32, i32)> {
        self.st().signals.clone()
    }

    pub fn slept(&self) -> Duration {
        self.st().slept
    }

    /// Successful rmdirs, in order.
    pub fn rmdirs(&self) -> Vec<PathBuf> {
        self.st().rmdirs.clone()
    }

    fn after_write(path: &Path, value: &str) -> io::Result<()> {
        // cgroup v2 reports the frozen state in cgroup.events.
        if path.file_name().is_some_and(|n| n == "cgroup.freeze") {
            let ev = path.with_file_name("cgroup.events");
            let frozen = if value.trim() == "1" { 1 } else { 0 };
            std::fs::write(ev, format!("populated 1\nfrozen {frozen}\n"))?;
        }
        Ok(())
    }
}

impl CgroupSys for FakeSys {
    fn read(&self, path: &Path) -> io::Result<String> {
        std::fs::read_to_string(path)
    }

    fn write(&self, path: &Path, value: &str) -> io::Result<()> {
        let mut st = self.st();
        st.writes.push((path.to_path_buf(), value.to_string()));
        if let Some(e) = take_error(&mut st.write_errors, path) {
            return Err(e);
        }
        if !path.is_file() {
            return Err(io::Error::from_raw_os_error(libc::ENOENT));
        }
        if st.sticky.iter().any(|p| p == path) {
            return Ok(());
        }
        std::fs::write(path, value)?;
        Self::after_write(path, value)
    }

    fn write_lines(&self, path: &Path, lines: &[String]) -> Result<(), (usize, io::Error)> {
        let mut st = self.st();
        if !path.is_file() {
            st.writes.push((path.to_path_buf(), lines.first().cloned().unwrap_or_default()));
            return Err((0, io::Error::from_raw_os_error(libc::ENOENT)));
        }
        for (i, l) in lines.iter().enumerate() {
            st.writes.push((path.to_path_buf(), l.clone()));
            if let Some(e) = take_error(&mut st.write_errors, path) {
                return Err((i, e));
            }
        }
        std::fs::write(path, lines.join("\n")).map_err(|e| (0, e))
    }

    fn mkdir(&self, path: &Path) -> io::Result<()> {
        let mut st = self.st();
        if let Some(e) = take_error(&mut st.mkdir_errors, path) {
            return Err(e);
        }
        std::fs::create_dir(path)?;
        let template = st
            .templates
            .iter()
            .filter(|(m, _)| path.starts_with(m))
            .max_by_key(|(m, _)| m.as_os_str().len())
            .map(|(_, t)| t.clone());
        for (name, content) in template.unwrap_or_default() {
            std::fs::write(path.join(name), content)?;
        }
        Ok(())
    }

    fn rmdir(&self, path: &Path) -> io::Result<()> {
        let mut st = self.st();
        if let Some(e) = take_error(&mut st.rmdir_errors, path) {
            return Err(e);
        }
        if !path.is_dir() {
            return Err(io::Error::from_raw_os_error(libc::ENOENT));
        }
        let has_children = std::fs::read_dir(path)?.any(|e| e.is_ok_and(|e| e.path().is_dir()));
        let has_tasks = std::fs::read_to_string(path.join("cgroup.procs")).is_ok_and(|s| !s.trim().is_empty());
        if has_children || has_tasks {
            return Err(io::Error::from_raw_os_error(libc::EBUSY));
        }
        std::fs::remove_dir_all(path)?;
        st.programs.remove(path);
        st.rmdirs.push(path.to_path_buf());
        Ok(())
    }

    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }

    fn open(&self, path: &Path, directory: bool) -> io::Result<std::os::fd::OwnedFd> {
        super::sys::open_fd(path, directory)
    }

    fn subdirs(&self, path: &Path) -> io::Result<Vec<PathBuf>> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(path)? {
            let p = e?.path();
            if p.is_dir() {
                out.push(p);
            }
        }
        out.sort();
        Ok(out)
    }

    fn sleep(&self, d: Duration) {
        self.st().slept += d;
    }

    fn kill(&self, pid: i32, signal: i32) -> io::Result<()> {
        self.st().signals.push((pid, signal));
        Ok(())
    }

    fn attach_device_filter(&self, dir: &Path, insns: &[Insn], replace: bool) -> Result<(), BpfFailure> {
        let mut st = self.st();
        if let Some(errno) = st.bpf_error {
            return Err(BpfFailure {
                op: "load",
                source: io::Error::from_raw_os_error(errno),
                log: "0: (61) r2 = *(u32 *)(r1 +0)\ninvalid bpf_context access".into(),
            });
        }
        if !dir.is_dir() {
            return Err(BpfFailure {
                op: "open the cgroup for",
                source: io::Error::from_raw_os_error(libc::ENOENT),
                log: String::new(),
            });
        }
        let progs = st.programs.entry(dir.to_path_buf()).or_default();
        if replace {
            progs.clear();
        }
        progs.push(insns.to_vec());
        Ok(())
    }
}

fn files(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
}

const MAX: &str = "9223372036854771712";

/// Files of a new v1 cgroup, per controller (kernel defaults).
fn v1_files(s: &Subsystem) -> Vec<(String, String)> {
    let mut f =
        files(&[("cgroup.procs", ""), ("tasks", ""), ("notify_on_release", "0"), ("cgroup.clone_children", "0")]);
    f.extend(files(match s {
        Subsystem::Cpu => &[
            ("cpu.shares", "1024"),
            ("cpu.cfs_period_us", "100000"),
            ("cpu.cfs_quota_us", "-1"),
            ("cpu.cfs_burst_us", "0"),
            ("cpu.rt_period_us", "1000000"),
            ("cpu.rt_runtime_us", "0"),
            ("cpu.idle", "0"),
            ("cpu.stat", "nr_periods 4\nnr_throttled 1\nthrottled_time 5000\n"),
        ][..],
        Subsystem::Cpuacct => &[
            ("cpuacct.usage", "123456789"),
            ("cpuacct.usage_user", "100000000"),
            ("cpuacct.usage_sys", "23456789"),
            ("cpuacct.stat", "user 10\nsystem 2\n"),
            ("cpuacct.usage_percpu", "100000000 23456789 \n"),
        ][..],
        Subsystem::Cpuset => &[("cpuset.cpus", ""), ("cpuset.mems", ""), ("cpuset.cpu_exclusive", "0")][..],
        Subsystem::Memory => &[
            ("memory.limit_in_bytes", MAX),
            ("memory.soft_limit_in_bytes", MAX),
            ("memory.memsw.limit_in_bytes", MAX),
            ("memory.kmem.limit_in_bytes", MAX),
            ("memory.kmem.tcp.limit_in_bytes", MAX),
            ("memory.swappiness", "60"),
            ("memory.oom_control", "oom_kill_disable 0\nunder_oom 0\noom_kill 0\n"),
            ("memory.usage_in_bytes", "4096"),
            ("memory.max_usage_in_bytes", "8192"),
            ("memory.memsw.usage_in_bytes", "4096"),
            ("memory.memsw.max_usage_in_bytes", "8192"),
            ("memory.failcnt", "0"),
            ("memory.use_hierarchy", "1"),
            ("memory.stat", "cache 1024\nrss 2048\nswap 0\n"),
        ][..],
        Subsystem::Devices => &[("devices.allow", ""), ("devices.deny", ""), ("devices.list", "a *:* rwm\n")][..],
        Subsystem::Freezer => &[("freezer.state", "THAWED\n")][..],
        Subsystem::Blkio => &[
            ("blkio.weight", "500"),
            ("blkio.weight_device", ""),
            ("blkio.leaf_weight", "500"),
            ("blkio.leaf_weight_device", ""),
            ("blkio.throttle.read_bps_device", ""),
            ("blkio.throttle.write_bps_device", ""),
            ("blkio.throttle.read_iops_device", ""),
            ("blkio.throttle.write_iops_device", ""),
        ][..],
        Subsystem::Pids => &[("pids.max", "max"), ("pids.current", "1")][..],
        Subsystem::Hugetlb => &[
            ("hugetlb.2MB.limit_in_bytes", MAX),
            ("hugetlb.1GB.limit_in_bytes", MAX),
            ("hugetlb.2MB.rsvd.limit_in_bytes", MAX),
            ("hugetlb.1GB.rsvd.limit_in_bytes", MAX),
        ][..],
        Subsystem::NetCls => &[("net_cls.classid", "0")][..],
        Subsystem::NetPrio => &[("net_prio.ifpriomap", "lo 0\neth0 0\n"), ("net_prio.prioidx", "1")][..],
        Subsystem::Rdma => &[("rdma.max", ""), ("rdma.current", "")][..],
        _ => &[][..],
    }));
    f
}

/// Files of a new v2 cgroup (core plus every controller's).
fn v2_files(controllers: &[Subsystem]) -> Vec<(String, String)> {
    let mut f = files(&[
        ("cgroup.procs", ""),
        ("cgroup.threads", ""),
        ("cgroup.controllers", ""),
        ("cgroup.subtree_control", ""),
        ("cgroup.events", "populated 0\nfrozen 0\n"),
        ("cgroup.freeze", "0"),
        ("cgroup.kill", ""),
        ("cgroup.type", "domain"),
        (
            "cpu.stat",
            "usage_usec 1500\nuser_usec 1000\nsystem_usec 500\nnr_periods 3\nnr_throttled 1\nthrottled_usec 7\n",
        ),
    ]);
    for c in controllers {
        f.extend(files(match c {
            Subsystem::Cpu => {
                &[("cpu.weight", "100"), ("cpu.max", "max 100000"), ("cpu.max.burst", "0"), ("cpu.idle", "0")][..]
            }
            Subsystem::Cpuset => &[("cpuset.cpus", ""), ("cpuset.mems", ""), ("cpuset.cpus.effective", "0-1")][..],
            Subsystem::Memory => &[
                ("memory.max", "max"),
                ("memory.low", "0"),
                ("memory.high", "max"),
                ("memory.min", "0"),
                ("memory.swap.max", "max"),
                ("memory.current", "4096"),
                ("memory.peak", "8192"),
                ("memory.swap.current", "0"),
                ("memory.stat", "anon 2048\nfile 1024\n"),
            ][..],
            Subsystem::Blkio => &[("io.weight", "default 100\n"), ("io.max", ""), ("io.stat", "")][..],
            Subsystem::Pids => &[("pids.max", "max"), ("pids.current", "1")][..],
            Subsystem::Hugetlb => &[
                ("hugetlb.2MB.max", "max"),
                ("hugetlb.1GB.max", "max"),
                ("hugetlb.2MB.rsvd.max", "max"),
                ("hugetlb.1GB.rsvd.max", "max"),
            ][..],
            Subsystem::Rdma => &[("rdma.max", ""), ("rdma.current", "")][..],
            Subsystem::Misc => &[("misc.max", ""), ("misc.current", "")][..],
            _ => &[][..],
        }));
    }
    f
}

/// Which hierarchies a fake host has.
#[derive(Debug, Clone)]
pub struct FakeHost {
    /// v1 hierarchies, each a list of controller names ("name=systemd" for a named one).
    pub v1: Vec<Vec<&'static str>>,
    /// Where the cgroup2 mount is, relative to the fake root ("" for the root
    /// itself, "unified" for a hybrid host), and its controllers.
    pub v2: Option<(&'static str, Vec<&'static str>)>,
    /// The runtime's own cgroup in every hierarchy.
    pub own: &'static str,
}

impl FakeHost {
    /// Like this project's development host: v1 controllers each in its own
    /// hierarchy, name=systemd, and a cgroup2 mount at unified holding hugetlb.
    pub fn hybrid() -> FakeHost {
        FakeHost {
            v1: vec![
                vec!["cpu"],
                vec!["cpuacct"],
                vec!["cpuset"],
                vec!["memory"],
                vec!["devices"],
                vec!["freezer"],
                vec!["blkio"],
                vec!["pids"],
                vec!["name=systemd"],
            ],
            v2: Some(("unified", vec!["hugetlb"])),
            own: "/",
        }
    }

    /// A classic v1 host: cpu,cpuacct and net_cls,net_prio co-mounted, hugetlb and rdma on v1.
    pub fn v1() -> FakeHost {
        FakeHost {
            v1: vec![
                vec!["cpu", "cpuacct"],
                vec!["cpuset"],
                vec!["memory"],
                vec!["devices"],
                vec!["freezer"],
                vec!["blkio"],
                vec!["pids"],
                vec!["hugetlb"],
                vec!["net_cls", "net_prio"],
                vec!["rdma"],
                vec!["name=systemd"],
            ],
            v2: None,
            own: "/",
        }
    }

    /// A pure cgroup2 host.
    pub fn v2() -> FakeHost {
        FakeHost {
            v1: vec![],
            v2: Some(("", vec!["cpuset", "cpu", "io", "memory", "hugetlb", "pids", "rdma", "misc"])),
            own: "/",
        }
    }
}

/// A fake cgroupfs in a directory, with its layout and sys.
pub struct FakeTree {
    pub root: PathBuf,
    pub layout: HostLayout,
    pub own: OwnCgroups,
    pub sys: FakeSys,
}

impl FakeTree {
    /// Lays out `host` under `root` (which must exist and be empty).
    pub fn new(root: &Path, host: &FakeHost) -> FakeTree {
        let sys = FakeSys::new();
        let mut v1 = Vec::new();
        let mut own = OwnCgroups::default();
        for names in &host.v1 {
            let subsystems: Vec<Subsystem> = names.iter().map(|n| Subsystem::parse(n)).collect();
            let dir = names.iter().map(|n| n.strip_prefix("name=").unwrap_or(n)).collect::<Vec<_>>().join(",");
            let mount = root.join(dir);
            let template: Vec<(String, String)> =
                subsystems.iter().flat_map(v1_files).collect::<HashMap<_, _>>().into_iter().collect();
            std::fs::create_dir_all(&mount).unwrap();
            for (f, c) in &template {
                std::fs::write(mount.join(f), c).unwrap();
            }
            if subsystems.contains(&Subsystem::Cpuset) {
                std::fs::write(mount.join("cpuset.cpus"), "0-1\n").unwrap();
                std::fs::write(mount.join("cpuset.mems"), "0\n").unwrap();
            }
            if subsystems.contains(&Subsystem::Cpu) {
                std::fs::write(mount.join("cpu.rt_runtime_us"), "950000").unwrap();
            }
            std::fs::write(mount.join("cgroup.procs"), "1\n").unwrap();
            sys.add_template(&mount, template);
            own.v1.push((subsystems.clone(), PathBuf::from(host.own)));
            v1.push(V1Hierarchy { mount_point: mount, root: PathBuf::from("/"), subsystems });
        }
        let v2 = host.v2.as_ref().map(|(dir, ctrls)| {
            let mount = if dir.is_empty() { root.to_path_buf() } else { root.join(dir) };
            let controllers: Vec<Subsystem> = ctrls.iter().map(|c| Subsystem::parse(c)).collect();
            let template = v2_files(&controllers);
            std::fs::create_dir_all(&mount).unwrap();
            for (f, c) in &template {
                std::fs::write(mount.join(f), c).unwrap();
            }
            std::fs::write(mount.join("cgroup.controllers"), ctrls.join(" ")).unwrap();
            std::fs::write(mount.join("cgroup.procs"), "1\n").unwrap();
            sys.add_template(&mount, template);
            own.v2 = Some(PathBuf::from(host.own));
            V2Mount { mount_point: mount, root: Some(PathBuf::from("/")) }
        });
        let kind = match (v1.is_empty(), v2.is_some()) {
            (false, true) => LayoutKind::Hybrid,
            (false, false) => LayoutKind::V1,
            _ => LayoutKind::V2,
        };
        // The runtime's own cgroups exist.
        if host.own != "/" {
            let rel = host.own.trim_start_matches('/');
            for h in &v1 {
                create_cgroup_dirs(&sys, &h.mount_point, rel);
            }
            if let Some(m) = &v2 {
                create_cgroup_dirs(&sys, &m.mount_point, rel);
            }
        }
        FakeTree { root: root.to_path_buf(), layout: HostLayout { kind, v1, v2 }, own, sys }
    }

    /// The mount point of the v1 hierarchy holding `controller` (or the v2 mount).
    pub fn mount(&self, controller: &str) -> PathBuf {
        let s = Subsystem::parse(controller);
        match self.layout.v1_for(&s) {
            Some(h) => h.mount_point.clone(),
            None => self.layout.v2.as_ref().expect("no such controller").mount_point.clone(),
        }
    }
}

fn create_cgroup_dirs(sys: &FakeSys, mount: &Path, rel: &str) {
    let mut p = mount.to_path_buf();
    for c in Path::new(rel).components() {
        p.push(c);
        if !p.exists() {
            sys.mkdir(&p).unwrap();
        }
    }
}
