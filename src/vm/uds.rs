//! Unix socket paths of any length. `sun_path` holds 107 bytes and a NUL;
//! a VM container's vsock socket lives in its state directory, whose path
//! the client chooses (`--root`, ids of 64 characters) and which is often
//! longer. Such a socket is named through its directory instead: the
//! directory is opened (`O_PATH`) and the socket addressed as
//! `/proc/self/fd/<fd>/<name>`, which the kernel resolves like any other
//! path, for `bind` as for `connect`. Short paths are used as they are.

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

/// The longest path `sun_path` takes (its size less the terminating NUL).
pub const MAX_PATH_LEN: usize = {
    // SAFETY: sockaddr_un is plain old data; all zeroes is a valid value.
    let a: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    a.sun_path.len() - 1
};

/// A socket address usable whatever the length of its path; keeps the
/// directory open while the short name is in use.
#[derive(Debug)]
pub struct SocketPath {
    name: PathBuf,
    _dir: Option<OwnedFd>,
}

impl SocketPath {
    pub fn new(path: &Path) -> io::Result<SocketPath> {
        if path.as_os_str().len() <= MAX_PATH_LEN {
            return Ok(SocketPath { name: path.to_path_buf(), _dir: None });
        }
        let (Some(dir), Some(file)) = (path.parent(), path.file_name()) else {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("{} names no file", path.display())));
        };
        let dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
        let fd: OwnedFd = nix::fcntl::open(
            dir,
            nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .map_err(io::Error::from)?;
        let name = short_name(fd.as_raw_fd(), file);
        if name.as_os_str().len() > MAX_PATH_LEN {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("the socket's file name in {} is longer than a socket address takes", path.display()),
            ));
        }
        Ok(SocketPath { name, _dir: Some(fd) })
    }

    /// The path to give to `bind` or `connect`.
    pub fn as_path(&self) -> &Path {
        &self.name
    }
}

fn short_name(fd: i32, file: &OsStr) -> PathBuf {
    let mut p = PathBuf::from(format!("/proc/self/fd/{fd}"));
    p.push(file);
    p
}

/// `UnixListener::bind` for a path of any length.
pub fn bind(path: &Path) -> io::Result<UnixListener> {
    UnixListener::bind(SocketPath::new(path)?.as_path())
}

/// `UnixStream::connect` for a path of any length.
pub fn connect(path: &Path) -> io::Result<UnixStream> {
    UnixStream::connect(SocketPath::new(path)?.as_path())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::unix::fs::FileTypeExt;

    fn long_dir(base: &Path) -> PathBuf {
        let mut d = base.to_path_buf();
        while d.as_os_str().len() <= MAX_PATH_LEN + 20 {
            d.push("a-directory-with-a-long-name");
        }
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn sun_path_size() {
        assert_eq!(MAX_PATH_LEN, 107);
    }

    #[test]
    fn short_paths_are_used_as_they_are() {
        let p = Path::new("/run/amphi/x/vsock");
        assert_eq!(SocketPath::new(p).unwrap().as_path(), p);
    }

    #[test]
    fn a_socket_with_a_long_path_binds_and_connects() {
        let t = tempfile::tempdir().unwrap();
        let path = long_dir(t.path()).join("vsock");
        assert!(path.as_os_str().len() > MAX_PATH_LEN);
        assert!(UnixListener::bind(&path).is_err(), "std refuses long paths itself");
        let listener = bind(&path).unwrap();
        // The socket is at its real path, not under /proc.
        assert!(std::fs::symlink_metadata(&path).unwrap().file_type().is_socket());
        let mut c = connect(&path).unwrap();
        let (mut s, _) = listener.accept().unwrap();
        c.write_all(b"hi").unwrap();
        let mut b = [0u8; 2];
        s.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"hi");
    }

    #[test]
    fn a_missing_directory_is_an_error() {
        let t = tempfile::tempdir().unwrap();
        let path = long_dir(t.path()).join("gone").join("vsock");
        assert!(bind(&path).is_err());
        assert!(connect(&path).is_err());
    }
}
