//! AppArmor profiles and SELinux labels of the container's processes
//! (`process.apparmorProfile`, `process.selinuxLabel`, `exec --apparmor`,
//! `exec --process-label`).
//!
//! Where the host runs the security module, the label is set the way runc
//! sets it: written to the process's own "exec" attribute just before
//! execve, so the workload (and nothing of amphi) runs under it. Where the
//! host does not run it, the label cannot be applied; it is then reported
//! once per command with a warning and ignored, never silently dropped, and
//! `amphi features` says the module is not enabled.

use std::path::Path;

use super::LinuxError;

/// Which modules the host runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Host {
    pub apparmor: bool,
    pub selinux: bool,
}

impl Host {
    /// Reads the host's state (cheap: two small files at most).
    pub fn detect() -> Host {
        Host::detect_in(Path::new("/"))
    }

    /// The same, with the system's files under `root` (tests).
    pub fn detect_in(root: &Path) -> Host {
        let apparmor = std::fs::read_to_string(root.join("sys/module/apparmor/parameters/enabled"))
            .is_ok_and(|s| s.trim() == "Y")
            && root.join("sys/kernel/security/apparmor").exists();
        let selinux = root.join("sys/fs/selinux/enforce").exists();
        Host { apparmor, selinux }
    }
}

/// The labels to apply in the child, decided in the parent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Labels {
    pub apparmor: Option<String>,
    pub selinux: Option<String>,
}

impl Labels {
    /// Keeps the labels the host can apply and warns about the others.
    pub fn plan(host: Host, apparmor: Option<&str>, selinux: Option<&str>) -> Labels {
        let apparmor = apparmor.filter(|p| !p.is_empty()).and_then(|p| {
            if host.apparmor {
                Some(p.to_string())
            } else {
                crate::logging::warn_once(
                    "apparmor",
                    &format!(
                        "process.apparmorProfile {p:?} ignored: AppArmor is not enabled on this host \
                         (see `amphi features`)"
                    ),
                );
                None
            }
        });
        let selinux = selinux.filter(|l| !l.is_empty()).and_then(|l| {
            if host.selinux {
                Some(l.to_string())
            } else {
                crate::logging::warn_once(
                    "selinux",
                    &format!("process.selinuxLabel {l:?} ignored: SELinux is not enabled on this host (see `amphi features`)"),
                );
                None
            }
        });
        Labels { apparmor, selinux }
    }

    pub fn is_empty(&self) -> bool {
        self.apparmor.is_none() && self.selinux.is_none()
    }

    /// In the child, in the container's mount namespace with its /proc:
    /// the labels the next execve switches to.
    pub fn apply(&self, proc_self_attr: &Path) -> Result<(), LinuxError> {
        if let Some(p) = &self.apparmor {
            // AppArmor's own directory (Linux 5.8+ with LSM stacking), else
            // the shared attribute.
            let own = proc_self_attr.join("apparmor/exec");
            let file = if own.exists() { own } else { proc_self_attr.join("exec") };
            std::fs::write(&file, format!("exec {p}")).map_err(|e| {
                LinuxError::io(format!("cannot apply AppArmor profile {p:?} (is it loaded? apparmor_parser -r)"), e)
            })?;
        }
        if let Some(l) = &self.selinux {
            std::fs::write(proc_self_attr.join("exec"), l)
                .map_err(|e| LinuxError::io(format!("cannot apply SELinux label {l:?}"), e))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_modules_from_their_files() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(Host::detect_in(d.path()), Host::default());
        std::fs::create_dir_all(d.path().join("sys/module/apparmor/parameters")).unwrap();
        std::fs::write(d.path().join("sys/module/apparmor/parameters/enabled"), "Y\n").unwrap();
        assert!(!Host::detect_in(d.path()).apparmor, "securityfs is not mounted");
        std::fs::create_dir_all(d.path().join("sys/kernel/security/apparmor")).unwrap();
        std::fs::create_dir_all(d.path().join("sys/fs/selinux")).unwrap();
        std::fs::write(d.path().join("sys/fs/selinux/enforce"), "1").unwrap();
        assert_eq!(Host::detect_in(d.path()), Host { apparmor: true, selinux: true });
    }

    #[test]
    fn labels_the_host_cannot_apply_are_dropped() {
        let none = Labels::plan(Host::default(), Some("docker-default"), Some("system_u:system_r:container_t:s0"));
        assert!(none.is_empty());
        let both = Labels::plan(Host { apparmor: true, selinux: true }, Some("docker-default"), Some("x"));
        assert_eq!(both.apparmor.as_deref(), Some("docker-default"));
        assert_eq!(Labels::plan(Host { apparmor: true, selinux: true }, Some(""), None), Labels::default());
    }

    #[test]
    fn apply_writes_the_exec_attributes() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("exec"), "").unwrap();
        let l = Labels { apparmor: Some("p1".into()), selinux: None };
        l.apply(d.path()).unwrap();
        assert_eq!(std::fs::read_to_string(d.path().join("exec")).unwrap(), "exec p1");
        std::fs::create_dir(d.path().join("apparmor")).unwrap();
        std::fs::write(d.path().join("apparmor/exec"), "").unwrap();
        l.apply(d.path()).unwrap();
        assert_eq!(std::fs::read_to_string(d.path().join("apparmor/exec")).unwrap(), "exec p1");
        let s = Labels { apparmor: None, selinux: Some("lbl".into()) };
        s.apply(d.path()).unwrap();
        assert_eq!(std::fs::read_to_string(d.path().join("exec")).unwrap(), "lbl");
    }
}
