//! The configuration `amphi spec` writes: the same defaults runc's `spec`
//! writes, so that bundles move between the two unchanged.

use serde_json::{json, Value};

const MASKED: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/sys/firmware",
    "/proc/scsi",
];

const READONLY: &[&str] = &["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"];

const CAPS: &[&str] = &["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"];

/// The runtime-spec version `amphi spec` writes: what the configuration
/// uses, and what runc 1.1 and crun 1.8 also accept, so the bundle stays
/// portable (crun refuses versions newer than it knows).
pub const WRITTEN_VERSION: &str = "1.1.0";

/// The default (rootful) configuration.
pub fn default_spec() -> Value {
    json!({
        "ociVersion": WRITTEN_VERSION,
        "process": {
            "terminal": true,
            "user": { "uid": 0, "gid": 0 },
            "args": ["sh"],
            "env": [
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "TERM=xterm"
            ],
            "cwd": "/",
            "capabilities": {
                "bounding": CAPS, "effective": CAPS, "permitted": CAPS, "ambient": CAPS
            },
            "rlimits": [ { "type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024 } ],
            "noNewPrivileges": true
        },
        "root": { "path": "rootfs", "readonly": true },
        "hostname": "amphi",
        "mounts": [
            { "destination": "/proc", "type": "proc", "source": "proc" },
            { "destination": "/dev", "type": "tmpfs", "source": "tmpfs",
              "options": ["nosuid", "strictatime", "mode=755", "size=65536k"] },
            { "destination": "/dev/pts", "type": "devpts", "source": "devpts",
              "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"] },
            { "destination": "/dev/shm", "type": "tmpfs", "source": "shm",
              "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"] },
            { "destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
              "options": ["nosuid", "noexec", "nodev"] },
            { "destination": "/sys", "type": "sysfs", "source": "sysfs",
              "options": ["nosuid", "noexec", "nodev", "ro"] },
            { "destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
              "options": ["nosuid", "noexec", "nodev", "relatime", "ro"] }
        ],
        "linux": {
            "resources": { "devices": [ { "allow": false, "access": "rwm" } ] },
            "namespaces": [
                { "type": "pid" }, { "type": "network" }, { "type": "ipc" },
                { "type": "uts" }, { "type": "mount" }, { "type": "cgroup" }
            ],
            "maskedPaths": MASKED,
            "readonlyPaths": READONLY
        }
    })
}

/// The rootless variant: a user namespace mapping the caller to root, no
/// network namespace (an unprivileged user cannot configure one), sysfs bound
/// from the host, no cgroup resources and no gid=5 on devpts.
pub fn rootless_spec(uid: u32, gid: u32) -> Value {
    let mut v = default_spec();
    let linux = &mut v["linux"];
    linux["uidMappings"] = json!([{ "containerID": 0, "hostID": uid, "size": 1 }]);
    linux["gidMappings"] = json!([{ "containerID": 0, "hostID": gid, "size": 1 }]);
    linux["namespaces"] = json!([
        { "type": "pid" }, { "type": "ipc" }, { "type": "uts" }, { "type": "mount" }, { "type": "user" }
    ]);
    if let Some(o) = linux.as_object_mut() {
        o.remove("resources");
    }
    if let Some(mounts) = v["mounts"].as_array_mut() {
        for m in mounts.iter_mut() {
            match m["destination"].as_str() {
                Some("/sys") => {
                    *m = json!({ "destination": "/sys", "type": "none", "source": "/sys",
                                 "options": ["rbind", "nosuid", "noexec", "nodev", "ro"] });
                }
                Some("/dev/pts") => {
                    if let Some(opts) = m["options"].as_array_mut() {
                        opts.retain(|o| o != "gid=5");
                    }
                }
                _ => {}
            }
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn defaults_are_valid_specs() {
        for v in [default_spec(), rootless_spec(1000, 1000)] {
            let text = serde_json::to_string(&v).unwrap();
            let spec = super::super::parse(Path::new("config.json"), &text).unwrap();
            super::super::validate::validate(Path::new("config.json"), &spec).unwrap();
        }
    }

    #[test]
    fn rootless_maps_the_caller_and_drops_resources() {
        let v = rootless_spec(1234, 99);
        assert_eq!(v["linux"]["uidMappings"][0]["hostID"], 1234);
        assert_eq!(v["linux"]["gidMappings"][0]["hostID"], 99);
        assert!(v["linux"].get("resources").is_none());
        assert!(v["linux"]["namespaces"].as_array().unwrap().iter().any(|n| n["type"] == "user"));
    }
}
