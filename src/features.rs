//! The OCI features document (`amphi features`): what this build and this
//! host really support, so that higher-level tools can adapt.

use serde_json::{json, Value};

use crate::linux::{mounts, namespaces, seccomp};

pub fn document() -> Value {
    let vm_annotations = [
        vm::ANNOTATION_MEMORY,
        vm::ANNOTATION_CPUS,
        vm::ANNOTATION_KERNEL,
        vm::ANNOTATION_KERNEL_ARGS,
        vm::ANNOTATION_BOOT_TIMEOUT,
    ]
    .join(",");
    let mut ns = vec!["cgroup", "ipc", "mount", "network", "pid", "user", "uts"];
    if namespaces::time_supported() {
        ns.push("time");
    }
    let mut caps: Vec<String> = caps::runtime::thread_all_supported().iter().map(|c| c.to_string()).collect();
    caps.sort();
    let (actions, operators, archs) = seccomp::supported();
    let cg = crate::linux::cgroups::host_facts().ok();
    let flags = ["SECCOMP_FILTER_FLAG_LOG", "SECCOMP_FILTER_FLAG_SPEC_ALLOW", "SECCOMP_FILTER_FLAG_TSYNC"];
    let lsm = crate::linux::lsm::Host::detect();
    json!({
        "ociVersionMin": crate::spec::OCI_VERSION_MIN,
        "ociVersionMax": crate::spec::OCI_VERSION_MAX,
        "hooks": ["prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop"],
        "mountOptions": mounts::known_options(),
        "linux": {
            "namespaces": ns,
            "capabilities": caps,
            "cgroup": {
                "v1": true,
                "v2": true,
                "systemd": false,
                "systemdUser": false,
                "rdma": cg.as_ref().is_some_and(|f| f.rdma)
            },
            "seccomp": {
                "enabled": true,
                "actions": actions,
                "operators": operators,
                "archs": archs,
                "knownFlags": flags,
                "supportedFlags": flags
            },
            // Labels are applied where the host runs the module, and
            // ignored with a warning where it does not.
            "apparmor": { "enabled": lsm.apparmor },
            "selinux": { "enabled": lsm.selinux },
            "intelRdt": { "enabled": false },
            "mountExtensions": { "idmap": { "enabled": false } }
        },
        "annotations": {
            "run.amphi.version": env!("CARGO_PKG_VERSION"),
            "run.amphi.isolations": "container,vm",
            "run.amphi.cgroup.controllers": cg.map(|f| f.controllers.join(",")).unwrap_or_default(),
            "io.github.seccomp.libseccomp.version": libseccomp_version(),
            "run.amphi.vm.default.memory": format!("{} MiB", vm::DEFAULT_MEMORY_MIB),
            "run.amphi.vm.default.memory_overhead": format!("{} MiB added to linux.resources.memory.limit", vm::MEMORY_OVERHEAD_MIB),
            "run.amphi.vm.default.cpus": format!("{} (else CPU quota/period rounded up, or the cpuset's size)", vm::DEFAULT_VCPUS),
            "run.amphi.vm.default.boot_timeout": format!("{} s", vm::DEFAULT_BOOT_TIMEOUT.as_secs()),
            "run.amphi.vm.annotations": vm_annotations
        },
        "potentiallyUnsafeConfigAnnotations": [crate::spec::ISOLATION_ANNOTATION, "run.amphi.vm."]
    })
}

use crate::vm::sandbox::plan as vm;

fn libseccomp_version() -> String {
    libseccomp::ScmpVersion::current().map(|v| format!("{}.{}.{}", v.major, v.minor, v.micro)).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    #[test]
    fn document_parses_as_oci_features() {
        let doc = super::document();
        let parsed: oci_spec::runtime::Features = serde_json::from_value(doc).unwrap();
        assert_eq!(parsed.oci_version_min(), crate::spec::OCI_VERSION_MIN);
        assert!(parsed.hooks().as_ref().unwrap().contains(&"poststop".to_string()));
    }
}
