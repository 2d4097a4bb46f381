//! Everything a run creates on the host, in one place that removes it all:
//! the work directory (under /run, a tmpfs), one overlay root filesystem per
//! subject on a shared read-only base (the rootfs path an engine gives a
//! container: overlay on the host, shared into the guest by virtio-fs in
//! VM isolation), the bundles' config.json files, and the network namespace
//! of the network step. Drop removes it in reverse order, on success, on
//! error and after Ctrl-C alike.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::{json, Value};

use super::model::Subject;
use super::runtime::{elf_is_dynamic, Runtime};

/// The example bundle's spec: the template of every benchmark bundle.
const TEMPLATE: &str = include_str!("../../bundles/hello/config.json");

/// Where the workload lives inside the benchmark's rootfs.
pub const WORKLOAD_IN_ROOTFS: &str = "/bin/amphi-workload";

#[derive(Debug, thiserror::Error)]
pub enum WorkspaceError {
    #[error("cannot prepare {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a static program: it runs inside a bare root filesystem, so it must be static. Fix: {fix}")]
    NotStatic { path: PathBuf, fix: &'static str },
    #[error("{what} is missing. Fix: {fix}")]
    Missing { what: String, fix: &'static str },
    #[error("the bundle {path} has no usable config.json")]
    BadBundle {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("the bundle {path}'s config.json is not a JSON object: give the directory of an OCI bundle")]
    NotASpec { path: PathBuf },
    #[error("setting up the network step's namespace failed: `{command}`: {stderr}")]
    Network { command: String, stderr: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> WorkspaceError + '_ {
    move |source| WorkspaceError::Io { path: path.to_path_buf(), source }
}

/// The programs the standard suite's rootfs is made of.
pub struct Programs {
    pub busybox: PathBuf,
    pub workload: PathBuf,
}

impl Programs {
    /// busybox from busybox-static; amphi-workload next to amphi (as the
    /// agent is found), or `AMPHI_WORKLOAD`.
    pub fn find(amphi: &Path) -> Result<Self, WorkspaceError> {
        let busybox = PathBuf::from(std::env::var_os("BUSYBOX").unwrap_or_else(|| "/bin/busybox".into()));
        let workload = match std::env::var_os("AMPHI_WORKLOAD") {
            Some(p) => PathBuf::from(p),
            None => amphi.parent().map(|d| d.join("amphi-workload")).unwrap_or_default(),
        };
        for (path, what, fix) in [
            (&busybox, "busybox", "apt-get install busybox-static"),
            (
                &workload,
                "amphi-workload",
                "install it beside amphi (scripts/setup.sh does), or point AMPHI_WORKLOAD at a static build (tests/vm/build-static.sh)",
            ),
        ] {
            let bytes = std::fs::read(path)
                .map_err(|_| WorkspaceError::Missing { what: format!("{what} ({})", path.display()), fix })?;
            if elf_is_dynamic(&bytes) != Some(false) {
                return Err(WorkspaceError::NotStatic { path: path.clone(), fix });
            }
        }
        Ok(Programs { busybox, workload })
    }
}

/// The network step's namespace: a veth pair, the host end addressed here,
/// the other end in the namespace the bundles name.
pub struct Netns {
    pub name: String,
    pub path: PathBuf,
    pub host_addr: String,
    pub guest_addr: String,
}

pub struct Workspace {
    pub dir: PathBuf,
    base: PathBuf,
    template: Value,
    bundles: BTreeMap<Subject, PathBuf>,
    mounted: Vec<PathBuf>,
    pub warnings: Vec<String>,
    netns: Option<Netns>,
}

impl Workspace {
    /// The standard suite: a base rootfs of busybox and the workload.
    pub fn standard(programs: &Programs) -> Result<Self, WorkspaceError> {
        let mut ws = Self::empty(serde_json::from_str(TEMPLATE).expect("bundles/hello/config.json is valid JSON"))?;
        let base = ws.dir.join("base");
        build_rootfs(&base, programs)?;
        ws.base = base;
        Ok(ws)
    }

    /// A user's bundle: its rootfs is the (never written) base.
    pub fn for_bundle(bundle: &Path) -> Result<Self, WorkspaceError> {
        let cfg_path = bundle.join("config.json");
        let text = std::fs::read_to_string(&cfg_path).map_err(io(&cfg_path))?;
        let template: Value =
            serde_json::from_str(&text).map_err(|source| WorkspaceError::BadBundle { path: bundle.into(), source })?;
        // configure() adds annotations to it, which needs an object.
        if !template.is_object() {
            return Err(WorkspaceError::NotASpec { path: bundle.into() });
        }
        let root = template.pointer("/root/path").and_then(Value::as_str).unwrap_or("rootfs");
        let base = bundle.join(root);
        let base = base.canonicalize().map_err(io(&base))?;
        let mut ws = Self::empty(template)?;
        ws.base = base;
        Ok(ws)
    }

    fn empty(template: Value) -> Result<Self, WorkspaceError> {
        let dir = PathBuf::from(format!("/run/amphi-bench.{}", std::process::id()));
        // A leftover of an earlier run with the same pid is ours to replace.
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        Ok(Workspace {
            dir,
            base: PathBuf::new(),
            template,
            bundles: BTreeMap::new(),
            mounted: Vec::new(),
            warnings: Vec::new(),
            netns: None,
        })
    }

    /// The bundle directory of a subject, its rootfs an overlay on the base
    /// (a copy where overlayfs is not available, with a warning).
    pub fn prepare(&mut self, subject: Subject) -> Result<PathBuf, WorkspaceError> {
        let name = format!("{subject:?}").to_lowercase();
        let b = self.dir.join("bundles").join(&name);
        let (upper, work, rootfs) = (b.join("upper"), b.join("work"), b.join("rootfs"));
        for d in [&upper, &work, &rootfs] {
            std::fs::create_dir_all(d).map_err(io(d))?;
        }
        let opts = format!("lowerdir={},upperdir={},workdir={}", self.base.display(), upper.display(), work.display());
        let mounted = nix::mount::mount(
            Some("overlay"),
            &rootfs,
            Some("overlay"),
            nix::mount::MsFlags::empty(),
            Some(opts.as_str()),
        );
        match mounted {
            Ok(()) => self.mounted.push(rootfs.clone()),
            Err(e) => {
                self.warnings.push(format!(
                    "overlayfs is not available under {} ({e}): {name}'s rootfs is a copy instead",
                    self.dir.display()
                ));
                let status =
                    Command::new("cp").arg("-a").arg(format!("{}/.", self.base.display())).arg(&rootfs).status();
                if !status.map(|s| s.success()).unwrap_or(false) {
                    return Err(WorkspaceError::Io { path: rootfs, source: std::io::Error::other("cp -a failed") });
                }
            }
        }
        self.bundles.insert(subject, b.clone());
        Ok(b)
    }

    /// Writes the config.json of `rt`'s bundle for one workload and returns
    /// the bundle directory. `args` None keeps the bundle's own process.
    pub fn configure(&self, rt: &Runtime, args: Option<&[String]>, network: bool) -> Result<PathBuf, WorkspaceError> {
        let b = &self.bundles[&rt.subject];
        let mut cfg = self.template.clone();
        cfg["root"] = json!({"path": b.join("rootfs"), "readonly": false});
        if let Some(args) = args {
            cfg["process"]["args"] = json!(args);
            cfg["hostname"] = json!("bench");
        }
        cfg["process"]["terminal"] = json!(false);
        if let Some(iso) = rt.isolation() {
            let ann = cfg
                .as_object_mut()
                .expect("for_bundle and standard only keep objects")
                .entry("annotations")
                .or_insert_with(|| json!({}));
            ann["run.amphi.isolation"] = json!(iso);
            // Boots under TCG (the nested test host) take seconds, more so
            // under the density step's load.
            ann["run.amphi.vm.boot_timeout"] = json!("240");
        }
        if network {
            if let (Some(ns), Some(list)) =
                (&self.netns, cfg.pointer_mut("/linux/namespaces").and_then(Value::as_array_mut))
            {
                list.retain(|n| n["type"] != "network");
                list.push(json!({"type": "network", "path": ns.path}));
            }
        }
        let path = b.join("config.json");
        std::fs::write(&path, serde_json::to_vec_pretty(&cfg).expect("a JSON value serializes")).map_err(io(&path))?;
        Ok(b.clone())
    }

    /// Makes the network step's namespace and veth pair (iproute2).
    pub fn network(&mut self) -> Result<&Netns, WorkspaceError> {
        if self.netns.is_none() {
            let pid = std::process::id();
            let name = format!("amphi-bench-{pid}");
            let (host, peer) = (format!("abh{pid}"), format!("abc{pid}"));
            let net = format!("10.213.{}", pid % 250 + 1);
            let ns = Netns {
                name: name.clone(),
                path: PathBuf::from("/run/netns").join(&name),
                host_addr: format!("{net}.1"),
                guest_addr: format!("{net}.2"),
            };
            // Recorded first, so that a failure halfway is undone by Drop.
            self.netns = Some(ns);
            let steps: [&[&str]; 8] = [
                &["netns", "add", &name],
                &["link", "add", &host, "type", "veth", "peer", "name", &peer],
                &["link", "set", &peer, "netns", &name],
                &["addr", "add", &format!("{net}.1/24"), "dev", &host],
                &["link", "set", &host, "up"],
                &["-n", &name, "addr", "add", &format!("{net}.2/24"), "dev", &peer],
                &["-n", &name, "link", "set", &peer, "up"],
                &["-n", &name, "link", "set", "lo", "up"],
            ];
            for args in steps {
                ip(args)?;
            }
        }
        Ok(self.netns.as_ref().expect("set above"))
    }
}

fn ip(args: &[&str]) -> Result<(), WorkspaceError> {
    let out = Command::new("ip").args(args).stdin(Stdio::null()).output();
    let command = format!("ip {}", args.join(" "));
    match out {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => Err(WorkspaceError::Network { command, stderr: String::from_utf8_lossy(&o.stderr).trim().into() }),
        Err(e) => Err(WorkspaceError::Network { command, stderr: e.to_string() }),
    }
}

impl Drop for Workspace {
    fn drop(&mut self) {
        if let Some(ns) = self.netns.take() {
            // Deleting the namespace deletes the veth pair with it.
            let _ = ip(&["netns", "delete", &ns.name]);
            let _ = ip(&["link", "delete", &format!("abh{}", std::process::id())]);
        }
        for m in self.mounted.drain(..).rev() {
            let _ = nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A minimal root filesystem: busybox with its applet links, the workload,
/// /etc files, and /data for the file I/O step.
fn build_rootfs(root: &Path, programs: &Programs) -> Result<(), WorkspaceError> {
    for d in ["bin", "etc", "tmp", "proc", "sys", "dev", "root", "var", "data"] {
        let p = root.join(d);
        std::fs::create_dir_all(&p).map_err(io(&p))?;
    }
    let bin = root.join("bin");
    let bb = bin.join("busybox");
    std::fs::copy(&programs.busybox, &bb).map_err(io(&bb))?;
    let list =
        Command::new(&programs.busybox).arg("--list").stdin(Stdio::null()).output().map_err(io(&programs.busybox))?;
    for applet in String::from_utf8_lossy(&list.stdout).lines().filter(|a| *a != "busybox" && !a.contains('/')) {
        let link = bin.join(applet);
        std::os::unix::fs::symlink("busybox", &link).map_err(io(&link))?;
    }
    let wl = root.join(WORKLOAD_IN_ROOTFS.trim_start_matches('/'));
    std::fs::copy(&programs.workload, &wl).map_err(io(&wl))?;
    for (name, text) in [
        ("etc/passwd", "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"),
        ("etc/group", "root:x:0:\nnogroup:x:65534:\n"),
        ("etc/hostname", "bench\n"),
    ] {
        let p = root.join(name);
        std::fs::write(&p, text).map_err(io(&p))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bundle_whose_config_is_not_an_object_is_refused() {
        let b = tempfile::tempdir().unwrap();
        std::fs::write(b.path().join("config.json"), "[]").unwrap();
        let e = Workspace::for_bundle(b.path()).err().unwrap();
        assert!(matches!(e, WorkspaceError::NotASpec { .. }), "{e}");
    }

    #[test]
    fn the_template_is_the_example_bundle() {
        let v: Value = serde_json::from_str(TEMPLATE).unwrap();
        assert!(v.pointer("/process/args").is_some());
        assert!(v.pointer("/linux/namespaces").and_then(Value::as_array).is_some());
    }
}
