//! Loading and validating a bundle's `config.json`, and amphi's annotations.
//!
//! Everything a user can get wrong in a bundle is caught here, before any
//! namespace, cgroup or state directory exists, so a bad bundle fails fast
//! and leaves nothing behind. Each error names the file, the field (or line
//! and column) and what to do about it.

mod defaults;
mod validate;

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

pub use defaults::{default_spec, rootless_spec};
pub use oci_spec::runtime::Spec;

/// The annotation that picks the isolation of one container.
pub const ISOLATION_ANNOTATION: &str = "run.amphi.isolation";

/// Lowest and highest runtime-spec versions this build understands.
pub const OCI_VERSION_MIN: &str = "1.0.0";
pub const OCI_VERSION_MAX: &str = "1.2.1";

#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("bundle directory {0} does not exist: pass an existing bundle with --bundle")]
    BundleMissing(PathBuf),
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} has no config.json: create one with `amphi spec` or pass the right --bundle")]
    ConfigMissing { path: PathBuf },
    #[error("{path}: malformed JSON at line {line}, column {column}: {msg}")]
    Malformed { path: PathBuf, line: usize, column: usize, msg: String },
    #[error("{path}: invalid value at line {line}, column {column}: {msg}")]
    Invalid { path: PathBuf, line: usize, column: usize, msg: String },
    #[error("{path}: field `{field}`: {problem}")]
    Field { path: PathBuf, field: String, problem: String },
    #[error(
        "{path}: unsupported ociVersion {version:?}: amphi supports {OCI_VERSION_MIN} to \
         {OCI_VERSION_MAX} (any 1.x); regenerate the bundle for runtime-spec 1.x"
    )]
    UnsupportedVersion { path: PathBuf, version: String },
    #[error("root filesystem {0} does not exist: create it or fix root.path in config.json")]
    RootfsMissing(PathBuf),
    #[error("root filesystem {0} is not a directory: root.path must name a directory")]
    RootfsNotDir(PathBuf),
}

/// Which isolation runs a container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Isolation {
    Container,
    Vm,
}

impl std::fmt::Display for Isolation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Isolation::Container => "container",
            Isolation::Vm => "vm",
        })
    }
}

/// A loaded, validated bundle.
#[derive(Debug)]
pub struct Bundle {
    /// Absolute bundle directory.
    pub dir: PathBuf,
    /// Absolute rootfs path (root.path resolved against the bundle).
    pub rootfs: PathBuf,
    pub spec: Spec,
}

impl Bundle {
    /// Reads `<dir>/config.json`, checks it and resolves the rootfs.
    pub fn load(dir: &Path) -> Result<Bundle, SpecError> {
        let dir = absolute(dir).map_err(|_| SpecError::BundleMissing(dir.to_path_buf()))?;
        let config = dir.join("config.json");
        let text = match File::open(&config) {
            Ok(f) => {
                let mut s = String::new();
                BufReader::new(f)
                    .read_to_string(&mut s)
                    .map_err(|source| SpecError::Read { path: config.clone(), source })?;
                s
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(if dir.is_dir() {
                    SpecError::ConfigMissing { path: dir }
                } else {
                    SpecError::BundleMissing(dir)
                });
            }
            Err(source) => return Err(SpecError::Read { path: config, source }),
        };
        let spec = parse_valid(&config, &text)?;
        let root = spec.root().as_ref().ok_or_else(|| SpecError::Field {
            path: config.clone(),
            field: "root".into(),
            problem: "missing: set root.path to the bundle's root filesystem".into(),
        })?;
        let rootfs = if root.path().is_absolute() { root.path().clone() } else { dir.join(root.path()) };
        match std::fs::metadata(&rootfs) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(SpecError::RootfsNotDir(rootfs)),
            Err(_) => return Err(SpecError::RootfsMissing(rootfs)),
        }
        Ok(Bundle { dir, rootfs, spec })
    }

    /// The isolation the bundle asks for through its annotation, if any.
    pub fn requested_isolation(&self) -> Result<Option<Isolation>, SpecError> {
        isolation_from_annotations(&self.spec, &self.dir.join("config.json"))
    }
}

/// Reads a process description (`exec --process FILE`, runtime-spec's
/// `process` object on its own) and checks it as config.json's process is
/// checked. `user` and `cwd` may be left out, as runc allows (uid 0; the
/// missing cwd is then reported as such).
pub fn load_process(path: &Path, text: &str) -> Result<oci_spec::runtime::Process, SpecError> {
    let mut value: serde_json::Value = serde_json::from_str(text).map_err(|e| SpecError::Malformed {
        path: path.to_path_buf(),
        line: e.line(),
        column: e.column(),
        msg: strip_position(&e.to_string()),
    })?;
    if let Some(obj) = value.as_object_mut() {
        obj.entry("user").or_insert_with(|| serde_json::json!({}));
        obj.entry("cwd").or_insert_with(|| serde_json::json!(""));
    }
    let process: oci_spec::runtime::Process = serde_json::from_value(value).map_err(|e| SpecError::Invalid {
        path: path.to_path_buf(),
        line: 0,
        column: 0,
        msg: strip_position(&e.to_string()),
    })?;
    check_process(path, &process)?;
    Ok(process)
}

/// The checks config.json's process gets, for a process given otherwise
/// (`exec`). Errors name the fields without a `process.` prefix.
pub fn check_process(path: &Path, process: &oci_spec::runtime::Process) -> Result<(), SpecError> {
    validate::check_process(path, process, "")
}

/// Parses config.json text, mapping serde's errors to line/column messages.
pub fn parse(path: &Path, text: &str) -> Result<Spec, SpecError> {
    serde_json::from_str::<Spec>(text).map_err(|e| {
        let (line, column, msg) = (e.line(), e.column(), strip_position(&e.to_string()));
        match e.classify() {
            serde_json::error::Category::Data => SpecError::Invalid { path: path.to_path_buf(), line, column, msg },
            _ => SpecError::Malformed { path: path.to_path_buf(), line, column, msg },
        }
    })
}

/// Parses config.json text and validates it: everything [`Bundle::load`]
/// checks short of the file system (the rootfs). `path` only names the
/// file in errors.
pub fn parse_valid(path: &Path, text: &str) -> Result<Spec, SpecError> {
    let spec = parse(path, text)?;
    validate::validate(path, &spec)?;
    Ok(spec)
}

/// The isolation `spec` asks for through its annotation, if any (`path`
/// names the file in errors).
pub fn isolation_of(path: &Path, spec: &Spec) -> Result<Option<Isolation>, SpecError> {
    isolation_from_annotations(spec, path)
}

/// serde_json appends " at line L column C"; we print the position ourselves.
fn strip_position(msg: &str) -> String {
    match msg.rfind(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg.to_string(),
    }
}

fn isolation_from_annotations(spec: &Spec, config: &Path) -> Result<Option<Isolation>, SpecError> {
    let Some(value) = spec.annotations().as_ref().and_then(|a| a.get(ISOLATION_ANNOTATION)) else {
        return Ok(None);
    };
    match value.as_str() {
        "container" | "" => Ok(Some(Isolation::Container)),
        "vm" => Ok(Some(Isolation::Vm)),
        other => Err(SpecError::Field {
            path: config.to_path_buf(),
            field: format!("annotations.\"{ISOLATION_ANNOTATION}\""),
            problem: format!("unknown isolation {other:?}: use \"container\" or \"vm\""),
        }),
    }
}

/// Makes a path absolute against the current directory without resolving
/// symlinks (the bundle path is recorded as given, like runc does).
pub fn absolute(p: &Path) -> std::io::Result<PathBuf> {
    if p.is_absolute() {
        Ok(p.to_path_buf())
    } else {
        Ok(std::env::current_dir()?.join(p))
    }
}

/// Writes the default config.json (or its rootless variant) into `dir`,
/// refusing to overwrite one that exists.
pub fn write_default(dir: &Path, rootless: bool) -> Result<(), SpecError> {
    let path = dir.join("config.json");
    if path.exists() {
        return Err(SpecError::Field {
            path,
            field: "(file)".into(),
            problem: "already exists: remove it first or write into another --bundle".into(),
        });
    }
    let value = if rootless {
        rootless_spec(nix::unistd::geteuid().as_raw(), nix::unistd::getegid().as_raw())
    } else {
        default_spec()
    };
    let mut text = serde_json::to_string_pretty(&value).unwrap_or_default();
    text.push('\n');
    std::fs::write(&path, text).map_err(|source| SpecError::Read { path, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_bundle(config: &str) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("rootfs")).unwrap();
        std::fs::write(d.path().join("config.json"), config).unwrap();
        d
    }

    const MINIMAL: &str = r#"{"ociVersion":"1.0.2","root":{"path":"rootfs"},
        "process":{"cwd":"/","args":["sh"],"user":{"uid":0,"gid":0}}}"#;

    #[test]
    fn loads_a_minimal_bundle_and_resolves_the_rootfs() {
        let d = write_bundle(MINIMAL);
        let b = Bundle::load(d.path()).unwrap();
        assert_eq!(b.rootfs, d.path().join("rootfs"));
        assert_eq!(b.requested_isolation().unwrap(), None);
    }

    #[test]
    fn malformed_json_reports_line_and_column() {
        let d = write_bundle("{\n  \"ociVersion\": \"1.0.2\",\n  oops\n}");
        let e = Bundle::load(d.path()).unwrap_err().to_string();
        assert!(e.contains("malformed JSON at line 3, column 3"), "{e}");
    }

    #[test]
    fn unknown_capability_names_the_value() {
        let d = write_bundle(
            r#"{"ociVersion":"1.0.2","root":{"path":"rootfs"},"process":{"cwd":"/","args":["sh"],
            "user":{"uid":0,"gid":0},"capabilities":{"bounding":["CAP_FLY"]}}}"#,
        );
        let e = Bundle::load(d.path()).unwrap_err().to_string();
        assert!(e.contains("CAP_FLY") && e.contains("line 2"), "{e}");
    }

    #[test]
    fn unknown_namespace_type_names_the_value() {
        let d = write_bundle(
            r#"{"ociVersion":"1.0.2","root":{"path":"rootfs"},"process":{"cwd":"/","args":["sh"],
            "user":{"uid":0,"gid":0}},"linux":{"namespaces":[{"type":"galaxy"}]}}"#,
        );
        let e = Bundle::load(d.path()).unwrap_err().to_string();
        assert!(e.contains("galaxy"), "{e}");
    }

    #[test]
    fn unsupported_major_version_is_refused() {
        let d = write_bundle(&MINIMAL.replace("1.0.2", "2.0.0"));
        let e = Bundle::load(d.path()).unwrap_err();
        assert!(matches!(e, SpecError::UnsupportedVersion { .. }), "{e}");
    }

    #[test]
    fn missing_rootfs_is_named() {
        let d = write_bundle(MINIMAL);
        std::fs::remove_dir(d.path().join("rootfs")).unwrap();
        let e = Bundle::load(d.path()).unwrap_err();
        assert!(matches!(e, SpecError::RootfsMissing(_)), "{e}");
    }

    #[test]
    fn missing_bundle_and_missing_config_differ() {
        let e = Bundle::load(Path::new("/nonexistent/bundle")).unwrap_err();
        assert!(matches!(e, SpecError::BundleMissing(_)), "{e}");
        let d = tempfile::tempdir().unwrap();
        let e = Bundle::load(d.path()).unwrap_err();
        assert!(matches!(e, SpecError::ConfigMissing { .. }), "{e}");
    }

    #[test]
    fn a_process_file_may_leave_out_user_but_not_args() {
        let p = load_process(Path::new("p.json"), r#"{"args":["sh"],"cwd":"/"}"#).unwrap();
        assert_eq!(p.user().uid(), 0);
        let e = load_process(Path::new("p.json"), r#"{"args":["sh"]}"#).unwrap_err().to_string();
        assert!(e.contains("p.json: field `cwd`"), "{e}");
        let e = load_process(Path::new("p.json"), r#"{"args":[],"cwd":"/"}"#).unwrap_err().to_string();
        assert!(e.contains("field `args`"), "{e}");
        let e = load_process(Path::new("p.json"), "{oops").unwrap_err().to_string();
        assert!(e.contains("malformed JSON"), "{e}");
    }

    #[test]
    fn isolation_annotation_is_parsed_and_checked() {
        let with = |v: &str| MINIMAL.replacen('{', &format!(r#"{{"annotations":{{"run.amphi.isolation":"{v}"}},"#), 1);
        let d = write_bundle(&with("vm"));
        assert_eq!(Bundle::load(d.path()).unwrap().requested_isolation().unwrap(), Some(Isolation::Vm));
        let d = write_bundle(&with("jail"));
        let e = Bundle::load(d.path()).unwrap().requested_isolation().unwrap_err().to_string();
        assert!(e.contains("\"jail\"") && e.contains("\"vm\""), "{e}");
    }
}
