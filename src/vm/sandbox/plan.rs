//! Turning a bundle into a VM: how big the guest is, which host paths it
//! sees through its virtio-fs share and where, which images and block
//! devices it gets as disks ([`super::disks`]), the config.json the guest's
//! runtime gets, and the limits of the VMM's own cgroup on the host. Pure
//! logic, decided before anything is started, so every bad value is a
//! clear error at `create` and is tested without KVM.

use std::path::{Path, PathBuf};
use std::time::Duration;

use oci_spec::runtime::{LinuxNamespaceType, LinuxResources, Spec};
use serde_json::{json, Value};

use super::disks::{self, DiskEntry, DiskPlanError};
use crate::agent::container::GUEST_SHARE_DIR;

/// Annotations that configure one VM container (docs/vm.md).
pub const ANNOTATION_MEMORY: &str = "run.amphi.vm.memory";
pub const ANNOTATION_CPUS: &str = "run.amphi.vm.cpus";
pub const ANNOTATION_KERNEL: &str = "run.amphi.vm.kernel";
pub const ANNOTATION_KERNEL_ARGS: &str = "run.amphi.vm.kernel_args";
pub const ANNOTATION_BOOT_TIMEOUT: &str = "run.amphi.vm.boot_timeout";
/// "false" turns free page reporting off: the guest keeps what it frees
/// until a balloon target asks for it (for comparisons).
pub const ANNOTATION_FREE_PAGE_REPORTING: &str = "run.amphi.vm.free_page_reporting";
/// "false" boots the VM cold instead of restoring it from a template
/// (`crate::vm::template`); "true" (or no annotation) allows a template.
pub const ANNOTATION_TEMPLATE: &str = "run.amphi.vm.template";

/// Guest RAM when the bundle sets no memory limit.
pub const DEFAULT_MEMORY_MIB: u64 = 512;
/// Guest RAM added to a bundle's memory limit for the guest kernel, the
/// agent and the page cache, so the workload's cgroup in the guest can use
/// its whole limit.
pub const MEMORY_OVERHEAD_MIB: u64 = 128;
/// Smallest guest amphi boots a container in.
pub const MIN_MEMORY_MIB: u64 = 128;
/// Largest guest amphi sizes (1 TiB). Beyond it a size is a mistake (or
/// "unlimited" written as a huge number), and the byte counts derived
/// from it would no longer fit their types.
pub const MAX_MEMORY_MIB: u64 = 1 << 20;
/// vCPUs when the bundle sets no CPU quota or cpuset.
pub const DEFAULT_VCPUS: u8 = 1;
/// The VMM's own memory on top of guest RAM, for the host cgroup's limit.
pub const VMM_OVERHEAD_MIB: u64 = 64;
/// How long the guest has to boot to its agent.
pub const DEFAULT_BOOT_TIMEOUT: Duration = Duration::from_secs(60);
/// The pod's limits, as containerd's CRI annotates a sandbox: the sum of
/// its containers' memory limits (bytes) and their CPU quota and period.
/// A pod's VM (the sandbox's, `super::pod`) is sized from them.
pub const ANNOTATION_SANDBOX_MEMORY: &str = "io.kubernetes.cri.sandbox-memory";
pub const ANNOTATION_SANDBOX_CPU_QUOTA: &str = "io.kubernetes.cri.sandbox-cpu-quota";
pub const ANNOTATION_SANDBOX_CPU_PERIOD: &str = "io.kubernetes.cri.sandbox-cpu-period";
/// The virtio-fs tag of a container's share.
pub const SHARE_TAG: &str = "amphi";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlanError {
    #[error("annotation {key}={value:?}: {problem}")]
    Annotation { key: &'static str, value: String, problem: String },
    #[error("{0}")]
    Unsupported(String),
    #[error("mount #{index} ({destination}): bind source {source_path} does not exist: create it or fix the mount")]
    MissingSource { index: usize, destination: String, source_path: PathBuf },
    #[error("linux.namespaces: network path {path} {problem}: give the path of a network namespace")]
    NotNetworkNamespace { path: PathBuf, problem: String },
    #[error(transparent)]
    Disk(#[from] DiskPlanError),
    #[error(
        "mount #{index} ({destination}): cannot make its mount point in the read-only root on the host: fix the \
         image or set root.readonly to false"
    )]
    MountPoint {
        index: usize,
        destination: String,
        #[source]
        errno: nix::errno::Errno,
    },
}

/// Checks that `path` is a network namespace (`NS_GET_NSTYPE`), as
/// joining it would in container isolation.
fn check_network_namespace(path: &Path) -> Result<(), PlanError> {
    let bad = |problem: String| PlanError::NotNetworkNamespace { path: path.to_path_buf(), problem };
    let f = std::fs::File::open(path).map_err(|e| bad(format!("cannot be opened ({e})")))?;
    // SAFETY: NS_GET_NSTYPE takes no argument and only returns a value; on
    // a file that is not a namespace it fails with ENOTTY.
    let t = unsafe { libc::ioctl(std::os::fd::AsRawFd::as_raw_fd(&f), libc::NS_GET_NSTYPE) };
    if t < 0 {
        return Err(bad("is not a namespace".into()));
    }
    if t != libc::CLONE_NEWNET {
        return Err(bad("is a namespace of another type".into()));
    }
    Ok(())
}

/// The VM a bundle gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmSize {
    pub memory_mib: u64,
    pub vcpus: u8,
    pub kernel: Option<PathBuf>,
    pub kernel_args: Option<String>,
    pub boot_timeout: Duration,
    /// The balloon's free page reporting (default on).
    pub free_page_reporting: bool,
}

pub(super) fn annotation<'a>(spec: &'a Spec, key: &str) -> Option<&'a str> {
    spec.annotations().as_ref().and_then(|a| a.get(key)).map(String::as_str)
}

fn parse_number(spec: &Spec, key: &'static str, host_max: Option<u64>) -> Result<Option<u64>, PlanError> {
    let Some(v) = annotation(spec, key) else { return Ok(None) };
    let bad = |problem: String| PlanError::Annotation { key, value: v.to_string(), problem };
    let n: u64 = v.trim().parse().map_err(|_| bad("not a whole number".into()))?;
    if n == 0 {
        return Err(bad("must be at least 1".into()));
    }
    if let Some(max) = host_max.filter(|m| n > *m) {
        return Err(bad(format!("this host has {max}; use at most that")));
    }
    Ok(Some(n))
}

/// One of the CRI's pod annotations: a number, where 0 or less (the CRI
/// writes 0 for "no limit", quotas may be -1) is no value.
fn pod_number(spec: &Spec, key: &'static str) -> Result<Option<i64>, PlanError> {
    let Some(v) = annotation(spec, key) else { return Ok(None) };
    let n: i64 = v.trim().parse().map_err(|_| PlanError::Annotation {
        key,
        value: v.to_string(),
        problem: "not a whole number (containerd's CRI writes it)".into(),
    })?;
    Ok((n > 0).then_some(n))
}

/// A "true"/"false" annotation; `None` when the bundle does not set it.
fn parse_bool(spec: &Spec, key: &'static str) -> Result<Option<bool>, PlanError> {
    match annotation(spec, key).map(str::trim) {
        None => Ok(None),
        Some("true") => Ok(Some(true)),
        Some("false") => Ok(Some(false)),
        Some(v) => Err(PlanError::Annotation { key, value: v.to_string(), problem: "use true or false".into() }),
    }
}

/// The bundle's [`ANNOTATION_TEMPLATE`]: `None` when it does not set it.
pub fn template_annotation(spec: &Spec) -> Result<Option<bool>, PlanError> {
    parse_bool(spec, ANNOTATION_TEMPLATE)
}

/// Number of CPUs in a cpuset list such as "0-3,6".
pub fn cpuset_count(list: &str) -> Option<u64> {
    let mut n = 0u64;
    for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (u64, u64) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
                // Checked: "0-18446744073709551615" is a list too.
                n = n.checked_add(b.checked_sub(a)?.checked_add(1)?)?;
            }
            None => {
                part.parse::<u64>().ok()?;
                n = n.checked_add(1)?;
            }
        }
    }
    (n > 0).then_some(n)
}

/// Sizes the VM from the bundle: annotations first, then the resources
/// (memory limit plus overhead; CPU quota/period rounded up, or the
/// cpuset's size), then the defaults. `host_cpus` caps derived vCPU
/// counts; an annotation asking for more is an error.
pub fn size(spec: &Spec, host_cpus: u64) -> Result<VmSize, PlanError> {
    let res = spec.linux().as_ref().and_then(|l| l.resources().as_ref());
    let memory_mib = match parse_number(spec, ANNOTATION_MEMORY, None)? {
        Some(m) if m < MIN_MEMORY_MIB => {
            return Err(PlanError::Annotation {
                key: ANNOTATION_MEMORY,
                value: m.to_string(),
                problem: format!("a guest needs at least {MIN_MEMORY_MIB} MiB"),
            })
        }
        Some(m) if m > MAX_MEMORY_MIB => {
            return Err(PlanError::Annotation {
                key: ANNOTATION_MEMORY,
                value: m.to_string(),
                problem: format!("a guest can have at most {MAX_MEMORY_MIB} MiB"),
            })
        }
        Some(m) => m,
        None => {
            // The container's own limit; for a pod's sandbox, the pod's.
            let own = res.and_then(|r| r.memory().as_ref()).and_then(|m| m.limit()).filter(|l| *l > 0);
            let (what, limit) = match own {
                Some(l) => ("linux.resources.memory.limit", Some(l)),
                None => (ANNOTATION_SANDBOX_MEMORY, pod_number(spec, ANNOTATION_SANDBOX_MEMORY)?),
            };
            match limit {
                Some(limit) => {
                    let mib = (limit as u64).div_ceil(1 << 20) + MEMORY_OVERHEAD_MIB;
                    if mib > MAX_MEMORY_MIB {
                        return Err(PlanError::Unsupported(format!(
                            "{what} {limit} needs a guest of {mib} MiB, more than the {MAX_MEMORY_MIB} MiB a VM \
                             can have: set a smaller limit or the {ANNOTATION_MEMORY} annotation"
                        )));
                    }
                    mib
                }
                None => DEFAULT_MEMORY_MIB,
            }
        }
    };
    let vcpus = match parse_number(spec, ANNOTATION_CPUS, Some(host_cpus.min(254)))? {
        Some(n) => n,
        None => {
            let cpu = res.and_then(|r| r.cpu().as_ref());
            let quota = cpu.and_then(|c| c.quota()).filter(|q| *q > 0);
            let period = cpu.and_then(|c| c.period()).filter(|p| *p > 0).unwrap_or(100_000);
            let from_quota = match quota {
                Some(q) => Some((q as u64).div_ceil(period)),
                // A pod's sandbox: the pod's quota, as the CRI annotates it.
                None => pod_number(spec, ANNOTATION_SANDBOX_CPU_QUOTA)?.map(|q| {
                    let period = pod_number(spec, ANNOTATION_SANDBOX_CPU_PERIOD).ok().flatten().unwrap_or(100_000);
                    (q as u64).div_ceil(period.max(1) as u64)
                }),
            };
            let from_set = cpu.and_then(|c| c.cpus().as_deref()).and_then(cpuset_count);
            from_quota.or(from_set).unwrap_or(u64::from(DEFAULT_VCPUS)).clamp(1, host_cpus.clamp(1, 254))
        }
    };
    let kernel = annotation(spec, ANNOTATION_KERNEL).map(PathBuf::from);
    if let Some(k) = &kernel {
        if !k.is_file() {
            return Err(PlanError::Annotation {
                key: ANNOTATION_KERNEL,
                value: k.display().to_string(),
                problem: "no such kernel file: give the path of a bzImage or ELF vmlinux".into(),
            });
        }
    }
    let boot_timeout =
        parse_number(spec, ANNOTATION_BOOT_TIMEOUT, None)?.map(Duration::from_secs).unwrap_or(DEFAULT_BOOT_TIMEOUT);
    let free_page_reporting = parse_bool(spec, ANNOTATION_FREE_PAGE_REPORTING)?.unwrap_or(true);
    Ok(VmSize {
        memory_mib,
        vcpus: vcpus as u8,
        kernel,
        kernel_args: annotation(spec, ANNOTATION_KERNEL_ARGS).map(str::to_string),
        boot_timeout,
        free_page_reporting,
    })
}

/// One host path the guest sees through the share: `<share>/<name>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShareEntry {
    pub name: String,
    pub source: PathBuf,
    pub read_only: bool,
    /// rbind: submounts of the source come along.
    pub recursive: bool,
}

/// What the VM gets: the entries of its share, its disks and the guest's
/// config.json.
#[derive(Debug, Clone, PartialEq)]
pub struct GuestPlan {
    pub entries: Vec<ShareEntry>,
    pub disks: Vec<DiskEntry>,
    pub config: Value,
}

fn is_bind(m: &oci_spec::runtime::Mount) -> bool {
    m.typ().as_deref() == Some("bind")
        || m.options().as_ref().is_some_and(|o| o.iter().any(|x| x == "bind" || x == "rbind"))
}

/// Makes, on the host, the mount points a read-only root lacks. The guest
/// cannot: its view of the rootfs is the share, read-only when
/// `root.readonly` is, so a mount on a missing directory fails with EROFS.
/// runc makes them in the rootfs before it remounts the root read-only,
/// and images need not have them: Kubernetes' pause image is one file,
/// and the CRI makes the sandbox's root read-only. Only destinations in
/// the root itself: one below an earlier mount (/dev/pts below /dev)
/// lives in that mount, which the guest makes. A bind of a file gets an
/// empty file, anything else a directory; every path is resolved inside
/// the rootfs, so a symlink in the image cannot send one elsewhere.
pub fn make_mount_points(spec: &Spec, bundle_dir: &Path, rootfs: &Path) -> Result<(), PlanError> {
    let Some(mounts) = spec.mounts() else { return Ok(()) };
    let root = crate::linux::mounts::Root::open(rootfs).map_err(|errno| PlanError::MountPoint {
        index: 0,
        destination: "/".into(),
        errno,
    })?;
    for (i, m) in mounts.iter().enumerate() {
        let dest = m.destination();
        let in_earlier = mounts[..i].iter().any(|e| {
            let d = e.destination();
            d.components().count() > 1 && d != dest && dest.starts_with(d)
        });
        if in_earlier || crate::linux::mounts::clean_relative(dest).as_os_str().is_empty() {
            continue;
        }
        let source = m.source().as_ref().map(|s| if s.is_absolute() { s.clone() } else { bundle_dir.join(s) });
        let file = is_bind(m) && source.is_some_and(|s| std::fs::metadata(s).is_ok_and(|md| !md.is_dir()));
        let made = if file { root.create_file(dest, 0o644) } else { root.mkdir_all(dest, 0o755) };
        made.map_err(|errno| PlanError::MountPoint { index: i, destination: dest.display().to_string(), errno })?;
    }
    Ok(())
}

/// The guest's view of the bundle. The rootfs and every bind-mount source
/// become entries of the share (`rootfs`, `m<index>`); the guest config
/// points at them under [`GUEST_SHARE_DIR`]. Mounts of images and block
/// devices, and the block devices of `linux.devices`, become disks
/// ([`disks::plan`]). Host-only parts go: the
/// poststart and poststop hooks (the host runs them, as it runs prestart
/// and createRuntime when the guest hands them over), and the path of the
/// network namespace (the VMM lives in it; the guest gets a namespace of
/// its own, made by the agent when the VM has interfaces:
/// [`guest_network_namespace`]).
/// Joining any other existing namespace cannot work across the VM
/// boundary and is refused.
pub fn guest_plan(
    spec: &Spec,
    bundle_dir: &Path,
    rootfs: &Path,
    cgroups_path: Option<&Path>,
    window: Option<(u16, u16)>,
) -> Result<GuestPlan, PlanError> {
    let share = Path::new(GUEST_SHARE_DIR).join(SHARE_TAG);
    let read_only_root = spec.root().as_ref().and_then(|r| r.readonly()).unwrap_or(false);
    let mut entries = vec![ShareEntry {
        name: "rootfs".into(),
        source: rootfs.to_path_buf(),
        read_only: read_only_root,
        recursive: true,
    }];
    let mut config = serde_json::to_value(spec).map_err(|e| PlanError::Unsupported(e.to_string()))?;
    config["root"]["path"] = json!(share.join("rootfs"));

    if let Some(mounts) = spec.mounts() {
        for (i, m) in mounts.iter().enumerate() {
            if !is_bind(m) {
                continue;
            }
            let Some(src) = m.source() else { continue };
            let source = if src.is_absolute() { src.clone() } else { bundle_dir.join(src) };
            if std::fs::symlink_metadata(&source).is_err() {
                return Err(PlanError::MissingSource {
                    index: i,
                    destination: m.destination().display().to_string(),
                    source_path: source,
                });
            }
            let opts = m.options().clone().unwrap_or_default();
            let name = entry_name(i, &source);
            config["mounts"][i]["source"] = json!(share.join(&name));
            entries.push(ShareEntry {
                name,
                source,
                read_only: opts.iter().any(|o| o == "ro"),
                recursive: opts.iter().any(|o| o == "rbind"),
            });
        }
    }

    let disks = disks::plan(spec, bundle_dir, &mut config)?;
    if disks.iter().any(|d| d.guest.rootfs.is_some()) {
        // The root comes on a disk: the bundle's rootfs directory is not
        // shared.
        entries.retain(|e| e.name != "rootfs");
    }

    if let Some(hooks) = config.get_mut("hooks").and_then(Value::as_object_mut) {
        hooks.remove("poststart");
        hooks.remove("poststop");
    }
    if let Some(nss) = spec.linux().as_ref().and_then(|l| l.namespaces().as_ref()) {
        for (i, ns) in nss.iter().enumerate() {
            if ns.path().is_none() {
                continue;
            }
            if ns.typ() == LinuxNamespaceType::Network {
                // The guest gets a network namespace of its own, but the
                // path must still name one, as it must for a container.
                if let Some(p) = ns.path() {
                    check_network_namespace(p)?;
                }
                if let Some(n) = config["linux"]["namespaces"][i].as_object_mut() {
                    n.remove("path");
                }
            } else {
                return Err(PlanError::Unsupported(format!(
                    "linux.namespaces asks to join the existing {:?} namespace {}: in VM isolation the \
                     container runs in its own kernel and cannot join host namespaces; drop the path \
                     (a new namespace) or use --isolation container",
                    ns.typ(),
                    ns.path().as_ref().map(|p| p.display().to_string()).unwrap_or_default()
                )));
            }
        }
    }
    if let Some(p) = cgroups_path {
        config["linux"]["cgroupsPath"] = json!(p);
    }
    if let (Some((rows, cols)), Some(process)) = (window, config.get_mut("process").and_then(Value::as_object_mut)) {
        if !process.contains_key("consoleSize") {
            process.insert("consoleSize".into(), json!({"height": rows, "width": cols}));
        }
    }
    Ok(GuestPlan { entries, disks, config })
}

/// The share entry of bind mount `index`: `m<index>/<the source's name>`,
/// so that in the guest the mount's root (`/proc/self/mountinfo`) ends in
/// the source's own name, as it does in container isolation (`/etc` is
/// seen as `.../etc`, not as `m3`); `m<index>` alone when the source has
/// no name (`/`).
fn entry_name(index: usize, source: &Path) -> String {
    match source.file_name().and_then(|n| n.to_str()) {
        Some(n) => format!("m{index}/{n}"),
        None => format!("m{index}"),
    }
}

/// The host cgroup of the VMM: the bundle's CPU settings (they limit the
/// vCPU threads) and, when the bundle limits memory, room for the guest's
/// RAM and the VMM itself. Every device is allowed: the VMM needs /dev/kvm
/// and friends, and the bundle's device rules apply inside the guest.
pub fn host_resources(spec: &Spec, size: &VmSize) -> Value {
    let res = spec.linux().as_ref().and_then(|l| l.resources().as_ref());
    let mut out = json!({"devices": [{"allow": true, "access": "rwm"}]});
    if let Some(cpu) = res.and_then(|r| r.cpu().as_ref()) {
        out["cpu"] = serde_json::to_value(cpu).unwrap_or(Value::Null);
    }
    if res.and_then(|r| r.memory().as_ref()).and_then(|m| m.limit()).is_some_and(|l| l > 0) {
        out["memory"] = json!({"limit": mib_to_bytes(host_limit_mib(size.memory_mib, 0))});
    }
    out
}

/// The memory limit of the VMM's host cgroup when the balloon has taken
/// `target_mib` of a guest of `memory_mib` back: what the VM may still
/// hold, plus the VMM itself. Saturating: a VmSize built by hand may be
/// larger than [`size`] allows.
pub fn host_limit_mib(memory_mib: u64, target_mib: u64) -> u64 {
    memory_mib.saturating_sub(target_mib).saturating_add(VMM_OVERHEAD_MIB)
}

/// A size in MiB as the byte count a cgroup limit takes, capped at
/// `i64::MAX` (the spec's type).
pub fn mib_to_bytes(mib: u64) -> i64 {
    i64::try_from(mib.saturating_mul(1 << 20)).unwrap_or(i64::MAX)
}

/// The most a memory limit of the workload can use of a guest of
/// `memory_mib`: the rest is the overhead [`size`] adds at boot. A larger
/// limit is kept by the guest's cgroup, but RAM does not grow past the boot
/// size while the VM runs (no memory hotplug).
pub fn workload_room_mib(memory_mib: u64) -> u64 {
    memory_mib.saturating_sub(MEMORY_OVERHEAD_MIB)
}

/// The balloon target that leaves a guest of `memory_mib` with what a new
/// memory limit of `limit` bytes needs (the limit plus the overhead
/// [`size`] adds at boot): guest RAM cannot grow while the VM runs, so a
/// limit at or above the boot size, or none, takes nothing back.
pub fn balloon_target_mib(memory_mib: u64, limit: Option<i64>) -> u64 {
    match limit {
        Some(l) if l > 0 => workload_room_mib(memory_mib).saturating_sub((l as u64).div_ceil(1 << 20)),
        _ => 0,
    }
}

/// Points the guest config's network namespace at the one the agent
/// makes for container `id` and moves the VM's interfaces into
/// (`configure_network`), so the container has a namespace of its own
/// with them in it, as it would with runc.
pub fn guest_network_namespace(config: &mut Value, id: &str) {
    if let Some(nss) = config["linux"]["namespaces"].as_array_mut() {
        for n in nss.iter_mut().filter(|n| n["type"] == "network") {
            n["path"] = json!(format!("{}/{id}", crate::agent::container::GUEST_NETNS_DIR));
        }
    }
}

/// [`host_resources`] as oci-spec's type.
pub fn host_resources_typed(spec: &Spec, size: &VmSize) -> LinuxResources {
    serde_json::from_value(host_resources(spec, size)).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_only_root_gets_its_missing_mount_points_inside_the_rootfs() {
        let d = tempfile::tempdir().unwrap();
        let rootfs = d.path().join("rootfs");
        let outside = d.path().join("outside");
        std::fs::create_dir_all(&rootfs).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(rootfs.join("pause"), b"").unwrap();
        std::fs::write(d.path().join("hosts"), b"").unwrap();
        std::fs::create_dir(d.path().join("vol")).unwrap();
        std::os::unix::fs::symlink(&outside, rootfs.join("evil")).unwrap();
        let s = spec(json!({"root": {"path": "rootfs", "readonly": true}, "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs"},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts"},
            {"destination": "/etc/hosts", "type": "bind", "source": "hosts", "options": ["rbind", "ro"]},
            {"destination": "/data/vol", "type": "bind", "source": d.path().join("vol"), "options": ["rbind"]},
            {"destination": "/evil/x", "type": "tmpfs", "source": "tmpfs"},
        ]}));
        make_mount_points(&s, d.path(), &rootfs).unwrap();
        assert!(rootfs.join("proc").is_dir() && rootfs.join("dev").is_dir() && rootfs.join("data/vol").is_dir());
        assert!(!rootfs.join("dev/pts").exists(), "below /dev: the guest's tmpfs holds it");
        assert!(rootfs.join("etc/hosts").is_file(), "a file bind gets a file");
        assert!(!outside.join("x").exists(), "the image's symlink stays inside the rootfs");
        assert!(rootfs.join(outside.strip_prefix("/").unwrap()).join("x").is_dir(), "the link's target, in the rootfs");
        // What exists stays; a second run changes nothing.
        make_mount_points(&s, d.path(), &rootfs).unwrap();
    }

    fn spec(json: Value) -> Spec {
        let mut base = json!({"ociVersion": "1.0.2", "root": {"path": "rootfs"}, "process": {"args": ["true"], "cwd": "/", "user": {"uid": 0, "gid": 0}}});
        if let (Some(b), Some(j)) = (base.as_object_mut(), json.as_object()) {
            for (k, v) in j {
                b.insert(k.clone(), v.clone());
            }
        }
        serde_json::from_value(base).unwrap()
    }

    #[test]
    fn a_pods_vm_is_sized_from_the_pods_limits() {
        let pod = |m: &str, q: &str, p: &str| {
            spec(json!({"annotations": {
                ANNOTATION_SANDBOX_MEMORY: m, ANNOTATION_SANDBOX_CPU_QUOTA: q, ANNOTATION_SANDBOX_CPU_PERIOD: p
            }}))
        };
        let s = size(&pod("268435456", "250000", "100000"), 8).unwrap();
        assert_eq!((s.memory_mib, s.vcpus), (256 + MEMORY_OVERHEAD_MIB, 3));
        // No limits (the CRI writes 0, or -1 for the quota): the defaults.
        let s = size(&pod("0", "-1", "100000"), 8).unwrap();
        assert_eq!((s.memory_mib, s.vcpus), (DEFAULT_MEMORY_MIB, DEFAULT_VCPUS));
        // More CPUs than the host has: the host's.
        assert_eq!(size(&pod("0", "1600000", "100000"), 4).unwrap().vcpus, 4);
        // The container's own limit and amphi's annotations come first.
        let mut own = pod("268435456", "250000", "100000");
        own.set_annotations(Some(
            [
                (ANNOTATION_SANDBOX_MEMORY.to_string(), "268435456".to_string()),
                (ANNOTATION_CPUS.to_string(), "1".into()),
            ]
            .into(),
        ));
        assert_eq!(size(&own, 8).unwrap().vcpus, 1);
        let e = size(&pod("lots", "0", "0"), 8).unwrap_err();
        assert!(e.to_string().contains(ANNOTATION_SANDBOX_MEMORY), "{e}");
    }

    #[test]
    fn a_lower_memory_limit_becomes_a_balloon_target() {
        // Booted for 256 MiB: 384 MiB of RAM.
        let ram = 256 + MEMORY_OVERHEAD_MIB;
        assert_eq!(balloon_target_mib(ram, Some(64 << 20)), 192);
        assert_eq!(balloon_target_mib(ram, Some((64 << 20) + 1)), 191);
        assert_eq!(balloon_target_mib(ram, Some(256 << 20)), 0);
        assert_eq!(balloon_target_mib(ram, Some(1 << 40)), 0);
        assert_eq!(balloon_target_mib(ram, Some(-1)), 0, "unlimited");
        assert_eq!(balloon_target_mib(ram, None), 0);
    }

    #[test]
    fn the_host_limit_follows_what_the_balloon_leaves() {
        // 384 MiB of RAM, 192 of them in the balloon: 192 + 64 MiB.
        assert_eq!(host_limit_mib(384, 192), 256);
        assert_eq!(host_limit_mib(384, 0), 384 + VMM_OVERHEAD_MIB);
        assert_eq!(host_limit_mib(384, 1000), VMM_OVERHEAD_MIB, "a target past the RAM leaves the VMM");
        assert_eq!(host_limit_mib(u64::MAX, 0), u64::MAX);
        assert_eq!(mib_to_bytes(256), 256 << 20);
        assert_eq!(mib_to_bytes(u64::MAX), i64::MAX);
        assert_eq!(workload_room_mib(384), 256);
        assert_eq!(workload_room_mib(100), 0);
    }

    #[test]
    fn defaults_without_limits() {
        let s = size(&spec(json!({})), 8).unwrap();
        assert_eq!((s.memory_mib, s.vcpus), (DEFAULT_MEMORY_MIB, DEFAULT_VCPUS));
        assert_eq!(s.boot_timeout, DEFAULT_BOOT_TIMEOUT);
    }

    #[test]
    fn memory_limit_plus_overhead_and_cpu_quota_rounded_up() {
        let s = spec(json!({"linux": {"resources": {
            "memory": {"limit": 100 * 1024 * 1024 + 1},
            "cpu": {"quota": 150000, "period": 100000}}}}));
        let z = size(&s, 8).unwrap();
        assert_eq!(z.memory_mib, 101 + MEMORY_OVERHEAD_MIB);
        assert_eq!(z.vcpus, 2);
        // Derived counts are capped by the host.
        assert_eq!(size(&s, 1).unwrap().vcpus, 1);
    }

    #[test]
    fn cpusets_count() {
        assert_eq!(cpuset_count("0-3,6"), Some(5));
        assert_eq!(cpuset_count("2"), Some(1));
        assert_eq!(cpuset_count(""), None);
        assert_eq!(cpuset_count("3-1"), None);
        // Ranges whose size does not fit a u64 count as no cpuset (found
        // while writing the spec_config fuzz target: they overflowed).
        assert_eq!(cpuset_count("0-18446744073709551615"), None);
        assert_eq!(cpuset_count("0-9223372036854775807,0-9223372036854775807"), None);
        let s = spec(json!({"linux": {"resources": {"cpu": {"cpus": "0-1"}}}}));
        assert_eq!(size(&s, 8).unwrap().vcpus, 2);
    }

    #[test]
    fn annotations_override_and_bad_values_are_named() {
        let s = spec(json!({"annotations": {ANNOTATION_MEMORY: "1024", ANNOTATION_CPUS: "2"}}));
        let z = size(&s, 4).unwrap();
        assert_eq!((z.memory_mib, z.vcpus), (1024, 2));
        assert!(z.free_page_reporting, "on unless turned off");
        let off = spec(json!({"annotations": {ANNOTATION_FREE_PAGE_REPORTING: "false"}}));
        assert!(!size(&off, 4).unwrap().free_page_reporting);
        for (k, v, needle) in [
            (ANNOTATION_FREE_PAGE_REPORTING, "no", "true or false"),
            (ANNOTATION_MEMORY, "0", "at least 1"),
            (ANNOTATION_MEMORY, "64", "at least 128"),
            (ANNOTATION_MEMORY, "lots", "whole number"),
            (ANNOTATION_MEMORY, "18446744073709551615", "at most 1048576"),
            (ANNOTATION_CPUS, "9", "this host has 4"),
            (ANNOTATION_KERNEL, "/no/such/vmlinuz", "no such kernel"),
        ] {
            let e = size(&spec(json!({"annotations": {k: v}})), 4).unwrap_err().to_string();
            assert!(e.contains(k) && e.contains(needle), "{e}");
        }
    }

    #[test]
    fn the_template_annotation_is_true_false_or_absent() {
        assert_eq!(template_annotation(&spec(json!({}))), Ok(None));
        assert_eq!(template_annotation(&spec(json!({"annotations": {ANNOTATION_TEMPLATE: "false"}}))), Ok(Some(false)));
        assert_eq!(template_annotation(&spec(json!({"annotations": {ANNOTATION_TEMPLATE: " true "}}))), Ok(Some(true)));
        for v in ["no", "0", "", "False"] {
            let e =
                template_annotation(&spec(json!({"annotations": {ANNOTATION_TEMPLATE: v}}))).unwrap_err().to_string();
            assert!(e.contains("run.amphi.vm.template") && e.contains("use true or false"), "{e}");
        }
    }

    /// A memory limit meaning "unlimited" written as a huge number: a
    /// clear error, not a guest size whose byte count overflows (the VMM's
    /// host cgroup limit came out negative).
    #[test]
    fn huge_memory_limits_are_refused_not_wrapped() {
        let s = spec(json!({"linux": {"resources": {"memory": {"limit": i64::MAX}}}}));
        let e = size(&s, 4).unwrap_err().to_string();
        assert!(e.contains("linux.resources.memory.limit") && e.contains("1048576 MiB"), "{e}");
        let s = spec(json!({"linux": {"resources": {"memory": {"limit": 1i64 << 30}}}}));
        let z = size(&s, 4).unwrap();
        assert_eq!(z.memory_mib, 1024 + MEMORY_OVERHEAD_MIB);
        let huge = VmSize { memory_mib: u64::MAX, ..z };
        assert_eq!(host_resources(&s, &huge)["memory"]["limit"], i64::MAX);
    }

    #[test]
    fn the_guest_config_points_into_the_share() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("vol")).unwrap();
        std::fs::write(d.path().join("hosts"), "").unwrap();
        let s = spec(json!({
            "root": {"path": "rootfs", "readonly": true},
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/data", "type": "bind", "source": d.path().join("vol"), "options": ["rbind", "ro"]},
                {"destination": "/etc/hosts", "source": "hosts", "options": ["bind"]}
            ],
            "hooks": {"poststart": [{"path": "/bin/true"}], "prestart": [{"path": "/bin/true"}]},
            "linux": {"namespaces": [{"type": "network", "path": "/proc/self/ns/net"}, {"type": "pid"}]}
        }));
        let p = guest_plan(&s, d.path(), &d.path().join("rootfs"), Some(Path::new("/c/x")), None).unwrap();
        assert_eq!(p.config["root"]["path"], "/run/amphi/fs/amphi/rootfs");
        assert_eq!(p.config["mounts"][0]["source"], "proc");
        assert_eq!(p.config["mounts"][1]["source"], "/run/amphi/fs/amphi/m1/vol");
        assert_eq!(p.config["mounts"][2]["source"], "/run/amphi/fs/amphi/m2/hosts");
        assert!(p.config["hooks"].get("poststart").is_none());
        assert!(p.config["hooks"].get("prestart").is_some());
        assert!(p.config["linux"]["namespaces"][0].get("path").is_none());
        assert_eq!(p.config["linux"]["cgroupsPath"], "/c/x");
        assert_eq!(p.entries.len(), 3);
        assert!(p.entries[0].read_only, "root.readonly holds on the host side too");
        assert_eq!(
            p.entries[1],
            ShareEntry { name: "m1/vol".into(), source: d.path().join("vol"), read_only: true, recursive: true }
        );
        assert_eq!(p.entries[2].source, d.path().join("hosts"));
    }

    #[test]
    fn share_entries_keep_the_source_name() {
        assert_eq!(entry_name(3, Path::new("/etc")), "m3/etc");
        assert_eq!(entry_name(0, Path::new("/var/lib/data/")), "m0/data");
        assert_eq!(entry_name(7, Path::new("/")), "m7");
        // Two mounts of sources with the same name stay apart.
        assert_ne!(entry_name(1, Path::new("/a/etc")), entry_name(2, Path::new("/b/etc")));
    }

    #[test]
    fn missing_sources_and_foreign_namespaces_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let s = spec(json!({"mounts": [{"destination": "/x", "type": "bind", "source": "/no/such/dir"}]}));
        let e = guest_plan(&s, d.path(), d.path(), None, None).unwrap_err();
        assert!(e.to_string().contains("/no/such/dir"), "{e}");
        let s = spec(json!({"linux": {"namespaces": [{"type": "ipc", "path": "/proc/1/ns/ipc"}]}}));
        let e = guest_plan(&s, d.path(), d.path(), None, None).unwrap_err();
        assert!(e.to_string().contains("cannot join host namespaces"), "{e}");
        // A network path is not joined, but it must name a network namespace.
        let file = d.path().join("file");
        std::fs::write(&file, "").unwrap();
        let file = file.display().to_string();
        for (path, needle) in [
            ("/proc/self/ns/pid", "another type"),
            (file.as_str(), "not a namespace"),
            ("/no/such/netns", "cannot be opened"),
        ] {
            let s = spec(json!({"linux": {"namespaces": [{"type": "network", "path": path}]}}));
            let e = guest_plan(&s, d.path(), d.path(), None, None).unwrap_err();
            assert!(matches!(e, PlanError::NotNetworkNamespace { .. }), "{e}");
            assert!(e.to_string().contains(needle) && e.to_string().contains(path), "{e}");
        }
    }

    #[test]
    fn the_host_cgroup_gets_cpu_and_room_for_the_guest() {
        let s = spec(json!({"linux": {"resources": {"memory": {"limit": 256 << 20}, "cpu": {"shares": 512}}}}));
        let z = size(&s, 4).unwrap();
        let r = host_resources(&s, &z);
        assert_eq!(r["memory"]["limit"], ((z.memory_mib + VMM_OVERHEAD_MIB) << 20) as i64);
        assert_eq!(r["cpu"]["shares"], 512);
        let typed = host_resources_typed(&s, &z);
        assert!(typed.devices().as_ref().is_some_and(|d| d[0].allow()));
        assert!(host_resources(&spec(json!({})), &z).get("memory").is_none());
    }
}
