//! The state store: one directory per container under `--root`, holding
//! `state.json` (written atomically) and the exec fifo. The directory itself
//! is the container's lock (flock), so commands on one id serialise while
//! different containers never wait on each other.

use std::fs::{self, File};
use std::io::{ErrorKind, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

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
        let lock = Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, e)| io(&path)(std::io::Error::from(e)))?;
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
            let locked =
                Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, e)| io(&path)(std::io::Error::from(e)))?;
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
        State {
            oci_version: "1.2.1".into(),
            id: id.into(),
            pid: 1,
            pid_start_time: 2,
            bundle: "/b".into(),
            rootfs: "/b/rootfs".into(),
            created: rfc3339(0, 0),
            owner: 0,
            annotations: Default::default(),
            isolation: Isolation::Container,
            hooks: None,
            paused: false,
            no_process: false,
            resources: None,
            sandbox: serde_json::Value::Null,
        }
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
