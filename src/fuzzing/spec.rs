//! config.json loading and validation as `create` does it ([`spec::parse_valid`],
//! the isolation annotation), then the VM isolation's plan from the same
//! spec (VM size from annotations and resources, the guest's config and
//! share entries, the VMM's host cgroup): the bytes are the config.json.
//! Nothing touches the disk but `stat`s of the mount sources the input
//! names, so the target leaves nothing behind however many inputs run.

use std::path::Path;

use crate::spec;
use crate::vm::sandbox::plan;

pub fn config_json(data: &[u8]) {
    // config.json is read as UTF-8 text; other bytes fail before parsing.
    let Ok(text) = std::str::from_utf8(data) else { return };
    let path = Path::new("/fuzz/bundle/config.json");
    let Ok(spec) = spec::parse_valid(path, text) else { return };
    let _ = spec::isolation_of(path, &spec);
    // What loads must print back (the state file stores it).
    let again = serde_json::to_string(&spec).expect("a loaded spec serializes");
    let _: spec::Spec = serde_json::from_str(&again).expect("a serialized spec parses again");
    for host_cpus in [1, 2, 64] {
        if let Ok(size) = plan::size(&spec, host_cpus) {
            assert!(size.vcpus >= 1 && u64::from(size.vcpus) <= host_cpus, "{} vCPUs on {host_cpus}", size.vcpus);
            assert!(size.memory_mib >= plan::MIN_MEMORY_MIB, "{} MiB", size.memory_mib);
            let host = plan::host_resources(&spec, &size);
            if let Some(limit) = host["memory"]["limit"].as_i64() {
                assert!(limit > 0, "the VMM's cgroup gets a memory limit of {limit}");
            }
            let _ = plan::host_resources_typed(&spec, &size);
        }
    }
    let _ = plan::guest_plan(
        &spec,
        Path::new("/nonexistent/amphi-fuzz-bundle"),
        Path::new("/nonexistent/amphi-fuzz-bundle/rootfs"),
        Some(Path::new("/amphi-fuzz")),
        Some((24, 80)),
    );
}
