//! The VMM runs in a child process of its own (`amphi vm run-vmm`, not for
//! direct use): its peak RSS is then the VMM's alone, a timeout can end it
//! with one SIGKILL that leaves nothing running, and part 2 gets the
//! per-container VMM process it needs. The child reports its milestones
//! to the parent as JSON lines on an inherited pipe.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::exit;
use crate::vm::vmm::{self, DiskConfig, ExitReason, FsShare, NetConfig, VmmConfig, VmmEvent};

/// One line on the event pipe.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum ChildEvent {
    KernelEntry,
    /// Restored from a template; the vCPUs are about to run.
    Restored,
    AgentListening,
    GuestPanic {
        line: String,
    },
    /// The VMM could not start or failed; `message` is the error chain.
    Error {
        message: String,
    },
    /// The VM ended.
    Exit {
        reason: String,
        panic: Option<String>,
        peak_rss_kib: u64,
        /// Guest memory resident when the VM ended (part of the peak RSS).
        #[serde(default)]
        guest_rss_kib: u64,
    },
}

/// Stable names of exit reasons on the event pipe.
pub fn reason_name(r: &ExitReason) -> String {
    match r {
        ExitReason::PowerOff => "power_off".into(),
        ExitReason::Reset => "reset".into(),
        ExitReason::TripleFault => "triple_fault".into(),
        ExitReason::Crash => "crash".into(),
        ExitReason::Halted => "halted".into(),
        ExitReason::EmulationFailure => "emulation_failure".into(),
        ExitReason::Stopped => "stopped".into(),
        ExitReason::Snapshotted => "snapshotted".into(),
        ExitReason::Error(e) => format!("error: {e}"),
    }
}

/// The VMM process's exit status for an outcome.
pub fn exit_code(reason: &ExitReason, panicked: bool) -> u8 {
    match reason {
        _ if panicked => exit::VM_GUEST_PANIC,
        ExitReason::PowerOff | ExitReason::Stopped | ExitReason::Snapshotted => 0,
        ExitReason::Reset | ExitReason::TripleFault => exit::VM_GUEST_REBOOT,
        ExitReason::Crash => exit::VM_GUEST_PANIC,
        ExitReason::Halted => exit::VM_GUEST_FAILED,
        ExitReason::EmulationFailure => exit::VM_HOST_UNSUPPORTED,
        ExitReason::Error(_) => exit::GENERAL,
    }
}

/// Peak resident set of this process, in KiB.
pub fn peak_rss_kib() -> u64 {
    nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF).map(|u| u.max_rss() as u64).unwrap_or(0)
}

/// Open files a VMM with shares may hold: the passthrough keeps one fd per
/// inode the guest has looked up and per file it has open.
pub const SHARE_OPEN_FILES: u64 = 65536;

/// Sets this process's open-file limit to [`SHARE_OPEN_FILES`] (or the hard
/// limit, if lower and not raisable). The limit is both the room a
/// container needs and the bound on what a guest can make the VMM hold:
/// past it, opens and lookups fail with EMFILE in the guest and the VMM's
/// memory stays put (each fd is a few hundred bytes, kernel side charged
/// to the VMM's cgroup).
pub fn limit_open_files() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else { return };
    if hard < SHARE_OPEN_FILES && setrlimit(Resource::RLIMIT_NOFILE, SHARE_OPEN_FILES, SHARE_OPEN_FILES).is_ok() {
        return;
    }
    let _ = setrlimit(Resource::RLIMIT_NOFILE, SHARE_OPEN_FILES.min(hard), hard);
}

/// Body of `amphi vm run-vmm`: runs the VM, reports on `event_fd`, returns
/// the process exit status.
pub fn run_child(args: ChildArgs) -> u8 {
    let event_fd = args.event_fd;
    // If the parent dies, so does the VM: nothing is left behind.
    let _ = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL);
    let pipe: Box<dyn Write + Send> =
        match std::fs::OpenOptions::new().write(true).open(format!("/proc/self/fd/{event_fd}")) {
            Ok(f) => Box::new(f),
            Err(_) => Box::new(std::io::sink()),
        };
    let pipe = Arc::new(Mutex::new(pipe));
    let send = {
        let pipe = pipe.clone();
        move |e: &ChildEvent| {
            if let Ok(mut line) = serde_json::to_vec(e) {
                line.push(b'\n');
                let mut p = pipe.lock().unwrap_or_else(|e| e.into_inner());
                let _ = p.write_all(&line);
                let _ = p.flush();
            }
        }
    };
    let on_event = {
        let send = send.clone();
        Arc::new(move |e: VmmEvent| {
            send(&match e {
                VmmEvent::KernelEntry => ChildEvent::KernelEntry,
                VmmEvent::Restored => ChildEvent::Restored,
                VmmEvent::AgentListening => ChildEvent::AgentListening,
                VmmEvent::GuestPanic(line) => ChildEvent::GuestPanic { line },
            })
        })
    };
    let _ = crate::vm::vmm::memory::keep_smaps();
    let config = match args.into_config() {
        Ok(c) => c,
        Err(e) => {
            send(&ChildEvent::Error { message: crate::logging::chain(&e) });
            return exit::GENERAL;
        }
    };
    if !config.shares.is_empty() {
        limit_open_files();
    }
    match vmm::run(&config, on_event, Arc::new(AtomicBool::new(false))) {
        Ok(outcome) => {
            send(&ChildEvent::Exit {
                reason: reason_name(&outcome.reason),
                panic: outcome.panic.clone(),
                peak_rss_kib: peak_rss_kib(),
                guest_rss_kib: outcome.guest_resident_kib,
            });
            exit_code(&outcome.reason, outcome.panic.is_some())
        }
        Err(e) => {
            send(&ChildEvent::Error { message: crate::logging::chain(&e) });
            exit::GENERAL
        }
    }
}

/// Reads events from the child's pipe until it closes, forwarding each with
/// its arrival time.
pub fn spawn_reader(
    read_end: std::fs::File,
    tx: std::sync::mpsc::Sender<(std::time::Instant, ChildEvent)>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        for line in BufReader::new(read_end).lines() {
            let Ok(line) = line else { break };
            if let Ok(e) = serde_json::from_str::<ChildEvent>(&line) {
                if tx.send((std::time::Instant::now(), e)).is_err() {
                    break;
                }
            }
        }
    })
}

/// Arguments of `amphi vm run-vmm`, as the parent passes them.
#[derive(Debug, Clone)]
pub struct ChildArgs {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub cmdline: String,
    pub memory_mib: u64,
    pub cpus: u8,
    pub serial: Option<PathBuf>,
    pub vsock_uds: PathBuf,
    pub vsock_cid: u64,
    pub event_fd: i32,
    pub kvm_path: PathBuf,
    /// Directories served over virtio-fs (`--share TAG=DIR[:ro]`).
    pub shares: Vec<FsShare>,
    /// Disks attached over virtio-blk (`--disk [ID=]PATH[:ro]`).
    pub disks: Vec<DiskConfig>,
    /// Network interfaces over virtio-net (`--net TAP[,mac=..][,mtu=..]`).
    pub nets: Vec<NetConfig>,
    /// A virtio-balloon device (`--balloon`), with free page reporting
    /// (`--free-page-reporting`) if true.
    pub balloon: Option<bool>,
    /// Save the VM as a template into this directory once the agent
    /// listens (`--template-out DIR`).
    pub template_out: Option<PathBuf>,
    /// Start from the template in this directory (`--restore DIR`).
    pub restore: Option<PathBuf>,
}

impl ChildArgs {
    pub fn to_argv(&self) -> Vec<String> {
        let mut v = vec![
            "vm".into(),
            "run-vmm".into(),
            "--kernel".into(),
            self.kernel.display().to_string(),
            "--initrd".into(),
            self.initrd.display().to_string(),
            "--cmdline".into(),
            self.cmdline.clone(),
            "--memory".into(),
            self.memory_mib.to_string(),
            "--cpus".into(),
            self.cpus.to_string(),
            "--vsock-uds".into(),
            self.vsock_uds.display().to_string(),
            "--vsock-cid".into(),
            self.vsock_cid.to_string(),
            "--event-fd".into(),
            self.event_fd.to_string(),
            "--kvm".into(),
            self.kvm_path.display().to_string(),
        ];
        if let Some(s) = &self.serial {
            v.push("--serial".into());
            v.push(s.display().to_string());
        }
        for share in &self.shares {
            v.push("--share".into());
            v.push(share.to_string());
        }
        for disk in &self.disks {
            v.push("--disk".into());
            v.push(disk.to_string());
        }
        for net in &self.nets {
            v.push("--net".into());
            v.push(net.to_string());
        }
        if let Some(fpr) = self.balloon {
            v.push("--balloon".into());
            if fpr {
                v.push("--free-page-reporting".into());
            }
        }
        for (flag, dir) in [("--template-out", &self.template_out), ("--restore", &self.restore)] {
            if let Some(d) = dir {
                v.push(flag.into());
                v.push(d.display().to_string());
            }
        }
        v
    }

    /// The VMM's configuration; a template to restore is read here.
    pub fn into_config(self) -> Result<VmmConfig, vmm::persist::PersistenceError> {
        let template = match (self.template_out, self.restore) {
            (_, Some(dir)) => Some(vmm::TemplateMode::Restore(Arc::new(vmm::persist::RestoreSource::open(&dir)?))),
            (Some(dir), None) => Some(vmm::TemplateMode::Save(dir)),
            (None, None) => None,
        };
        Ok(VmmConfig {
            kvm_path: self.kvm_path,
            kernel: self.kernel,
            initrd: Some(self.initrd),
            cmdline: self.cmdline,
            mem_mib: self.memory_mib,
            vcpus: self.cpus,
            serial: match self.serial {
                Some(p) if p.as_os_str() == "-" => vmm::SerialOutput::Stdout,
                Some(p) => vmm::SerialOutput::File(p),
                None => vmm::SerialOutput::Discard,
            },
            vsock: Some(vmm::VsockConfig { guest_cid: self.vsock_cid, uds_path: self.vsock_uds }),
            shares: self.shares,
            disks: self.disks,
            nets: self.nets,
            api: None,
            // Only templates have one: `vm check` has nothing to set a
            // target with, but a template must have the devices of the
            // containers' VMs.
            balloon: self.balloon.map(|fpr| crate::vm::devices::virtio::balloon::BalloonConfig {
                free_page_reporting: fpr,
                ..Default::default()
            }),
            template,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_have_a_stable_wire_form() {
        let e = ChildEvent::Exit { reason: "power_off".into(), panic: None, peak_rss_kib: 12, guest_rss_kib: 8 };
        assert_eq!(
            serde_json::to_value(&e).unwrap(),
            serde_json::json!({"event":"exit","reason":"power_off","panic":null,"peak_rss_kib":12,"guest_rss_kib":8})
        );
        assert_eq!(serde_json::to_string(&ChildEvent::KernelEntry).unwrap(), r#"{"event":"kernel_entry"}"#);
    }

    #[test]
    fn exit_codes_tell_outcomes_apart() {
        assert_eq!(exit_code(&ExitReason::PowerOff, false), 0);
        assert_eq!(exit_code(&ExitReason::Reset, true), exit::VM_GUEST_PANIC);
        assert_eq!(exit_code(&ExitReason::Reset, false), exit::VM_GUEST_REBOOT);
        assert_eq!(exit_code(&ExitReason::EmulationFailure, false), exit::VM_HOST_UNSUPPORTED);
    }

    #[test]
    fn the_reader_forwards_events_and_skips_noise() {
        let (r, w) = std::os::unix::net::UnixStream::pair().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let h = {
            let f: std::fs::File = std::os::fd::OwnedFd::from(r).into();
            spawn_reader(f, tx)
        };
        let mut w = w;
        w.write_all(b"garbage\n{\"event\":\"agent_listening\"}\n").unwrap();
        drop(w);
        h.join().unwrap();
        let got: Vec<ChildEvent> = rx.iter().map(|(_, e)| e).collect();
        assert_eq!(got, vec![ChildEvent::AgentListening]);
    }

    #[test]
    fn child_args_round_trip_through_argv() {
        let a = ChildArgs {
            kernel: "/k".into(),
            initrd: "/i".into(),
            cmdline: "console=ttyS0 quiet".into(),
            memory_mib: 256,
            cpus: 2,
            serial: Some("-".into()),
            vsock_uds: "/t/v.sock".into(),
            vsock_cid: 3,
            event_fd: 5,
            kvm_path: "/dev/kvm".into(),
            shares: vec!["rootfs=/r".parse().unwrap(), "vol=/v:ro".parse().unwrap()],
            disks: vec!["/d/root.img".parse().unwrap(), "data=/d/data.img:ro".parse().unwrap()],
            nets: vec!["tap0,mac=02:00:00:00:00:07,mtu=1400".parse().unwrap()],
            balloon: Some(true),
            template_out: Some("/t/tpl".into()),
            restore: None,
        };
        let argv = a.to_argv();
        assert_eq!(&argv[..2], ["vm", "run-vmm"]);
        assert!(argv.windows(2).any(|w| w[0] == "--cmdline" && w[1] == "console=ttyS0 quiet"));
        let shares: Vec<&str> = argv.windows(2).filter(|w| w[0] == "--share").map(|w| w[1].as_str()).collect();
        assert_eq!(shares, ["rootfs=/r", "vol=/v:ro"]);
        let disks: Vec<&str> = argv.windows(2).filter(|w| w[0] == "--disk").map(|w| w[1].as_str()).collect();
        assert_eq!(disks, ["/d/root.img", "data=/d/data.img:ro"]);
        let nets: Vec<&str> = argv.windows(2).filter(|w| w[0] == "--net").map(|w| w[1].as_str()).collect();
        assert_eq!(nets, ["tap0,mac=02:00:00:00:00:07,mtu=1400"]);
        assert!(argv.windows(2).any(|w| w[0] == "--balloon" && w[1] == "--free-page-reporting"));
        assert!(argv.windows(2).any(|w| w == ["--template-out", "/t/tpl"]));
        let c = a.into_config().unwrap();
        assert!(c.balloon.as_ref().is_some_and(|b| b.free_page_reporting));
        assert!(matches!(&c.template, Some(vmm::TemplateMode::Save(d)) if d == std::path::Path::new("/t/tpl")));
        assert_eq!(c.serial, vmm::SerialOutput::Stdout);
        assert_eq!(c.shares.len(), 2);
        assert!(c.shares[1].read_only);
        assert_eq!(c.disks.len(), 2);
        assert_eq!((c.disks[1].serial.as_str(), c.disks[1].read_only), ("data", true));
        assert_eq!((c.nets[0].tap.as_str(), c.nets[0].mtu), ("tap0", 1400));
    }
}
