//! The state store: one directory per container under `--root`, holding
//! `state.json` (written atomically) and the exec fifo. The directory itself
//! is the container's lock (flock), so commands on one id serialise while
//! different containers never wait on each other.

use std::fs::{self, File};
use std::io::{ErrorKind, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

use super::id::ContainerId;
use super::state::State;

pub const STATE_FILE: &str = "state.json";
pub const EXEC_FIFO: &str = "exec.fifo";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("container \"{0}\" does not exist")]
    NotFound(String),
    #[error("container \"{0}\" already exists: pick another id or delete it first")]
    Exists(String),
    #[error("cannot use state directory {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("state file {path} is corrupt: delete the container with --force")]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error(
        "container \"{id}\" is still locked by another amphi command{by} after {secs}s: let it finish, or stop it \
         and run `amphi delete --force {id}` ({LOCK_TIMEOUT_ENV} sets the wait)"
    )]
    Locked { id: String, by: String, secs: u64 },
}

/// Seconds a command waits for the container's lock (default
/// [`LOCK_TIMEOUT`]).
pub const LOCK_TIMEOUT_ENV: &str = "AMPHI_LOCK_TIMEOUT";
/// Long enough for the slowest holder: a VM `create` that boots a guest
/// under emulation, then `delete --force` that waits for a SIGKILLed VMM.
pub const LOCK_TIMEOUT: Duration = Duration::from_secs(180);

fn lock_timeout() -> Duration {
    std::env::var(LOCK_TIMEOUT_ENV)
        .ok()
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(Duration::from_secs_f64)
        .unwrap_or(LOCK_TIMEOUT)
}

/// Takes the container's lock, waiting at most [`lock_timeout`]. Polled
/// rather than blocking, so the wait has a limit without a signal.
fn take_lock(file: File, path: &Path, id: &str) -> Result<Flock<File>, StoreError> {
    lock_within(file, path, id, lock_timeout())
}

fn lock_within(file: File, path: &Path, id: &str, limit: Duration) -> Result<Flock<File>, StoreError> {
    let deadline = Instant::now() + limit;
    let mut file = file;
    let mut pause = Duration::from_millis(1);
    loop {
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(l) => return Ok(l),
            Err((f, Errno::EWOULDBLOCK | Errno::EINTR)) => file = f,
            Err((_, e)) => return Err(io(path)(std::io::Error::from(e))),
        }
        if Instant::now() >= deadline {
            let by = lock_holder(&file)
                .map(|p| format!(" (pid {p}: {})", super::process::command_line(p).unwrap_or_else(|| "gone".into())))
                .unwrap_or_default();
            return Err(StoreError::Locked { id: id.to_string(), by, secs: limit.as_secs() });
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// Who holds the flock on `file`, from /proc/locks (a pid in our pid
/// namespace, when the holder is visible there).
pub(crate) fn lock_holder(file: &File) -> Option<i32> {
    use std::os::unix::fs::MetadataExt;
    let meta = file.metadata().ok()?;
    let text = fs::read_to_string("/proc/locks").ok()?;
    holder_in(&text, nix::sys::stat::major(meta.dev()), nix::sys::stat::minor(meta.dev()), meta.ino())
}

/// The pid holding a FLOCK on (major, minor, inode) in /proc/locks text;
/// waiters (lines with "->") do not count.
fn holder_in(text: &str, major: u64, minor: u64, ino: u64) -> Option<i32> {
    let want = format!("{major:02x}:{minor:02x}:{ino}");
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.len() < 6 || f[1] != "FLOCK" {
            return None;
        }
        (f[5] == want).then(|| f[4].parse().ok()).flatten()
    })
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io { path: path.to_path_buf(), source }
}

/// The root directory of all container state.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

/// One container's directory, locked for as long as this value lives
/// (unless opened unlocked for reading).
#[derive(Debug)]
pub struct ContainerDir {
    pub id: String,
    pub path: PathBuf,
    dir: DirHandle,
}

#[derive(Debug)]
enum DirHandle {
    Locked(Flock<File>),
    Unlocked(File),
}

impl DirHandle {
    fn file(&self) -> &File {
        match self {
            DirHandle::Locked(f) => f,
            DirHandle::Unlocked(f) => f,
        }
    }
}

impl Store {
    pub fn new(root: impl Into<PathBuf>) -> Store {
        Store { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Makes a new, locked directory for `id`; fails if the id is taken.
    pub fn create(&self, id: &ContainerId) -> Result<ContainerDir, StoreError> {
        let path = self.root.join(id.as_str());
        match fs::DirBuilder::new().mode(0o711).create(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                return Err(StoreError::Exists(id.to_string()));
            }
            Err(e) if e.kind() == ErrorKind::NotFound => {
                fs::DirBuilder::new().recursive(true).mode(0o711).create(&self.root).map_err(io(&self.root))?;
                match fs::DirBuilder::new().mode(0o711).create(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                        return Err(StoreError::Exists(id.to_string()));
                    }
                    Err(e) => return Err(io(&path)(e)),
                }
            }
            Err(e) => return Err(io(&path)(e)),
        }
        let file = open_dir(&path).map_err(io(&path))?;
        let lock = take_lock(file, &path, id.as_str())?;
        Ok(ContainerDir { id: id.to_string(), path, dir: DirHandle::Locked(lock) })
    }

    /// Opens the directory of an existing container, locked or not.
    pub fn open(&self, id: &ContainerId, lock: bool) -> Result<ContainerDir, StoreError> {
        let path = self.root.join(id.as_str());
        let file = match open_dir(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == ErrorKind::NotFound => return Err(StoreError::NotFound(id.to_string())),
            Err(e) => return Err(io(&path)(e)),
        };
        let dir = if lock {
            let locked = take_lock(file, &path, id.as_str())?;
            // Whoever held the lock before us may have deleted the container.
            let meta = locked.metadata().map_err(io(&path))?;
            if std::os::unix::fs::MetadataExt::nlink(&meta) == 0 {
                return Err(StoreError::NotFound(id.to_string()));
            }
            DirHandle::Locked(locked)
        } else {
            DirHandle::Unlocked(file)
        };
        Ok(ContainerDir { id: id.to_string(), path, dir })
    }

    /// Ids of all containers, sorted.
    pub fn list(&self) -> Result<Vec<String>, StoreError> {
        let entries = match fs::read_dir(&self.root) {
            Ok(e) => e,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io(&self.root)(e)),
        };
        let mut ids: Vec<String> = entries
            .filter_map(|e| e.ok())
            .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| ContainerId::new(n).is_ok())
            .collect();
        ids.sort();
        Ok(ids)
    }
}

fn open_dir(path: &Path) -> std::io::Result<File> {
    fs::OpenOptions::new().read(true).custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC).open(path)
}

impl ContainerDir {
    pub fn state_path(&self) -> PathBuf {
        self.path.join(STATE_FILE)
    }

    pub fn fifo_path(&self) -> PathBuf {
        self.path.join(EXEC_FIFO)
    }

    /// The open directory, for *at() calls and for handing to a child.
    pub fn fd(&self) -> std::os::fd::RawFd {
        self.dir.file().as_raw_fd()
    }

    /// The recorded state; `None` while the container is still being
    /// created.
    pub fn read_state(&self) -> Result<Option<State>, StoreError> {
        let path = self.state_path();
        let text = match fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(&path)(e)),
        };
        serde_json::from_slice(&text).map(Some).map_err(|source| StoreError::Corrupt { path, source })
    }

    /// Replaces state.json atomically (write a temporary file, rename).
    pub fn write_state(&self, state: &State) -> Result<(), StoreError> {
        let bytes =
            serde_json::to_vec(state).map_err(|source| StoreError::Corrupt { path: self.state_path(), source })?;
        write_atomic(&self.state_path(), &bytes, 0o600).map_err(io(&self.state_path()))
    }

    pub fn has_fifo(&self) -> bool {
        fs::symlink_metadata(self.fifo_path()).is_ok()
    }

    /// Removes the directory and everything in it; the lock goes with it.
    pub fn remove(self) -> Result<(), StoreError> {
        match fs::remove_dir_all(&self.path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io(&self.path)(e)),
        }
    }
}

/// Writes `bytes` to `path` so that readers see the old or the new content,
/// never a partial file: a temporary file in the same directory, then
/// rename(2).
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    let result = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .custom_flags(libc::O_CLOEXEC)
            .open(&tmp)?;
        f.write_all(bytes)?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::container::state::{rfc3339, State};
    use crate::spec::Isolation;

    fn state(id: &str) -> State {
        State { pid: 1, pid_start_time: 2, created: rfc3339(0, 0), ..State::bare(id, Isolation::Container) }
    }

    #[test]
    fn create_write_read_remove() {
        let root = tempfile::tempdir().unwrap();
        let store = Store::new(root.path().join("nested/root"));
        let id = ContainerId::new("c1").unwrap();
        let dir = store.create(&id).unwrap();
        assert!(dir.read_state().unwrap().is_none());
        dir.write_state(&state("c1")).unwrap();
        assert_eq!(dir.read_state().unwrap().unwrap().pid, 1);
        assert!(matches!(store.create(&id), Err(StoreError::Exists(_))));
        assert_eq!(store.list().unwrap(), vec!["c1".to_string()]);
        dir.remove().unwrap();
        assert!(matches!(store.open(&id, false), Err(StoreError::NotFound(_))));
        assert!(store.list().unwrap().is_empty());
    }

    #[test]
    fn a_waiter_sees_a_container_deleted_while_it_waited() {
        let root = tempfile::tempdir().unwrap();
        let store = Store::new(root.path());
        let id = ContainerId::new("c2").unwrap();
        let dir = store.create(&id).unwrap();
        let store2 = store.clone();
        let id2 = id.clone();
        let waiter = std::thread::spawn(move || store2.open(&id2, true).map(|_| ()));
        std::thread::sleep(std::time::Duration::from_millis(50));
        dir.remove().unwrap();
        let r = waiter.join().unwrap();
        assert!(matches!(r, Err(StoreError::NotFound(_))), "{r:?}");
    }

    #[test]
    fn a_lock_wait_ends_with_the_holder_named() {
        let root = tempfile::tempdir().unwrap();
        let store = Store::new(root.path());
        let held = store.create(&ContainerId::new("busy").unwrap()).unwrap();
        let file = open_dir(&held.path).unwrap();
        let t0 = Instant::now();
        let e = lock_within(file, &held.path, "busy", Duration::from_millis(100)).unwrap_err();
        assert!(t0.elapsed() >= Duration::from_millis(100));
        let msg = e.to_string();
        assert!(msg.contains("\"busy\" is still locked by another amphi command"), "{msg}");
        assert!(msg.contains(&format!("(pid {}: ", std::process::id())), "{msg}");
        assert!(msg.contains("amphi delete --force busy"), "{msg}");
        drop(held);
    }

    #[test]
    fn lock_holders_are_read_from_proc_locks() {
        let text = "1: FLOCK  ADVISORY  WRITE 2410 00:1a:5678 0 EOF\n\
                    1: -> FLOCK  ADVISORY  WRITE 2411 00:1a:5678 0 EOF\n\
                    2: POSIX  ADVISORY  WRITE 99 fd:01:77 0 EOF\n\
                    3: FLOCK  ADVISORY  WRITE 3000 fd:01:77 0 EOF\n";
        assert_eq!(holder_in(text, 0, 0x1a, 5678), Some(2410));
        assert_eq!(holder_in(text, 0xfd, 1, 77), Some(3000));
        assert_eq!(holder_in(text, 0, 0x1a, 1), None);
    }

    #[test]
    fn different_containers_do_not_share_a_lock() {
        let root = tempfile::tempdir().unwrap();
        let store = Store::new(root.path());
        let _a = store.create(&ContainerId::new("a").unwrap()).unwrap();
        // Would block forever if the lock were global.
        let _b = store.create(&ContainerId::new("b").unwrap()).unwrap();
        let _b2 = store.open(&ContainerId::new("a").unwrap(), false).unwrap();
    }

    #[test]
    fn corrupt_state_is_reported_with_the_fix() {
        let root = tempfile::tempdir().unwrap();
        let store = Store::new(root.path());
        let dir = store.create(&ContainerId::new("c").unwrap()).unwrap();
        fs::write(dir.state_path(), b"{not json").unwrap();
        let e = dir.read_state().unwrap_err().to_string();
        assert!(e.contains("--force"), "{e}");
    }
}
