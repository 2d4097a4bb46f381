//! `process.scheduler` (sched_setattr(2)) and `process.execCPUAffinity`, as
//! runtime-spec 1.2 defines them.
//!
//! Both are checked and converted by the parent, before anything is
//! cloned, with runc's rules (nice only for the normal policies, priority
//! only for the real-time ones, runtime/deadline/period only for
//! SCHED_DEADLINE); the child only makes the system calls.

use nix::errno::Errno;
use nix::sched::CpuSet;
use oci_spec::runtime::{ExecCPUAffinity, LinuxSchedulerFlag, LinuxSchedulerPolicy, Scheduler};

use super::LinuxError;

/// struct sched_attr (linux/sched/types.h), the version with utilization
/// clamps (56 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SchedAttr {
    size: u32,
    policy: u32,
    flags: u64,
    nice: i32,
    priority: u32,
    runtime: u64,
    deadline: u64,
    period: u64,
    util_min: u32,
    util_max: u32,
}

fn bad(msg: String) -> LinuxError {
    LinuxError::Config(format!("process.scheduler: {msg}"))
}

impl SchedAttr {
    /// Checks and converts the spec's scheduler.
    pub fn from_spec(s: &Scheduler) -> Result<SchedAttr, LinuxError> {
        use LinuxSchedulerPolicy::*;
        let policy = *s.policy();
        let policy_no = match policy {
            SchedOther => 0,
            SchedFifo => 1,
            SchedRr => 2,
            SchedBatch => 3,
            SchedIso => 4,
            SchedIdle => 5,
            SchedDeadline => 6,
        };
        let nice = s.nice().unwrap_or(0);
        if matches!(policy, SchedOther | SchedBatch) && !(-20..=19).contains(&nice) {
            return Err(bad(format!("nice {nice} is out of range: use -20 to 19")));
        }
        let priority = s.priority().unwrap_or(0);
        if priority != 0 && !matches!(policy, SchedFifo | SchedRr) {
            return Err(bad(format!("priority {priority} only applies to SCHED_FIFO and SCHED_RR: remove it")));
        }
        if matches!(policy, SchedFifo | SchedRr) && !(1..=99).contains(&priority) {
            return Err(bad(format!("priority {priority} is out of range for {policy:?}: use 1 to 99")));
        }
        let (runtime, deadline, period) =
            (s.runtime().unwrap_or(0), s.deadline().unwrap_or(0), s.period().unwrap_or(0));
        if policy != SchedDeadline && (runtime != 0 || deadline != 0 || period != 0) {
            return Err(bad("runtime, deadline and period only apply to SCHED_DEADLINE: remove them".into()));
        }
        let mut flags = 0u64;
        for f in s.flags().iter().flatten() {
            flags |= match f {
                LinuxSchedulerFlag::SchedResetOnFork => 0x01,
                LinuxSchedulerFlag::SchedFlagReclaim => 0x02,
                LinuxSchedulerFlag::SchedFlagDLOverrun => 0x04,
                LinuxSchedulerFlag::SchedFlagKeepPolicy => 0x08,
                LinuxSchedulerFlag::SchedFlagKeepParams => 0x10,
                LinuxSchedulerFlag::SchedFlagUtilClampMin => 0x20,
                LinuxSchedulerFlag::SchedFlagUtilClampMax => 0x40,
            };
        }
        Ok(SchedAttr {
            size: std::mem::size_of::<SchedAttr>() as u32,
            policy: policy_no,
            flags,
            nice,
            priority: priority as u32,
            runtime,
            deadline,
            period,
            util_min: 0,
            util_max: 0,
        })
    }

    /// sched_setattr(2) on the calling thread.
    pub fn apply(&self) -> Result<(), LinuxError> {
        // SAFETY: sched_setattr reads one sched_attr whose size field is
        // set to its real size; pid 0 is the caller, flags 0.
        let r = unsafe { libc::syscall(libc::SYS_sched_setattr, 0, self as *const SchedAttr, 0) };
        if r < 0 {
            let e = Errno::last();
            let hint = match e {
                Errno::EPERM => ": the real-time policies need CAP_SYS_NICE (and a real-time budget in the cgroup)",
                Errno::EBUSY => {
                    ": SCHED_DEADLINE needs an admission the kernel refused (check runtime <= deadline <= period)"
                }
                _ => "",
            };
            return Err(LinuxError::sys(format!("cannot set process.scheduler{hint}"), e));
        }
        Ok(())
    }
}

/// `execCPUAffinity`, parsed: CPUs before and after joining the cgroup.
#[derive(Debug, Clone, Default)]
pub struct Affinity {
    pub initial: Option<CpuSet>,
    pub last: Option<CpuSet>,
}

impl Affinity {
    pub fn from_spec(a: &ExecCPUAffinity) -> Result<Affinity, LinuxError> {
        let parse = |what: &str, v: &Option<String>| -> Result<Option<CpuSet>, LinuxError> {
            match v.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
                None => Ok(None),
                Some(list) => cpu_set(list)
                    .map(Some)
                    .map_err(|m| LinuxError::Config(format!("process.execCPUAffinity.{what} {list:?}: {m}"))),
            }
        };
        Ok(Affinity { initial: parse("initial", a.initial())?, last: parse("final", a.cpu_affinity_final())? })
    }
}

/// A CPU list ("0-3,7") as a set.
pub fn cpu_set(list: &str) -> Result<CpuSet, String> {
    let mut set = CpuSet::new();
    let count = CpuSet::count();
    let mut add = |cpu: usize| -> Result<(), String> {
        if cpu >= count {
            return Err(format!("CPU {cpu} is beyond the {count} CPUs a set can hold"));
        }
        set.set(cpu).map_err(|e| e.to_string())
    };
    for part in list.split(',') {
        let num = |s: &str| s.trim().parse::<usize>().map_err(|_| format!("{s:?} is not a CPU number"));
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (num(a)?, num(b)?);
                if a > b {
                    return Err(format!("range {a}-{b} runs backwards"));
                }
                for c in a..=b {
                    add(c)?;
                }
            }
            None => add(num(part)?)?,
        }
    }
    Ok(set)
}

/// Pins the calling thread to `set`.
pub fn set_affinity(set: &CpuSet, what: &str) -> Result<(), LinuxError> {
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), set).map_err(|e| {
        LinuxError::sys(format!("cannot apply process.execCPUAffinity.{what} (are those CPUs online and allowed?)"), e)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sched(json: &str) -> Result<SchedAttr, LinuxError> {
        SchedAttr::from_spec(&serde_json::from_str(json).unwrap())
    }

    #[test]
    fn converts_like_runc() {
        let a = sched(r#"{"policy":"SCHED_FIFO","priority":10,"flags":["SCHED_FLAG_RECLAIM"]}"#).unwrap();
        assert_eq!((a.policy, a.priority, a.flags, a.size), (1, 10, 0x02, 56));
        let a = sched(r#"{"policy":"SCHED_OTHER","nice":5}"#).unwrap();
        assert_eq!((a.policy, a.nice), (0, 5));
        let a = sched(r#"{"policy":"SCHED_DEADLINE","runtime":1000,"deadline":2000,"period":3000}"#).unwrap();
        assert_eq!((a.policy, a.runtime, a.deadline, a.period), (6, 1000, 2000, 3000));
    }

    #[test]
    fn refuses_what_runc_refuses() {
        for (json, word) in [
            (r#"{"policy":"SCHED_OTHER","nice":30}"#, "nice 30"),
            (r#"{"policy":"SCHED_OTHER","priority":3}"#, "priority 3"),
            (r#"{"policy":"SCHED_RR","priority":0}"#, "1 to 99"),
            (r#"{"policy":"SCHED_BATCH","runtime":1}"#, "SCHED_DEADLINE"),
        ] {
            let e = sched(json).unwrap_err().to_string();
            assert!(e.contains(word) && e.starts_with("process.scheduler"), "{json}: {e}");
        }
    }

    #[test]
    fn applying_the_normal_policy_works_unprivileged() {
        // Nice 0 with SCHED_OTHER is what every process already has.
        sched(r#"{"policy":"SCHED_OTHER","nice":0}"#).unwrap().apply().unwrap();
    }

    #[test]
    fn cpu_lists() {
        let s = cpu_set("0-2,5").unwrap();
        assert!(s.is_set(0).unwrap() && s.is_set(2).unwrap() && s.is_set(5).unwrap());
        assert!(!s.is_set(3).unwrap());
        assert!(cpu_set("3-1").unwrap_err().contains("backwards"));
        assert!(cpu_set("x").is_err());
        assert!(cpu_set("100000").is_err());
        let a: ExecCPUAffinity = serde_json::from_str(r#"{"initial":"0","final":"0-1"}"#).unwrap();
        let a = Affinity::from_spec(&a).unwrap();
        assert!(a.initial.is_some() && a.last.is_some());
    }
}
