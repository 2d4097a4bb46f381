//! cgroups v1 (including hybrid hosts) and v2 for the container isolation.
//!
//! Interim implementation while the full controller set is built: it
//! places the container in its own cgroup in every mounted v1 hierarchy
//! (or the v2 tree), lists and signals its processes, and removes the
//! cgroups again. Resource limits are applied by the full module.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::rootfs::CgroupView;

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("cgroup {path}: {what}")]
    Io {
        path: PathBuf,
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cgroupsPath {0:?} is invalid: {1}")]
    BadPath(String, &'static str),
}

/// One hierarchy the container has a cgroup in.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Hierarchy {
    /// Mount point, e.g. /sys/fs/cgroup/memory.
    pub mount: PathBuf,
    /// Controllers/options, e.g. "memory" or "none,name=systemd".
    pub options: String,
    /// The container's cgroup directory.
    pub path: PathBuf,
}

/// What a container's cgroups are, stored in its state file.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CgroupState {
    pub v2: bool,
    pub hierarchies: Vec<Hierarchy>,
}

#[derive(Debug, Clone)]
pub struct Manager {
    state: CgroupState,
}

fn io(path: &Path, what: &str) -> impl FnOnce(std::io::Error) -> CgroupError {
    let path = path.to_path_buf();
    let what = what.to_string();
    move |source| CgroupError::Io { path, what, source }
}

impl Manager {
    /// Resolves the container's cgroup paths (nothing is created yet).
    pub fn new(id: &str, cgroups_path: Option<&Path>) -> Result<Manager, CgroupError> {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        let rel: PathBuf = match cgroups_path {
            Some(p) if p.as_os_str().is_empty() => PathBuf::from(format!("amphi/{id}")),
            Some(p) => p.to_path_buf(),
            None => PathBuf::from(format!("/amphi/{id}")),
        };
        if rel.components().any(|c| matches!(c, std::path::Component::ParentDir)) {
            return Err(CgroupError::BadPath(rel.display().to_string(), "it must not contain \"..\""));
        }
        let mut hierarchies = Vec::new();
        let mut v2_mount = None;
        for line in mountinfo.lines() {
            let Some((pre, post)) = line.split_once(" - ") else { continue };
            let pre: Vec<&str> = pre.split(' ').collect();
            let post: Vec<&str> = post.split(' ').collect();
            if pre.len() < 5 || post.len() < 3 {
                continue;
            }
            let mount = PathBuf::from(pre[4]);
            match post[0] {
                "cgroup" => {
                    let opts: Vec<&str> = post[2]
                        .split(',')
                        .filter(|o| !matches!(*o, "rw" | "ro" | "relatime" | "nosuid" | "nodev" | "noexec"))
                        .collect();
                    let key = opts.iter().find(|o| !o.is_empty()).copied().unwrap_or("");
                    let base = own_cgroup(&own, key);
                    let path = join(&mount, &base, &rel);
                    let options = if key.starts_with("name=") { format!("none,{}", opts.join(",")) } else { opts.join(",") };
                    hierarchies.push(Hierarchy { mount, options, path });
                }
                "cgroup2" if mount == Path::new("/sys/fs/cgroup") => v2_mount = Some(mount),
                _ => {}
            }
        }
        if hierarchies.is_empty() {
            if let Some(mount) = v2_mount {
                let base = own_cgroup(&own, "");
                let path = join(&mount, &base, &rel);
                return Ok(Manager {
                    state: CgroupState { v2: true, hierarchies: vec![Hierarchy { mount, options: String::new(), path }] },
                });
            }
        }
        Ok(Manager { state: CgroupState { v2: false, hierarchies } })
    }

    pub fn from_state(state: CgroupState) -> Manager {
        Manager { state }
    }

    pub fn state(&self) -> &CgroupState {
        &self.state
    }

    /// How the cgroups look from inside the container.
    pub fn view(&self) -> CgroupView {
        CgroupView {
            v2: self.state.v2,
            hierarchies: self
                .state
                .hierarchies
                .iter()
                .map(|h| {
                    let name = h.mount.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                    (name, h.options.clone(), h.path.clone())
                })
                .collect(),
            links: Vec::new(),
        }
    }

    /// Creates the cgroups and opens what the init needs to join them by
    /// itself: the v1 `tasks` files (a thread moving itself with "0" skips
    /// the global threadgroup lock whose RCU grace period makes a
    /// cgroup.procs write cost ~10 ms here), or the v2 directory for
    /// clone3(CLONE_INTO_CGROUP), which places the child at fork.
    pub fn prepare(&self) -> Result<Join, CgroupError> {
        let mut join = Join::default();
        for h in &self.state.hierarchies {
            std::fs::create_dir_all(&h.path).map_err(io(&h.path, "cannot create"))?;
            if h.options.split(',').any(|o| o == "cpuset") {
                // New v1 cpuset cgroups start empty; every level needs the
                // parent's cpus and mems before a task may join.
                let rel = h.path.strip_prefix(&h.mount).unwrap_or(Path::new(""));
                let mut dir = h.mount.clone();
                for c in rel.components() {
                    dir.push(c);
                    for f in ["cpuset.cpus", "cpuset.mems"] {
                        let cur = std::fs::read_to_string(dir.join(f)).unwrap_or_default();
                        if cur.trim().is_empty() {
                            let _ = std::fs::write(dir.join(f), inherit(&dir, f));
                        }
                    }
                }
            }
            if self.state.v2 {
                let dir = std::fs::File::open(&h.path).map_err(io(&h.path, "cannot open"))?;
                join.clone_into = Some(dir.into());
            } else {
                let tasks = h.path.join("tasks");
                let f = std::fs::OpenOptions::new().write(true).open(&tasks).map_err(io(&tasks, "cannot open"))?;
                join.tasks.push((h.path.clone(), f.into()));
            }
        }
        Ok(join)
    }

    /// Every pid in the container's cgroup.
    pub fn pids(&self) -> Result<Vec<i32>, CgroupError> {
        let Some(h) = self.state.hierarchies.iter().find(|h| h.options.contains("pids")).or(self.state.hierarchies.first())
        else {
            return Ok(Vec::new());
        };
        let procs = h.path.join("cgroup.procs");
        let text = match std::fs::read_to_string(&procs) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io(&procs, "cannot list processes")(e)),
        };
        Ok(text.lines().filter_map(|l| l.trim().parse().ok()).collect())
    }

    /// Removes the cgroups (idempotent; retries briefly while the last
    /// tasks are being released).
    pub fn destroy(&self) -> Result<(), CgroupError> {
        for h in &self.state.hierarchies {
            let mut delay = std::time::Duration::from_micros(100);
            for attempt in 0.. {
                match std::fs::remove_dir(&h.path) {
                    Ok(()) => break,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                    Err(e) if e.raw_os_error() == Some(libc::EBUSY) && attempt < 30 => {
                        std::thread::sleep(delay);
                        delay = (delay * 2).min(std::time::Duration::from_millis(20));
                    }
                    Err(e) => return Err(io(&h.path, "cannot remove")(e)),
                }
            }
        }
        Ok(())
    }
}

/// How the init joins its cgroups (see [`Manager::prepare`]).
#[derive(Debug, Default)]
pub struct Join {
    /// v1: an open `tasks` file per hierarchy; the init writes "0" to each.
    pub tasks: Vec<(PathBuf, std::os::fd::OwnedFd)>,
    /// v2: the cgroup directory for CLONE_INTO_CGROUP.
    pub clone_into: Option<std::os::fd::OwnedFd>,
}

impl Join {
    /// In the init: moves the calling (only) thread into every v1 cgroup.
    pub fn join_self(&self) -> Result<(), CgroupError> {
        for (path, fd) in &self.tasks {
            nix::unistd::write(fd, b"0").map_err(|e| CgroupError::Io {
                path: path.clone(),
                what: "cannot join".into(),
                source: e.into(),
            })?;
        }
        Ok(())
    }
}

fn own_cgroup(proc_cgroup: &str, key: &str) -> PathBuf {
    for line in proc_cgroup.lines() {
        let mut f = line.splitn(3, ':');
        let (_, ctrls, path) = (f.next(), f.next().unwrap_or(""), f.next().unwrap_or("/"));
        if (key.is_empty() && ctrls.is_empty()) || (!key.is_empty() && ctrls.split(',').any(|c| c == key)) {
            return PathBuf::from(path);
        }
    }
    PathBuf::from("/")
}

fn join(mount: &Path, own: &Path, rel: &Path) -> PathBuf {
    let sub = if rel.is_absolute() { rel.to_path_buf() } else { own.join(rel) };
    mount.join(sub.strip_prefix("/").unwrap_or(&sub))
}

fn inherit(path: &Path, file: &str) -> String {
    let mut p = path.parent();
    while let Some(dir) = p {
        if let Ok(v) = std::fs::read_to_string(dir.join(file)) {
            if !v.trim().is_empty() {
                return v;
            }
        }
        p = dir.parent();
    }
    String::new()
}
