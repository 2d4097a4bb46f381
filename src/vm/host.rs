//! Can this host run a stock guest kernel under KVM? Checked before
//! anything is built, so that the answer is a clear refusal instead of a
//! hang: no /dev/kvm, no permission, or a PVM /dev/kvm (which only runs
//! kernels built for PVM).

use std::path::{Path, PathBuf};

pub const DEFAULT_KVM_PATH: &str = "/dev/kvm";

/// What amphi asks of the host, behind a trait so the decisions can be
/// tested without KVM.
pub trait HostProbe {
    fn exists(&self, path: &Path) -> bool;
    fn module_loaded(&self, name: &str) -> bool;
    fn open_rw(&self, path: &Path) -> std::io::Result<()>;
    /// The `flags` line of /proc/cpuinfo.
    fn cpu_flags(&self) -> String;
}

/// The real host.
pub struct SystemHost;

impl HostProbe for SystemHost {
    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }

    fn module_loaded(&self, name: &str) -> bool {
        Path::new("/sys/module").join(name).exists()
    }

    fn open_rw(&self, path: &Path) -> std::io::Result<()> {
        std::fs::OpenOptions::new().read(true).write(true).open(path).map(drop)
    }

    fn cpu_flags(&self) -> String {
        std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|s| s.lines().find(|l| l.starts_with("flags")).map(str::to_string))
            .unwrap_or_default()
    }
}

/// Where to run amphi's VM tests when this host cannot.
pub const WHAT_WORKS: &str = "a Linux host with hardware virtualization (Intel VT-x or AMD-V, with kvm_intel or kvm_amd loaded), or amphi's nested test host (tests/vm/nested-host.sh), which runs the VM inside a QEMU guest that emulates AMD SVM";

#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("{path} does not exist: {hint}")]
    NoKvm { path: PathBuf, hint: String },
    #[error("no permission to open {path}: run as root, or add the user to the group that owns it (usually kvm)")]
    NoPermission { path: PathBuf },
    #[error("cannot open {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("this host's {path} is PVM (the kvm_pvm module is loaded): PVM runs only guest kernels built for it, so a stock distro kernel cannot boot here (it would fail in KVM's instruction emulator). What would work: {WHAT_WORKS}")]
    Pvm { path: PathBuf },
}

/// Refuses clearly when `kvm` cannot run a stock guest.
pub fn check(probe: &dyn HostProbe, kvm: &Path) -> Result<(), HostError> {
    if !probe.exists(kvm) {
        let flags = probe.cpu_flags();
        let has_hw = flags.split_whitespace().any(|f| f == "vmx" || f == "svm");
        let hint = if has_hw {
            "the CPU has hardware virtualization: load kvm_intel or kvm_amd (modprobe kvm_intel / kvm_amd)".to_string()
        } else {
            format!("this machine has no hardware virtualization (no vmx/svm CPU flag). What would work: {WHAT_WORKS}")
        };
        return Err(HostError::NoKvm { path: kvm.into(), hint });
    }
    if probe.module_loaded("kvm_pvm") {
        return Err(HostError::Pvm { path: kvm.into() });
    }
    match probe.open_rw(kvm) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => Err(HostError::NoPermission { path: kvm.into() }),
        Err(source) => Err(HostError::Open { path: kvm.into(), source }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fake {
        exists: bool,
        modules: Vec<&'static str>,
        open: Option<std::io::ErrorKind>,
        flags: &'static str,
    }

    impl HostProbe for Fake {
        fn exists(&self, _: &Path) -> bool {
            self.exists
        }
        fn module_loaded(&self, name: &str) -> bool {
            self.modules.contains(&name)
        }
        fn open_rw(&self, _: &Path) -> std::io::Result<()> {
            match self.open {
                None => Ok(()),
                Some(k) => Err(k.into()),
            }
        }
        fn cpu_flags(&self) -> String {
            self.flags.into()
        }
    }

    fn host() -> Fake {
        Fake { exists: true, modules: vec!["kvm", "kvm_amd"], open: None, flags: "flags : fpu svm" }
    }

    #[test]
    fn a_hardware_kvm_host_passes() {
        check(&host(), Path::new("/dev/kvm")).unwrap();
    }

    #[test]
    fn a_pvm_host_is_refused_with_what_would_work() {
        let h = Fake { modules: vec!["kvm", "kvm_pvm"], ..host() };
        let e = check(&h, Path::new("/dev/kvm")).unwrap_err();
        assert!(matches!(e, HostError::Pvm { .. }));
        let msg = e.to_string();
        assert!(msg.contains("PVM") && msg.contains("stock") && msg.contains("nested test host"), "{msg}");
    }

    #[test]
    fn a_missing_device_says_whether_the_cpu_could_do_it() {
        let e = check(&Fake { exists: false, ..host() }, Path::new("/dev/kvm")).unwrap_err();
        assert!(e.to_string().contains("modprobe"), "{e}");
        let e = check(&Fake { exists: false, flags: "flags : fpu sse", ..host() }, Path::new("/dev/kvm")).unwrap_err();
        assert!(e.to_string().contains("no hardware virtualization"), "{e}");
    }

    #[test]
    fn permission_problems_name_the_fix() {
        let e = check(&Fake { open: Some(std::io::ErrorKind::PermissionDenied), ..host() }, Path::new("/dev/kvm"))
            .unwrap_err();
        assert!(matches!(e, HostError::NoPermission { .. }));
        assert!(e.to_string().contains("run as root"));
    }
}
