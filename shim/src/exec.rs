//! Extra processes of a container (`ctr task exec`, `docker exec`,
//! `kubectl exec`): added by Exec, started by Start with an exec id, then
//! waited for, signalled and deleted like the init.
//!
//! Start runs `amphi exec --process FILE --detach --pid-file P` with the
//! process's own stdio (pipes the shim copies, or a terminal through a
//! console socket). The exec'd process is a child of that `amphi exec`;
//! when it returns, the process is re-parented to the shim (a subreaper),
//! which reaps it and reports its exit like the init's.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::SystemTime;

use crate::process::{Exit, InitProcess, Phase};
use crate::stdio::{Io, StdioPaths};

/// One exec process of the container.
pub struct ExecProcess {
    pub id: String,
    /// The runtime-spec process, as containerd sent it (JSON).
    pub spec: Vec<u8>,
    pub stdio: StdioPaths,
    started: Mutex<Option<Arc<InitProcess>>>,
    changed: Condvar,
    pub io: Mutex<Option<Io>>,
}

impl std::fmt::Debug for ExecProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExecProcess").field("id", &self.id).field("started", &self.process()).finish()
    }
}

impl ExecProcess {
    pub fn new(id: String, spec: Vec<u8>, stdio: StdioPaths) -> ExecProcess {
        ExecProcess { id, spec, stdio, started: Mutex::new(None), changed: Condvar::new(), io: Mutex::new(None) }
    }

    fn lock(&self) -> MutexGuard<'_, Option<Arc<InitProcess>>> {
        self.started.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The running (or finished) process, once started.
    pub fn process(&self) -> Option<Arc<InitProcess>> {
        self.lock().clone()
    }

    pub fn set_started(&self, p: Arc<InitProcess>) {
        *self.lock() = Some(p);
        self.changed.notify_all();
    }

    /// Created until started; then the process's own phase.
    pub fn phase(&self) -> Phase {
        self.process().map_or(Phase::Created, |p| p.phase())
    }

    pub fn pid(&self) -> i32 {
        self.process().map_or(0, |p| p.pid())
    }

    /// Blocks until the process has been started and has exited
    /// (containerd waits on an exec before it starts it).
    pub fn wait(&self) -> Exit {
        let mut g = self.lock();
        loop {
            if let Some(p) = g.clone() {
                drop(g);
                return p.wait();
            }
            g = self.changed.wait(g).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// A process deleted without ever starting: its waiters get an exit.
    pub fn abandon(&self) {
        let mut g = self.lock();
        if g.is_none() {
            let p = Arc::new(InitProcess::new(0));
            p.set_exited(Exit { status: 0, at: SystemTime::now() });
            *g = Some(p);
            self.changed.notify_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn wait_blocks_until_started_and_exited() {
        let e = Arc::new(ExecProcess::new("e1".into(), b"{}".to_vec(), StdioPaths::default()));
        assert_eq!((e.phase(), e.pid()), (Phase::Created, 0));
        let waiter = {
            let e = e.clone();
            std::thread::spawn(move || e.wait())
        };
        std::thread::sleep(Duration::from_millis(20));
        let p = Arc::new(InitProcess::new(42));
        p.set_running();
        e.set_started(p.clone());
        assert_eq!((e.phase(), e.pid()), (Phase::Running, 42));
        let exit = Exit { status: 3, at: SystemTime::UNIX_EPOCH };
        p.set_exited(exit);
        assert_eq!(waiter.join().unwrap(), exit);
    }

    #[test]
    fn an_abandoned_exec_releases_its_waiters() {
        let e = Arc::new(ExecProcess::new("e2".into(), Vec::new(), StdioPaths::default()));
        let waiter = {
            let e = e.clone();
            std::thread::spawn(move || e.wait())
        };
        std::thread::sleep(Duration::from_millis(20));
        e.abandon();
        assert_eq!(waiter.join().unwrap().status, 0);
    }
}
