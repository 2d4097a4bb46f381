//! What PID 1 sets up before serving: mounts, modules, the zombie reaper.

use std::io::Write;
use std::os::fd::AsFd;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use nix::mount::{mount, MsFlags};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

pub struct State {
    pub modules_loaded: Vec<String>,
    pub reaper: Arc<AtomicU64>,
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

/// Reaps every child that exits, for as long as the guest runs: orphans
/// are re-parented to PID 1, and zombies would pile up otherwise.
fn start_reaper(count: Arc<AtomicU64>) -> Result<(), String> {
    let mut set = SigSet::empty();
    set.add(Signal::SIGCHLD);
    // Blocked in every thread (spawned after this), taken by sigwait below.
    set.thread_block().map_err(|e| format!("block SIGCHLD: {e}"))?;
    std::thread::Builder::new()
        .name("reaper".into())
        .spawn(move || loop {
            if set.wait().is_err() {
                continue;
            }
            loop {
                match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                    Ok(WaitStatus::StillAlive) | Err(_) => break,
                    Ok(_) => {
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        })
        .map(drop)
        .map_err(|e| format!("start the reaper: {e}"))
}

pub fn setup() -> Result<State, String> {
    mounts()?;
    let reaper = Arc::new(AtomicU64::new(0));
    start_reaper(reaper.clone())?;
    let modules_loaded = load_modules()?;
    Ok(State { modules_loaded, reaper })
}
