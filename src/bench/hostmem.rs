//! What one instance costs the host: PSS and RSS summed over its host
//! processes (the container's init and its cgroup in container isolation;
//! the VMM and its cgroup in VM isolation). PSS splits a shared page between
//! the processes that map it, so it adds up across instances; RSS does not.

use std::path::Path;

/// PSS and RSS in KiB of these processes, summed; a process that is gone
/// counts as 0.
pub fn pss_rss_kib(pids: &[u32]) -> (u64, u64) {
    pids.iter().fold((0, 0), |(pss, rss), pid| {
        let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
        let (p, r) = parse_rollup(&text);
        (pss + p, rss + r)
    })
}

fn parse_rollup(text: &str) -> (u64, u64) {
    let field = |name: &str| {
        text.lines().find_map(|l| l.strip_prefix(name)?.split_whitespace().next()?.parse::<u64>().ok()).unwrap_or(0)
    };
    (field("Pss:"), field("Rss:"))
}

/// The host processes of an instance whose main pid is `pid`: that pid and
/// every process of its cgroup (cgroup v2, or the v1 memory hierarchy).
pub fn instance_pids(pid: u32, cgroup_root: &Path) -> Vec<u32> {
    let mut pids = vec![pid];
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
    if let Some(dir) = cgroup_dir(&text, cgroup_root) {
        let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
        pids.extend(procs.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
    }
    pids.sort_unstable();
    pids.dedup();
    pids
}

/// The directory of a process's cgroup from its /proc/PID/cgroup: the v2
/// line on a pure cgroup2 host, the memory controller's line on v1.
fn cgroup_dir(proc_cgroup: &str, root: &Path) -> Option<std::path::PathBuf> {
    let unified = root.join("cgroup.controllers").exists();
    proc_cgroup.lines().find_map(|l| {
        let mut parts = l.splitn(3, ':');
        let (id, ctrls, path) = (parts.next()?, parts.next()?, parts.next()?);
        let rel = path.trim_start_matches('/');
        if unified && id == "0" && ctrls.is_empty() {
            Some(root.join(rel))
        } else if !unified && ctrls.split(',').any(|c| c == "memory") {
            Some(root.join("memory").join(rel))
        } else {
            None
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rollup_fields_are_read() {
        let t = "55d0-7ff [rollup]\nRss:               10240 kB\nPss:                4096 kB\nPss_Anon:  1 kB\n";
        assert_eq!(parse_rollup(t), (4096, 10240));
        assert_eq!(parse_rollup(""), (0, 0));
    }

    #[test]
    fn the_cgroup_directory_follows_the_hierarchy() {
        let v2 = tempfile::tempdir().unwrap();
        std::fs::write(v2.path().join("cgroup.controllers"), "memory pids").unwrap();
        let line = "0::/amphi/c1\n";
        assert_eq!(cgroup_dir(line, v2.path()), Some(v2.path().join("amphi/c1")));
        let v1 = tempfile::tempdir().unwrap();
        let lines = "12:pids:/amphi/c1\n7:memory:/amphi/c1\n0::/\n";
        assert_eq!(cgroup_dir(lines, v1.path()), Some(v1.path().join("memory/amphi/c1")));
        assert_eq!(cgroup_dir("12:pids:/x\n", v1.path()), None);
    }
}
