//! A seccomp filter per kind of VMM thread, each allowing only the syscalls
//! that kind makes once the guest runs:
//! - `vmm`: the main thread, the event loop serving vsock and the exit;
//! - `vcpu`: KVM_RUN and the legacy and virtio-mmio devices it reaches
//!   (serial log, power, queue activation);
//! - `device`: the virtio-fs and virtio-blk workers, the only threads that
//!   touch files, the virtio-balloon worker, and the virtio-net workers
//!   (with the TAP's offloads);
//! - `io`: the threads that talk to the agent for the VMM (create's
//!   control pipe, the supervisor with its stdio relays, signal
//!   forwarding), which connect to the VM's own vsock socket and nothing
//!   else.
//!
//! Filters are compiled with libseccomp (the container side's compiler)
//! once, before any thread exists, and each thread loads its own as it
//! starts; a thread's children inherit its filter, so a thread that makes
//! threads of another kind (the supervisor its relays) only makes threads
//! of its own kind. A syscall outside the list traps: the handler writes
//! one line naming the thread and the syscall number on the VMM's stderr
//! (the container's) and ends the whole VMM with [`EXIT_CODE`], since a
//! VMM that met something it does not expect must not go on half working.

use std::cell::Cell;
use std::sync::OnceLock;

use serde_json::{json, Value};

use crate::linux::seccomp::{self as compiler, Filter};

/// The kinds of VMM threads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadKind {
    Vmm,
    Vcpu,
    Device,
    Io,
}

impl ThreadKind {
    pub const ALL: [ThreadKind; 4] = [ThreadKind::Vmm, ThreadKind::Vcpu, ThreadKind::Device, ThreadKind::Io];

    pub fn name(self) -> &'static str {
        match self {
            ThreadKind::Vmm => "vmm",
            ThreadKind::Vcpu => "vcpu",
            ThreadKind::Device => "device",
            ThreadKind::Io => "io",
        }
    }

    fn index(self) -> usize {
        self as usize
    }

    fn from_index(i: u8) -> Option<ThreadKind> {
        ThreadKind::ALL.get(usize::from(i)).copied()
    }
}

/// Names a kind whose threads, right after loading their filter, make a
/// syscall no filter allows: the test that proves each filter is on.
pub const PROBE_ENV: &str = "AMPHI_VMM_SECCOMP_PROBE";
/// The VMM's exit status when a filter stopped it: 128 + SIGSYS, what a
/// shell shows for a process that SIGSYS ended.
pub const EXIT_CODE: i32 = 128 + libc::SIGSYS;

#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("cannot compile the seccomp filter of the VMM's {kind} threads")]
    Compile {
        kind: &'static str,
        #[source]
        source: crate::linux::LinuxError,
    },
    #[error("cannot install the VMM's SIGSYS handler")]
    Handler(#[source] nix::errno::Errno),
    #[error("cannot load the seccomp filter of a VMM {kind} thread")]
    Load {
        kind: &'static str,
        #[source]
        source: nix::errno::Errno,
    },
    #[error("{PROBE_ENV}={0:?} names no kind of VMM thread: use vmm, vcpu, device or io")]
    Probe(String),
}

/// Syscalls every thread makes: memory, locks, time, signals, its own end,
/// and reading and writing descriptors it already has.
const COMMON: &[&str] = &[
    "brk",
    "clock_gettime",
    "clock_nanosleep",
    "close",
    "epoll_create1",
    "epoll_ctl",
    "epoll_pwait",
    "epoll_wait",
    "eventfd2",
    "exit",
    "exit_group",
    "fcntl",
    "fstat",
    "futex",
    "getpid",
    "getrandom",
    "gettid",
    "gettimeofday",
    "lseek",
    "madvise",
    "mmap",
    "mprotect",
    "mremap",
    "munmap",
    "nanosleep",
    "newfstatat",
    "poll",
    "ppoll",
    "read",
    "readv",
    "restart_syscall",
    "rseq",
    "rt_sigprocmask",
    "rt_sigreturn",
    "sched_getaffinity",
    "sched_yield",
    "set_robust_list",
    "sigaltstack",
    "statx",
    "write",
    "writev",
];

/// The main thread: the event loop (vsock connections to and from the
/// host side), stopping the vCPUs, and ending like the workload ended.
const VMM: &[&str] = &[
    "accept",
    "accept4",
    "connect",
    "dup",
    "getpeername",
    "getrusage",
    "getsockname",
    "getsockopt",
    "mincore",
    // Reading the smaps kept open for a restored VM's memory stats.
    "pread64",
    "prlimit64",
    "recvfrom",
    "recvmsg",
    "rt_sigaction",
    "sendmsg",
    "sendto",
    "setsockopt",
    "shutdown",
    "unlink",
];

/// A vCPU: KVM_RUN and what its exits reach (the serial log file, irqfds,
/// queue activation handing work to device threads).
const VCPU: &[&str] = &["fsync", "ftruncate", "pread64", "pwrite64"];

/// A device worker: virtio-fs's passthrough filesystem acting on the share
/// as the guest's caller (per-thread credentials, the umask it sets for
/// FUSE_INIT), virtio-blk's reads, writes and flushes of its image.
/// virtio-balloon's worker needs nothing beyond COMMON: its one system
/// call of note, madvise(MADV_DONTNEED) on guest memory, is there.
/// virtio-net's frames need only read and write (COMMON) on the TAP, and
/// the TUNSETOFFLOAD ioctl below.
const DEVICE: &[&str] = &[
    "capget",
    "capset",
    "copy_file_range",
    "dup",
    "dup3",
    "fallocate",
    "fchmod",
    "fchmodat",
    "fchown",
    "fchownat",
    "fdatasync",
    "fgetxattr",
    "flistxattr",
    "flock",
    "fremovexattr",
    "fsetxattr",
    "fstatfs",
    "fsync",
    "ftruncate",
    "getdents64",
    "getegid",
    "geteuid",
    "getgid",
    "getuid",
    "getxattr",
    "lgetxattr",
    "linkat",
    "listxattr",
    "llistxattr",
    "lremovexattr",
    "lsetxattr",
    "mkdirat",
    "mknodat",
    "name_to_handle_at",
    "open_by_handle_at",
    "openat",
    "openat2",
    "pread64",
    "preadv",
    "preadv2",
    "pwrite64",
    "pwritev",
    "pwritev2",
    "readlinkat",
    "removexattr",
    "renameat",
    "renameat2",
    "setfsgid",
    "setfsuid",
    "setresgid",
    "setresuid",
    "setxattr",
    "statfs",
    "symlinkat",
    "sync_file_range",
    "syncfs",
    "umask",
    "unlinkat",
    "utimensat",
];

/// The agent-facing threads: connect to the VM's vsock socket, relay
/// stdio, wait for signals, start their relay threads.
const IO: &[&str] = &[
    "clone",
    "clone3",
    "connect",
    "getsockopt",
    "pipe2",
    "recvfrom",
    "recvmsg",
    "rt_sigtimedwait",
    "sendmsg",
    "sendto",
    "setsockopt",
    "shutdown",
    "splice",
];

// ioctl requests, by thread kind.
const FIONBIO: u64 = 0x5421;
const FIONREAD: u64 = 0x541b;
const FIOCLEX: u64 = 0x5451;
const TCGETS: u64 = 0x5401;
const TCSETS: u64 = 0x5402;
const TIOCGWINSZ: u64 = 0x5413;
const TIOCSWINSZ: u64 = 0x5414;
/// virtio-net's worker sets the TAP's offloads to what the driver accepted
/// when the device is activated (the worker does it: activation runs on a
/// vCPU thread, whose filter allows only KVM ioctls).
const TUNSETOFFLOAD: u64 = libc::TUNSETOFFLOAD;
/// Every KVM ioctl carries type 0xAE in bits 8..16.
const KVMIO_MASK: u64 = 0xff00;
const KVMIO: u64 = 0xae00;

fn allow(names: &[&str]) -> Value {
    json!({"names": names, "action": "SCMP_ACT_ALLOW"})
}

fn allow_if(name: &str, args: Value) -> Value {
    json!({"names": [name], "action": "SCMP_ACT_ALLOW", "args": args})
}

fn eq(index: u32, value: u64) -> Value {
    json!({"index": index, "value": value, "op": "SCMP_CMP_EQ"})
}

/// The profile of one kind, as an OCI seccomp profile (trap by default).
fn profile(kind: ThreadKind, pid: u32) -> Value {
    let own = match kind {
        ThreadKind::Vmm => VMM,
        ThreadKind::Vcpu => VCPU,
        ThreadKind::Device => DEVICE,
        ThreadKind::Io => IO,
    };
    let mut rules = vec![allow(COMMON), allow(own)];
    if kind != ThreadKind::Device {
        // Fails rather than traps: glibc's allocator opens
        // /proc/sys/vm/overcommit_memory from whichever thread first
        // shrinks a per-thread heap, and copes with the open failing.
        rules.push(
            json!({"names": ["open", "openat", "openat2"], "action": "SCMP_ACT_ERRNO", "errnoRet": libc::EACCES}),
        );
    }
    // Thread names (std sets and reads them), and dropping dumpability
    // (never gaining it back).
    rules.push(allow_if("prctl", json!([eq(0, libc::PR_SET_NAME as u64)])));
    rules.push(allow_if("prctl", json!([eq(0, libc::PR_GET_NAME as u64)])));
    rules.push(allow_if("prctl", json!([eq(0, libc::PR_SET_DUMPABLE as u64), eq(1, 0)])));
    // Signals to this process only: vCPU kicks, ending like the workload.
    rules.push(allow_if("kill", json!([eq(0, u64::from(pid))])));
    rules.push(allow_if("tgkill", json!([eq(0, u64::from(pid))])));
    if matches!(kind, ThreadKind::Vmm | ThreadKind::Io) {
        rules.push(allow_if("socket", json!([eq(0, libc::AF_UNIX as u64)])));
    }
    let ioctls: &[u64] = match kind {
        ThreadKind::Vmm => &[FIONBIO, FIONREAD, FIOCLEX],
        ThreadKind::Vcpu => &[FIONBIO],
        ThreadKind::Device => &[FIONBIO, FIOCLEX, TUNSETOFFLOAD],
        ThreadKind::Io => &[FIONBIO, FIONREAD, FIOCLEX, TCGETS, TCSETS, TIOCGWINSZ, TIOCSWINSZ],
    };
    // Arguments sharing an index are alternatives (runc's semantics).
    let any: Vec<Value> = ioctls.iter().map(|r| eq(1, *r)).collect();
    rules.push(allow_if("ioctl", Value::Array(any)));
    if kind == ThreadKind::Vcpu {
        let kvm = json!({"index": 1, "value": KVMIO_MASK, "valueTwo": KVMIO, "op": "SCMP_CMP_MASKED_EQ"});
        rules.push(allow_if("ioctl", json!([kvm])));
    }
    json!({"defaultAction": "SCMP_ACT_TRAP", "syscalls": rules})
}

fn compile(kind: ThreadKind, pid: u32) -> Result<Filter, SeccompError> {
    let err = |source| SeccompError::Compile { kind: kind.name(), source };
    let spec = serde_json::from_value(profile(kind, pid))
        .map_err(|e| err(crate::linux::LinuxError::Config(format!("the built-in profile does not parse: {e}"))))?;
    compiler::compile(&spec).map_err(err)
}

struct Filters {
    by_kind: Vec<Filter>,
    probe: Option<ThreadKind>,
}

static FILTERS: OnceLock<Filters> = OnceLock::new();

thread_local! {
    /// This thread's kind, plus one (0: no filter), for the SIGSYS handler.
    static KIND: Cell<u8> = const { Cell::new(0) };
}

/// Compiles every filter and installs the SIGSYS handler. Call once, while
/// the process is single-threaded; until it is called [`enter`] does
/// nothing (the VMM of `amphi vm check` and the unit tests run unfiltered).
pub fn prepare() -> Result<(), SeccompError> {
    let probe = match std::env::var(PROBE_ENV) {
        Ok(v) => Some(ThreadKind::ALL.into_iter().find(|k| k.name() == v).ok_or(SeccompError::Probe(v))?),
        Err(_) => None,
    };
    let pid = std::process::id();
    let by_kind = ThreadKind::ALL.into_iter().map(|k| compile(k, pid)).collect::<Result<Vec<_>, _>>()?;
    let action = nix::sys::signal::SigAction::new(
        nix::sys::signal::SigHandler::SigAction(on_sigsys),
        nix::sys::signal::SaFlags::SA_SIGINFO,
        nix::sys::signal::SigSet::empty(),
    );
    // SAFETY: the handler only formats into a stack buffer and makes
    // async-signal-safe syscalls (prctl, write, exit_group).
    unsafe { nix::sys::signal::sigaction(nix::sys::signal::Signal::SIGSYS, &action) }.map_err(SeccompError::Handler)?;
    let _ = FILTERS.set(Filters { by_kind, probe });
    Ok(())
}

/// Loads the filter of `kind` on the calling thread (the threads it makes
/// afterwards inherit it). Nothing happens before [`prepare`].
pub fn enter(kind: ThreadKind) -> Result<(), SeccompError> {
    let Some(filters) = FILTERS.get() else { return Ok(()) };
    KIND.with(|k| k.set(kind as u8 + 1));
    filters.by_kind[kind.index()].load().map_err(|source| SeccompError::Load { kind: kind.name(), source })?;
    if filters.probe == Some(kind) {
        // SAFETY: ptrace(PTRACE_TRACEME) is in no list: the filter traps
        // it before the kernel looks at it.
        unsafe { libc::syscall(libc::SYS_ptrace, libc::PTRACE_TRACEME, 0, 0, 0) };
    }
    Ok(())
}

/// Names the kind of a thread that inherited its filter from the thread
/// that made it (the supervisor's stdio relays), for the SIGSYS handler's
/// line. Nothing happens before [`prepare`].
pub fn inherited(kind: ThreadKind) {
    if FILTERS.get().is_some() {
        KIND.with(|k| k.set(kind as u8 + 1));
    }
}

/// [`enter`] for a thread that has nobody to report to: a thread that
/// cannot be confined ends the VMM rather than run unconfined.
pub fn enter_or_exit(kind: ThreadKind) {
    if let Err(e) = enter(kind) {
        let line = format!("amphi: VMM: {}\n", crate::logging::chain(&e));
        // SAFETY: write(2) of a buffer we own.
        unsafe { libc::write(2, line.as_ptr().cast(), line.len()) };
        // SAFETY: exit_group(2) ends the process; it does not return.
        unsafe { libc::syscall(libc::SYS_exit_group, 1) };
    }
}

/// A fixed buffer the handler formats its line in (no allocation: the
/// trapped syscall may have been the allocator's).
struct Line {
    buf: [u8; 256],
    len: usize,
}

impl Line {
    fn push(&mut self, s: &[u8]) {
        for &b in s {
            if self.len < self.buf.len() {
                self.buf[self.len] = b;
                self.len += 1;
            }
        }
    }

    fn number(&mut self, n: i64) {
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        let mut v = n.unsigned_abs();
        loop {
            i -= 1;
            digits[i] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        if n < 0 {
            self.push(b"-");
        }
        self.push(&digits[i..]);
    }
}

/// The line the handler writes for a trapped syscall.
fn report(kind: Option<ThreadKind>, thread: &[u8], nr: i64) -> Line {
    let mut l = Line { buf: [0; 256], len: 0 };
    l.push(b"amphi: VMM: thread ");
    l.push(thread);
    l.push(b" (");
    l.push(kind.map(ThreadKind::name).unwrap_or("unfiltered").as_bytes());
    l.push(b" filter) made syscall ");
    l.number(nr);
    l.push(b" (x86_64), which its seccomp filter does not allow: the VMM stops\n");
    l
}

extern "C" fn on_sigsys(_sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // In <asm-generic/siginfo.h>, a SIGSYS's fields follow si_signo,
    // si_errno, si_code and the union's alignment: `void *_call_addr` at
    // byte 16, `int _syscall` at byte 24.
    // SAFETY: the kernel passes SA_SIGINFO handlers a valid siginfo, and a
    // seccomp trap fills the SIGSYS fields.
    let at = unsafe { info.cast::<u8>().add(24) };
    // SAFETY: `at` points at the 4 bytes of `_syscall` inside that siginfo.
    let nr = unsafe { at.cast::<i32>().read_unaligned() };
    let kind = ThreadKind::from_index(KIND.with(|k| k.get()).wrapping_sub(1));
    let mut name = [0u8; 16];
    // SAFETY: PR_GET_NAME writes at most 16 bytes into the buffer we own.
    unsafe { libc::prctl(libc::PR_GET_NAME, name.as_mut_ptr()) };
    let thread = &name[..name.iter().position(|b| *b == 0).unwrap_or(name.len())];
    let line = report(kind, thread, i64::from(nr));
    // SAFETY: write(2) of our own buffer (every filter allows it).
    unsafe { libc::write(2, line.buf.as_ptr().cast(), line.len) };
    // SAFETY: exit_group(2) ends the process (every filter allows it).
    unsafe { libc::syscall(libc::SYS_exit_group, EXIT_CODE) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_profile_compiles_without_unknown_names() {
        for kind in ThreadKind::ALL {
            let spec = serde_json::from_value(profile(kind, 4242)).unwrap();
            let f = compiler::compile(&spec).unwrap();
            assert!(f.skipped.is_empty(), "{}: {:?}", kind.name(), f.skipped);
            assert!(!f.bpf().is_empty());
        }
    }

    #[test]
    fn kinds_keep_to_their_own_syscalls() {
        let has = |list: &[&str], n: &str| list.contains(&n) || COMMON.contains(&n);
        // Only device threads touch files, only io threads make threads,
        // nothing may exec, mount, trace or change namespaces.
        for n in ["openat", "unlinkat", "setresuid"] {
            assert!(has(DEVICE, n) && !has(VMM, n) && !has(VCPU, n) && !has(IO, n), "{n}");
        }
        for n in ["clone", "clone3"] {
            assert!(has(IO, n) && !has(VMM, n) && !has(VCPU, n) && !has(DEVICE, n), "{n}");
        }
        for list in [VMM, VCPU, DEVICE, IO] {
            for n in ["execve", "execveat", "mount", "umount2", "ptrace", "setns", "unshare", "bpf", "pivot_root"] {
                assert!(!has(list, n), "{n}");
            }
        }
    }

    #[test]
    fn the_report_names_thread_kind_and_number() {
        let l = report(Some(ThreadKind::Vcpu), b"vcpu0", 101);
        let s = std::str::from_utf8(&l.buf[..l.len]).unwrap();
        assert_eq!(
            s,
            "amphi: VMM: thread vcpu0 (vcpu filter) made syscall 101 (x86_64), which its seccomp filter does not \
             allow: the VMM stops\n"
        );
        let l = report(None, b"x", -1);
        assert!(std::str::from_utf8(&l.buf[..l.len]).unwrap().contains("(unfiltered filter) made syscall -1 "));
    }

    /// Loads a filter in a forked child, which then makes the syscall: the
    /// child must end with EXIT_CODE, or 0 when the syscall was allowed.
    fn outcome(kind: ThreadKind, call: impl FnOnce()) -> i32 {
        let spec = serde_json::from_value(profile(kind, std::process::id())).unwrap();
        let filter = compiler::compile(&spec).unwrap();
        // SAFETY: the child only makes syscalls and exits (no allocation
        // after fork other than what `call` does in a fresh process).
        match unsafe { nix::unistd::fork() }.unwrap() {
            nix::unistd::ForkResult::Child => {
                // The handler's line is expected here: keep it out of the
                // test output.
                if let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") {
                    // SAFETY: dup2 onto stderr of this child, which nothing
                    // else holds a handle to.
                    unsafe { libc::dup2(std::os::fd::AsRawFd::as_raw_fd(&null), 2) };
                }
                let action = nix::sys::signal::SigAction::new(
                    nix::sys::signal::SigHandler::SigAction(on_sigsys),
                    nix::sys::signal::SaFlags::SA_SIGINFO,
                    nix::sys::signal::SigSet::empty(),
                );
                // SAFETY: as in `prepare`.
                let _ = unsafe { nix::sys::signal::sigaction(nix::sys::signal::Signal::SIGSYS, &action) };
                let _ = nix::sys::prctl::set_no_new_privs();
                if filter.load().is_err() {
                    // SAFETY: ends the child.
                    unsafe { libc::_exit(99) };
                }
                call();
                // SAFETY: ends the child.
                unsafe { libc::_exit(0) };
            }
            nix::unistd::ForkResult::Parent { child } => match nix::sys::wait::waitpid(child, None).unwrap() {
                nix::sys::wait::WaitStatus::Exited(_, code) => code,
                other => panic!("{other:?}"),
            },
        }
    }

    #[test]
    fn a_filter_stops_what_it_does_not_list() {
        // The pid in the profile is the parent's: the child's own kill of
        // itself would not match, which is not what this looks at.
        // SAFETY: syscalls with harmless arguments.
        let ptrace = || unsafe {
            libc::syscall(libc::SYS_ptrace, libc::PTRACE_TRACEME, 0, 0, 0);
        };
        assert_eq!(outcome(ThreadKind::Vcpu, ptrace), EXIT_CODE);
        // SAFETY: opens nothing that matters; the descriptor is leaked in
        // a child that exits.
        let open = || unsafe {
            libc::openat(libc::AT_FDCWD, c"/".as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY);
        };
        // Refused with EACCES, not stopped (glibc's allocator may try).
        let open_refused = || {
            let refused = matches!(
                nix::fcntl::open("/", nix::fcntl::OFlag::O_RDONLY, nix::sys::stat::Mode::empty()),
                Err(nix::errno::Errno::EACCES)
            );
            if refused {
                // SAFETY: ends the child, with the code the parent expects.
                unsafe { libc::_exit(13) };
            }
        };
        assert_eq!(outcome(ThreadKind::Vcpu, open_refused), 13);
        assert_eq!(outcome(ThreadKind::Device, open), 0);
        // SAFETY: a socket that is closed by the child's exit.
        let inet = || unsafe {
            libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        };
        assert_eq!(outcome(ThreadKind::Io, inet), EXIT_CODE);
        // SAFETY: as above.
        let unix = || unsafe {
            libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
        };
        assert_eq!(outcome(ThreadKind::Io, unix), 0);
        // virtio-net's worker sets a TAP's offloads; nothing else may (on
        // a closed fd here: only the filter's verdict matters).
        // SAFETY: an ioctl on a descriptor that is not open fails with EBADF.
        let offload = || unsafe {
            libc::ioctl(-1, libc::TUNSETOFFLOAD, 0);
        };
        assert_eq!(outcome(ThreadKind::Device, offload), 0);
        assert_eq!(outcome(ThreadKind::Vcpu, offload), EXIT_CODE);
        assert_eq!(outcome(ThreadKind::Vmm, offload), EXIT_CODE);
    }
}
