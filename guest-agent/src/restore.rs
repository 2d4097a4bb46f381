//! A guest restored from a VM template: the boot that made the template
//! had [`TEMPLATE_CMDLINE_WORD`] on its command line, so every guest
//! restored from it starts with that word too, the template's RNG state
//! and its wall clock, stopped at the snapshot. Such a guest runs nothing
//! until the host's `restored` request gave it fresh randomness and the
//! time: otherwise every guest restored from one template would hand its
//! processes the same AT_RANDOM, stack canaries, ASLR offsets and keys.
//!
//! `restored` may come again (the host restores a guest once, but a
//! retry after a lost answer must not wedge it): each one reseeds, sets
//! the clock and records its generation again. On a cold boot it does the
//! same, with nothing to open.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use amphi::agent::{AgentError, ErrorCode, Request, RestoredReply, RestoredRequest, TEMPLATE_CMDLINE_WORD};
use nix::errno::Errno;
use nix::sys::ioctl::ioctl_num_type;
use nix::time::{clock_gettime, clock_settime, ClockId};

/// `RNDADDENTROPY`, `_IOW('R', 0x03, int[2])` in linux/random.h: the size
/// is the header's (`entropy_count`, `buf_size`), the bytes follow it.
const RNDADDENTROPY: ioctl_num_type = nix::request_code_write!(b'R', 0x03, 2 * std::mem::size_of::<libc::c_int>());
/// `RNDRESEEDCRNG`, `_IO('R', 0x07)`.
const RNDRESEEDCRNG: ioctl_num_type = nix::request_code_none!(b'R', 0x07);

const NS_PER_S: u64 = 1_000_000_000;

/// Whether the kernel command line makes this boot a template's.
pub fn is_template_boot(cmdline: &str) -> bool {
    cmdline.split_whitespace().any(|w| w == TEMPLATE_CMDLINE_WORD)
}

/// Whether a request may be served while a template boot waits for
/// `restored`: only those that start nothing in the guest. Exhaustive on
/// purpose, so that a new method has to be placed.
pub fn allowed_before_restore(request: &Request) -> bool {
    match request {
        Request::Handshake(_) | Request::Health | Request::Shutdown(_) | Request::AttachStream(_) => true,
        Request::Restored(_) => true,
        Request::CreateContainer(_)
        | Request::ResumeCreate(_)
        | Request::StartContainer(_)
        | Request::Signal(_)
        | Request::Wait(_)
        | Request::Exec(_)
        | Request::Resize(_)
        | Request::Pause(_)
        | Request::Resume(_)
        | Request::Ps(_)
        | Request::Stats(_)
        | Request::Update(_)
        | Request::ConfigureNetwork(_)
        | Request::DeleteContainer(_) => false,
    }
}

/// The answer to a request a template boot does not serve yet.
pub fn not_restored(request: &Request) -> AgentError {
    AgentError::new(
        ErrorCode::NotRestored,
        format!(
            "this guest booted as a VM template ({TEMPLATE_CMDLINE_WORD}) and runs nothing until the host sends \
             restored: {} refused",
            request.method()
        ),
    )
}

/// The wall-clock time to set: the host's at sending, plus what passed in
/// the guest since the request arrived (on the monotonic clock, which the
/// restore kept running). Saturates rather than wraps.
pub fn target_realtime_ns(host_realtime_ns: u64, received_mono_ns: u64, now_mono_ns: u64) -> u64 {
    host_realtime_ns.saturating_add(now_mono_ns.saturating_sub(received_mono_ns))
}

/// How far the clock moved, from `before` to `after`, clamped to an i64.
pub fn clock_step_ns(before: u64, after: u64) -> i64 {
    let step = i128::from(after) - i128::from(before);
    i64::try_from(step).unwrap_or(if step < 0 { i64::MIN } else { i64::MAX })
}

/// What a restore changes in the kernel; a fake in tests, as it needs
/// CAP_SYS_ADMIN and would move the test machine's clock.
pub trait Kernel: Send {
    /// Mixes `seed` into the input pool, crediting 8 bits a byte.
    fn add_entropy(&mut self, seed: &[u8]) -> nix::Result<()>;
    /// Forces the CRNG to reseed from the pool now.
    fn reseed_crng(&mut self) -> nix::Result<()>;
    fn realtime_ns(&self) -> nix::Result<u64>;
    fn set_realtime_ns(&mut self, ns: u64) -> nix::Result<()>;
    fn monotonic_ns(&self) -> u64;
}

fn timespec_ns(t: nix::sys::time::TimeSpec) -> u64 {
    let s = u64::try_from(t.tv_sec()).unwrap_or(0);
    let ns = u64::try_from(t.tv_nsec()).unwrap_or(0);
    s.saturating_mul(NS_PER_S).saturating_add(ns)
}

/// The running kernel, through /dev/urandom and clock_settime(2).
pub struct Linux;

impl Linux {
    fn urandom() -> nix::Result<File> {
        File::open("/dev/urandom").map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))
    }
}

/// `struct rand_pool_info` with its bytes after the header, as 32-bit
/// words (the struct's alignment); the tail of the last word is zero and
/// not counted in `buf_size`.
fn rand_pool_info(seed: &[u8]) -> Vec<u32> {
    let len = u32::try_from(seed.len()).unwrap_or(u32::MAX);
    let mut words = vec![len.saturating_mul(8), len];
    words.extend(seed.chunks(4).map(|c| {
        let mut w = [0u8; 4];
        w[..c.len()].copy_from_slice(c);
        u32::from_ne_bytes(w)
    }));
    words
}

impl Kernel for Linux {
    fn add_entropy(&mut self, seed: &[u8]) -> nix::Result<()> {
        let f = Self::urandom()?;
        let info = rand_pool_info(seed);
        // SAFETY: `info` is a rand_pool_info whose buf_size (the seed's
        // length) does not exceed the words after its header; the kernel
        // only reads it during the call.
        let r = unsafe { libc::ioctl(f.as_raw_fd(), RNDADDENTROPY, info.as_ptr()) };
        Errno::result(r).map(drop)
    }

    fn reseed_crng(&mut self) -> nix::Result<()> {
        let f = Self::urandom()?;
        // SAFETY: RNDRESEEDCRNG takes no argument.
        let r = unsafe { libc::ioctl(f.as_raw_fd(), RNDRESEEDCRNG) };
        Errno::result(r).map(drop)
    }

    fn realtime_ns(&self) -> nix::Result<u64> {
        clock_gettime(ClockId::CLOCK_REALTIME).map(timespec_ns)
    }

    fn set_realtime_ns(&mut self, ns: u64) -> nix::Result<()> {
        let t = nix::sys::time::TimeSpec::from(std::time::Duration::from_nanos(ns));
        clock_settime(ClockId::CLOCK_REALTIME, t)
    }

    fn monotonic_ns(&self) -> u64 {
        // CLOCK_MONOTONIC cannot fail on Linux; 0 would only make no time
        // pass since the receipt.
        clock_gettime(ClockId::CLOCK_MONOTONIC).map(timespec_ns).unwrap_or(0)
    }
}

/// Where this guest stands with respect to templates, shared by every
/// connection.
pub struct Restore {
    /// A template boot before its first successful `restored`. Only ever
    /// goes from true to false, so a request that saw it false may go on.
    awaiting: AtomicBool,
    /// The last `restored`'s generation; the lock also keeps two
    /// `restored` from interleaving their steps.
    generation: Mutex<Option<u64>>,
    kernel: Mutex<Box<dyn Kernel>>,
}

impl Restore {
    pub fn new(template: bool, kernel: Box<dyn Kernel>) -> Restore {
        Restore { awaiting: AtomicBool::new(template), generation: Mutex::new(None), kernel: Mutex::new(kernel) }
    }

    pub fn awaiting(&self) -> bool {
        self.awaiting.load(Ordering::Acquire)
    }

    /// The clock [`Restore::restored`] measures the time since receipt on.
    pub fn monotonic_ns(&self) -> u64 {
        self.kernel.lock().unwrap_or_else(|p| p.into_inner()).monotonic_ns()
    }

    pub fn generation(&self) -> Option<u64> {
        *self.generation.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether `request` may be served now: not while a template boot
    /// waits, unless it starts nothing ([`not_restored`] is the answer).
    pub fn admits(&self, request: &Request) -> bool {
        !self.awaiting() || allowed_before_restore(request)
    }

    /// Carries out `restored`, received when the monotonic clock read
    /// `received_mono_ns`: RNG first (nothing may draw from the cloned
    /// state once the gate opens), then the clock. On any failure the
    /// gate stays as it was.
    pub fn restored(&self, req: &RestoredRequest, received_mono_ns: u64) -> Result<RestoredReply, AgentError> {
        req.check_seed()?;
        let mut generation = self.generation.lock().unwrap_or_else(|p| p.into_inner());
        let mut kernel = self.kernel.lock().unwrap_or_else(|p| p.into_inner());
        let failed = |what: &str, e: Errno| AgentError::new(ErrorCode::GuestSetupFailed, format!("{what}: {e}"));
        kernel.add_entropy(&req.seed).map_err(|e| failed("RNDADDENTROPY on /dev/urandom", e))?;
        match kernel.reseed_crng() {
            // The CRNG is not ready yet: it seeds itself from the pool
            // (which has the seed now) when it becomes ready.
            Ok(()) | Err(Errno::ENODATA) => {}
            Err(e) => return Err(failed("RNDRESEEDCRNG on /dev/urandom", e)),
        }
        let before = kernel.realtime_ns().map_err(|e| failed("read CLOCK_REALTIME", e))?;
        let target = target_realtime_ns(req.realtime_ns, received_mono_ns, kernel.monotonic_ns());
        kernel.set_realtime_ns(target).map_err(|e| failed("set CLOCK_REALTIME", e))?;
        *generation = Some(req.generation);
        self.awaiting.store(false, Ordering::Release);
        Ok(RestoredReply { guest_realtime_before_ns: before, clock_step_ns: clock_step_ns(before, target) })
    }
}

#[cfg(test)]
pub mod tests {
    use super::*;
    use std::sync::Arc;

    /// A kernel that records what was asked of it, with a settable
    /// monotonic clock and failures on demand.
    #[derive(Default)]
    pub struct FakeKernel {
        pub log: Arc<Mutex<Vec<String>>>,
        pub realtime_ns: u64,
        pub monotonic_ns: u64,
        pub fail_entropy: Option<Errno>,
        pub fail_reseed: Option<Errno>,
    }

    impl FakeKernel {
        fn note(&self, s: String) {
            self.log.lock().unwrap().push(s);
        }
    }

    impl Kernel for FakeKernel {
        fn add_entropy(&mut self, seed: &[u8]) -> nix::Result<()> {
            self.note(format!("entropy {}", seed.len()));
            self.fail_entropy.map_or(Ok(()), Err)
        }
        fn reseed_crng(&mut self) -> nix::Result<()> {
            self.note("reseed".into());
            self.fail_reseed.map_or(Ok(()), Err)
        }
        fn realtime_ns(&self) -> nix::Result<u64> {
            Ok(self.realtime_ns)
        }
        fn set_realtime_ns(&mut self, ns: u64) -> nix::Result<()> {
            self.note(format!("clock {ns}"));
            self.realtime_ns = ns;
            Ok(())
        }
        fn monotonic_ns(&self) -> u64 {
            self.monotonic_ns
        }
    }

    fn request(seed_len: usize, generation: u64) -> RestoredRequest {
        RestoredRequest { realtime_ns: 2_000 * NS_PER_S, seed: vec![0x5a; seed_len], generation }
    }

    #[test]
    fn the_template_word_is_a_whole_word_of_the_command_line() {
        assert!(is_template_boot("console=ttyS0 quiet amphi.template panic=-1\n"));
        assert!(is_template_boot("amphi.template"));
        assert!(!is_template_boot("console=ttyS0 quiet panic=-1\n"));
        assert!(!is_template_boot("amphi.template=0 xamphi.template amphi.templates"));
        assert!(!is_template_boot(""));
    }

    #[test]
    fn the_ioctl_numbers_are_linux_random_h() {
        assert_eq!(RNDADDENTROPY, 0x4008_5203);
        assert_eq!(RNDRESEEDCRNG, 0x5207);
    }

    #[test]
    fn rand_pool_info_counts_8_bits_a_byte_and_carries_the_bytes() {
        let seed: Vec<u8> = (1..=34).collect();
        let info = rand_pool_info(&seed);
        assert_eq!((info[0], info[1]), (34 * 8, 34));
        assert_eq!(info.len(), 2 + 9);
        let bytes: Vec<u8> = info[2..].iter().flat_map(|w| w.to_ne_bytes()).collect();
        assert_eq!(&bytes[..34], &seed[..]);
        assert_eq!(&bytes[34..], &[0, 0]);
    }

    #[test]
    fn the_clock_is_the_hosts_plus_the_time_since_receipt() {
        assert_eq!(target_realtime_ns(1_000, 50, 80), 1_030);
        assert_eq!(target_realtime_ns(1_000, 50, 50), 1_000);
        // A monotonic clock read before the receipt (cannot happen) adds nothing.
        assert_eq!(target_realtime_ns(1_000, 80, 50), 1_000);
        assert_eq!(target_realtime_ns(u64::MAX - 1, 0, 10), u64::MAX);
        assert_eq!(clock_step_ns(1_000, 1_030), 30);
        assert_eq!(clock_step_ns(1_030, 1_000), -30);
        assert_eq!(clock_step_ns(0, u64::MAX), i64::MAX);
        assert_eq!(clock_step_ns(u64::MAX, 0), i64::MIN);
    }

    #[test]
    fn a_template_boot_refuses_what_starts_processes_until_restored() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let kernel =
            FakeKernel { log: log.clone(), realtime_ns: 1_000 * NS_PER_S, monotonic_ns: 7, ..FakeKernel::default() };
        let r = Restore::new(true, Box::new(kernel));
        let ps = Request::Ps(amphi::agent::container::PsRequest { id: "c".into(), args: vec![] });
        assert!(!r.admits(&ps));
        assert!(r.admits(&Request::Health));
        assert_eq!(not_restored(&ps).code, ErrorCode::NotRestored);
        assert!(not_restored(&ps).message.contains("ps refused"));
        assert!(r.awaiting() && r.generation().is_none());

        let reply = r.restored(&request(64, 3), 4).unwrap();
        assert_eq!(reply.guest_realtime_before_ns, 1_000 * NS_PER_S);
        // 2000 s from the host, 3 ns since receipt, from 1000 s.
        assert_eq!(reply.clock_step_ns, (1_000 * NS_PER_S + 3) as i64);
        assert_eq!(*log.lock().unwrap(), ["entropy 64", "reseed", &format!("clock {}", 2_000 * NS_PER_S + 3)]);
        assert!(r.admits(&ps));
        assert_eq!((r.awaiting(), r.generation()), (false, Some(3)));

        // Again: reseeds again and takes the new generation.
        r.restored(&request(32, 4), 7).unwrap();
        assert_eq!(log.lock().unwrap().len(), 6);
        assert_eq!(r.generation(), Some(4));
    }

    #[test]
    fn a_cold_boot_admits_everything() {
        let r = Restore::new(false, Box::new(FakeKernel::default()));
        let create = Request::ConfigureNetwork(amphi::agent::NetworkRequest {
            id: "c".into(),
            interfaces: vec![],
            routes: vec![],
        });
        assert!(r.admits(&create));
        assert!(!r.awaiting());
    }

    #[test]
    fn a_bad_seed_or_a_failed_ioctl_leaves_the_gate_shut() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let r = Restore::new(true, Box::new(FakeKernel { log: log.clone(), ..FakeKernel::default() }));
        for n in [0, 31, 257] {
            assert_eq!(r.restored(&request(n, 1), 0).unwrap_err().code, ErrorCode::InvalidConfig);
        }
        assert!(log.lock().unwrap().is_empty(), "a bad seed touches nothing");

        let eperm =
            Restore::new(true, Box::new(FakeKernel { fail_entropy: Some(Errno::EPERM), ..FakeKernel::default() }));
        let e = eperm.restored(&request(64, 1), 0).unwrap_err();
        assert_eq!(e.code, ErrorCode::GuestSetupFailed);
        assert!(e.message.contains("RNDADDENTROPY"), "{e}");
        assert!(eperm.awaiting() && eperm.generation().is_none());

        let einval =
            Restore::new(true, Box::new(FakeKernel { fail_reseed: Some(Errno::EINVAL), ..FakeKernel::default() }));
        assert!(einval.restored(&request(64, 1), 0).is_err());
        assert!(einval.awaiting());
    }

    #[test]
    fn a_crng_not_ready_yet_is_fine() {
        let kernel = FakeKernel { fail_reseed: Some(Errno::ENODATA), ..FakeKernel::default() };
        let r = Restore::new(true, Box::new(kernel));
        r.restored(&request(64, 1), 0).unwrap();
        assert!(!r.awaiting());
    }
}
