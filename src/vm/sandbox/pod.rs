//! VM pods: one microVM per Kubernetes pod. The pod's sandbox (the pause
//! container) boots the VM as any VM container does; every other container
//! of the pod (a *member*) runs inside that VM instead of booting its own.
//!
//! - [`role`] reads the CRI's annotations: a sandbox, a member (and of
//!   which sandbox), or a lone container.
//! - [`find_sandbox`] finds the member's sandbox in the same `--root` and
//!   refuses, with what to do instead, a sandbox that is missing, not a
//!   VM, not running or paused.
//! - [`decide_joins`] turns the member's namespace paths (the CRI names the
//!   sandbox's, `/proc/<sandbox pid>/ns/ipc`, which for a VM container is
//!   its VMM) into the sandbox's namespaces *in the guest*: a path that is
//!   the sandbox's (same namespace inode; the VMM has network, IPC and UTS
//!   namespaces of its own, `vmm_process`) is joined there, anything else
//!   is refused, as a host namespace cannot cross the VM boundary.
//! - [`attach`] brings the member's rootfs and bind-mount sources into the
//!   running VM: they are mounted into the sandbox VMM's own virtio-fs
//!   share, under `pod/<member id>/`, from inside the VMM's mount
//!   namespace. That namespace is private (`vm::jail::root`), so a mount
//!   made on the host would not reach it; a detached mount tree
//!   (`open_tree(OPEN_TREE_CLONE)`, Linux 5.2) taken on the host is moved
//!   into it by a short-lived child that joined it (`setns`). Nothing is
//!   mounted on the host, and the mounts go with the VMM. The VMM's
//!   passthrough filesystem resolves names one component at a time with
//!   `openat`, which crosses mount points, so the guest sees the new
//!   directories as soon as they are there.
//! - [`detach`] undoes that when the member is deleted while the VM runs.

use std::collections::HashMap;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use oci_spec::runtime::Spec;
use serde::{Deserialize, Serialize};

use super::plan::ShareEntry;
use crate::agent::container::JoinNamespace;
use crate::container::process;
use crate::container::state::State;
use crate::container::store::{ContainerDir, Store, StoreError};
use crate::container::ContainerId;
use crate::spec::Isolation;

/// The CRI's annotation saying what a container is to the pod.
pub const ANNOTATION_CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
/// The CRI's annotation naming the pod's sandbox container.
pub const ANNOTATION_SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";
/// The directory of the VMM's share that holds the members' trees.
pub const POD_DIR: &str = "pod";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PodError {
    #[error("annotation {key}={value:?}: {problem}")]
    Annotation { key: &'static str, value: String, problem: String },
    #[error("the pod's sandbox {sandbox:?} {problem}")]
    Sandbox { sandbox: String, problem: String },
    #[error(
        "linux.namespaces asks to join the {kind} namespace {path}, which is not the pod sandbox {sandbox:?}'s: in a \
         VM pod a container runs in the sandbox's VM and can share only its sandbox's network, IPC, UTS and PID \
         namespaces; drop the path (a new namespace) or give the sandbox's"
    )]
    ForeignNamespace { kind: String, path: PathBuf, sandbox: String },
    #[error("cannot read the namespace {}: {problem}", path.display())]
    Namespace { path: PathBuf, problem: String },
    #[error("{0}")]
    Unsupported(String),
    #[error("cannot {what}: {message}")]
    Mount { what: String, message: String },
}

/// What a container is to its pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// Not part of a CRI pod: its own VM.
    Lone,
    /// The pod's sandbox: it boots the VM.
    Sandbox,
    /// A container of the pod: it runs in the sandbox's VM.
    Member { sandbox: String },
}

/// The role the CRI's annotations give a container.
pub fn role(annotations: Option<&HashMap<String, String>>) -> Result<Role, PodError> {
    let get = |k: &str| annotations.and_then(|a| a.get(k)).map(String::as_str);
    match get(ANNOTATION_CONTAINER_TYPE) {
        None => Ok(Role::Lone),
        Some("sandbox") => Ok(Role::Sandbox),
        Some("container") => match get(ANNOTATION_SANDBOX_ID).map(str::trim) {
            Some(s) if !s.is_empty() => {
                ContainerId::new(s).map_err(|e| PodError::Annotation {
                    key: ANNOTATION_SANDBOX_ID,
                    value: s.to_string(),
                    problem: format!("{e}: give the id of the pod's sandbox container"),
                })?;
                Ok(Role::Member { sandbox: s.to_string() })
            }
            other => Err(PodError::Annotation {
                key: ANNOTATION_SANDBOX_ID,
                value: other.unwrap_or_default().to_string(),
                problem: format!(
                    "a container of type \"container\" needs the id of its pod's sandbox here; set it or drop \
                     {ANNOTATION_CONTAINER_TYPE}"
                ),
            }),
        },
        Some(other) => Err(PodError::Annotation {
            key: ANNOTATION_CONTAINER_TYPE,
            value: other.to_string(),
            problem: "use \"sandbox\" or \"container\"".into(),
        }),
    }
}

/// The role of a bundle.
pub fn role_of(spec: &Spec) -> Result<Role, PodError> {
    role(spec.annotations().as_ref())
}

/// What a member's state keeps of its pod.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberState {
    /// The sandbox container's id.
    pub sandbox: String,
    /// The sandbox's VMM (its pid in the sandbox's state) and the start
    /// time that tells it from a later process with the same pid.
    pub vmm_pid: i32,
    pub vmm_start_time: u64,
    /// The entries mounted under `pod/<id>/` of the VMM's share.
    pub entries: Vec<String>,
}

/// The sandbox as a member finds it.
pub struct FoundSandbox {
    /// Held for the member's whole `create`: the sandbox cannot be deleted
    /// meanwhile.
    pub dir: ContainerDir,
    pub state: State,
}

/// Finds `sandbox` in the store of the member's state dir `member_dir`
/// (the same `--root`) and checks that a member can join it. The member's
/// own lock is held already; the sandbox's is taken second.
pub fn find_sandbox(member_dir: &Path, sandbox: &str) -> Result<FoundSandbox, PodError> {
    let bad = |problem: String| PodError::Sandbox { sandbox: sandbox.to_string(), problem };
    let root = member_dir.parent().unwrap_or(Path::new("/"));
    let id = ContainerId::new(sandbox).map_err(|e| bad(format!("is not a container id ({e})")))?;
    let dir = match Store::new(root).open(&id, true) {
        Ok(d) => d,
        Err(StoreError::NotFound(_)) => {
            return Err(bad(format!(
                "does not exist in {}: create the sandbox first, with the same --root",
                root.display()
            )))
        }
        Err(e) => return Err(bad(format!("cannot be opened: {}", crate::logging::chain(&e)))),
    };
    let state = match dir.read_state() {
        Ok(Some(s)) => s,
        Ok(None) => return Err(bad("is still being created: create its containers once it exists".into())),
        Err(e) => return Err(bad(format!("has a state that cannot be read: {}", crate::logging::chain(&e)))),
    };
    check_sandbox(&state).map_err(bad)?;
    Ok(FoundSandbox { dir, state })
}

/// Whether a member can join the sandbox recorded in `state`; the problem
/// otherwise, with what to do.
pub fn check_sandbox(state: &State) -> Result<(), String> {
    if state.isolation != Isolation::Vm {
        return Err(format!(
            "runs in {} isolation, not in a VM: create the pod's sandbox and its containers in the same isolation",
            state.isolation
        ));
    }
    let vs = super::vm_state(state);
    if vs.pod.is_some() {
        return Err("is itself a container of a pod, not a sandbox: name the pod's sandbox".into());
    }
    if vs.vsock.as_os_str().is_empty() {
        return Err("was created by an older amphi without what a VM pod needs: recreate the pod".into());
    }
    if process::liveness(state.pid, state.pid_start_time) != process::Liveness::Alive {
        return Err("is not running (its VM is gone): recreate the pod".into());
    }
    if state.paused {
        return Err("is paused: resume it before creating containers in it".into());
    }
    Ok(())
}

/// The inode of a namespace file.
pub fn namespace_inode(path: &Path) -> Result<u64, PodError> {
    std::fs::metadata(path)
        .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
        .map_err(|e| PodError::Namespace { path: path.to_path_buf(), problem: e.to_string() })
}

/// Which namespaces a member shares with its sandbox: those whose path in
/// its spec is the same namespace as the sandbox VMM's (`sandbox_ns`
/// gives the inode of the sandbox's namespace of a kind). Their paths are
/// removed from `config` (the agent puts the guest's in); any other path
/// is refused.
pub fn decide_joins(
    config: &mut serde_json::Value,
    sandbox: &str,
    inode: &mut dyn FnMut(&Path) -> Result<u64, PodError>,
    sandbox_ns: &mut dyn FnMut(JoinNamespace) -> Result<u64, PodError>,
) -> Result<Vec<JoinNamespace>, PodError> {
    let mut joins = Vec::new();
    let Some(nss) = config["linux"]["namespaces"].as_array_mut() else { return Ok(joins) };
    for n in nss.iter_mut() {
        let Some(path) = n.get("path").and_then(|p| p.as_str()).filter(|p| !p.is_empty()).map(PathBuf::from) else {
            continue;
        };
        let kind = n.get("type").and_then(|t| t.as_str()).unwrap_or_default().to_string();
        let foreign = || PodError::ForeignNamespace { kind: kind.clone(), path: path.clone(), sandbox: sandbox.into() };
        let Some(k) = JoinNamespace::from_oci_type(&kind) else { return Err(foreign()) };
        if inode(&path)? != sandbox_ns(k)? {
            return Err(foreign());
        }
        if let Some(o) = n.as_object_mut() {
            o.remove("path");
        }
        if !joins.contains(&k) {
            joins.push(k);
        }
    }
    Ok(joins)
}

/// The share entries of a member, moved under `pod/<id>/` of the share,
/// and its guest config pointed there.
pub fn place_under_pod(id: &str, entries: &mut [ShareEntry], config: &mut serde_json::Value, share: &Path) {
    let prefix = Path::new(POD_DIR).join(id);
    let moved = |p: &str| -> Option<String> {
        let rest = Path::new(p).strip_prefix(share).ok()?;
        Some(share.join(&prefix).join(rest).display().to_string())
    };
    if let Some(p) = config["root"]["path"].as_str().and_then(moved) {
        config["root"]["path"] = serde_json::json!(p);
    }
    if let Some(ms) = config["mounts"].as_array_mut() {
        for m in ms {
            if let Some(p) = m["source"].as_str().and_then(moved) {
                m["source"] = serde_json::json!(p);
            }
        }
    }
    for e in entries {
        e.name = prefix.join(&e.name).display().to_string();
    }
}

const OPEN_TREE_CLONE: libc::c_uint = 1;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;

/// A detached copy of the mount at `source` (and of those below it when
/// `recursive`), as a bind mount would make.
fn clone_tree(source: &Path, recursive: bool) -> Result<OwnedFd, PodError> {
    let c = std::ffi::CString::new(source.as_os_str().as_bytes())
        .map_err(|_| PodError::Mount { what: format!("bind {}", source.display()), message: "NUL in path".into() })?;
    let mut flags = OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint;
    if recursive {
        flags |= libc::AT_RECURSIVE as libc::c_uint;
    }
    // SAFETY: open_tree reads the NUL-terminated path and returns a new
    // descriptor or -1; it touches no memory of ours otherwise.
    let fd = unsafe { libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, c.as_ptr(), flags) };
    if fd < 0 {
        let e = std::io::Error::last_os_error();
        let hint = if e.raw_os_error() == Some(libc::ENOSYS) { " (VM pods need Linux 5.2 or later)" } else { "" };
        return Err(PodError::Mount {
            what: format!("take a bind mount of {}", source.display()),
            message: format!("{e}{hint}"),
        });
    }
    // SAFETY: the descriptor was just returned to us and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn share_target(name: &str) -> PathBuf {
    Path::new(crate::vm::jail::root::SHARE).join(name)
}

/// Runs `f` in a child that joined the mount namespace of the sandbox's
/// VMM (`vmm_pid`, checked against `start_time` after the namespace was
/// opened); its error comes back through a pipe.
fn in_vmm_namespace(
    vmm_pid: i32,
    start_time: u64,
    what: &str,
    f: impl FnOnce() -> Result<(), String>,
) -> Result<(), PodError> {
    let fail = |message: String| PodError::Mount { what: what.to_string(), message };
    let ns = std::fs::File::open(format!("/proc/{vmm_pid}/ns/mnt"))
        .map_err(|e| fail(format!("the VMM's mount namespace: {e}")))?;
    // Its root, the directory it pivoted into: joining the namespace
    // alone starts at the namespace's root, which need not be it.
    let root =
        std::fs::File::open(format!("/proc/{vmm_pid}/root")).map_err(|e| fail(format!("the VMM's root: {e}")))?;
    if process::liveness(vmm_pid, start_time) != process::Liveness::Alive {
        return Err(fail("the pod's VMM is gone".into()));
    }
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| fail(format!("pipe: {e}")))?;
    let (r_raw, w_raw) = (r.as_raw_fd(), w.as_raw_fd());
    let pid = crate::linux::process::clone_child(nix::sched::CloneFlags::empty(), None, move || {
        // SAFETY: closing the child's copy of the parent's read end.
        unsafe { libc::close(r_raw) };
        let result = nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNS)
            .map_err(|e| format!("join the VMM's mount namespace: {e}"))
            .and_then(|()| nix::unistd::fchdir(&root).map_err(|e| format!("enter the VMM's root: {e}")))
            .and_then(|()| nix::unistd::chroot(".").map_err(|e| format!("enter the VMM's root: {e}")))
            .and_then(|()| f());
        match result {
            Ok(()) => 0,
            Err(m) => {
                // SAFETY: `w_raw` is this child's copy of the pipe's write end.
                let w = unsafe { std::os::fd::BorrowedFd::borrow_raw(w_raw) };
                let _ = nix::unistd::write(w, m.as_bytes());
                1
            }
        }
    })
    .map_err(|e| fail(format!("fork: {e}")))?;
    drop(w);
    let mut message = String::new();
    let _ = std::fs::File::from(r).read_to_string(&mut message);
    let status = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None);
    match status {
        Ok(nix::sys::wait::WaitStatus::Exited(_, 0)) => Ok(()),
        _ if !message.is_empty() => Err(fail(message)),
        s => Err(fail(format!("the helper ended with {s:?}"))),
    }
}

/// Mounts a member's share entries (already placed under `pod/<id>/`) into
/// the share of the running VMM. On error nothing of it stays mounted.
pub fn attach(vmm_pid: i32, start_time: u64, entries: &[ShareEntry]) -> Result<(), PodError> {
    let mut trees = Vec::with_capacity(entries.len());
    for e in entries {
        let is_dir = std::fs::metadata(&e.source).map(|m| m.is_dir()).unwrap_or(false);
        trees.push((clone_tree(&e.source, e.recursive)?, is_dir));
    }
    let names: Vec<String> = entries.iter().map(|e| e.name.clone()).collect();
    let plan: Vec<(String, bool, bool, OwnedFd)> =
        entries.iter().zip(trees).map(|(e, (fd, is_dir))| (e.name.clone(), is_dir, e.read_only, fd)).collect();
    in_vmm_namespace(vmm_pid, start_time, "mount the container's files into the pod's VM", move || {
        for (i, (name, is_dir, read_only, fd)) in plan.iter().enumerate() {
            if let Err(m) = mount_one(name, *is_dir, *read_only, fd) {
                unmount_all(&names[..i]);
                return Err(m);
            }
        }
        Ok(())
    })
}

fn mount_one(name: &str, is_dir: bool, read_only: bool, fd: &OwnedFd) -> Result<(), String> {
    use nix::mount::{mount, MsFlags};
    let target = share_target(name);
    if let Some(parent) = target.parent() {
        std::fs::create_dir_all(parent).map_err(|e| format!("create {}: {e}", parent.display()))?;
    }
    let made = if is_dir { std::fs::create_dir(&target) } else { std::fs::write(&target, b"") };
    made.map_err(|e| format!("create {}: {e}", target.display()))?;
    let c = std::ffi::CString::new(target.as_os_str().as_bytes()).map_err(|_| "NUL in path".to_string())?;
    let empty = c"";
    // SAFETY: move_mount reads two NUL-terminated paths; `fd` is a
    // detached tree from open_tree that we own.
    let r = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            fd.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_FDCWD,
            c.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    if r < 0 {
        return Err(format!("mount onto {}: {}", target.display(), std::io::Error::last_os_error()));
    }
    if read_only {
        // Made here, in the namespace the mount lives in: a read-only
        // remount of the top mount, as the VMM's own share entries get.
        let flags = MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY;
        if let Err(e) = mount(None::<&str>, &target, None::<&str>, flags, None::<&str>) {
            let _ = nix::mount::umount2(&target, nix::mount::MntFlags::MNT_DETACH);
            return Err(format!("make {} read-only: {e}", target.display()));
        }
    }
    Ok(())
}

/// Unmounts entries and removes what was made for them, one level at a
/// time and never recursively: a directory that still had a mount on it
/// must keep its files.
fn unmount_all(names: &[String]) -> Vec<String> {
    let mut problems = Vec::new();
    for name in names.iter().rev() {
        let target = share_target(name);
        match nix::mount::umount2(&target, nix::mount::MntFlags::MNT_DETACH) {
            Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
            Err(e) => {
                problems.push(format!("unmount {}: {e}", target.display()));
                continue;
            }
        }
        let _ = std::fs::remove_dir(&target).or_else(|_| std::fs::remove_file(&target));
        let pod = Path::new(crate::vm::jail::root::SHARE).join(POD_DIR);
        let mut dir = target.parent();
        while let Some(d) = dir.filter(|d| d.starts_with(&pod) && *d != pod) {
            if std::fs::remove_dir(d).is_err() {
                break;
            }
            dir = d.parent();
        }
    }
    problems
}

/// Unmounts a member's entries from the VMM's share (the VM keeps
/// running). A VMM that is gone took them with it.
pub fn detach(member: &MemberState) -> Result<(), PodError> {
    if member.entries.is_empty() || process::liveness(member.vmm_pid, member.vmm_start_time) != process::Liveness::Alive
    {
        return Ok(());
    }
    let names = member.entries.clone();
    in_vmm_namespace(
        member.vmm_pid,
        member.vmm_start_time,
        "unmount the container's files from the pod's VM",
        move || {
            let problems = unmount_all(&names);
            if problems.is_empty() {
                Ok(())
            } else {
                Err(problems.join("; "))
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ann(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn roles_come_from_the_cri_annotations() {
        assert_eq!(role(None).unwrap(), Role::Lone);
        assert_eq!(role(Some(&ann(&[("other", "x")]))).unwrap(), Role::Lone);
        let sbx = ann(&[(ANNOTATION_CONTAINER_TYPE, "sandbox"), (ANNOTATION_SANDBOX_ID, "pod1")]);
        assert_eq!(role(Some(&sbx)).unwrap(), Role::Sandbox);
        let member = ann(&[(ANNOTATION_CONTAINER_TYPE, "container"), (ANNOTATION_SANDBOX_ID, "pod1")]);
        assert_eq!(role(Some(&member)).unwrap(), Role::Member { sandbox: "pod1".into() });
        let e = role(Some(&ann(&[(ANNOTATION_CONTAINER_TYPE, "container")]))).unwrap_err();
        assert!(e.to_string().contains(ANNOTATION_SANDBOX_ID), "{e}");
        let e =
            role(Some(&ann(&[(ANNOTATION_CONTAINER_TYPE, "container"), (ANNOTATION_SANDBOX_ID, "../x")]))).unwrap_err();
        assert!(e.to_string().contains("id of the pod's sandbox"), "{e}");
        let e = role(Some(&ann(&[(ANNOTATION_CONTAINER_TYPE, "pod")]))).unwrap_err();
        assert!(e.to_string().contains("\"sandbox\" or \"container\""), "{e}");
    }

    fn inodes(p: &Path) -> Result<u64, PodError> {
        Ok(match p.to_str().unwrap() {
            "/proc/10/ns/net" | "/var/run/netns/cni-1" => 1,
            "/proc/10/ns/ipc" => 2,
            "/proc/10/ns/uts" => 3,
            "/proc/1/ns/ipc" => 20,
            _ => return Err(PodError::Namespace { path: p.into(), problem: "no such file".into() }),
        })
    }

    fn sandbox_ns(k: JoinNamespace) -> Result<u64, PodError> {
        Ok(match k {
            JoinNamespace::Network => 1,
            JoinNamespace::Ipc => 2,
            JoinNamespace::Uts => 3,
            JoinNamespace::Pid => 4,
        })
    }

    #[test]
    fn a_member_joins_what_is_its_sandboxs_and_nothing_else() {
        let mut config = json!({"linux": {"namespaces": [
            {"type": "mount"}, {"type": "pid"},
            {"type": "network", "path": "/var/run/netns/cni-1"},
            {"type": "ipc", "path": "/proc/10/ns/ipc"},
            {"type": "uts", "path": "/proc/10/ns/uts"}
        ]}});
        let joins = decide_joins(&mut config, "pod1", &mut inodes, &mut sandbox_ns).unwrap();
        assert_eq!(joins, vec![JoinNamespace::Network, JoinNamespace::Ipc, JoinNamespace::Uts]);
        assert_eq!(
            config["linux"]["namespaces"],
            json!([{"type": "mount"}, {"type": "pid"}, {"type": "network"}, {"type": "ipc"}, {"type": "uts"}])
        );

        // The host's IPC namespace is not the sandbox's.
        let mut config = json!({"linux": {"namespaces": [{"type": "ipc", "path": "/proc/1/ns/ipc"}]}});
        let e = decide_joins(&mut config, "pod1", &mut inodes, &mut sandbox_ns).unwrap_err();
        assert!(matches!(e, PodError::ForeignNamespace { .. }), "{e}");
        assert!(e.to_string().contains("pod1") && e.to_string().contains("/proc/1/ns/ipc"), "{e}");
        // A kind that is never shared with a sandbox.
        let mut config = json!({"linux": {"namespaces": [{"type": "mount", "path": "/proc/10/ns/mnt"}]}});
        let e = decide_joins(&mut config, "pod1", &mut inodes, &mut sandbox_ns).unwrap_err();
        assert!(matches!(e, PodError::ForeignNamespace { .. }), "{e}");
        // A path that does not exist.
        let mut config = json!({"linux": {"namespaces": [{"type": "uts", "path": "/nope"}]}});
        let e = decide_joins(&mut config, "pod1", &mut inodes, &mut sandbox_ns).unwrap_err();
        assert!(e.to_string().contains("/nope"), "{e}");
        // No namespaces at all: nothing to join.
        let mut config = json!({});
        assert!(decide_joins(&mut config, "pod1", &mut inodes, &mut sandbox_ns).unwrap().is_empty());
    }

    #[test]
    fn a_members_files_go_under_its_own_directory_of_the_share() {
        let share = Path::new("/run/amphi/fs/amphi");
        let mut entries = vec![
            ShareEntry { name: "rootfs".into(), source: "/b/rootfs".into(), read_only: false, recursive: true },
            ShareEntry { name: "m2/etc".into(), source: "/etc".into(), read_only: true, recursive: false },
        ];
        let mut config = json!({
            "root": {"path": "/run/amphi/fs/amphi/rootfs"},
            "mounts": [{"source": "proc"}, {"source": "/elsewhere"}, {"source": "/run/amphi/fs/amphi/m2/etc"}]
        });
        place_under_pod("c1", &mut entries, &mut config, share);
        assert_eq!(entries[0].name, "pod/c1/rootfs");
        assert_eq!(entries[1].name, "pod/c1/m2/etc");
        assert_eq!(config["root"]["path"], "/run/amphi/fs/amphi/pod/c1/rootfs");
        assert_eq!(config["mounts"][0]["source"], "proc");
        assert_eq!(config["mounts"][1]["source"], "/elsewhere");
        assert_eq!(config["mounts"][2]["source"], "/run/amphi/fs/amphi/pod/c1/m2/etc");
    }

    fn vm_state_of(pid: i32, start: u64, isolation: Isolation) -> State {
        let mut s = State::bare("pod1", isolation);
        s.pid = pid;
        s.pid_start_time = start;
        s.sandbox = serde_json::to_value(super::super::VmState {
            vsock: "/x/vmm/vsock".into(),
            console_log: "/x/vmm/console.log".into(),
            ..Default::default()
        })
        .unwrap();
        s
    }

    #[test]
    fn a_sandbox_that_cannot_take_members_is_refused_with_what_to_do() {
        let me = std::process::id() as i32;
        let (start, _) = process::stat(me).unwrap();
        // A running VM sandbox (this process stands in for its VMM).
        check_sandbox(&vm_state_of(me, start, Isolation::Vm)).unwrap();
        let e = check_sandbox(&vm_state_of(me, start, Isolation::Container)).unwrap_err();
        assert!(e.contains("not in a VM"), "{e}");
        let e = check_sandbox(&vm_state_of(me, start + 1, Isolation::Vm)).unwrap_err();
        assert!(e.contains("not running"), "{e}");
        let mut paused = vm_state_of(me, start, Isolation::Vm);
        paused.paused = true;
        assert!(check_sandbox(&paused).unwrap_err().contains("resume it"));
        let mut member = vm_state_of(me, start, Isolation::Vm);
        member.sandbox["pod"] =
            serde_json::to_value(MemberState { sandbox: "other".into(), ..Default::default() }).unwrap();
        assert!(check_sandbox(&member).unwrap_err().contains("not a sandbox"));
        let mut old = vm_state_of(me, start, Isolation::Vm);
        old.sandbox = json!({});
        assert!(check_sandbox(&old).unwrap_err().contains("older amphi"));
    }

    #[test]
    fn a_missing_sandbox_is_refused_with_what_to_do() {
        let root = tempfile::tempdir().unwrap();
        let member = root.path().join("c1");
        std::fs::create_dir(&member).unwrap();
        let e = find_sandbox(&member, "pod1").err().unwrap();
        assert!(e.to_string().contains("does not exist") && e.to_string().contains("create the sandbox first"), "{e}");
        // Its directory exists but no state yet: it is being created.
        std::fs::create_dir(root.path().join("pod1")).unwrap();
        let e = find_sandbox(&member, "pod1").err().unwrap();
        assert!(e.to_string().contains("still being created"), "{e}");
    }

    /// A stand-in for a sandbox's VMM: a child jailed in its own root and
    /// mount namespace by the VMM's own code, with a private tmpfs as its
    /// share, that waits to be killed.
    fn fake_vmm(dir: &Path, kernel: &Path) -> i32 {
        let (r, w) = nix::unistd::pipe().unwrap();
        let (dir, kernel) = (dir.to_path_buf(), kernel.to_path_buf());
        let pid = crate::linux::process::clone_child(nix::sched::CloneFlags::empty(), None, move || {
            use crate::vm::jail::root;
            root::prepare(&dir).unwrap();
            let share = root::host_path(&dir, root::SHARE);
            std::fs::create_dir_all(&share).unwrap();
            nix::mount::mount(Some("t"), &share, Some("tmpfs"), nix::mount::MsFlags::empty(), Some("size=1m")).unwrap();
            let plan =
                root::RootPlan { dir: &dir, kvm: Path::new("/dev/null"), kernel: &kernel, initrd: None, disks: &[] };
            root::enter(&plan).unwrap();
            nix::unistd::write(&w, b"r").unwrap();
            loop {
                std::thread::sleep(std::time::Duration::from_secs(1));
            }
        })
        .unwrap();
        let mut b = [0u8; 1];
        nix::unistd::read(&r, &mut b).unwrap();
        pid
    }

    /// Needs root (mount namespaces, open_tree, move_mount).
    #[test]
    #[ignore]
    fn a_members_files_reach_the_running_vmms_share_and_leave_it_again() {
        let t = tempfile::tempdir().unwrap();
        let vmm_root = t.path().join("vmm");
        std::fs::create_dir(&vmm_root).unwrap();
        let kernel = t.path().join("kernel");
        std::fs::write(&kernel, b"k").unwrap();
        let rootfs = t.path().join("rootfs");
        std::fs::create_dir_all(rootfs.join("etc")).unwrap();
        std::fs::write(rootfs.join("etc/hello"), b"from the member").unwrap();
        let vol = t.path().join("vol");
        std::fs::create_dir(&vol).unwrap();
        std::fs::write(vol.join("data"), b"volume").unwrap();

        let pid = fake_vmm(&vmm_root, &kernel);
        let (start, _) = process::stat(pid).unwrap();
        let mut entries = vec![
            ShareEntry { name: "rootfs".into(), source: rootfs.clone(), read_only: false, recursive: true },
            ShareEntry { name: "m3/vol".into(), source: vol.clone(), read_only: true, recursive: false },
        ];
        place_under_pod("c1", &mut entries, &mut json!({}), Path::new("/run/amphi/fs/amphi"));
        let result = attach(pid, start, &entries);
        let seen = Path::new("/proc").join(pid.to_string()).join("root/share/pod/c1");
        let read = |p: &str| std::fs::read_to_string(seen.join(p));
        let checks = (|| {
            result.map_err(|e| e.to_string())?;
            assert_eq!(read("rootfs/etc/hello").map_err(|e| e.to_string())?, "from the member");
            assert_eq!(read("m3/vol/data").map_err(|e| e.to_string())?, "volume");
            // Writable where the bundle says so, read-only where it says so.
            std::fs::write(seen.join("rootfs/etc/new"), b"w").map_err(|e| e.to_string())?;
            let e = std::fs::write(seen.join("m3/vol/new"), b"w").unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{e}");
            // Nothing is mounted on the host.
            let host = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
            assert!(!host.contains(t.path().to_str().unwrap()), "{host}");
            let member = MemberState {
                sandbox: "pod1".into(),
                vmm_pid: pid,
                vmm_start_time: start,
                entries: entries.iter().map(|e| e.name.clone()).collect(),
            };
            detach(&member).map_err(|e| e.to_string())?;
            assert!(!seen.exists());
            Ok::<(), String>(())
        })();
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None);
        checks.unwrap();
        // The member's files are where they were, with what it wrote.
        assert_eq!(std::fs::read(rootfs.join("etc/hello")).unwrap(), b"from the member");
        assert_eq!(std::fs::read(rootfs.join("etc/new")).unwrap(), b"w");
        assert_eq!(std::fs::read(vol.join("data")).unwrap(), b"volume");
        // A VMM that is gone: nothing to attach to, nothing to detach.
        assert!(attach(pid, start, &entries).is_err());
        let gone = MemberState {
            vmm_pid: pid,
            vmm_start_time: start,
            entries: vec!["pod/c1/rootfs".into()],
            ..Default::default()
        };
        detach(&gone).unwrap();
    }
}
