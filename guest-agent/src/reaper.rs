//! PID 1 reaps every process that ends in the guest: its own children
//! (runtime helpers), and every orphan, which is what a container's init
//! becomes once the helper that created it exits. The reaper keeps each
//! exit status for a while, so whoever waits for a container's init (or an
//! exec'd process) learns how it ended even if it ended first.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

use amphi::agent::container::ExitStatus;
use nix::sys::signal::{SigSet, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

/// Exit statuses kept for late waiters; older ones are dropped first. Far
/// more than the processes a guest has at once, and bounded whatever the
/// guest's processes do.
const KEPT: usize = 4096;

#[derive(Default)]
pub struct Exits {
    recent: Mutex<VecDeque<(i32, ExitStatus)>>,
    changed: Condvar,
    reaped: AtomicU64,
}

impl Exits {
    /// Blocks SIGCHLD in the calling thread (and so in every thread it
    /// starts afterwards: call this before any other thread exists) and
    /// starts the reaper thread, which takes SIGCHLD with sigwait.
    pub fn start() -> Result<Arc<Exits>, String> {
        let exits = Arc::new(Exits::default());
        let mut set = SigSet::empty();
        set.add(Signal::SIGCHLD);
        set.thread_block().map_err(|e| format!("block SIGCHLD: {e}"))?;
        let e = exits.clone();
        std::thread::Builder::new()
            .name("reaper".into())
            .spawn(move || loop {
                if set.wait().is_err() {
                    continue;
                }
                e.reap_all();
            })
            .map(drop)
            .map_err(|e| format!("start the reaper: {e}"))?;
        Ok(exits)
    }

    fn reap_all(&self) {
        loop {
            let (pid, status) = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(p, c)) => (p.as_raw(), ExitStatus::exited(c)),
                Ok(WaitStatus::Signaled(p, s, _)) => (p.as_raw(), ExitStatus::signaled(s as i32)),
                Ok(WaitStatus::StillAlive) | Err(_) => return,
                Ok(_) => continue,
            };
            self.record(pid, status);
        }
    }

    /// Records how `pid` ended and wakes its waiters.
    pub fn record(&self, pid: i32, status: ExitStatus) {
        self.reaped.fetch_add(1, Ordering::Relaxed);
        let mut r = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        if r.len() >= KEPT {
            r.pop_front();
        }
        r.push_back((pid, status));
        self.changed.notify_all();
    }

    pub fn reaped(&self) -> u64 {
        self.reaped.load(Ordering::Relaxed)
    }

    pub fn get(&self, pid: i32) -> Option<ExitStatus> {
        let r = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        r.iter().rev().find(|(p, _)| *p == pid).map(|(_, s)| *s)
    }

    /// How `pid` ended, waiting for it until `deadline` (forever: `None`).
    pub fn wait(&self, pid: i32, deadline: Option<Instant>) -> Option<ExitStatus> {
        let mut r = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some((_, s)) = r.iter().rev().find(|(p, _)| *p == pid) {
                return Some(*s);
            }
            r = match deadline {
                None => self.changed.wait(r).unwrap_or_else(|e| e.into_inner()),
                Some(d) => {
                    let left = d.checked_duration_since(Instant::now())?;
                    self.changed.wait_timeout(r, left).unwrap_or_else(|e| e.into_inner()).0
                }
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_waiter_gets_a_status_recorded_before_or_after_it_waits() {
        let e = Arc::new(Exits::default());
        e.record(10, ExitStatus::exited(3));
        assert_eq!(e.wait(10, None), Some(ExitStatus::exited(3)));
        let e2 = e.clone();
        let h = std::thread::spawn(move || e2.wait(11, Some(Instant::now() + Duration::from_secs(10))));
        std::thread::sleep(Duration::from_millis(20));
        e.record(11, ExitStatus::signaled(9));
        assert_eq!(h.join().unwrap(), Some(ExitStatus::signaled(9)));
        assert_eq!(e.wait(12, Some(Instant::now() + Duration::from_millis(10))), None);
        assert_eq!(e.reaped(), 2);
    }

    #[test]
    fn the_table_stays_bounded() {
        let e = Exits::default();
        for pid in 0..(KEPT as i32 + 100) {
            e.record(pid, ExitStatus::exited(0));
        }
        assert_eq!(e.recent.lock().unwrap().len(), KEPT);
        assert!(e.get(0).is_none());
        assert!(e.get(KEPT as i32 + 99).is_some());
    }
}
