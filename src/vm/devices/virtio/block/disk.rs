//! The host side of a disk: the image file or block device, opened once
//! when the VMM starts, and the few operations a request needs from it
//! (positioned reads and writes straight between the file and guest
//! memory, and a flush to stable storage), behind [`DiskBackend`] so the
//! request logic is tested on memory without a file where that matters
//! (I/O errors, the order of flush and completion).
//!
//! The file is locked with `flock` (shared for a read-only disk,
//! exclusive otherwise) for as long as the device's worker holds it, so
//! two VMMs, or one VMM given the same image twice, cannot write one image
//! at the same time.

use std::fs::File;
use std::io::{self, Seek, SeekFrom};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use vm_memory::bitmap::BitmapSlice;
use vm_memory::VolatileSlice;

/// The unit of the capacity and of request offsets (virtio 1.2, 5.2.4).
pub const SECTOR_SIZE: u64 = 512;
/// Length of the device ID a GET_ID request returns (VIRTIO_BLK_ID_BYTES).
pub const SERIAL_LEN: usize = 20;

#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("disk {path}: cannot open it")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("disk {path}: not a regular file or a block device")]
    NotADisk { path: PathBuf },
    #[error("disk {path}: cannot find its size")]
    Size {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("disk {path}: in use (locked by another VM or process; a writable disk is attached once)")]
    Locked {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("disk {path}: the serial {serial:?} must be 1 to {SERIAL_LEN} bytes of letters, digits, '.', '_' or '-'")]
    BadSerial { path: PathBuf, serial: String },
    #[error("disk {path}: cannot start the device's worker thread")]
    Worker {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// What a request needs from the disk.
pub trait DiskBackend {
    /// Size in 512-byte sectors (a partial last sector is not part of it).
    fn capacity(&self) -> u64;
    fn read_only(&self) -> bool;
    /// The device ID, NUL padded.
    fn serial(&self) -> &[u8; SERIAL_LEN];
    /// Fills `buf` from the disk at byte `offset`; a short read is an error.
    fn read_exact_at<B: BitmapSlice>(&self, offset: u64, buf: &VolatileSlice<'_, B>) -> io::Result<()>;
    /// Writes all of `buf` to the disk at byte `offset`.
    fn write_all_at<B: BitmapSlice>(&self, offset: u64, buf: &VolatileSlice<'_, B>) -> io::Result<()>;
    /// Returns once everything written so far is on stable storage.
    fn flush(&self) -> io::Result<()>;
}

/// A serial is checked so that it reads the same in the guest
/// (`/sys/block/vdX/serial`) as on the command line (`--disk ID=PATH`).
pub fn check_serial(serial: &str) -> bool {
    (1..=SERIAL_LEN).contains(&serial.len())
        && serial.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

/// An open, locked disk image or block device.
#[derive(Debug)]
pub struct DiskFile {
    file: Flock<File>,
    capacity: u64,
    read_only: bool,
    serial: [u8; SERIAL_LEN],
}

impl DiskFile {
    /// Opens `path` (read-write unless `read_only`), checks that it is a
    /// regular file or a block device and locks it. An empty `serial`
    /// derives one from the file's device and inode numbers (`<dev>-<ino>`
    /// in hex, cut to 20 bytes), which stay the same across boots as long
    /// as the image is not replaced.
    pub fn open(path: &Path, read_only: bool, serial: &str) -> Result<Self, DiskError> {
        let p = || path.to_path_buf();
        if !serial.is_empty() && !check_serial(serial) {
            return Err(DiskError::BadSerial { path: p(), serial: serial.to_string() });
        }
        // O_NONBLOCK: opening a FIFO would otherwise wait for a writer and
        // hang the VMM's start; it is cleared again once the type is known
        // (it means nothing to regular files and block devices anyway).
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(!read_only)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)
            .map_err(|source| DiskError::Open { path: p(), source })?;
        let meta = file.metadata().map_err(|source| DiskError::Open { path: p(), source })?;
        if !(meta.file_type().is_file() || meta.file_type().is_block_device()) {
            return Err(DiskError::NotADisk { path: p() });
        }
        nix::fcntl::fcntl(file.as_fd(), nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::empty()))
            .map_err(|e| DiskError::Open { path: p(), source: e.into() })?;
        let how = if read_only { FlockArg::LockSharedNonblock } else { FlockArg::LockExclusiveNonblock };
        let file = Flock::lock(file, how).map_err(|(_, e)| DiskError::Locked { path: p(), source: e.into() })?;
        // The end of a block device is its size; metadata says 0 for one.
        let size = (&*file).seek(SeekFrom::End(0)).map_err(|source| DiskError::Size { path: p(), source })?;
        let mut id = [0u8; SERIAL_LEN];
        let name = if serial.is_empty() { format!("{:x}-{:x}", meta.dev(), meta.ino()) } else { serial.to_string() };
        let n = name.len().min(SERIAL_LEN);
        id[..n].copy_from_slice(&name.as_bytes()[..n]);
        Ok(DiskFile { file, capacity: size / SECTOR_SIZE, read_only, serial: id })
    }
}

fn off_t(offset: u64) -> io::Result<libc::off_t> {
    libc::off_t::try_from(offset).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

impl DiskBackend for DiskFile {
    fn capacity(&self) -> u64 {
        self.capacity
    }

    fn read_only(&self) -> bool {
        self.read_only
    }

    fn serial(&self) -> &[u8; SERIAL_LEN] {
        &self.serial
    }

    fn read_exact_at<B: BitmapSlice>(&self, offset: u64, buf: &VolatileSlice<'_, B>) -> io::Result<()> {
        let mut done = 0;
        while done < buf.len() {
            let rest = buf.offset(done).map_err(io::Error::other)?;
            let at = off_t(offset.checked_add(done as u64).ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?)?;
            let guard = rest.ptr_guard_mut();
            // SAFETY: the fd is open for the life of `self`; `guard` points at
            // `rest.len()` bytes of guest memory that stay mapped while the
            // guard lives (VolatileSlice's invariant), and pread writes at
            // most that many. Guest memory is shared with the guest and only
            // ever accessed volatilely, so no Rust reference aliases it.
            let n = unsafe { libc::pread(self.file.as_raw_fd(), guard.as_ptr().cast(), rest.len(), at) };
            if n < 0 {
                let e = io::Error::last_os_error();
                // Part of the buffer may have changed before the error.
                rest.bitmap().mark_dirty(0, rest.len());
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            let n = n as usize;
            if n == 0 {
                // The file shrank under the VM: the capacity it announced
                // no longer holds.
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            rest.bitmap().mark_dirty(0, n);
            done += n;
        }
        Ok(())
    }

    fn write_all_at<B: BitmapSlice>(&self, offset: u64, buf: &VolatileSlice<'_, B>) -> io::Result<()> {
        let mut done = 0;
        while done < buf.len() {
            let rest = buf.offset(done).map_err(io::Error::other)?;
            let at = off_t(offset.checked_add(done as u64).ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?)?;
            let guard = rest.ptr_guard();
            // SAFETY: the fd is open for the life of `self`; `guard` points at
            // `rest.len()` readable bytes of guest memory that stay mapped
            // while the guard lives (VolatileSlice's invariant), and pwrite
            // reads at most that many.
            let n = unsafe { libc::pwrite(self.file.as_raw_fd(), guard.as_ptr().cast(), rest.len(), at) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            done += n as usize;
        }
        Ok(())
    }

    fn flush(&self) -> io::Result<()> {
        self.file.sync_data()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

    fn image(len: usize) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().unwrap();
        let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        std::fs::write(f.path(), data).unwrap();
        f
    }

    #[test]
    fn capacity_counts_whole_sectors_and_serials_are_derived_or_given() {
        let f = image(3 * 512 + 100);
        let d = DiskFile::open(f.path(), true, "").unwrap();
        assert_eq!(d.capacity(), 3);
        assert!(d.read_only());
        let meta = std::fs::metadata(f.path()).unwrap();
        let want = format!("{:x}-{:x}", meta.dev(), meta.ino());
        assert_eq!(&d.serial()[..want.len()], want.as_bytes());
        assert!(d.serial()[want.len()..].iter().all(|&b| b == 0), "NUL padded");
        drop(d);
        let d = DiskFile::open(f.path(), false, "data-01").unwrap();
        assert_eq!(&d.serial()[..8], b"data-01\0");
    }

    #[test]
    fn reads_and_writes_go_between_the_file_and_guest_memory() {
        let f = image(4096);
        let d = DiskFile::open(f.path(), false, "t").unwrap();
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        let slice = mem.get_slice(GuestAddress(0x1000), 1024).unwrap();
        d.read_exact_at(512, &slice).unwrap();
        let mut got = vec![0u8; 1024];
        mem.read_slice(&mut got, GuestAddress(0x1000)).unwrap();
        let want: Vec<u8> = (512..1536).map(|i| (i % 251) as u8).collect();
        assert_eq!(got, want);

        mem.write_slice(&[0xab; 512], GuestAddress(0x2000)).unwrap();
        d.write_all_at(3584, &mem.get_slice(GuestAddress(0x2000), 512).unwrap()).unwrap();
        d.flush().unwrap();
        let on_disk = std::fs::read(f.path()).unwrap();
        assert_eq!(&on_disk[3584..], &[0xab; 512][..]);
        assert_eq!(on_disk[3583], (3583 % 251) as u8);

        // Past the end of the file: a short read is an error, not zeros.
        let e = d.read_exact_at(4096 - 512, &slice).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn a_read_only_disk_is_opened_read_only() {
        let f = image(1024);
        let d = DiskFile::open(f.path(), true, "").unwrap();
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap();
        let e = d.write_all_at(0, &mem.get_slice(GuestAddress(0), 512).unwrap()).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EBADF), "{e}");
    }

    #[test]
    fn what_cannot_be_a_disk_is_refused_with_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.img");
        let e = DiskFile::open(&missing, false, "").unwrap_err();
        assert!(matches!(e, DiskError::Open { .. }) && e.to_string().contains("nope.img"), "{e}");

        let e = DiskFile::open(dir.path(), true, "").unwrap_err();
        assert!(matches!(e, DiskError::NotADisk { .. }), "{e}");
        assert!(e.to_string().contains(&dir.path().display().to_string()), "{e}");

        // A FIFO must neither be taken nor block the VMM while opening.
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let e = DiskFile::open(&fifo, true, "").unwrap_err();
        assert!(matches!(e, DiskError::NotADisk { .. }), "{e}");

        let f = image(512);
        let e = DiskFile::open(f.path(), false, "has space").unwrap_err();
        assert!(matches!(e, DiskError::BadSerial { .. }), "{e}");
        let e = DiskFile::open(f.path(), false, &"x".repeat(21)).unwrap_err();
        assert!(matches!(e, DiskError::BadSerial { .. }), "{e}");
    }

    #[test]
    fn a_disk_is_written_by_one_user_at_a_time() {
        let f = image(1024);
        let rw = DiskFile::open(f.path(), false, "").unwrap();
        let e = DiskFile::open(f.path(), false, "").unwrap_err();
        assert!(matches!(e, DiskError::Locked { .. }) && e.to_string().contains("in use"), "{e}");
        assert!(matches!(DiskFile::open(f.path(), true, "").unwrap_err(), DiskError::Locked { .. }));
        drop(rw);
        let ro1 = DiskFile::open(f.path(), true, "").unwrap();
        let _ro2 = DiskFile::open(f.path(), true, "").unwrap();
        assert!(matches!(DiskFile::open(f.path(), false, "").unwrap_err(), DiskError::Locked { .. }));
        drop(ro1);
    }
}
