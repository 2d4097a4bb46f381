//! Semantic checks serde cannot express: versions, required fields, paths
//! that must be absolute, namespaces that must (or must not) be present for
//! the settings that depend on them.

use std::collections::HashSet;
use std::path::Path;

use oci_spec::runtime::{LinuxNamespaceType, Process, Spec};

use super::{SpecError, OCI_VERSION_MIN};

pub(super) fn validate(config: &Path, spec: &Spec) -> Result<(), SpecError> {
    let field = |field: &str, problem: String| SpecError::Field {
        path: config.to_path_buf(),
        field: field.to_string(),
        problem,
    };

    check_version(config, spec.version())?;

    // `process` may be absent at create (the runtime spec requires it at
    // start only); when present it must be runnable.
    if let Some(process) = spec.process() {
        check_process(config, process, "process")?;
    }

    if let Some(mounts) = spec.mounts() {
        for (i, m) in mounts.iter().enumerate() {
            if m.destination().as_os_str().is_empty() {
                return Err(field(&format!("mounts[{i}].destination"), "empty".into()));
            }
        }
    }

    if let Some(hooks) = spec.hooks() {
        let lists = [
            ("prestart", hooks.prestart()),
            ("createRuntime", hooks.create_runtime()),
            ("createContainer", hooks.create_container()),
            ("startContainer", hooks.start_container()),
            ("poststart", hooks.poststart()),
            ("poststop", hooks.poststop()),
        ];
        for (name, list) in lists {
            for (i, h) in list.iter().flatten().enumerate() {
                if !h.path().is_absolute() {
                    return Err(field(&format!("hooks.{name}[{i}].path"), format!("{:?} is not absolute", h.path())));
                }
                if matches!(h.timeout(), Some(t) if t <= 0) {
                    return Err(field(
                        &format!("hooks.{name}[{i}].timeout"),
                        "must be a positive number of seconds".into(),
                    ));
                }
            }
        }
    }

    let uts = spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().as_ref())
        .is_some_and(|n| n.iter().any(|n| n.typ() == LinuxNamespaceType::Uts));
    // As runc: a uts namespace of the container's (new or joined) is
    // required, or the host's hostname would change.
    if spec.hostname().as_deref().is_some_and(|h| !h.is_empty()) && !uts {
        return Err(field(
            "hostname",
            "setting the hostname needs a uts namespace: add {\"type\":\"uts\"} to linux.namespaces".into(),
        ));
    }

    let Some(linux) = spec.linux() else { return Ok(()) };
    let mut types = HashSet::new();
    for ns in linux.namespaces().iter().flatten() {
        if !types.insert(ns.typ()) {
            return Err(field("linux.namespaces", format!("{} is listed twice", ns.typ())));
        }
        if let Some(p) = ns.path() {
            if !p.is_absolute() {
                return Err(field("linux.namespaces", format!("{} path {p:?} is not absolute", ns.typ())));
            }
        }
    }
    let new_ns =
        |t: LinuxNamespaceType| linux.namespaces().iter().flatten().any(|n| n.typ() == t && n.path().is_none());
    let has_ns = |t: LinuxNamespaceType| types.contains(&t);

    let maps =
        linux.uid_mappings().as_ref().map_or(0, |m| m.len()) + linux.gid_mappings().as_ref().map_or(0, |m| m.len());
    if new_ns(LinuxNamespaceType::User) {
        if linux.uid_mappings().as_ref().is_none_or(|m| m.is_empty())
            || linux.gid_mappings().as_ref().is_none_or(|m| m.is_empty())
        {
            return Err(field(
                "linux.uidMappings",
                "a new user namespace needs both uidMappings and gidMappings".into(),
            ));
        }
    } else if maps > 0 && !has_ns(LinuxNamespaceType::User) {
        return Err(field(
            "linux.uidMappings",
            "uid/gid mappings need a user namespace: add {\"type\":\"user\"} to linux.namespaces".into(),
        ));
    }
    for m in linux.uid_mappings().iter().flatten().chain(linux.gid_mappings().iter().flatten()) {
        if m.size() == 0 {
            return Err(field("linux.uidMappings", "a mapping has size 0".into()));
        }
    }

    if let Some(sysctl) = linux.sysctl() {
        for key in sysctl.keys() {
            check_sysctl(key, &has_ns, &new_ns).map_err(|p| field(&format!("linux.sysctl.{key}"), p))?;
        }
    }

    if let Some(offsets) = linux.time_offsets() {
        if !offsets.is_empty() && !new_ns(LinuxNamespaceType::Time) {
            return Err(field(
                "linux.timeOffsets",
                "time offsets need a new time namespace: add {\"type\":\"time\"}".into(),
            ));
        }
        for clock in offsets.keys() {
            if clock != "monotonic" && clock != "boottime" {
                return Err(field(
                    "linux.timeOffsets",
                    format!("unknown clock {clock:?}: use \"monotonic\" or \"boottime\""),
                ));
            }
        }
    }

    // Relative maskedPaths and readonlyPaths are taken relative to the
    // container's root, as runc does (it resolves them from "/" after
    // pivot_root), rather than refused.
    for (i, d) in linux.devices().iter().flatten().enumerate() {
        if !d.path().is_absolute() {
            return Err(field(&format!("linux.devices[{i}].path"), format!("{:?} is not absolute", d.path())));
        }
    }
    if let Some(p) = linux.rootfs_propagation() {
        if !["", "private", "rprivate", "slave", "rslave", "shared", "rshared", "unbindable", "runbindable"]
            .contains(&p.as_str())
        {
            return Err(field(
                "linux.rootfsPropagation",
                format!("unknown propagation {p:?}: use shared, slave, private or unbindable (r-prefixed too)"),
            ));
        }
    }
    Ok(())
}

/// The checks a process (config.json's, or one given to `exec`) must pass.
/// `name` is how errors call it ("process", or the file it came from).
pub(crate) fn check_process(config: &Path, process: &Process, name: &str) -> Result<(), SpecError> {
    let field = |f: &str, problem: String| SpecError::Field {
        path: config.to_path_buf(),
        field: if name.is_empty() { f.to_string() } else { format!("{name}.{f}") },
        problem,
    };
    match process.args() {
        Some(a) if !a.is_empty() && !a[0].is_empty() => {}
        _ => return Err(field("args", "empty: give the program to run as args[0]".into())),
    }
    if process.cwd().as_os_str().is_empty() {
        return Err(field("cwd", "missing: set the working directory, an absolute path such as \"/\"".into()));
    }
    if !process.cwd().is_absolute() {
        return Err(field("cwd", format!("{:?} is not absolute: use a path starting with /", process.cwd())));
    }
    if let Some(env) = process.env() {
        if let Some(bad) = env.iter().find(|e| !e.contains('=')) {
            return Err(field("env", format!("{bad:?} is not of the form NAME=value")));
        }
    }
    if let Some(rlimits) = process.rlimits() {
        let mut seen = Vec::new();
        for r in rlimits {
            if seen.contains(&r.typ()) {
                return Err(field("rlimits", format!("{:?} is given twice", r.typ())));
            }
            seen.push(r.typ());
            if r.soft() > r.hard() {
                return Err(field(
                    "rlimits",
                    format!("{:?}: soft limit {} is above hard limit {}", r.typ(), r.soft(), r.hard()),
                ));
            }
        }
    }
    Ok(())
}

fn check_version(config: &Path, version: &str) -> Result<(), SpecError> {
    let unsupported = || SpecError::UnsupportedVersion { path: config.to_path_buf(), version: version.to_string() };
    if version.is_empty() {
        return Err(SpecError::Field {
            path: config.to_path_buf(),
            field: "ociVersion".into(),
            problem: format!("missing: set it to the runtime-spec version, e.g. {OCI_VERSION_MIN:?}"),
        });
    }
    let core = version.split(['-', '+']).next().unwrap_or("");
    let parts: Vec<&str> = core.split('.').collect();
    if parts.len() != 3 || parts.iter().any(|p| p.parse::<u64>().is_err()) {
        return Err(unsupported());
    }
    if parts[0] != "1" {
        return Err(unsupported());
    }
    Ok(())
}

/// Mirrors runc's rule: a sysctl may only be set when the kernel namespace it
/// belongs to is the container's own, otherwise it would change the host.
fn check_sysctl(
    key: &str,
    has_ns: &dyn Fn(LinuxNamespaceType) -> bool,
    new_ns: &dyn Fn(LinuxNamespaceType) -> bool,
) -> Result<(), String> {
    let ipc = [
        "kernel.msgmax",
        "kernel.msgmnb",
        "kernel.msgmni",
        "kernel.sem",
        "kernel.shmall",
        "kernel.shmmax",
        "kernel.shmmni",
        "kernel.shm_rmid_forced",
    ];
    if ipc.contains(&key) || key.starts_with("fs.mqueue.") {
        return if has_ns(LinuxNamespaceType::Ipc) {
            Ok(())
        } else {
            Err("needs an ipc namespace of the container's own".into())
        };
    }
    if key.starts_with("net.") {
        return if has_ns(LinuxNamespaceType::Network) {
            Ok(())
        } else {
            Err("needs a network namespace of the container's own".into())
        };
    }
    if key == "kernel.hostname" || key == "kernel.domainname" {
        return if new_ns(LinuxNamespaceType::Uts) { Ok(()) } else { Err("needs a new uts namespace".into()) };
    }
    Err("is not namespaced: it would change the host; remove it from linux.sysctl".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: &str) -> Spec {
        serde_json::from_str(json).unwrap()
    }

    const BASE: &str = r#""root":{"path":"rootfs"},"process":{"cwd":"/","args":["sh"],"user":{"uid":0,"gid":0}}"#;

    fn check(extra: &str) -> Result<(), SpecError> {
        let s = spec(&format!(r#"{{"ociVersion":"1.1.0",{BASE}{extra}}}"#));
        validate(Path::new("config.json"), &s)
    }

    #[test]
    fn versions() {
        for ok in ["1.0.0", "1.0.2-dev", "1.2.0", "1.1.0+dev"] {
            check_version(Path::new("c"), ok).unwrap();
        }
        for bad in ["2.0.0", "0.9.0", "1.0", "abc"] {
            assert!(matches!(check_version(Path::new("c"), bad), Err(SpecError::UnsupportedVersion { .. })), "{bad}");
        }
        assert!(matches!(check_version(Path::new("c"), ""), Err(SpecError::Field { .. })));
    }

    #[test]
    fn process_is_optional_at_create_but_checked_when_present() {
        let s = spec(r#"{"ociVersion":"1.0.0","root":{"path":"rootfs"}}"#);
        validate(Path::new("config.json"), &s).unwrap();
        let s = spec(r#"{"ociVersion":"1.0.0","process":{"cwd":"/","args":[],"user":{"uid":0,"gid":0}}}"#);
        let e = validate(Path::new("config.json"), &s).unwrap_err().to_string();
        assert!(e.contains("process.args"), "{e}");
    }

    #[test]
    fn relative_masked_and_readonly_paths_are_accepted() {
        check(r#","linux":{"maskedPaths":["proc/kcore"],"readonlyPaths":["proc/sys"]}"#).unwrap();
    }

    #[test]
    fn relative_cwd_is_refused() {
        let s = spec(r#"{"ociVersion":"1.0.0","process":{"cwd":"rel","args":["sh"],"user":{"uid":0,"gid":0}}}"#);
        let e = validate(Path::new("config.json"), &s).unwrap_err().to_string();
        assert!(e.contains("process.cwd"), "{e}");
    }

    #[test]
    fn user_namespace_needs_mappings() {
        let e = check(r#","linux":{"namespaces":[{"type":"user"}]}"#).unwrap_err().to_string();
        assert!(e.contains("uidMappings"), "{e}");
        check(
            r#","linux":{"namespaces":[{"type":"user"}],
            "uidMappings":[{"containerID":0,"hostID":1000,"size":1}],
            "gidMappings":[{"containerID":0,"hostID":1000,"size":1}]}"#,
        )
        .unwrap();
    }

    #[test]
    fn duplicate_namespaces_are_refused() {
        let e = check(r#","linux":{"namespaces":[{"type":"pid"},{"type":"pid"}]}"#).unwrap_err().to_string();
        assert!(e.contains("listed twice"), "{e}");
    }

    #[test]
    fn sysctl_needs_its_namespace() {
        let e = check(r#","linux":{"sysctl":{"net.ipv4.ip_forward":"1"}}"#).unwrap_err().to_string();
        assert!(e.contains("net.ipv4.ip_forward"), "{e}");
        check(r#","linux":{"namespaces":[{"type":"network"}],"sysctl":{"net.ipv4.ip_forward":"1"}}"#).unwrap();
        let e = check(r#","linux":{"namespaces":[{"type":"ipc"}],"sysctl":{"vm.swappiness":"1"}}"#).unwrap_err();
        assert!(e.to_string().contains("not namespaced"), "{e}");
    }

    #[test]
    fn hostname_needs_uts() {
        assert!(check(r#","hostname":"h""#).is_err());
        check(r#","hostname":"h","linux":{"namespaces":[{"type":"uts"}]}"#).unwrap();
    }

    #[test]
    fn relative_hook_path_is_refused() {
        let e = check(r#","hooks":{"poststop":[{"path":"bin/x"}]}"#).unwrap_err().to_string();
        assert!(e.contains("hooks.poststop[0].path"), "{e}");
    }
}
