//! VM templates: a guest booted once to its agent and snapshotted, which
//! later VMs restore copy-on-write instead of booting. This module is the
//! cache of templates on disk ([`cache`]), the key naming one ([`key`]),
//! and `amphi vm template build|list|rm` on top of them. Booting and
//! snapshotting the guest is the VMM's part, reached through
//! [`TemplateBuilder`].

pub mod cache;
pub mod key;
pub mod vmm;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::exit;
use crate::vm::guest::{self, Guest, GuestError, GuestOptions};
use crate::vm::vmm::MIN_MEM_MIB;

pub use cache::{Builder, Cache, Manifest, Selection, Sizes, Template, TemplateInfo, MAX_TEMPLATES, TEMPLATES_DIR};
pub use key::{TemplateInputs, TemplateKey, FORMAT};

/// A failure of the VMM's side of a build, kept whole for its message and
/// exit status.
pub type BuildFailure = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("cannot use the template cache at {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read {path}, an input of the VM template")]
    Input {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0:?} is not a template key: give one (or the start of one) as `amphi vm template list` shows it")]
    BadKey(String),
    #[error("no template {key} in {root}")]
    NotFound { key: String, root: PathBuf },
    #[error("{prefix:?} is the start of several templates ({}): give more of the key", join(.keys))]
    Ambiguous { prefix: String, keys: Vec<TemplateKey> },
    #[error("template {key} is marked bad ({reason}): remove it with `amphi vm template rm {key}` to build it again")]
    Bad { key: TemplateKey, reason: String },
    #[error("template {key} is being built by {}", .pid.map_or("another process".to_string(), |p| format!("pid {p}")))]
    Busy { key: TemplateKey, pid: Option<i32> },
    #[error("the built template {key} is incomplete: {reason}")]
    Incomplete { key: TemplateKey, reason: String },
    #[error("{memory} MiB is too little guest memory: pass --memory {MIN_MEM_MIB} or more")]
    Memory { memory: u64 },
    #[error("cannot resolve the guest to build the template for")]
    Guest(#[from] GuestError),
    #[error("{what}")]
    Build {
        what: String,
        #[source]
        source: BuildFailure,
    },
}

fn join(keys: &[TemplateKey]) -> String {
    keys.iter().map(TemplateKey::as_str).collect::<Vec<_>>().join(", ")
}

impl TemplateError {
    /// The `amphi` exit status for this failure.
    pub fn exit_code(&self) -> u8 {
        match self {
            TemplateError::BadKey(_) | TemplateError::Ambiguous { .. } => exit::BAD_INPUT,
            TemplateError::NotFound { .. } => exit::NOT_FOUND,
            TemplateError::Bad { .. } | TemplateError::Busy { .. } => exit::CONFLICT,
            // The VMM's own failures keep the status `amphi vm check` gives
            // them (boot timeout, guest panic, ...).
            TemplateError::Build { source, .. } => {
                source.downcast_ref::<crate::vm::CheckError>().map_or(exit::GENERAL, crate::vm::CheckError::exit_code)
            }
            _ => exit::GENERAL,
        }
    }
}

/// What the VMM reports about a template it wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BuildReport {
    /// MSRs the host listed but refused to save.
    pub skipped_msrs: Vec<u32>,
    pub notes: Vec<String>,
}

/// The VMM's part of a build.
pub trait TemplateBuilder {
    /// The inputs of the template for a VM of `mem_mib` and `vcpus` booting
    /// `guest`: exactly those a VM container of that size computes, so the
    /// template built ahead is the one containers restore.
    fn inputs(&self, guest: &Guest, mem_mib: u64, vcpus: u8) -> Result<TemplateInputs, BuildFailure>;

    /// Boots a guest as `inputs` say, snapshots it once its agent listens
    /// and writes [`cache::STATE_FILE`], [`cache::MEMORY_FILE`] and
    /// [`cache::CONSOLE_FILE`] into `dir`.
    fn build(
        &self,
        inputs: &TemplateInputs,
        dir: &Path,
        progress: &mut dyn FnMut(&str),
    ) -> Result<BuildReport, BuildFailure>;
}

/// What `amphi vm template build` builds.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// The guest, as for `amphi vm check`; its cache directory holds the
    /// templates too (under [`TEMPLATES_DIR`]).
    pub guest: GuestOptions,
    pub mem_mib: u64,
    pub vcpus: u8,
}

/// A template `build` made or found.
#[derive(Debug, Clone)]
pub struct BuildOutcome {
    pub template: Template,
    /// False when it existed already.
    pub built: bool,
}

/// Makes sure the template for `opts` exists: finds it, waits for another
/// builder of it, or builds it with `builder`.
pub fn build(
    opts: &BuildOptions,
    builder: &dyn TemplateBuilder,
    progress: &mut dyn FnMut(&str),
) -> Result<BuildOutcome, TemplateError> {
    if opts.mem_mib < MIN_MEM_MIB {
        return Err(TemplateError::Memory { memory: opts.mem_mib });
    }
    let guest = guest::resolve(&opts.guest, progress)?;
    let cache = Cache::in_cache_dir(&opts.guest.cache_dir);
    build_for(&cache, &guest, opts.mem_mib, opts.vcpus, builder, progress)
}

/// [`build`] for a resolved guest, in `cache`.
pub fn build_for(
    cache: &Cache,
    guest: &Guest,
    mem_mib: u64,
    vcpus: u8,
    builder: &dyn TemplateBuilder,
    progress: &mut dyn FnMut(&str),
) -> Result<BuildOutcome, TemplateError> {
    let inputs = builder
        .inputs(guest, mem_mib, vcpus)
        .map_err(|source| TemplateError::Build { what: "cannot work out the template's inputs".into(), source })?;
    let key = cache.key(&inputs)?;
    match cache.wait_and_select(&key, progress)? {
        Selection::Ready(template) => Ok(BuildOutcome { template: *template, built: false }),
        Selection::Build(slot) => {
            Ok(BuildOutcome { template: build_into(slot, &inputs, builder, progress)?, built: true })
        }
        Selection::Bad { reason } => Err(TemplateError::Bad { key, reason }),
        Selection::Busy { pid } => Err(TemplateError::Busy { key, pid }),
    }
}

/// Builds the template `slot` is for (from [`Cache::select`]) and commits
/// it; on failure the slot is dropped, which removes what was written.
pub fn build_into(
    slot: Builder,
    inputs: &TemplateInputs,
    builder: &dyn TemplateBuilder,
    progress: &mut dyn FnMut(&str),
) -> Result<Template, TemplateError> {
    let t0 = Instant::now();
    progress(&format!(
        "building the VM template {} ({} MiB, {} vCPU, kernel {}; once: later VMs restore it)",
        slot.key(),
        inputs.mem_mib,
        inputs.vcpus,
        inputs.kernel.display()
    ));
    let report = builder.build(inputs, slot.dir(), progress).map_err(|source| TemplateError::Build {
        what: format!("building the VM template {} failed", slot.key()),
        source,
    })?;
    let manifest = slot.manifest(inputs, report, t0.elapsed())?;
    slot.commit(&manifest)
}

/// `amphi vm template list` as a table; `verbose` adds each template's
/// inputs, notes and the end of its boot console.
pub fn render_list(infos: &[TemplateInfo], verbose: bool, w: &mut dyn Write) -> std::io::Result<()> {
    if infos.is_empty() {
        return writeln!(w, "no VM templates");
    }
    let opt = |v: Option<String>| v.unwrap_or_else(|| "-".into());
    writeln!(
        w,
        "{:<32}  {:>7}  {:>5}  {:>9}  {:<19}  {:<19}  KERNEL",
        "KEY", "MEMORY", "VCPUS", "DISK", "CREATED", "LAST USED"
    )?;
    for i in infos {
        writeln!(
            w,
            "{:<32}  {:>7}  {:>5}  {:>9}  {:<19}  {:<19}  {}",
            i.key,
            opt(i.mem_mib.map(|m| format!("{m} MiB"))),
            opt(i.vcpus.map(|v| v.to_string())),
            format!("{:.1} MiB", i.disk_bytes as f64 / (1024.0 * 1024.0)),
            opt(i.created.map(date)),
            opt(i.last_used.map(date)),
            opt(i.kernel.as_ref().map(|k| k.display().to_string())),
        )?;
        if let Some(reason) = &i.bad {
            writeln!(w, "  not used: {reason}")?;
        }
        if verbose {
            render_details(i, w)?;
        }
    }
    Ok(())
}

fn render_details(i: &TemplateInfo, w: &mut dyn Write) -> std::io::Result<()> {
    writeln!(w, "  directory   {}", i.dir.display())?;
    if let Some(m) = &i.manifest {
        writeln!(w, "  initramfs   {}", m.inputs.initramfs.display())?;
        writeln!(w, "  cmdline     {}", m.inputs.cmdline)?;
        writeln!(w, "  devices     {}", m.inputs.devices.join(" "))?;
        writeln!(w, "  host        {}", m.inputs.host)?;
        writeln!(w, "  build       {} ms, memory file {} MiB", m.build_ms, m.sizes.memory >> 20)?;
        if !m.skipped_msrs.is_empty() {
            let msrs: Vec<String> = m.skipped_msrs.iter().map(|r| format!("{r:#x}")).collect();
            writeln!(w, "  skipped MSRs {}", msrs.join(" "))?;
        }
        for n in &m.notes {
            writeln!(w, "  note        {n}")?;
        }
    }
    let console = crate::vm::check::tail(Some(&i.dir.join(cache::CONSOLE_FILE)), 10);
    if !console.is_empty() {
        writeln!(w, "  console (last lines):")?;
        for l in console {
            writeln!(w, "    {l}")?;
        }
    }
    Ok(())
}

/// "YYYY-MM-DD HH:MM:SS" (UTC) of a Unix time.
fn date(secs: u64) -> String {
    let full = crate::container::state::rfc3339(secs as i64, 0);
    full.get(..19).unwrap_or(&full).replace('T', " ")
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use super::*;

    /// Writes a template's files as the VMM would, counting its builds.
    struct FakeVmm {
        host: String,
        builds: RefCell<u32>,
        fail: bool,
    }

    impl TemplateBuilder for FakeVmm {
        fn inputs(&self, guest: &Guest, mem_mib: u64, vcpus: u8) -> Result<TemplateInputs, BuildFailure> {
            Ok(TemplateInputs {
                kernel: guest.boot_kernel.clone(),
                initramfs: guest.initramfs.clone(),
                cmdline: "console=ttyS0 amphi.template".into(),
                mem_mib,
                vcpus,
                devices: vec!["vsock:3".into()],
                host: self.host.clone(),
            })
        }

        fn build(
            &self,
            inputs: &TemplateInputs,
            dir: &Path,
            progress: &mut dyn FnMut(&str),
        ) -> Result<BuildReport, BuildFailure> {
            *self.builds.borrow_mut() += 1;
            progress("fake boot");
            if self.fail {
                return Err(Box::new(crate::vm::CheckError::Interrupted));
            }
            std::fs::write(dir.join(cache::STATE_FILE), b"{}")?;
            std::fs::write(dir.join(cache::CONSOLE_FILE), b"Linux version 6.1\nagent listening\n")?;
            std::fs::File::create(dir.join(cache::MEMORY_FILE))?.set_len(inputs.mem_mib << 20)?;
            Ok(BuildReport { skipped_msrs: vec![0x48], notes: vec![] })
        }
    }

    /// A resolved guest made of plain files in `d`, and a cache beside it.
    fn guest(d: &Path) -> (Guest, Cache) {
        for f in ["vmlinux.elf", "initramfs.cpio"] {
            std::fs::write(d.join(f), f).unwrap();
        }
        let g = Guest {
            kernel: d.join("vmlinuz"),
            boot_kernel: d.join("vmlinux.elf"),
            release: "6.1.0-test".into(),
            initramfs: d.join("initramfs.cpio"),
            initramfs_cached: true,
        };
        (g, Cache::in_cache_dir(&d.join("cache")))
    }

    fn vmm(fail: bool) -> FakeVmm {
        FakeVmm { host: "h".into(), builds: RefCell::new(0), fail }
    }

    #[test]
    fn build_makes_the_template_once() {
        let d = tempfile::tempdir().unwrap();
        let (g, cache) = guest(d.path());
        let vmm = vmm(false);
        let mut said = Vec::new();
        let first = build_for(&cache, &g, 256, 1, &vmm, &mut |m| said.push(m.to_string())).unwrap();
        assert!(first.built);
        assert!(said.iter().any(|m| m.contains("building the VM template")), "{said:?}");
        assert_eq!(first.template.manifest.skipped_msrs, [0x48]);
        let again = build_for(&cache, &g, 256, 1, &vmm, &mut |_| {}).unwrap();
        assert!(!again.built);
        assert_eq!(again.template.key, first.template.key);
        assert_eq!(*vmm.builds.borrow(), 1);
        let other = build_for(&cache, &g, 512, 1, &vmm, &mut |_| {}).unwrap();
        assert_ne!(other.template.key, first.template.key, "another size is another template");

        let mut out = Vec::new();
        render_list(&cache.list().unwrap(), true, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains(first.template.key.as_str()) && text.contains("256 MiB"), "{text}");
        assert!(text.contains("agent listening") && text.contains("0x48"), "{text}");

        cache.mark_bad(&first.template.key, "restore failed").unwrap();
        let e = build_for(&cache, &g, 256, 1, &vmm, &mut |_| {}).unwrap_err();
        assert!(e.to_string().contains("amphi vm template rm"), "{e}");
        assert_eq!(e.exit_code(), exit::CONFLICT);
    }

    #[test]
    fn a_failed_build_leaves_nothing_and_keeps_its_exit_status() {
        let d = tempfile::tempdir().unwrap();
        let (g, cache) = guest(d.path());
        let e = build_for(&cache, &g, 256, 1, &vmm(true), &mut |_| {}).unwrap_err();
        assert!(e.to_string().contains("building the VM template"), "{e}");
        assert_eq!(e.exit_code(), 130, "the VMM's own status");
        assert!(cache.list().unwrap().is_empty());
        let left: Vec<_> = std::fs::read_dir(cache.root()).unwrap().flatten().map(|e| e.file_name()).collect();
        assert!(left.iter().all(|n| !n.to_string_lossy().ends_with(".tmp")), "{left:?}");
    }

    #[test]
    fn too_little_memory_is_refused_before_anything_runs() {
        let opts = BuildOptions { guest: GuestOptions::default(), mem_mib: 1, vcpus: 1 };
        let vmm = vmm(false);
        let e = build(&opts, &vmm, &mut |_| {}).unwrap_err();
        assert!(matches!(e, TemplateError::Memory { memory: 1 }), "{e}");
        assert_eq!(*vmm.builds.borrow(), 0);
    }

    #[test]
    fn errors_map_to_stable_exit_codes() {
        let k = TemplateKey::parse("0123456789abcdef0123456789abcdef").unwrap();
        assert_eq!(TemplateError::BadKey("x".into()).exit_code(), exit::BAD_INPUT);
        assert_eq!(TemplateError::NotFound { key: "ab".into(), root: "/r".into() }.exit_code(), exit::NOT_FOUND);
        assert_eq!(TemplateError::Bad { key: k.clone(), reason: "r".into() }.exit_code(), exit::CONFLICT);
        let e = TemplateError::Busy { key: k, pid: Some(7) };
        assert!(e.to_string().ends_with("being built by pid 7"), "{e}");
        assert_eq!(date(951_782_400), "2000-02-29 00:00:00");
    }
}
