//! Exit bookkeeping for the container's init process.
//!
//! The shim is a child subreaper: once `amphi create` returns, the
//! container's init is re-parented to the shim, which reaps it and so is the
//! one process that learns its exit status. [`InitProcess`] is the record
//! containerd asks about (State, Wait, Delete); [`ExitBook`] routes reaped
//! pids to it.
//!
//! There is a window in which the init can die before the shim knows its pid
//! (between the clone inside `amphi create` and the shim reading the pid
//! file). While a create is in flight the book therefore keeps the exits of
//! pids it does not know yet, and hands the matching one over when the pid
//! is registered, as containerd's own shims do.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

/// How a process ended: the status containerd reports (exit code, or
/// 128 + signal) and when the shim reaped it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    pub status: u32,
    pub at: SystemTime,
}

/// Where the init is in its life, as containerd's task status sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Created, waiting for Start.
    Created,
    /// Started and not reaped yet.
    Running,
    Stopped(Exit),
}

/// The container's init process.
#[derive(Debug)]
pub struct InitProcess {
    pid: i32,
    phase: Mutex<Phase>,
    changed: Condvar,
}

impl InitProcess {
    pub fn new(pid: i32) -> InitProcess {
        InitProcess { pid, phase: Mutex::new(Phase::Created), changed: Condvar::new() }
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }

    fn lock(&self) -> MutexGuard<'_, Phase> {
        // A panic while holding this lock cannot leave the phase half
        // written (it is a Copy value), so a poisoned lock is still valid.
        self.phase.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn phase(&self) -> Phase {
        *self.lock()
    }

    pub fn exit(&self) -> Option<Exit> {
        match self.phase() {
            Phase::Stopped(e) => Some(e),
            _ => None,
        }
    }

    /// Start succeeded. An exit recorded meanwhile stays: a workload can
    /// finish before `amphi start` has returned.
    pub fn set_running(&self) {
        let mut p = self.lock();
        if *p == Phase::Created {
            *p = Phase::Running;
        }
    }

    /// Records the exit once; later calls keep the first record and return
    /// false.
    pub fn set_exited(&self, exit: Exit) -> bool {
        let mut p = self.lock();
        if matches!(*p, Phase::Stopped(_)) {
            return false;
        }
        *p = Phase::Stopped(exit);
        self.changed.notify_all();
        true
    }

    /// Blocks until the process has been reaped.
    pub fn wait(&self) -> Exit {
        let mut p = self.lock();
        loop {
            if let Phase::Stopped(e) = *p {
                return e;
            }
            p = self.changed.wait(p).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Like [`InitProcess::wait`], giving up after `timeout`.
    pub fn wait_timeout(&self, timeout: Duration) -> Option<Exit> {
        let p = self.lock();
        let (p, _) = self
            .changed
            .wait_timeout_while(p, timeout, |p| !matches!(p, Phase::Stopped(_)))
            .unwrap_or_else(|e| e.into_inner());
        match *p {
            Phase::Stopped(e) => Some(e),
            _ => None,
        }
    }
}

/// Routes reaped pids to the process they belong to.
#[derive(Debug, Default)]
pub struct ExitBook {
    inner: Mutex<Book>,
}

#[derive(Debug, Default)]
struct Book {
    watched: HashMap<i32, Arc<InitProcess>>,
    /// Exits of unknown pids, kept only while a create is in flight.
    early: HashMap<i32, Exit>,
    creating: usize,
}

/// Holds the book open for early exits while `amphi create` runs.
#[must_use = "early exits are only kept while the guard lives"]
pub struct CreateGuard<'a>(&'a ExitBook);

impl Drop for CreateGuard<'_> {
    fn drop(&mut self) {
        let mut b = self.0.lock();
        b.creating -= 1;
        if b.creating == 0 {
            b.early.clear();
        }
    }
}

impl ExitBook {
    fn lock(&self) -> MutexGuard<'_, Book> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Call before running `amphi create`; keep the guard until the init's
    /// pid is registered with [`ExitBook::watch`].
    pub fn begin_create(&self) -> CreateGuard<'_> {
        self.lock().creating += 1;
        CreateGuard(self)
    }

    /// Registers a process. If it already died (an early exit), the exit is
    /// applied now and returned, so the caller can report it.
    pub fn watch(&self, p: Arc<InitProcess>) -> Option<Exit> {
        let mut b = self.lock();
        let early = b.early.remove(&p.pid());
        if let Some(e) = early {
            p.set_exited(e);
        } else {
            b.watched.insert(p.pid(), p.clone());
        }
        early
    }

    /// Stops routing a pid (after Delete).
    pub fn forget(&self, pid: i32) {
        self.lock().watched.remove(&pid);
    }

    /// A reaped pid: the process it belonged to (now stopped) and its exit,
    /// if the shim watches it. Each exit is reported once.
    pub fn record(&self, pid: i32, status: i32, at: SystemTime) -> Option<(Arc<InitProcess>, Exit)> {
        let exit = Exit { status: status as u32, at };
        let mut b = self.lock();
        match b.watched.remove(&pid) {
            Some(p) => p.set_exited(exit).then_some((p, exit)),
            None => {
                if b.creating > 0 {
                    b.early.insert(pid, exit);
                }
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(s)
    }

    #[test]
    fn phases_follow_create_start_exit() {
        let p = InitProcess::new(42);
        assert_eq!(p.phase(), Phase::Created);
        p.set_running();
        assert_eq!(p.phase(), Phase::Running);
        assert!(p.set_exited(Exit { status: 3, at: at(1) }));
        assert!(!p.set_exited(Exit { status: 9, at: at(2) }), "the first exit stays");
        assert_eq!(p.exit(), Some(Exit { status: 3, at: at(1) }));
        // A late set_running (start returning after a quick exit) keeps the exit.
        p.set_running();
        assert_eq!(p.phase(), Phase::Stopped(Exit { status: 3, at: at(1) }));
    }

    #[test]
    fn wait_blocks_until_the_exit_is_recorded() {
        let p = Arc::new(InitProcess::new(7));
        assert_eq!(p.wait_timeout(Duration::from_millis(10)), None);
        let waiter = {
            let p = p.clone();
            std::thread::spawn(move || p.wait())
        };
        let book = ExitBook::default();
        assert_eq!(book.watch(p.clone()), None);
        assert!(book.record(8, 0, at(5)).is_none(), "another pid");
        let (proc_, exit) = book.record(7, 137, at(5)).expect("watched pid");
        assert_eq!(proc_.pid(), 7);
        assert_eq!(exit.status, 137);
        assert_eq!(waiter.join().unwrap(), exit);
        assert!(book.record(7, 0, at(6)).is_none(), "reported once");
    }

    #[test]
    fn exits_before_the_pid_is_known_are_kept_while_creating() {
        let book = ExitBook::default();
        let guard = book.begin_create();
        assert!(book.record(100, 1, at(1)).is_none());
        let p = Arc::new(InitProcess::new(100));
        assert_eq!(book.watch(p.clone()), Some(Exit { status: 1, at: at(1) }));
        assert_eq!(p.exit().map(|e| e.status), Some(1));
        drop(guard);

        // Outside a create, unknown pids (amphi's own commands, orphans)
        // are not remembered.
        assert!(book.record(200, 0, at(2)).is_none());
        let q = Arc::new(InitProcess::new(200));
        assert_eq!(book.watch(q.clone()), None);
        assert_eq!(q.phase(), Phase::Created);
    }

    #[test]
    fn early_exits_are_dropped_when_the_last_create_ends() {
        let book = ExitBook::default();
        let g1 = book.begin_create();
        let g2 = book.begin_create();
        book.record(300, 0, at(1));
        drop(g1);
        let p = Arc::new(InitProcess::new(300));
        assert!(book.watch(p).is_some(), "still creating: kept");
        book.record(301, 0, at(1));
        drop(g2);
        assert!(book.watch(Arc::new(InitProcess::new(301))).is_none(), "cleared");
    }

    #[test]
    fn forgotten_pids_are_not_reported() {
        let book = ExitBook::default();
        let p = Arc::new(InitProcess::new(5));
        book.watch(p.clone());
        book.forget(5);
        assert!(book.record(5, 0, at(1)).is_none());
        assert_eq!(p.phase(), Phase::Created);
    }
}
