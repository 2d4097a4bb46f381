//! The VMM's side of templates: building one with a VMM child that boots
//! the guest and saves it ([`VmmBuilder`]), and the choice `create` makes
//! for a VM container between restoring a template and booting cold
//! ([`choose`]).
//!
//! A template has the devices of every container VM (vsock, the `amphi`
//! share, the balloon), the container's memory size, vCPU count and kernel
//! arguments; VMs with disks or network interfaces boot cold, since their
//! drivers probe backends a template cannot swap.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::{build_into, BuildFailure, BuildReport, Cache, Selection, Template, TemplateBuilder, TemplateInputs};
use crate::vm::check::{self, TemplateBoot};
use crate::vm::guest::Guest;
use crate::vm::process::ChildArgs;
use crate::vm::vmm::persist::{RestoreSource, VmSnapshot};
use crate::vm::vmm::snapshot::HostFingerprint;

/// How long a template build may take, from VMM start to the saved state.
/// Generous: under TCG a cold boot alone takes several seconds.
pub const BUILD_TIMEOUT: Duration = Duration::from_secs(120);

/// Builds templates by running `amphi vm run-vmm --template-out`.
#[derive(Debug, Clone)]
pub struct VmmBuilder {
    pub kvm_path: PathBuf,
    /// The `amphi` binary the VMM child runs.
    pub vmm_binary: PathBuf,
    /// Extra kernel arguments of the VMs (`run.amphi.vm.kernel-args`).
    pub kernel_args: Option<String>,
    pub free_page_reporting: bool,
    /// Where this host's fingerprint is kept between calls (the templates'
    /// root): measuring it starts a scratch VM.
    pub fingerprint_dir: PathBuf,
}

impl VmmBuilder {
    fn boot(&self, inputs: &TemplateInputs) -> TemplateBoot {
        TemplateBoot {
            kernel: inputs.kernel.clone(),
            initramfs: inputs.initramfs.clone(),
            cmdline: self.cmdline(),
            memory_mib: inputs.mem_mib,
            cpus: inputs.vcpus,
            free_page_reporting: self.free_page_reporting,
            kvm_path: self.kvm_path.clone(),
            vmm_binary: self.vmm_binary.clone(),
            timeout: BUILD_TIMEOUT,
        }
    }

    /// The VMM's arguments for a VM with the devices of the template made
    /// from `inputs`.
    pub fn boot_args(&self, inputs: &TemplateInputs, uds: PathBuf, serial: Option<PathBuf>, share: &Path) -> ChildArgs {
        self.boot(inputs).child_args(uds, serial, share)
    }

    /// The restored VMs' command line (the template's, less its word).
    fn cmdline(&self) -> String {
        match &self.kernel_args {
            Some(extra) => format!("{} {extra}", crate::vm::GUEST_CMDLINE),
            None => crate::vm::GUEST_CMDLINE.to_string(),
        }
    }
}

impl TemplateBuilder for VmmBuilder {
    fn inputs(&self, guest: &Guest, mem_mib: u64, vcpus: u8) -> Result<TemplateInputs, BuildFailure> {
        let mut inputs = TemplateInputs {
            kernel: guest.boot_kernel.clone(),
            initramfs: guest.initramfs.clone(),
            cmdline: String::new(),
            mem_mib,
            vcpus,
            devices: Vec::new(),
            host: host_fingerprint(&self.fingerprint_dir, &self.kvm_path)?,
        };
        let boot = self.boot(&inputs);
        inputs.cmdline = boot.template_cmdline();
        inputs.devices = boot.devices();
        Ok(inputs)
    }

    fn build(
        &self,
        inputs: &TemplateInputs,
        dir: &Path,
        progress: &mut dyn FnMut(&str),
    ) -> Result<BuildReport, BuildFailure> {
        let took = check::build_template(&self.boot(inputs), dir, None)?;
        let state: VmSnapshot = serde_json::from_slice(&std::fs::read(dir.join(super::cache::STATE_FILE))?)?;
        progress(&format!("the guest booted and was saved in {} ms", took.as_millis()));
        Ok(BuildReport { skipped_msrs: state.skipped_msrs, notes: Vec::new() })
    }
}

/// The fingerprint file in `dir`: valid for one boot of the host (a
/// reboot may bring another kernel, CPU microcode or TSC calibration).
const FINGERPRINT_FILE: &str = "host-fingerprint.json";

#[derive(Debug, serde::Serialize, serde::Deserialize, PartialEq)]
struct CachedFingerprint {
    boot_id: String,
    kvm: PathBuf,
    fingerprint: HostFingerprint,
}

/// This host's KVM, as templates are keyed by it: a template only
/// restores on the CPU and kernel that made it. Measured once per host
/// boot and kept in `dir`.
fn host_fingerprint(dir: &Path, kvm_path: &Path) -> Result<String, BuildFailure> {
    let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id")?.trim().to_string();
    let file = dir.join(FINGERPRINT_FILE);
    if let Some(c) = std::fs::read(&file).ok().and_then(|b| serde_json::from_slice::<CachedFingerprint>(&b).ok()) {
        if c.boot_id == boot_id && c.kvm == kvm_path {
            return Ok(c.fingerprint.digest);
        }
    }
    let path = std::ffi::CString::new(kvm_path.as_os_str().as_encoded_bytes())?;
    let kvm = kvm_ioctls::Kvm::new_with_path(path)?;
    let fingerprint = crate::vm::vmm::snapshot::host_fingerprint(&kvm)?;
    let digest = fingerprint.digest.clone();
    let cached = CachedFingerprint { boot_id, kvm: kvm_path.to_path_buf(), fingerprint };
    // Best effort, written whole or not at all: a reader never sees half.
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".{FINGERPRINT_FILE}.{}", std::process::id()));
    if std::fs::write(&tmp, serde_json::to_vec(&cached)?).is_ok() && std::fs::rename(&tmp, &file).is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    Ok(digest)
}

/// What a VM container starts from.
#[derive(Debug)]
pub enum Boot {
    /// The template, its state read and its memory open.
    Restore { template: Box<Template>, source: Arc<RestoreSource> },
    /// A cold boot, and why.
    Cold(String),
}

/// What decides whether a VM container may use a template.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wanted {
    /// `run.amphi.vm.template`.
    pub annotation: Option<bool>,
    /// `--vm-template` / `AMPHI_VM_TEMPLATE`.
    pub global: Option<bool>,
    pub disks: usize,
    pub nets: usize,
}

impl Wanted {
    /// Why this VM boots cold whatever the cache holds, if it does:
    /// templates are on unless either setting turns them off (the
    /// annotation cannot turn them on against the global setting).
    pub fn refusal(&self) -> Option<String> {
        if self.annotation == Some(false) {
            return Some("the annotation run.amphi.vm.template is false".into());
        }
        if self.global == Some(false) {
            return Some("templates are off (--vm-template=false or AMPHI_VM_TEMPLATE=false)".into());
        }
        if self.disks > 0 {
            return Some("the VM has disks, which a template cannot carry".into());
        }
        if self.nets > 0 {
            return Some("the VM has network interfaces, which a template cannot carry".into());
        }
        None
    }
}

/// Finds, or builds, the template for a VM of `mem_mib` and `vcpus`
/// booting `guest`. Never fails: every reason not to restore (settings,
/// a template another create is building, a bad one, a failed build)
/// becomes a cold boot and says why.
pub fn choose(
    wanted: &Wanted,
    cache: &Cache,
    builder: &VmmBuilder,
    guest: &Guest,
    mem_mib: u64,
    vcpus: u8,
    progress: &mut dyn FnMut(&str),
) -> Boot {
    if let Some(why) = wanted.refusal() {
        return Boot::Cold(why);
    }
    let inputs = match builder.inputs(guest, mem_mib, vcpus) {
        Ok(i) => i,
        Err(e) => {
            return Boot::Cold(format!("cannot work out the template's inputs: {}", crate::logging::chain(e.as_ref())))
        }
    };
    let key = match cache.key(&inputs) {
        Ok(k) => k,
        Err(e) => return Boot::Cold(format!("the template cache: {}", crate::logging::chain(&e))),
    };
    let template = match cache.select(&key) {
        Ok(Selection::Ready(t)) => *t,
        Ok(Selection::Build(slot)) => match build_into(slot, &inputs, builder, progress) {
            Ok(t) => t,
            Err(e) => return Boot::Cold(crate::logging::chain(&e)),
        },
        Ok(Selection::Busy { pid }) => {
            let by = pid.map(|p| format!(" by pid {p}")).unwrap_or_default();
            return Boot::Cold(format!("the template {key} is being built{by}"));
        }
        Ok(Selection::Bad { reason }) => {
            return Boot::Cold(format!("the template {key} is marked bad ({reason}); `amphi vm template rm {key}`"))
        }
        Err(e) => return Boot::Cold(format!("the template cache: {}", crate::logging::chain(&e))),
    };
    match RestoreSource::open(&template.dir) {
        Ok(source) => {
            let _ = template.touch_used();
            Boot::Restore { template: Box::new(template), source: Arc::new(source) }
        }
        Err(e) => {
            let reason = crate::logging::chain(&e);
            let _ = cache.mark_bad(&template.key, &reason);
            Boot::Cold(format!("the template {} cannot be read: {reason}", template.key))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wanted() -> Wanted {
        Wanted { annotation: None, global: None, disks: 0, nets: 0 }
    }

    #[test]
    fn templates_are_on_unless_a_setting_or_the_devices_say_otherwise() {
        let on = wanted();
        assert_eq!(on.refusal(), None);
        assert_eq!(Wanted { global: Some(true), ..wanted() }.refusal(), None);
        assert_eq!(Wanted { annotation: Some(true), ..wanted() }.refusal(), None);
        assert_eq!(Wanted { annotation: Some(true), global: Some(true), ..wanted() }.refusal(), None);
        let off = |w: Wanted| w.refusal().unwrap();
        assert!(off(Wanted { annotation: Some(false), ..wanted() }).contains("run.amphi.vm.template"));
        assert!(off(Wanted { annotation: Some(true), global: Some(false), ..wanted() }).contains("--vm-template"));
        assert!(off(Wanted { annotation: Some(false), global: Some(true), ..wanted() }).contains("annotation"));
        assert!(off(Wanted { disks: 1, ..on }).contains("disks"));
        assert!(off(Wanted { nets: 2, ..on }).contains("network"));
    }

    #[test]
    fn a_builder_boots_with_the_containers_command_line_plus_the_template_word() {
        let b = VmmBuilder {
            kvm_path: "/dev/kvm".into(),
            vmm_binary: "/amphi".into(),
            kernel_args: Some("loglevel=3".into()),
            free_page_reporting: true,
            fingerprint_dir: "/nonexistent".into(),
        };
        let inputs = TemplateInputs {
            kernel: "/k".into(),
            initramfs: "/i".into(),
            cmdline: String::new(),
            mem_mib: 512,
            vcpus: 2,
            devices: Vec::new(),
            host: String::new(),
        };
        let boot = b.boot(&inputs);
        assert_eq!(
            boot.template_cmdline(),
            format!("{} loglevel=3 {}", crate::vm::GUEST_CMDLINE, crate::agent::TEMPLATE_CMDLINE_WORD)
        );
        assert_eq!(boot.devices(), ["vsock:3", "fs:amphi", "balloon:fpr"]);
        assert_eq!((boot.memory_mib, boot.cpus), (512, 2));
    }
}
