//! The seam between cgroup logic and the kernel: every file access, mkdir,
//! rmdir, signal and bpf(2) call the module makes goes through [`CgroupSys`],
//! so the logic runs unchanged on a fake cgroupfs tree in a temporary
//! directory (see `testing`) and tests can record writes and inject errors.

use std::fs::{DirBuilder, OpenOptions};
use std::io::{self, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::bpf::sys::BpfFailure;
use super::bpf::Insn;

/// What the cgroup code needs from the OS.
pub trait CgroupSys {
    /// Reads a whole (small) file.
    fn read(&self, path: &Path) -> io::Result<String>;

    /// Writes `value` to an existing file with one write(2); cgroupfs treats
    /// each write as one command, and never creates files.
    fn write(&self, path: &Path, value: &str) -> io::Result<()>;

    /// Writes each line with its own write(2) on one open file (devices.allow,
    /// io.max and other files that take one entry per write). On failure,
    /// returns the index of the line that failed.
    fn write_lines(&self, path: &Path, lines: &[String]) -> Result<(), (usize, io::Error)>;

    /// Creates one directory (not its parents).
    fn mkdir(&self, path: &Path) -> io::Result<()>;

    /// Removes one empty directory (cgroupfs: a cgroup without tasks or children).
    fn rmdir(&self, path: &Path) -> io::Result<()>;

    fn exists(&self, path: &Path) -> bool;

    /// Opens a file for writing (`directory`: false) or a directory (true),
    /// close-on-exec, for a process to join the cgroup by itself later.
    fn open(&self, path: &Path, directory: bool) -> io::Result<OwnedFd>;

    /// Child directories of `path`.
    fn subdirs(&self, path: &Path) -> io::Result<Vec<PathBuf>>;

    fn sleep(&self, d: Duration);

    fn kill(&self, pid: i32, signal: i32) -> io::Result<()>;

    /// Loads `insns` as a device filter and attaches it to the cgroup
    /// directory; `replace` detaches the filters attached before.
    fn attach_device_filter(&self, dir: &Path, insns: &[Insn], replace: bool) -> Result<(), BpfFailure>;
}

/// A borrowed seam works as the seam itself (tests keep the fake to inspect it).
impl<T: CgroupSys + ?Sized> CgroupSys for &T {
    fn read(&self, path: &Path) -> io::Result<String> {
        (**self).read(path)
    }
    fn write(&self, path: &Path, value: &str) -> io::Result<()> {
        (**self).write(path, value)
    }
    fn write_lines(&self, path: &Path, lines: &[String]) -> Result<(), (usize, io::Error)> {
        (**self).write_lines(path, lines)
    }
    fn mkdir(&self, path: &Path) -> io::Result<()> {
        (**self).mkdir(path)
    }
    fn rmdir(&self, path: &Path) -> io::Result<()> {
        (**self).rmdir(path)
    }
    fn exists(&self, path: &Path) -> bool {
        (**self).exists(path)
    }
    fn open(&self, path: &Path, directory: bool) -> io::Result<OwnedFd> {
        (**self).open(path, directory)
    }
    fn subdirs(&self, path: &Path) -> io::Result<Vec<PathBuf>> {
        (**self).subdirs(path)
    }
    fn sleep(&self, d: Duration) {
        (**self).sleep(d)
    }
    fn kill(&self, pid: i32, signal: i32) -> io::Result<()> {
        (**self).kill(pid, signal)
    }
    fn attach_device_filter(&self, dir: &Path, insns: &[Insn], replace: bool) -> Result<(), BpfFailure> {
        (**self).attach_device_filter(dir, insns, replace)
    }
}

/// The real kernel.
#[derive(Debug, Default, Clone, Copy)]
pub struct HostSys;

/// open(2) for [`CgroupSys::open`] (shared with the fake, which opens real files).
pub(crate) fn open_fd(path: &Path, directory: bool) -> io::Result<OwnedFd> {
    let f = if directory {
        OpenOptions::new().read(true).custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC).open(path)?
    } else {
        open_for_write(path)?
    };
    Ok(f.into())
}

fn open_for_write(path: &Path) -> io::Result<std::fs::File> {
    OpenOptions::new().write(true).custom_flags(libc::O_CLOEXEC).open(path)
}

impl CgroupSys for HostSys {
    fn read(&self, path: &Path) -> io::Result<String> {
        std::fs::read_to_string(path)
    }

    fn write(&self, path: &Path, value: &str) -> io::Result<()> {
        open_for_write(path)?.write_all(value.as_bytes())
    }

    fn write_lines(&self, path: &Path, lines: &[String]) -> Result<(), (usize, io::Error)> {
        let mut f = open_for_write(path).map_err(|e| (0, e))?;
        for (i, l) in lines.iter().enumerate() {
            f.write_all(l.as_bytes()).map_err(|e| (i, e))?;
        }
        Ok(())
    }

    fn mkdir(&self, path: &Path) -> io::Result<()> {
        DirBuilder::new().mode(0o755).create(path)
    }

    fn rmdir(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_dir(path)
    }

    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }

    fn open(&self, path: &Path, directory: bool) -> io::Result<OwnedFd> {
        open_fd(path, directory)
    }

    fn subdirs(&self, path: &Path) -> io::Result<Vec<PathBuf>> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(path)? {
            let e = e?;
            if e.file_type()?.is_dir() {
                out.push(e.path());
            }
        }
        Ok(out)
    }

    fn sleep(&self, d: Duration) {
        std::thread::sleep(d)
    }

    fn kill(&self, pid: i32, signal: i32) -> io::Result<()> {
        // SAFETY: kill(2) takes plain integers and touches no memory of ours.
        if unsafe { libc::kill(pid, signal) } == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    fn attach_device_filter(&self, dir: &Path, insns: &[Insn], replace: bool) -> Result<(), BpfFailure> {
        super::bpf::sys::attach_device_filter(dir, insns, replace)
    }
}
