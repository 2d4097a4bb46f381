//! The filesystem behind one share: fuse-backend-rs's passthrough
//! filesystem, configured for container semantics, behind a thin policy
//! layer that makes a read-only share refuse every change with EROFS.
//!
//! The policy sits above the passthrough (a `FileSystem` that forwards
//! each call) rather than in the request parser: it sees typed calls (an
//! open's access mode, a setattr) instead of raw FUSE bytes, so it cannot
//! be fooled by a message layout it did not anticipate.

use std::ffi::CStr;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use fuse_backend_rs::abi::fuse_abi::{stat64, statvfs64, CreateIn};
use fuse_backend_rs::abi::virtio_fs::RemovemappingOne;
use fuse_backend_rs::api::filesystem::{
    Context, DirEntry, Entry, FileSystem, FsOptions, GetxattrReply, ListxattrReply, OpenOptions, SetattrValid,
    ZeroCopyReader, ZeroCopyWriter,
};
use fuse_backend_rs::api::server::MAX_BUFFER_SIZE;
use fuse_backend_rs::passthrough::{CachePolicy, Config, PassthroughFs};
use fuse_backend_rs::transport::FsCacheReqHandler;

/// How long the guest may trust a name lookup or attributes without
/// asking again: changes made on the host side show in the guest after at
/// most this long (guest writes reach the host at once, see docs/vm.md).
pub const ATTR_TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum ShareError {
    #[error("share {tag:?}: the tag must be 1 to {max} bytes without NUL, '=' or whitespace")]
    BadTag { tag: String, max: usize },
    #[error("share {tag:?}: {path} is not a directory")]
    NotADirectory { tag: String, path: PathBuf },
    #[error("share {tag:?}: cannot open {path}")]
    Open {
        tag: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("share {tag:?}: the path {path} is not valid UTF-8")]
    NonUtf8Path { tag: String, path: PathBuf },
    #[error("share {tag:?}: cannot set up the passthrough filesystem (is /proc mounted?)")]
    Passthrough {
        tag: String,
        #[source]
        source: io::Error,
    },
    #[error("share {tag:?}: cannot start the device's worker thread")]
    Worker {
        tag: String,
        #[source]
        source: io::Error,
    },
    #[error("two shares use the tag {0:?}; tags must be unique")]
    DuplicateTag(String),
    #[error("share {tag:?}: cannot create the device's event fds")]
    EventFd {
        tag: String,
        #[source]
        source: io::Error,
    },
}

/// Linux's limits on one xattr value and on an xattr name list: the
/// kernel never fills more, whatever size a caller passes.
pub const XATTR_SIZE_MAX: u32 = 65536;
pub const XATTR_LIST_MAX: u32 = 65536;

/// The longest tag the virtio-fs config space holds.
pub const TAG_MAX: usize = 36;

/// Checks a tag: what fits the config space and survives the command line
/// (`--share TAG=DIR`) and `mount -t virtiofs TAG` in the guest.
pub fn check_tag(tag: &str) -> Result<(), ShareError> {
    let ok = !tag.is_empty()
        && tag.len() <= TAG_MAX
        && !tag.bytes().any(|b| b == 0 || b == b'=' || b.is_ascii_whitespace() || b.is_ascii_control());
    if ok {
        Ok(())
    } else {
        Err(ShareError::BadTag { tag: tag.to_string(), max: TAG_MAX })
    }
}

/// The passthrough configuration for a share rooted at `root`.
///
/// - `cache_policy: Auto`, `writeback: false`: the guest keeps file data in
///   its page cache for reads (revalidated on open), but every write()
///   goes to the host before it returns, so a host reader sees what the
///   guest wrote as soon as the guest's write() (or close()) returned.
///   Writeback caching would hold dirty pages in the guest; `Never`
///   (direct I/O) would break shared mmap, which programs in a rootfs use.
/// - xattrs on: cheap, and what container images carry (file capabilities,
///   SELinux labels).
/// - inodes are told apart by (device, inode, mount id), so bind mounts
///   inside the share (volumes, a file bind-mounted onto a file) are
///   distinct files in the guest even when they show the same host file.
pub fn passthrough_config(root: &str) -> Config {
    Config {
        root_dir: root.to_string(),
        cache_policy: CachePolicy::Auto,
        writeback: false,
        xattr: true,
        attr_timeout: ATTR_TIMEOUT,
        entry_timeout: ATTR_TIMEOUT,
        enable_mntid: true,
        do_import: true,
        ..Default::default()
    }
}

/// Builds the filesystem for one share after checking its directory. The
/// passthrough itself opens the directory when the guest's FUSE_INIT
/// arrives (on the device's worker thread).
pub fn open_share(tag: &str, path: &Path, read_only: bool) -> Result<ShareFs<PassthroughFs>, ShareError> {
    check_tag(tag)?;
    let meta = std::fs::metadata(path).map_err(|source| ShareError::Open {
        tag: tag.to_string(),
        path: path.to_path_buf(),
        source,
    })?;
    if !meta.is_dir() {
        return Err(ShareError::NotADirectory { tag: tag.to_string(), path: path.to_path_buf() });
    }
    let root = path.to_str().ok_or_else(|| ShareError::NonUtf8Path { tag: tag.to_string(), path: path.into() })?;
    let fs = PassthroughFs::new(passthrough_config(root))
        .map_err(|source| ShareError::Passthrough { tag: tag.to_string(), source })?;
    Ok(ShareFs { inner: fs, read_only })
}

fn erofs() -> io::Error {
    io::Error::from_raw_os_error(libc::EROFS)
}

/// A share's filesystem: every call goes to `inner`, except that a
/// read-only share refuses whatever would change the host's files, and no
/// share lets the guest set or remove `trusted.*` xattrs (EPERM, what a
/// container's root without CAP_SYS_ADMIN gets): the VMM holds that
/// capability, and those attributes steer host-side software such as
/// overlayfs.
///
/// Calls the passthrough does not implement keep the trait's defaults
/// (ENOSYS), as they would without this layer: locks (the guest kernel
/// then keeps POSIX locks locally, so no request can block the worker on
/// a lock), ioctl, bmap, poll.
pub struct ShareFs<F> {
    inner: F,
    read_only: bool,
}

impl<F> ShareFs<F> {
    pub fn new(inner: F, read_only: bool) -> Self {
        ShareFs { inner, read_only }
    }

    pub fn read_only(&self) -> bool {
        self.read_only
    }

    fn writable(&self) -> io::Result<()> {
        if self.read_only {
            Err(erofs())
        } else {
            Ok(())
        }
    }
}

/// Refuses the `trusted.` xattr namespace.
fn host_only_xattr(name: &CStr) -> io::Result<()> {
    if name.to_bytes().starts_with(b"trusted.") {
        Err(io::Error::from_raw_os_error(libc::EPERM))
    } else {
        Ok(())
    }
}

/// Open flags that ask for a change: write access or truncation.
fn opens_for_change(flags: u32) -> bool {
    let flags = flags as i32;
    flags & libc::O_ACCMODE != libc::O_RDONLY || flags & libc::O_TRUNC != 0
}

impl<F: FileSystem> FileSystem for ShareFs<F> {
    type Inode = F::Inode;
    type Handle = F::Handle;

    fn init(&self, capable: FsOptions) -> io::Result<FsOptions> {
        self.inner.init(capable)
    }

    fn destroy(&self) {
        self.inner.destroy()
    }

    fn lookup(&self, ctx: &Context, parent: Self::Inode, name: &CStr) -> io::Result<Entry> {
        self.inner.lookup(ctx, parent, name)
    }

    fn forget(&self, ctx: &Context, inode: Self::Inode, count: u64) {
        self.inner.forget(ctx, inode, count)
    }

    fn batch_forget(&self, ctx: &Context, requests: Vec<(Self::Inode, u64)>) {
        self.inner.batch_forget(ctx, requests)
    }

    fn getattr(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        handle: Option<Self::Handle>,
    ) -> io::Result<(stat64, Duration)> {
        self.inner.getattr(ctx, inode, handle)
    }

    fn setattr(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        attr: stat64,
        handle: Option<Self::Handle>,
        valid: SetattrValid,
    ) -> io::Result<(stat64, Duration)> {
        self.writable()?;
        self.inner.setattr(ctx, inode, attr, handle, valid)
    }

    fn readlink(&self, ctx: &Context, inode: Self::Inode) -> io::Result<Vec<u8>> {
        self.inner.readlink(ctx, inode)
    }

    fn symlink(&self, ctx: &Context, linkname: &CStr, parent: Self::Inode, name: &CStr) -> io::Result<Entry> {
        self.writable()?;
        self.inner.symlink(ctx, linkname, parent, name)
    }

    fn mknod(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        name: &CStr,
        mode: u32,
        rdev: u32,
        umask: u32,
    ) -> io::Result<Entry> {
        self.writable()?;
        self.inner.mknod(ctx, inode, name, mode, rdev, umask)
    }

    fn mkdir(&self, ctx: &Context, parent: Self::Inode, name: &CStr, mode: u32, umask: u32) -> io::Result<Entry> {
        self.writable()?;
        self.inner.mkdir(ctx, parent, name, mode, umask)
    }

    fn unlink(&self, ctx: &Context, parent: Self::Inode, name: &CStr) -> io::Result<()> {
        self.writable()?;
        self.inner.unlink(ctx, parent, name)
    }

    fn rmdir(&self, ctx: &Context, parent: Self::Inode, name: &CStr) -> io::Result<()> {
        self.writable()?;
        self.inner.rmdir(ctx, parent, name)
    }

    fn rename(
        &self,
        ctx: &Context,
        olddir: Self::Inode,
        oldname: &CStr,
        newdir: Self::Inode,
        newname: &CStr,
        flags: u32,
    ) -> io::Result<()> {
        self.writable()?;
        self.inner.rename(ctx, olddir, oldname, newdir, newname, flags)
    }

    fn link(&self, ctx: &Context, inode: Self::Inode, newparent: Self::Inode, newname: &CStr) -> io::Result<Entry> {
        self.writable()?;
        self.inner.link(ctx, inode, newparent, newname)
    }

    fn open(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        flags: u32,
        fuse_flags: u32,
    ) -> io::Result<(Option<Self::Handle>, OpenOptions, Option<u32>)> {
        if opens_for_change(flags) {
            self.writable()?;
        }
        self.inner.open(ctx, inode, flags, fuse_flags)
    }

    fn create(
        &self,
        ctx: &Context,
        parent: Self::Inode,
        name: &CStr,
        args: CreateIn,
    ) -> io::Result<(Entry, Option<Self::Handle>, OpenOptions, Option<u32>)> {
        self.writable()?;
        self.inner.create(ctx, parent, name, args)
    }

    fn read(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        handle: Self::Handle,
        w: &mut dyn ZeroCopyWriter,
        size: u32,
        offset: u64,
        lock_owner: Option<u64>,
        flags: u32,
    ) -> io::Result<usize> {
        self.inner.read(ctx, inode, handle, w, size, offset, lock_owner, flags)
    }

    fn write(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        handle: Self::Handle,
        r: &mut dyn ZeroCopyReader,
        size: u32,
        offset: u64,
        lock_owner: Option<u64>,
        delayed_write: bool,
        flags: u32,
        fuse_flags: u32,
    ) -> io::Result<usize> {
        self.writable()?;
        self.inner.write(ctx, inode, handle, r, size, offset, lock_owner, delayed_write, flags, fuse_flags)
    }

    fn flush(&self, ctx: &Context, inode: Self::Inode, handle: Self::Handle, lock_owner: u64) -> io::Result<()> {
        self.inner.flush(ctx, inode, handle, lock_owner)
    }

    fn fsync(&self, ctx: &Context, inode: Self::Inode, datasync: bool, handle: Self::Handle) -> io::Result<()> {
        self.inner.fsync(ctx, inode, datasync, handle)
    }

    fn fallocate(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        handle: Self::Handle,
        mode: u32,
        offset: u64,
        length: u64,
    ) -> io::Result<()> {
        self.writable()?;
        self.inner.fallocate(ctx, inode, handle, mode, offset, length)
    }

    fn release(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        flags: u32,
        handle: Self::Handle,
        flush: bool,
        flock_release: bool,
        lock_owner: Option<u64>,
    ) -> io::Result<()> {
        self.inner.release(ctx, inode, flags, handle, flush, flock_release, lock_owner)
    }

    fn statfs(&self, ctx: &Context, inode: Self::Inode) -> io::Result<statvfs64> {
        self.inner.statfs(ctx, inode)
    }

    fn setxattr(&self, ctx: &Context, inode: Self::Inode, name: &CStr, value: &[u8], flags: u32) -> io::Result<()> {
        self.writable()?;
        host_only_xattr(name)?;
        self.inner.setxattr(ctx, inode, name, value, flags)
    }

    /// The size is the guest's and the passthrough allocates a buffer of
    /// that size up front: it is cut to what the kernel would use anyway
    /// (XATTR_SIZE_MAX), so a guest asking for 4 GiB costs 64 KiB.
    fn getxattr(&self, ctx: &Context, inode: Self::Inode, name: &CStr, size: u32) -> io::Result<GetxattrReply> {
        self.inner.getxattr(ctx, inode, name, size.min(XATTR_SIZE_MAX))
    }

    /// As for getxattr (XATTR_LIST_MAX).
    fn listxattr(&self, ctx: &Context, inode: Self::Inode, size: u32) -> io::Result<ListxattrReply> {
        self.inner.listxattr(ctx, inode, size.min(XATTR_LIST_MAX))
    }

    fn removexattr(&self, ctx: &Context, inode: Self::Inode, name: &CStr) -> io::Result<()> {
        self.writable()?;
        host_only_xattr(name)?;
        self.inner.removexattr(ctx, inode, name)
    }

    fn opendir(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        flags: u32,
    ) -> io::Result<(Option<Self::Handle>, OpenOptions)> {
        self.inner.opendir(ctx, inode, flags)
    }

    fn readdir(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        handle: Self::Handle,
        size: u32,
        offset: u64,
        add_entry: &mut dyn FnMut(DirEntry) -> io::Result<usize>,
    ) -> io::Result<()> {
        // The passthrough allocates `size` up front; no reply is larger.
        self.inner.readdir(ctx, inode, handle, size.min(MAX_BUFFER_SIZE), offset, add_entry)
    }

    fn readdirplus(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        handle: Self::Handle,
        size: u32,
        offset: u64,
        add_entry: &mut dyn FnMut(DirEntry, Entry) -> io::Result<usize>,
    ) -> io::Result<()> {
        self.inner.readdirplus(ctx, inode, handle, size.min(MAX_BUFFER_SIZE), offset, add_entry)
    }

    fn fsyncdir(&self, ctx: &Context, inode: Self::Inode, datasync: bool, handle: Self::Handle) -> io::Result<()> {
        self.inner.fsyncdir(ctx, inode, datasync, handle)
    }

    fn releasedir(&self, ctx: &Context, inode: Self::Inode, flags: u32, handle: Self::Handle) -> io::Result<()> {
        self.inner.releasedir(ctx, inode, flags, handle)
    }

    fn setupmapping(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        handle: Self::Handle,
        foffset: u64,
        len: u64,
        flags: u64,
        moffset: u64,
        vu_req: &mut dyn FsCacheReqHandler,
    ) -> io::Result<()> {
        self.inner.setupmapping(ctx, inode, handle, foffset, len, flags, moffset, vu_req)
    }

    fn removemapping(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        requests: Vec<RemovemappingOne>,
        vu_req: &mut dyn FsCacheReqHandler,
    ) -> io::Result<()> {
        self.inner.removemapping(ctx, inode, requests, vu_req)
    }

    fn access(&self, ctx: &Context, inode: Self::Inode, mask: u32) -> io::Result<()> {
        if mask as i32 & libc::W_OK != 0 {
            self.writable()?;
        }
        self.inner.access(ctx, inode, mask)
    }

    fn lseek(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        handle: Self::Handle,
        offset: u64,
        whence: u32,
    ) -> io::Result<u64> {
        self.inner.lseek(ctx, inode, handle, offset, whence)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Records the sizes the layer above passes down.
    #[derive(Default)]
    struct Sizes(Mutex<Vec<u32>>);

    impl FileSystem for Sizes {
        type Inode = u64;
        type Handle = u64;

        fn getxattr(&self, _: &Context, _: u64, _: &CStr, size: u32) -> io::Result<GetxattrReply> {
            self.0.lock().unwrap().push(size);
            Ok(GetxattrReply::Count(0))
        }

        fn listxattr(&self, _: &Context, _: u64, size: u32) -> io::Result<ListxattrReply> {
            self.0.lock().unwrap().push(size);
            Ok(ListxattrReply::Count(0))
        }

        fn readdir(
            &self,
            _: &Context,
            _: u64,
            _: u64,
            size: u32,
            _: u64,
            _: &mut dyn FnMut(DirEntry) -> io::Result<usize>,
        ) -> io::Result<()> {
            self.0.lock().unwrap().push(size);
            Ok(())
        }

        fn readdirplus(
            &self,
            _: &Context,
            _: u64,
            _: u64,
            size: u32,
            _: u64,
            _: &mut dyn FnMut(DirEntry, Entry) -> io::Result<usize>,
        ) -> io::Result<()> {
            self.0.lock().unwrap().push(size);
            Ok(())
        }
    }

    /// The passthrough allocates the guest's size before the call: a guest
    /// asking for 4 GiB gets what the kernel would fill at most.
    #[test]
    fn guest_sizes_that_size_host_buffers_are_cut() {
        let fs = ShareFs::new(Sizes::default(), false);
        let ctx = Context::default();
        fs.getxattr(&ctx, 1, c"user.x", u32::MAX).unwrap();
        fs.listxattr(&ctx, 1, u32::MAX).unwrap();
        fs.readdir(&ctx, 1, 0, u32::MAX, 0, &mut |_| Ok(0)).unwrap();
        fs.readdirplus(&ctx, 1, 0, u32::MAX, 0, &mut |_, _| Ok(0)).unwrap();
        // Sizes within the limits go through unchanged, 0 (ask for the size) too.
        fs.getxattr(&ctx, 1, c"user.x", 0).unwrap();
        fs.getxattr(&ctx, 1, c"user.x", 100).unwrap();
        assert_eq!(
            *fs.inner.0.lock().unwrap(),
            vec![XATTR_SIZE_MAX, XATTR_LIST_MAX, MAX_BUFFER_SIZE, MAX_BUFFER_SIZE, 0, 100]
        );
    }
}
