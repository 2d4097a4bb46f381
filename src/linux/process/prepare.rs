//! The part of a container process's setup that the init and an `exec`
//! share: from "inside the container" to "about to execve".
//!
//! The parent decides everything before cloning ([`ProcessPlan::new`]:
//! capability sets, the seccomp program, the scheduler, security labels,
//! environment and arguments); the child then only makes system calls, in
//! runc's order ([`ProcessPlan::drop_privileges`], then
//! [`ProcessPlan::exec`]): scheduler, rlimits, I/O priority and security
//! labels while still privileged; every inherited fd above the preserved
//! ones close-on-exec (CVE-2024-21626); no_new_privs; a seccomp filter
//! that needs CAP_SYS_ADMIN; the bounding set; the user; the remaining
//! capability sets; the program's path; the working directory; default
//! signal handling. The seccomp filter of a no_new_privs process is
//! loaded last, just before execve, so it constrains the workload only.

use std::collections::HashSet;
use std::convert::Infallible;
use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use oci_spec::runtime::Process;

use super::super::capabilities::{self, CapSets};
use super::super::lsm::{self, Labels};
use super::super::scheduler::SchedAttr;
use super::super::seccomp::Filter;
use super::super::{rlimits, user, LinuxError};
use super::sync::{Channel, ToParent};

/// What the parent decided about the process.
#[derive(Debug)]
pub struct ProcessPlan<'a> {
    pub process: &'a Process,
    pub caps: Option<CapSets>,
    pub seccomp: Option<Filter>,
    pub sched: Option<SchedAttr>,
    pub labels: Labels,
    pub env: Vec<CString>,
    pub args: Vec<CString>,
    /// First fd the program must not inherit: 3 + $LISTEN_FDS + preserved.
    pub first_private_fd: u32,
}

fn cstrings<'a>(items: impl Iterator<Item = &'a String>, what: &str) -> Result<Vec<CString>, LinuxError> {
    items
        .map(|s| {
            CString::new(s.as_bytes()).map_err(|_| LinuxError::Config(format!("{what} contains a NUL byte: {s:?}")))
        })
        .collect()
}

/// Capabilities the kernel knows and our bounding set still contains.
pub fn held_capabilities() -> HashSet<caps::Capability> {
    let all = caps::runtime::thread_all_supported();
    match caps::read(None, caps::CapSet::Bounding) {
        Ok(b) => all.intersection(&b).copied().collect(),
        Err(_) => all,
    }
}

impl<'a> ProcessPlan<'a> {
    /// `passwd` gives the container's /etc/passwd, read only when the
    /// environment lacks HOME.
    pub fn new(
        process: &'a Process,
        seccomp: Option<Filter>,
        passwd: impl FnOnce() -> Option<String>,
        first_private_fd: u32,
    ) -> Result<ProcessPlan<'a>, LinuxError> {
        let caps = match process.capabilities() {
            // Only what we hold can be granted (a host may withhold some
            // capabilities from the runtime itself).
            Some(c) => Some(CapSets::from_spec(c, &held_capabilities())?),
            None => None,
        };
        if let Some(c) = caps.as_ref().filter(|c| !c.unsupported.is_empty()) {
            crate::logging::warn_once(
                "capabilities",
                &format!("capabilities not available to amphi on this host, not granted: {}", c.unsupported.join(" ")),
            );
        }
        let sched = process.scheduler().as_ref().map(SchedAttr::from_spec).transpose()?;
        let labels = Labels::plan(
            lsm::Host::detect(),
            process.apparmor_profile().as_deref(),
            process.selinux_label().as_deref(),
        );
        let env_strings = user::environment(process.env().as_deref().unwrap_or(&[]), || {
            user::home_of(passwd().as_deref(), process.user().uid())
        });
        let env = cstrings(env_strings.iter(), "process.env")?;
        let args = cstrings(process.args().iter().flatten(), "process.args")?;
        Ok(ProcessPlan { process, caps, seccomp, sched, labels, env, args, first_private_fd })
    }

    fn nnp(&self) -> bool {
        self.process.no_new_privileges().unwrap_or(false)
    }

    /// In the child, inside the container (its mount namespace, with its
    /// /proc): everything up to the point where only execve remains.
    /// Returns the program's path. A seccomp filter with a listener is
    /// loaded here and its fd sent over `chan` (the parent forwards it).
    pub fn drop_privileges(&self, in_userns: bool, chan: &Channel) -> Result<CString, LinuxError> {
        use nix::sys::prctl;
        let errno = |what: &'static str| move |e| LinuxError::sys(what, e);
        if let Some(s) = &self.sched {
            s.apply()?;
        }
        if let Some(r) = self.process.rlimits() {
            rlimits::apply(r)?;
        }
        if let Some(io) = self.process.io_priority() {
            let class: i64 = match io.class() {
                oci_spec::runtime::IOPriorityClass::IoprioClassRt => 1,
                oci_spec::runtime::IOPriorityClass::IoprioClassBe => 2,
                oci_spec::runtime::IOPriorityClass::IoprioClassIdle => 3,
            };
            // SAFETY: ioprio_set(IOPRIO_WHO_PROCESS, self, prio) takes integers.
            let r = unsafe { libc::syscall(libc::SYS_ioprio_set, 1, 0, (class << 13) | io.priority()) };
            if r < 0 {
                return Err(LinuxError::sys("cannot set process.ioPriority", Errno::last()));
            }
        }
        if !self.labels.is_empty() {
            self.labels.apply(Path::new("/proc/self/attr"))?;
        }
        // Before any seccomp filter: profiles may not allow close_range.
        close_inherited(self.first_private_fd)?;
        let nnp = self.nnp();
        if nnp {
            prctl::set_no_new_privs().map_err(errno("cannot set no_new_privs"))?;
        }
        // Without no_new_privs a filter can only be loaded while we still
        // hold CAP_SYS_ADMIN, i.e. before the capabilities are dropped.
        if let (Some(f), false) = (&self.seccomp, nnp) {
            self.load_seccomp(f, chan)?;
        }
        if let Some(c) = &self.caps {
            capabilities::drop_bounding(c)?;
            prctl::set_keepcaps(true).map_err(errno("prctl(PR_SET_KEEPCAPS)"))?;
        }
        let setgroups = !in_userns || setgroups_allowed();
        user::switch(self.process.user(), setgroups)?;
        if let Some(c) = &self.caps {
            prctl::set_keepcaps(false).map_err(errno("prctl(PR_SET_KEEPCAPS)"))?;
            capabilities::apply(c)?;
        }
        let program = resolve_program(&self.args, &self.env, self.process.cwd())?;
        if let Err(e) = nix::unistd::chdir(self.process.cwd()) {
            return Err(LinuxError::sys(format!("cannot enter process.cwd {}", self.process.cwd().display()), e));
        }
        // A listener must get its fd while the parent still listens: such
        // a filter cannot wait for execve.
        if let (Some(f), true) = (&self.seccomp, nnp) {
            if f.notify.is_some() {
                self.load_seccomp(f, chan)?;
            }
        }
        reset_signals();
        Ok(program)
    }

    fn load_seccomp(&self, f: &Filter, chan: &Channel) -> Result<(), LinuxError> {
        let fd = f.load().map_err(|e| LinuxError::sys("cannot load the seccomp filter", e))?;
        if let Some(fd) = fd {
            send_listener_fd(chan, &fd)?;
        }
        Ok(())
    }

    /// The last steps: a no_new_privs filter, then execve.
    pub fn exec(&self, program: &CString) -> Result<Infallible, LinuxError> {
        if let (Some(f), true) = (&self.seccomp, self.nnp()) {
            if f.notify.is_none() {
                // As late as possible: the filter then constrains the
                // workload only.
                f.load().map_err(|e| LinuxError::sys("cannot load the seccomp filter", e))?;
            }
        }
        let e = nix::unistd::execve(program, &self.args, &self.env).unwrap_err();
        Err(LinuxError::sys(format!("exec {program:?}"), e))
    }
}

fn send_listener_fd(chan: &Channel, fd: &OwnedFd) -> Result<(), LinuxError> {
    chan.send(&ToParent::SeccompListener, Some(fd.as_raw_fd()))
        .map_err(|e| LinuxError::sys("cannot pass the seccomp listener fd to the runtime", e))
}

/// Whether setgroups(2) is allowed in our user namespace.
fn setgroups_allowed() -> bool {
    std::fs::read_to_string("/proc/self/setgroups").map(|s| s.trim() == "allow").unwrap_or(true)
}

/// Finds args[0] the way runc does: as given when it has a slash,
/// otherwise along the process's PATH. The wording of the errors is
/// runc's (Go's lower-case errno texts included), which podman and docker
/// match to report exit codes 127 and 126.
pub fn resolve_program(args: &[CString], env: &[CString], cwd: &Path) -> Result<CString, LinuxError> {
    let arg0 = args.first().map(|a| a.to_bytes()).unwrap_or_default();
    let name = String::from_utf8_lossy(arg0).into_owned();
    let check = |p: &Path| -> Result<(), Errno> {
        let md = std::fs::metadata(p).map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(libc::ENOENT)))?;
        if md.is_dir() {
            return Err(Errno::EACCES);
        }
        nix::unistd::access(p, nix::unistd::AccessFlags::X_OK)
    };
    let program = |msg: String, errno: Errno| LinuxError::Program { msg, errno };
    if arg0.contains(&b'/') {
        let p = if arg0.starts_with(b"/") {
            PathBuf::from(std::ffi::OsStr::from_bytes(arg0))
        } else {
            cwd.join(std::ffi::OsStr::from_bytes(arg0))
        };
        return match check(&p) {
            Ok(()) => Ok(CString::new(p.as_os_str().as_bytes()).unwrap_or_default()),
            Err(Errno::ENOENT) => {
                Err(program(format!("exec: {name:?}: stat {}: no such file or directory", p.display()), Errno::ENOENT))
            }
            Err(Errno::EACCES) => Err(program(format!("exec: {name:?}: permission denied"), Errno::EACCES)),
            Err(e) => Err(program(format!("exec: {name:?}: {}", e.desc().to_lowercase()), e)),
        };
    }
    let path_var = env
        .iter()
        .find_map(|e| e.to_bytes().strip_prefix(b"PATH=").map(|p| String::from_utf8_lossy(p).into_owned()))
        .unwrap_or_else(|| "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
    let mut denied = None;
    for dir in path_var.split(':') {
        let dir = if dir.is_empty() { "." } else { dir };
        let p = Path::new(dir).join(&name);
        match check(&p) {
            Ok(()) => return Ok(CString::new(p.as_os_str().as_bytes()).unwrap_or_default()),
            Err(Errno::EACCES) => denied = Some(p),
            Err(_) => {}
        }
    }
    match denied {
        Some(p) => Err(program(format!("exec: {name:?}: permission denied ({})", p.display()), Errno::EACCES)),
        None => Err(program(format!("exec: {name:?}: executable file not found in $PATH"), Errno::ENOENT)),
    }
}

/// Marks every fd from `first` up close-on-exec (CVE-2024-21626: no host
/// fd, such as a directory of ours, may survive into the workload).
pub fn close_inherited(first: u32) -> Result<(), LinuxError> {
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only changes fd flags.
    let r = unsafe { libc::syscall(libc::SYS_close_range, first, u32::MAX, libc::CLOSE_RANGE_CLOEXEC) };
    if r == 0 {
        return Ok(());
    }
    // Older kernels: walk the open fds instead.
    let fds: Vec<i32> = std::fs::read_dir("/proc/self/fd")
        .map_err(|e| LinuxError::io("cannot list open fds", e))?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|fd| *fd >= first as i32)
        .collect();
    for fd in fds {
        // SAFETY: F_SETFD on a descriptor number; harmless if it is closed.
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    }
    Ok(())
}

/// Default dispositions and an empty mask: the workload must not inherit
/// amphi's ignored SIGPIPE or its blocked signals.
pub fn reset_signals() {
    for sig in 1..=64 {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP || (32..=33).contains(&sig) {
            continue;
        }
        // SAFETY: resetting a disposition to SIG_DFL is always sound.
        unsafe { libc::signal(sig, libc::SIG_DFL) };
    }
    let empty = nix::sys::signal::SigSet::empty();
    let _ = nix::sys::signal::pthread_sigmask(nix::sys::signal::SigmaskHow::SIG_SETMASK, Some(&empty), None);
}

/// The exit code of a child that failed: the conventional "cannot be
/// executed / not found" codes for exec failures, 1 for the rest.
pub fn failure_code(e: &LinuxError) -> i32 {
    match e {
        LinuxError::Program { errno: Errno::ENOENT, .. } => 127,
        LinuxError::Program { .. } => 126,
        LinuxError::Sys { errno: Errno::ENOENT, what } if what.starts_with("exec") => 127,
        LinuxError::Sys { what, .. } if what.starts_with("exec") => 126,
        _ => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn programs_are_found_like_runc_finds_them() {
        let env = [CString::new("PATH=/nonexistent:/bin:/usr/bin").unwrap()];
        let p = resolve_program(&[CString::new("sh").unwrap()], &env, Path::new("/")).unwrap();
        assert!(p.to_bytes().ends_with(b"/sh"), "{p:?}");
        let e = resolve_program(&[CString::new("no-such-program").unwrap()], &env, Path::new("/")).unwrap_err();
        assert!(e.to_string().contains("executable file not found in $PATH"), "{e}");
        assert_eq!(failure_code(&e), 127);
        let e = resolve_program(&[CString::new("/etc").unwrap()], &env, Path::new("/")).unwrap_err();
        assert_eq!(failure_code(&e), 126);
        assert_eq!(e.to_string(), "exec: \"/etc\": permission denied");
        // runc's wording, which docker matches (case and all) for exit code 127.
        let e = resolve_program(&[CString::new("/no/such").unwrap()], &env, Path::new("/")).unwrap_err();
        assert_eq!(e.to_string(), "exec: \"/no/such\": stat /no/such: no such file or directory");
        assert_eq!(failure_code(&e), 127);
    }

    #[test]
    fn the_plan_fills_home_and_converts_args() {
        let p: Process =
            serde_json::from_str(r#"{"args":["sh","-c","x"],"env":["PATH=/bin"],"cwd":"/","user":{"uid":7,"gid":7}}"#)
                .unwrap();
        let plan = ProcessPlan::new(&p, None, || Some("u:x:7:7::/home/u:/bin/sh\n".into()), 3).unwrap();
        assert_eq!(plan.args.len(), 3);
        assert_eq!(plan.env[1].to_str().unwrap(), "HOME=/home/u");
        let bad: Process = serde_json::from_str(r#"{"args":["a\u0000b"],"cwd":"/","user":{}}"#).unwrap();
        assert!(ProcessPlan::new(&bad, None, || None, 3).unwrap_err().to_string().contains("NUL"));
    }
}
