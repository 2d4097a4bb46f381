//! Test helper: a TAP in host memory. Frames for the guest wait in a
//! queue (or come without end, for a flood); frames from the guest are
//! kept; an eventfd stands in for the TAP's fd, readable while frames
//! wait, so the worker's epoll sees it as it would a TAP.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex, MutexGuard};

use vmm_sys_util::eventfd::EventFd;

use super::tap::{GuestSlice, TapBackend, VNET_HDR_LEN};

#[derive(Default)]
pub struct State {
    /// Frames (header included) the guest is to receive.
    pub rx: VecDeque<Vec<u8>>,
    /// Endless copies of this frame once `rx` is empty.
    pub flood: Option<Vec<u8>>,
    /// Frames (header included) the guest sent.
    pub tx: Vec<Vec<u8>>,
    pub offload: Option<u32>,
    /// Calls of read_frame that returned a frame.
    pub reads: u64,
    /// Fail writes with EIO (an interface that is down).
    pub fail_writes: bool,
    /// Fail reads with EBADFD (a TAP whose interface was deleted).
    pub fail_reads: bool,
    /// Fail this many reads with EFAULT (a frame too big for the buffer,
    /// which the TAP consumes).
    pub fault_reads: u32,
}

#[derive(Clone)]
pub struct FakeTap {
    pub state: Arc<Mutex<State>>,
    evt: Arc<EventFd>,
}

impl FakeTap {
    pub fn new() -> Self {
        FakeTap { state: Arc::default(), evt: Arc::new(EventFd::new(libc::EFD_NONBLOCK).unwrap()) }
    }

    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap()
    }

    /// Queues a frame for the guest and makes the fd readable.
    pub fn push(&self, frame: Vec<u8>) {
        self.lock().rx.push_back(frame);
        self.evt.write(1).unwrap();
    }

    pub fn flood(&self, frame: Vec<u8>) {
        self.lock().flood = Some(frame);
        self.evt.write(1).unwrap();
    }

    pub fn stop_flood(&self) {
        self.lock().flood = None;
    }

    pub fn fail_reads(&self) {
        self.lock().fail_reads = true;
        self.evt.write(1).unwrap();
    }

    pub fn sent(&self) -> Vec<Vec<u8>> {
        self.lock().tx.clone()
    }

    pub fn reads(&self) -> u64 {
        self.lock().reads
    }
}

impl AsRawFd for FakeTap {
    fn as_raw_fd(&self) -> RawFd {
        self.evt.as_raw_fd()
    }
}

impl TapBackend for FakeTap {
    fn read_frame(&mut self, header: &mut [u8; VNET_HDR_LEN], data: &[GuestSlice<'_>]) -> io::Result<usize> {
        let mut s = self.state.lock().unwrap();
        if s.fail_reads {
            return Err(io::Error::from_raw_os_error(libc::EBADFD));
        }
        if s.fault_reads > 0 {
            s.fault_reads -= 1;
            return Err(io::Error::from_raw_os_error(libc::EFAULT));
        }
        let frame = match s.rx.pop_front() {
            Some(f) => f,
            None => match &s.flood {
                Some(f) => f.clone(),
                None => {
                    // Drained: the fd stops being readable.
                    let _ = self.evt.read();
                    return Err(io::ErrorKind::WouldBlock.into());
                }
            },
        };
        s.reads += 1;
        // As a TAP: the header first, then the rest in order; a frame that
        // does not fit is consumed and fails.
        let n = frame.len().min(VNET_HDR_LEN);
        header[..n].copy_from_slice(&frame[..n]);
        let mut rest = &frame[n..];
        for d in data {
            let k = rest.len().min(d.len());
            d.copy_from(&rest[..k]);
            rest = &rest[k..];
        }
        if !rest.is_empty() {
            return Err(io::Error::from_raw_os_error(libc::EFAULT));
        }
        Ok(frame.len())
    }

    fn write_frame(&mut self, header: &[u8; VNET_HDR_LEN], data: &[GuestSlice<'_>]) -> io::Result<usize> {
        let mut s = self.state.lock().unwrap();
        if s.fail_writes {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        let mut frame = header.to_vec();
        for d in data {
            let at = frame.len();
            frame.resize(at + d.len(), 0);
            d.copy_to(&mut frame[at..]);
        }
        let n = frame.len();
        s.tx.push(frame);
        Ok(n)
    }

    fn set_offload(&mut self, flags: u32) -> io::Result<()> {
        self.state.lock().unwrap().offload = Some(flags);
        Ok(())
    }
}
