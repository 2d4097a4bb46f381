//! What a guest boots: the kernel (a bzImage is booted from its cached,
//! uncompressed vmlinux through the PVH entry), its release and module
//! tree, and the initramfs (the agent plus the modules it loads), built
//! once per set of inputs and cached. `amphi vm check` and every VM
//! container resolve their guest through here.

use std::path::{Path, PathBuf};

use crate::vm::image::{self, ImageError, InitramfsSpec};
use crate::vm::kernel::{self, KernelError};

/// Default cache of initramfs images and unpacked kernels.
pub const DEFAULT_CACHE_DIR: &str = "/var/lib/amphi/cache";

#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    #[error(transparent)]
    Kernel(#[from] KernelError),
    #[error(
        "no guest agent found: looked for amphi-agent next to {exe} and in PATH; build it statically \
         (see docs/vm.md) or pass --agent PATH"
    )]
    NoAgent { exe: PathBuf },
    #[error("cannot assemble the guest image")]
    Image(#[from] ImageError),
}

/// The choices a caller may make; `None` means the default.
#[derive(Debug, Clone, Default)]
pub struct GuestOptions {
    pub kernel: Option<PathBuf>,
    pub modules: Option<PathBuf>,
    pub agent: Option<PathBuf>,
    pub cache_dir: PathBuf,
    /// The running amphi binary: the agent is looked for next to it.
    pub exe: PathBuf,
}

/// A resolved guest.
#[derive(Debug, Clone)]
pub struct Guest {
    /// The kernel as given or found.
    pub kernel: PathBuf,
    /// What the VMM loads: the cached vmlinux of a bzImage, or `kernel`.
    pub boot_kernel: PathBuf,
    pub release: String,
    pub initramfs: PathBuf,
    pub initramfs_cached: bool,
}

/// The agent: `given`, else next to the running binary, else in PATH.
pub fn find_agent(given: Option<&Path>, exe: &Path) -> Result<PathBuf, GuestError> {
    if let Some(p) = given {
        return Ok(p.to_path_buf());
    }
    if let Some(dir) = exe.parent() {
        let p = dir.join("amphi-agent");
        if p.is_file() {
            return Ok(p);
        }
    }
    std::env::var_os("PATH")
        .and_then(|path| std::env::split_paths(&path).map(|d| d.join("amphi-agent")).find(|p| p.is_file()))
        .ok_or(GuestError::NoAgent { exe: exe.into() })
}

/// Finds the kernel, modules and agent, and builds (or finds in the cache)
/// the initramfs and the uncompressed kernel. `progress` hears about slow
/// steps.
pub fn resolve(opts: &GuestOptions, progress: &mut dyn FnMut(&str)) -> Result<Guest, GuestError> {
    let kernel_path = match &opts.kernel {
        Some(k) if !k.is_file() => return Err(KernelError::NotFound { path: k.clone() }.into()),
        Some(k) => k.clone(),
        None => kernel::find_default(Path::new("/boot"), Path::new(kernel::AMPHI_KERNEL_DIR))?,
    };
    let release = kernel::release_of(&kernel_path)?;
    let modules_dir = match &opts.modules {
        Some(m) => m.clone(),
        None => kernel::default_modules_dir(&kernel_path, &release, Path::new("/lib/modules"))?,
    };
    let agent = find_agent(opts.agent.as_deref(), &opts.exe)?;
    let spec = InitramfsSpec {
        agent: &agent,
        modules_dir: &modules_dir,
        kernel_release: &release,
        modules: crate::vm::GUEST_MODULES,
    };
    let image = image::build_or_reuse(&spec, &opts.cache_dir, progress)?;
    let boot_kernel =
        image::vmlinux::uncompressed(&kernel_path, &opts.cache_dir, progress)?.unwrap_or_else(|| kernel_path.clone());
    Ok(Guest { kernel: kernel_path, boot_kernel, release, initramfs: image.path, initramfs_cached: image.from_cache })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_agent_is_found_next_to_the_binary_first() {
        let d = tempfile::tempdir().unwrap();
        let exe = d.path().join("amphi");
        std::fs::write(d.path().join("amphi-agent"), b"x").unwrap();
        assert_eq!(find_agent(None, &exe).unwrap(), d.path().join("amphi-agent"));
        assert_eq!(find_agent(Some(Path::new("/x/a")), &exe).unwrap(), PathBuf::from("/x/a"));
    }

    #[test]
    fn a_missing_kernel_is_named() {
        let opts = GuestOptions { kernel: Some("/no/such/kernel".into()), ..Default::default() };
        let e = resolve(&opts, &mut |_| {}).unwrap_err();
        assert!(e.to_string().contains("/no/such/kernel"), "{e}");
    }
}
