//! The fs device on plain guest memory: a small test driver writes FUSE
//! requests into descriptor chains the way the guest kernel does (and the
//! ways a hostile guest might), the device serves them against a temporary
//! directory.
//!
//! The passthrough sets umask 0 on the thread that serves FUSE_INIT; the
//! device's worker has a filesystem context of its own for that, and these
//! tests serve requests on a scoped thread that unshares it the same way
//! ([`isolated`]), so the test process's umask is never touched.

use std::ffi::CString;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

use fuse_backend_rs::abi::fuse_abi::{
    AttrOut, CreateIn, EntryOut, GetattrIn, GetxattrIn, InHeader, InitIn, InitOut, IoctlIn, MkdirIn, Opcode, OpenIn,
    OpenOut, OutHeader, ReadIn, ReleaseIn, SetattrIn, SetxattrIn, WriteIn, WriteOut, KERNEL_MINOR_VERSION,
    KERNEL_VERSION, ROOT_ID,
};
use fuse_vm_memory::ByteValued;
use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::*;
use crate::vm::devices::virtio::fs::filesystem::passthrough_config;
use crate::vm::devices::virtio::persist::DeviceSnapshot;
use crate::vm::devices::IrqTrigger;

const MEM_SIZE: u64 = 0x400_0000;
const HIPRIO_AT: u64 = 0x1_0000;
const REQUEST_AT: u64 = 0x2_0000;
const DATA_START: u64 = 0x10_0000;
const DATA_END: u64 = 0x300_0000;
const OUT_HEADER: usize = std::mem::size_of::<OutHeader>();

/// Runs `f` on a thread with its own filesystem context and umask 0, as
/// the device's worker runs.
fn isolated<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    std::thread::scope(|s| {
        s.spawn(|| {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_FS).unwrap();
            nix::sys::stat::umask(nix::sys::stat::Mode::empty());
            f()
        })
        .join()
        .unwrap()
    })
}

fn guest_memory() -> GuestMemoryMmap {
    GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).unwrap()
}

fn desc(addr: u64, len: u32, flags: u32, next: u16) -> RawDescriptor {
    RawDescriptor::from(SplitDescriptor::new(addr, len, flags as u16, next))
}

/// One buffer of a chain: where, how long, device-writable or not.
#[derive(Clone, Copy)]
struct Buf {
    addr: u64,
    len: u32,
    write: bool,
}

struct Reply {
    used_len: u32,
    header: OutHeader,
    body: Vec<u8>,
}

impl Reply {
    fn error(&self) -> i32 {
        self.header.error
    }

    fn body<T: ByteValued>(&self) -> T {
        assert_eq!(self.error(), 0, "request failed");
        T::from_slice(&self.body[..std::mem::size_of::<T>()]).copied().unwrap()
    }
}

/// The guest side of one queue: writes descriptors, publishes chains,
/// reads what the device used.
struct Driver<'m> {
    mem: &'m GuestMemoryMmap,
    q: MockSplitQueue<'m, GuestMemoryMmap>,
    size: u16,
    next_desc: u16,
    avail_idx: u16,
    used_seen: u16,
    next_buf: u64,
}

impl<'m> Driver<'m> {
    fn new(mem: &'m GuestMemoryMmap, at: u64, size: u16) -> Self {
        Driver {
            mem,
            q: MockSplitQueue::create(mem, GuestAddress(at), size),
            size,
            next_desc: 0,
            avail_idx: 0,
            used_seen: 0,
            next_buf: DATA_START,
        }
    }

    fn queue(&self) -> virtio_queue::Queue {
        self.q.create_queue().unwrap()
    }

    fn alloc(&mut self, len: usize) -> u64 {
        let len = (len as u64).next_multiple_of(64);
        if self.next_buf + len > DATA_END {
            self.next_buf = DATA_START;
        }
        let at = self.next_buf;
        self.next_buf += len;
        at
    }

    fn store(&self, index: u16, d: RawDescriptor) {
        self.q.desc_table().store(index, d).unwrap();
    }

    /// Writes a chain of `bufs` into consecutive descriptor slots; returns its head.
    fn chain(&mut self, bufs: &[Buf]) -> u16 {
        let head = self.next_desc;
        for (i, b) in bufs.iter().enumerate() {
            let index = (head + i as u16) % self.size;
            let last = i + 1 == bufs.len();
            let mut flags = if b.write { VRING_DESC_F_WRITE } else { 0 };
            if !last {
                flags |= VRING_DESC_F_NEXT;
            }
            self.store(index, desc(b.addr, b.len, flags, (index + 1) % self.size));
        }
        self.next_desc = (head + bufs.len() as u16) % self.size;
        head
    }

    /// Makes `head` available to the device.
    fn publish(&mut self, head: u16) {
        let ring = self.q.avail_addr().0 + 4 + 2 * u64::from(self.avail_idx % self.size);
        self.mem.write_obj(head, GuestAddress(ring)).unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.mem.write_obj(self.avail_idx, GuestAddress(self.q.avail_addr().0 + 2)).unwrap();
    }

    /// Entries the device added to the used ring since the last call.
    fn used(&mut self) -> Vec<(u32, u32)> {
        let idx = self.q.used().idx().load();
        let mut out = Vec::new();
        while self.used_seen != idx {
            let e = self.q.used().ring().ref_at(usize::from(self.used_seen % self.size)).unwrap().load();
            out.push((e.id(), e.len()));
            self.used_seen = self.used_seen.wrapping_add(1);
        }
        out
    }

    /// A FUSE request with its reply buffer, published; returns the head
    /// and where the reply goes.
    fn request(&mut self, bytes: &[u8], out_len: u32) -> (u16, u64) {
        let inp = self.alloc(bytes.len());
        self.mem.write_slice(bytes, GuestAddress(inp)).unwrap();
        let out = self.alloc(out_len as usize);
        let head = self.chain(&[
            Buf { addr: inp, len: bytes.len() as u32, write: false },
            Buf { addr: out, len: out_len, write: true },
        ]);
        self.publish(head);
        (head, out)
    }

    fn read_reply(&self, out: u64, used_len: u32) -> Reply {
        let mut header = OutHeader::default();
        if used_len as usize >= OUT_HEADER {
            self.mem.read_slice(header.as_mut_slice(), GuestAddress(out)).unwrap();
        }
        let mut body = vec![0u8; (used_len as usize).saturating_sub(OUT_HEADER)];
        self.mem.read_slice(&mut body, GuestAddress(out + OUT_HEADER as u64)).unwrap();
        Reply { used_len, header, body }
    }
}

/// A FUSE message: header (uid 0) and body.
fn message(opcode: Opcode, unique: u64, nodeid: u64, parts: &[&[u8]]) -> Vec<u8> {
    let body: Vec<u8> = parts.concat();
    let header = InHeader {
        len: (std::mem::size_of::<InHeader>() + body.len()) as u32,
        opcode: opcode as u32,
        unique,
        nodeid,
        ..Default::default()
    };
    [header.as_slice(), &body].concat()
}

fn cstr(s: &str) -> Vec<u8> {
    CString::new(s).unwrap().into_bytes_with_nul()
}

fn new_active(mem: &GuestMemoryMmap, hiprio: &Driver, request: &Driver, root: &Path, read_only: bool) -> Active {
    let fs = PassthroughFs::new(passthrough_config(root.to_str().unwrap())).unwrap();
    Active {
        server: Server::new(ShareFs::new(fs, read_only)),
        mem: bridge::view(mem).unwrap(),
        queues: vec![bridge::queue(0, &hiprio.queue()).unwrap(), bridge::queue(1, &request.queue()).unwrap()],
        interrupt: Arc::new(VirtioInterrupt::new(IrqTrigger::new().unwrap())),
    }
}

/// A guest driving one share synchronously: each call publishes one
/// request and serves the queue on the calling thread.
struct Session<'m> {
    hiprio: Driver<'m>,
    req: Driver<'m>,
    active: Active,
    unique: u64,
}

impl<'m> Session<'m> {
    fn new(mem: &'m GuestMemoryMmap, root: &Path, read_only: bool) -> Self {
        let hiprio = Driver::new(mem, HIPRIO_AT, 128);
        let req = Driver::new(mem, REQUEST_AT, 1024);
        let active = new_active(mem, &hiprio, &req, root, read_only);
        Session { hiprio, req, active, unique: 0 }
    }

    fn serve(&mut self) {
        while self.active.process_queue(REQUEST_QUEUE) {}
    }

    fn call(&mut self, opcode: Opcode, nodeid: u64, parts: &[&[u8]], out_len: u32) -> Reply {
        self.unique += 1;
        let msg = message(opcode, self.unique, nodeid, parts);
        let (head, out) = self.req.request(&msg, out_len);
        self.serve();
        let used = self.req.used();
        assert_eq!(used.len(), 1, "one request, one used entry");
        assert_eq!(used[0].0, u32::from(head));
        let reply = self.req.read_reply(out, used[0].1);
        if reply.used_len as usize >= OUT_HEADER {
            assert_eq!(reply.header.unique, self.unique);
            assert_eq!(reply.header.len, reply.used_len, "the used length is the reply's length");
        }
        reply
    }

    fn init(&mut self) -> InitOut {
        let init = InitIn { major: KERNEL_VERSION, minor: KERNEL_MINOR_VERSION, max_readahead: 0x20000, flags: 0 };
        self.call(Opcode::Init, 0, &[init.as_slice()], 256).body()
    }

    fn lookup(&mut self, parent: u64, name: &str) -> Reply {
        self.call(Opcode::Lookup, parent, &[&cstr(name)], 256)
    }

    fn create(&mut self, parent: u64, name: &str, flags: i32) -> Reply {
        let c = CreateIn { flags: flags as u32, mode: libc::S_IFREG | 0o640, umask: 0o022, fuse_flags: 0 };
        self.call(Opcode::Create, parent, &[c.as_slice(), &cstr(name)], 512)
    }

    fn open(&mut self, node: u64, flags: i32) -> Reply {
        let o = OpenIn { flags: flags as u32, fuse_flags: 0 };
        self.call(Opcode::Open, node, &[o.as_slice()], 256)
    }

    fn write(&mut self, node: u64, fh: u64, offset: u64, data: &[u8]) -> Reply {
        let w = WriteIn { fh, offset, size: data.len() as u32, ..Default::default() };
        self.call(Opcode::Write, node, &[w.as_slice(), data], 256)
    }

    fn read(&mut self, node: u64, fh: u64, offset: u64, size: u32) -> Reply {
        let r = ReadIn { fh, offset, size, ..Default::default() };
        self.call(Opcode::Read, node, &[r.as_slice()], size + OUT_HEADER as u32)
    }

    fn release(&mut self, node: u64, fh: u64) -> Reply {
        let r = ReleaseIn { fh, ..Default::default() };
        self.call(Opcode::Release, node, &[r.as_slice()], 256)
    }

    fn mkdir(&mut self, parent: u64, name: &str) -> Reply {
        let m = MkdirIn { mode: 0o750, umask: 0o022 };
        self.call(Opcode::Mkdir, parent, &[m.as_slice(), &cstr(name)], 256)
    }

    /// A request that must still be answered correctly: after hostile
    /// input, the device keeps working.
    fn still_works(&mut self) {
        let r = self.call(Opcode::Getattr, ROOT_ID, &[GetattrIn::default().as_slice()], 256);
        assert_eq!(r.error(), 0);
        let attr: AttrOut = r.body();
        assert_eq!(attr.attr.mode & libc::S_IFMT, libc::S_IFDIR);
    }
}

fn share_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("hello.txt"), b"hello from the host\n").unwrap();
    dir
}

#[test]
fn config_space_holds_the_tag_and_the_request_queue_count() {
    let dir = share_dir();
    let dev = VirtioFs::new("rootfs", dir.path(), false).unwrap();
    assert_eq!(dev.device_type(), 26);
    assert_eq!(dev.queue_max_sizes().len(), 2);
    let mut cfg = [0xffu8; 40];
    dev.read_config(0, &mut cfg);
    assert_eq!(&cfg[..6], b"rootfs");
    assert!(cfg[6..36].iter().all(|&b| b == 0), "tag NUL padded");
    assert_eq!(u32::from_le_bytes(cfg[36..40].try_into().unwrap()), 1);
    let mut tail = [0xffu8; 8];
    dev.read_config(36, &mut tail);
    assert_eq!(tail, [1, 0, 0, 0, 0, 0, 0, 0], "reads past the end are zero");
    dev.read_config(u64::MAX, &mut tail);
    assert_eq!(tail, [0; 8]);
    assert_ne!(dev.avail_features() & VIRTIO_F_VERSION_1, 0);
}

#[test]
fn bad_shares_are_refused_by_name() {
    let dir = share_dir();
    let err = |r: Result<VirtioFs, ShareError>| r.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(err(VirtioFs::new("", dir.path(), false)).contains("tag"));
    assert!(err(VirtioFs::new(&"x".repeat(37), dir.path(), false)).contains("1 to 36 bytes"));
    assert!(err(VirtioFs::new("a=b", dir.path(), false)).contains("tag"));
    assert!(err(VirtioFs::new("ok", &dir.path().join("hello.txt"), false)).contains("is not a directory"));
    assert!(err(VirtioFs::new("ok", &dir.path().join("missing"), false)).contains("cannot open"));
    assert!(VirtioFs::new(&"x".repeat(36), dir.path(), false).is_ok());
}

#[test]
fn init_lookup_and_getattr_against_a_directory() {
    let dir = share_dir();
    let mem = guest_memory();
    isolated(|| {
        let mut s = Session::new(&mem, dir.path(), false);
        let init = s.init();
        assert_eq!(init.major, KERNEL_VERSION);
        assert!(init.max_write > 0);

        let e: EntryOut = s.lookup(ROOT_ID, "hello.txt").body();
        assert_ne!(e.nodeid, ROOT_ID);
        assert_eq!(e.attr.size, 20);
        assert_eq!(e.attr.ino, std::fs::metadata(dir.path().join("hello.txt")).unwrap().ino());
        assert_eq!(e.attr_valid, 1, "one-second attribute timeout");

        let a: AttrOut = s.call(Opcode::Getattr, e.nodeid, &[GetattrIn::default().as_slice()], 256).body();
        assert_eq!(a.attr.size, 20);
        assert_eq!(a.attr.mode & libc::S_IFMT, libc::S_IFREG);

        assert_eq!(s.lookup(ROOT_ID, "missing").error(), -libc::ENOENT);
        // A lookup of ".." at the root stays at the root.
        let up = s.lookup(ROOT_ID, "..");
        assert!(up.error() != 0 || up.body::<EntryOut>().attr.ino == dir.path().metadata().unwrap().ino());
        assert_eq!(s.lookup(ROOT_ID, "a/b").error(), -libc::EINVAL);
    });
}

#[test]
fn open_read_write_create_mkdir_and_unlink_reach_the_host_directory() {
    let dir = share_dir();
    let mem = guest_memory();
    isolated(|| {
        let mut s = Session::new(&mem, dir.path(), false);
        s.init();

        // Read a host file.
        let e: EntryOut = s.lookup(ROOT_ID, "hello.txt").body();
        let o: OpenOut = s.open(e.nodeid, libc::O_RDONLY).body();
        let r = s.read(e.nodeid, o.fh, 6, 100);
        assert_eq!(r.error(), 0);
        assert_eq!(r.body, b"from the host\n");
        assert_eq!(s.release(e.nodeid, o.fh).error(), 0);

        // Create and write: the host sees the data as soon as the write is answered.
        let c = s.create(ROOT_ID, "new.txt", libc::O_RDWR | libc::O_CREAT);
        assert_eq!(c.error(), 0);
        let entry = EntryOut::from_slice(&c.body[..std::mem::size_of::<EntryOut>()]).copied().unwrap();
        let open = OpenOut::from_slice(&c.body[std::mem::size_of::<EntryOut>()..][..16]).copied().unwrap();
        let w: WriteOut = s.write(entry.nodeid, open.fh, 0, b"written in the guest").body();
        assert_eq!(w.size, 20);
        assert_eq!(std::fs::read(dir.path().join("new.txt")).unwrap(), b"written in the guest");
        let meta = std::fs::metadata(dir.path().join("new.txt")).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o640 & !0o022, "the guest's mode and umask, not the VMM's");
        let w: WriteOut = s.write(entry.nodeid, open.fh, 8, b"IN").body();
        assert_eq!(w.size, 2);
        assert_eq!(std::fs::read(dir.path().join("new.txt")).unwrap(), b"written IN the guest");
        assert_eq!(s.release(entry.nodeid, open.fh).error(), 0);

        // Truncate through setattr.
        let set = SetattrIn { valid: 1 << 3, size: 7, ..Default::default() };
        let a: AttrOut = s.call(Opcode::Setattr, entry.nodeid, &[set.as_slice()], 256).body();
        assert_eq!(a.attr.size, 7);
        assert_eq!(std::fs::read(dir.path().join("new.txt")).unwrap(), b"written");

        // Directories.
        let d: EntryOut = s.mkdir(ROOT_ID, "sub").body();
        assert!(dir.path().join("sub").is_dir());
        assert_eq!(d.attr.mode & libc::S_IFMT, libc::S_IFDIR);
        assert_eq!(s.create(d.nodeid, "inner", libc::O_WRONLY | libc::O_CREAT).error(), 0);
        assert!(dir.path().join("sub/inner").is_file());

        // Unlink and rmdir.
        assert_eq!(s.call(Opcode::Unlink, ROOT_ID, &[&cstr("new.txt")], 256).error(), 0);
        assert!(!dir.path().join("new.txt").exists());
        assert_eq!(s.call(Opcode::Rmdir, ROOT_ID, &[&cstr("sub")], 256).error(), -libc::ENOTEMPTY);
        assert_eq!(s.call(Opcode::Unlink, d.nodeid, &[&cstr("inner")], 256).error(), 0);
        assert_eq!(s.call(Opcode::Rmdir, ROOT_ID, &[&cstr("sub")], 256).error(), 0);
        assert!(!dir.path().join("sub").exists());
    });
}

#[test]
fn xattrs_go_through_except_the_trusted_namespace() {
    let dir = share_dir();
    let mem = guest_memory();
    isolated(|| {
        let mut s = Session::new(&mem, dir.path(), false);
        s.init();
        let e: EntryOut = s.lookup(ROOT_ID, "hello.txt").body();
        let set = |s: &mut Session, name: &str, value: &[u8]| {
            let head = SetxattrIn { size: value.len() as u32, flags: 0 };
            s.call(Opcode::Setxattr, e.nodeid, &[head.as_slice(), &cstr(name), value], 256)
        };
        let r = set(&mut s, "user.amphi", b"guest value");
        if r.error() == -libc::EOPNOTSUPP {
            eprintln!("SKIPPED: the test directory's filesystem has no user xattrs");
            return;
        }
        assert_eq!(r.error(), 0);
        let mut value = vec![0u8; 64];
        // SAFETY: a valid path, a valid name, and a buffer of the length given.
        let n = unsafe {
            let path = CString::new(dir.path().join("hello.txt").to_str().unwrap()).unwrap();
            libc::getxattr(path.as_ptr(), c"user.amphi".as_ptr(), value.as_mut_ptr().cast(), value.len())
        };
        assert_eq!(&value[..n as usize], b"guest value", "the xattr is on the host file");
        let get = GetxattrIn { size: 64, padding: 0 };
        let r = s.call(Opcode::Getxattr, e.nodeid, &[get.as_slice(), &cstr("user.amphi")], 256);
        assert_eq!(r.body, b"guest value");
        assert_eq!(set(&mut s, "trusted.overlay.opaque", b"y").error(), -libc::EPERM);
        assert_eq!(s.call(Opcode::Removexattr, e.nodeid, &[&cstr("trusted.x")], 256).error(), -libc::EPERM);
        assert_eq!(s.call(Opcode::Removexattr, e.nodeid, &[&cstr("user.amphi")], 256).error(), 0);
    });
}

#[test]
fn a_read_only_share_refuses_every_change_with_erofs() {
    let dir = share_dir();
    let mem = guest_memory();
    isolated(|| {
        let mut s = Session::new(&mem, dir.path(), true);
        s.init();
        let e: EntryOut = s.lookup(ROOT_ID, "hello.txt").body();
        let erofs = -libc::EROFS;
        assert_eq!(s.create(ROOT_ID, "new", libc::O_RDWR | libc::O_CREAT).error(), erofs);
        assert_eq!(s.mkdir(ROOT_ID, "d").error(), erofs);
        assert_eq!(s.open(e.nodeid, libc::O_WRONLY).error(), erofs);
        assert_eq!(s.open(e.nodeid, libc::O_RDWR).error(), erofs);
        assert_eq!(s.open(e.nodeid, libc::O_RDONLY | libc::O_TRUNC).error(), erofs);
        assert_eq!(s.call(Opcode::Unlink, ROOT_ID, &[&cstr("hello.txt")], 256).error(), erofs);
        let set = SetattrIn { valid: 1, mode: 0o777, ..Default::default() };
        assert_eq!(s.call(Opcode::Setattr, e.nodeid, &[set.as_slice()], 256).error(), erofs);
        let access = [libc::W_OK as u32, 0];
        let access: Vec<u8> = access.iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(s.call(Opcode::Access, e.nodeid, &[&access], 256).error(), erofs);
        // Reading still works, and a write through a read-only handle is refused.
        let o: OpenOut = s.open(e.nodeid, libc::O_RDONLY).body();
        assert_eq!(s.read(e.nodeid, o.fh, 0, 5).body, b"hello");
        assert_eq!(s.write(e.nodeid, o.fh, 0, b"x").error(), erofs);
        assert!(!dir.path().join("new").exists() && !dir.path().join("d").exists());
        assert_eq!(std::fs::read(dir.path().join("hello.txt")).unwrap(), b"hello from the host\n");
    });
}

#[test]
fn bogus_opcodes_get_enosys() {
    let dir = share_dir();
    let mem = guest_memory();
    isolated(|| {
        let mut s = Session::new(&mem, dir.path(), false);
        s.init();
        for op in [0u32, 7, 19, 50, 4096, 0x1a00_0000, u32::MAX] {
            s.unique += 1;
            let header = InHeader { len: 40, opcode: op, unique: s.unique, nodeid: ROOT_ID, ..Default::default() };
            let (head, out) = s.req.request(header.as_slice(), 256);
            s.serve();
            let used = s.req.used();
            assert_eq!(used, vec![(u32::from(head), 16)], "opcode {op}");
            assert_eq!(s.req.read_reply(out, 16).error(), -libc::ENOSYS, "opcode {op}");
        }
        s.still_works();
    });
}

/// Publishes a hand-made chain and serves it; returns what the device put
/// in the used ring for it.
fn serve_raw(s: &mut Session, bufs: &[Buf]) -> Vec<(u32, u32)> {
    let head = s.req.chain(bufs);
    s.req.publish(head);
    s.serve();
    s.req.used()
}

#[test]
fn malformed_chains_are_answered_or_dropped_and_the_device_keeps_working() {
    let dir = share_dir();
    let mem = guest_memory();
    isolated(|| {
        let mut s = Session::new(&mem, dir.path(), false);
        s.init();
        let getattr = message(Opcode::Getattr, 99, ROOT_ID, &[GetattrIn::default().as_slice()]);
        let inp = s.req.alloc(64);
        mem.write_slice(&getattr, GuestAddress(inp)).unwrap();
        let out = s.req.alloc(4096);
        let rd = |addr, len| Buf { addr, len, write: false };
        let wr = |addr, len| Buf { addr, len, write: true };

        // Too short for the header.
        assert_eq!(serve_raw(&mut s, &[rd(inp, 10), wr(out, 256)])[0].1, 0);
        s.still_works();
        // No readable part at all: the request sits in a device-writable buffer.
        assert_eq!(serve_raw(&mut s, &[wr(inp, 64), wr(out, 256)])[0].1, 0);
        s.still_works();
        // No room for the reply: only readable buffers.
        assert_eq!(serve_raw(&mut s, &[rd(inp, 56), rd(out, 256)])[0].1, 0);
        s.still_works();
        // A reply buffer too small for the reply.
        assert_eq!(serve_raw(&mut s, &[rd(inp, 56), wr(out, 8)])[0].1, 0);
        s.still_works();
        // Out of guest memory: the request, the reply, a buffer straddling the end.
        assert_eq!(serve_raw(&mut s, &[rd(MEM_SIZE + 0x1000, 56), wr(out, 256)])[0].1, 0);
        assert_eq!(serve_raw(&mut s, &[rd(inp, 56), wr(u64::MAX - 16, 256)])[0].1, 0);
        assert_eq!(serve_raw(&mut s, &[rd(inp, 56), wr(MEM_SIZE - 8, 256)])[0].1, 0);
        s.still_works();
        // Huge lengths.
        assert_eq!(serve_raw(&mut s, &[rd(inp, u32::MAX), wr(out, 256)])[0].1, 0);
        assert_eq!(serve_raw(&mut s, &[rd(inp, 56), wr(out, u32::MAX)])[0].1, 0);
        s.still_works();
        // Readable after writable (the spec forbids it): the writable part is the reply.
        let used = serve_raw(&mut s, &[rd(inp, 56), wr(out, 256), rd(inp, 56)]);
        assert_eq!(used.len(), 1);
        s.still_works();
    });
}

#[test]
fn header_lengths_that_disagree_with_the_chain_are_refused() {
    let dir = share_dir();
    let mem = guest_memory();
    isolated(|| {
        let mut s = Session::new(&mem, dir.path(), false);
        s.init();
        let name = cstr("hello.txt");
        for len in [0u32, 8, 39, 40, 41, 4096, 1 << 20, u32::MAX] {
            s.unique += 1;
            let h = InHeader {
                len,
                opcode: Opcode::Lookup as u32,
                unique: s.unique,
                nodeid: ROOT_ID,
                ..Default::default()
            };
            let (head, out) = s.req.request(&[h.as_slice(), &name].concat(), 256);
            s.serve();
            let used = s.req.used();
            assert_eq!(used.len(), 1);
            assert_eq!(used[0].0, u32::from(head));
            if used[0].1 > 0 {
                let reply = s.req.read_reply(out, used[0].1);
                // A header length past the chain cannot name a real file.
                assert_ne!(reply.error(), 0, "header len {len}");
            }
        }
        s.still_works();
        // A write whose header claims more data than the chain holds.
        let c = s.create(ROOT_ID, "w", libc::O_RDWR | libc::O_CREAT);
        let entry = EntryOut::from_slice(&c.body[..std::mem::size_of::<EntryOut>()]).copied().unwrap();
        let open = OpenOut::from_slice(&c.body[std::mem::size_of::<EntryOut>()..][..16]).copied().unwrap();
        let w = WriteIn { fh: open.fh, size: 1 << 20, ..Default::default() };
        let r = s.call(Opcode::Write, entry.nodeid, &[w.as_slice(), b"short"], 256);
        // Refused, or only what the chain holds is written.
        assert!(r.used_len == 0 || r.error() != 0 || r.body::<WriteOut>().size == 5);
        assert!(std::fs::metadata(dir.path().join("w")).unwrap().len() <= 5);
        s.still_works();
    });
}

#[test]
fn looping_and_out_of_range_descriptor_chains_end() {
    let dir = share_dir();
    let mem = guest_memory();
    isolated(|| {
        let mut s = Session::new(&mem, dir.path(), false);
        s.init();
        let getattr = message(Opcode::Getattr, 7, ROOT_ID, &[GetattrIn::default().as_slice()]);
        let inp = s.req.alloc(64);
        mem.write_slice(&getattr, GuestAddress(inp)).unwrap();
        let out = s.req.alloc(256);

        // Two descriptors pointing at each other, forever.
        let a = s.req.next_desc;
        let b = (a + 1) % s.req.size;
        s.req.store(a, desc(inp, 56, VRING_DESC_F_NEXT, b));
        s.req.store(b, desc(out, 256, VRING_DESC_F_WRITE | VRING_DESC_F_NEXT, a));
        s.req.next_desc = (b + 1) % s.req.size;
        s.req.publish(a);
        s.serve();
        assert_eq!(s.req.used().len(), 1, "the loop is cut at the queue size");
        s.still_works();

        // A next index past the table, and a head index past the table.
        let a = s.req.next_desc;
        s.req.store(a, desc(inp, 56, VRING_DESC_F_NEXT, 5000));
        s.req.next_desc = (a + 1) % s.req.size;
        s.req.publish(a);
        s.req.publish(60000);
        s.serve();
        let used = s.req.used();
        assert_eq!(used.len(), 1, "the chain with a bad next index is used, a bad head cannot be");
        s.still_works();

        // An indirect table that is out of memory, and one nested in another.
        let a = s.req.next_desc;
        s.req.store(a, desc(MEM_SIZE + 0x10_0000, 64, VRING_DESC_F_INDIRECT, 0));
        s.req.next_desc = (a + 1) % s.req.size;
        s.req.publish(a);
        let table = s.req.alloc(32);
        mem.write_obj(desc(table, 32, VRING_DESC_F_INDIRECT, 0), GuestAddress(table)).unwrap();
        mem.write_obj(desc(out, 256, VRING_DESC_F_WRITE, 0), GuestAddress(table + 16)).unwrap();
        let a = s.req.next_desc;
        s.req.store(a, desc(table, 32, VRING_DESC_F_INDIRECT, 0));
        s.req.next_desc = (a + 1) % s.req.size;
        s.req.publish(a);
        s.serve();
        assert_eq!(s.req.used().iter().map(|u| u.1).collect::<Vec<_>>(), vec![0, 0]);
        s.still_works();
    });
}

/// Descriptors may all point at the same guest pages, so a chain can
/// claim gigabytes. An IOCTL sizes a host buffer by its `in_size` when the
/// chain holds that much, and a WRITE copies whatever the chain holds:
/// both are cut to one message (MAX_MESSAGE), whatever the chain claims.
#[test]
fn chains_claiming_more_than_guest_memory_are_cut_to_one_message() {
    let dir = share_dir();
    let mem = guest_memory();
    isolated(|| {
        let mut s = Session::new(&mem, dir.path(), false);
        s.init();
        // 40 readable descriptors over the same 2 MiB: 80 MiB "of input".
        let alias = s.req.alloc(2 << 20);
        let ioctl = IoctlIn { in_size: 64 << 20, out_size: 0, ..Default::default() };
        let msg = message(Opcode::Ioctl, 500, ROOT_ID, &[ioctl.as_slice()]);
        let inp = s.req.alloc(msg.len());
        mem.write_slice(&msg, GuestAddress(inp)).unwrap();
        let out = s.req.alloc(256);
        let mut bufs = vec![Buf { addr: inp, len: msg.len() as u32, write: false }];
        bufs.extend(std::iter::repeat_n(Buf { addr: alias, len: 2 << 20, write: false }, 40));
        bufs.push(Buf { addr: out, len: 256, write: true });
        let used = serve_raw(&mut s, &bufs);
        let reply = s.req.read_reply(out, used[0].1);
        // The input the IOCTL claims is not in the (cut) chain: refused
        // before anything is allocated for it.
        assert_eq!(reply.error(), -libc::ENOTTY);
        s.still_works();

        // A WRITE whose header and chain both claim 80 MiB.
        let c = s.create(ROOT_ID, "big", libc::O_RDWR | libc::O_CREAT);
        let entry = EntryOut::from_slice(&c.body[..std::mem::size_of::<EntryOut>()]).copied().unwrap();
        let open = OpenOut::from_slice(&c.body[std::mem::size_of::<EntryOut>()..][..16]).copied().unwrap();
        let w = WriteIn { fh: open.fh, size: 80 << 20, ..Default::default() };
        let msg = message(Opcode::Write, 501, entry.nodeid, &[w.as_slice()]);
        let inp = s.req.alloc(msg.len());
        mem.write_slice(&msg, GuestAddress(inp)).unwrap();
        let mut bufs = vec![Buf { addr: inp, len: msg.len() as u32, write: false }];
        bufs.extend(std::iter::repeat_n(Buf { addr: alias, len: 2 << 20, write: false }, 40));
        bufs.push(Buf { addr: out, len: 256, write: true });
        serve_raw(&mut s, &bufs);
        let len = std::fs::metadata(dir.path().join("big")).unwrap().len();
        assert!(len <= MAX_MESSAGE as u64, "wrote {len} bytes");
        s.still_works();

        // A reply chain claiming 80 MiB: a READ of 64 MiB gets at most a
        // message's worth (here the file is smaller anyway), a READDIR of
        // 4 GiB is refused for want of room.
        let r = ReadIn { fh: open.fh, size: 64 << 20, ..Default::default() };
        let msg = message(Opcode::Read, 502, entry.nodeid, &[r.as_slice()]);
        let inp = s.req.alloc(msg.len());
        mem.write_slice(&msg, GuestAddress(inp)).unwrap();
        let mut bufs = vec![Buf { addr: inp, len: msg.len() as u32, write: false }];
        bufs.extend(std::iter::repeat_n(Buf { addr: alias, len: 2 << 20, write: true }, 40));
        let used = serve_raw(&mut s, &bufs);
        assert!(used[0].1 as usize <= MAX_MESSAGE, "{}", used[0].1);
        s.still_works();
    });
}

/// Sizes in the requests themselves, far beyond anything a kernel sends.
#[test]
fn huge_sizes_in_requests_are_refused_or_cut() {
    let dir = share_dir();
    let mem = guest_memory();
    isolated(|| {
        let mut s = Session::new(&mem, dir.path(), false);
        s.init();
        let e: EntryOut = s.lookup(ROOT_ID, "hello.txt").body();
        let o: OpenOut = s.open(e.nodeid, libc::O_RDONLY).body();
        // READ of 4 GiB into a 4 KiB reply: an error, nothing read.
        let r = ReadIn { fh: o.fh, size: u32::MAX, ..Default::default() };
        let reply = s.call(Opcode::Read, e.nodeid, &[r.as_slice()], 4096);
        assert!(reply.used_len == 0 || reply.error() != 0);
        // GETXATTR and LISTXATTR of 4 GiB: answered like a normal size.
        let get = GetxattrIn { size: u32::MAX, padding: 0 };
        let reply = s.call(Opcode::Getxattr, e.nodeid, &[get.as_slice(), &cstr("user.none")], 4096);
        assert!(reply.error() == -libc::ENODATA || reply.error() == -libc::EOPNOTSUPP, "{}", reply.error());
        let reply = s.call(Opcode::Listxattr, e.nodeid, &[get.as_slice()], 4096);
        assert!(reply.error() == 0 || reply.error() == -libc::EOPNOTSUPP, "{}", reply.error());
        // READDIR of 4 GiB with a 4 KiB reply buffer: refused.
        let d: OpenOut = s.call(Opcode::Opendir, ROOT_ID, &[OpenIn::default().as_slice()], 256).body();
        let r = ReadIn { fh: d.fh, size: u32::MAX, ..Default::default() };
        assert_eq!(s.call(Opcode::Readdir, ROOT_ID, &[r.as_slice()], 4096).error(), -libc::ENOMEM);
        s.still_works();
    });
}

#[test]
fn an_indirect_chain_is_served_like_a_direct_one() {
    let dir = share_dir();
    let mem = guest_memory();
    isolated(|| {
        let mut s = Session::new(&mem, dir.path(), false);
        s.init();
        let lookup = message(Opcode::Lookup, 5, ROOT_ID, &[&cstr("hello.txt")]);
        let inp = s.req.alloc(lookup.len());
        mem.write_slice(&lookup, GuestAddress(inp)).unwrap();
        let out = s.req.alloc(256);
        let table = s.req.alloc(32);
        mem.write_obj(desc(inp, lookup.len() as u32, VRING_DESC_F_NEXT, 1), GuestAddress(table)).unwrap();
        mem.write_obj(desc(out, 256, VRING_DESC_F_WRITE, 0), GuestAddress(table + 16)).unwrap();
        let a = s.req.next_desc;
        s.req.store(a, desc(table, 32, VRING_DESC_F_INDIRECT, 0));
        s.req.next_desc = (a + 1) % s.req.size;
        s.req.publish(a);
        s.serve();
        let used = s.req.used();
        let reply = s.req.read_reply(out, used[0].1);
        let e: EntryOut = reply.body();
        assert_eq!(e.attr.size, 20);
    });
}

#[test]
fn an_avail_index_far_ahead_serves_nothing_and_does_not_spin() {
    let dir = share_dir();
    let mem = guest_memory();
    isolated(|| {
        let mut s = Session::new(&mem, dir.path(), false);
        s.init();
        let avail = s.req.q.avail_addr().0;
        let idx: u16 = mem.read_obj(GuestAddress(avail + 2)).unwrap();
        mem.write_obj(idx.wrapping_add(5000), GuestAddress(avail + 2)).unwrap();
        assert!(!s.active.process_queue(REQUEST_QUEUE), "nothing to serve, nothing to come back for");
        assert!(s.req.used().is_empty());
        mem.write_obj(idx, GuestAddress(avail + 2)).unwrap();
        s.still_works();
    });
}

#[test]
fn one_kick_serves_at_most_a_budget_of_requests() {
    let dir = share_dir();
    let mem = guest_memory();
    isolated(|| {
        let mut s = Session::new(&mem, dir.path(), false);
        s.init();
        for i in 0..(BUDGET + 10) {
            let m = message(Opcode::Getattr, 1000 + i as u64, ROOT_ID, &[GetattrIn::default().as_slice()]);
            s.req.request(&m, 256);
        }
        assert!(s.active.process_queue(REQUEST_QUEUE), "more are waiting");
        assert_eq!(s.req.used().len(), BUDGET);
        assert!(!s.active.process_queue(REQUEST_QUEUE));
        assert_eq!(s.req.used().len(), 10);
        assert_eq!(s.active.interrupt.status() & 1, 1);
    });
}

#[test]
fn forget_on_the_hiprio_queue_needs_no_reply() {
    let dir = share_dir();
    let mem = guest_memory();
    isolated(|| {
        let mut s = Session::new(&mem, dir.path(), false);
        s.init();
        let e: EntryOut = s.lookup(ROOT_ID, "hello.txt").body();
        let forget = message(Opcode::Forget, 0, e.nodeid, &[&1u64.to_le_bytes()]);
        let inp = s.hiprio.alloc(forget.len());
        mem.write_slice(&forget, GuestAddress(inp)).unwrap();
        let head = s.hiprio.chain(&[Buf { addr: inp, len: forget.len() as u32, write: false }]);
        s.hiprio.publish(head);
        assert!(!s.active.process_queue(HIPRIO_QUEUE));
        assert_eq!(s.hiprio.used(), vec![(u32::from(head), 0)]);
        // The inode is gone: its next use fails, a new lookup works.
        let stale = s.call(Opcode::Getattr, e.nodeid, &[GetattrIn::default().as_slice()], 256);
        assert_eq!(stale.error(), -libc::EBADF);
        assert_eq!(s.lookup(ROOT_ID, "hello.txt").error(), 0);
    });
}

/// A tiny deterministic generator (xorshift), so a failure reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[test]
fn thousands_of_random_requests_and_chains_do_not_break_the_device() {
    let dir = share_dir();
    let mem = guest_memory();
    isolated(|| {
        let mut s = Session::new(&mem, dir.path(), false);
        s.init();
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        // Opcodes worth aiming at, plus any value; FALLOCATE is left out
        // so the test cannot fill the disk it runs on.
        let ops: Vec<u32> = (0..=50).filter(|&o| o != Opcode::Fallocate as u32).chain([4096, u32::MAX]).collect();
        for round in 0..3000u64 {
            let opcode = ops[rng.below(ops.len() as u64) as usize];
            let nodeid = [0, ROOT_ID, 2, 3, rng.next()][rng.below(5) as usize];
            let body_len = rng.below(300) as usize;
            let mut body: Vec<u8> = (0..body_len).map(|_| rng.next() as u8).collect();
            if rng.below(2) == 0 && body_len > 8 {
                // Often a plausible name at the end.
                let n = body.len();
                body[n - 4..].copy_from_slice(b"f\0\0\0");
            }
            let len = match rng.below(4) {
                0 => rng.next() as u32,
                _ => (40 + body_len) as u32,
            };
            let header = InHeader { len, opcode, unique: round, nodeid, ..Default::default() };
            let msg = [header.as_slice(), &body].concat();
            let inp = s.req.alloc(msg.len());
            mem.write_slice(&msg, GuestAddress(inp)).unwrap();
            let out = s.req.alloc(4096);
            let mut bufs = vec![Buf { addr: inp, len: msg.len() as u32, write: false }];
            match rng.below(6) {
                0 => bufs.push(Buf { addr: rng.next() % (MEM_SIZE * 2), len: rng.next() as u32, write: true }),
                1 => bufs[0].write = true,
                2 => bufs.push(Buf { addr: out, len: rng.below(64) as u32, write: true }),
                _ => bufs.push(Buf { addr: out, len: 4096, write: true }),
            }
            serve_raw(&mut s, &bufs);
        }
        s.init();
        s.still_works();
        let e: EntryOut = s.lookup(ROOT_ID, "hello.txt").body();
        assert_eq!(e.attr.size, 20);
    });
}

/// Waits (bounded) until the used ring holds `n` new entries.
fn wait_used(d: &mut Driver, n: usize) -> Vec<(u32, u32)> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut got = Vec::new();
    while got.len() < n {
        got.extend(d.used());
        assert!(Instant::now() < deadline, "the device did not answer");
        std::thread::sleep(Duration::from_millis(1));
    }
    got
}

#[test]
fn the_worker_serves_kicks_and_a_reset_stops_it() {
    let dir = share_dir();
    let mem = guest_memory();
    let mut dev = VirtioFs::new("share", dir.path(), false).unwrap();
    for round in 0..2 {
        // A driver (re)initialising the device, as after a guest reset.
        mem.write_slice(&vec![0u8; 0x1_0000], GuestAddress(REQUEST_AT)).unwrap();
        mem.write_slice(&vec![0u8; 0x1_0000], GuestAddress(HIPRIO_AT)).unwrap();
        let hiprio = Driver::new(&mem, HIPRIO_AT, 128);
        let mut req = Driver::new(&mem, REQUEST_AT, 1024);
        let irq = Arc::new(VirtioInterrupt::new(IrqTrigger::new().unwrap()));
        // Requests queued before activation are served when the worker starts.
        let init = InitIn { major: KERNEL_VERSION, minor: KERNEL_MINOR_VERSION, max_readahead: 0, flags: 0 };
        let (_, init_out) = req.request(&message(Opcode::Init, 1, 0, &[init.as_slice()]), 256);
        dev.activate(mem.clone(), irq.clone(), vec![hiprio.queue(), req.queue()]).unwrap();
        assert!(dev.is_active());
        let used = wait_used(&mut req, 1);
        assert_eq!(req.read_reply(init_out, used[0].1).error(), 0, "round {round}");

        let (_, out) = req.request(&message(Opcode::Lookup, 2, ROOT_ID, &[&cstr("hello.txt")]), 256);
        dev.queue_events()[REQUEST_QUEUE].write(1).unwrap();
        let used = wait_used(&mut req, 1);
        let e: EntryOut = req.read_reply(out, used[0].1).body();
        assert_eq!(e.attr.size, 20);
        assert_eq!(irq.status() & 1, 1, "used-ring interrupt raised");

        dev.reset();
        assert!(!dev.is_active());
        // Kicks after the reset reach no one.
        req.request(&message(Opcode::Lookup, 3, ROOT_ID, &[&cstr("hello.txt")]), 256);
        dev.queue_events()[REQUEST_QUEUE].write(1).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        assert!(req.used().is_empty());
    }
    let mut bad = Vec::new();
    assert!(matches!(
        dev.activate(mem.clone(), Arc::new(VirtioInterrupt::new(IrqTrigger::new().unwrap())), std::mem::take(&mut bad)),
        Err(ActivateError::QueueCount { want: 2, got: 0 })
    ));
}

#[test]
fn the_workers_umask_does_not_leak_into_the_vmm() {
    let dir = share_dir();
    let mem = guest_memory();
    let umask = || {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        status.lines().find(|l| l.starts_with("Umask:")).unwrap().to_string()
    };
    let before = umask();
    let (dev, _, _) = serving(&mem, dir.path());
    drop(dev);
    assert_eq!(umask(), before);
}

/// FUSE_INIT, numbered `unique`.
fn init_message(unique: u64) -> Vec<u8> {
    let init = InitIn { major: KERNEL_VERSION, minor: KERNEL_MINOR_VERSION, max_readahead: 0, flags: 0 };
    message(Opcode::Init, unique, 0, &[init.as_slice()])
}

/// A device on `root` whose worker has served a first FUSE_INIT, and the
/// guest's side of its hiprio and request queues.
fn serving<'m>(mem: &'m GuestMemoryMmap, root: &Path) -> (VirtioFs, Driver<'m>, Driver<'m>) {
    let mut dev = VirtioFs::new("share", root, false).unwrap();
    let hiprio = Driver::new(mem, HIPRIO_AT, 128);
    let mut req = Driver::new(mem, REQUEST_AT, 1024);
    req.request(&init_message(1), 256);
    dev.set_acked_features(dev.avail_features());
    let irq = Arc::new(VirtioInterrupt::new(IrqTrigger::new().unwrap()));
    dev.activate(mem.clone(), irq, vec![hiprio.queue(), req.queue()]).unwrap();
    wait_used(&mut req, 1);
    (dev, hiprio, req)
}

/// A save stops the worker and takes its queues back; a fresh device
/// restored from it serves from the saved ring positions, with a fresh
/// filesystem (a template is taken before the guest mounts the share).
#[test]
fn ring_positions_survive_save_and_restore() {
    let dir = share_dir();
    let mem = guest_memory();
    let (mut dev, _hiprio, mut req) = serving(&mem, dir.path());

    let snap = dev.save().unwrap();
    assert!(!dev.is_active(), "a saved device stays stopped");
    assert!(snap.activated);
    assert_eq!(snap.acked_features, dev.avail_features());
    let positions: Vec<_> = snap.queues.iter().map(|q| (q.next_avail, q.next_used)).collect();
    assert_eq!(positions, [(0, 0), (1, 1)]);
    // Nothing is served after the save.
    let (head, out) = req.request(&init_message(2), 256);
    dev.queue_events()[REQUEST_QUEUE].write(1).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    assert!(req.used().is_empty());
    drop(dev);

    let snap: DeviceSnapshot = serde_json::from_str(&serde_json::to_string(&snap).unwrap()).unwrap();
    let mut back = VirtioFs::new("share", dir.path(), false).unwrap();
    let irq = Arc::new(VirtioInterrupt::new(IrqTrigger::new().unwrap()));
    back.restore(mem.clone(), irq.clone(), &snap).unwrap();
    assert!(back.is_active());
    // The request queued meanwhile is served at once, from position 1.
    let used = wait_used(&mut req, 1);
    assert_eq!(used[0].0, u32::from(head));
    assert_eq!(req.q.used().idx().load(), 2);
    let reply = req.read_reply(out, used[0].1);
    assert_eq!(reply.error(), 0, "a fresh filesystem answers the new session's FUSE_INIT");
    assert_eq!(irq.status() & 1, 1);

    let mut wrong = snap.clone();
    wrong.queues[REQUEST_QUEUE].max_size = 256;
    let mut other = VirtioFs::new("share", dir.path(), false).unwrap();
    let irq = Arc::new(VirtioInterrupt::new(IrqTrigger::new().unwrap()));
    assert!(matches!(
        other.restore(mem.clone(), irq, &wrong),
        Err(PersistError::QueueSize { index: 1, saved: 256, device: 1024 })
    ));
    assert!(!other.is_active());
}
