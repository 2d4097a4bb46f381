//! `amphi vm ...`: tools for the VM isolation.

use std::path::PathBuf;

use amphi::vm::vmm::{DiskConfig, FsShare, NetConfig};
use clap::{Args, Subcommand};

#[derive(Debug, Subcommand)]
pub enum VmCommand {
    /// Boot a guest, handshake with amphi-agent over vsock, print what it
    /// reports and a time breakdown, then power it off.
    Check(CheckArgs),
    /// Run the VMM itself (started by amphi; not for direct use).
    #[command(hide = true)]
    RunVmm(RunVmmArgs),
    /// VM templates: a guest booted once and snapshotted, which new VMs
    /// restore instead of booting.
    #[command(subcommand)]
    Template(TemplateCommand),
}

#[derive(Debug, Subcommand)]
pub enum TemplateCommand {
    /// List the cached templates, most recently used first.
    #[command(alias = "ls")]
    List(TemplateListArgs),
    /// Build the template VM containers of this size restore (if it is
    /// not built yet; waits for another build of it).
    Build(TemplateBuildArgs),
    /// Remove templates (VMs running from one keep running).
    Rm(TemplateRmArgs),
}

#[derive(Debug, Args)]
pub struct TemplateCacheArg {
    /// Directory of the guest image cache; templates live in its
    /// `templates` subdirectory.
    #[arg(long = "cache-dir", value_name = "DIR", default_value = amphi::vm::guest::DEFAULT_CACHE_DIR)]
    pub cache_dir: PathBuf,
}

#[derive(Debug, Args)]
pub struct TemplateListArgs {
    /// Print the list as JSON.
    #[arg(long)]
    pub json: bool,

    /// Show each template's inputs, notes and the end of its boot console.
    #[arg(short, long)]
    pub verbose: bool,

    #[command(flatten)]
    pub cache: TemplateCacheArg,
}

#[derive(Debug, Args)]
pub struct TemplateBuildArgs {
    /// Guest kernel, bzImage or ELF vmlinux [default: the one VM containers
    /// boot].
    #[arg(long, value_name = "PATH")]
    pub kernel: Option<PathBuf>,

    /// Guest memory in MiB (a VM container gets its memory limit plus 128,
    /// or 512 without a limit).
    #[arg(long, value_name = "MIB", default_value_t = amphi::vm::sandbox::plan::DEFAULT_MEMORY_MIB)]
    pub memory: u64,

    /// Number of vCPUs.
    #[arg(long, value_name = "N", default_value_t = amphi::vm::sandbox::plan::DEFAULT_VCPUS,
          value_parser = clap::value_parser!(u8).range(1..=254))]
    pub cpus: u8,

    #[command(flatten)]
    pub cache: TemplateCacheArg,
}

#[derive(Debug, Args)]
pub struct TemplateRmArgs {
    /// Keys of the templates to remove (or the start of one), as `list`
    /// shows them.
    #[arg(value_name = "KEY", required_unless_present = "all", conflicts_with = "all")]
    pub keys: Vec<String>,

    /// Remove every template.
    #[arg(long)]
    pub all: bool,

    #[command(flatten)]
    pub cache: TemplateCacheArg,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Guest kernel, bzImage or ELF vmlinux [default: newest /boot/vmlinuz-*
    /// or /var/lib/amphi/kernels/*/boot/vmlinuz-*].
    #[arg(long, value_name = "PATH")]
    pub kernel: Option<PathBuf>,

    /// The kernel's module tree [default: /lib/modules/<release>, or the one
    /// unpacked next to the kernel].
    #[arg(long, value_name = "DIR")]
    pub modules: Option<PathBuf>,

    /// Statically linked guest agent [default: amphi-agent next to amphi,
    /// then in PATH].
    #[arg(long, value_name = "PATH")]
    pub agent: Option<PathBuf>,

    /// Guest memory in MiB.
    #[arg(long, value_name = "MIB", default_value_t = 256)]
    pub memory: u64,

    /// Number of vCPUs.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=254))]
    pub cpus: u8,

    /// Seconds from VMM start to the agent's handshake before giving up.
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    pub timeout: u64,

    /// Write the guest console to FILE ('-' for stdout) [default: a
    /// temporary log, shown on failure].
    #[arg(long, value_name = "FILE")]
    pub console: Option<PathBuf>,

    /// Directory of the initramfs cache.
    #[arg(long = "cache-dir", value_name = "DIR", default_value = "/var/lib/amphi/cache")]
    pub cache_dir: PathBuf,

    /// Extra kernel command-line arguments, after amphi's own.
    #[arg(long, value_name = "ARGS", allow_hyphen_values = true)]
    pub append: Option<String>,

    /// Attach PATH (an image file or a block device) to the guest as a
    /// virtio-blk disk (/dev/vda, /dev/vdb, ... in order); `:ro` makes it
    /// read-only, `ID=` sets the serial the guest reads. Repeatable.
    #[arg(long, value_name = "[ID=]PATH[:ro]")]
    pub disk: Vec<DiskConfig>,

    /// Attach the host TAP interface TAP (created if missing; needs
    /// CAP_NET_ADMIN) to the guest as a virtio-net interface (eth0, eth1,
    /// ... in order); `mac=` sets the guest's address (default: derived
    /// from the TAP's name), `mtu=` its MTU (default 1500). Repeatable.
    #[arg(long, value_name = "TAP[,mac=MAC][,mtu=N]")]
    pub net: Vec<NetConfig>,

    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,

    /// Restore the guest from its VM template (built first if missing)
    /// instead of booting it, and time that.
    #[arg(long)]
    pub template: bool,
}

#[derive(Debug, Args)]
pub struct RunVmmArgs {
    #[arg(long)]
    pub kernel: PathBuf,
    #[arg(long)]
    pub initrd: PathBuf,
    #[arg(long, allow_hyphen_values = true)]
    pub cmdline: String,
    #[arg(long)]
    pub memory: u64,
    #[arg(long)]
    pub cpus: u8,
    #[arg(long)]
    pub serial: Option<PathBuf>,
    #[arg(long = "vsock-uds")]
    pub vsock_uds: PathBuf,
    #[arg(long = "vsock-cid")]
    pub vsock_cid: u64,
    #[arg(long = "event-fd")]
    pub event_fd: i32,
    #[arg(long, default_value = "/dev/kvm")]
    pub kvm: PathBuf,
    /// Serve DIR to the guest over virtio-fs under TAG (`mount -t virtiofs
    /// TAG /mnt` in the guest); `:ro` refuses writes. Repeatable.
    #[arg(long, value_name = "TAG=DIR[:ro]")]
    pub share: Vec<FsShare>,
    /// Attach PATH to the guest as a virtio-blk disk; `:ro` makes it
    /// read-only, `ID=` sets its serial. Repeatable.
    #[arg(long, value_name = "[ID=]PATH[:ro]")]
    pub disk: Vec<DiskConfig>,
    /// Attach the host TAP interface TAP to the guest as a virtio-net
    /// interface; `mac=` and `mtu=` as for `vm check`. Repeatable.
    #[arg(long, value_name = "TAP[,mac=MAC][,mtu=N]")]
    pub net: Vec<NetConfig>,
    /// Give the guest a virtio-balloon device.
    #[arg(long)]
    pub balloon: bool,
    /// With --balloon: the guest reports its free pages.
    #[arg(long = "free-page-reporting", requires = "balloon")]
    pub free_page_reporting: bool,
    /// Save the VM into DIR once the agent listens, then end.
    #[arg(long = "template-out", value_name = "DIR", conflicts_with = "restore")]
    pub template_out: Option<PathBuf>,
    /// Start from the template saved in DIR instead of booting.
    #[arg(long, value_name = "DIR")]
    pub restore: Option<PathBuf>,
}

#[cfg(test)]
mod tests {
    use crate::cli::{Cli, Command};
    use clap::Parser;

    use super::{TemplateCommand, VmCommand};

    #[test]
    fn vm_check_takes_the_documented_flags() {
        let cli = Cli::try_parse_from([
            "amphi",
            "vm",
            "check",
            "--kernel",
            "/k",
            "--modules",
            "/m",
            "--agent",
            "/a",
            "--memory",
            "512",
            "--cpus",
            "2",
            "--timeout",
            "9",
        ])
        .unwrap();
        match cli.command {
            Command::Vm(VmCommand::Check(c)) => {
                assert_eq!((c.memory, c.cpus, c.timeout), (512, 2, 9));
                assert_eq!(c.kernel.as_deref(), Some(std::path::Path::new("/k")));
            }
            other => panic!("parsed as {other:?}"),
        }
        assert!(Cli::try_parse_from(["amphi", "vm", "check", "--cpus", "0"]).is_err());
    }

    #[test]
    fn run_vmm_takes_repeated_shares() {
        let base = [
            "amphi",
            "vm",
            "run-vmm",
            "--kernel",
            "/k",
            "--initrd",
            "/i",
            "--cmdline",
            "quiet",
            "--memory",
            "256",
            "--cpus",
            "1",
            "--vsock-uds",
            "/t/v",
            "--vsock-cid",
            "3",
            "--event-fd",
            "5",
        ];
        let cli = Cli::try_parse_from(base.iter().copied().chain(["--share", "a=/x", "--share", "b=/y:ro"])).unwrap();
        match cli.command {
            Command::Vm(VmCommand::RunVmm(a)) => {
                assert_eq!(a.share.len(), 2);
                assert_eq!((a.share[1].tag.as_str(), a.share[1].read_only), ("b", true));
            }
            other => panic!("parsed as {other:?}"),
        }
        let bad = Cli::try_parse_from(base.iter().copied().chain(["--share", "nodir"])).unwrap_err().to_string();
        assert!(bad.contains("expected TAG=DIR"), "{bad}");

        let cli =
            Cli::try_parse_from(base.iter().copied().chain(["--disk", "/d/a.img", "--disk", "b=/d/b.img:ro"])).unwrap();
        match cli.command {
            Command::Vm(VmCommand::RunVmm(a)) => {
                assert_eq!(a.disk.len(), 2);
                assert_eq!((a.disk[1].serial.as_str(), a.disk[1].read_only), ("b", true));
            }
            other => panic!("parsed as {other:?}"),
        }
        let bad = Cli::try_parse_from(base.iter().copied().chain(["--disk", "rel.img"])).unwrap_err().to_string();
        assert!(bad.contains("absolute path"), "{bad}");

        let cli = Cli::try_parse_from(base.iter().copied().chain(["--net", "tap0", "--net", "tap1,mtu=9000"])).unwrap();
        match cli.command {
            Command::Vm(VmCommand::RunVmm(a)) => {
                let taps: Vec<(&str, u16)> = a.net.iter().map(|n| (n.tap.as_str(), n.mtu)).collect();
                assert_eq!(taps, [("tap0", 1500), ("tap1", 9000)]);
            }
            other => panic!("parsed as {other:?}"),
        }
        let bad = Cli::try_parse_from(base.iter().copied().chain(["--net", "tap0,mac=zz"])).unwrap_err().to_string();
        assert!(bad.contains("six hex bytes"), "{bad}");
    }

    #[test]
    fn vm_check_attaches_disks() {
        let cli = Cli::try_parse_from(["amphi", "vm", "check", "--disk", "/d/a.img:ro", "--disk", "/d/b.img"]).unwrap();
        match cli.command {
            Command::Vm(VmCommand::Check(c)) => {
                let disks: Vec<String> = c.disk.iter().map(|d| d.to_string()).collect();
                assert_eq!(disks, ["/d/a.img:ro", "/d/b.img"]);
                assert!(c.net.is_empty());
            }
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn vm_template_takes_its_subcommands() {
        let parse = |args: &[&str]| match Cli::try_parse_from(["amphi", "vm", "template"].iter().chain(args)) {
            Ok(cli) => match cli.command {
                Command::Vm(VmCommand::Template(t)) => Ok(t),
                other => panic!("parsed as {other:?}"),
            },
            Err(e) => Err(e.to_string()),
        };
        match parse(&["list", "--json", "-v"]).unwrap() {
            TemplateCommand::List(l) => {
                assert!(l.json && l.verbose);
                assert_eq!(l.cache.cache_dir, std::path::Path::new("/var/lib/amphi/cache"));
            }
            other => panic!("{other:?}"),
        }
        match parse(&["build", "--kernel", "/k", "--memory", "1024", "--cpus", "2", "--cache-dir", "/c"]).unwrap() {
            TemplateCommand::Build(b) => {
                assert_eq!((b.kernel.as_deref(), b.memory, b.cpus), (Some(std::path::Path::new("/k")), 1024, 2));
                assert_eq!(b.cache.cache_dir, std::path::Path::new("/c"));
            }
            other => panic!("{other:?}"),
        }
        match parse(&["build"]).unwrap() {
            TemplateCommand::Build(b) => assert_eq!((b.memory, b.cpus), (512, 1), "the size of a default VM container"),
            other => panic!("{other:?}"),
        }
        match parse(&["rm", "ab12", "cd34"]).unwrap() {
            TemplateCommand::Rm(r) => {
                assert_eq!((r.keys.as_slice(), r.all), (&["ab12".to_string(), "cd34".into()][..], false))
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(parse(&["rm", "--all"]).unwrap(), TemplateCommand::Rm(r) if r.all && r.keys.is_empty()));
        assert!(parse(&["rm"]).is_err(), "rm needs keys or --all");
        assert!(parse(&["rm", "--all", "ab12"]).is_err(), "not both");
        assert!(parse(&["build", "--cpus", "0"]).is_err());
    }
}
