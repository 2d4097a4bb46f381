//! [`CgroupManager`]: one container's cgroups, from the spec (or from the
//! [`CgroupState`] saved in the container's state file) to their removal.
//!
//! A container gets one cgroup directory per hierarchy it joins, a *node*:
//! every mounted v1 hierarchy of a known controller plus name=systemd, and
//! the cgroup2 mount when there is one (on a hybrid host too, where systemd
//! tracks services in it and hugetlb may live there). Joining every v1
//! hierarchy, as runc does, keeps the container out of the runtime's cgroups
//! and gives a cgroup mount inside the container a view of its own cgroup
//! only; it costs about 40 µs per hierarchy (docs/cgroups.md).
//!
//! On v2 the container's cgroup gets the controllers its resources need plus
//! memory, pids, cpu and io for statistics, enabled in each ancestor's
//! cgroup.subtree_control; devices and freezing need no controller there.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use oci_spec::runtime::{LinuxDevice, LinuxResources};
use serde::{Deserialize, Serialize};

use super::controllers::{
    blkio::Blkio, cpu, cpu::Cpu, cpuset, cpuset::Cpuset, devices::Devices, freezer, hugetlb::Hugetlb, memory,
    memory::Memory, net_cls::NetCls, net_prio::NetPrio, pids, pids::Pids, rdma::Rdma, unified, unified::Unified,
    Controller, Ctx,
};
use super::device_rules::{effective_device_rules, rule_from_linux_device, DeviceRule, V1DeviceState};
use super::error::{write_hint, CgroupError, Result};
use super::layout::{HostLayout, LayoutKind, OwnCgroups, Subsystem};
use super::log;
use super::path::CgroupsPath;
use super::sys::{CgroupSys, HostSys};

pub use super::controllers::freezer::FreezerState;
use crate::linux::rootfs::CgroupView;

/// The name the rest of amphi uses.
pub type Manager = CgroupManager<HostSys>;

/// What a container's cgroups are made from (the spec's parts that matter).
#[derive(Debug, Clone, Copy)]
pub struct CgroupConfig<'a> {
    /// The container id (names the default cgroup, `/amphi-<id>`).
    pub id: &'a str,
    /// `linux.cgroupsPath`.
    pub cgroups_path: Option<&'a Path>,
    /// `linux.resources`.
    pub resources: Option<&'a LinuxResources>,
    /// `linux.devices`: each is allowed in the device rules.
    pub linux_devices: Option<&'a [LinuxDevice]>,
}

/// The container's cgroup in one hierarchy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CgroupNode {
    /// A cgroup2 directory (else v1).
    pub v2: bool,
    /// Where the hierarchy is mounted.
    pub mount_point: PathBuf,
    /// v1: the hierarchy's controllers (and `name=…`); v2: the controllers
    /// enabled for the container.
    pub subsystems: Vec<Subsystem>,
    /// The container's cgroup directory.
    pub path: PathBuf,
    /// Directories amphi created for this container, outermost first; destroy
    /// removes them innermost first (parents only when empty).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub created: Vec<PathBuf>,
}

impl CgroupNode {
    fn hosts(&self, s: &Subsystem) -> bool {
        self.subsystems.contains(s)
    }
}

/// Everything needed to manage a container's cgroups later (kill, pause,
/// stats, delete) without the spec: stored in the container's state file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CgroupState {
    pub layout: LayoutKind,
    pub cgroups_path: CgroupsPath,
    pub nodes: Vec<CgroupNode>,
    /// Allow rules for the spec's linux.devices, kept for updates.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra_device_rules: Vec<DeviceRule>,
}

impl Default for CgroupState {
    /// No cgroups at all (a state file written without any).
    fn default() -> Self {
        CgroupState {
            layout: LayoutKind::V1,
            cgroups_path: CgroupsPath::Absolute(PathBuf::new()),
            nodes: Vec::new(),
            extra_device_rules: Vec::new(),
        }
    }
}

/// How a new process joins the container's cgroups by itself, without the
/// parent writing its pid into cgroup.procs. That write takes the kernel's
/// global threadgroup lock, whose RCU grace period costs milliseconds here;
/// a single-threaded process writing "0" (itself) into each v1 `tasks` file
/// does not, and clone3(CLONE_INTO_CGROUP) places a child in the cgroup2
/// directory as it is created.
#[derive(Debug, Default)]
pub struct Join {
    /// v1: an open `tasks` file per hierarchy; [`Join::join_self`] writes "0".
    pub tasks: Vec<(PathBuf, OwnedFd)>,
    /// The container's cgroup2 directory, for CLONE_INTO_CGROUP (pure v2 and
    /// hybrid hosts).
    pub clone_into: Option<OwnedFd>,
}

impl Join {
    /// In the new (still single-threaded) process: moves itself into every
    /// v1 cgroup. Allocates nothing unless it fails.
    pub fn join_self(&self) -> Result<()> {
        for (path, fd) in &self.tasks {
            nix::unistd::write(fd, b"0").map_err(|e| CgroupError::AddTask {
                pid: 0,
                path: path.clone(),
                hint: "; the process could not move itself (writing 0 to tasks)".into(),
                source: e.into(),
            })?;
        }
        Ok(())
    }
}

/// Memory, CPU and process figures of a container (`events --stats`, shim).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CgroupStats {
    pub memory: Option<memory::MemoryStats>,
    pub cpu: Option<cpu::CpuStats>,
    pub pids: Option<pids::PidsStats>,
}

/// A hierarchy as a `cgroup` mount inside the container needs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CgroupMount {
    pub v2: bool,
    /// The directory name under /sys/fs/cgroup: "cpu,cpuacct", "systemd",
    /// "unified", or "" for a pure v2 host (mounted at /sys/fs/cgroup itself).
    pub dir_name: String,
    /// The host's mount point.
    pub mount_point: PathBuf,
    /// Options for mount(2) of type "cgroup": "cpu,cpuacct", "name=systemd"
    /// (empty for v2).
    pub options: String,
    /// Symlinks runc creates next to a co-mounted hierarchy: "cpu" and
    /// "cpuacct" pointing to "cpu,cpuacct".
    pub symlinks: Vec<String>,
    /// The host path of the container's cgroup in this hierarchy.
    pub host_path: PathBuf,
}

/// Controllers the v2 cgroup always gets (when offered), for statistics.
const V2_ACCOUNTING: [Subsystem; 4] = [Subsystem::Memory, Subsystem::Pids, Subsystem::Cpu, Subsystem::Blkio];

/// rmdir of a cgroup whose last task just exited can fail with EBUSY for a
/// moment; retry with these growing sleeps (about 0.5 s in total).
const RMDIR_BACKOFF: [u64; 9] = [1, 2, 4, 8, 16, 32, 64, 128, 256];

/// ENOENT races on mkdir (a shared parent removed by another container's
/// destroy) are retried this many times.
const MKDIR_RETRIES: usize = 5;

struct Entry {
    subsystem: Subsystem,
    requested: fn(&LinuxResources) -> Option<&'static str>,
    validate: fn(&LinuxResources, bool) -> Result<()>,
    apply: fn(&Ctx<'_>, &LinuxResources) -> Result<()>,
}

fn entry<C: Controller>() -> Entry {
    Entry { subsystem: C::SUBSYSTEM, requested: C::requested, validate: C::validate, apply: C::apply }
}

/// The controllers with spec fields, in the order they are applied (one
/// directory on v2, where unified comes last so that it wins).
fn controllers() -> [Entry; 9] {
    [
        entry::<Cpuset>(),
        entry::<Memory>(),
        entry::<Cpu>(),
        entry::<Blkio>(),
        entry::<Pids>(),
        entry::<Hugetlb>(),
        entry::<NetCls>(),
        entry::<NetPrio>(),
        entry::<Rdma>(),
    ]
}

/// A container's cgroups. `S` is the OS seam (the real one by default).
pub struct CgroupManager<S: CgroupSys = HostSys> {
    sys: S,
    state: CgroupState,
    resources: Option<LinuxResources>,
    /// Per node: created by this manager and not yet programmed, so files
    /// hold kernel defaults and no current value needs reading.
    fresh: Vec<bool>,
}

impl<S: CgroupSys> std::fmt::Debug for CgroupManager<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CgroupManager").field("state", &self.state).field("fresh", &self.fresh).finish_non_exhaustive()
    }
}

/// The host's cgroup mounts, read once per process: `create` resolves
/// the container's cgroups twice (the plan it records first, then the
/// cgroups it makes), and the mounts do not change in between.
fn host_layout() -> Result<HostLayout> {
    static DETECTED: std::sync::OnceLock<HostLayout> = std::sync::OnceLock::new();
    if let Some(l) = DETECTED.get() {
        return Ok(l.clone());
    }
    let l = HostLayout::detect()?;
    Ok(DETECTED.get_or_init(|| l).clone())
}

impl CgroupManager<HostSys> {
    /// Resolves the container's cgroups on this host and checks that every
    /// requested resource can be applied; nothing is created yet.
    pub fn new(cfg: &CgroupConfig<'_>) -> Result<Self> {
        let path = CgroupsPath::from_spec(cfg.id, cfg.cgroups_path)?;
        let mut layout = host_layout()?;
        let own = if path.is_relative() {
            layout.ensure_v2_root()?;
            Some(OwnCgroups::read()?)
        } else {
            None
        };
        Self::with_layout(HostSys, &layout, own.as_ref(), cfg)
    }

    /// Where the container's cgroups will be, from the id and cgroupsPath
    /// alone, before any exists (the state `create` records first).
    pub fn plan(id: &str, cgroups_path: Option<&Path>) -> Result<CgroupState> {
        let cfg = CgroupConfig { id, cgroups_path, resources: None, linux_devices: None };
        Ok(Self::new(&cfg)?.state)
    }

    /// Rebuilds the manager of an existing container from its saved state.
    pub fn from_state(state: CgroupState) -> Self {
        Self::from_state_with(HostSys, state)
    }
}

impl<S: CgroupSys> CgroupManager<S> {
    /// [`CgroupManager::new`] on a given layout and OS seam (fake trees).
    /// `own` is the runtime's own cgroups, needed for a relative path only.
    pub fn with_layout(sys: S, layout: &HostLayout, own: Option<&OwnCgroups>, cfg: &CgroupConfig<'_>) -> Result<Self> {
        let path = CgroupsPath::from_spec(cfg.id, cfg.cgroups_path)?;
        let empty = LinuxResources::default();
        let res = cfg.resources.unwrap_or(&empty);

        // Where each requested controller lives, and its checks.
        let mut v2_controllers: Option<Vec<Subsystem>> = None;
        let mut v2_wanted: Vec<Subsystem> = Vec::new();
        for c in controllers() {
            let Some(field) = (c.requested)(res) else { continue };
            let on_v1 = layout.v1_for(&c.subsystem).is_some();
            if !on_v1 {
                let avail = match &v2_controllers {
                    Some(a) => a,
                    None => v2_controllers.insert(layout.v2_controllers(&sys)?),
                };
                if !avail.contains(&c.subsystem) {
                    let (name, reason) = match layout.kind {
                        LayoutKind::V2 => {
                            (c.subsystem.name(true), format!("the cgroup2 mount offers only: {}", names(avail)))
                        }
                        LayoutKind::V1 => (c.subsystem.name(false), "it is not mounted".into()),
                        LayoutKind::Hybrid => (
                            c.subsystem.name(false),
                            format!("it is neither mounted as v1 nor offered by the cgroup2 mount ({})", names(avail)),
                        ),
                    };
                    if layout.kind == LayoutKind::V2 {
                        // "v2 has no such thing" says more than "not offered".
                        (c.validate)(res, true)?;
                    }
                    return Err(CgroupError::MissingController { field: field.into(), controller: name, reason });
                }
                v2_wanted.push(c.subsystem.clone());
            }
            (c.validate)(res, !on_v1)?;
        }
        if let Some(field) = Unified::requested(res) {
            Unified::validate(res, layout.kind == LayoutKind::V2)?;
            let avail = match &v2_controllers {
                Some(a) => a,
                None => v2_controllers.insert(layout.v2_controllers(&sys)?),
            };
            for s in unified::controllers(res) {
                if !avail.contains(&s) {
                    return Err(CgroupError::MissingController {
                        field: field.into(),
                        controller: s.name(true),
                        reason: format!("the cgroup2 mount offers only: {}", names(avail)),
                    });
                }
                v2_wanted.push(s);
            }
        }

        // Device rules: validated now, with the spec's devices.
        let devices_on_v1 = layout.v1_for(&Subsystem::Devices).is_some();
        if !devices_on_v1 && layout.v2.is_none() {
            return Err(CgroupError::MissingController {
                field: "devices".into(),
                controller: "devices".into(),
                reason: "it is not mounted, and containers without a device cgroup could open any device".into(),
            });
        }
        let rules = effective_device_rules(res.devices().as_deref(), cfg.linux_devices)?;
        if devices_on_v1 {
            V1DeviceState::from_rules(&rules)?;
        } else {
            Devices::validate(res, true)?;
        }
        let extra_device_rules: Vec<DeviceRule> =
            cfg.linux_devices.unwrap_or_default().iter().filter_map(rule_from_linux_device).collect();

        // The nodes.
        let mut nodes = Vec::new();
        for h in &layout.v1 {
            let known = h.subsystems.iter().any(|s| !matches!(s, Subsystem::Other(_) | Subsystem::Named(_)));
            let systemd = h.subsystems.contains(&Subsystem::Named("systemd".into()));
            if !known && !systemd {
                continue;
            }
            let name = h.subsystems.iter().map(|s| s.v1_name()).collect::<Vec<_>>().join(",");
            let own_path = own.and_then(|o| o.v1_path(&h.subsystems));
            nodes.push(CgroupNode {
                v2: false,
                mount_point: h.mount_point.clone(),
                subsystems: h.subsystems.clone(),
                path: path.host_path(&h.mount_point, &h.root, own_path, &name)?,
                created: Vec::new(),
            });
        }
        if let Some(m) = &layout.v2 {
            let mut enable = v2_wanted;
            if layout.kind == LayoutKind::V2 {
                let avail = match &v2_controllers {
                    Some(a) => a,
                    None => v2_controllers.insert(layout.v2_controllers(&sys)?),
                };
                enable.extend(V2_ACCOUNTING.iter().filter(|s| avail.contains(s)).cloned());
            }
            enable.sort();
            enable.dedup();
            let root = m.root.clone().unwrap_or_else(|| PathBuf::from("/"));
            let own_path = own.and_then(|o| o.v2.as_deref());
            nodes.push(CgroupNode {
                v2: true,
                mount_point: m.mount_point.clone(),
                subsystems: enable,
                path: path.host_path(&m.mount_point, &root, own_path, "cgroup2")?,
                created: Vec::new(),
            });
        }
        if layout.kind != LayoutKind::V2 {
            for s in [Subsystem::NetCls, Subsystem::NetPrio] {
                if layout.v1_for(&s).is_none() {
                    log::debug(&format!(
                        "{} is not mounted: the container gets no {} cgroup",
                        s.v1_name(),
                        s.v1_name()
                    ));
                }
            }
        }
        let n = nodes.len();
        Ok(CgroupManager {
            sys,
            state: CgroupState { layout: layout.kind, cgroups_path: path, nodes, extra_device_rules },
            resources: cfg.resources.cloned(),
            fresh: vec![false; n],
        })
    }

    /// [`CgroupManager::from_state`] with a given OS seam.
    pub fn from_state_with(sys: S, state: CgroupState) -> Self {
        let n = state.nodes.len();
        CgroupManager { sys, state, resources: None, fresh: vec![false; n] }
    }

    /// What to save in the container's state file.
    pub fn state(&self) -> &CgroupState {
        &self.state
    }

    pub fn sys(&self) -> &S {
        &self.sys
    }

    /// The container's cgroup2 directory, if any: with clone3's
    /// CLONE_INTO_CGROUP on a pure v2 host the init can start in it directly.
    pub fn unified_path(&self) -> Option<&Path> {
        self.state.nodes.iter().find(|n| n.v2).map(|n| n.path.as_path())
    }

    /// Creates the container's cgroup in every hierarchy (missing parents
    /// too). Idempotent: existing directories are reused. On failure,
    /// everything created by this call is removed again.
    pub fn create(&mut self) -> Result<()> {
        for i in 0..self.state.nodes.len() {
            if let Err(e) = self.create_node(i) {
                self.rollback();
                return Err(e);
            }
        }
        Ok(())
    }

    fn rollback(&mut self) {
        for n in &mut self.state.nodes {
            for d in n.created.iter().rev() {
                let _ = self.sys.rmdir(d);
            }
            n.created.clear();
        }
    }

    fn create_node(&mut self, i: usize) -> Result<()> {
        let node = self.state.nodes[i].clone();
        let mut created = Vec::new();
        let mut attempt = 0;
        loop {
            match self.mkdir_p(&node.mount_point, &node.path, &mut created) {
                Ok(()) => {}
                // A parent vanished under us (another container removed a
                // shared parent it had created): start over.
                Err((_, e)) if e.raw_os_error() == Some(libc::ENOENT) && attempt < MKDIR_RETRIES => {
                    attempt += 1;
                    created.clear();
                    continue;
                }
                Err((p, e)) => {
                    for d in created.iter().rev() {
                        let _ = self.sys.rmdir(d);
                    }
                    let hint = write_hint("the directory", &e);
                    return Err(CgroupError::Create { path: p, hint, source: e });
                }
            }
            if node.v2 && !node.subsystems.is_empty() {
                if let Err(e) = self.enable_v2_controllers(i) {
                    if e.raw_os_error() == Some(libc::ENOENT) && attempt < MKDIR_RETRIES {
                        attempt += 1;
                        created.clear();
                        continue;
                    }
                    self.state.nodes[i].created.extend(created);
                    return Err(e.into_error());
                }
            }
            break;
        }
        let fresh = created.last() == Some(&node.path);
        // A repeated create keeps what the first one recorded.
        for d in &created {
            if !self.state.nodes[i].created.contains(d) {
                self.state.nodes[i].created.push(d.clone());
            }
        }
        self.fresh[i] = fresh;
        if !node.v2 && node.hosts(&Subsystem::Cpuset) && !created.is_empty() {
            cpuset::populate_new_dirs(&self.sys, &created, self.resources.as_ref())?;
        }
        Ok(())
    }

    /// mkdir -p below `mount` (never at or above it); records what it made.
    fn mkdir_p(
        &self,
        mount: &Path,
        path: &Path,
        created: &mut Vec<PathBuf>,
    ) -> std::result::Result<(), (PathBuf, std::io::Error)> {
        match self.sys.mkdir(path) {
            Ok(()) => {
                created.push(path.to_path_buf());
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                let parent = path
                    .parent()
                    .filter(|p| p.starts_with(mount) && *p != mount)
                    .ok_or_else(|| (path.to_path_buf(), e))?;
                self.mkdir_p(mount, parent, created)?;
                match self.sys.mkdir(path) {
                    Ok(()) => {
                        created.push(path.to_path_buf());
                        Ok(())
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
                    Err(e) => Err((path.to_path_buf(), e)),
                }
            }
            Err(e) => Err((path.to_path_buf(), e)),
        }
    }

    /// Enables the node's controllers in the subtree_control of every
    /// ancestor, from the mount point down. A controller that cannot be
    /// enabled is dropped when it was only wanted for statistics.
    fn enable_v2_controllers(&mut self, i: usize) -> std::result::Result<(), EnableError> {
        let node = &self.state.nodes[i];
        let res = self.resources.clone().unwrap_or_default();
        let needed: Vec<Subsystem> = controllers()
            .into_iter()
            .filter(|c| (c.requested)(&res).is_some())
            .map(|c| c.subsystem)
            .chain(unified::controllers(&res))
            .collect();
        let mut dirs: Vec<PathBuf> = node
            .path
            .ancestors()
            .skip(1)
            .take_while(|p| p.starts_with(&node.mount_point))
            .map(Path::to_path_buf)
            .collect();
        dirs.reverse();
        let mut enabled = node.subsystems.clone();
        for dir in dirs {
            let file = dir.join("cgroup.subtree_control");
            let all = enabled.iter().map(|s| format!("+{}", s.v2_name())).collect::<Vec<_>>().join(" ");
            if all.is_empty() {
                break;
            }
            if self.sys.write(&file, &all).is_ok() {
                continue;
            }
            // One by one, to find the one that is refused.
            let mut kept = Vec::new();
            for s in enabled {
                match self.sys.write(&file, &format!("+{}", s.v2_name())) {
                    Ok(()) => kept.push(s),
                    Err(e) if e.raw_os_error() == Some(libc::ENOENT) && !self.sys.exists(&dir) => {
                        return Err(EnableError::Gone(e));
                    }
                    Err(e) if needed.contains(&s) => {
                        let hint = if e.raw_os_error() == Some(libc::EBUSY) {
                            format!(
                                "; {} holds processes, and cgroup v2 enables controllers only below cgroups without any: \
                                 use an absolute cgroupsPath",
                                dir.display()
                            )
                        } else {
                            write_hint("cgroup.subtree_control", &e)
                        };
                        return Err(EnableError::Failed(CgroupError::Apply {
                            field: format!("(the {} controller)", s.v2_name()),
                            path: file,
                            value: format!("+{}", s.v2_name()),
                            hint,
                            source: e,
                        }));
                    }
                    Err(e) => log::debug(&format!(
                        "{} not enabled in {}: {e}; no {} statistics",
                        s.v2_name(),
                        dir.display(),
                        s.v2_name()
                    )),
                }
            }
            enabled = kept;
        }
        self.state.nodes[i].subsystems = enabled;
        Ok(())
    }

    /// Applies `res` in full: every requested value, and the device rules
    /// (the spec's, the defaults, `linux.devices`) whether or not
    /// `res.devices` is set.
    pub fn apply(&mut self, res: &LinuxResources) -> Result<()> {
        self.apply_inner(res, true)
    }

    /// Applies what `res` sets to a running container (`amphi update`):
    /// device rules only when `res.devices` is set.
    pub fn update(&mut self, res: &LinuxResources) -> Result<()> {
        self.apply_inner(res, false)
    }

    fn devices_on_v2(&self) -> bool {
        !self.state.nodes.iter().any(|n| !n.v2 && n.hosts(&Subsystem::Devices))
    }

    fn apply_inner(&mut self, res: &LinuxResources, full: bool) -> Result<()> {
        // Re-check against the nodes we have (a state file may come from an
        // older layout, and update brings new values).
        for c in controllers() {
            let Some(field) = (c.requested)(res) else { continue };
            let Some(node) = self.state.nodes.iter().find(|n| n.hosts(&c.subsystem)) else {
                return Err(CgroupError::MissingController {
                    field: field.into(),
                    controller: c.subsystem.v1_name(),
                    reason: "the container's cgroups were created without it".into(),
                });
            };
            (c.validate)(res, node.v2)?;
        }
        if Unified::requested(res).is_some() {
            Unified::validate(res, self.state.layout == LayoutKind::V2)?;
        }
        let do_devices = full || res.devices().is_some();
        let mut rules = Vec::new();
        if do_devices {
            rules = effective_device_rules(res.devices().as_deref(), None)?;
            for r in &self.state.extra_device_rules {
                if !rules.contains(r) {
                    rules.push(*r);
                }
            }
        }
        let devices_on_v2 = self.devices_on_v2();
        for (i, node) in self.state.nodes.iter().enumerate() {
            let ctx = Ctx { sys: &self.sys, dir: &node.path, v2: node.v2, fresh: self.fresh[i], device_rules: &rules };
            if !node.v2 && ctx.fresh && node.hosts(&Subsystem::Cpu) && node.created.len() > 1 {
                cpu::give_rt_budget_to_new_ancestors(&self.sys, &node.created[..node.created.len() - 1], res)?;
            }
            for c in controllers() {
                if node.hosts(&c.subsystem) && (c.requested)(res).is_some() {
                    (c.apply)(&ctx, res)?;
                }
            }
            let hosts_devices = if node.v2 { devices_on_v2 } else { node.hosts(&Subsystem::Devices) };
            if do_devices && hosts_devices {
                Devices::apply(&ctx, res)?;
            }
            if node.v2 && Unified::requested(res).is_some() {
                Unified::apply(&ctx, res)?;
            }
        }
        self.fresh.iter_mut().for_each(|f| *f = false);
        Ok(())
    }

    /// create, apply the resources given to `new`, and open what a new
    /// process needs to join by itself ([`Join`]): the cheapest way to start
    /// the container's init. On failure the cgroups are removed again.
    pub fn prepare(&mut self) -> Result<Join> {
        self.create()?;
        let res = self.resources.take().unwrap_or_default();
        let r = self.apply(&res).and_then(|_| self.open_join());
        self.resources = Some(res);
        r.inspect_err(|_| {
            let _ = self.destroy();
        })
    }

    /// Opens the join handles of the existing cgroups (also for `exec`).
    pub fn open_join(&self) -> Result<Join> {
        let mut join = Join::default();
        for n in &self.state.nodes {
            if n.v2 {
                let fd = self.sys.open(&n.path, true).map_err(|e| CgroupError::file("open", n.path.clone(), e))?;
                join.clone_into = Some(fd);
            } else {
                let p = n.path.join("tasks");
                let fd = self.sys.open(&p, false).map_err(|e| CgroupError::file("open", p.clone(), e))?;
                join.tasks.push((p, fd));
            }
        }
        Ok(join)
    }

    /// The v1 view for a `cgroup` mount inside the container: every v1
    /// hierarchy (a hybrid host's cgroup2 mount is not part of it), or the
    /// one cgroup2 directory on a pure v2 host.
    pub fn view(&self) -> CgroupView {
        let v2 = self.state.layout == LayoutKind::V2;
        let mut view = CgroupView { v2, hierarchies: Vec::new(), links: Vec::new() };
        for m in self.mounts().into_iter().filter(|m| m.v2 == v2) {
            for l in &m.symlinks {
                view.links.push((l.clone(), m.dir_name.clone()));
            }
            let data = if m.options.starts_with("name=") { format!("none,{}", m.options) } else { m.options };
            view.hierarchies.push((m.dir_name, data, m.host_path));
        }
        view
    }

    /// Moves process `pid` (all its threads) into the container's cgroups.
    pub fn add_task(&self, pid: i32) -> Result<()> {
        for n in &self.state.nodes {
            let p = n.path.join("cgroup.procs");
            self.sys.write(&p, &pid.to_string()).map_err(|e| {
                let hint = match e.raw_os_error() {
                    Some(libc::ESRCH) => "; the process is gone".to_string(),
                    Some(libc::ENOSPC) => "; cpuset.cpus or cpuset.mems of the cgroup is empty".to_string(),
                    Some(libc::EOPNOTSUPP) => "; the cgroup is in threaded or invalid mode (cgroup.type)".to_string(),
                    _ => write_hint("cgroup.procs", &e),
                };
                CgroupError::AddTask { pid, path: n.path.clone(), hint, source: e }
            })?;
        }
        Ok(())
    }

    /// create, apply the resources given to `new`, add `pid`: the order that
    /// needs the fewest reads (fresh cgroups hold kernel defaults) and sets
    /// limits such as the realtime budget before the task arrives. On failure
    /// the cgroups are removed again.
    pub fn create_apply_add(&mut self, pid: i32) -> Result<()> {
        self.create()?;
        let res = self.resources.take().unwrap_or_default();
        let r = self.apply(&res).and_then(|_| self.add_task(pid));
        self.resources = Some(res);
        if let Err(e) = r {
            let _ = self.destroy();
            return Err(e);
        }
        Ok(())
    }

    /// The node that tracks every process: v1 freezer, else the v2 cgroup.
    fn tracking(&self) -> Option<&CgroupNode> {
        let n = &self.state.nodes;
        n.iter()
            .find(|n| !n.v2 && n.hosts(&Subsystem::Freezer))
            .or_else(|| n.iter().find(|n| n.v2))
            .or_else(|| n.first())
    }

    fn freezer_node(&self) -> Result<&CgroupNode> {
        self.state
            .nodes
            .iter()
            .find(|n| !n.v2 && n.hosts(&Subsystem::Freezer))
            .or_else(|| self.state.nodes.iter().find(|n| n.v2 && self.state.layout == LayoutKind::V2))
            .or_else(|| self.state.nodes.iter().find(|n| n.v2))
            .ok_or_else(|| {
                CgroupError::unsupported("(pause and kill --all)", "the freezer controller is not mounted on this host")
            })
    }

    /// Every process in the container's cgroup and its sub-cgroups, sorted.
    pub fn pids(&self) -> Result<Vec<i32>> {
        let Some(n) = self.tracking() else { return Ok(Vec::new()) };
        let mut out = Vec::new();
        self.collect_pids(&n.path, &mut out)?;
        out.sort_unstable();
        out.dedup();
        Ok(out)
    }

    fn collect_pids(&self, dir: &Path, out: &mut Vec<i32>) -> Result<()> {
        let p = dir.join("cgroup.procs");
        match self.sys.read(&p) {
            Ok(s) => out.extend(s.split_whitespace().filter_map(|x| x.parse::<i32>().ok())),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
            Err(e) => return Err(CgroupError::file("read", p, e)),
        }
        for sub in self.sys.subdirs(dir).map_err(|e| CgroupError::file("list", dir.to_path_buf(), e))? {
            self.collect_pids(&sub, out)?;
        }
        Ok(())
    }

    /// Freezes every process of the container and waits until they stopped.
    pub fn freeze(&self) -> Result<()> {
        let n = self.freezer_node()?;
        freezer::freeze(&self.sys, &n.path, n.v2)
    }

    pub fn thaw(&self) -> Result<()> {
        let n = self.freezer_node()?;
        freezer::thaw(&self.sys, &n.path, n.v2)
    }

    pub fn freezer_state(&self) -> Result<FreezerState> {
        let n = self.freezer_node()?;
        freezer::state(&self.sys, &n.path, n.v2)
    }

    /// Sends `signal` to every process of the container (`kill --all`):
    /// SIGKILL through cgroup.kill where v2 has it; otherwise freeze, signal
    /// each process, thaw, so that no process forks away meanwhile.
    pub fn signal_all(&self, signal: i32) -> Result<()> {
        if signal == libc::SIGKILL {
            if let Some(n) = self.state.nodes.iter().find(|n| n.v2 && self.state.layout == LayoutKind::V2) {
                let p = n.path.join("cgroup.kill");
                if self.sys.exists(&p) {
                    return self.sys.write(&p, "1").map_err(|e| CgroupError::file("write", p, e));
                }
            }
        }
        // A paused container stays paused, except for SIGKILL: frozen
        // processes die only once thawed, and a cgroup left frozen by a
        // command killed half-way through this very function would
        // otherwise never die at all.
        let paused = self.freezer_state().is_ok_and(|s| s == FreezerState::Frozen);
        let frozen = !paused && self.freezer_node().is_ok() && self.freeze().is_ok();
        let r = self.pids().and_then(|pids| {
            for pid in pids {
                match self.sys.kill(pid, signal) {
                    Ok(()) => {}
                    Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
                    Err(source) => return Err(CgroupError::Signal { pid, signal, source }),
                }
            }
            Ok(())
        });
        if frozen || (paused && signal == libc::SIGKILL) {
            self.thaw()?;
        }
        r
    }

    /// Memory, CPU and pids figures (each None where its controller is missing).
    pub fn stats(&self) -> Result<CgroupStats> {
        let find = |s: Subsystem| self.state.nodes.iter().find(|n| n.hosts(&s));
        let mut st = CgroupStats::default();
        if let Some(n) = find(Subsystem::Memory) {
            st.memory = Some(memory::stats(&n.path, n.v2));
        }
        let v2 = self.state.nodes.iter().find(|n| n.v2 && self.state.layout == LayoutKind::V2);
        st.cpu = match v2 {
            Some(n) => Some(cpu::stats(Some(&n.path), None, true)),
            None => {
                let (c, a) = (find(Subsystem::Cpu), find(Subsystem::Cpuacct));
                (c.is_some() || a.is_some())
                    .then(|| cpu::stats(c.map(|n| n.path.as_path()), a.map(|n| n.path.as_path()), false))
            }
        };
        if let Some(n) = find(Subsystem::Pids) {
            st.pids = Some(pids::stats(&n.path, n.v2));
        }
        Ok(st)
    }

    /// Every figure `events --stats` reports, read from the hierarchy that
    /// hosts each controller.
    pub fn runc_stats(&self) -> crate::container::stats::Stats {
        let v2 = self.state.nodes.iter().find(|n| n.v2 && self.state.layout == LayoutKind::V2);
        let v1 = |s: Subsystem| self.state.nodes.iter().find(|n| !n.v2 && n.hosts(&s)).map(|n| n.path.as_path());
        let dirs = super::stats::Dirs {
            v2: v2.map(|n| n.path.as_path()),
            cpu: v1(Subsystem::Cpu),
            cpuacct: v1(Subsystem::Cpuacct),
            cpuset: v1(Subsystem::Cpuset),
            memory: v1(Subsystem::Memory),
            pids: v1(Subsystem::Pids),
            blkio: v1(Subsystem::Blkio),
            hugetlb: self.state.nodes.iter().find(|n| n.hosts(&Subsystem::Hugetlb)).map(|n| (n.path.as_path(), n.v2)),
        };
        super::stats::read_stats(&self.sys, &dirs)
    }

    /// Removes the container's cgroups (sub-cgroups first) and the parents
    /// amphi created for it when they are empty. Idempotent. The processes
    /// must be gone; right after the last one exits the kernel may still
    /// answer EBUSY for a moment, which is retried with growing sleeps.
    pub fn destroy(&self) -> Result<()> {
        let mut first_err = None;
        for n in &self.state.nodes {
            if let Err(e) = self.remove_tree(&n.path) {
                first_err.get_or_insert(e);
                continue;
            }
            for d in n.created.iter().rev().filter(|d| **d != n.path) {
                match self.sys.rmdir(d) {
                    Ok(()) => {}
                    // Shared with another container, or gone already.
                    Err(e)
                        if matches!(
                            e.raw_os_error(),
                            Some(libc::EBUSY) | Some(libc::ENOTEMPTY) | Some(libc::ENOENT)
                        ) =>
                    {
                        break
                    }
                    Err(e) => {
                        first_err.get_or_insert(CgroupError::Remove {
                            path: d.clone(),
                            hint: String::new(),
                            source: e,
                        });
                        break;
                    }
                }
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// [`CgroupManager::destroy`] after SIGKILL to whatever still runs in
    /// the cgroups: a container's processes that outlived its init, or
    /// those of a `create` killed before it recorded a pid.
    pub fn kill_and_destroy(&self) -> Result<()> {
        if !self.pids().unwrap_or_default().is_empty() {
            self.signal_all(libc::SIGKILL)?;
        }
        self.destroy()
    }

    fn remove_tree(&self, dir: &Path) -> Result<()> {
        let mut backoff = RMDIR_BACKOFF.iter();
        loop {
            let err = match self.sys.rmdir(dir) {
                Ok(()) => return Ok(()),
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
                Err(e) => e,
            };
            if err.raw_os_error() != Some(libc::EBUSY) {
                return Err(CgroupError::Remove {
                    path: dir.to_path_buf(),
                    hint: write_hint("the directory", &err),
                    source: err,
                });
            }
            // Sub-cgroups (made inside the container) go first.
            let subs = self.sys.subdirs(dir).unwrap_or_default();
            if !subs.is_empty() {
                for s in subs {
                    self.remove_tree(&s)?;
                }
                continue;
            }
            match backoff.next() {
                Some(ms) => self.sys.sleep(Duration::from_millis(*ms)),
                None => {
                    let mut pids = Vec::new();
                    let _ = self.collect_pids(dir, &mut pids);
                    let hint = if pids.is_empty() {
                        "; the kernel still reports it busy".to_string()
                    } else {
                        format!("; processes {pids:?} are still in it: kill them first (amphi kill --all, or delete --force)")
                    };
                    return Err(CgroupError::Remove { path: dir.to_path_buf(), hint, source: err });
                }
            }
        }
    }

    /// Per hierarchy, what a `cgroup` mount inside the container needs.
    pub fn mounts(&self) -> Vec<CgroupMount> {
        self.state
            .nodes
            .iter()
            .map(|n| {
                let dir_name = if n.v2 && self.state.layout == LayoutKind::V2 {
                    String::new()
                } else {
                    n.mount_point.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default()
                };
                let options = if n.v2 {
                    String::new()
                } else {
                    n.subsystems.iter().map(|s| s.v1_name()).collect::<Vec<_>>().join(",")
                };
                let symlinks = if dir_name.contains(',') {
                    n.subsystems
                        .iter()
                        .filter(|s| !matches!(s, Subsystem::Named(_)))
                        .map(|s| s.v1_name())
                        .filter(|s| *s != dir_name)
                        .collect()
                } else {
                    Vec::new()
                };
                CgroupMount {
                    v2: n.v2,
                    dir_name,
                    mount_point: n.mount_point.clone(),
                    options,
                    symlinks,
                    host_path: n.path.clone(),
                }
            })
            .collect()
    }
}

enum EnableError {
    /// A directory on the way vanished (retry the creation).
    Gone(std::io::Error),
    Failed(CgroupError),
}

impl EnableError {
    fn raw_os_error(&self) -> Option<i32> {
        match self {
            EnableError::Gone(e) => e.raw_os_error(),
            EnableError::Failed(_) => None,
        }
    }

    fn into_error(self) -> CgroupError {
        match self {
            EnableError::Gone(e) => CgroupError::file("write", "cgroup.subtree_control", e),
            EnableError::Failed(e) => e,
        }
    }
}

fn names(list: &[Subsystem]) -> String {
    if list.is_empty() {
        "no controllers".into()
    } else {
        list.iter().map(|s| s.v2_name()).collect::<Vec<_>>().join(" ")
    }
}

#[cfg(test)]
#[path = "manager_tests.rs"]
mod tests;
