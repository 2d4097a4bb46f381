//! The container's disks in the guest: the host attached each as a
//! virtio-blk device with an ID of its choosing (its serial), but only the
//! guest kernel knows which `/dev/vdX` that became. Before the runtime
//! sees the config, each disk is found by its serial
//! (`/sys/block/vd*/serial`) and the config gets the guest's view: mount
//! sources become `/dev/vdX`, `linux.devices` entries and the device rules
//! that named the host's numbers get vdX's major and minor.
//!
//! A disk that holds the container's root filesystem
//! (`run.amphi.vm.rootfs`) is mounted by the agent itself at `root.path`
//! ([`RootMount`]) before the runtime runs.
//!
//! The runtime makes the mounts with its normal code, but from inside the
//! container's cgroup, whose device rules already apply (mounting a block
//! device opens it): so each mounted disk also gets an allow rule, read
//! only for a read-only disk.

use std::path::Path;
use std::time::{Duration, Instant};

use amphi::agent::container::{GuestDisk, GUEST_BLOCK_ROOT};
use amphi::agent::{AgentError, ErrorCode};
use serde_json::{json, Value};

/// How long a disk may take to appear: virtio_blk is loaded at boot, so a
/// disk the host attached is normally there before the first request.
pub const WAIT: Duration = Duration::from_secs(2);
const POLL: Duration = Duration::from_millis(20);

/// A disk as the guest kernel has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// `vda`, `vdb`, ...
    pub name: String,
    pub major: u64,
    pub minor: u64,
}

fn read_trimmed(p: &Path) -> Option<String> {
    let s = std::fs::read_to_string(p).ok()?;
    Some(s.trim_matches(|c: char| c == '\0' || c.is_whitespace()).to_string())
}

/// The virtio disks of `sys_block` and their serials, sorted by name.
fn virtio_disks(sys_block: &Path) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = std::fs::read_dir(sys_block)
        .into_iter()
        .flatten()
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            if !name.starts_with("vd") {
                return None;
            }
            let serial = read_trimmed(&sys_block.join(&name).join("serial")).unwrap_or_default();
            Some((name, serial))
        })
        .collect();
    out.sort();
    out
}

/// Finds the disk whose serial is `serial`, waiting up to `wait` for it.
pub fn find(sys_block: &Path, serial: &str, wait: Duration) -> Result<Found, AgentError> {
    let deadline = Instant::now() + wait;
    loop {
        let disks = virtio_disks(sys_block);
        if let Some((name, _)) = disks.iter().find(|(_, s)| s == serial) {
            let dev = read_trimmed(&sys_block.join(name).join("dev")).unwrap_or_default();
            let parsed = dev.split_once(':').and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)));
            let Some((major, minor)) = parsed else {
                return Err(AgentError::new(
                    ErrorCode::GuestSetupFailed,
                    format!("disk {serial} is {name}, but its device number {dev:?} cannot be read"),
                ));
            };
            return Ok(Found { name: name.clone(), major, minor });
        }
        if Instant::now() >= deadline {
            let seen = if disks.is_empty() {
                "no virtio disks at all (is virtio_blk in the guest image?)".to_string()
            } else {
                disks.iter().map(|(n, s)| format!("{n} ({s:?})")).collect::<Vec<_>>().join(", ")
            };
            return Err(AgentError::new(
                ErrorCode::DiskNotFound,
                format!(
                    "disk {serial} did not appear in the guest within {} ms; the guest has {seen}",
                    wait.as_millis()
                ),
            ));
        }
        std::thread::sleep(POLL);
    }
}

/// Filesystem types the guest kernel mounts from a device
/// (`/proc/filesystems` lines not marked `nodev`).
pub fn device_filesystems(proc_filesystems: &str) -> Vec<String> {
    proc_filesystems
        .lines()
        .filter(|l| !l.starts_with("nodev"))
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect()
}

/// `value[key]` as an array, made one if it was absent.
fn array_at<'a>(value: &'a mut Value, key: &str) -> Result<&'a mut Vec<Value>, AgentError> {
    if !value.is_object() {
        *value = json!({});
    }
    let slot = value.as_object_mut().map(|o| o.entry(key).or_insert_with(|| json!([])));
    match slot {
        Some(Value::Array(a)) => Ok(a),
        _ => Err(AgentError::new(ErrorCode::InvalidConfig, format!("{key} is not a list"))),
    }
}

fn entry<'a>(config: &'a mut Value, what: &str, list: &[&str], index: usize) -> Result<&'a mut Value, AgentError> {
    let mut v = config;
    for k in list {
        v = v.get_mut(*k).ok_or_else(|| missing(what, index))?;
    }
    v.get_mut(index).filter(|e| e.is_object()).ok_or_else(|| missing(what, index))
}

fn missing(what: &str, index: usize) -> AgentError {
    AgentError::new(ErrorCode::InvalidConfig, format!("the host named {what}[{index}] for a disk, the config has none"))
}

/// Gives `config` the guest's view of `disks`, which appear in
/// `sys_block` (`/sys/block`) within `wait`; `proc_filesystems` is what
/// the guest kernel can mount.
pub fn apply(
    config: &mut Value,
    disks: &[GuestDisk],
    sys_block: &Path,
    proc_filesystems: &str,
    wait: Duration,
) -> Result<Option<RootMount>, AgentError> {
    let types = device_filesystems(proc_filesystems);
    let mut root = None;
    for disk in disks {
        let found = find(sys_block, &disk.serial, wait)?;
        if let Some(fstype) = &disk.rootfs {
            if !types.contains(fstype) {
                return Err(AgentError::new(
                    ErrorCode::Unsupported,
                    format!(
                        "the root filesystem is {fstype:?}, which the guest kernel cannot mount (it can: {}): make \
                         the image with one of those, or use a guest kernel that has {fstype:?} built in \
                         (run.amphi.vm.kernel)",
                        types.join(" ")
                    ),
                ));
            }
            let path = config["root"]["path"].as_str().unwrap_or(GUEST_BLOCK_ROOT).into();
            root = Some(RootMount {
                device: Path::new("/dev").join(&found.name),
                path,
                fstype: fstype.clone(),
                read_only: disk.read_only,
            });
        }
        let numbers = |v: &mut Value| {
            v["major"] = json!(found.major);
            v["minor"] = json!(found.minor);
        };
        for &i in &disk.mounts {
            let m = entry(config, "mounts", &["mounts"], i)?;
            let typ = m.get("type").and_then(Value::as_str).unwrap_or_default().to_string();
            if !types.contains(&typ) {
                let dest = m.get("destination").and_then(Value::as_str).unwrap_or_default();
                return Err(AgentError::new(
                    ErrorCode::Unsupported,
                    format!(
                        "mount #{i} ({dest}): the guest kernel cannot mount {typ:?} filesystems (it can: {}): use \
                         one of those in the image, or a guest kernel that has {typ:?} built in \
                         (run.amphi.vm.kernel)",
                        types.join(" ")
                    ),
                ));
            }
            m["source"] = json!(format!("/dev/{}", found.name));
        }
        for &i in &disk.devices {
            numbers(entry(config, "linux.devices", &["linux", "devices"], i)?);
        }
        for &i in &disk.rules {
            numbers(entry(config, "linux.resources.devices", &["linux", "resources", "devices"], i)?);
        }
        if !disk.mounts.is_empty() {
            let linux = config.get_mut("linux").filter(|l| l.is_object());
            let linux = match linux {
                Some(l) => l,
                None => {
                    config["linux"] = json!({});
                    &mut config["linux"]
                }
            };
            if linux.get("resources").is_none_or(Value::is_null) {
                linux["resources"] = json!({});
            }
            let access = if disk.read_only { "r" } else { "rw" };
            array_at(&mut linux["resources"], "devices")?.push(json!({
                "allow": true, "type": "b", "major": found.major, "minor": found.minor, "access": access
            }));
        }
    }
    Ok(root)
}

/// A container's root filesystem on a disk, to mount before the runtime
/// makes the container in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootMount {
    pub device: std::path::PathBuf,
    pub path: std::path::PathBuf,
    pub fstype: String,
    pub read_only: bool,
}

impl RootMount {
    /// Mounts it (read-only when the host attached the disk so; the
    /// runtime makes `root.readonly` hold on top).
    pub fn mount(&self) -> Result<(), AgentError> {
        let fail = |what: String| AgentError::new(ErrorCode::ContainerFailed, what);
        std::fs::create_dir_all(&self.path).map_err(|e| fail(format!("mkdir {}: {e}", self.path.display())))?;
        let mut flags = nix::mount::MsFlags::empty();
        if self.read_only {
            flags |= nix::mount::MsFlags::MS_RDONLY;
        }
        nix::mount::mount(Some(&self.device), &self.path, Some(self.fstype.as_str()), flags, None::<&str>).map_err(
            |e| {
                fail(format!(
                    "cannot mount the root filesystem ({}, {}) on {}: {e}: check that the image holds a {} \
                     filesystem",
                    self.device.display(),
                    self.fstype,
                    self.path.display(),
                    self.fstype
                ))
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    /// A fake /sys/block, removed on drop.
    struct SysBlock(PathBuf);

    impl SysBlock {
        fn new(tag: &str) -> SysBlock {
            let d = std::env::temp_dir().join(format!("amphi-agent-disks-{}-{tag}", std::process::id()));
            let _ = std::fs::remove_dir_all(&d);
            std::fs::create_dir_all(&d).unwrap();
            SysBlock(d)
        }

        fn add(&self, name: &str, serial: &str, dev: &str) {
            let d = self.0.join(name);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("serial"), serial).unwrap();
            std::fs::write(d.join("dev"), format!("{dev}\n")).unwrap();
        }
    }

    impl Drop for SysBlock {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    const FILESYSTEMS: &str = "nodev\tsysfs\nnodev\ttmpfs\n\text3\n\text2\n\text4\nnodev\tvirtiofs\n";

    #[test]
    fn disks_are_found_by_serial_and_the_config_gets_the_guest_view() {
        let sys = SysBlock::new("found");
        sys.add("vda", "amphi-disk-1", "254:0");
        sys.add("vdb", "amphi-disk-0\0\0", "254:16");
        sys.add("loop0", "amphi-disk-0", "7:0");
        let mut config = json!({
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/data", "type": "ext4", "source": "amphi-disk-0", "options": ["rw"]},
                {"destination": "/ro", "type": "ext4", "source": "amphi-disk-1", "options": ["ro"]}
            ],
            "linux": {
                "devices": [{"path": "/dev/xvdb", "type": "b", "major": 202, "minor": 16}],
                "resources": {"devices": [{"allow": false, "access": "rwm"}, {"allow": true, "type": "b", "major": 202, "minor": 16, "access": "r"}]}
            }
        });
        let disks = vec![
            GuestDisk { serial: "amphi-disk-0".into(), mounts: vec![1], ..Default::default() },
            GuestDisk {
                serial: "amphi-disk-1".into(),
                read_only: true,
                mounts: vec![2],
                devices: vec![0],
                rules: vec![1],
                rootfs: None,
            },
        ];
        apply(&mut config, &disks, &sys.0, FILESYSTEMS, Duration::ZERO).unwrap();
        assert_eq!(config["mounts"][0]["source"], "proc");
        assert_eq!(config["mounts"][1]["source"], "/dev/vdb", "a loop device with the serial is not a virtio disk");
        assert_eq!(config["mounts"][2]["source"], "/dev/vda");
        assert_eq!(config["linux"]["devices"][0], json!({"path": "/dev/xvdb", "type": "b", "major": 254, "minor": 0}));
        let rules = config["linux"]["resources"]["devices"].as_array().unwrap();
        assert_eq!(rules[1], json!({"allow": true, "type": "b", "major": 254, "minor": 0, "access": "r"}));
        // The mounts' own rules, after the spec's: read-write, read-only.
        assert_eq!(rules[2], json!({"allow": true, "type": "b", "major": 254, "minor": 16, "access": "rw"}));
        assert_eq!(rules[3], json!({"allow": true, "type": "b", "major": 254, "minor": 0, "access": "r"}));
        assert_eq!(rules.len(), 4);
    }

    #[test]
    fn a_root_filesystem_disk_is_found_and_left_to_mount() {
        let sys = SysBlock::new("rootfs");
        sys.add("vda", "amphi-disk-0", "254:0");
        let mut config = json!({"root": {"path": GUEST_BLOCK_ROOT}, "mounts": []});
        let rootfs =
            |t: &str| GuestDisk { serial: "amphi-disk-0".into(), rootfs: Some(t.into()), ..Default::default() };
        let root = apply(&mut config, &[rootfs("ext4")], &sys.0, FILESYSTEMS, Duration::ZERO).unwrap();
        assert_eq!(
            root,
            Some(RootMount {
                device: "/dev/vda".into(),
                path: GUEST_BLOCK_ROOT.into(),
                fstype: "ext4".into(),
                read_only: false
            })
        );
        // Not the mounts' device rule: the agent mounts it, outside the
        // container's cgroup.
        assert!(config.get("linux").is_none());
        let e = apply(&mut config, &[rootfs("xfs")], &sys.0, FILESYSTEMS, Duration::ZERO).unwrap_err();
        assert_eq!(e.code, ErrorCode::Unsupported);
        assert!(e.message.contains("the root filesystem is \"xfs\""), "{}", e.message);
    }

    #[test]
    fn a_config_without_linux_gets_the_rule_too() {
        let sys = SysBlock::new("nolinux");
        sys.add("vda", "d", "254:0");
        let mut config = json!({"mounts": [{"destination": "/d", "type": "ext4", "source": "d"}]});
        let disks = vec![GuestDisk { serial: "d".into(), mounts: vec![0], ..Default::default() }];
        apply(&mut config, &disks, &sys.0, FILESYSTEMS, Duration::ZERO).unwrap();
        assert_eq!(config["linux"]["resources"]["devices"][0]["access"], "rw");
    }

    #[test]
    fn a_disk_that_never_appears_is_a_disk_not_found_error_after_the_wait() {
        let sys = SysBlock::new("missing");
        sys.add("vda", "other", "254:0");
        let t = Instant::now();
        let e = find(&sys.0, "amphi-disk-0", Duration::from_millis(100)).unwrap_err();
        assert!(t.elapsed() >= Duration::from_millis(100));
        assert_eq!(e.code, ErrorCode::DiskNotFound);
        assert!(e.message.contains("amphi-disk-0") && e.message.contains("vda (\"other\")"), "{}", e.message);
        let empty = SysBlock::new("empty");
        let e = find(&empty.0, "x", Duration::ZERO).unwrap_err();
        assert!(e.message.contains("no virtio disks at all"), "{}", e.message);
    }

    #[test]
    fn a_disk_that_appears_while_waiting_is_found() {
        let sys = SysBlock::new("late");
        let dir = sys.0.clone();
        let adder = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            std::fs::create_dir_all(dir.join("vdc")).unwrap();
            std::fs::write(dir.join("vdc/dev"), "254:32\n").unwrap();
            std::fs::write(dir.join("vdc/serial"), "late").unwrap();
        });
        let f = find(&sys.0, "late", Duration::from_secs(5)).unwrap();
        adder.join().unwrap();
        assert_eq!(f, Found { name: "vdc".into(), major: 254, minor: 32 });
    }

    #[test]
    fn filesystems_the_guest_kernel_lacks_and_bad_indexes_are_refused() {
        let sys = SysBlock::new("types");
        sys.add("vda", "d", "254:0");
        let mut config = json!({"mounts": [{"destination": "/d", "type": "xfs", "source": "d"}]});
        let disks = vec![GuestDisk { serial: "d".into(), mounts: vec![0], ..Default::default() }];
        let e = apply(&mut config, &disks, &sys.0, FILESYSTEMS, Duration::ZERO).unwrap_err();
        assert_eq!(e.code, ErrorCode::Unsupported);
        assert!(e.message.contains("\"xfs\"") && e.message.contains("ext3 ext2 ext4"), "{}", e.message);
        let disks = vec![GuestDisk { serial: "d".into(), devices: vec![3], ..Default::default() }];
        let e = apply(&mut config, &disks, &sys.0, FILESYSTEMS, Duration::ZERO).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidConfig);
        assert!(e.message.contains("linux.devices[3]"), "{}", e.message);
    }
}
