//! What PID 1 sets up before serving: a root that pivot_root can leave,
//! mounts (with cgroup2 for the containers' cgroups), modules, the
//! loopback, and the reaper; and whether this boot makes a VM template.

use std::io::Write;
use std::os::fd::AsFd;
use std::path::Path;
use std::sync::Arc;

use nix::mount::{mount, MsFlags};

use crate::reaper::Exits;

pub struct State {
    pub modules_loaded: Vec<String>,
    pub exits: Arc<Exits>,
    /// The command line names [`amphi::agent::TEMPLATE_CMDLINE_WORD`].
    pub template: bool,
}

/// Writes one line to the console (PID 1's stdout is /dev/console).
pub fn console(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Reports a fatal error and powers the guest off.
pub fn fatal(msg: &str) -> ! {
    console(&format!("amphi-agent: fatal: {msg}"));
    power_off(nix::sys::reboot::RebootMode::RB_POWER_OFF)
}

pub fn power_off(mode: nix::sys::reboot::RebootMode) -> ! {
    nix::unistd::sync();
    let _ = nix::sys::reboot::reboot(mode);
    // reboot(2) only returns on error; PID 1 must not exit.
    loop {
        std::thread::park();
    }
}

fn mount_fs(src: &str, target: &str, fstype: &str, flags: MsFlags, data: Option<&str>) -> Result<(), String> {
    std::fs::create_dir_all(target).map_err(|e| format!("mkdir {target}: {e}"))?;
    mount(Some(src), target, Some(fstype), flags, data).map_err(|e| format!("mount {fstype} on {target}: {e}"))
}

fn mounts() -> Result<(), String> {
    let nosuid = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount_fs("proc", "/proc", "proc", nosuid, None)?;
    mount_fs("sysfs", "/sys", "sysfs", nosuid, None)?;
    mount_fs("devtmpfs", "/dev", "devtmpfs", MsFlags::MS_NOSUID, Some("mode=0755"))?;
    mount_fs("tmpfs", "/run", "tmpfs", MsFlags::MS_NOSUID | MsFlags::MS_NODEV, Some("mode=0755"))?;
    mount_fs("tmpfs", "/tmp", "tmpfs", MsFlags::MS_NOSUID | MsFlags::MS_NODEV, Some("mode=1777"))?;
    mount_fs("devpts", "/dev/pts", "devpts", nosuid, Some("newinstance,ptmxmode=0666,mode=0620"))?;
    mount_fs("tmpfs", "/dev/shm", "tmpfs", MsFlags::MS_NOSUID | MsFlags::MS_NODEV, Some("mode=1777"))?;
    Ok(())
}

/// Loads the modules listed in the image, in order. A module the kernel
/// already has (EEXIST) counts as loaded.
fn load_modules() -> Result<Vec<String>, String> {
    let list = match std::fs::read_to_string(Path::new("/").join(amphi::vm::image::MODULE_LIST_PATH)) {
        Ok(l) => l,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(format!("read module list: {e}")),
    };
    let mut loaded = Vec::new();
    for path in list.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let f = std::fs::File::open(path).map_err(|e| format!("open {path}: {e}"))?;
        match nix::kmod::finit_module(f.as_fd(), c"", nix::kmod::ModuleInitFlags::empty()) {
            Ok(()) | Err(nix::errno::Errno::EEXIST) => {}
            Err(e) => return Err(format!("load module {path}: {e}")),
        }
        let name = Path::new(path).file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        loaded.push(name);
    }
    Ok(loaded)
}

/// The initramfs is the kernel's root mount, which pivot_root(2) refuses
/// to leave (it has no parent mount). A bind mount of it, moved over `/`,
/// has one: the containers' runtime can then pivot_root as on any host.
/// The bind is made read-only, so nothing in the guest (a container
/// process reaching /proc/<init>/exe included) can change the agent.
fn switch_root() -> Result<(), String> {
    let new = "/.root";
    std::fs::create_dir_all(new).map_err(|e| format!("mkdir {new}: {e}"))?;
    mount(Some("/"), new, None::<&str>, MsFlags::MS_BIND, None::<&str>).map_err(|e| format!("bind / on {new}: {e}"))?;
    std::env::set_current_dir(new).map_err(|e| format!("chdir {new}: {e}"))?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>).map_err(|e| format!("move {new} to /: {e}"))?;
    nix::unistd::chroot(".").map_err(|e| format!("chroot: {e}"))?;
    std::env::set_current_dir("/").map_err(|e| format!("chdir /: {e}"))?;
    Ok(())
}

fn seal_root() -> Result<(), String> {
    mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY, None::<&str>)
        .map_err(|e| format!("remount / read-only: {e}"))
}

/// cgroup2 for the containers, with every controller the kernel has
/// enabled for children (the guest has no other users of cgroups).
fn cgroups() -> Result<(), String> {
    let root = "/sys/fs/cgroup";
    mount_fs("cgroup2", root, "cgroup2", MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC, None)?;
    let controllers = std::fs::read_to_string(format!("{root}/cgroup.controllers")).unwrap_or_default();
    for c in controllers.split_whitespace() {
        // A controller the kernel refuses to delegate (none should) only
        // means limits of that kind cannot be set; the runtime says so.
        let _ = std::fs::write(format!("{root}/cgroup.subtree_control"), format!("+{c}"));
    }
    Ok(())
}

fn run_dirs() -> Result<(), String> {
    use amphi::agent::container::{GUEST_BUNDLE_DIR, GUEST_SHARE_DIR, GUEST_STATE_DIR};
    for d in [GUEST_SHARE_DIR, GUEST_STATE_DIR, GUEST_BUNDLE_DIR] {
        std::fs::create_dir_all(d).map_err(|e| format!("mkdir {d}: {e}"))?;
    }
    Ok(())
}

pub fn setup() -> Result<State, String> {
    switch_root()?;
    mounts()?;
    // Unreadable, it could hide a template boot: fail rather than serve
    // a guest that may share its RNG state with others.
    let cmdline = std::fs::read_to_string("/proc/cmdline").map_err(|e| format!("read /proc/cmdline: {e}"))?;
    let template = crate::restore::is_template_boot(&cmdline);
    seal_root()?;
    cgroups()?;
    run_dirs()?;
    let exits = Exits::start()?;
    let modules_loaded = load_modules()?;
    // The guest's own loopback: containers that share the guest's network
    // namespace (no namespace in the spec, or a VM with interfaces) expect
    // 127.0.0.1 as they would on a host.
    amphi::linux::namespaces::loopback_up().map_err(|e| format!("cannot bring the loopback up: {e}"))?;
    Ok(State { modules_loaded, exits, template })
}
