//! Which namespaces a container gets, and in which order they are made.
//!
//! Most containers only ask for new namespaces: one clone(2) with all the
//! flags makes them at once (the fast path). Joining a namespace by path
//! needs an order clone cannot give (join first, then make the user
//! namespace, then the rest owned by it, then fork into a new pid
//! namespace), so such containers take a two-step path through an
//! intermediate process.

use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;

use nix::errno::Errno;
use nix::sched::CloneFlags;
use oci_spec::runtime::{LinuxNamespace, LinuxNamespaceType};

use super::LinuxError;

/// The namespace setup derived from the spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamespacePlan {
    /// New namespaces made by clone(2) (fast path) or unshare(2).
    pub new: CloneFlags,
    /// A new cgroup namespace: unshared only once the init sits in its
    /// cgroup, so that the namespace is rooted there.
    pub new_cgroup: bool,
    /// A new time namespace (unshare only; entered at exec).
    pub new_time: bool,
    /// Namespaces joined by path, user first.
    pub join: Vec<(LinuxNamespaceType, PathBuf)>,
}

impl NamespacePlan {
    pub fn from_spec(list: &[LinuxNamespace]) -> NamespacePlan {
        let mut new = CloneFlags::empty();
        let mut new_cgroup = false;
        let mut new_time = false;
        let mut join = Vec::new();
        for ns in list {
            match ns.path() {
                Some(p) => join.push((ns.typ(), p.clone())),
                None => match ns.typ() {
                    LinuxNamespaceType::Cgroup => new_cgroup = true,
                    LinuxNamespaceType::Time => new_time = true,
                    t => new |= flag(t),
                },
            }
        }
        // Joining a user namespace first gives the privileges the other
        // joins need inside it.
        join.sort_by_key(|(t, _)| *t != LinuxNamespaceType::User);
        NamespacePlan { new, new_cgroup, new_time, join }
    }

    /// Whether one clone(2) with `new` can make everything (no joins).
    pub fn fast_path(&self) -> bool {
        self.join.is_empty()
    }

    pub fn new_user(&self) -> bool {
        self.new.contains(CloneFlags::CLONE_NEWUSER)
    }

    pub fn has(&self, t: LinuxNamespaceType) -> bool {
        match t {
            LinuxNamespaceType::Cgroup if self.new_cgroup => true,
            LinuxNamespaceType::Time if self.new_time => true,
            LinuxNamespaceType::Cgroup | LinuxNamespaceType::Time => self.joins(t),
            t => self.new.contains(flag(t)) || self.joins(t),
        }
    }

    pub fn joins(&self, t: LinuxNamespaceType) -> bool {
        self.join.iter().any(|(j, _)| *j == t)
    }

    /// In a user namespace of its own or a joined one.
    pub fn in_userns(&self) -> bool {
        self.has(LinuxNamespaceType::User)
    }
}

pub fn flag(t: LinuxNamespaceType) -> CloneFlags {
    match t {
        LinuxNamespaceType::Mount => CloneFlags::CLONE_NEWNS,
        LinuxNamespaceType::Cgroup => CloneFlags::CLONE_NEWCGROUP,
        LinuxNamespaceType::Uts => CloneFlags::CLONE_NEWUTS,
        LinuxNamespaceType::Ipc => CloneFlags::CLONE_NEWIPC,
        LinuxNamespaceType::User => CloneFlags::CLONE_NEWUSER,
        LinuxNamespaceType::Pid => CloneFlags::CLONE_NEWPID,
        LinuxNamespaceType::Network => CloneFlags::CLONE_NEWNET,
        // CLONE_NEWTIME shares its bit with CSIGNAL in clone(2); it is only
        // ever passed to unshare(2) and setns(2).
        LinuxNamespaceType::Time => CloneFlags::from_bits_retain(libc::CLONE_NEWTIME),
    }
}

/// Opens every namespace to join before any is joined: after joining a
/// mount namespace the other paths may no longer resolve.
pub fn open_joins(plan: &NamespacePlan) -> Result<Vec<(LinuxNamespaceType, OwnedFd)>, LinuxError> {
    plan.join
        .iter()
        .map(|(t, p)| {
            let f = std::fs::File::open(p).map_err(|e| {
                LinuxError::io(format!("cannot open {t} namespace {}: check linux.namespaces path", p.display()), e)
            })?;
            Ok((*t, OwnedFd::from(f)))
        })
        .collect()
}

pub fn setns(t: LinuxNamespaceType, fd: &OwnedFd) -> Result<(), LinuxError> {
    nix::sched::setns(fd.as_fd(), flag(t)).map_err(|e| LinuxError::sys(format!("cannot join {t} namespace"), e))
}

pub fn unshare(flags: CloneFlags, what: &str) -> Result<(), LinuxError> {
    nix::sched::unshare(flags).map_err(|e| LinuxError::sys(format!("cannot create {what} namespace"), e))
}

/// Whether this kernel has time namespaces.
pub fn time_supported() -> bool {
    std::path::Path::new("/proc/self/ns/time").exists()
}

/// Writes the uid and gid maps of a new user namespace (from the parent, in
/// the host user namespace, which may map any range).
pub fn write_id_maps(
    pid: i32,
    uid: &[oci_spec::runtime::LinuxIdMapping],
    gid: &[oci_spec::runtime::LinuxIdMapping],
) -> Result<(), LinuxError> {
    let fmt = |m: &[oci_spec::runtime::LinuxIdMapping]| {
        m.iter().map(|m| format!("{} {} {}\n", m.container_id(), m.host_id(), m.size())).collect::<String>()
    };
    for (file, text) in [("uid_map", fmt(uid)), ("gid_map", fmt(gid))] {
        let path = format!("/proc/{pid}/{file}");
        std::fs::write(&path, text.as_bytes())
            .map_err(|e| LinuxError::io(format!("cannot write {path}: check linux.uidMappings/gidMappings"), e))?;
    }
    Ok(())
}

/// Brings up the loopback interface of a new network namespace, as runc
/// does: a container with its own network stack still expects 127.0.0.1.
pub fn loopback_up() -> Result<(), Errno> {
    // SAFETY: socket(2) with constant arguments.
    let s = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if s < 0 {
        return Err(Errno::last());
    }
    // SAFETY: ifreq is plain old data; zeroed is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, c) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *d = *c as libc::c_char;
    }
    // The union field SIOCSIFFLAGS reads is ifru_flags.
    req.ifr_ifru.ifru_flags = (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
    // SAFETY: a valid socket and a valid ifreq for the duration of the call.
    let r = unsafe { libc::ioctl(s, libc::SIOCSIFFLAGS, &req) };
    let e = Errno::last();
    // SAFETY: closing the socket we opened above.
    unsafe { libc::close(s) };
    if r < 0 {
        Err(e)
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ns(json: &str) -> Vec<LinuxNamespace> {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn new_namespaces_take_the_fast_path() {
        let p = NamespacePlan::from_spec(&ns(
            r#"[{"type":"pid"},{"type":"network"},{"type":"ipc"},{"type":"uts"},{"type":"mount"},{"type":"cgroup"}]"#,
        ));
        assert!(p.fast_path());
        assert!(p.new_cgroup);
        assert!(!p.new.contains(CloneFlags::CLONE_NEWCGROUP), "cgroupns is unshared later");
        assert!(p.new.contains(CloneFlags::CLONE_NEWPID | CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWNET));
        assert!(!p.in_userns());
    }

    #[test]
    fn joins_put_user_first_and_leave_the_fast_path() {
        let p = NamespacePlan::from_spec(&ns(
            r#"[{"type":"network","path":"/proc/1/ns/net"},{"type":"user","path":"/proc/1/ns/user"},{"type":"pid"}]"#,
        ));
        assert!(!p.fast_path());
        assert_eq!(p.join[0].0, LinuxNamespaceType::User);
        assert!(p.in_userns() && p.has(LinuxNamespaceType::Network) && p.has(LinuxNamespaceType::Pid));
        assert!(!p.has(LinuxNamespaceType::Ipc));
    }

    #[test]
    fn time_is_never_a_clone_flag() {
        let p = NamespacePlan::from_spec(&ns(r#"[{"type":"time"}]"#));
        assert!(p.new_time && p.new.is_empty());
        assert!(p.has(LinuxNamespaceType::Time));
    }
}
