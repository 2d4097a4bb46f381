//! Initramfs assembly and its content-addressed cache.
//!
//! Layout: `/init` (the agent), `/dev/console` (so PID 1 has a console
//! before devtmpfs is mounted), the mount points, the modules under
//! `/lib/modules/<release>/` and [`MODULE_LIST_PATH`] naming them in load
//! order. The cache key hashes every input (agent bytes, release, module
//! names and bytes, this format's version), so a changed input gives a new
//! image and an unchanged one is reused without being rebuilt.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use super::cpio::CpioWriter;
use super::modules::{self, ModuleError};
use super::stamp;

/// The agent reads the modules to load, one path a line, from here.
pub const MODULE_LIST_PATH: &str = "etc/amphi/modules";
/// Bump when the image layout changes, so old cache entries are not reused.
const FORMAT_VERSION: &str = "amphi-initramfs-v1";

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("cannot read the guest agent {path}: build it (cargo build -p amphi-agent, statically linked) or pass --agent PATH")]
    Agent {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the guest agent {path} is not a statically linked executable (it has an ELF interpreter); build it with RUSTFLAGS='-C target-feature=+crt-static'")]
    AgentNotStatic { path: PathBuf },
    #[error(transparent)]
    Module(#[from] ModuleError),
    #[error("cannot write the image cache {path}")]
    Cache {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read the kernel {path}")]
    Kernel {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

pub struct InitramfsSpec<'a> {
    pub agent: &'a Path,
    pub modules_dir: &'a Path,
    pub kernel_release: &'a str,
    pub modules: &'a [&'a str],
}

#[derive(Debug, Clone)]
pub struct BuiltInitramfs {
    pub path: PathBuf,
    pub from_cache: bool,
    pub modules: Vec<String>,
    pub build_time: Duration,
}

/// Whether an ELF executable asks for a dynamic loader (PT_INTERP).
pub fn has_interpreter(elf: &[u8]) -> bool {
    if elf.len() < 64 || &elf[..4] != b"\x7fELF" {
        return false;
    }
    let phoff = u64::from_le_bytes(elf[0x20..0x28].try_into().unwrap_or([0; 8])) as usize;
    let phentsize = u16::from_le_bytes([elf[0x36], elf[0x37]]) as usize;
    let phnum = u16::from_le_bytes([elf[0x38], elf[0x39]]) as usize;
    (0..phnum).any(|i| {
        let off = phoff + i * phentsize;
        elf.get(off..off + 4).map(|t| u32::from_le_bytes(t.try_into().unwrap_or([0; 4])) == 3).unwrap_or(false)
    })
}

/// The identity of a request, from what names the inputs (not their
/// content): the stamp file for it records which files were read and how
/// they looked.
fn stamp_key(spec: &InitramfsSpec<'_>) -> String {
    let mut h = Sha256::new();
    h.update(FORMAT_VERSION);
    for part in [spec.agent.as_os_str(), spec.modules_dir.as_os_str()] {
        h.update(part.as_encoded_bytes());
        h.update([0]);
    }
    h.update(spec.kernel_release);
    for m in spec.modules {
        h.update([0]);
        h.update(m);
    }
    h.finalize().iter().take(12).map(|b| format!("{b:02x}")).collect()
}

#[derive(serde::Serialize, serde::Deserialize)]
struct ImageStamp {
    image: String,
    modules: Vec<String>,
}

/// The image a stamp names, if every input file is unchanged since (so
/// nothing needs to be read, decompressed or hashed again).
pub(super) fn stamp_hit(stamp_path: &Path, cache_dir: &Path) -> Option<(PathBuf, Vec<String>)> {
    let s: ImageStamp = stamp::read(stamp_path)?;
    if s.image.contains('/') {
        return None;
    }
    let image = cache_dir.join(&s.image);
    image.is_file().then_some((image, s.modules))
}

/// Records the inputs of an image (best effort: without a stamp, the next
/// run just hashes the contents again).
pub(super) fn write_stamp(stamp_path: &Path, image: &Path, inputs: &[&Path], modules: &[String]) {
    let Some(name) = image.file_name() else { return };
    let s = ImageStamp { image: name.to_string_lossy().into_owned(), modules: modules.to_vec() };
    stamp::write(stamp_path, &s, inputs);
}

/// Writes a cache file aside and renames it into place, so a concurrent or
/// interrupted build never leaves a half-written file under the final name.
pub(super) fn write_cached(cache_dir: &Path, path: &Path, bytes: &[u8]) -> Result<(), ImageError> {
    let cache_err = |source| ImageError::Cache { path: path.to_path_buf(), source };
    std::fs::create_dir_all(cache_dir).map_err(cache_err)?;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = cache_dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let result = std::fs::File::create(&tmp)
        .and_then(|mut f| f.write_all(bytes).and_then(|_| f.sync_all()))
        .and_then(|_| std::fs::rename(&tmp, path));
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(cache_err(e));
    }
    Ok(())
}

/// Returns the cached image for `spec`, building it first if needed.
/// `progress` hears what is happening when a build is needed.
pub fn build_or_reuse(
    spec: &InitramfsSpec<'_>,
    cache_dir: &Path,
    progress: &mut dyn FnMut(&str),
) -> Result<BuiltInitramfs, ImageError> {
    let start = Instant::now();
    let stamp_path = cache_dir.join(format!("stamp-{}.json", stamp_key(spec)));
    if let Some((path, modules)) = stamp_hit(&stamp_path, cache_dir) {
        return Ok(BuiltInitramfs { path, from_cache: true, modules, build_time: start.elapsed() });
    }
    let agent = std::fs::read(spec.agent).map_err(|source| ImageError::Agent { path: spec.agent.into(), source })?;
    if has_interpreter(&agent) {
        return Err(ImageError::AgentNotStatic { path: spec.agent.into() });
    }
    let mods = modules::resolve(spec.modules_dir, spec.modules)?;
    let names: Vec<String> = mods.iter().map(|m| m.name.clone()).collect();

    let mut h = Sha256::new();
    h.update(FORMAT_VERSION);
    h.update((agent.len() as u64).to_le_bytes());
    h.update(&agent);
    h.update(spec.kernel_release);
    for m in &mods {
        h.update(&m.name);
        h.update((m.data.len() as u64).to_le_bytes());
        h.update(&m.data);
    }
    let digest = h.finalize();
    let hex: String = digest.iter().take(16).map(|b| format!("{b:02x}")).collect();
    let path = cache_dir.join(format!("initramfs-{hex}.cpio"));
    let inputs: Vec<&Path> = std::iter::once(spec.agent).chain(mods.iter().map(|m| m.path.as_path())).collect();
    if path.is_file() {
        write_stamp(&stamp_path, &path, &inputs, &names);
        return Ok(BuiltInitramfs { path, from_cache: true, modules: names, build_time: start.elapsed() });
    }

    progress(&format!(
        "assembling the guest initramfs (amphi-agent + {} modules of {}) into {}",
        mods.len(),
        spec.kernel_release,
        cache_dir.display()
    ));
    let mut w = CpioWriter::new();
    for d in ["dev", "proc", "sys", "run", "tmp", "etc", "etc/amphi", "lib", "lib/modules"] {
        w.dir(d);
    }
    w.char_dev("dev/console", 0o600, 5, 1);
    w.char_dev("dev/null", 0o666, 1, 3);
    w.file("init", 0o755, &agent);
    let moddir = format!("lib/modules/{}", spec.kernel_release);
    w.dir(&moddir);
    let mut list = String::new();
    for m in &mods {
        let p = format!("{moddir}/{}.ko", m.name);
        w.file(&p, 0o644, &m.data);
        list.push('/');
        list.push_str(&p);
        list.push('\n');
    }
    w.file(MODULE_LIST_PATH, 0o644, list.as_bytes());
    let bytes = w.finish();

    write_cached(cache_dir, &path, &bytes)?;
    write_stamp(&stamp_path, &path, &inputs, &names);
    progress(&format!("initramfs ready ({} KiB) in {} ms", bytes.len() / 1024, start.elapsed().as_millis()));
    Ok(BuiltInitramfs { path, from_cache: false, modules: names, build_time: start.elapsed() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vm::image::modules::tests::fake_module;

    fn setup() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let d = tempfile::tempdir().unwrap();
        let agent = d.path().join("amphi-agent");
        std::fs::write(&agent, b"\x7fELF static agent").unwrap();
        let mods = d.path().join("modules");
        std::fs::create_dir_all(mods.join("kernel")).unwrap();
        std::fs::write(mods.join("kernel/vsock.ko"), fake_module("depends=")).unwrap();
        (d, agent, mods)
    }

    #[test]
    fn the_image_is_built_once_and_then_reused() {
        let (d, agent, mods) = setup();
        let cache = d.path().join("cache");
        let spec = InitramfsSpec { agent: &agent, modules_dir: &mods, kernel_release: "6.1.0", modules: &["vsock"] };
        let mut said = Vec::new();
        let first = build_or_reuse(&spec, &cache, &mut |m| said.push(m.to_string())).unwrap();
        assert!(!first.from_cache);
        assert!(said[0].contains("assembling"), "a build says what it does");
        let again = build_or_reuse(&spec, &cache, &mut |_| panic!("no progress for a cache hit")).unwrap();
        assert!(again.from_cache);
        assert_eq!(first.path, again.path);
        let names: Vec<String> =
            std::fs::read_dir(&cache).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        assert!(names.iter().all(|n| !n.contains(".tmp")), "no temp files left: {names:?}");
        assert_eq!(names.iter().filter(|n| n.starts_with("initramfs-")).count(), 1);
        assert_eq!(names.iter().filter(|n| n.starts_with("stamp-")).count(), 1, "{names:?}");
    }

    #[test]
    fn a_changed_input_gives_a_new_image() {
        let (d, agent, mods) = setup();
        let cache = d.path().join("cache");
        let spec = InitramfsSpec { agent: &agent, modules_dir: &mods, kernel_release: "6.1.0", modules: &["vsock"] };
        let a = build_or_reuse(&spec, &cache, &mut |_| {}).unwrap();
        std::fs::write(&agent, b"\x7fELF a newer agent").unwrap();
        let b = build_or_reuse(&spec, &cache, &mut |_| {}).unwrap();
        assert_ne!(a.path, b.path);
        assert!(!b.from_cache);
    }

    #[test]
    fn the_image_holds_init_console_modules_and_their_order() {
        let (d, agent, mods) = setup();
        let spec = InitramfsSpec { agent: &agent, modules_dir: &mods, kernel_release: "6.1.0", modules: &["vsock"] };
        let img = build_or_reuse(&spec, &d.path().join("c"), &mut |_| {}).unwrap();
        let bytes = std::fs::read(&img.path).unwrap();
        let find = |n: &[u8]| bytes.windows(n.len()).any(|w| w == n);
        assert!(find(b"init\0") && find(b"\x7fELF static agent"));
        assert!(find(b"dev/console\0"));
        assert!(find(b"lib/modules/6.1.0/vsock.ko\0"));
        assert!(find(b"/lib/modules/6.1.0/vsock.ko\n"));
    }

    #[test]
    fn a_dynamically_linked_agent_is_refused() {
        let (d, agent, mods) = setup();
        // ELF header with one PT_INTERP program header.
        let mut elf = vec![0u8; 64 + 56];
        elf[..4].copy_from_slice(b"\x7fELF");
        elf[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
        elf[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        elf[0x38..0x3a].copy_from_slice(&1u16.to_le_bytes());
        elf[64..68].copy_from_slice(&3u32.to_le_bytes());
        std::fs::write(&agent, &elf).unwrap();
        let spec = InitramfsSpec { agent: &agent, modules_dir: &mods, kernel_release: "6.1.0", modules: &["vsock"] };
        let e = build_or_reuse(&spec, &d.path().join("c"), &mut |_| {}).unwrap_err();
        assert!(matches!(e, ImageError::AgentNotStatic { .. }));
    }
}
