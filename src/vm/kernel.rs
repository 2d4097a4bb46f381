//! Finding the guest kernel and its modules: the default is the newest
//! `vmlinuz-*` in /boot or in amphi's own kernel directory (where
//! scripts/fetch-guest-kernel unpacks Debian's linux-image-cloud-amd64
//! without touching the host's /boot); its release names the modules dir.

use std::cmp::Ordering;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

/// Where amphi keeps guest kernels: `<dir>/<release>/boot/vmlinuz-<release>`
/// and `<dir>/<release>/lib/modules/<release>/`.
pub const AMPHI_KERNEL_DIR: &str = "/var/lib/amphi/kernels";

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("no guest kernel found (looked for vmlinuz-* in {}): pass --kernel PATH, or run scripts/fetch-guest-kernel to unpack Debian's linux-image-cloud-amd64 into {AMPHI_KERNEL_DIR}", .searched.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(" and "))]
    NoDefault { searched: Vec<PathBuf> },
    #[error("kernel {path} does not exist: pass the path of a vmlinuz (bzImage) or vmlinux (ELF) with --kernel")]
    NotFound { path: PathBuf },
    #[error("cannot read kernel {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot tell the release of kernel {path} (no version string in it and none in its file name): pass --modules DIR")]
    NoRelease { path: PathBuf },
    #[error("no modules for kernel {release}: neither {} exists; pass --modules DIR (the kernel's lib/modules/<release>)", .tried.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(" nor "))]
    NoModules { release: String, tried: Vec<PathBuf> },
}

/// Compares kernel releases like `sort -V` does for the common cases.
pub fn compare_releases(a: &str, b: &str) -> Ordering {
    fn parts(s: &str) -> Vec<Result<u64, String>> {
        let mut out = Vec::new();
        let mut cur = String::new();
        let mut digit = None;
        for c in s.chars() {
            let d = c.is_ascii_digit();
            if digit.is_some() && digit != Some(d) {
                out.push(if digit == Some(true) { Ok(cur.parse().unwrap_or(0)) } else { Err(cur.clone()) });
                cur.clear();
            }
            digit = Some(d);
            cur.push(c);
        }
        if !cur.is_empty() {
            out.push(if digit == Some(true) { Ok(cur.parse().unwrap_or(0)) } else { Err(cur) });
        }
        out
    }
    let (pa, pb) = (parts(a), parts(b));
    for (x, y) in pa.iter().zip(pb.iter()) {
        let o = match (x, y) {
            (Ok(x), Ok(y)) => x.cmp(y),
            (Err(x), Err(y)) => x.cmp(y),
            (Ok(_), Err(_)) => Ordering::Greater,
            (Err(_), Ok(_)) => Ordering::Less,
        };
        if o != Ordering::Equal {
            return o;
        }
    }
    pa.len().cmp(&pb.len())
}

fn vmlinuz_in(dir: &Path, out: &mut Vec<(String, PathBuf)>) {
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(rel) = name.strip_prefix("vmlinuz-") {
                if e.path().is_file() {
                    out.push((rel.to_string(), e.path()));
                }
            }
        }
    }
}

/// The newest `vmlinuz-*` in `boot_dir` or in `<kernel_dir>/*/boot`.
pub fn find_default(boot_dir: &Path, kernel_dir: &Path) -> Result<PathBuf, KernelError> {
    let mut found = Vec::new();
    vmlinuz_in(boot_dir, &mut found);
    if let Ok(rd) = std::fs::read_dir(kernel_dir) {
        for e in rd.flatten() {
            vmlinuz_in(&e.path().join("boot"), &mut found);
        }
    }
    found
        .into_iter()
        .max_by(|a, b| compare_releases(&a.0, &b.0))
        .map(|(_, p)| p)
        .ok_or_else(|| KernelError::NoDefault { searched: vec![boot_dir.into(), kernel_dir.join("*/boot")] })
}

/// The release (`uname -r`) of a bzImage or ELF kernel.
pub fn release_of(path: &Path) -> Result<String, KernelError> {
    let read_err = |source| KernelError::Read { path: path.into(), source };
    let mut file = File::open(path).map_err(read_err)?;
    // A bzImage's version string sits in its first pages; only an ELF
    // kernel needs a full scan for its banner.
    let mut data = Vec::new();
    (&mut file).take(64 * 1024).read_to_end(&mut data).map_err(read_err)?;
    let is_bzimage = data.len() > 0x206 && &data[0x202..0x206] == b"HdrS";
    if !is_bzimage {
        file.read_to_end(&mut data).map_err(read_err)?;
    }
    release_from_image(&data)
        .or_else(|| {
            let name = path.file_name()?.to_str()?;
            name.strip_prefix("vmlinuz-").or_else(|| name.strip_prefix("vmlinux-")).map(str::to_string)
        })
        .ok_or_else(|| KernelError::NoRelease { path: path.into() })
}

/// bzImage: the setup header's `kernel_version` pointer (0x20e, relative to
/// 0x200). ELF: the `Linux version ` banner.
pub fn release_from_image(data: &[u8]) -> Option<String> {
    let first_word = |s: &[u8]| {
        let end = s.iter().position(|&c| c == b' ' || c == 0).unwrap_or(s.len());
        std::str::from_utf8(&s[..end]).ok().filter(|w| !w.is_empty()).map(str::to_string)
    };
    if data.len() > 0x210 && &data[0x202..0x206] == b"HdrS" {
        let off = u16::from_le_bytes([data[0x20e], data[0x20f]]) as usize + 0x200;
        if off < data.len() {
            return first_word(&data[off..]);
        }
    }
    let banner = b"Linux version ";
    let pos = data.windows(banner.len()).position(|w| w == banner)?;
    first_word(&data[pos + banner.len()..])
}

/// `/lib/modules/<release>`, or the copy next to a kernel unpacked in
/// amphi's kernel dir (`<root>/boot/vmlinuz-<r>` -> `<root>/lib/modules/<r>`).
pub fn default_modules_dir(kernel: &Path, release: &str, system_modules: &Path) -> Result<PathBuf, KernelError> {
    let mut tried = vec![system_modules.join(release)];
    if let Some(root) = kernel.parent().and_then(Path::parent) {
        tried.push(root.join("lib/modules").join(release));
    }
    tried.iter().find(|p| p.is_dir()).cloned().ok_or_else(|| KernelError::NoModules { release: release.into(), tried })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releases_sort_like_sort_v() {
        assert_eq!(compare_releases("6.1.0-56-cloud-amd64", "6.1.0-9-cloud-amd64"), Ordering::Greater);
        assert_eq!(compare_releases("6.10.0-1", "6.9.0-1"), Ordering::Greater);
        assert_eq!(compare_releases("6.1.0", "6.1.0"), Ordering::Equal);
    }

    #[test]
    fn the_newest_kernel_wins_across_boot_and_amphis_dir() {
        let d = tempfile::tempdir().unwrap();
        let boot = d.path().join("boot");
        let kdir = d.path().join("kernels");
        std::fs::create_dir_all(&boot).unwrap();
        std::fs::create_dir_all(kdir.join("6.1.0-56-cloud-amd64/boot")).unwrap();
        std::fs::write(boot.join("vmlinuz-6.1.0-9-amd64"), b"k").unwrap();
        std::fs::write(boot.join("config-6.1.0-99"), b"c").unwrap();
        let newest = kdir.join("6.1.0-56-cloud-amd64/boot/vmlinuz-6.1.0-56-cloud-amd64");
        std::fs::write(&newest, b"k").unwrap();
        assert_eq!(find_default(&boot, &kdir).unwrap(), newest);
    }

    #[test]
    fn no_kernel_anywhere_names_the_fix() {
        let d = tempfile::tempdir().unwrap();
        let e = find_default(&d.path().join("boot"), &d.path().join("k")).unwrap_err();
        assert!(e.to_string().contains("--kernel") && e.to_string().contains("fetch-guest-kernel"), "{e}");
    }

    #[test]
    fn the_release_comes_from_the_bzimage_header() {
        let mut img = vec![0u8; 0x1000];
        img[0x202..0x206].copy_from_slice(b"HdrS");
        img[0x20e..0x210].copy_from_slice(&0x300u16.to_le_bytes());
        img[0x500..0x500 + 30].copy_from_slice(b"6.1.0-56-cloud-amd64 (debian-k");
        assert_eq!(release_from_image(&img).as_deref(), Some("6.1.0-56-cloud-amd64"));
    }

    #[test]
    fn the_release_comes_from_the_elf_banner() {
        let mut img = b"\x7fELF....".to_vec();
        img.extend_from_slice(b"xxLinux version 6.2.1-foo (gcc) #1 SMP\0");
        assert_eq!(release_from_image(&img).as_deref(), Some("6.2.1-foo"));
        assert_eq!(release_from_image(b"nothing here"), None);
    }

    #[test]
    fn modules_are_found_next_to_an_unpacked_kernel() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("6.1.0-56");
        std::fs::create_dir_all(root.join("boot")).unwrap();
        std::fs::create_dir_all(root.join("lib/modules/6.1.0-56")).unwrap();
        let k = root.join("boot/vmlinuz-6.1.0-56");
        let got = default_modules_dir(&k, "6.1.0-56", &d.path().join("nolib")).unwrap();
        assert_eq!(got, root.join("lib/modules/6.1.0-56"));
        let e = default_modules_dir(&k, "7.0", &d.path().join("nolib")).unwrap_err();
        assert!(e.to_string().contains("--modules"));
    }
}
