//! What the host offers: cgroup v1 hierarchies, a cgroup2 mount, or both
//! (hybrid), the controllers each provides, and the runtime's own cgroups.
//!
//! Detection is on the path of every `create`, so it is cheap: one statfs of
//! /sys/fs/cgroup tells a pure v2 host apart without reading anything else;
//! otherwise /proc/self/mountinfo is read once. /proc/self/cgroup is read only
//! when a relative cgroupsPath needs the runtime's own cgroup.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::error::{CgroupError, Result};
use super::sys::CgroupSys;

/// Where cgroup hierarchies are normally mounted.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// The host's cgroup layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LayoutKind {
    /// Only v1 hierarchies.
    V1,
    /// v1 hierarchies plus a cgroup2 mount (usually /sys/fs/cgroup/unified).
    Hybrid,
    /// Only cgroup2 (the unified hierarchy).
    V2,
}

impl fmt::Display for LayoutKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LayoutKind::V1 => "v1",
            LayoutKind::Hybrid => "hybrid",
            LayoutKind::V2 => "v2",
        })
    }
}

/// A cgroup controller, or a named v1 hierarchy (`name=systemd`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(into = "String", from = "String")]
pub enum Subsystem {
    Cpu,
    Cpuacct,
    Cpuset,
    Memory,
    Devices,
    Freezer,
    /// `blkio` on v1, `io` on v2.
    Blkio,
    Pids,
    Hugetlb,
    NetCls,
    NetPrio,
    PerfEvent,
    Rdma,
    Misc,
    /// A named v1 hierarchy without controllers, e.g. `name=systemd` holds "systemd".
    Named(String),
    /// A controller this code does not program.
    Other(String),
}

impl Subsystem {
    /// The name as v1 mount options and /proc/self/cgroup spell it.
    pub fn v1_name(&self) -> String {
        match self {
            Subsystem::Named(n) => format!("name={n}"),
            Subsystem::Blkio => "blkio".to_string(),
            other => other.v2_name(),
        }
    }

    /// The name as cgroup.controllers spells it (`io` for blkio).
    pub fn v2_name(&self) -> String {
        match self {
            Subsystem::Cpu => "cpu",
            Subsystem::Cpuacct => "cpuacct",
            Subsystem::Cpuset => "cpuset",
            Subsystem::Memory => "memory",
            Subsystem::Devices => "devices",
            Subsystem::Freezer => "freezer",
            Subsystem::Blkio => "io",
            Subsystem::Pids => "pids",
            Subsystem::Hugetlb => "hugetlb",
            Subsystem::NetCls => "net_cls",
            Subsystem::NetPrio => "net_prio",
            Subsystem::PerfEvent => "perf_event",
            Subsystem::Rdma => "rdma",
            Subsystem::Misc => "misc",
            Subsystem::Named(n) => return format!("name={n}"),
            Subsystem::Other(n) => return n.clone(),
        }
        .to_string()
    }

    /// The controller name for the given cgroup version.
    pub fn name(&self, v2: bool) -> String {
        if v2 {
            self.v2_name()
        } else {
            self.v1_name()
        }
    }

    pub fn parse(s: &str) -> Subsystem {
        match s {
            "cpu" => Subsystem::Cpu,
            "cpuacct" => Subsystem::Cpuacct,
            "cpuset" => Subsystem::Cpuset,
            "memory" => Subsystem::Memory,
            "devices" => Subsystem::Devices,
            "freezer" => Subsystem::Freezer,
            "blkio" | "io" => Subsystem::Blkio,
            "pids" => Subsystem::Pids,
            "hugetlb" => Subsystem::Hugetlb,
            "net_cls" => Subsystem::NetCls,
            "net_prio" => Subsystem::NetPrio,
            "perf_event" => Subsystem::PerfEvent,
            "rdma" => Subsystem::Rdma,
            "misc" => Subsystem::Misc,
            other => match other.strip_prefix("name=") {
                Some(n) => Subsystem::Named(n.to_string()),
                None => Subsystem::Other(other.to_string()),
            },
        }
    }

    /// Whether a v1 super option names a controller (as opposed to a mount
    /// flag such as `rw`, `noprefix` or `clone_children`).
    fn is_v1_controller_option(opt: &str) -> bool {
        opt.starts_with("name=") || !matches!(Subsystem::parse(opt), Subsystem::Other(_))
    }
}

impl From<Subsystem> for String {
    fn from(s: Subsystem) -> String {
        s.v1_name()
    }
}

impl From<String> for Subsystem {
    fn from(s: String) -> Subsystem {
        Subsystem::parse(&s)
    }
}

/// One mounted v1 hierarchy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct V1Hierarchy {
    /// Mount point, e.g. /sys/fs/cgroup/cpu,cpuacct.
    pub mount_point: PathBuf,
    /// The cgroup shown at the mount point (mountinfo's root field; "/" unless
    /// the mount was made inside a cgroup namespace or is a bind mount).
    pub root: PathBuf,
    /// Controllers (and the name of a named hierarchy) bound to it.
    pub subsystems: Vec<Subsystem>,
}

/// The cgroup2 mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct V2Mount {
    pub mount_point: PathBuf,
    /// mountinfo's root field; `None` when detection took the statfs fast path
    /// and did not read mountinfo.
    pub root: Option<PathBuf>,
}

/// The host's cgroup mounts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostLayout {
    pub kind: LayoutKind,
    pub v1: Vec<V1Hierarchy>,
    pub v2: Option<V2Mount>,
}

fn unescape_mountinfo(s: &str) -> String {
    // mountinfo escapes space, tab, newline and backslash as \ooo.
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl HostLayout {
    /// Detects the host's layout: statfs first, mountinfo only when needed.
    pub fn detect() -> Result<HostLayout> {
        if let Ok(st) = nix::sys::statfs::statfs(CGROUP_ROOT) {
            if st.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC {
                return Ok(HostLayout {
                    kind: LayoutKind::V2,
                    v1: Vec::new(),
                    v2: Some(V2Mount { mount_point: PathBuf::from(CGROUP_ROOT), root: None }),
                });
            }
        }
        Self::from_mountinfo_file(Path::new("/proc/self/mountinfo"))
    }

    /// Reads and parses a mountinfo file.
    pub fn from_mountinfo_file(path: &Path) -> Result<HostLayout> {
        let text =
            std::fs::read_to_string(path).map_err(|source| CgroupError::ReadHost { path: path.into(), source })?;
        Self::from_mountinfo(&text)
    }

    /// Parses mountinfo text (see proc(5)).
    pub fn from_mountinfo(text: &str) -> Result<HostLayout> {
        let mut v1: Vec<V1Hierarchy> = Vec::new();
        let mut v2: Option<V2Mount> = None;
        for line in text.lines() {
            // Cheap filter: most lines are not cgroup mounts.
            if !line.contains(" - cgroup") {
                continue;
            }
            let (left, right) = line
                .split_once(" - ")
                .ok_or_else(|| CgroupError::Parse { what: "mountinfo", line: line.to_string() })?;
            let l: Vec<&str> = left.split(' ').collect();
            let r: Vec<&str> = right.split(' ').collect();
            if l.len() < 5 || r.len() < 3 {
                return Err(CgroupError::Parse { what: "mountinfo", line: line.to_string() });
            }
            let root = PathBuf::from(unescape_mountinfo(l[3]));
            let mount_point = PathBuf::from(unescape_mountinfo(l[4]));
            match r[0] {
                "cgroup2" => {
                    // Prefer the canonical places if it is mounted twice.
                    let canonical = |p: &Path| p == Path::new(CGROUP_ROOT) || p == Path::new("/sys/fs/cgroup/unified");
                    if v2.as_ref().is_none_or(|m| !canonical(&m.mount_point) && canonical(&mount_point)) {
                        v2 = Some(V2Mount { mount_point, root: Some(root) });
                    }
                }
                "cgroup" => {
                    let subsystems: Vec<Subsystem> = r[2]
                        .split(',')
                        .filter(|o| Subsystem::is_v1_controller_option(o))
                        .map(Subsystem::parse)
                        .collect();
                    if subsystems.is_empty() {
                        continue;
                    }
                    let under_root = mount_point.starts_with(CGROUP_ROOT);
                    match v1.iter_mut().find(|h| h.subsystems == subsystems) {
                        // The same hierarchy mounted again (a bind mount
                        // elsewhere): keep the one under /sys/fs/cgroup.
                        Some(h) => {
                            if under_root && !h.mount_point.starts_with(CGROUP_ROOT) {
                                *h = V1Hierarchy { mount_point, root, subsystems };
                            }
                        }
                        None => v1.push(V1Hierarchy { mount_point, root, subsystems }),
                    }
                }
                _ => {}
            }
        }
        let kind = match (v1.is_empty(), v2.is_some()) {
            (false, true) => LayoutKind::Hybrid,
            (false, false) => LayoutKind::V1,
            (true, true) => LayoutKind::V2,
            (true, false) => {
                return Err(CgroupError::NoCgroupfs {
                    detail: "no cgroup or cgroup2 line in /proc/self/mountinfo".into(),
                })
            }
        };
        Ok(HostLayout { kind, v1, v2 })
    }

    /// The v1 hierarchy a controller is bound to.
    pub fn v1_for(&self, s: &Subsystem) -> Option<&V1Hierarchy> {
        self.v1.iter().find(|h| h.subsystems.contains(s))
    }

    /// Controllers the cgroup2 mount offers (its root's cgroup.controllers).
    pub fn v2_controllers(&self, sys: &dyn CgroupSys) -> Result<Vec<Subsystem>> {
        let Some(m) = &self.v2 else { return Ok(Vec::new()) };
        let p = m.mount_point.join("cgroup.controllers");
        let text = sys.read(&p).map_err(|e| CgroupError::file("read", p, e))?;
        Ok(text.split_whitespace().map(Subsystem::parse).collect())
    }

    /// Fills in the cgroup2 mount's root (skipped by the statfs fast path).
    pub fn ensure_v2_root(&mut self) -> Result<()> {
        if self.v2.as_ref().is_some_and(|m| m.root.is_none()) {
            let full = Self::from_mountinfo_file(Path::new("/proc/self/mountinfo"))?;
            if let (Some(mine), Some(theirs)) = (self.v2.as_mut(), full.v2) {
                mine.root = theirs.root.or(Some(PathBuf::from("/")));
            }
        }
        Ok(())
    }
}

/// The runtime's own cgroups, from /proc/self/cgroup.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OwnCgroups {
    /// (controllers of the hierarchy, path) for each v1 line.
    pub v1: Vec<(Vec<Subsystem>, PathBuf)>,
    /// The `0::` line.
    pub v2: Option<PathBuf>,
}

impl OwnCgroups {
    pub fn read() -> Result<OwnCgroups> {
        let p = Path::new("/proc/self/cgroup");
        let text = std::fs::read_to_string(p).map_err(|source| CgroupError::ReadHost { path: p.into(), source })?;
        Self::parse(&text)
    }

    pub fn parse(text: &str) -> Result<OwnCgroups> {
        let mut own = OwnCgroups::default();
        for line in text.lines().filter(|l| !l.is_empty()) {
            let mut it = line.splitn(3, ':');
            let (Some(id), Some(ctrls), Some(path)) = (it.next(), it.next(), it.next()) else {
                return Err(CgroupError::Parse { what: "/proc/self/cgroup", line: line.to_string() });
            };
            if id == "0" && ctrls.is_empty() {
                own.v2 = Some(PathBuf::from(path));
            } else if !ctrls.is_empty() {
                own.v1.push((ctrls.split(',').map(Subsystem::parse).collect(), PathBuf::from(path)));
            }
        }
        Ok(own)
    }

    /// Our cgroup in the v1 hierarchy that holds these subsystems.
    pub fn v1_path(&self, subsystems: &[Subsystem]) -> Option<&Path> {
        self.v1.iter().find(|(s, _)| s.iter().any(|x| subsystems.contains(x))).map(|(_, p)| p.as_path())
    }
}

/// What `amphi features` reports about cgroups on this host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HostFacts {
    pub layout: LayoutKind,
    /// Always "cgroupfs": amphi writes the cgroup filesystem itself; systemd
    /// cgroup paths are the caller's concern.
    pub manager: &'static str,
    pub v1: bool,
    pub v2: bool,
    /// Controllers of each mounted v1 hierarchy.
    pub v1_hierarchies: Vec<Vec<String>>,
    /// Controllers the cgroup2 mount offers.
    pub v2_controllers: Vec<String>,
    /// Every controller amphi can program here, sorted.
    pub controllers: Vec<String>,
    pub rdma: bool,
    /// Whether systemd is the init (sd_booted(3): /run/systemd/system exists).
    pub systemd_running: bool,
}

/// Detects the host and lists what it offers.
pub fn host_facts(sys: &dyn CgroupSys) -> Result<HostFacts> {
    let layout = HostLayout::detect()?;
    host_facts_from(&layout, sys, Path::new("/run/systemd/system"))
}

/// [`host_facts`] for a given layout (fake trees in tests).
pub fn host_facts_from(layout: &HostLayout, sys: &dyn CgroupSys, systemd_marker: &Path) -> Result<HostFacts> {
    let v2_ctrls = layout.v2_controllers(sys)?;
    let mut all: Vec<String> = layout
        .v1
        .iter()
        .flat_map(|h| h.subsystems.iter())
        .filter(|s| !matches!(s, Subsystem::Named(_)))
        .map(|s| s.name(false))
        .chain(v2_ctrls.iter().map(|s| s.name(true)))
        .collect();
    all.sort();
    all.dedup();
    Ok(HostFacts {
        layout: layout.kind,
        manager: "cgroupfs",
        v1: !layout.v1.is_empty(),
        v2: layout.v2.is_some(),
        v1_hierarchies: layout.v1.iter().map(|h| h.subsystems.iter().map(|s| s.v1_name()).collect()).collect(),
        v2_controllers: v2_ctrls.iter().map(|s| s.v2_name()).collect(),
        rdma: all.iter().any(|c| c == "rdma"),
        controllers: all,
        systemd_running: sys.exists(systemd_marker),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) const HYBRID_MOUNTINFO: &str = "\
22 1 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:12 - proc proc rw
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
36 31 0:33 / /sys/fs/cgroup/devices rw,relatime - cgroup cgroup rw,devices
37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
38 31 0:35 / /sys/fs/cgroup/blkio rw,relatime - cgroup cgroup rw,blkio
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    #[test]
    fn parses_this_hosts_hybrid_layout() {
        let l = HostLayout::from_mountinfo(HYBRID_MOUNTINFO).unwrap();
        assert_eq!(l.kind, LayoutKind::Hybrid);
        assert_eq!(l.v1.len(), 9);
        assert_eq!(l.v1_for(&Subsystem::Memory).unwrap().mount_point, Path::new("/sys/fs/cgroup/memory"));
        assert_eq!(
            l.v1_for(&Subsystem::Named("systemd".into())).unwrap().subsystems,
            vec![Subsystem::Named("systemd".into())]
        );
        assert!(l.v1_for(&Subsystem::NetCls).is_none());
        assert_eq!(l.v2.unwrap().mount_point, Path::new("/sys/fs/cgroup/unified"));
    }

    #[test]
    fn parses_co_mounts_options_and_escapes() {
        let mi = "\
30 25 0:26 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid - cgroup cgroup rw,cpu,cpuacct
31 25 0:27 /docker/abc /sys/fs/cgroup/cpuset rw - cgroup cgroup rw,noprefix,cpuset,clone_children
32 25 0:27 / /mnt/cpu\\040set rw - cgroup cgroup rw,cpuset
33 25 0:28 / /weird\\040place rw - cgroup cgroup rw,release_agent=/x,name=foo
";
        let l = HostLayout::from_mountinfo(mi).unwrap();
        assert_eq!(l.kind, LayoutKind::V1);
        assert_eq!(l.v1[0].subsystems, vec![Subsystem::Cpu, Subsystem::Cpuacct]);
        assert_eq!(l.v1[1].subsystems, vec![Subsystem::Cpuset]);
        assert_eq!(l.v1[1].root, Path::new("/docker/abc"));
        assert_eq!(l.v1[1].mount_point, Path::new("/sys/fs/cgroup/cpuset"));
        assert_eq!(l.v1[2].mount_point, Path::new("/weird place"));
        assert_eq!(l.v1[2].subsystems, vec![Subsystem::Named("foo".into())]);
    }

    #[test]
    fn pure_v2_and_nothing() {
        let l = HostLayout::from_mountinfo("29 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n")
            .unwrap();
        assert_eq!(l.kind, LayoutKind::V2);
        assert_eq!(l.v2.unwrap().root, Some(PathBuf::from("/")));
        let e = HostLayout::from_mountinfo("22 1 0:21 / /proc rw - proc proc rw\n").unwrap_err();
        assert!(e.to_string().contains("no cgroup filesystem"), "{e}");
        assert!(HostLayout::from_mountinfo("1 2 3 - cgroup2 x").is_err());
    }

    #[test]
    fn own_cgroups() {
        let own = OwnCgroups::parse("9:name=systemd:/\n4:memory:/process_api/f8\n1:cpu,cpuacct:/a b\n0::/\n").unwrap();
        assert_eq!(own.v1_path(&[Subsystem::Memory]), Some(Path::new("/process_api/f8")));
        assert_eq!(own.v1_path(&[Subsystem::Cpuacct]), Some(Path::new("/a b")));
        assert_eq!(own.v1_path(&[Subsystem::Named("systemd".into())]), Some(Path::new("/")));
        assert_eq!(own.v2, Some(PathBuf::from("/")));
        assert!(OwnCgroups::parse("garbage").is_err());
    }

    #[test]
    fn subsystem_names_round_trip() {
        for s in ["cpu", "cpuacct", "memory", "blkio", "name=systemd", "rdma", "weird"] {
            assert_eq!(Subsystem::parse(s).v1_name(), s);
        }
        assert_eq!(Subsystem::parse("io"), Subsystem::Blkio);
        assert_eq!(Subsystem::Blkio.name(false), "blkio");
        assert_eq!(Subsystem::Blkio.name(true), "io");
        assert_eq!(serde_json::to_string(&Subsystem::Named("systemd".into())).unwrap(), "\"name=systemd\"");
    }
}
