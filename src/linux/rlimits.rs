//! Resource limits of the container process (process.rlimits).

use oci_spec::runtime::{PosixRlimit, PosixRlimitType};

use super::LinuxError;

fn resource(t: PosixRlimitType) -> (libc::__rlimit_resource_t, &'static str) {
    use PosixRlimitType::*;
    match t {
        RlimitCpu => (libc::RLIMIT_CPU, "RLIMIT_CPU"),
        RlimitFsize => (libc::RLIMIT_FSIZE, "RLIMIT_FSIZE"),
        RlimitData => (libc::RLIMIT_DATA, "RLIMIT_DATA"),
        RlimitStack => (libc::RLIMIT_STACK, "RLIMIT_STACK"),
        RlimitCore => (libc::RLIMIT_CORE, "RLIMIT_CORE"),
        RlimitRss => (libc::RLIMIT_RSS, "RLIMIT_RSS"),
        RlimitNproc => (libc::RLIMIT_NPROC, "RLIMIT_NPROC"),
        RlimitNofile => (libc::RLIMIT_NOFILE, "RLIMIT_NOFILE"),
        RlimitMemlock => (libc::RLIMIT_MEMLOCK, "RLIMIT_MEMLOCK"),
        RlimitAs => (libc::RLIMIT_AS, "RLIMIT_AS"),
        RlimitLocks => (libc::RLIMIT_LOCKS, "RLIMIT_LOCKS"),
        RlimitSigpending => (libc::RLIMIT_SIGPENDING, "RLIMIT_SIGPENDING"),
        RlimitMsgqueue => (libc::RLIMIT_MSGQUEUE, "RLIMIT_MSGQUEUE"),
        RlimitNice => (libc::RLIMIT_NICE, "RLIMIT_NICE"),
        RlimitRtprio => (libc::RLIMIT_RTPRIO, "RLIMIT_RTPRIO"),
        RlimitRttime => (libc::RLIMIT_RTTIME, "RLIMIT_RTTIME"),
    }
}

/// Sets every limit; EPERM explains the missing CAP_SYS_RESOURCE and the
/// current hard limit, which is what the user must stay under.
pub fn apply(limits: &[PosixRlimit]) -> Result<(), LinuxError> {
    for l in limits {
        let (res, name) = resource(l.typ());
        let new = libc::rlimit { rlim_cur: l.soft(), rlim_max: l.hard() };
        // SAFETY: setrlimit reads one rlimit struct that we own.
        if unsafe { libc::setrlimit(res, &new) } != 0 {
            let errno = nix::errno::Errno::last();
            let mut cur = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
            // SAFETY: getrlimit writes one rlimit struct that we own.
            unsafe { libc::getrlimit(res, &mut cur) };
            let hint = if errno == nix::errno::Errno::EPERM && l.hard() > cur.rlim_max {
                format!(
                    "raising the hard limit above the current {} needs CAP_SYS_RESOURCE, which this \
                     process lacks: set process.rlimits {name} hard to at most {} (podman: --ulimit)",
                    cur.rlim_max, cur.rlim_max
                )
            } else {
                format!("soft {} / hard {} rejected", l.soft(), l.hard())
            };
            return Err(LinuxError::sys(format!("cannot set {name}: {hint}"), errno));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raising_above_the_hard_limit_explains_the_fix() {
        let mut cur = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: getrlimit writes one rlimit struct that we own.
        unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut cur) };
        if cur.rlim_max == libc::RLIM_INFINITY {
            eprintln!("skipped: RLIMIT_NOFILE hard limit is infinite here");
            return;
        }
        let too_high: Vec<PosixRlimit> = serde_json::from_str(&format!(
            r#"[{{"type":"RLIMIT_NOFILE","soft":{0},"hard":{0}}}]"#,
            cur.rlim_max.saturating_mul(4)
        ))
        .unwrap();
        if caps::has_cap(None, caps::CapSet::Effective, caps::Capability::CAP_SYS_RESOURCE).unwrap_or(false) {
            eprintln!("skipped: this process holds CAP_SYS_RESOURCE, so raising the hard limit succeeds");
            return;
        }
        // Without CAP_SYS_RESOURCE the call fails and changes nothing, so
        // it is safe to make in the test process itself.
        let e = apply(&too_high).unwrap_err().to_string();
        assert!(e.contains("CAP_SYS_RESOURCE") && e.contains("RLIMIT_NOFILE"), "{e}");
    }
}
