//! Where the shim finds the amphi binary and its state, and which runtime
//! options from containerd it honours.
//!
//! containerd hands a runtime its options as a protobuf `Any`, of one of
//! two types:
//!
//! - `containerd.runc.v1.Options` (ctr's runc flags, or any client that
//!   treats amphi like runc): the shim takes the fields that mean the same
//!   for amphi: `BinaryName`, `Root`, `NoPivotRoot`, `NoNewKeyring`,
//!   `SystemdCgroup` and `ShimCgroup`.
//! - `runtimeoptions.v1.Options`: what containerd's CRI plugin makes of a
//!   runtime's `options` table for any runtime type but runc's. It carries
//!   only `ConfigPath`, so the shim reads its options from that file: TOML
//!   with the same keys plus `Isolation` ("container" or "vm"), which is how
//!   one runtime handler (`amphi-vm`) puts every pod in a VM.
//!
//! Any other options type is ignored, as containerd's own shims ignore
//! options they do not know.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::Message;
use containerd_shim::protos::shim::oci::Options as RuncOptions;

use amphi::spec::Isolation;

/// Where the runtime state lives unless the options say otherwise; one
/// directory per containerd namespace below it, as containerd's runc shim
/// keeps `/run/containerd/runc/<namespace>`.
pub const DEFAULT_ROOT: &str = "/run/containerd/amphi";

/// The runtime binary's name.
pub const AMPHI: &str = "amphi";

/// The options type url containerd uses for runc-style runtimes.
const RUNC_OPTIONS_TYPE: &str = "containerd.runc.v1.Options";
/// The options type url of containerd's CRI plugin for other runtimes.
const CRI_OPTIONS_TYPE: &str = "runtimeoptions.v1.Options";

/// What the shim takes from containerd's runtime options.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShimOptions {
    /// `BinaryName`: the runtime binary to run instead of the default.
    pub binary: Option<PathBuf>,
    /// `Root`: the state root (a namespace directory is added below it).
    pub root: Option<PathBuf>,
    pub no_pivot: bool,
    pub no_new_keyring: bool,
    pub systemd_cgroup: bool,
    /// `ShimCgroup`: the cgroup the shim process itself moves into.
    pub shim_cgroup: Option<String>,
    /// `Isolation` (options file only): amphi's `--isolation` for every
    /// container this runtime creates, over their annotations.
    pub isolation: Option<Isolation>,
}

#[derive(Debug, thiserror::Error)]
pub enum OptionsError {
    #[error(
        "cannot decode the runtime options ({type_url}): pass containerd.runc.v1.Options, \
         runtimeoptions.v1.Options or none"
    )]
    Decode {
        type_url: String,
        #[source]
        source: containerd_shim::protos::protobuf::Error,
    },
    #[error("cannot read the shim options file {path} (ConfigPath in the runtime's options)")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the shim options file {path} is not valid: {message} (keys: {KEYS})")]
    Invalid { path: PathBuf, message: String },
}

/// The keys an options file may hold, for error messages.
const KEYS: &str = "BinaryName, Root, NoPivotRoot, NoNewKeyring, SystemdCgroup, ShimCgroup, Isolation";

/// The options file `ConfigPath` names.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
struct OptionsFile {
    binary_name: Option<PathBuf>,
    root: Option<PathBuf>,
    #[serde(default)]
    no_pivot_root: bool,
    #[serde(default)]
    no_new_keyring: bool,
    #[serde(default)]
    systemd_cgroup: bool,
    shim_cgroup: Option<String>,
    isolation: Option<String>,
}

impl ShimOptions {
    /// Reads the options out of containerd's `Any`; `None`, an empty `Any`
    /// or another options type give the defaults.
    pub fn from_any(any: Option<&Any>) -> Result<ShimOptions, OptionsError> {
        let Some(any) = any else { return Ok(ShimOptions::default()) };
        // Type urls may carry a prefix ("types.googleapis.com/...").
        let name = any.type_url.rsplit('/').next().unwrap_or_default();
        let decode = |source| OptionsError::Decode { type_url: any.type_url.clone(), source };
        match name {
            RUNC_OPTIONS_TYPE => {
                Ok(ShimOptions::from_runc(&RuncOptions::parse_from_bytes(&any.value).map_err(decode)?))
            }
            CRI_OPTIONS_TYPE => match config_path(&any.value).map_err(decode)? {
                Some(path) => ShimOptions::from_file(Path::new(&path)),
                None => Ok(ShimOptions::default()),
            },
            _ => Ok(ShimOptions::default()),
        }
    }

    /// The options file a CRI runtime entry names in `ConfigPath`.
    pub fn from_file(path: &Path) -> Result<ShimOptions, OptionsError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| OptionsError::Read { path: path.to_path_buf(), source })?;
        let invalid = |message: String| OptionsError::Invalid { path: path.to_path_buf(), message };
        let f: OptionsFile = toml::from_str(&text).map_err(|e| invalid(e.message().to_string()))?;
        let isolation = match f.isolation.as_deref() {
            None => None,
            Some("container") => Some(Isolation::Container),
            Some("vm") => Some(Isolation::Vm),
            Some(other) => return Err(invalid(format!("Isolation is \"container\" or \"vm\", not {other:?}"))),
        };
        Ok(ShimOptions {
            binary: f.binary_name.filter(|p| !p.as_os_str().is_empty()),
            root: f.root.filter(|p| !p.as_os_str().is_empty()),
            no_pivot: f.no_pivot_root,
            no_new_keyring: f.no_new_keyring,
            systemd_cgroup: f.systemd_cgroup,
            shim_cgroup: f.shim_cgroup.filter(|s| !s.is_empty()),
            isolation,
        })
    }

    pub fn from_runc(o: &RuncOptions) -> ShimOptions {
        let some = |s: &str| (!s.is_empty()).then(|| s.to_string());
        ShimOptions {
            binary: some(&o.binary_name).map(PathBuf::from),
            root: some(&o.root).map(PathBuf::from),
            no_pivot: o.no_pivot_root,
            no_new_keyring: o.no_new_keyring,
            systemd_cgroup: o.systemd_cgroup,
            shim_cgroup: some(&o.shim_cgroup),
            isolation: None,
        }
    }

    /// The same options as containerd's runc type, to store in the bundle
    /// (`options.json`) for the `delete` action, which gets none.
    pub fn to_runc(&self) -> RuncOptions {
        let s = |p: &Option<PathBuf>| p.as_ref().map(|p| p.to_string_lossy().into_owned()).unwrap_or_default();
        RuncOptions {
            binary_name: s(&self.binary),
            root: s(&self.root),
            no_pivot_root: self.no_pivot,
            no_new_keyring: self.no_new_keyring,
            systemd_cgroup: self.systemd_cgroup,
            shim_cgroup: self.shim_cgroup.clone().unwrap_or_default(),
            ..Default::default()
        }
    }

    /// amphi's `--root` for a containerd namespace.
    pub fn state_root(&self, namespace: &str) -> PathBuf {
        self.root.clone().unwrap_or_else(|| PathBuf::from(DEFAULT_ROOT)).join(namespace)
    }
}

/// `config_path` (field 2) of a `runtimeoptions.v1.Options` message, the
/// one field the shim needs from it; containerd-shim's protos do not carry
/// the CRI plugin's types.
fn config_path(bytes: &[u8]) -> Result<Option<String>, containerd_shim::protos::protobuf::Error> {
    let mut input = containerd_shim::protos::protobuf::CodedInputStream::from_bytes(bytes);
    let mut path = None;
    while let Some(tag) = input.read_raw_tag_or_eof()? {
        match tag {
            // Field 2, length-delimited.
            18 => path = Some(input.read_string()?),
            _ => {
                input.skip_field(containerd_shim::protos::protobuf::rt::WireType::new(tag & 7).ok_or_else(|| {
                    containerd_shim::protos::protobuf::Error::from(std::io::Error::from(
                        std::io::ErrorKind::InvalidData,
                    ))
                })?)?
            }
        }
    }
    Ok(path.filter(|p| !p.is_empty()))
}

/// Finds the amphi binary: `BinaryName` when given (a path, or a name looked
/// up on PATH), else the `amphi` next to the shim's own binary (installed
/// together, so the pair always matches), else `amphi` on PATH.
pub fn find_amphi(configured: Option<&Path>, shim_dir: Option<&Path>, path_var: Option<&OsStr>) -> Option<PathBuf> {
    let on_path = |name: &Path| -> Option<PathBuf> {
        std::env::split_paths(path_var?).map(|d| d.join(name)).find(|p| is_executable(p))
    };
    match configured {
        Some(p) if p.components().count() > 1 => return is_executable(p).then(|| p.to_path_buf()),
        Some(name) => return on_path(name),
        None => {}
    }
    if let Some(dir) = shim_dir {
        let beside = dir.join(AMPHI);
        if is_executable(&beside) {
            return Some(beside);
        }
    }
    on_path(Path::new(AMPHI))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use containerd_shim::util::convert_to_any;

    fn exe(dir: &Path, name: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let p = dir.join(name);
        std::fs::write(&p, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    #[test]
    fn runc_options_are_honoured() {
        let o = RuncOptions {
            binary_name: "/opt/amphi".into(),
            root: "/run/x".into(),
            no_pivot_root: true,
            shim_cgroup: "/shims".into(),
            ..Default::default()
        };
        let any = convert_to_any(Box::new(o)).unwrap();
        let got = ShimOptions::from_any(Some(&any)).unwrap();
        assert_eq!(got.binary, Some(PathBuf::from("/opt/amphi")));
        assert_eq!(got.state_root("k8s.io"), PathBuf::from("/run/x/k8s.io"));
        assert!(got.no_pivot && !got.no_new_keyring);
        assert_eq!(got.shim_cgroup.as_deref(), Some("/shims"));
        // What is stored for `delete` reads back the same.
        assert_eq!(ShimOptions::from_runc(&got.to_runc()), got);
    }

    /// A `runtimeoptions.v1.Options` message, encoded as containerd does.
    fn cri_options(type_url: &str, config_path: &str) -> Any {
        let mut value = Vec::new();
        for (tag, s) in [(10u8, type_url), (18u8, config_path)] {
            if !s.is_empty() {
                value.push(tag);
                value.push(s.len() as u8);
                value.extend_from_slice(s.as_bytes());
            }
        }
        Any { type_url: format!("type.googleapis.com/{CRI_OPTIONS_TYPE}"), value, ..Default::default() }
    }

    #[test]
    fn the_cri_plugins_options_name_a_file() {
        let d = tempfile::tempdir().unwrap();
        let file = d.path().join("vm.toml");
        std::fs::write(&file, "Isolation = \"vm\"\nRoot = \"/run/amphi-k8s\"\nSystemdCgroup = true\n").unwrap();
        let got = ShimOptions::from_any(Some(&cri_options("x", file.to_str().unwrap()))).unwrap();
        assert_eq!(got.isolation, Some(Isolation::Vm));
        assert_eq!(got.state_root("k8s.io"), PathBuf::from("/run/amphi-k8s/k8s.io"));
        assert!(got.systemd_cgroup && !got.no_pivot);
        // No ConfigPath: the defaults.
        assert_eq!(ShimOptions::from_any(Some(&cri_options("x", ""))).unwrap(), ShimOptions::default());

        std::fs::write(&file, "Isolation = \"kvm\"\n").unwrap();
        let e = ShimOptions::from_file(&file).unwrap_err();
        assert!(e.to_string().contains("Isolation is \"container\" or \"vm\", not \"kvm\""), "{e}");
        std::fs::write(&file, "Isolaton = \"vm\"\n").unwrap();
        let e = ShimOptions::from_file(&file).unwrap_err();
        assert!(e.to_string().contains("Isolaton") && e.to_string().contains("keys: BinaryName"), "{e}");
        let e = ShimOptions::from_any(Some(&cri_options("", "/nonexistent/amphi.toml"))).unwrap_err();
        assert_eq!(
            e.to_string(),
            "cannot read the shim options file /nonexistent/amphi.toml (ConfigPath in the runtime's options)"
        );
    }

    #[test]
    fn missing_or_foreign_options_give_defaults() {
        assert_eq!(ShimOptions::from_any(None).unwrap(), ShimOptions::default());
        let foreign = Any { type_url: "io.example.Options".into(), value: vec![1, 2, 3], ..Default::default() };
        assert_eq!(ShimOptions::from_any(Some(&foreign)).unwrap(), ShimOptions::default());
        assert_eq!(ShimOptions::default().state_root("default"), PathBuf::from("/run/containerd/amphi/default"));
    }

    #[test]
    fn garbled_runc_options_are_an_error() {
        let bad = Any { type_url: RUNC_OPTIONS_TYPE.into(), value: vec![0xff, 0xff, 0xff], ..Default::default() };
        let e = ShimOptions::from_any(Some(&bad)).unwrap_err();
        assert!(e.to_string().contains("containerd.runc.v1.Options"), "{e}");
    }

    #[test]
    fn amphi_beside_the_shim_wins_over_path() {
        let shim_dir = tempfile::tempdir().unwrap();
        let path_dir = tempfile::tempdir().unwrap();
        let on_path = exe(path_dir.path(), AMPHI);
        let path_var = std::env::join_paths([path_dir.path()]).unwrap();
        assert_eq!(find_amphi(None, Some(shim_dir.path()), Some(&path_var)), Some(on_path));
        let beside = exe(shim_dir.path(), AMPHI);
        assert_eq!(find_amphi(None, Some(shim_dir.path()), Some(&path_var)), Some(beside));
        assert_eq!(find_amphi(None, None, None), None);
    }

    #[test]
    fn configured_binary_is_a_path_or_a_name_on_path() {
        let d = tempfile::tempdir().unwrap();
        let other = exe(d.path(), "amphi-dev");
        let path_var = std::env::join_paths([d.path()]).unwrap();
        assert_eq!(find_amphi(Some(&other), None, None), Some(other.clone()));
        assert_eq!(find_amphi(Some(Path::new("amphi-dev")), None, Some(&path_var)), Some(other));
        assert_eq!(find_amphi(Some(&d.path().join("missing")), None, Some(&path_var)), None);
        // A file without the execute bit is not a runtime.
        let plain = d.path().join("plain");
        std::fs::write(&plain, "").unwrap();
        assert_eq!(find_amphi(Some(&plain), None, None), None);
    }
}
