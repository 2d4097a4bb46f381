//! The subjects of a benchmark as command lines: amphi in each isolation and
//! the peer runtimes, each with a state root of its own. Everything else in
//! the benchmark speaks to them through runc's command line only, so a peer
//! is measured exactly as amphi is.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::model::Subject;

/// One subject's command line.
#[derive(Debug, Clone)]
pub struct Runtime {
    pub subject: Subject,
    program: PathBuf,
    root: PathBuf,
}

impl Runtime {
    pub fn new(subject: Subject, program: PathBuf, root: PathBuf) -> Self {
        Runtime { subject, program, root }
    }

    /// `PROGRAM --root ROOT ARGS...`.
    pub fn command<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        let mut c = Command::new(&self.program);
        c.arg("--root").arg(&self.root);
        c.args(args.into_iter().map(Into::into));
        c
    }

    /// The isolation annotation amphi reads; peers ignore annotations.
    pub fn isolation(&self) -> Option<&'static str> {
        match self.subject {
            Subject::Container => Some("container"),
            Subject::Vm => Some("vm"),
            _ => None,
        }
    }

    pub fn program(&self) -> &Path {
        &self.program
    }
}

/// The program a peer subject runs, looked up in PATH.
pub fn peer_program(subject: Subject) -> Option<PathBuf> {
    let name = match subject {
        Subject::Runc => "runc",
        Subject::Crun => "crun",
        Subject::QemuMicrovm => "qemu-system-x86_64",
        _ => return None,
    };
    find_in_path(name)
}

pub fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(name)).find(|p| p.is_file())
}

/// Whether an ELF file needs a dynamic loader (has a PT_INTERP header).
/// The workload and busybox run inside a bare rootfs, so both must be
/// static. `None` when the file is not a 64-bit little-endian ELF.
pub fn elf_is_dynamic(bytes: &[u8]) -> Option<bool> {
    const PT_INTERP: u32 = 3;
    if bytes.len() < 64 || &bytes[..4] != b"\x7fELF" || bytes[4] != 2 || bytes[5] != 1 {
        return None;
    }
    let u16_at = |o: usize| u16::from_le_bytes([bytes[o], bytes[o + 1]]);
    let phoff = u64::from_le_bytes(bytes[0x20..0x28].try_into().ok()?) as usize;
    let phentsize = u16_at(0x36) as usize;
    let phnum = u16_at(0x38) as usize;
    for i in 0..phnum {
        let at = phoff.checked_add(i.checked_mul(phentsize)?)?;
        let p_type = bytes.get(at..at + 4)?;
        if u32::from_le_bytes(p_type.try_into().ok()?) == PT_INTERP {
            return Some(true);
        }
    }
    Some(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_carries_the_root_first() {
        let rt = Runtime::new(Subject::Runc, "/usr/bin/runc".into(), "/run/x".into());
        let c = rt.command(["state", "id"]);
        let args: Vec<_> = c.get_args().map(|a| a.to_string_lossy().into_owned()).collect();
        assert_eq!(args, ["--root", "/run/x", "state", "id"]);
        assert_eq!(rt.isolation(), None);
        assert_eq!(Runtime::new(Subject::Vm, "a".into(), "r".into()).isolation(), Some("vm"));
    }

    #[test]
    fn static_and_dynamic_elves_are_told_apart() {
        let sh = std::fs::read("/bin/sh").unwrap();
        assert_eq!(elf_is_dynamic(&sh), Some(true), "/bin/sh is dynamic on Debian");
        assert_eq!(elf_is_dynamic(b"#!/bin/sh\n"), None);
        if let Ok(bb) = std::fs::read("/bin/busybox") {
            // busybox-static is what the project installs (scripts/setup.sh).
            assert_eq!(elf_is_dynamic(&bb), Some(false));
        }
    }
}
