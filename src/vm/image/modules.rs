//! Kernel modules for the initramfs: find them by name in a module tree,
//! decompress `.ko.xz` / `.ko.zst`, read each one's `depends=` from its
//! `.modinfo` ELF section (so no modules.dep is needed: Debian's package
//! ships none, depmod writes it at install time) and order them so that
//! every module comes after what it depends on.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Read;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ModuleError {
    #[error("cannot read module tree {dir}")]
    Walk {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("kernel module {name} is not in {dir} (nor built in): pass --modules DIR of the kernel being booted")]
    Missing { name: String, dir: PathBuf },
    #[error("cannot read kernel module {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot decompress kernel module {path}: {reason}")]
    Decompress { path: PathBuf, reason: String },
    #[error("kernel module {path} uses a compression amphi does not read (.ko, .ko.xz and .ko.zst are supported)")]
    Compression { path: PathBuf },
    #[error("kernel module {path} is not a valid ELF module ({reason})")]
    BadElf { path: PathBuf, reason: &'static str },
    #[error("kernel modules depend on each other in a cycle through {0}")]
    Cycle(String),
}

/// Module names treat '-' and '_' alike.
pub fn normalize(name: &str) -> String {
    name.replace('-', "_")
}

/// Module name of a file name: `kvm-amd.ko.xz` -> `kvm_amd`.
pub fn module_name(file: &str) -> Option<String> {
    let stem =
        file.strip_suffix(".ko").or_else(|| file.strip_suffix(".ko.xz")).or_else(|| file.strip_suffix(".ko.zst"));
    let stem = stem.or_else(|| file.strip_suffix(".ko.gz"))?;
    Some(normalize(stem))
}

/// Every module file under `dir`, by module name.
pub fn index(dir: &Path) -> Result<HashMap<String, PathBuf>, ModuleError> {
    let mut out = HashMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let rd = std::fs::read_dir(&d).map_err(|source| ModuleError::Walk { dir: d.clone(), source })?;
        for e in rd.flatten() {
            let p = e.path();
            let ft = match e.file_type() {
                Ok(t) => t,
                Err(_) => continue,
            };
            if ft.is_dir() {
                stack.push(p);
            } else if let Some(name) = e.file_name().to_str().and_then(module_name) {
                out.insert(name, p);
            }
        }
    }
    Ok(out)
}

/// Names listed in `modules.builtin` (built into the kernel: nothing to load).
pub fn builtin(dir: &Path) -> HashSet<String> {
    std::fs::read_to_string(dir.join("modules.builtin"))
        .map(|s| s.lines().filter_map(|l| l.rsplit('/').next().and_then(module_name)).collect())
        .unwrap_or_default()
}

/// The module's bytes, decompressed.
pub fn read_module(path: &Path) -> Result<Vec<u8>, ModuleError> {
    let raw = std::fs::read(path).map_err(|source| ModuleError::Read { path: path.into(), source })?;
    let name = path.to_string_lossy();
    let err = |reason: String| ModuleError::Decompress { path: path.into(), reason };
    if name.ends_with(".ko") {
        Ok(raw)
    } else if name.ends_with(".ko.xz") {
        let mut out = Vec::new();
        lzma_rs::xz_decompress(&mut std::io::BufReader::new(&raw[..]), &mut out).map_err(|e| err(e.to_string()))?;
        Ok(out)
    } else if name.ends_with(".ko.zst") {
        let mut d = ruzstd::decoding::StreamingDecoder::new(&raw[..]).map_err(|e| err(e.to_string()))?;
        let mut out = Vec::new();
        d.read_to_end(&mut out).map_err(|e| err(e.to_string()))?;
        Ok(out)
    } else {
        Err(ModuleError::Compression { path: path.into() })
    }
}

/// The `depends=` list from the module's `.modinfo` section.
pub fn depends(path: &Path, elf: &[u8]) -> Result<Vec<String>, ModuleError> {
    let bad = |reason| ModuleError::BadElf { path: path.into(), reason };
    // Offsets come from the file: every sum is checked (a section header
    // offset near usize::MAX overflowed here, found by the modinfo fuzz
    // target).
    let bytes = |o: usize, n: usize| elf.get(o..o.checked_add(n)?);
    let u16_at = |o: usize| bytes(o, 2).map(|b| u16::from_le_bytes([b[0], b[1]]) as usize);
    let u32_at = |o: usize| bytes(o, 4).map(|b| u32::from_le_bytes(b.try_into().unwrap_or([0; 4])) as usize);
    let u64_at = |o: usize| bytes(o, 8).map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])) as usize);
    if elf.len() < 64 || &elf[..4] != b"\x7fELF" || elf[4] != 2 {
        return Err(bad("not a 64-bit ELF file"));
    }
    let shoff = u64_at(0x28).ok_or(bad("truncated header"))?;
    let shentsize = u16_at(0x3a).ok_or(bad("truncated header"))?;
    let shnum = u16_at(0x3c).ok_or(bad("truncated header"))?;
    let shstrndx = u16_at(0x3e).ok_or(bad("truncated header"))?;
    let section = |i: usize| -> Option<(usize, usize, usize)> {
        let h = shoff.checked_add(i.checked_mul(shentsize)?)?;
        Some((u32_at(h)?, u64_at(h.checked_add(0x18)?)?, u64_at(h.checked_add(0x20)?)?))
    };
    let (_, stroff, strsize) = section(shstrndx).ok_or(bad("no section name table"))?;
    let names = elf.get(stroff..stroff.saturating_add(strsize)).ok_or(bad("section names out of range"))?;
    for i in 0..shnum {
        let (name_off, off, size) = section(i).ok_or(bad("section header out of range"))?;
        let name = names.get(name_off..).and_then(|n| n.split(|&c| c == 0).next()).unwrap_or(&[]);
        if name != b".modinfo" {
            continue;
        }
        let info = elf.get(off..off.saturating_add(size)).ok_or(bad(".modinfo out of range"))?;
        for entry in info.split(|&c| c == 0) {
            if let Some(v) = entry.strip_prefix(b"depends=") {
                let v = String::from_utf8_lossy(v);
                return Ok(v.split(',').filter(|s| !s.is_empty()).map(normalize).collect());
            }
        }
        return Ok(Vec::new());
    }
    Err(bad("no .modinfo section"))
}

/// A module ready for the initramfs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Module {
    pub name: String,
    /// The file it was read from (compressed or not).
    pub path: PathBuf,
    pub data: Vec<u8>,
}

/// Resolves `wanted` and everything they depend on from the tree at `dir`,
/// in load order. Built-in modules are skipped.
pub fn resolve(dir: &Path, wanted: &[&str]) -> Result<Vec<Module>, ModuleError> {
    let files = index(dir)?;
    let builtin = builtin(dir);
    let mut loaded: BTreeMap<String, (PathBuf, Vec<u8>)> = BTreeMap::new();
    let mut order = Vec::new();
    // Depth-first, post-order: dependencies first. `visiting` catches cycles.
    fn visit(
        name: &str,
        dir: &Path,
        files: &HashMap<String, PathBuf>,
        builtin: &HashSet<String>,
        loaded: &mut BTreeMap<String, (PathBuf, Vec<u8>)>,
        visiting: &mut HashSet<String>,
        order: &mut Vec<String>,
    ) -> Result<(), ModuleError> {
        if loaded.contains_key(name) || order.iter().any(|n| n == name) {
            return Ok(());
        }
        let Some(path) = files.get(name) else {
            if builtin.contains(name) {
                return Ok(());
            }
            return Err(ModuleError::Missing { name: name.into(), dir: dir.into() });
        };
        if !visiting.insert(name.to_string()) {
            return Err(ModuleError::Cycle(name.into()));
        }
        let data = read_module(path)?;
        let deps = depends(path, &data)?;
        for d in &deps {
            visit(d, dir, files, builtin, loaded, visiting, order)?;
        }
        visiting.remove(name);
        loaded.insert(name.to_string(), (path.clone(), data));
        order.push(name.to_string());
        Ok(())
    }
    let mut visiting = HashSet::new();
    for w in wanted {
        visit(&normalize(w), dir, &files, &builtin, &mut loaded, &mut visiting, &mut order)?;
    }
    Ok(order
        .into_iter()
        .map(|name| {
            let (path, data) = loaded.remove(&name).unwrap_or_default();
            Module { name, path, data }
        })
        .collect())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A minimal ELF64 relocatable with a `.modinfo` section.
    pub fn fake_module(modinfo: &str) -> Vec<u8> {
        let shstr = b"\0.modinfo\0.shstrtab\0";
        let info = modinfo.replace(';', "\0").into_bytes();
        let mut elf = vec![0u8; 64];
        elf[..4].copy_from_slice(b"\x7fELF");
        elf[4] = 2;
        elf[5] = 1;
        let info_off = elf.len();
        elf.extend_from_slice(&info);
        let str_off = elf.len();
        elf.extend_from_slice(shstr);
        while elf.len() % 8 != 0 {
            elf.push(0);
        }
        let shoff = elf.len();
        let sh = |name: u32, off: usize, size: usize| {
            let mut h = vec![0u8; 64];
            h[0..4].copy_from_slice(&name.to_le_bytes());
            h[0x18..0x20].copy_from_slice(&(off as u64).to_le_bytes());
            h[0x20..0x28].copy_from_slice(&(size as u64).to_le_bytes());
            h
        };
        let headers = [sh(0, 0, 0), sh(1, info_off, info.len()), sh(10, str_off, shstr.len())];
        for h in headers {
            elf.extend_from_slice(&h);
        }
        elf[0x28..0x30].copy_from_slice(&(shoff as u64).to_le_bytes());
        elf[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
        elf[0x3c..0x3e].copy_from_slice(&3u16.to_le_bytes());
        elf[0x3e..0x40].copy_from_slice(&2u16.to_le_bytes());
        elf
    }

    fn tree(mods: &[(&str, &str)]) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for (file, deps) in mods {
            let p = d.path().join("kernel/drivers").join(file);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            let elf = fake_module(&format!("license=GPL;depends={deps};name=x"));
            if file.ends_with(".xz") {
                let mut out = Vec::new();
                lzma_rs::xz_compress(&mut &elf[..], &mut out).unwrap();
                std::fs::write(p, out).unwrap();
            } else if file.ends_with(".zst") {
                let out = ruzstd::encoding::compress_to_vec(&elf[..], ruzstd::encoding::CompressionLevel::Fastest);
                std::fs::write(p, out).unwrap();
            } else {
                std::fs::write(p, elf).unwrap();
            }
        }
        d
    }

    #[test]
    fn modinfo_depends_are_read() {
        let elf = fake_module("license=GPL;depends=virtio,virtio_ring;vermagic=6.1");
        assert_eq!(depends(Path::new("m.ko"), &elf).unwrap(), vec!["virtio", "virtio_ring"]);
        let none = fake_module("license=GPL;depends=");
        assert!(depends(Path::new("m.ko"), &none).unwrap().is_empty());
        assert!(depends(Path::new("m.ko"), b"not elf at all, definitely not").is_err());
    }

    /// Section header offsets and sizes near usize::MAX are errors, not
    /// overflows (the modinfo fuzz target's first finding; its inputs are
    /// in fuzz/regressions/modinfo/).
    #[test]
    fn offsets_near_the_end_of_the_address_space_are_errors() {
        for shoff in [u64::MAX, u64::MAX - 0x17, u64::MAX - 0x40, 0xffff_ffff_ffff_ff00] {
            let mut elf = fake_module("depends=virtio");
            elf[0x28..0x30].copy_from_slice(&shoff.to_le_bytes());
            assert!(depends(Path::new("m.ko"), &elf).is_err(), "shoff {shoff:#x}");
        }
        // A .modinfo section whose offset plus size wraps.
        let mut elf = fake_module("depends=virtio");
        let shoff = u64::from_le_bytes(elf[0x28..0x30].try_into().unwrap()) as usize;
        elf[shoff + 64 + 0x18..shoff + 64 + 0x20].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(depends(Path::new("m.ko"), &elf).is_err());
        for name in ["section-offset-overflow-1", "section-offset-overflow-2"] {
            let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions/modinfo").join(name);
            assert!(depends(Path::new("m.ko"), &std::fs::read(path).unwrap()).is_err());
        }
    }

    #[test]
    fn the_vsock_stack_resolves_in_dependency_order() {
        let d = tree(&[
            ("virtio_ring.ko", ""),
            ("virtio.ko", ""),
            ("virtio_mmio.ko", "virtio,virtio_ring"),
            ("vsock.ko.zst", ""),
            ("vmw_vsock_virtio_transport_common.ko.xz", "vsock"),
            ("vmw_vsock_virtio_transport.ko", "vmw_vsock_virtio_transport_common,virtio,virtio_ring,vsock"),
        ]);
        let mods = resolve(d.path(), &["virtio_mmio", "vmw_vsock_virtio_transport"]).unwrap();
        let names: Vec<&str> = mods.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "virtio",
                "virtio_ring",
                "virtio_mmio",
                "vsock",
                "vmw_vsock_virtio_transport_common",
                "vmw_vsock_virtio_transport"
            ]
        );
        let pos = |n: &str| names.iter().position(|x| *x == n).unwrap();
        assert!(pos("vsock") < pos("vmw_vsock_virtio_transport_common"));
        assert_eq!(&mods[3].data[..4], b"\x7fELF", "the .zst module was decompressed");
        assert_eq!(&mods[4].data[..4], b"\x7fELF", "the .xz module was decompressed");
    }

    #[test]
    fn builtin_modules_are_skipped_and_missing_ones_named() {
        let d = tree(&[("virtio_mmio.ko", "virtio")]);
        std::fs::write(d.path().join("modules.builtin"), "kernel/drivers/virtio/virtio.ko\n").unwrap();
        let mods = resolve(d.path(), &["virtio_mmio"]).unwrap();
        assert_eq!(mods.len(), 1);
        let e = resolve(d.path(), &["vsock"]).unwrap_err();
        assert!(e.to_string().contains("vsock") && e.to_string().contains("--modules"), "{e}");
    }

    #[test]
    fn dependency_cycles_are_reported() {
        let d = tree(&[("a.ko", "b"), ("b.ko", "a")]);
        assert!(matches!(resolve(d.path(), &["a"]), Err(ModuleError::Cycle(_))));
    }

    #[test]
    fn file_names_map_to_module_names() {
        assert_eq!(module_name("kvm-amd.ko").as_deref(), Some("kvm_amd"));
        assert_eq!(module_name("vsock.ko.zst").as_deref(), Some("vsock"));
        assert_eq!(module_name("modules.dep"), None);
    }
}
