//! The bpf(2) calls behind the v2 device filter: load the program, attach it
//! to a cgroup directory with BPF_F_ALLOW_MULTI, and, when replacing a filter
//! (an update), detach the programs that were there before, only after the
//! new one is in place, so the container is never left unfiltered.
//!
//! The attr structs mirror the leading fields of `union bpf_attr` for each
//! command; the kernel zero-extends an attr shorter than its own.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use super::insn::Insn;

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_ATTACH: libc::c_long = 8;
const BPF_PROG_DETACH: libc::c_long = 9;
const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
const BPF_PROG_QUERY: libc::c_long = 16;

const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
const BPF_CGROUP_DEVICE: u32 = 6;
const BPF_F_ALLOW_MULTI: u32 = 2;

const LICENSE: &str = "Apache-2.0";
const PROG_NAME: &[u8] = b"amphi_devices";

#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

#[repr(C)]
#[derive(Default)]
struct AttachAttr {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
    replace_bpf_fd: u32,
}

#[repr(C)]
#[derive(Default)]
struct QueryAttr {
    target_fd: u32,
    attach_type: u32,
    query_flags: u32,
    attach_flags: u32,
    prog_ids: u64,
    prog_cnt: u32,
    _pad: u32,
}

#[repr(C)]
#[derive(Default)]
struct GetFdAttr {
    prog_id: u32,
    next_id: u32,
    open_flags: u32,
}

/// Calls bpf(2) with `attr` of type `T`, one of the `#[repr(C)]` structs above.
fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a live, exclusively borrowed #[repr(C)] struct whose
    // layout matches the prefix of `union bpf_attr` for `cmd`, and the size
    // passed is exactly its size; the kernel reads (and for QUERY writes)
    // within those bytes only. Pointers inside it refer to buffers the caller
    // keeps alive across the call.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut T, std::mem::size_of::<T>() as libc::c_uint) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn owned_fd(r: libc::c_long) -> OwnedFd {
    // SAFETY: bpf(2) returned a new file descriptor that nothing else owns.
    unsafe { OwnedFd::from_raw_fd(r as RawFd) }
}

/// A failed step, with the verifier's log when loading failed.
#[derive(Debug)]
pub struct BpfFailure {
    pub op: &'static str,
    pub source: io::Error,
    pub log: String,
}

fn fail(op: &'static str, source: io::Error) -> BpfFailure {
    BpfFailure { op, source, log: String::new() }
}

fn load(insns: &[Insn], log: Option<&mut Vec<u8>>) -> io::Result<OwnedFd> {
    let license = CString::new(LICENSE).expect("no NUL in license");
    let mut attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_CGROUP_DEVICE,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        expected_attach_type: BPF_CGROUP_DEVICE,
        ..Default::default()
    };
    attr.prog_name[..PROG_NAME.len()].copy_from_slice(PROG_NAME);
    if let Some(buf) = log {
        attr.log_level = 1;
        attr.log_size = buf.len() as u32;
        attr.log_buf = buf.as_mut_ptr() as u64;
    }
    bpf(BPF_PROG_LOAD, &mut attr).map(owned_fd)
}

/// Loads the program; on failure loads it again with the verifier log on so
/// that the error says why.
pub fn load_device_program(insns: &[Insn]) -> Result<OwnedFd, BpfFailure> {
    match load(insns, None) {
        Ok(fd) => Ok(fd),
        Err(e) => {
            let mut buf = vec![0u8; 64 * 1024];
            let _ = load(insns, Some(&mut buf));
            let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
            let log = String::from_utf8_lossy(&buf[..end]).trim().to_string();
            Err(BpfFailure { op: "load", source: e, log })
        }
    }
}

/// Ids of the device programs attached to the cgroup `dir_fd`.
fn query(dir_fd: RawFd) -> io::Result<Vec<u32>> {
    let mut ids = vec![0u32; 64];
    let mut attr = QueryAttr {
        target_fd: dir_fd as u32,
        attach_type: BPF_CGROUP_DEVICE,
        prog_ids: ids.as_mut_ptr() as u64,
        prog_cnt: ids.len() as u32,
        ..Default::default()
    };
    bpf(BPF_PROG_QUERY, &mut attr)?;
    ids.truncate(attr.prog_cnt as usize);
    Ok(ids)
}

fn prog_fd_by_id(id: u32) -> io::Result<OwnedFd> {
    let mut attr = GetFdAttr { prog_id: id, ..Default::default() };
    bpf(BPF_PROG_GET_FD_BY_ID, &mut attr).map(owned_fd)
}

fn attach_cmd(cmd: libc::c_long, dir_fd: RawFd, prog_fd: RawFd, flags: u32) -> io::Result<()> {
    let mut attr = AttachAttr {
        target_fd: dir_fd as u32,
        attach_bpf_fd: prog_fd as u32,
        attach_type: BPF_CGROUP_DEVICE,
        attach_flags: flags,
        ..Default::default()
    };
    bpf(cmd, &mut attr).map(|_| ())
}

/// Loads `insns` and attaches them to the cgroup directory `dir`. With
/// `replace`, device programs attached before are detached afterwards.
pub fn attach_device_filter(dir: &Path, insns: &[Insn], replace: bool) -> Result<(), BpfFailure> {
    let dir_file = File::options()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open(dir)
        .map_err(|e| fail("open the cgroup for", e))?;
    let dir_fd = dir_file.as_raw_fd();
    let old =
        if replace { query(dir_fd).map_err(|e| fail("query the programs attached before", e))? } else { Vec::new() };
    let prog = load_device_program(insns)?;
    attach_cmd(BPF_PROG_ATTACH, dir_fd, prog.as_raw_fd(), BPF_F_ALLOW_MULTI).map_err(|e| fail("attach", e))?;
    for id in old {
        match prog_fd_by_id(id) {
            Ok(old_fd) => attach_cmd(BPF_PROG_DETACH, dir_fd, old_fd.as_raw_fd(), 0)
                .map_err(|e| fail("detach the previous", e))?,
            // Gone in the meantime (the cgroup was updated concurrently).
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
            Err(e) => return Err(fail("open the previous", e)),
        }
    }
    Ok(())
}

/// Ids of device programs attached to `dir` (for tests and diagnostics).
pub fn attached_programs(dir: &Path) -> io::Result<Vec<u32>> {
    let f = File::options().read(true).custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC).open(dir)?;
    query(f.as_raw_fd())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attr_layouts_match_the_kernel() {
        assert_eq!(std::mem::size_of::<ProgLoadAttr>(), 72);
        assert_eq!(std::mem::offset_of!(ProgLoadAttr, log_buf), 32);
        assert_eq!(std::mem::offset_of!(ProgLoadAttr, prog_name), 48);
        assert_eq!(std::mem::offset_of!(ProgLoadAttr, expected_attach_type), 68);
        assert_eq!(std::mem::size_of::<AttachAttr>(), 20);
        assert_eq!(std::mem::offset_of!(QueryAttr, prog_ids), 16);
        assert_eq!(std::mem::offset_of!(QueryAttr, prog_cnt), 24);
        assert!(PROG_NAME.len() < 16);
    }
}
