//! VM isolation: amphi's own VMM (KVM, guest memory, vCPUs, devices), guest
//! boot, guest image assembly and the agent client.
//!
//! - [`host`]: can this host run a stock guest kernel at all.
//! - [`kernel`]: which kernel and modules to boot.
//! - [`image`]: the initramfs (agent + modules), cached by content hash.
//! - [`vmm`], [`boot`], [`devices`]: the VMM proper.
//! - [`process`]: the VMM as a child process, reporting its milestones.
//! - [`agent_client`]: the host end of the agent protocol over vsock.
//! - [`uds`]: Unix socket paths longer than a socket address takes.
//! - [`template`]: snapshots of a booted guest that new VMs restore.
//! - [`check`]: `amphi vm check`, which ties all of the above together.

pub mod agent_client;
pub mod boot;
pub mod check;
pub mod devices;
pub mod guest;
pub mod host;
pub mod image;
pub mod jail;
pub mod kernel;
pub mod process;
pub mod sandbox;
pub mod template;
pub mod uds;
pub mod vmm;

pub use check::{check, CheckError, CheckOptions, CheckReport};

/// Kernel modules the guest needs: the agent's vsock, virtio-blk for
/// disks, virtio-net for network interfaces (with `failover` and
/// `net_failover`, its dependencies) and virtio-fs for shared directories
/// (`fuse` comes in as a dependency of `virtiofs`), in any order (they are
/// resolved to load order from the modules' own dependency lists;
/// `virtio_blk` right after `virtio_mmio` needs nothing more than it).
///
/// `virtio_balloon` serves the balloon of VM containers (free page
/// reporting, `update --memory`); `virtio_net` the VMM's virtio-net
/// devices (with failover and net_failover, its dependencies).
pub const GUEST_MODULES: &[&str] =
    &["virtio_mmio", "virtio_blk", "virtio_balloon", "virtio_net", "vmw_vsock_virtio_transport", "virtiofs"];

/// The kernel command line for amphi guests. `quiet` matters: every console
/// byte is a VM exit. `pci=off` skips probing a PCI bus there is none of,
/// `8250.nr_uarts=1` probing serial ports beyond COM1.
pub const GUEST_CMDLINE: &str = "console=ttyS0 quiet panic=-1 pci=off 8250.nr_uarts=1 tsc=reliable rdinit=/init";
