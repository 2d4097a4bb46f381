//! The suite's steps and how each sample is taken. Runs of the subjects are
//! interleaved (round r starts at subject r mod n), so that drift on the
//! host hits all of them alike; warm-up rounds are run and dropped. A
//! subject whose run fails stops being measured in that group, and its
//! series carries the error instead of figures.

use std::io::Write;
use std::net::{Shutdown, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use super::hostmem;
use super::model::{Group, Series, Step, Subject, Unit};
use super::proc::{self, Lines, ProcError};
use super::runtime::Runtime;
use super::workspace::{Workspace, WorkspaceError, WORKLOAD_IN_ROOTFS};

/// A VM's create boots a kernel: under TCG and the density step's load that
/// takes tens of seconds; nothing else should come near these.
const CREATE_DEADLINE: Duration = Duration::from_secs(300);
const COMMAND_DEADLINE: Duration = Duration::from_secs(60);
const WORKLOAD_DEADLINE: Duration = Duration::from_secs(900);
/// How long a `--bundle` process may run before the run gives up on it.
const BUNDLE_EXIT_DEADLINE: Duration = Duration::from_secs(60);
const NET_PORT: u16 = 7070;

/// How big each workload is.
#[derive(Debug, Clone, PartialEq)]
pub struct Sizes {
    pub cpu_rounds: u32,
    pub syscalls: u32,
    pub spawns: u32,
    pub small_files: u32,
    pub seq_mib: u32,
    pub memory_mib: u32,
    pub net_mib: u32,
    pub pings: u32,
    /// How long an idle instance is left before its memory is read (a
    /// guest hands freed pages back a few seconds after boot).
    pub settle: Duration,
}

impl Sizes {
    pub fn standard() -> Self {
        Sizes {
            cpu_rounds: 5,
            syscalls: 100_000,
            spawns: 200,
            small_files: 1000,
            seq_mib: 64,
            memory_mib: 64,
            net_mib: 64,
            pings: 1000,
            settle: Duration::from_secs(10),
        }
    }

    /// Small enough for CI under TCG; the same steps.
    pub fn quick() -> Self {
        Sizes {
            cpu_rounds: 1,
            syscalls: 20_000,
            spawns: 20,
            small_files: 100,
            seq_mib: 8,
            memory_mib: 16,
            net_mib: 8,
            pings: 100,
            settle: Duration::from_secs(3),
        }
    }
}

/// What a run measures.
#[derive(Debug, Clone)]
pub struct Plan {
    pub sizes: Sizes,
    pub runs: u32,
    pub warmup: u32,
    pub density: Vec<u32>,
    pub groups: Vec<Group>,
    /// `--bundle`: the lifecycle of the bundle's own process only.
    pub own_process: bool,
}

/// What a step is, by its id.
pub fn describe(id: &str) -> (Group, &'static str, Unit) {
    use Group::*;
    use Unit::*;
    match id {
        "lifecycle.create" => (Lifecycle, "create returns", Milliseconds),
        "lifecycle.start" => (Lifecycle, "start returns", Milliseconds),
        "lifecycle.running" => (Lifecycle, "start to the workload's first line", Milliseconds),
        "lifecycle.exit" => (Lifecycle, "running to state \"stopped\"", Milliseconds),
        "lifecycle.delete" => (Lifecycle, "delete returns", Milliseconds),
        "lifecycle.total" => (Lifecycle, "create to deleted", Milliseconds),
        "boot.agent_listening" => (Boot, "VMM launched to the agent listening", Milliseconds),
        "boot.peak_rss" => (Boot, "the VMM process's peak RSS, guest memory included", Mib),
        "cpu.compute" => (Cpu, "fixed computation", Milliseconds),
        "syscall.getpid" => (Syscall, "getpid", Nanoseconds),
        "syscall.open_close" => (Syscall, "open + close", Nanoseconds),
        "syscall.stat" => (Syscall, "stat", Nanoseconds),
        "spawn.fork_exec" => (Spawn, "fork + exec of /bin/true", Microseconds),
        "fileio.small_create" => (FileIo, "small files created", Milliseconds),
        "fileio.small_stat" => (FileIo, "small files stat'd", Milliseconds),
        "fileio.small_remove" => (FileIo, "small files removed", Milliseconds),
        "fileio.seq_write" => (FileIo, "sequential write + fsync", MibPerSecond),
        "fileio.seq_read" => (FileIo, "sequential read, cold", MibPerSecond),
        "memory.touch" => (Memory, "touch and free a buffer", Milliseconds),
        "memory.pss" => (Memory, "host PSS of an idle instance", Mib),
        "memory.rss" => (Memory, "host RSS of an idle instance", Mib),
        "memory.cgroup" => (Memory, "the instance's own cgroup usage (in a VM: the guest's view)", Mib),
        "density.start_all" => (Density, "start N idle instances", Milliseconds),
        "density.pss_per_instance" => (Density, "host PSS per idle instance", Mib),
        "network.throughput" => (Network, "host to instance TCP", MibPerSecond),
        "network.latency" => (Network, "TCP round trip, 1 byte", Microseconds),
        _ => (Lifecycle, "unknown", Milliseconds),
    }
}

/// The step ids a workload's `result NAME VALUE` lines feed.
fn result_step(name: &str) -> Option<&'static str> {
    Some(match name {
        "cpu_ms" => "cpu.compute",
        "getpid_ns" => "syscall.getpid",
        "open_close_ns" => "syscall.open_close",
        "stat_ns" => "syscall.stat",
        "spawn_us" => "spawn.fork_exec",
        "small_create_ms" => "fileio.small_create",
        "small_stat_ms" => "fileio.small_stat",
        "small_remove_ms" => "fileio.small_remove",
        "seq_write_mibps" => "fileio.seq_write",
        "seq_read_mibps" => "fileio.seq_read",
        "memory_touch_ms" => "memory.touch",
        _ => return None,
    })
}

/// Parses a workload's `result NAME VALUE` lines into step samples.
pub fn parse_results(lines: &[String]) -> Vec<(&'static str, f64)> {
    lines
        .iter()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            (w.next()? == "result").then_some(())?;
            let step = result_step(w.next()?)?;
            Some((step, w.next()?.parse::<f64>().ok()?))
        })
        .collect()
}

/// The ids one group's sample yields (so that a failure marks them all).
fn group_ids(group: Group, own_process: bool) -> &'static [&'static str] {
    match group {
        Group::Lifecycle if own_process => {
            &["lifecycle.create", "lifecycle.start", "lifecycle.exit", "lifecycle.delete", "lifecycle.total"]
        }
        Group::Lifecycle => &[
            "lifecycle.create",
            "lifecycle.start",
            "lifecycle.running",
            "lifecycle.exit",
            "lifecycle.delete",
            "lifecycle.total",
        ],
        Group::Boot => &["boot.agent_listening", "boot.peak_rss"],
        Group::Cpu => &["cpu.compute"],
        Group::Syscall => &["syscall.getpid", "syscall.open_close", "syscall.stat"],
        Group::Spawn => &["spawn.fork_exec"],
        Group::FileIo => {
            &["fileio.small_create", "fileio.small_stat", "fileio.small_remove", "fileio.seq_write", "fileio.seq_read"]
        }
        Group::Memory => &["memory.touch", "memory.pss", "memory.rss", "memory.cgroup"],
        Group::Density => &["density.start_all", "density.pss_per_instance"],
        Group::Network => &["network.throughput", "network.latency"],
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SampleError {
    #[error(transparent)]
    Proc(#[from] ProcError),
    #[error(transparent)]
    Workspace(#[from] WorkspaceError),
    #[error("{0}")]
    Other(String),
}

/// Takes the samples and keeps the containers it made, to delete them on
/// any way out.
pub struct Runner<'a> {
    ws: &'a mut Workspace,
    rts: &'a [Runtime],
    plan: &'a Plan,
    pub steps: Vec<Step>,
    live: Vec<(usize, String)>,
    seq: u32,
    /// The kernel and initramfs `amphi vm check` booted, which QEMU boots too.
    boot_image: Option<(PathBuf, PathBuf)>,
    /// Where the network step's instance listens.
    net_addr: Option<String>,
}

impl<'a> Runner<'a> {
    pub fn new(ws: &'a mut Workspace, rts: &'a [Runtime], plan: &'a Plan) -> Self {
        Runner { ws, rts, plan, steps: Vec::new(), live: Vec::new(), seq: 0, boot_image: None, net_addr: None }
    }

    /// Runs every group of the plan; only Ctrl-C stops it early.
    pub fn run(&mut self) -> Result<(), ProcError> {
        for &g in &self.plan.groups {
            match g {
                Group::Density => self.density()?,
                _ => self.rounds(g)?,
            }
        }
        Ok(())
    }

    fn rounds(&mut self, group: Group) -> Result<(), ProcError> {
        let total = self.plan.warmup + self.plan.runs;
        let n = self.rts.len();
        let mut failed: Vec<bool> = self.rts.iter().map(|rt| !takes_part(rt.subject, group)).collect();
        if failed.iter().all(|f| *f) {
            return Ok(());
        }
        if let Err(e) = self.prepare(group) {
            match e {
                SampleError::Proc(ProcError::Interrupted) => return Err(ProcError::Interrupted),
                e => {
                    let msg = match group {
                        Group::Boot => format!("preparing the guest image: {}", chain(&e)),
                        _ => chain(&e),
                    };
                    eprintln!("bench: {}: failed: {msg}", group.title());
                    let taking: Vec<Subject> =
                        self.rts.iter().zip(&failed).filter(|(_, f)| !**f).map(|(rt, _)| rt.subject).collect();
                    for subject in taking {
                        for id in group_ids(group, false) {
                            self.fail(id, subject, None, &msg);
                        }
                    }
                    return Ok(());
                }
            }
        }
        for r in 0..total {
            for k in 0..n {
                let i = (k + r as usize) % n;
                if failed[i] {
                    continue;
                }
                let subject = self.rts[i].subject;
                let label = if r < self.plan.warmup {
                    "warm-up".to_string()
                } else {
                    format!("run {}/{}", r - self.plan.warmup + 1, self.plan.runs)
                };
                let got = self.sample(i, group);
                self.sweep();
                match got {
                    Ok(values) => {
                        progress(group, subject, &label, &values);
                        if r >= self.plan.warmup {
                            for (id, v) in values {
                                self.record(id, subject, None, v);
                            }
                        }
                    }
                    Err(SampleError::Proc(ProcError::Interrupted)) => return Err(ProcError::Interrupted),
                    Err(e) => {
                        let msg = format!("{label}: {}", chain(&e));
                        eprintln!("bench: {}: {}: failed: {msg}", group.title(), subject.label());
                        failed[i] = true;
                        for id in group_ids(group, self.plan.own_process) {
                            self.fail(id, subject, None, &msg);
                        }
                    }
                }
            }
        }
        Ok(())
    }

    fn sample(&mut self, i: usize, group: Group) -> Result<Vec<(&'static str, f64)>, SampleError> {
        let s = &self.plan.sizes;
        let wl = |args: &[&str]| -> Vec<String> {
            std::iter::once(WORKLOAD_IN_ROOTFS).chain(args.iter().copied()).map(String::from).collect()
        };
        match group {
            Group::Lifecycle => self.lifecycle(i),
            Group::Boot => self.boot(i),
            Group::Cpu => self.workload(i, &wl(&["cpu", &s.cpu_rounds.to_string()])),
            Group::Syscall => self.workload(i, &wl(&["syscalls", &s.syscalls.to_string()])),
            Group::Spawn => self.workload(i, &wl(&["spawn", &s.spawns.to_string()])),
            Group::FileIo => {
                let mut v = self.workload(i, &wl(&["files", &s.small_files.to_string(), "/data/small"]))?;
                v.extend(self.workload(i, &wl(&["seq", &s.seq_mib.to_string(), "/data"]))?);
                Ok(v)
            }
            Group::Memory => {
                let mut v = self.workload(i, &wl(&["memory", &s.memory_mib.to_string()]))?;
                v.extend(self.idle_memory(i)?);
                Ok(v)
            }
            Group::Network => {
                let addr = self.net_addr.clone().ok_or_else(|| SampleError::Other("no network namespace".into()))?;
                self.network_once(i, &addr)
            }
            Group::Density => Ok(Vec::new()),
        }
    }

    /// What a group needs once before its rounds: the guest image for the
    /// boot step, the namespace and veth pair for the network step.
    fn prepare(&mut self, group: Group) -> Result<(), SampleError> {
        match group {
            Group::Boot => self.boot_prepare(),
            Group::Network => {
                let ns = self.ws.network()?;
                self.net_addr = Some(format!("{}:{NET_PORT}", ns.guest_addr));
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// One untimed `amphi vm check`: builds (or finds) the cached
    /// initramfs, and names the kernel and initramfs QEMU boots too.
    fn boot_prepare(&mut self) -> Result<(), SampleError> {
        let Some(i) = self.rts.iter().position(|rt| rt.subject == Subject::Vm) else {
            return Ok(());
        };
        let (_, rest) = self.vm_check(i)?;
        let report: serde_json::Value = rest
            .iter()
            .position(|l| l.trim_start().starts_with('{'))
            .and_then(|at| serde_json::from_str(&rest[at..].join("\n")).ok())
            .ok_or_else(|| SampleError::Other("amphi vm check --json printed no report".into()))?;
        let path = |k: &str| report[k].as_str().map(PathBuf::from);
        match (path("kernel"), path("initramfs")) {
            (Some(k), Some(i)) => {
                self.boot_image = Some((k, i));
                Ok(())
            }
            _ => Err(SampleError::Other("amphi vm check's report names no kernel or initramfs".into())),
        }
    }

    /// `amphi vm check` with the guest console on stdout: the time to the
    /// agent's listening line, and the lines after it (its JSON report).
    fn vm_check(&mut self, i: usize) -> Result<(Duration, Vec<String>), SampleError> {
        let cache = self.ws.dir.join("vm-cache");
        let mut c = self.rts[i].command(["vm", "check", "--timeout", "240", "--console", "-", "--json", "--cache-dir"]);
        c.arg(&cache);
        let (elapsed, mut lines, mut child) = until_marker(&mut c, &self.errfile(), "amphi vm check")?;
        let rest = lines.rest("amphi vm check", Instant::now() + COMMAND_DEADLINE);
        let status = child.wait().map_err(|e| SampleError::Other(format!("amphi vm check: {e}")))?;
        let rest = rest?;
        if !status.success() {
            let stderr = std::fs::read_to_string(self.errfile()).unwrap_or_default();
            return Err(ProcError::Failed { what: "amphi vm check".into(), status, stderr }.into());
        }
        Ok((elapsed, rest))
    }

    /// A bare guest to the agent's listening line: amphi's VMM (through
    /// `amphi vm check`) or QEMU microvm with the same kernel, initramfs,
    /// command line, memory, vCPU and a vsock device.
    fn boot(&mut self, i: usize) -> Result<Vec<(&'static str, f64)>, SampleError> {
        if self.rts[i].subject == Subject::Vm {
            let (elapsed, rest) = self.vm_check(i)?;
            let rss = rest.iter().find_map(|l| json_number(l, "vmm_peak_rss_kib"));
            let mut v = vec![("boot.agent_listening", ms(elapsed))];
            if let Some(kib) = rss {
                v.push(("boot.peak_rss", kib / 1024.0));
            }
            return Ok(v);
        }
        let (kernel, initrd) = self.boot_image.clone().ok_or_else(|| SampleError::Other("no guest image".into()))?;
        if !Path::new("/dev/vhost-vsock").exists() {
            // The agent listens on vsock; without the device it never does.
            let _ = std::process::Command::new("modprobe").arg("vhost_vsock").status();
            if !Path::new("/dev/vhost-vsock").exists() {
                return Err(SampleError::Other(
                    "QEMU's vsock device needs /dev/vhost-vsock: modprobe vhost_vsock".into(),
                ));
            }
        }
        let cid = 3 + (std::process::id() % 100_000);
        let mut c = std::process::Command::new(self.rts[i].program());
        c.args(["-M", "microvm", "-enable-kvm", "-cpu", "host", "-m", "256", "-smp", "1"])
            .args(["-nodefaults", "-no-user-config", "-nographic", "-serial", "stdio"])
            .arg("-kernel")
            .arg(&kernel)
            .arg("-initrd")
            .arg(&initrd)
            .args(["-append", crate::vm::GUEST_CMDLINE, "-device"])
            .arg(format!("vhost-vsock-device,guest-cid={cid}"));
        let (elapsed, _lines, mut child) = until_marker(&mut c, &self.errfile(), "qemu-system-x86_64")?;
        let hwm = std::fs::read_to_string(format!("/proc/{}/status", child.id())).ok().and_then(|s| {
            s.lines().find_map(|l| l.strip_prefix("VmHWM:")?.split_whitespace().next()?.parse::<f64>().ok())
        });
        let _ = child.kill();
        let _ = child.wait();
        let mut v = vec![("boot.agent_listening", ms(elapsed))];
        if let Some(kib) = hwm {
            v.push(("boot.peak_rss", kib / 1024.0));
        }
        Ok(v)
    }

    fn next_id(&mut self) -> String {
        self.seq += 1;
        format!("amphi-bench-{}-{}", std::process::id(), self.seq)
    }

    fn errfile(&self) -> PathBuf {
        self.ws.dir.join("stderr")
    }

    /// create, start, the workload's `ready`, state "stopped", delete.
    fn lifecycle(&mut self, i: usize) -> Result<Vec<(&'static str, f64)>, SampleError> {
        let rt = &self.rts[i];
        let own = self.plan.own_process;
        let args = (!own).then(|| vec![WORKLOAD_IN_ROOTFS.to_string(), "ready".to_string()]);
        let bundle = self.ws.configure(rt, args.as_deref(), false)?;
        let id = self.next_id();
        let (mut lines, w) = proc::pipe().map_err(|e| SampleError::Other(format!("a pipe: {e}")))?;
        let t0 = Instant::now();
        let mut create = rt.command(["create", "--bundle"]);
        create.arg(&bundle).arg(&id).stdout(Stdio::from(w));
        self.live.push((i, id.clone()));
        let c = proc::timed("create", &mut create, &self.errfile(), CREATE_DEADLINE)?;
        drop(create);
        let mut start = rt.command(["start", &id]);
        start.stdout(Stdio::null());
        let t_start = Instant::now();
        let s = proc::timed("start", &mut start, &self.errfile(), COMMAND_DEADLINE)?;
        let mut values = vec![("lifecycle.create", ms(c.elapsed)), ("lifecycle.start", ms(s.elapsed))];
        let running_at = if own {
            t_start
        } else {
            lines.until("the workload", "ready", Instant::now() + COMMAND_DEADLINE)?;
            values.push(("lifecycle.running", ms(t_start.elapsed())));
            Instant::now()
        };
        let deadline = Instant::now() + if own { BUNDLE_EXIT_DEADLINE } else { COMMAND_DEADLINE };
        loop {
            if self.status(i, &id)? == "stopped" {
                break;
            }
            if Instant::now() > deadline {
                return Err(SampleError::Other(format!(
                    "the container's process did not exit within {} s: benchmark a bundle whose process exits by itself",
                    deadline.duration_since(running_at).as_secs()
                )));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        values.push(("lifecycle.exit", ms(running_at.elapsed())));
        let mut delete = rt.command(["delete", &id]);
        delete.stdout(Stdio::null());
        let d = proc::timed("delete", &mut delete, &self.errfile(), COMMAND_DEADLINE)?;
        self.live.retain(|(_, l)| *l != id);
        values.push(("lifecycle.delete", ms(d.elapsed)));
        values.push(("lifecycle.total", ms(t0.elapsed())));
        Ok(values)
    }

    /// `state ID`'s status.
    fn status(&self, i: usize, id: &str) -> Result<String, SampleError> {
        let out = self.ws.dir.join("state.json");
        let f = std::fs::File::create(&out).map_err(|e| SampleError::Other(format!("{}: {e}", out.display())))?;
        let mut c = self.rts[i].command(["state", id]);
        c.stdout(f);
        proc::timed("state", &mut c, &self.errfile(), COMMAND_DEADLINE)?;
        let text = std::fs::read_to_string(&out).unwrap_or_default();
        let v: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| SampleError::Other(format!("state printed no JSON ({e}): {text}")))?;
        Ok(v["status"].as_str().unwrap_or("").to_string())
    }

    /// `run` of a workload in the foreground; its own figures come back as
    /// `result` lines.
    fn workload(&mut self, i: usize, args: &[String]) -> Result<Vec<(&'static str, f64)>, SampleError> {
        let rt = &self.rts[i];
        let bundle = self.ws.configure(rt, Some(args), false)?;
        let id = self.next_id();
        let out = self.ws.dir.join("stdout");
        let f = std::fs::File::create(&out).map_err(|e| SampleError::Other(format!("{}: {e}", out.display())))?;
        let mut run = rt.command(["run", "--bundle"]);
        run.arg(&bundle).arg(&id).stdout(f);
        self.live.push((i, id));
        proc::timed(&format!("run {}", args[1..].join(" ")), &mut run, &self.errfile(), WORKLOAD_DEADLINE)?;
        let lines: Vec<String> = std::fs::read_to_string(&out).unwrap_or_default().lines().map(String::from).collect();
        let values = parse_results(&lines);
        if values.is_empty() {
            return Err(SampleError::Other(format!("the workload printed no result: {lines:?}")));
        }
        Ok(values)
    }

    /// Starts an idle instance and waits for its `ready`; returns its id.
    fn start_idle(&mut self, i: usize, network: bool) -> Result<(String, Lines), SampleError> {
        let rt = &self.rts[i];
        let args = [WORKLOAD_IN_ROOTFS.to_string(), "idle".to_string()];
        let serve;
        let args: &[String] = if network {
            serve = [WORKLOAD_IN_ROOTFS.to_string(), "serve".to_string(), NET_PORT.to_string()];
            &serve
        } else {
            &args
        };
        let bundle = self.ws.configure(rt, Some(args), network)?;
        let id = self.next_id();
        let (mut lines, w) = proc::pipe().map_err(|e| SampleError::Other(format!("a pipe: {e}")))?;
        let mut create = rt.command(["create", "--bundle"]);
        create.arg(&bundle).arg(&id).stdout(Stdio::from(w));
        self.live.push((i, id.clone()));
        proc::timed("create", &mut create, &self.errfile(), CREATE_DEADLINE)?;
        drop(create);
        let mut start = rt.command(["start", &id]);
        start.stdout(Stdio::null());
        proc::timed("start", &mut start, &self.errfile(), COMMAND_DEADLINE)?;
        lines.until("the workload", "ready", Instant::now() + COMMAND_DEADLINE)?;
        Ok((id, lines))
    }

    /// The host memory of one idle instance after it settled.
    fn idle_memory(&mut self, i: usize) -> Result<Vec<(&'static str, f64)>, SampleError> {
        let (id, _lines) = self.start_idle(i, false)?;
        sleep_checked(self.plan.sizes.settle)?;
        let (pss, rss) = self.instance_memory(i, &id)?;
        let mut v = vec![("memory.pss", pss), ("memory.rss", rss)];
        // The container's own view: its cgroup's usage, which in VM
        // isolation is the guest's cgroup (amphi's `events --stats`).
        if self.rts[i].isolation().is_some() {
            v.push(("memory.cgroup", self.cgroup_usage_mib(i, &id)?));
        }
        Ok(v)
    }

    fn cgroup_usage_mib(&self, i: usize, id: &str) -> Result<f64, SampleError> {
        let out = self.ws.dir.join("stats.json");
        let f = std::fs::File::create(&out).map_err(|e| SampleError::Other(format!("{}: {e}", out.display())))?;
        let mut c = self.rts[i].command(["events", "--stats", id]);
        c.stdout(f);
        proc::timed("events --stats", &mut c, &self.errfile(), COMMAND_DEADLINE)?;
        let text = std::fs::read_to_string(&out).unwrap_or_default();
        let v: serde_json::Value = serde_json::from_str(text.lines().next().unwrap_or(""))
            .map_err(|e| SampleError::Other(format!("events --stats printed no JSON ({e}): {text}")))?;
        v.pointer("/data/memory/usage/usage")
            .and_then(serde_json::Value::as_f64)
            .map(|b| b / (1024.0 * 1024.0))
            .ok_or_else(|| SampleError::Other(format!("events --stats has no memory usage: {text}")))
    }

    /// PSS and RSS in MiB of a running instance's host processes.
    fn instance_memory(&self, i: usize, id: &str) -> Result<(f64, f64), SampleError> {
        let out = self.ws.dir.join("state.json");
        let f = std::fs::File::create(&out).map_err(|e| SampleError::Other(format!("{}: {e}", out.display())))?;
        let mut c = self.rts[i].command(["state", id]);
        c.stdout(f);
        proc::timed("state", &mut c, &self.errfile(), COMMAND_DEADLINE)?;
        let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap_or_default())
            .map_err(|e| SampleError::Other(format!("state printed no JSON: {e}")))?;
        let pid = v["pid"]
            .as_u64()
            .filter(|p| *p > 0)
            .ok_or_else(|| SampleError::Other(format!("state of {id} has no pid")))?;
        let pids = hostmem::instance_pids(pid as u32, Path::new("/sys/fs/cgroup"));
        let (pss, rss) = hostmem::pss_rss_kib(&pids);
        Ok((pss as f64 / 1024.0, rss as f64 / 1024.0))
    }

    /// N idle instances per subject: the time to start them all, and the
    /// host PSS per instance once they settled. One sample per N.
    fn density(&mut self) -> Result<(), ProcError> {
        let counts = self.plan.density.clone();
        for n in counts {
            for i in 0..self.rts.len() {
                let subject = self.rts[i].subject;
                if !takes_part(subject, Group::Density) {
                    continue;
                }
                match self.density_once(i, n) {
                    Ok((start_ms, pss)) => {
                        eprintln!(
                            "bench: Density: {} N={n}: started in {start_ms:.0} ms, {pss:.1} MiB PSS per instance",
                            subject.label()
                        );
                        self.record("density.start_all", subject, Some(n), start_ms);
                        self.record("density.pss_per_instance", subject, Some(n), pss);
                    }
                    Err(SampleError::Proc(ProcError::Interrupted)) => {
                        self.sweep();
                        return Err(ProcError::Interrupted);
                    }
                    Err(e) => {
                        let msg = format!("N={n}: {}", chain(&e));
                        eprintln!("bench: Density: {}: failed: {msg}", subject.label());
                        for id in group_ids(Group::Density, false) {
                            self.fail(id, subject, Some(n), &msg);
                        }
                    }
                }
                self.sweep();
            }
        }
        Ok(())
    }

    fn density_once(&mut self, i: usize, n: u32) -> Result<(f64, f64), SampleError> {
        let t0 = Instant::now();
        let mut ids = Vec::new();
        for _ in 0..n {
            ids.push(self.start_idle(i, false)?);
        }
        let start_ms = ms(t0.elapsed());
        sleep_checked(self.plan.sizes.settle)?;
        let mut pss = 0.0;
        for (id, _) in &ids {
            pss += self.instance_memory(i, id)?.0;
        }
        Ok((start_ms, pss / f64::from(n)))
    }

    /// TCP from the host into an instance through a veth pair in the
    /// instance's network namespace, the way an engine connects one.
    fn network_once(&mut self, i: usize, addr: &str) -> Result<Vec<(&'static str, f64)>, SampleError> {
        let (_id, _lines) = self.start_idle(i, true)?;
        let s = &self.plan.sizes;
        let (mib, pings) = (s.net_mib, s.pings);
        let net = |e: std::io::Error| SampleError::Other(format!("TCP to {addr}: {e}"));
        let sock: std::net::SocketAddr = addr.parse().map_err(|e| SampleError::Other(format!("{addr}: {e}")))?;
        // The guest's interface is up before `ready`, but ARP and the
        // redirect may still be settling: retry the first connection briefly.
        let connect = || -> Result<TcpStream, SampleError> {
            let until = Instant::now() + Duration::from_secs(10);
            loop {
                match TcpStream::connect_timeout(&sock, Duration::from_secs(2)) {
                    Ok(c) => return Ok(c),
                    Err(_) if Instant::now() < until => std::thread::sleep(Duration::from_millis(100)),
                    Err(e) => return Err(net(e)),
                }
            }
        };
        let mut c = connect()?;
        c.set_read_timeout(Some(Duration::from_secs(60))).map_err(net)?;
        let chunk = vec![0x5au8; 1 << 20];
        let t0 = Instant::now();
        c.write_all(b"T").map_err(net)?;
        for _ in 0..mib {
            c.write_all(&chunk).map_err(net)?;
        }
        c.shutdown(Shutdown::Write).map_err(net)?;
        let mut count = [0u8; 8];
        std::io::Read::read_exact(&mut c, &mut count).map_err(net)?;
        let secs = t0.elapsed().as_secs_f64();
        let got = u64::from_le_bytes(count);
        if got != u64::from(mib) << 20 {
            return Err(SampleError::Other(format!("the instance counted {got} bytes of {}", u64::from(mib) << 20)));
        }
        let mut p = connect()?;
        p.set_nodelay(true).map_err(net)?;
        p.set_read_timeout(Some(Duration::from_secs(10))).map_err(net)?;
        p.write_all(b"P").map_err(net)?;
        let mut b = [0u8; 1];
        let t1 = Instant::now();
        for _ in 0..pings {
            p.write_all(b"x").map_err(net)?;
            std::io::Read::read_exact(&mut p, &mut b).map_err(net)?;
        }
        let rtt_us = t1.elapsed().as_secs_f64() * 1e6 / f64::from(pings.max(1));
        Ok(vec![("network.throughput", f64::from(mib) / secs), ("network.latency", rtt_us)])
    }

    /// Deletes every container this runner still has.
    pub fn sweep(&mut self) {
        for (i, id) in std::mem::take(&mut self.live) {
            let mut c = self.rts[i].command(["delete", "--force", &id]);
            c.stdout(Stdio::null());
            // A failure here leaves the container to the final check.
            let _ = proc::timed("delete --force", &mut c, &self.ws.dir.join("stderr.sweep"), COMMAND_DEADLINE);
        }
    }

    fn series(&mut self, id: &str, subject: Subject, x: Option<u32>) -> &mut Series {
        let si = match self.steps.iter().position(|s| s.id == id) {
            Some(si) => si,
            None => {
                let (group, title, unit) = describe(id);
                self.steps.push(Step { id: id.into(), group, title: title.into(), unit, series: Vec::new() });
                self.steps.len() - 1
            }
        };
        let step = &mut self.steps[si];
        let at = match step.series.iter().position(|s| s.subject == subject && s.x == x) {
            Some(at) => at,
            None => {
                step.series.push(Series { subject, x, samples: Vec::new(), error: None });
                step.series.len() - 1
            }
        };
        &mut step.series[at]
    }

    fn record(&mut self, id: &str, subject: Subject, x: Option<u32>, v: f64) {
        self.series(id, subject, x).samples.push(v);
    }

    fn fail(&mut self, id: &str, subject: Subject, x: Option<u32>, msg: &str) {
        self.series(id, subject, x).error = Some(msg.to_string());
    }
}

impl Drop for Runner<'_> {
    fn drop(&mut self) {
        self.sweep();
    }
}

/// Who takes part in a group: QEMU boots a bare guest only, and a bare
/// boot is a VM's only.
fn takes_part(subject: Subject, group: Group) -> bool {
    match group {
        Group::Boot => matches!(subject, Subject::Vm | Subject::QemuMicrovm),
        _ => subject != Subject::QemuMicrovm,
    }
}

/// Spawns `cmd` with stdout on a pipe and waits for the guest agent's
/// listening line; the child keeps running. A child that fails to get there
/// within the deadline is killed.
fn until_marker(
    cmd: &mut std::process::Command,
    errfile: &Path,
    what: &str,
) -> Result<(Duration, Lines, std::process::Child), SampleError> {
    use std::os::unix::process::CommandExt;
    let err = std::fs::File::create(errfile).map_err(|e| SampleError::Other(format!("{}: {e}", errfile.display())))?;
    let (mut lines, w) = proc::pipe().map_err(|e| SampleError::Other(format!("a pipe: {e}")))?;
    cmd.stdin(Stdio::null()).stdout(Stdio::from(w)).stderr(err).process_group(0);
    let t0 = Instant::now();
    let mut child = cmd
        .spawn()
        .map_err(|source| ProcError::Spawn { program: cmd.get_program().to_string_lossy().into_owned(), source })?;
    // Our copy of the write end goes, so that the pipe ends with the child.
    let _ = std::mem::replace(cmd, std::process::Command::new("true"));
    let deadline = Instant::now() + CREATE_DEADLINE;
    loop {
        match lines.next_line(what, deadline) {
            Ok(Some(l)) if l.contains(crate::agent::LISTENING_MARKER) => return Ok((t0.elapsed(), lines, child)),
            Ok(Some(_)) => {}
            Ok(None) => {
                let _ = child.wait();
                let stderr = std::fs::read_to_string(errfile).unwrap_or_default();
                let last = stderr.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("no message");
                return Err(SampleError::Other(format!("{what} ended before the agent listened: {last}")));
            }
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(e.into());
            }
        }
    }
}

/// `"name": 123` anywhere in a line of JSON.
fn json_number(line: &str, name: &str) -> Option<f64> {
    let at = line.find(&format!("\"{name}\""))?;
    let rest = line[at + name.len() + 2..].trim_start().strip_prefix(':')?.trim_start();
    let end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
    rest[..end].parse().ok()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn sleep_checked(d: Duration) -> Result<(), ProcError> {
    let end = Instant::now() + d;
    while Instant::now() < end {
        if proc::INTERRUPTED.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(ProcError::Interrupted);
        }
        std::thread::sleep(Duration::from_millis(50).min(end.saturating_duration_since(Instant::now())));
    }
    Ok(())
}

/// An error and its sources on one line.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

fn progress(group: Group, subject: Subject, label: &str, values: &[(&'static str, f64)]) {
    let figures: Vec<String> = values
        .iter()
        .map(|(id, v)| format!("{} {v:.1} {}", id.split_once('.').map_or(*id, |x| x.1), describe(id).2.symbol()))
        .collect();
    eprintln!("bench: {}: {} {label}: {}", group.title(), subject.label(), figures.join(", "));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_found_in_a_json_line() {
        assert_eq!(json_number(r#"  "vmm_peak_rss_kib": 5120,"#, "vmm_peak_rss_kib"), Some(5120.0));
        assert_eq!(json_number(r#"{"a": 1}"#, "b"), None);
    }

    #[test]
    fn qemu_boots_only_and_only_vms_boot() {
        assert!(takes_part(Subject::QemuMicrovm, Group::Boot));
        assert!(takes_part(Subject::Vm, Group::Boot));
        assert!(!takes_part(Subject::Container, Group::Boot));
        assert!(!takes_part(Subject::QemuMicrovm, Group::Cpu));
        assert!(takes_part(Subject::Runc, Group::Density));
    }

    #[test]
    fn result_lines_map_to_steps() {
        let lines: Vec<String> =
            ["ready", "result getpid_ns 52.5", "result cpu_checksum 77", "result stat_ns x", "result spawn_us 310"]
                .iter()
                .map(|s| s.to_string())
                .collect();
        assert_eq!(parse_results(&lines), vec![("syscall.getpid", 52.5), ("spawn.fork_exec", 310.0)]);
    }

    #[test]
    fn every_group_id_is_described() {
        for g in Group::ALL {
            for id in group_ids(g, false) {
                let (group, title, _) = describe(id);
                assert_eq!(group, g, "{id}");
                assert_ne!(title, "unknown", "{id}");
            }
        }
        for name in [
            "cpu_ms",
            "getpid_ns",
            "open_close_ns",
            "stat_ns",
            "spawn_us",
            "small_create_ms",
            "seq_read_mibps",
            "memory_touch_ms",
        ] {
            let id = result_step(name).unwrap();
            assert_ne!(describe(id).1, "unknown");
        }
    }
}
