//! Shared helpers for the black-box tests: the built binary, throw-away
//! bundles with a busybox-static rootfs, a private state root, and checks
//! that nothing was left behind.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

pub const BUSYBOX: &str = "/bin/busybox";

/// Why root tests cannot run here, if they cannot.
pub fn skip_reason() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("needs root".into());
    }
    if !Path::new(BUSYBOX).exists() {
        return Some(format!("needs {BUSYBOX} (apt install busybox-static)"));
    }
    None
}

/// Returns early from a test that cannot run, saying why.
#[macro_export]
macro_rules! require_root {
    () => {
        if let Some(why) = common::skip_reason() {
            eprintln!("SKIPPED: {why}");
            return;
        }
    };
}

pub fn amphi_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_amphi"))
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A unique container id for this test process.
pub fn unique_id(prefix: &str) -> String {
    format!("{prefix}-{}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed))
}

/// A bundle in a temporary directory: busybox rootfs + config.json.
pub struct Bundle {
    pub dir: tempfile::TempDir,
    pub config: serde_json::Value,
}

impl Bundle {
    /// The default config (`amphi spec`) with `args`, no terminal.
    pub fn new(args: &[&str]) -> Bundle {
        let dir = tempfile::Builder::new().prefix("amphi-it-").tempdir().unwrap();
        make_rootfs(&dir.path().join("rootfs"));
        let out = Command::new(amphi_bin()).args(["spec", "--bundle"]).arg(dir.path()).output().unwrap();
        assert!(out.status.success(), "amphi spec: {}", String::from_utf8_lossy(&out.stderr));
        let mut config: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.path().join("config.json")).unwrap()).unwrap();
        config["process"]["terminal"] = false.into();
        config["process"]["args"] = serde_json::json!(args);
        config["root"]["readonly"] = false.into();
        let b = Bundle { dir, config };
        b.save();
        b
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn rootfs(&self) -> PathBuf {
        self.dir.path().join("rootfs")
    }

    pub fn save(&self) {
        std::fs::write(self.dir.path().join("config.json"), serde_json::to_vec_pretty(&self.config).unwrap()).unwrap();
    }

    pub fn edit(&mut self, f: impl FnOnce(&mut serde_json::Value)) {
        f(&mut self.config);
        self.save();
    }
}

/// A minimal rootfs: busybox and its applets, /etc/passwd, /tmp.
pub fn make_rootfs(root: &Path) {
    for d in ["bin", "etc", "tmp", "proc", "sys", "dev", "root"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy(BUSYBOX, root.join("bin/busybox")).unwrap();
    for applet in [
        "sh", "true", "false", "sleep", "cat", "echo", "ls", "id", "hostname", "readlink", "mount", "grep", "touch",
        "test", "stat", "wc", "kill", "ps", "env", "head", "mkdir", "dd", "ulimit", "umask",
    ] {
        let _ = std::os::unix::fs::symlink("busybox", root.join("bin").join(applet));
    }
    std::fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534::/nonexistent:/bin/sh\n",
    )
    .unwrap();
    std::fs::write(root.join("etc/group"), "root:x:0:\nnogroup:x:65534:\n").unwrap();
}

/// An amphi invocation with a private --root.
pub struct Amphi {
    pub root: tempfile::TempDir,
}

impl Amphi {
    pub fn new() -> Amphi {
        Amphi { root: tempfile::Builder::new().prefix("amphi-root-").tempdir().unwrap() }
    }

    pub fn cmd(&self) -> Command {
        let mut c = Command::new(amphi_bin());
        c.arg("--root").arg(self.root.path());
        c.stdin(Stdio::null());
        c
    }

    /// Runs to completion. stdout and stderr go to files, not pipes: a
    /// created container's init keeps the caller's stdio open, so waiting
    /// for EOF on a pipe would wait for the container.
    pub fn run(&self, args: &[&str]) -> Output {
        let mut c = self.cmd();
        c.args(args);
        output_via_files(&mut c)
    }

    /// Runs and asserts success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "amphi {args:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn state(&self, id: &str) -> serde_json::Value {
        serde_json::from_str(&self.ok(&["state", id])).unwrap()
    }

    pub fn status(&self, id: &str) -> String {
        self.state(id)["status"].as_str().unwrap().to_string()
    }

    /// Waits (bounded) until the container exists and reports `status`.
    pub fn wait_status(&self, id: &str, status: &str) {
        for _ in 0..500 {
            let out = self.run(&["state", id]);
            if out.status.success() {
                let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
                if v["status"] == status {
                    return;
                }
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        panic!("container {id} never became {status} (is {})", self.status(id));
    }

    /// Container directories left under this root.
    pub fn leftovers(&self) -> Vec<String> {
        std::fs::read_dir(self.root.path())
            .map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default()
    }
}

impl Drop for Amphi {
    fn drop(&mut self) {
        for id in self.leftovers() {
            let _ = self.cmd().args(["delete", "--force", &id]).output();
        }
    }
}

/// cgroup directories named after `id` anywhere under /sys/fs/cgroup: below
/// each controller's mount on a v1 or hybrid host, directly below it on a
/// pure cgroup2 host (where /sys/fs/cgroup/amphi-<id> is the default).
pub fn cgroups_of(id: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    walk(Path::new("/sys/fs/cgroup"), id, 0, &mut found);
    found
}

fn walk(dir: &Path, id: &str, depth: usize, found: &mut Vec<PathBuf>) {
    if depth > 5 {
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.filter_map(|e| e.ok()) {
        if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            let name = e.file_name().to_string_lossy().into_owned();
            // The default cgroup is /amphi-<id> (docs/cgroups.md).
            if name == id || name == format!("amphi-{id}") {
                found.push(e.path());
            }
            walk(&e.path(), id, depth + 1, found);
        }
    }
}

/// Mount points under `dir`.
pub fn mounts_under(dir: &Path) -> Vec<String> {
    let d = dir.to_string_lossy().into_owned();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
        .filter(|m| m.starts_with(&d))
        .collect()
}

/// A program on PATH.
pub fn which(bin: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| Path::new(d).join(bin)).find(|p| p.exists())
}

/// Like Command::output, but through temporary files.
pub fn output_via_files(c: &mut Command) -> Output {
    let out = tempfile::tempfile().unwrap();
    let err = tempfile::tempfile().unwrap();
    c.stdout(out.try_clone().unwrap()).stderr(err.try_clone().unwrap());
    let status = c.status().unwrap();
    let read = |mut f: std::fs::File| {
        use std::io::{Read, Seek};
        let mut v = Vec::new();
        f.rewind().unwrap();
        f.read_to_end(&mut v).unwrap();
        v
    };
    Output { status, stdout: read(out), stderr: read(err) }
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}
