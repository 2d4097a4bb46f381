//! The guest image: an initramfs holding `amphi-agent` as /init and the
//! kernel modules it loads, assembled from the agent binary and the
//! kernel's module tree, and the uncompressed kernel for a direct boot,
//! both cached by content hash.

pub mod cpio;
pub mod initramfs;
pub mod modules;
pub(crate) mod stamp;
pub mod vmlinux;

pub use initramfs::{build_or_reuse, BuiltInitramfs, ImageError, InitramfsSpec, MODULE_LIST_PATH};
