//! The measured workloads that run to completion: CPU, syscalls, process
//! spawning, small files, sequential I/O and memory.
//!
//! Each one times only its own loop (no process start, no argument
//! parsing), so the figures isolate what the isolation changes: syscall
//! entry, page faults, the filesystem path, fork+exec. Work that would only
//! add noise (building paths, filling buffers) happens before the clock
//! starts.
//!
//! Each returns its figures (names and units fixed, see `output`) for
//! main to print only once the whole workload succeeded.

use std::fs::{self, File};
use std::hint::black_box;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::output::{self, failed, Failure, Results, Value};

/// Words in the CPU workload's buffer: 4 KiB, so it stays in L1 and the
/// figure is core speed, not memory bandwidth.
const CPU_WORDS: usize = 512;
/// Passes over the buffer in one unit of `cpu N`: about 100 ms on a
/// current x86-64 core (one pass is 512 dependent multiply-xorshift steps,
/// ~10 cycles each; 95 ms measured on an AMD EPYC VM).
const CPU_PASSES_PER_UNIT: u64 = 60_000;

const PASSWD: &str = "/etc/passwd";
const SMALL_FILE: usize = 4096;
const MIB: usize = 1 << 20;
const PAGE: usize = 4096;
const MEMORY_ROUNDS: u32 = 3;

/// splitmix64's finaliser: cheap, bijective, and every output bit depends
/// on every input bit, so no pass can be skipped or reordered.
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The CPU workload proper: `passes` passes over a buffer, each step
/// depending on the one before (no vectorising, no parallelism), folding
/// into a checksum that is printed so the work cannot be optimised away.
fn cpu_checksum(passes: u64) -> u64 {
    let mut buf = [0u64; CPU_WORDS];
    for (i, w) in buf.iter_mut().enumerate() {
        *w = mix(i as u64);
    }
    let mut acc = 0x6a09_e667_f3bc_c908;
    for _ in 0..passes {
        for w in buf.iter_mut() {
            acc = mix(acc ^ *w);
            *w = acc;
        }
    }
    acc
}

pub fn cpu(n: u64) -> Results {
    let start = Instant::now();
    // black_box: the pass count must be opaque so nothing is computed at
    // compile time.
    let sum = cpu_checksum(black_box(n * CPU_PASSES_PER_UNIT));
    let took = start.elapsed();
    Ok(vec![("cpu_ms", output::ms(took)), ("cpu_checksum", Value::Count(sum))])
}

pub fn syscalls(n: u64) -> Results {
    let start = Instant::now();
    for _ in 0..n {
        // The raw syscall, not libc::getpid: glibc versions have cached
        // the pid, which would measure a function call.
        // SAFETY: getpid takes no arguments and touches no memory.
        let pid = unsafe { libc::syscall(libc::SYS_getpid) };
        black_box(pid);
    }
    let getpid = start.elapsed();

    let start = Instant::now();
    for _ in 0..n {
        // Dropping the File closes it.
        File::open(PASSWD).map_err(failed(format!("open {PASSWD}")))?;
    }
    let open_close = start.elapsed();

    let start = Instant::now();
    for _ in 0..n {
        black_box(fs::metadata(PASSWD).map_err(failed(format!("stat {PASSWD}")))?);
    }
    let stat = start.elapsed();

    Ok(vec![
        ("getpid_ns", output::mean(getpid, n, 1e9)),
        ("open_close_ns", output::mean(open_close, n, 1e9)),
        ("stat_ns", output::mean(stat, n, 1e9)),
    ])
}

pub fn spawn(n: u64) -> Results {
    let start = Instant::now();
    for _ in 0..n {
        let status = Command::new("/bin/true").status().map_err(failed("run /bin/true"))?;
        if !status.success() {
            return Err(Failure::new(format!("/bin/true failed: {status}")));
        }
    }
    Ok(vec![("spawn_us", output::mean(start.elapsed(), n, 1e6))])
}

/// Removes the files it holds when dropped, so a workload that fails
/// half-way leaves nothing behind in the container's filesystem.
struct Leftovers<'a> {
    paths: &'a [PathBuf],
    armed: bool,
}

impl Drop for Leftovers<'_> {
    fn drop(&mut self) {
        if self.armed {
            for p in self.paths {
                let _ = fs::remove_file(p);
            }
        }
    }
}

fn make_dir(dir: &Path) -> Result<(), Failure> {
    fs::create_dir_all(dir).map_err(failed(format!("create directory {}", dir.display())))
}

pub fn files(n: u64, dir: &Path) -> Results {
    make_dir(dir)?;
    let paths: Vec<PathBuf> = (0..n).map(|i| dir.join(format!("small-{i}"))).collect();
    let mut leftovers = Leftovers { paths: &paths, armed: true };
    let data = [0xa5u8; SMALL_FILE];

    let start = Instant::now();
    for p in &paths {
        let mut f = File::create(p).map_err(failed(format!("create {}", p.display())))?;
        f.write_all(&data).map_err(failed(format!("write {}", p.display())))?;
    }
    let create = start.elapsed();

    let start = Instant::now();
    for p in &paths {
        let m = fs::metadata(p).map_err(failed(format!("stat {}", p.display())))?;
        if m.len() != SMALL_FILE as u64 {
            return Err(Failure::new(format!("{} has {} bytes, wrote {SMALL_FILE}", p.display(), m.len())));
        }
    }
    let stat = start.elapsed();

    let start = Instant::now();
    for p in &paths {
        fs::remove_file(p).map_err(failed(format!("remove {}", p.display())))?;
    }
    let remove = start.elapsed();
    leftovers.armed = false;

    Ok(vec![
        ("small_create_ms", output::ms(create)),
        ("small_stat_ms", output::ms(stat)),
        ("small_remove_ms", output::ms(remove)),
    ])
}

pub fn seq(mib: u64, dir: &Path) -> Results {
    make_dir(dir)?;
    let path = dir.join("seq.dat");
    let shown = path.display();
    let paths = [path.clone()];
    let mut leftovers = Leftovers { paths: &paths, armed: true };
    // Not zeros: a disk image or filesystem could store zeros sparsely.
    let mut buf: Vec<u8> = (0..MIB as u64).map(|i| mix(i) as u8).collect();

    let start = Instant::now();
    let mut f = File::create(&path).map_err(failed(format!("create {shown}")))?;
    for _ in 0..mib {
        f.write_all(&buf).map_err(failed(format!("write {shown}")))?;
    }
    f.sync_all().map_err(failed(format!("fsync {shown}")))?;
    let write = start.elapsed();

    // The pages are clean after the fsync, so DONTNEED drops them and the
    // read below goes to the device (or, in a VM, at least past the
    // guest's page cache).
    // SAFETY: posix_fadvise only reads its integer arguments; the fd is open.
    let rc = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    if rc != 0 {
        return Err(failed(format!("drop {shown} from the page cache"))(std::io::Error::from_raw_os_error(rc)));
    }
    drop(f);

    let start = Instant::now();
    let mut f = File::open(&path).map_err(failed(format!("open {shown}")))?;
    let mut total = 0u64;
    loop {
        match f.read(&mut buf) {
            Ok(0) => break,
            Ok(got) => total += got as u64,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(failed(format!("read {shown}"))(e)),
        }
    }
    let read = start.elapsed();
    if total != mib * MIB as u64 {
        return Err(Failure::new(format!("read {total} bytes back from {shown}, wrote {}", mib * MIB as u64)));
    }
    fs::remove_file(&path).map_err(failed(format!("remove {shown}")))?;
    leftovers.armed = false;

    Ok(vec![("seq_write_mibps", output::mibps(mib, write)), ("seq_read_mibps", output::mibps(mib, read))])
}

/// An anonymous private mapping, unmapped on drop. mmap directly rather
/// than a Vec: malloc would serve later rounds from memory it kept (glibc
/// raises its mmap threshold after a free), already faulted in, and the
/// workload measures page faults.
struct Anon {
    ptr: *mut u8,
    len: usize,
}

impl Anon {
    fn new(len: usize) -> Result<Anon, Failure> {
        // SAFETY: a new anonymous mapping at an address the kernel picks
        // cannot alias any memory this program uses.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(failed(format!("map {} MiB", len / MIB))(std::io::Error::last_os_error()));
        }
        Ok(Anon { ptr: p.cast(), len })
    }

    /// Writes one byte per page: one page fault each.
    fn touch(&mut self) {
        for off in (0..self.len).step_by(PAGE) {
            // SAFETY: off < len, so the byte lies inside this writable
            // mapping, which nothing else references. Volatile, so the
            // writes are not dropped as dead before the munmap.
            unsafe { self.ptr.wrapping_add(off).write_volatile(1) };
        }
    }
}

impl Drop for Anon {
    fn drop(&mut self) {
        // SAFETY: ptr and len are exactly what mmap returned and took, and
        // no reference into the mapping outlives self.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

pub fn memory(mib: u64) -> Results {
    let len = mib as usize * MIB;
    let mut total = Duration::ZERO;
    for _ in 0..MEMORY_ROUNDS {
        let start = Instant::now();
        let mut m = Anon::new(len)?;
        m.touch();
        drop(m);
        total += start.elapsed();
    }
    Ok(vec![("memory_touch_ms", output::ms(total / MEMORY_ROUNDS))])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_checksum_is_deterministic_and_depends_on_the_work() {
        assert_eq!(cpu_checksum(3), cpu_checksum(3));
        assert_ne!(cpu_checksum(3), cpu_checksum(4));
        assert_ne!(cpu_checksum(0), cpu_checksum(1));
    }

    #[test]
    fn the_checksum_is_pinned() {
        // Results of different amphi versions are only comparable if the
        // work is the same: a change to the CPU workload must change this.
        // Cross-checked against an independent Python transcription of mix.
        assert_eq!(cpu_checksum(1), 17_611_676_382_666_673_641);
        assert_eq!(cpu_checksum(10), 14_582_461_613_349_502_719);
    }

    #[test]
    fn mix_is_a_bijection_on_a_sample() {
        let mut seen: Vec<u64> = (0..10_000).map(mix).collect();
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), 10_000);
    }

    #[test]
    fn files_and_seq_leave_nothing_behind() {
        let dir = std::env::temp_dir().join(format!("amphi-workload-test-{}", std::process::id()));
        let names = |r: Results| r.unwrap().into_iter().map(|(name, _)| name).collect::<Vec<_>>();
        assert_eq!(names(files(20, &dir)), ["small_create_ms", "small_stat_ms", "small_remove_ms"]);
        assert_eq!(names(seq(2, &dir)), ["seq_write_mibps", "seq_read_mibps"]);
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 0);
        fs::remove_dir(&dir).unwrap();
    }

    #[test]
    fn memory_maps_touches_and_unmaps() {
        assert_eq!(memory(1).unwrap()[0].0, "memory_touch_ms");
        let mut m = Anon::new(2 * MIB).unwrap();
        m.touch();
        // SAFETY: offset 0 and the last page are inside the mapping.
        assert_eq!(unsafe { m.ptr.read_volatile() }, 1);
    }
}
