//! Which parts of a bundle become virtio-blk disks of its VM, decided on
//! the host before anything starts.
//!
//! A mount whose type is a filesystem on a device (not `bind`, not a
//! filesystem the guest makes without one, such as tmpfs or proc) and
//! whose source is a regular file or a block device is served to the guest
//! as a disk; so is each block device of `linux.devices`. The guest cannot
//! be told which `/dev/vdX` its kernel will call a disk, so each disk gets
//! a virtio-blk ID (`amphi-disk-N`) and the guest agent finds it by that
//! ID and fills in the device's path and numbers ([`GuestDisk`]).
//!
//! With the `run.amphi.vm.rootfs` annotation the container's root
//! filesystem is a disk too (an image such as `mkfs.ext4 -d` makes, or a
//! block device), which the agent mounts as the root instead of the
//! share's `rootfs`.
//!
//! Everything the VMM would only find out when it opens the disk (a
//! missing image, a directory, an image another VM holds) is found here
//! instead, so it fails `create` as bad input with the mount named.

use std::collections::HashMap;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use oci_spec::runtime::{LinuxDeviceType, Spec};

use super::plan::annotation;
use crate::agent::container::{GuestDisk, GUEST_BLOCK_ROOT};
use crate::vm::boot::layout::VIRTIO_MMIO_MAX_DEVICES;

/// Filesystems made without a device: a mount of one is never a disk,
/// whatever its source names (`proc`, `tmpfs`, ... are often relative
/// sources that could name a file of the bundle).
const DEVICELESS: &[&str] = &[
    "proc",
    "sysfs",
    "tmpfs",
    "ramfs",
    "devtmpfs",
    "devpts",
    "mqueue",
    "cgroup",
    "cgroup2",
    "securityfs",
    "debugfs",
    "tracefs",
    "configfs",
    "hugetlbfs",
    "bpf",
    "pstore",
    "fusectl",
    "binfmt_misc",
    "efivarfs",
    "autofs",
    "overlay",
    "nfs",
    "nfs4",
    "cifs",
    "smb3",
    "9p",
    "virtiofs",
    "fuse",
];

/// Filesystems that need a device: a mount of one whose source is not a
/// file or a block device is a mistake, reported at `create`.
const ON_A_DEVICE: &[&str] = &[
    "ext2", "ext3", "ext4", "xfs", "btrfs", "vfat", "msdos", "exfat", "ntfs", "ntfs3", "f2fs", "iso9660", "udf",
    "squashfs", "erofs", "jfs", "reiserfs", "hfsplus", "nilfs2", "minix", "auto",
];

/// The container's root filesystem from an image or block device instead
/// of the bundle's rootfs directory, and its type.
pub const ANNOTATION_ROOTFS: &str = "run.amphi.vm.rootfs";
pub const ANNOTATION_ROOTFS_TYPE: &str = "run.amphi.vm.rootfs_type";
pub const DEFAULT_ROOTFS_TYPE: &str = "ext4";

/// Disks a VM can have: every virtio-mmio slot but those of the vsock
/// device and the share.
pub const MAX_DISKS: usize = VIRTIO_MMIO_MAX_DEVICES - 2;

/// The virtio-blk ID of disk `index`.
pub fn serial(index: usize) -> String {
    format!("amphi-disk-{index}")
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DiskPlanError {
    /// `what` names the mount (`mount #2 (/data, type ext4)`) or the
    /// device (`linux.devices[0] (/dev/xvdb, block device 202:16)`).
    #[error("{what}: {problem}")]
    Disk { what: String, problem: String },
    #[error(
        "the bundle needs {count} disks, a VM can have at most {MAX_DISKS}: use fewer image or block device mounts"
    )]
    TooMany { count: usize },
}

/// One disk of the VM: the host file or device and what in the guest
/// config refers to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskEntry {
    /// The image or block device on the host.
    pub source: PathBuf,
    /// Read-only only when every use of it is (a mount with `ro`).
    pub read_only: bool,
    /// What the agent gets: the serial and the config's references.
    pub guest: GuestDisk,
}

/// What identifies one disk, so that two mounts of one image share it
/// (the VMM's lock would refuse the same image attached twice).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Key {
    File { dev: u64, ino: u64 },
    Block { rdev: u64 },
}

fn key_of(meta: &std::fs::Metadata) -> Key {
    if meta.file_type().is_block_device() {
        Key::Block { rdev: meta.rdev() }
    } else {
        Key::File { dev: meta.dev(), ino: meta.ino() }
    }
}

fn is_bind(m: &oci_spec::runtime::Mount) -> bool {
    m.typ().as_deref() == Some("bind")
        || m.options().as_ref().is_some_and(|o| o.iter().any(|x| x == "bind" || x == "rbind"))
}

/// What kind of file `meta` is, for an error.
fn kind(meta: &std::fs::Metadata) -> &'static str {
    let t = meta.file_type();
    if t.is_dir() {
        "a directory"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else {
        "neither a regular file nor a block device"
    }
}

/// Where block device `rdev` is mounted on the host, from the text of a
/// mountinfo file (its third field is the mounted device's `major:minor`).
pub fn mounted_at(mountinfo: &str, major: u64, minor: u64) -> Option<String> {
    let want = format!("{major}:{minor}");
    mountinfo.lines().find_map(|l| {
        let mut f = l.split(' ');
        let dev = f.nth(2)?;
        let point = f.nth(1)?;
        (dev == want).then(|| point.to_string())
    })
}

/// The partitions of block device `major:minor` (`/sys/dev/block/M:m/<part>/dev`).
fn partitions(sys_dev_block: &Path, major: u64, minor: u64) -> Vec<(u64, u64)> {
    let dir = sys_dev_block.join(format!("{major}:{minor}"));
    let Ok(entries) = std::fs::read_dir(&dir) else { return Vec::new() };
    entries
        .filter_map(|e| {
            let p = e.ok()?.path();
            if !p.join("partition").exists() {
                return None;
            }
            let dev = std::fs::read_to_string(p.join("dev")).ok()?;
            let (a, b) = dev.trim().split_once(':')?;
            Some((a.parse().ok()?, b.parse().ok()?))
        })
        .collect()
}

/// A block device (or one of its partitions) mounted on the host must not
/// be written by a guest too: flock does not see a mount.
fn check_not_mounted(rdev: u64) -> Result<(), String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let (major, minor) = (nix::sys::stat::major(rdev), nix::sys::stat::minor(rdev));
    let mut devs = vec![(major, minor)];
    devs.extend(partitions(Path::new("/sys/dev/block"), major, minor));
    for (a, b) in devs {
        if let Some(at) = mounted_at(&info, a, b) {
            return Err(format!(
                "block device {a}:{b} is mounted on the host at {at}: unmount it first (a filesystem mounted by \
                 the host and by a guest at once is corrupted)"
            ));
        }
    }
    Ok(())
}

/// Fails now if the VMM could not take the disk's lock (another VM, or
/// another process, holds it); the lock is let go again at once.
fn check_lock(path: &Path, read_only: bool) -> Result<(), String> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| format!("{} cannot be opened ({e}): check its permissions", path.display()))?;
    let how = if read_only { FlockArg::LockSharedNonblock } else { FlockArg::LockExclusiveNonblock };
    match Flock::lock(f, how) {
        Ok(_) => Ok(()),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => Err(format!(
            "{} is in use by another VM or process (it is locked): stop that one first, or make every mount of it \
             read-only (\"ro\") to share it",
            path.display()
        )),
        Err((_, e)) => Err(format!("{} cannot be locked ({e})", path.display())),
    }
}

/// The host's node of block device `major:minor`: the spec's own path if
/// it is that device here too, else the kernel's name for it
/// (`/sys/dev/block/M:m/uevent`, `DEVNAME=`) under /dev.
fn host_block_device(path: &Path, major: u64, minor: u64) -> Option<PathBuf> {
    let rdev = nix::sys::stat::makedev(major, minor);
    let is_it = |p: &Path| {
        std::fs::metadata(p).ok().filter(|m| m.file_type().is_block_device() && m.rdev() == rdev).map(|_| p.into())
    };
    if let Some(p) = is_it(path) {
        return Some(p);
    }
    let uevent = std::fs::read_to_string(format!("/sys/dev/block/{major}:{minor}/uevent")).ok()?;
    let name = uevent.lines().find_map(|l| l.strip_prefix("DEVNAME="))?;
    is_it(&Path::new("/dev").join(name))
}

/// The disks of `spec`, and the guest config's mount sources rewritten to
/// the serial (which the agent replaces by `/dev/vdX`). `bundle_dir`
/// resolves relative sources.
pub fn plan(spec: &Spec, bundle_dir: &Path, config: &mut serde_json::Value) -> Result<Vec<DiskEntry>, DiskPlanError> {
    let mut disks: Vec<DiskEntry> = Vec::new();
    // What first used each disk, for an error about the disk itself.
    let mut whats: Vec<String> = Vec::new();
    let mut by_key: HashMap<Key, usize> = HashMap::new();
    let mut block_rdev: HashMap<usize, u64> = HashMap::new();
    let mut add = |disks: &mut Vec<DiskEntry>, key: Key, source: PathBuf, read_only: bool, what: &str| -> usize {
        if let Some(&i) = by_key.get(&key) {
            disks[i].read_only &= read_only;
            return i;
        }
        let i = disks.len();
        whats.push(what.to_string());
        disks.push(DiskEntry {
            source,
            read_only,
            guest: GuestDisk { serial: serial(i), read_only, ..Default::default() },
        });
        by_key.insert(key, i);
        i
    };

    for (index, m) in spec.mounts().iter().flatten().enumerate() {
        let Some(typ) = m.typ().as_deref() else { continue };
        if is_bind(m) || DEVICELESS.contains(&typ) {
            continue;
        }
        let needs_device = ON_A_DEVICE.contains(&typ);
        let what = format!("mount #{index} ({}, type {typ})", m.destination().display());
        let bad = |problem: String| DiskPlanError::Disk { what: what.clone(), problem };
        let Some(src) = m.source() else {
            if needs_device {
                return Err(bad("it has no source: give the path of a filesystem image or a block device".into()));
            }
            continue;
        };
        let source = if src.is_absolute() { src.clone() } else { bundle_dir.join(src) };
        let meta = match std::fs::metadata(&source) {
            Ok(meta) if meta.file_type().is_file() || meta.file_type().is_block_device() => meta,
            Ok(_) | Err(_) if !needs_device => continue,
            Ok(meta) => {
                return Err(bad(format!(
                    "source {} is {}: give a filesystem image or a block device (a directory is shared with a \
                     bind mount)",
                    source.display(),
                    kind(&meta)
                )))
            }
            Err(e) => {
                return Err(bad(format!(
                    "source {} cannot be used ({e}): give the path of a filesystem image or a block device",
                    source.display()
                )))
            }
        };
        let read_only = m.options().as_ref().is_some_and(|o| o.iter().any(|x| x == "ro"));
        let key = key_of(&meta);
        let i = add(&mut disks, key, source.clone(), read_only, &what);
        if let Key::Block { rdev } = key {
            check_not_mounted(rdev).map_err(&bad)?;
            block_rdev.insert(i, rdev);
        }
        disks[i].guest.mounts.push(index);
        config["mounts"][index]["source"] = serde_json::json!(disks[i].guest.serial);
    }

    let devices = spec.linux().as_ref().and_then(|l| l.devices().as_ref());
    for (index, d) in devices.into_iter().flatten().enumerate() {
        if d.typ() != LinuxDeviceType::B {
            continue;
        }
        let what = format!("linux.devices[{index}] ({}, block device {}:{})", d.path().display(), d.major(), d.minor());
        let bad = |problem: String| DiskPlanError::Disk { what: what.clone(), problem };
        let (Ok(major), Ok(minor)) = (u64::try_from(d.major()), u64::try_from(d.minor())) else {
            return Err(bad("not a device number: give the host device's major and minor".into()));
        };
        let source = host_block_device(d.path(), major, minor).ok_or_else(|| {
            bad(format!(
                "this host has no block device {major}:{minor}: give the numbers of an existing one (ls -l /dev)"
            ))
        })?;
        let rdev = nix::sys::stat::makedev(major, minor);
        check_not_mounted(rdev).map_err(&bad)?;
        let i = add(&mut disks, Key::Block { rdev }, source, false, &what);
        block_rdev.insert(i, rdev);
        disks[i].guest.devices.push(index);
    }

    if let Some(image) = annotation(spec, ANNOTATION_ROOTFS) {
        let what = format!("annotation {ANNOTATION_ROOTFS} ({image})");
        let bad = |problem: String| DiskPlanError::Disk { what: what.clone(), problem };
        let fstype = annotation(spec, ANNOTATION_ROOTFS_TYPE).unwrap_or(DEFAULT_ROOTFS_TYPE);
        if fstype == "auto" || !ON_A_DEVICE.contains(&fstype) {
            return Err(bad(format!(
                "{ANNOTATION_ROOTFS_TYPE} {fstype:?} is not a filesystem on a device: name the image's filesystem                  (default {DEFAULT_ROOTFS_TYPE})"
            )));
        }
        let source = if Path::new(image).is_absolute() { PathBuf::from(image) } else { bundle_dir.join(image) };
        let meta = std::fs::metadata(&source).map_err(|e| {
            bad(format!(
                "{} cannot be used ({e}): give the path of a filesystem image or a block device",
                source.display()
            ))
        })?;
        if !meta.file_type().is_file() && !meta.file_type().is_block_device() {
            return Err(bad(format!(
                "{} is {}: give a filesystem image (mkfs.ext4 -d ROOTFS IMAGE SIZE makes one) or a block device",
                source.display(),
                kind(&meta)
            )));
        }
        let key = key_of(&meta);
        if let Key::Block { rdev } = key {
            check_not_mounted(rdev).map_err(&bad)?;
        }
        let read_only = spec.root().as_ref().and_then(|r| r.readonly()).unwrap_or(false);
        let before = disks.len();
        let i = add(&mut disks, key, source.clone(), read_only, &what);
        if i < before {
            return Err(bad(format!(
                "{} is also mounted by the bundle: a root filesystem cannot be mounted twice",
                source.display()
            )));
        }
        disks[i].guest.rootfs = Some(fstype.to_string());
        config["root"]["path"] = serde_json::json!(GUEST_BLOCK_ROOT);
    }

    if disks.len() > MAX_DISKS {
        return Err(DiskPlanError::TooMany { count: disks.len() });
    }
    // Device cgroup rules that name a disk's host numbers name the
    // guest's numbers of that disk in the guest.
    let rules = spec.linux().as_ref().and_then(|l| l.resources().as_ref()).and_then(|r| r.devices().as_ref());
    for (j, rule) in rules.into_iter().flatten().enumerate() {
        if rule.typ() != Some(LinuxDeviceType::B) {
            continue;
        }
        let (Some(major), Some(minor)) = (rule.major(), rule.minor()) else { continue };
        let (Ok(major), Ok(minor)) = (u64::try_from(major), u64::try_from(minor)) else { continue };
        let rdev = nix::sys::stat::makedev(major, minor);
        for (i, r) in &block_rdev {
            if *r == rdev {
                disks[*i].guest.rules.push(j);
            }
        }
    }
    for (disk, what) in disks.iter_mut().zip(&whats) {
        disk.guest.rules.sort_unstable();
        disk.guest.read_only = disk.read_only;
        check_lock(&disk.source, disk.read_only)
            .map_err(|problem| DiskPlanError::Disk { what: what.clone(), problem })?;
    }
    Ok(disks)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(json: serde_json::Value) -> Spec {
        let mut base = json!({"ociVersion": "1.0.2", "root": {"path": "rootfs"}, "process": {"args": ["true"], "cwd": "/", "user": {"uid": 0, "gid": 0}}});
        if let (Some(b), Some(j)) = (base.as_object_mut(), json.as_object()) {
            for (k, v) in j {
                b.insert(k.clone(), v.clone());
            }
        }
        serde_json::from_value(base).unwrap()
    }

    fn planned(s: &Spec, dir: &Path) -> Result<(Vec<DiskEntry>, serde_json::Value), DiskPlanError> {
        let mut config = serde_json::to_value(s).unwrap();
        plan(s, dir, &mut config).map(|d| (d, config))
    }

    #[test]
    fn a_root_filesystem_image_becomes_a_disk_the_agent_mounts_as_root() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("root.img"), vec![0u8; 4096]).unwrap();
        let s = spec(json!({"root": {"path": "rootfs", "readonly": true},
            "annotations": {ANNOTATION_ROOTFS: "root.img"}}));
        let (disks, config) = planned(&s, d.path()).unwrap();
        assert_eq!(disks.len(), 1);
        assert_eq!(disks[0].source, d.path().join("root.img"));
        assert!(disks[0].read_only, "root.readonly attaches it read-only");
        assert_eq!(disks[0].guest.rootfs.as_deref(), Some(DEFAULT_ROOTFS_TYPE));
        assert_eq!(config["root"]["path"], GUEST_BLOCK_ROOT);

        let err = |ann: serde_json::Value, mounts: serde_json::Value| {
            let s = spec(json!({"annotations": ann, "mounts": mounts}));
            planned(&s, d.path()).unwrap_err().to_string()
        };
        let e = err(json!({ANNOTATION_ROOTFS: "missing.img"}), json!([]));
        assert!(e.contains(ANNOTATION_ROOTFS) && e.contains("missing.img") && e.contains("cannot be used"), "{e}");
        let e = err(json!({ANNOTATION_ROOTFS: "."}), json!([]));
        assert!(e.contains("is a directory") && e.contains("mkfs.ext4 -d"), "{e}");
        let e = err(json!({ANNOTATION_ROOTFS: "root.img", ANNOTATION_ROOTFS_TYPE: "tmpfs"}), json!([]));
        assert!(e.contains("not a filesystem on a device"), "{e}");
        let e = err(
            json!({ANNOTATION_ROOTFS: "root.img"}),
            json!([{"destination": "/again", "type": "ext4", "source": "root.img"}]),
        );
        assert!(e.contains("mounted twice"), "{e}");
    }

    #[test]
    fn image_mounts_become_disks_with_serials_and_the_rest_stays() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("a.img"), vec![0u8; 4096]).unwrap();
        std::fs::write(d.path().join("b.img"), vec![0u8; 4096]).unwrap();
        // A file named like a pseudo filesystem's source is not a disk.
        std::fs::write(d.path().join("tmpfs"), "").unwrap();
        std::fs::create_dir(d.path().join("dir")).unwrap();
        let s = spec(json!({"mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs"},
            {"destination": "/data", "type": "ext4", "source": d.path().join("a.img"), "options": ["rw"]},
            {"destination": "/bind", "type": "bind", "source": d.path().join("dir"), "options": ["rbind"]},
            {"destination": "/bound-image", "type": "none", "source": "b.img", "options": ["bind", "ro"]},
            {"destination": "/ro", "type": "xfs", "source": "b.img", "options": ["ro", "nosuid"]},
            {"destination": "/other", "type": "myfs", "source": "dir"}
        ]}));
        let (disks, config) = planned(&s, d.path()).unwrap();
        assert_eq!(disks.len(), 2);
        assert_eq!(disks[0].source, d.path().join("a.img"));
        assert!(!disks[0].read_only);
        assert_eq!(
            disks[0].guest,
            GuestDisk { serial: "amphi-disk-0".into(), read_only: false, mounts: vec![2], ..Default::default() }
        );
        assert_eq!(disks[1].source, d.path().join("b.img"), "relative sources are the bundle's");
        assert!(disks[1].read_only && disks[1].guest.read_only, "ro in the options makes a read-only disk");
        assert_eq!((disks[1].guest.serial.as_str(), disks[1].guest.mounts.as_slice()), ("amphi-disk-1", &[5][..]));
        assert_eq!(config["mounts"][2]["source"], "amphi-disk-0");
        assert_eq!(config["mounts"][5]["source"], "amphi-disk-1");
        for i in [0, 1, 3, 4, 6] {
            assert_eq!(
                config["mounts"][i]["source"],
                serde_json::to_value(s.mounts().as_ref().unwrap()[i].source()).unwrap()
            );
        }
    }

    #[test]
    fn one_image_mounted_twice_is_one_disk_writable_if_any_mount_is() {
        let d = tempfile::tempdir().unwrap();
        let img = d.path().join("a.img");
        std::fs::write(&img, vec![0u8; 4096]).unwrap();
        std::os::unix::fs::symlink(&img, d.path().join("link.img")).unwrap();
        let s = spec(json!({"mounts": [
            {"destination": "/a", "type": "ext4", "source": img, "options": ["ro"]},
            {"destination": "/b", "type": "ext4", "source": d.path().join("link.img")}
        ]}));
        let (disks, config) = planned(&s, d.path()).unwrap();
        assert_eq!(disks.len(), 1);
        assert!(!disks[0].read_only);
        assert_eq!(disks[0].guest.mounts, vec![0, 1]);
        assert_eq!(config["mounts"][1]["source"], "amphi-disk-0");
        let s = spec(json!({"mounts": [
            {"destination": "/a", "type": "ext4", "source": img, "options": ["ro"]},
            {"destination": "/b", "type": "ext4", "source": img, "options": ["ro"]}
        ]}));
        assert!(planned(&s, d.path()).unwrap().0[0].read_only);
    }

    #[test]
    fn bad_sources_name_the_mount_and_the_fix() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("dir")).unwrap();
        for (source, needle) in [
            (json!("/no/such/image"), "/no/such/image cannot be used"),
            (json!(d.path().join("dir")), "is a directory"),
            (json!("/dev/null"), "is a character device"),
        ] {
            let s = spec(json!({"mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/data", "type": "ext4", "source": source}
            ]}));
            let e = planned(&s, d.path()).unwrap_err();
            let text = e.to_string();
            assert!(text.starts_with("mount #1 (/data, type ext4): "), "{text}");
            assert!(text.contains(needle) && text.contains("filesystem image or a block device"), "{text}");
        }
        let s = spec(json!({"mounts": [{"destination": "/data", "type": "ext4"}]}));
        assert!(planned(&s, d.path()).unwrap_err().to_string().contains("no source"));
        // A type amphi does not know with such a source is left to the guest.
        let s = spec(json!({"mounts": [{"destination": "/data", "type": "weirdfs", "source": "/no/such"}]}));
        assert!(planned(&s, d.path()).unwrap().0.is_empty());
    }

    #[test]
    fn an_image_another_vm_holds_is_refused_and_a_shared_read_only_one_is_not() {
        let d = tempfile::tempdir().unwrap();
        let img = d.path().join("a.img");
        std::fs::write(&img, vec![0u8; 4096]).unwrap();
        let rw = spec(json!({"mounts": [{"destination": "/data", "type": "ext4", "source": img}]}));
        let ro = spec(json!({"mounts": [{"destination": "/data", "type": "ext4", "source": img, "options": ["ro"]}]}));
        // Another VMM with the image read-only: a writer is refused, a reader not.
        let held = Flock::lock(std::fs::File::open(&img).unwrap(), FlockArg::LockSharedNonblock).unwrap();
        let e = planned(&rw, d.path()).unwrap_err().to_string();
        assert!(e.contains("mount #0 (/data") && e.contains("in use by another VM"), "{e}");
        planned(&ro, d.path()).unwrap();
        drop(held);
        // Writing: nobody else may have it at all.
        let held = Flock::lock(std::fs::File::open(&img).unwrap(), FlockArg::LockExclusiveNonblock).unwrap();
        assert!(planned(&ro, d.path()).unwrap_err().to_string().contains("in use"));
        drop(held);
        // Planning lets go of the lock: the VMM takes it later.
        planned(&rw, d.path()).unwrap();
        Flock::lock(std::fs::File::open(&img).unwrap(), FlockArg::LockExclusiveNonblock).unwrap();
    }

    #[test]
    fn block_devices_of_linux_devices_must_exist() {
        let d = tempfile::tempdir().unwrap();
        // Char devices are made in the guest as before.
        let s = spec(json!({"linux": {"devices": [{"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229}]}}));
        assert!(planned(&s, d.path()).unwrap().0.is_empty());
        // No block device has major 4095 (the last major; none is given out that high).
        let s = spec(json!({"linux": {"devices": [{"path": "/dev/xvdz", "type": "b", "major": 4095, "minor": 7}]}}));
        let e = planned(&s, d.path()).unwrap_err().to_string();
        assert!(
            e.starts_with("linux.devices[0] (/dev/xvdz, block device 4095:7): this host has no block device"),
            "{e}"
        );
    }

    #[test]
    fn mounted_devices_are_found_in_mountinfo() {
        let info = "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n\
                    30 22 0:25 / /proc rw - proc proc rw\n\
                    41 22 8:17 /sub /srv/data rw - xfs /dev/sdb1 rw\n";
        assert_eq!(mounted_at(info, 8, 1).as_deref(), Some("/"));
        assert_eq!(mounted_at(info, 8, 17).as_deref(), Some("/srv/data"));
        assert_eq!(mounted_at(info, 8, 16), None);
        assert_eq!(mounted_at("garbage\n\n", 8, 1), None);
    }

    #[test]
    fn more_disks_than_virtio_mmio_slots_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let mounts: Vec<serde_json::Value> = (0..=MAX_DISKS)
            .map(|i| {
                let img = d.path().join(format!("{i}.img"));
                std::fs::write(&img, "").unwrap();
                json!({"destination": format!("/d{i}"), "type": "ext4", "source": img})
            })
            .collect();
        let e = planned(&spec(json!({"mounts": mounts[1..]})), d.path()).map(|(disks, _)| disks.len());
        assert_eq!(e, Ok(MAX_DISKS));
        let e = planned(&spec(json!({"mounts": mounts})), d.path()).unwrap_err();
        assert_eq!(e, DiskPlanError::TooMany { count: MAX_DISKS + 1 });
        assert!(e.to_string().contains(&format!("at most {MAX_DISKS}")), "{e}");
    }

    #[test]
    fn serials_fit_the_virtio_blk_id() {
        for i in [0, MAX_DISKS - 1] {
            assert!(crate::vm::devices::virtio::block::check_serial(&serial(i)), "{}", serial(i));
        }
    }
}
