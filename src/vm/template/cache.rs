//! The on-disk template cache (docs/vm.md, "Templates"):
//!
//! ```text
//! templates/                 0700
//!   stamp-*.json             content hashes of the key's input files
//!   <key>.lock               flock: held by the one building <key>
//!   <key>/                   immutable once renamed into place
//!     manifest.json          format, inputs, created, sizes, skipped MSRs
//!     state.json             the VMM's saved state
//!     memory                 guest RAM, sparse, 0600
//!     console.log            the template boot's console
//!     used                   touched at each restore (its mtime orders eviction)
//!     bad                    present once a restore failed: the reason
//!   .<key>.<pid>.tmp/        a build in progress
//! ```
//!
//! Readers take no lock: a template directory only ever appears complete
//! (built aside, fsynced, renamed) and disappears by a rename to a trash
//! name first, so a VM that mapped its memory keeps the inode. Only
//! builders lock, one per key, without waiting: a VM whose template is
//! being built boots cold instead ([`Selection::Busy`]), while `amphi vm
//! template build` waits ([`Cache::wait_and_select`]).

use std::fs::{self, File};
use std::io::ErrorKind;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use super::key::{is_key, TemplateInputs, TemplateKey, FORMAT, KEY_LEN};
use super::{BuildReport, TemplateError};

/// Templates kept at most; building one more evicts the least recently
/// used. Each holds up to its guest's RAM (sparse), and a test host keeps
/// the cache in a 4 GiB overlay.
pub const MAX_TEMPLATES: usize = 8;
/// The templates' directory under the guest image cache.
pub const TEMPLATES_DIR: &str = "templates";

const MANIFEST_FILE: &str = "manifest.json";
pub const STATE_FILE: &str = "state.json";
pub const MEMORY_FILE: &str = "memory";
pub const CONSOLE_FILE: &str = "console.log";
const BAD_FILE: &str = "bad";
const USED_FILE: &str = "used";
const TRASH_PREFIX: &str = ".trash-";

/// Sizes of a template's files, in bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sizes {
    /// The memory file's length (guest RAM as laid out in the file).
    pub memory: u64,
    pub state: u64,
    /// What the directory takes on disk (the memory file is sparse).
    pub disk: u64,
}

/// `manifest.json`: what a template is and how it was made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`FORMAT`]: a template of another format is not used.
    pub format: String,
    pub key: TemplateKey,
    pub inputs: TemplateInputs,
    /// Unix time (seconds).
    pub created: u64,
    pub build_ms: u64,
    pub sizes: Sizes,
    /// MSRs the host listed but refused to save; restore skips them too.
    pub skipped_msrs: Vec<u32>,
    pub notes: Vec<String>,
}

/// A complete template, ready to restore.
#[derive(Debug, Clone)]
pub struct Template {
    pub key: TemplateKey,
    pub dir: PathBuf,
    pub manifest: Manifest,
}

impl Template {
    pub fn state_path(&self) -> PathBuf {
        self.dir.join(STATE_FILE)
    }

    pub fn memory_path(&self) -> PathBuf {
        self.dir.join(MEMORY_FILE)
    }

    pub fn console_path(&self) -> PathBuf {
        self.dir.join(CONSOLE_FILE)
    }

    /// Records a use, for least-recently-used eviction.
    pub fn touch_used(&self) -> std::io::Result<()> {
        let f = File::options().create(true).truncate(false).write(true).mode(0o600).open(self.dir.join(USED_FILE))?;
        f.set_modified(SystemTime::now())
    }
}

/// What a VM creation may do about its template.
#[derive(Debug)]
pub enum Selection {
    /// Restore it.
    Ready(Box<Template>),
    /// It does not exist and this caller builds it (holding the key's lock).
    Build(Builder),
    /// Someone else is building it (`pid`, when /proc/locks names it).
    Busy { pid: Option<i32> },
    /// It exists but must not be used.
    Bad { reason: String },
}

/// The right and the place to build one template: the key's lock and a
/// private directory. Dropped without [`Builder::commit`], it removes the
/// directory and lets the lock go.
#[derive(Debug)]
pub struct Builder {
    cache: Cache,
    key: TemplateKey,
    tmp: PathBuf,
    committed: bool,
    _lock: Flock<File>,
}

impl Builder {
    pub fn key(&self) -> &TemplateKey {
        &self.key
    }

    /// Where the template's files are written before the commit.
    pub fn dir(&self) -> &Path {
        &self.tmp
    }

    /// The manifest of what was written to [`Builder::dir`], its sizes
    /// measured there.
    pub fn manifest(
        &self,
        inputs: &TemplateInputs,
        report: BuildReport,
        build_time: Duration,
    ) -> Result<Manifest, TemplateError> {
        let incomplete = |reason: String| TemplateError::Incomplete { key: self.key.clone(), reason };
        let len = |name: &str| {
            fs::metadata(self.tmp.join(name)).map(|m| m.len()).map_err(|e| incomplete(format!("{name}: {e}")))
        };
        let sizes = Sizes { memory: len(MEMORY_FILE)?, state: len(STATE_FILE)?, disk: disk_usage(&self.tmp) };
        Ok(Manifest {
            format: FORMAT.into(),
            key: self.key.clone(),
            inputs: inputs.clone(),
            created: unix_secs(SystemTime::now()),
            build_ms: build_time.as_millis() as u64,
            sizes,
            skipped_msrs: report.skipped_msrs,
            notes: report.notes,
        })
    }

    /// Writes the manifest, checks the template as a restore would, makes
    /// every file durable and renames the directory into place. Then
    /// evicts the least recently used templates beyond [`MAX_TEMPLATES`].
    pub fn commit(mut self, manifest: &Manifest) -> Result<Template, TemplateError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| TemplateError::Io { path, source }
        };
        let mpath = self.tmp.join(MANIFEST_FILE);
        let bytes = serde_json::to_vec_pretty(manifest).map_err(|e| io(&mpath)(e.into()))?;
        fs::write(&mpath, bytes).map_err(io(&mpath))?;
        check_dir(&self.tmp, &self.key)
            .map_err(|reason| TemplateError::Incomplete { key: self.key.clone(), reason })?;
        for entry in fs::read_dir(&self.tmp).map_err(io(&self.tmp))? {
            let path = entry.map_err(io(&self.tmp))?.path();
            fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).map_err(io(&path))?;
            File::open(&path).and_then(|f| f.sync_all()).map_err(io(&path))?;
        }
        sync_dir(&self.tmp).map_err(io(&self.tmp))?;
        let dir = self.cache.dir(&self.key);
        match fs::rename(&self.tmp, &dir) {
            Ok(()) => self.committed = true,
            // Another builder got there first (possible only if the lock
            // file was replaced under it): its template stands, ours goes.
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTEMPTY | libc::EEXIST)) => {
                return match self.cache.existing(&self.key) {
                    Some(Selection::Ready(t)) => Ok(*t),
                    Some(Selection::Bad { reason }) => Err(TemplateError::Bad { key: self.key.clone(), reason }),
                    _ => Err(io(&dir)(e)),
                };
            }
            Err(e) => return Err(io(&dir)(e)),
        }
        sync_dir(&self.cache.root).map_err(io(&self.cache.root))?;
        self.cache.evict(&self.key);
        Ok(Template { key: self.key.clone(), dir, manifest: manifest.clone() })
    }
}

impl Drop for Builder {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_dir_all(&self.tmp);
        }
    }
}

/// One template as `amphi vm template list` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct TemplateInfo {
    pub key: TemplateKey,
    pub dir: PathBuf,
    /// Unix time (seconds).
    pub created: Option<u64>,
    /// Unix time (seconds) of the last restore.
    pub last_used: Option<u64>,
    /// Bytes allocated on disk (the memory file is sparse).
    pub disk_bytes: u64,
    pub mem_mib: Option<u64>,
    pub vcpus: Option<u8>,
    pub kernel: Option<PathBuf>,
    /// Why it is not used, if it is not.
    pub bad: Option<String>,
    pub manifest: Option<Manifest>,
}

/// The template cache rooted at one directory.
#[derive(Debug, Clone)]
pub struct Cache {
    root: PathBuf,
}

impl Cache {
    pub fn new(root: impl Into<PathBuf>) -> Cache {
        Cache { root: root.into() }
    }

    /// The templates of the guest image cache `cache_dir` (normally
    /// [`crate::vm::guest::DEFAULT_CACHE_DIR`]).
    pub fn in_cache_dir(cache_dir: &Path) -> Cache {
        Cache::new(cache_dir.join(TEMPLATES_DIR))
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn dir(&self, key: &TemplateKey) -> PathBuf {
        self.root.join(key.as_str())
    }

    fn lock_path(&self, key: &TemplateKey) -> PathBuf {
        self.root.join(format!("{key}.lock"))
    }

    fn io(&self) -> impl FnOnce(std::io::Error) -> TemplateError + '_ {
        |source| TemplateError::Io { path: self.root.clone(), source }
    }

    /// Creates the root (0700: the memory files hold guest kernel secrets).
    fn ensure_root(&self) -> Result<(), TemplateError> {
        if let Some(parent) = self.root.parent() {
            fs::create_dir_all(parent).map_err(self.io())?;
        }
        match fs::DirBuilder::new().mode(0o700).create(&self.root) {
            Err(e) if e.kind() != ErrorKind::AlreadyExists => Err(self.io()(e)),
            _ => Ok(()),
        }
    }

    /// The key of `inputs`, with the content hashes stamped in this cache.
    pub fn key(&self, inputs: &TemplateInputs) -> Result<TemplateKey, TemplateError> {
        self.ensure_root()?;
        inputs.key(&self.root)
    }

    /// What to do about template `key`, without waiting.
    pub fn select(&self, key: &TemplateKey) -> Result<Selection, TemplateError> {
        if let Some(s) = self.existing(key) {
            return Ok(s);
        }
        self.ensure_root()?;
        match self.lock_key(key, FlockArg::LockExclusiveNonblock)? {
            Ok(held) => self.claimed(key, held),
            Err(file) => Ok(Selection::Busy { pid: crate::container::store::lock_holder(&file) }),
        }
    }

    /// As [`Cache::select`], but waits for another builder of `key` to
    /// finish instead of answering [`Selection::Busy`] (`progress` hears
    /// that it waits, and for whom).
    pub fn wait_and_select(
        &self,
        key: &TemplateKey,
        progress: &mut dyn FnMut(&str),
    ) -> Result<Selection, TemplateError> {
        let pid = match self.select(key)? {
            Selection::Busy { pid } => pid,
            other => return Ok(other),
        };
        let by = pid
            .map(|p| {
                let cmd = crate::container::process::command_line(p).unwrap_or_else(|| "gone".into());
                format!(" by pid {p} ({cmd})")
            })
            .unwrap_or_default();
        progress(&format!("template {key} is being built{by}: waiting for it"));
        match self.lock_key(key, FlockArg::LockExclusive)? {
            Ok(held) => self.claimed(key, held),
            // A waiting lock is never refused; should it be, say who has it.
            Err(file) => Ok(Selection::Busy { pid: crate::container::store::lock_holder(&file) }),
        }
    }

    /// Takes `key`'s build lock as `how` says; `Err(file)` when a
    /// non-blocking attempt finds it held.
    fn lock_key(&self, key: &TemplateKey, how: FlockArg) -> Result<Result<Flock<File>, File>, TemplateError> {
        let lock = self.lock_path(key);
        let mut file = open_lock(&lock)?;
        loop {
            match Flock::lock(file, how) {
                Ok(held) => return Ok(Ok(held)),
                Err((f, Errno::EINTR)) => file = f,
                Err((f, Errno::EWOULDBLOCK)) => return Ok(Err(f)),
                Err((_, e)) => return Err(TemplateError::Io { path: lock, source: e.into() }),
            }
        }
    }

    /// The template directory of `key` as a selection, if it exists.
    fn existing(&self, key: &TemplateKey) -> Option<Selection> {
        let dir = self.dir(key);
        fs::symlink_metadata(&dir).ok()?;
        Some(match check_dir(&dir, key) {
            Ok(manifest) => Selection::Ready(Box::new(Template { key: key.clone(), dir, manifest })),
            Err(reason) => Selection::Bad { reason },
        })
    }

    /// With `key`'s lock held: the template if it appeared meanwhile, else
    /// a fresh build directory.
    fn claimed(&self, key: &TemplateKey, lock: Flock<File>) -> Result<Selection, TemplateError> {
        if let Some(s) = self.existing(key) {
            return Ok(s);
        }
        self.clean_stale();
        let tmp = self.root.join(format!(".{key}.{}.tmp", std::process::id()));
        // Left by an earlier build of this process that did not finish.
        let _ = fs::remove_dir_all(&tmp);
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&tmp)
            .map_err(|source| TemplateError::Io { path: tmp.clone(), source })?;
        Ok(Selection::Build(Builder { cache: self.clone(), key: key.clone(), tmp, committed: false, _lock: lock }))
    }

    /// Removes build and trash directories whose process is gone.
    fn clean_stale(&self) {
        let Ok(entries) = fs::read_dir(&self.root) else { return };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(pid) = leftover_pid(&name) {
                if pid != std::process::id() as i32 && !alive(pid) {
                    let _ = fs::remove_dir_all(e.path());
                }
            }
        }
    }

    /// Marks template `key` as not to be used again, saying why.
    pub fn mark_bad(&self, key: &TemplateKey, reason: &str) -> Result<(), TemplateError> {
        let dir = self.dir(key);
        if !dir.is_dir() {
            return Err(self.not_found(key.as_str()));
        }
        let path = dir.join(BAD_FILE);
        let tmp = dir.join(format!(".{BAD_FILE}.{}", std::process::id()));
        fs::write(&tmp, reason.as_bytes())
            .and_then(|_| fs::rename(&tmp, &path))
            .map_err(|source| TemplateError::Io { path, source })
    }

    fn not_found(&self, key: &str) -> TemplateError {
        TemplateError::NotFound { key: key.to_string(), root: self.root.clone() }
    }

    fn keys(&self) -> Result<Vec<TemplateKey>, TemplateError> {
        let entries = match fs::read_dir(&self.root) {
            Ok(e) => e,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(self.io()(e)),
        };
        let mut keys: Vec<TemplateKey> = entries
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .filter_map(|e| TemplateKey::parse(&e.file_name().to_string_lossy()).ok())
            .collect();
        keys.sort();
        Ok(keys)
    }

    /// Every template, most recently used first.
    pub fn list(&self) -> Result<Vec<TemplateInfo>, TemplateError> {
        let mut infos: Vec<TemplateInfo> = self.keys()?.iter().map(|k| self.info(k)).collect();
        infos.sort_by_key(|i| std::cmp::Reverse(recency(i)));
        Ok(infos)
    }

    fn info(&self, key: &TemplateKey) -> TemplateInfo {
        let dir = self.dir(key);
        let manifest = read_manifest(&dir).ok();
        let bad = check_dir(&dir, key).err();
        let last_used = fs::metadata(dir.join(USED_FILE)).and_then(|m| m.modified()).ok().map(unix_secs);
        let m = manifest.as_ref();
        TemplateInfo {
            key: key.clone(),
            created: m.map(|m| m.created),
            last_used,
            disk_bytes: disk_usage(&dir),
            mem_mib: m.map(|m| m.inputs.mem_mib),
            vcpus: m.map(|m| m.inputs.vcpus),
            kernel: m.map(|m| m.inputs.kernel.clone()),
            bad,
            manifest,
            dir,
        }
    }

    /// The template a user means by `arg`: a whole key, or the start of
    /// exactly one existing key.
    pub fn resolve(&self, arg: &str) -> Result<TemplateKey, TemplateError> {
        if is_key(arg) {
            return TemplateKey::parse(arg);
        }
        let hex = arg.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if arg.is_empty() || arg.len() > KEY_LEN || !hex {
            return Err(TemplateError::BadKey(arg.to_string()));
        }
        let mut hits: Vec<TemplateKey> = self.keys()?.into_iter().filter(|k| k.as_str().starts_with(arg)).collect();
        match hits.len() {
            0 => Err(self.not_found(arg)),
            1 => Ok(hits.remove(0)),
            _ => Err(TemplateError::Ambiguous { prefix: arg.to_string(), keys: hits }),
        }
    }

    /// Removes template `key`. It is renamed away first, so a VM that
    /// mapped its memory keeps running from the (now unnamed) file.
    pub fn remove(&self, key: &TemplateKey) -> Result<(), TemplateError> {
        let dir = self.dir(key);
        let trash = self.root.join(format!("{TRASH_PREFIX}{key}.{}", std::process::id()));
        match fs::rename(&dir, &trash) {
            Err(e) if e.kind() == ErrorKind::NotFound => return Err(self.not_found(key.as_str())),
            Err(source) => return Err(TemplateError::Io { path: dir, source }),
            Ok(()) => {}
        }
        fs::remove_dir_all(&trash).map_err(|source| TemplateError::Io { path: trash, source })?;
        // The lock file goes too, unless a build holds it. Should another
        // process have opened it just before, it builds under the old
        // inode and a third under the new one: the later rename loses and
        // takes the first one's template (see `Builder::commit`).
        let lock = self.lock_path(key);
        if let Ok(f) = File::open(&lock) {
            if let Ok(_held) = Flock::lock(f, FlockArg::LockExclusiveNonblock) {
                let _ = fs::remove_file(&lock);
            }
        }
        Ok(())
    }

    /// Removes every template; returns their keys.
    pub fn remove_all(&self) -> Result<Vec<TemplateKey>, TemplateError> {
        let mut removed = Vec::new();
        for key in self.keys()? {
            match self.remove(&key) {
                Ok(()) => removed.push(key),
                // Removed meanwhile by someone else: just as good.
                Err(TemplateError::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(removed)
    }

    /// Removes the least recently used templates beyond [`MAX_TEMPLATES`],
    /// never `keep` (best effort: a template that cannot be removed now is
    /// tried again after the next build).
    fn evict(&self, keep: &TemplateKey) {
        let Ok(mut infos) = self.list() else { return };
        if infos.len() <= MAX_TEMPLATES {
            return;
        }
        infos.sort_by_key(recency);
        let excess = infos.len() - MAX_TEMPLATES;
        for info in infos.iter().filter(|i| &i.key != keep).take(excess) {
            let _ = self.remove(&info.key);
        }
    }
}

/// When a template was last used, or else made (for eviction order).
fn recency(i: &TemplateInfo) -> u64 {
    i.last_used.or(i.created).unwrap_or(0)
}

fn open_lock(path: &Path) -> Result<File, TemplateError> {
    File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .map_err(|source| TemplateError::Io { path: path.to_path_buf(), source })
}

fn read_manifest(dir: &Path) -> Result<Manifest, String> {
    let bytes = fs::read(dir.join(MANIFEST_FILE)).map_err(|e| format!("{MANIFEST_FILE} cannot be read: {e}"))?;
    serde_json::from_slice(&bytes).map_err(|e| format!("{MANIFEST_FILE} is not a manifest of this amphi: {e}"))
}

/// The manifest of a complete, usable template directory, or why it is not
/// one.
fn check_dir(dir: &Path, key: &TemplateKey) -> Result<Manifest, String> {
    match fs::read(dir.join(BAD_FILE)) {
        Ok(reason) => {
            let reason = String::from_utf8_lossy(&reason).trim().to_string();
            return Err(if reason.is_empty() { "marked bad".into() } else { reason });
        }
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(format!("{BAD_FILE} cannot be read: {e}")),
    }
    let m = read_manifest(dir)?;
    if m.format != FORMAT {
        return Err(format!("{MANIFEST_FILE} has format {:?}, this amphi reads {FORMAT:?}", m.format));
    }
    if &m.key != key {
        return Err(format!("{MANIFEST_FILE} names template {}, not {key}", m.key));
    }
    let len = |name: &str| fs::metadata(dir.join(name)).map(|md| md.len());
    if let Err(e) = len(STATE_FILE) {
        return Err(format!("{STATE_FILE} is missing: {e}"));
    }
    match len(MEMORY_FILE) {
        Err(e) => Err(format!("the {MEMORY_FILE} file is missing: {e}")),
        Ok(n) if n < m.sizes.memory => {
            Err(format!("the {MEMORY_FILE} file is truncated: {n} bytes, the manifest says {}", m.sizes.memory))
        }
        Ok(_) => Ok(m),
    }
}

/// The pid in the name of a build (`.<key>.<pid>.tmp`) or trash
/// (`.trash-<key>.<pid>`) directory.
fn leftover_pid(name: &str) -> Option<i32> {
    let rest = match name.strip_prefix(TRASH_PREFIX) {
        Some(r) => r,
        None => name.strip_prefix('.')?.strip_suffix(".tmp")?,
    };
    let (key, pid) = rest.split_once('.')?;
    let pid: i32 = pid.parse().ok()?;
    (is_key(key) && pid > 0).then_some(pid)
}

/// Whether process `pid` exists (in this pid namespace).
fn alive(pid: i32) -> bool {
    !matches!(nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None), Err(Errno::ESRCH))
}

/// Bytes allocated to the files of a (flat) template directory.
fn disk_usage(dir: &Path) -> u64 {
    let Ok(entries) = fs::read_dir(dir) else { return 0 };
    entries.flatten().filter_map(|e| e.metadata().ok()).map(|m| m.blocks() * 512).sum()
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Barrier};

    use super::super::key::tests::inputs;
    use super::*;

    /// A fake build: the files a template has, memory sparse.
    fn write_files(dir: &Path, memory_len: u64) {
        fs::write(dir.join(STATE_FILE), b"{}").unwrap();
        fs::write(dir.join(CONSOLE_FILE), b"booted\n").unwrap();
        let m = File::create(dir.join(MEMORY_FILE)).unwrap();
        std::io::Write::write_all(&mut &m, b"page").unwrap();
        m.set_len(memory_len).unwrap();
    }

    fn key(n: u8) -> TemplateKey {
        TemplateKey::parse(&format!("{n:02x}").repeat(KEY_LEN / 2)).unwrap()
    }

    fn build(cache: &Cache, key: &TemplateKey, d: &Path) -> Template {
        let Selection::Build(b) = cache.select(key).unwrap() else { panic!("expected to build {key}") };
        write_files(b.dir(), 1 << 20);
        let report = BuildReport { skipped_msrs: vec![0x10a], notes: vec!["fake".into()] };
        let m = b.manifest(&inputs(d), report, Duration::from_millis(5)).unwrap();
        b.commit(&m).unwrap()
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> =
            fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        v.sort();
        v
    }

    #[test]
    fn an_empty_cache_builds_then_serves_the_template() {
        let d = tempfile::tempdir().unwrap();
        let cache = Cache::new(d.path().join("cache/templates"));
        let k = key(1);
        let t = build(&cache, &k, d.path());
        assert_eq!(t.dir, cache.root().join(k.as_str()));
        assert_eq!(fs::metadata(cache.root()).unwrap().permissions().mode() & 0o777, 0o700);
        assert_eq!(fs::metadata(t.memory_path()).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(t.manifest.sizes.memory, 1 << 20);
        assert!(t.manifest.sizes.disk < 1 << 20, "the memory file stays sparse");
        assert_eq!(t.manifest.skipped_msrs, [0x10a]);
        let Selection::Ready(again) = cache.select(&k).unwrap() else { panic!("a committed template is ready") };
        assert_eq!(again.manifest, t.manifest);
        assert_eq!(fs::read(again.console_path()).unwrap(), b"booted\n");
        assert!(names(cache.root()).iter().all(|n| !n.ends_with(".tmp")), "{:?}", names(cache.root()));
    }

    #[test]
    fn racing_selects_on_an_empty_cache_give_one_builder() {
        let d = tempfile::tempdir().unwrap();
        let cache = Cache::new(d.path().join("templates"));
        let k = key(2);
        let gate = Arc::new(Barrier::new(2));
        let done = Arc::new(Barrier::new(2));
        let threads: Vec<_> = (0..2)
            .map(|_| {
                let (cache, k, gate, done) = (cache.clone(), k.clone(), gate.clone(), done.clone());
                std::thread::spawn(move || {
                    gate.wait();
                    let s = cache.select(&k).unwrap();
                    // Hold a Builder until both have chosen.
                    done.wait();
                    match s {
                        Selection::Build(_) => "build".to_string(),
                        Selection::Busy { pid } => {
                            assert!(pid.is_none_or(|p| p == std::process::id() as i32), "holder {pid:?}");
                            "busy".to_string()
                        }
                        other => format!("{other:?}"),
                    }
                })
            })
            .collect();
        let mut got: Vec<String> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        got.sort();
        assert_eq!(got, ["build", "busy"]);
        assert!(matches!(cache.select(&k).unwrap(), Selection::Build(_)), "an abandoned build frees the key");
        assert!(!names(cache.root()).iter().any(|n| n.ends_with(".tmp")), "an abandoned build leaves nothing");
    }

    #[test]
    fn waiting_for_a_builder_ends_with_its_template() {
        let d = tempfile::tempdir().unwrap();
        let cache = Cache::new(d.path().join("templates"));
        let k = key(3);
        let Selection::Build(b) = cache.select(&k).unwrap() else { panic!() };
        let (c2, k2) = (cache.clone(), k.clone());
        let waiter = std::thread::spawn(move || {
            let mut heard = Vec::new();
            let s = c2.wait_and_select(&k2, &mut |m| heard.push(m.to_string())).unwrap();
            (matches!(s, Selection::Ready(_)), heard)
        });
        std::thread::sleep(Duration::from_millis(100));
        write_files(b.dir(), 4096);
        let m = b.manifest(&inputs(d.path()), BuildReport::default(), Duration::ZERO).unwrap();
        b.commit(&m).unwrap();
        let (ready, heard) = waiter.join().unwrap();
        assert!(ready);
        assert_eq!(heard.len(), 1, "{heard:?}");
        assert!(heard[0].contains("is being built") && heard[0].contains(k.as_str()), "{heard:?}");
    }

    #[test]
    fn a_bad_template_is_not_used() {
        let d = tempfile::tempdir().unwrap();
        let cache = Cache::new(d.path().join("templates"));
        let k = key(4);
        build(&cache, &k, d.path());
        cache.mark_bad(&k, "restore failed: TSC frequency differs").unwrap();
        match cache.select(&k).unwrap() {
            Selection::Bad { reason } => assert_eq!(reason, "restore failed: TSC frequency differs"),
            other => panic!("{other:?}"),
        }
        let info = &cache.list().unwrap()[0];
        assert_eq!(info.bad.as_deref(), Some("restore failed: TSC frequency differs"));
        assert!(matches!(cache.mark_bad(&key(5), "x"), Err(TemplateError::NotFound { .. })));
    }

    #[test]
    fn incomplete_templates_are_bad_with_a_named_reason() {
        let d = tempfile::tempdir().unwrap();
        let cache = Cache::new(d.path().join("templates"));
        let reason = |k: &TemplateKey| match cache.select(k).unwrap() {
            Selection::Bad { reason } => reason,
            other => panic!("{other:?}"),
        };

        let k = key(6);
        let t = build(&cache, &k, d.path());
        fs::remove_file(t.state_path()).unwrap();
        assert!(reason(&k).contains("state.json is missing"), "{}", reason(&k));

        let k = key(7);
        let t = build(&cache, &k, d.path());
        File::options().write(true).open(t.memory_path()).unwrap().set_len(4096).unwrap();
        let r = reason(&k);
        assert!(r.contains("memory file is truncated") && r.contains("4096 bytes"), "{r}");

        let k = key(8);
        let t = build(&cache, &k, d.path());
        fs::write(t.dir.join(MANIFEST_FILE), b"{").unwrap();
        assert!(reason(&k).contains("manifest.json"), "{}", reason(&k));

        // A build that did not write its files is refused at commit.
        let Selection::Build(b) = cache.select(&key(9)).unwrap() else { panic!() };
        let e = b.manifest(&inputs(d.path()), BuildReport::default(), Duration::ZERO).unwrap_err().to_string();
        assert!(e.contains("memory"), "{e}");
    }

    #[test]
    fn stale_build_directories_are_cleaned_by_the_next_builder() {
        let d = tempfile::tempdir().unwrap();
        let cache = Cache::new(d.path().join("templates"));
        cache.ensure_root().unwrap();
        let dead = 2_000_000_000; // above any pid_max
        let live = std::process::id();
        for name in [
            format!(".{}.{dead}.tmp", key(1)),
            format!(".trash-{}.{dead}", key(2)),
            format!(".{}.{live}.tmp", key(3)),
            format!(".{}.1.tmp", key(4)),
            ".unrelated.tmp".into(),
        ] {
            fs::create_dir(cache.root().join(&name)).unwrap();
            fs::write(cache.root().join(&name).join("memory"), b"x").unwrap();
        }
        let Selection::Build(b) = cache.select(&key(5)).unwrap() else { panic!() };
        let left = names(cache.root());
        assert!(!left.iter().any(|n| n.contains(&dead.to_string())), "{left:?}");
        for kept in [format!(".{}.{live}.tmp", key(3)), format!(".{}.1.tmp", key(4)), ".unrelated.tmp".into()] {
            assert!(left.contains(&kept), "{kept} kept: {left:?}");
        }
        drop(b);
    }

    #[test]
    fn the_least_recently_used_templates_are_evicted() {
        let d = tempfile::tempdir().unwrap();
        let cache = Cache::new(d.path().join("templates"));
        let keys: Vec<TemplateKey> = (1..=MAX_TEMPLATES as u8 + 1).map(key).collect();
        for (i, k) in keys[..MAX_TEMPLATES].iter().enumerate() {
            let t = build(&cache, k, d.path());
            // Distinct use times, key 2 the oldest, key 1 used recently.
            let age = if i == 0 { 10 } else { 1000 - i as u64 };
            t.touch_used().unwrap();
            let used = File::options().write(true).open(t.dir.join(USED_FILE)).unwrap();
            used.set_modified(SystemTime::now() - Duration::from_secs(age)).unwrap();
        }
        assert_eq!(cache.list().unwrap().len(), MAX_TEMPLATES);
        build(&cache, &keys[MAX_TEMPLATES], d.path());
        let left: Vec<TemplateKey> = cache.list().unwrap().into_iter().map(|i| i.key).collect();
        assert_eq!(left.len(), MAX_TEMPLATES);
        assert!(!left.contains(&keys[1]), "the least recently used went: {left:?}");
        assert!(left.contains(&keys[0]) && left.contains(&keys[MAX_TEMPLATES]));
        assert_eq!(left[0], keys[MAX_TEMPLATES], "the newest is listed first");
    }

    #[test]
    fn remove_takes_templates_by_key_or_prefix() {
        let d = tempfile::tempdir().unwrap();
        let cache = Cache::new(d.path().join("templates"));
        let a = TemplateKey::parse("aaaa0000000000000000000000000000").unwrap();
        let b = TemplateKey::parse("aaab0000000000000000000000000000").unwrap();
        let c = TemplateKey::parse("cccc0000000000000000000000000000").unwrap();
        for k in [&a, &b, &c] {
            build(&cache, k, d.path());
        }
        assert_eq!(cache.resolve("cc").unwrap(), c);
        assert!(matches!(cache.resolve("aaa"), Err(TemplateError::Ambiguous { .. })));
        assert!(matches!(cache.resolve("dd"), Err(TemplateError::NotFound { .. })));
        assert!(matches!(cache.resolve("../x"), Err(TemplateError::BadKey(_))));
        // A VM holding the memory file open keeps reading it.
        let mapped = File::open(cache.dir(&c).join(MEMORY_FILE)).unwrap();
        cache.remove(&cache.resolve("cc").unwrap()).unwrap();
        assert_eq!(mapped.metadata().unwrap().len(), 1 << 20);
        assert!(matches!(cache.remove(&c), Err(TemplateError::NotFound { .. })));
        assert!(matches!(cache.select(&c).unwrap(), Selection::Build(_)));
        assert_eq!(cache.remove_all().unwrap(), [a, b]);
        assert!(cache.list().unwrap().is_empty());
        let left = names(cache.root());
        assert_eq!(left, [format!("{c}.lock")], "a free lock file goes with its template");
    }

    #[test]
    fn listing_reports_what_each_template_is() {
        let d = tempfile::tempdir().unwrap();
        let cache = Cache::new(d.path().join("templates"));
        assert!(cache.list().unwrap().is_empty(), "a missing cache lists nothing");
        let k = key(1);
        let t = build(&cache, &k, d.path());
        let i = &cache.list().unwrap()[0];
        assert_eq!((i.mem_mib, i.vcpus), (Some(512), Some(1)));
        assert_eq!(i.kernel.as_deref(), Some(d.path().join("vmlinux.elf").as_path()));
        assert!(i.created.is_some() && i.last_used.is_none() && i.bad.is_none());
        assert!(i.disk_bytes > 0);
        t.touch_used().unwrap();
        assert!(cache.list().unwrap()[0].last_used.is_some());
    }

    #[test]
    fn leftover_names_are_parsed_strictly() {
        let k = key(1);
        assert_eq!(leftover_pid(&format!(".{k}.42.tmp")), Some(42));
        assert_eq!(leftover_pid(&format!(".trash-{k}.42")), Some(42));
        for n in [format!(".{k}.0.tmp"), format!(".{k}.x.tmp"), format!("{k}.42.tmp"), ".abc.42.tmp".into()] {
            assert_eq!(leftover_pid(&n), None, "{n}");
        }
    }
}
