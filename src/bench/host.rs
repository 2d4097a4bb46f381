//! The facts a figure depends on (CPU, kernel, memory, nesting), and the
//! warnings that say a run's figures are suspect: a busy host or another
//! benchmark running at the same time. Read once, at the start of a run.

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener};

use super::model::HostFacts;

/// Bound by a running `amphi bench`, so that a second one can tell. An
/// abstract socket: nothing on disk to leave behind, gone with the process.
pub const LOCK_NAME: &[u8] = b"amphi-bench";

/// Reads the host's facts from /proc and /dev/kvm.
pub fn facts() -> HostFacts {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let loadavg = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    HostFacts {
        cpu_model: cpuinfo_field(&cpuinfo, "model name").unwrap_or_else(|| "unknown".into()),
        cpus: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        kernel: nix::sys::utsname::uname()
            .map(|u| u.release().to_string_lossy().into_owned())
            .unwrap_or_else(|_| "unknown".into()),
        memory_mib: meminfo_kib(&meminfo, "MemTotal").unwrap_or(0) / 1024,
        nested: cpuinfo_field(&cpuinfo, "flags").is_some_and(|f| f.split_whitespace().any(|w| w == "hypervisor")),
        kvm: std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").is_ok(),
        load_average: loadavg.split_whitespace().next().and_then(|l| l.parse().ok()).unwrap_or(0.0),
    }
}

fn cpuinfo_field(cpuinfo: &str, name: &str) -> Option<String> {
    cpuinfo.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k.trim() == name).then(|| v.trim().to_string())
    })
}

/// A `Name:   123 kB` line of /proc/meminfo, in KiB.
pub fn meminfo_kib(meminfo: &str, name: &str) -> Option<u64> {
    meminfo.lines().find_map(|l| {
        let rest = l.strip_prefix(name)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// Warnings about the host as it is now: every one makes the figures less
/// trustworthy, none stops the run.
pub fn busy_warnings(facts: &HostFacts) -> Vec<String> {
    let mut w = Vec::new();
    // Half the CPUs busy already is enough to spread start latencies.
    if facts.load_average > facts.cpus as f64 * 0.5 {
        w.push(format!(
            "the host is busy: load average {:.2} on {} CPUs; figures will be noisier than on an idle host",
            facts.load_average, facts.cpus
        ));
    }
    w
}

/// Takes the benchmark lock. `Ok(None)` when another `amphi bench` holds
/// it: the caller warns and goes on, since waiting could take an hour.
pub fn lock() -> std::io::Result<Option<UnixListener>> {
    let addr = SocketAddr::from_abstract_name(LOCK_NAME)?;
    match UnixListener::bind_addr(&addr) {
        Ok(l) => Ok(Some(l)),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_cpuinfo_and_meminfo_fields() {
        let cpuinfo = "processor\t: 0\nmodel name\t: AMD EPYC 7B13\nflags\t\t: fpu vme hypervisor svm\n";
        assert_eq!(cpuinfo_field(cpuinfo, "model name").as_deref(), Some("AMD EPYC 7B13"));
        assert!(cpuinfo_field(cpuinfo, "flags").unwrap().split_whitespace().any(|w| w == "hypervisor"));
        let meminfo = "MemTotal:       24641516 kB\nMemAvailable:   20000000 kB\n";
        assert_eq!(meminfo_kib(meminfo, "MemTotal"), Some(24641516));
        assert_eq!(meminfo_kib(meminfo, "MemFree"), None);
    }

    #[test]
    fn a_second_holder_of_the_lock_is_told() {
        // Only this test takes the lock in the test binary.
        let held = lock().unwrap();
        if held.is_some() {
            assert!(lock().unwrap().is_none());
        }
    }

    #[test]
    fn a_busy_host_is_named() {
        let mut f = facts();
        f.cpus = 2;
        f.load_average = 0.4;
        assert!(busy_warnings(&f).is_empty());
        f.load_average = 1.5;
        let w = busy_warnings(&f);
        assert_eq!(w.len(), 1);
        assert!(w[0].contains("load average 1.50 on 2 CPUs"), "{w:?}");
    }
}
