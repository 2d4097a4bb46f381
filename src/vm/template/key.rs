//! A template's key: a hash of everything that shapes the snapshot, so a
//! change of any input (amphi itself, the kernel, the initramfs, the
//! command line, the VM's size and devices, the host's CPU and KVM) names
//! a different template and an unchanged one finds the same. File inputs
//! are hashed by content, through stat stamps in the cache directory, so a
//! repeated request reads no file again.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::TemplateError;
use crate::vm::image::stamp;

/// Bump when the snapshot format or the way a template is made changes:
/// every older template then has another key (and another manifest format).
pub const FORMAT: &str = "amphi-template-v1";
/// Hex digits of a key.
pub const KEY_LEN: usize = 32;

/// Everything a template depends on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TemplateInputs {
    /// The boot ELF the VMM loads (hashed by content).
    pub kernel: PathBuf,
    /// The initramfs (hashed by content).
    pub initramfs: PathBuf,
    pub cmdline: String,
    pub mem_mib: u64,
    pub vcpus: u8,
    /// The device list in VMM order, e.g. `["vsock:3", "fs:amphi", "balloon:fpr"]`.
    pub devices: Vec<String>,
    /// An opaque fingerprint of the host's KVM and CPU.
    pub host: String,
}

/// A template's name in the cache: [`KEY_LEN`] lowercase hex digits.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TemplateKey(String);

impl TemplateKey {
    /// A key as written (by a user, or as a directory name).
    pub fn parse(s: &str) -> Result<TemplateKey, TemplateError> {
        if is_key(s) {
            Ok(TemplateKey(s.to_string()))
        } else {
            Err(TemplateError::BadKey(s.to_string()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Whether `s` has the shape of a key (so it is safe as a path component).
pub(super) fn is_key(s: &str) -> bool {
    s.len() == KEY_LEN && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl std::fmt::Display for TemplateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for TemplateKey {
    type Error = TemplateError;
    fn try_from(s: String) -> Result<Self, TemplateError> {
        TemplateKey::parse(&s)
    }
}

impl From<TemplateKey> for String {
    fn from(k: TemplateKey) -> String {
        k.0
    }
}

impl TemplateInputs {
    /// The key of these inputs made by the running amphi binary (its
    /// original path, even when it runs from its sealed copy).
    pub fn key(&self, stamp_dir: &Path) -> Result<TemplateKey, TemplateError> {
        self.key_with_exe(&crate::linux::exe::original_exe(), stamp_dir)
    }

    /// The key of these inputs made by the amphi binary `exe`: it holds the
    /// VMM's device model and the host end of the agent protocol, so a new
    /// build of amphi means new templates. Content hashes are stamped in
    /// `stamp_dir`.
    pub fn key_with_exe(&self, exe: &Path, stamp_dir: &Path) -> Result<TemplateKey, TemplateError> {
        let hash = |p: &Path| {
            stamp::content_hash(p, stamp_dir).map_err(|source| TemplateError::Input { path: p.into(), source })
        };
        let mut h = Sha256::new();
        let mut field = |bytes: &[u8]| {
            // Length-prefixed, so no two different input lists hash alike.
            h.update((bytes.len() as u64).to_le_bytes());
            h.update(bytes);
        };
        field(FORMAT.as_bytes());
        field(hash(exe)?.as_bytes());
        field(hash(&self.kernel)?.as_bytes());
        field(hash(&self.initramfs)?.as_bytes());
        field(self.cmdline.as_bytes());
        field(&self.mem_mib.to_le_bytes());
        field(&[self.vcpus]);
        field(&(self.devices.len() as u64).to_le_bytes());
        for d in &self.devices {
            field(d.as_bytes());
        }
        field(self.host.as_bytes());
        let hex: String = h.finalize().iter().take(KEY_LEN / 2).map(|b| format!("{b:02x}")).collect();
        Ok(TemplateKey(hex))
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// Inputs whose files exist under `d`.
    pub(crate) fn inputs(d: &Path) -> TemplateInputs {
        for (name, content) in [("vmlinux.elf", "kernel"), ("initramfs.cpio", "initramfs"), ("amphi", "exe")] {
            if !d.join(name).exists() {
                std::fs::write(d.join(name), content).unwrap();
            }
        }
        TemplateInputs {
            kernel: d.join("vmlinux.elf"),
            initramfs: d.join("initramfs.cpio"),
            cmdline: "console=ttyS0 quiet amphi.template".into(),
            mem_mib: 512,
            vcpus: 1,
            devices: vec!["vsock:3".into(), "fs:amphi".into(), "balloon:fpr".into()],
            host: "host-fingerprint".into(),
        }
    }

    #[test]
    fn the_key_changes_with_every_input_and_only_then() {
        let d = tempfile::tempdir().unwrap();
        let base = inputs(d.path());
        let exe = d.path().join("amphi");
        let key = |i: &TemplateInputs| i.key_with_exe(&exe, d.path()).unwrap();
        let k0 = key(&base);
        assert_eq!(k0.as_str().len(), KEY_LEN);
        assert_eq!(key(&base), k0, "same inputs, same key");
        assert_eq!(key(&base.clone()), k0);

        let variants: Vec<(&str, TemplateInputs)> = vec![
            ("cmdline", TemplateInputs { cmdline: "console=ttyS0".into(), ..base.clone() }),
            ("mem_mib", TemplateInputs { mem_mib: 1024, ..base.clone() }),
            ("vcpus", TemplateInputs { vcpus: 2, ..base.clone() }),
            ("devices", TemplateInputs { devices: vec!["vsock:3".into(), "fs:amphi".into()], ..base.clone() }),
            (
                "device order",
                TemplateInputs {
                    devices: vec!["fs:amphi".into(), "vsock:3".into(), "balloon:fpr".into()],
                    ..base.clone()
                },
            ),
            (
                "device boundaries",
                TemplateInputs { devices: vec!["vsock:3fs:amphi".into(), "balloon:fpr".into()], ..base.clone() },
            ),
            ("host", TemplateInputs { host: "another host".into(), ..base.clone() }),
        ];
        let mut seen = vec![k0.clone()];
        for (what, v) in &variants {
            let k = key(v);
            assert!(!seen.contains(&k), "{what} must change the key");
            seen.push(k);
        }

        // Files count by content, not by name.
        let moved = d.path().join("elsewhere.elf");
        std::fs::copy(&base.kernel, &moved).unwrap();
        assert_eq!(key(&TemplateInputs { kernel: moved, ..base.clone() }), k0, "a copied kernel is the same kernel");
        for file in [&base.kernel, &base.initramfs, &exe] {
            let before = std::fs::read(file).unwrap();
            std::fs::write(file, b"changed content").unwrap();
            assert_ne!(key(&base), k0, "{} changed", file.display());
            std::fs::write(file, &before).unwrap();
            assert_eq!(key(&base), k0, "{} restored", file.display());
        }
    }

    #[test]
    fn a_missing_input_file_is_named() {
        let d = tempfile::tempdir().unwrap();
        let i = TemplateInputs { initramfs: d.path().join("gone.cpio"), ..inputs(d.path()) };
        let e = i.key_with_exe(&d.path().join("amphi"), d.path()).unwrap_err().to_string();
        assert!(e.contains("gone.cpio"), "{e}");
    }

    #[test]
    fn keys_parse_only_in_their_own_shape() {
        let k = "0123456789abcdef0123456789abcdef";
        assert_eq!(TemplateKey::parse(k).unwrap().as_str(), k);
        for bad in ["", "../../etc", "0123456789ABCDEF0123456789ABCDEF", &k[1..], "0123456789abcdef0123456789abcdeg"] {
            assert!(TemplateKey::parse(bad).is_err(), "{bad:?}");
        }
        let json = serde_json::to_string(&TemplateKey::parse(k).unwrap()).unwrap();
        assert_eq!(serde_json::from_str::<TemplateKey>(&json).unwrap().as_str(), k);
        assert!(serde_json::from_str::<TemplateKey>("\"../x\"").is_err());
    }
}
