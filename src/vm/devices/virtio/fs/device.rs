//! The virtio-fs device (id 26): a high-priority queue and one request
//! queue, the share's tag in config space, FUSE requests answered by
//! fuse-backend-rs's server over the share's passthrough filesystem.
//!
//! The device does no filesystem work on the VMM's event loop: each device
//! has a worker thread, made with it, that activation hands the queues to
//! and that serves both of them (`event_handler.rs`); a reset stops it
//! serving and waits for it before the driver sees the reset complete, as
//! virtio requires.

use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc};

use fuse_backend_rs::api::server::{Server, MAX_BUFFER_SIZE};
use fuse_backend_rs::passthrough::PassthroughFs;
use fuse_backend_rs::transport::{Reader, VirtioFsWriter, Writer};
use fuse_virtio_queue::QueueT as _;
use virtio_bindings::bindings::virtio_ring::VIRTIO_RING_F_INDIRECT_DESC;
use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::bridge::{self, FuseMemory, FuseQueue, SharedMemory};
use super::event_handler::QueueHandler;
use super::filesystem::{open_share, ShareError, ShareFs, TAG_MAX};
use crate::vm::devices::virtio::persist::{DeviceSnapshot, PersistError, QueueSnapshot};
use crate::vm::devices::virtio::{ActivateError, VirtioDevice, VirtioInterrupt, VIRTIO_F_VERSION_1};

pub const VIRTIO_ID_FS: u32 = 26;
pub const HIPRIO_QUEUE: usize = 0;
pub const REQUEST_QUEUE: usize = 1;
/// Request queues offered (`num_request_queues`): one worker serves them.
pub const NUM_REQUEST_QUEUES: u32 = 1;
/// Large enough that a 1 MiB request (header + 256 pages) fits even when
/// the driver does not use indirect descriptors.
const QUEUE_SIZES: [u16; 2] = [128, 1024];
/// config space: `u8 tag[36]; le32 num_request_queues;`
const CONFIG_LEN: usize = TAG_MAX + 4;
/// Requests served from one queue before the worker looks at its other
/// events again (the other queue, a stop request).
pub(crate) const BUDGET: usize = 64;

/// The filesystem type every share serves.
pub type ShareServer = Server<ShareFs<PassthroughFs>>;

/// What the worker thread owns while the device is active.
pub(crate) struct Active {
    pub server: ShareServer,
    pub mem: SharedMemory,
    pub queues: Vec<FuseQueue>,
    pub interrupt: Arc<VirtioInterrupt>,
}

impl Active {
    /// Serves up to [`BUDGET`] requests from queue `q`; returns whether
    /// more are waiting.
    pub(crate) fn process_queue(&mut self, q: usize) -> bool {
        let Active { server, mem, queues, interrupt } = self;
        let mem = mem.view();
        let Some(queue) = queues.get_mut(q) else { return false };
        for _ in 0..BUDGET {
            let Some(chain) = queue.pop_descriptor_chain(mem) else { return false };
            let head = chain.head_index();
            let len = serve(server, mem, chain);
            // The head came from this queue, so only a used ring that left
            // guest memory can fail here; the chain is dropped then.
            let _ = queue.add_used(mem, head, len);
            // A lost edge only delays the guest until the next one.
            let _ = interrupt.signal_used_queue();
        }
        true
    }
}

/// The most a request or a reply can hold: the server's message limit
/// (1 MiB of data, what FUSE_INIT announces as max_write and max_pages)
/// plus a page for headers. The server refuses a header length over it.
pub const MAX_MESSAGE: usize = MAX_BUFFER_SIZE as usize + 4096;

/// Answers one FUSE request; returns the bytes written for the guest.
/// Whatever the guest put in the chain, the worst outcome is 0: nothing
/// written, the request dropped (the guest's request then never
/// completes, which only a broken or hostile driver causes).
pub(crate) fn serve(
    server: &ShareServer,
    mem: &FuseMemory,
    chain: fuse_virtio_queue::DescriptorChain<&FuseMemory>,
) -> u32 {
    // Both fail on descriptors outside guest memory or lengths that
    // overflow; neither allocates more than one entry per descriptor.
    let Ok(mut reader) = Reader::from_descriptor_chain(mem, chain.clone()) else { return 0 };
    let Ok(mut writer) = VirtioFsWriter::new(mem, chain) else { return 0 };
    // Descriptors may all point at the same guest pages, so a chain can
    // claim far more bytes than guest memory holds, and parts of the
    // server size host buffers by what the chain offers (an IOCTL copies
    // its whole input into one): neither side is let past a message.
    if reader.available_bytes() > MAX_MESSAGE && reader.split_at(MAX_MESSAGE).is_err() {
        return 0;
    }
    if writer.available_bytes() > MAX_MESSAGE && writer.split_at(MAX_MESSAGE).is_err() {
        return 0;
    }
    let room = writer.available_bytes();
    match server.handle_message(reader, Writer::from(writer), None, None) {
        Ok(n) => u32::try_from(n.min(room)).unwrap_or(u32::MAX),
        Err(_) => 0,
    }
}

/// What the worker thread is told: serve these queues until the stop event.
struct Serve {
    mem: SharedMemory,
    queues: Vec<FuseQueue>,
    interrupt: Arc<VirtioInterrupt>,
}

/// What the worker answers.
enum Reply {
    Serving,
    Failed(ShareError),
    /// With the queues it served, as they were when it stopped.
    Stopped(Vec<FuseQueue>),
}

/// The device's worker thread, made with the device and living as long as
/// it does, idle while the device is not active. It is made here rather
/// than at activation because activation runs on a vCPU thread, and a
/// thread inherits the seccomp filter of the thread that makes it.
struct Worker {
    serve: mpsc::Sender<Serve>,
    replies: mpsc::Receiver<Reply>,
    stop: EventFd,
}

/// The worker's side: the share it serves, the device's queue kicks, the
/// stop event, and its channels.
struct WorkerSide {
    tag: String,
    path: PathBuf,
    read_only: bool,
    prepared: Option<ShareFs<PassthroughFs>>,
    kicks: [EventFd; 2],
    stop: EventFd,
    serve: mpsc::Receiver<Serve>,
    replies: mpsc::Sender<Reply>,
}

impl WorkerSide {
    fn run(mut self) {
        // A filesystem context of its own with umask 0 (event_handler.rs
        // says why), set before the filter, which forbids unshare.
        let _ = nix::sched::unshare(nix::sched::CloneFlags::CLONE_FS)
            .map(|()| nix::sys::stat::umask(nix::sys::stat::Mode::empty()));
        crate::vm::jail::seccomp::enter_or_exit(crate::vm::jail::seccomp::ThreadKind::Device);
        while let Ok(Serve { mem, queues, interrupt }) = self.serve.recv() {
            // A stop meant for a handler that had already ended.
            let _ = self.stop.read();
            // Each activation gets a fresh filesystem, so nothing a driver
            // opened outlives its reset.
            let fs = match self.prepared.take() {
                Some(fs) => Ok(fs),
                None => open_share(&self.tag, &self.path, self.read_only),
            };
            let dup = |e: &EventFd| e.try_clone();
            let handles = (dup(&self.kicks[HIPRIO_QUEUE]), dup(&self.kicks[REQUEST_QUEUE]), dup(&self.stop));
            let (fs, hiprio, request, stop) = match (fs, handles) {
                (Ok(fs), (Ok(h), Ok(r), Ok(s))) => (fs, h, r, s),
                (Err(e), _) => {
                    let _ = self.replies.send(Reply::Failed(e));
                    continue;
                }
                (_, (Err(source), _, _) | (_, Err(source), _) | (_, _, Err(source))) => {
                    let _ = self.replies.send(Reply::Failed(ShareError::EventFd { tag: self.tag.clone(), source }));
                    continue;
                }
            };
            let _ = self.replies.send(Reply::Serving);
            let active = Active { server: Server::new(fs), mem, queues, interrupt };
            let queues = QueueHandler::new(active, [hiprio, request], stop).run();
            let _ = self.stop.read();
            let _ = self.replies.send(Reply::Stopped(queues));
        }
    }
}

/// One shared directory.
pub struct VirtioFs {
    tag: String,
    config: [u8; CONFIG_LEN],
    acked_features: u64,
    queue_evts: Vec<EventFd>,
    worker: Worker,
    active: bool,
}

impl VirtioFs {
    /// Checks the share, prepares its filesystem and starts the device's
    /// worker; fails with an error that names the tag and the directory.
    pub fn new(tag: &str, path: &Path, read_only: bool) -> Result<Self, ShareError> {
        let fs = open_share(tag, path, read_only)?;
        let mut config = [0u8; CONFIG_LEN];
        config[..tag.len()].copy_from_slice(tag.as_bytes());
        config[TAG_MAX..].copy_from_slice(&NUM_REQUEST_QUEUES.to_le_bytes());
        let fd_err = |source| ShareError::EventFd { tag: tag.to_string(), source };
        let mut queue_evts = Vec::new();
        for _ in QUEUE_SIZES {
            queue_evts.push(EventFd::new(libc::EFD_NONBLOCK).map_err(fd_err)?);
        }
        let stop = EventFd::new(libc::EFD_NONBLOCK).map_err(fd_err)?;
        let (serve_tx, serve_rx) = mpsc::channel();
        let (reply_tx, reply_rx) = mpsc::channel();
        let side = WorkerSide {
            tag: tag.to_string(),
            path: path.to_path_buf(),
            read_only,
            prepared: Some(fs),
            kicks: [
                queue_evts[HIPRIO_QUEUE].try_clone().map_err(fd_err)?,
                queue_evts[REQUEST_QUEUE].try_clone().map_err(fd_err)?,
            ],
            stop: stop.try_clone().map_err(fd_err)?,
            serve: serve_rx,
            replies: reply_tx,
        };
        std::thread::Builder::new()
            .name("virtio-fs".into())
            .spawn(move || side.run())
            .map_err(|source| ShareError::Worker { tag: tag.to_string(), source })?;
        Ok(VirtioFs {
            tag: tag.to_string(),
            config,
            acked_features: 0,
            queue_evts,
            worker: Worker { serve: serve_tx, replies: reply_rx, stop },
            active: false,
        })
    }

    pub fn tag(&self) -> &str {
        &self.tag
    }

    pub fn is_active(&self) -> bool {
        self.active
    }

    /// Stops serving and waits for the worker to say so: it finishes the
    /// request in hand first. Waiting is what makes a reset complete
    /// (virtio 1.2, 2.4: the device must be done with the queues before
    /// the driver reuses them). Returns the queues the worker handed back;
    /// `None` if the device was not active or the worker is gone.
    fn stop_worker(&mut self) -> Option<Vec<FuseQueue>> {
        if !std::mem::take(&mut self.active) {
            return None;
        }
        let _ = self.worker.stop.write(1);
        while let Ok(reply) = self.worker.replies.recv() {
            if let Reply::Stopped(queues) = reply {
                return Some(queues);
            }
        }
        None
    }

    fn start_worker(
        &mut self,
        mem: GuestMemoryMmap,
        interrupt: Arc<VirtioInterrupt>,
        queues: Vec<Queue>,
    ) -> Result<(), ActivateError> {
        let setup = |e: Box<dyn std::error::Error + Send + Sync>| ActivateError::Setup(e);
        let mem = bridge::view(&mem).map_err(|e| setup(e.into()))?;
        let queues = queues
            .iter()
            .enumerate()
            .map(|(i, q)| bridge::queue(i, q))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| setup(e.into()))?;
        let gone = || ActivateError::Worker(std::io::Error::other("the virtio-fs worker thread is gone"));
        self.worker.serve.send(Serve { mem, queues, interrupt }).map_err(|_| gone())?;
        match self.worker.replies.recv() {
            Ok(Reply::Serving) => {
                self.active = true;
                Ok(())
            }
            Ok(Reply::Failed(e)) => Err(setup(Box::new(e))),
            Ok(Reply::Stopped(_)) | Err(_) => Err(gone()),
        }
    }
}

impl VirtioDevice for VirtioFs {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_FS
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn queue_events(&self) -> &[EventFd] {
        &self.queue_evts
    }

    fn avail_features(&self) -> u64 {
        VIRTIO_F_VERSION_1 | 1 << VIRTIO_RING_F_INDIRECT_DESC
    }

    fn set_acked_features(&mut self, features: u64) {
        self.acked_features = features;
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        crate::vm::devices::virtio::read_config_space(&self.config, offset, data);
    }

    /// The config space is read-only.
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        interrupt: Arc<VirtioInterrupt>,
        queues: Vec<Queue>,
    ) -> Result<(), ActivateError> {
        if queues.len() != QUEUE_SIZES.len() {
            return Err(ActivateError::QueueCount { want: QUEUE_SIZES.len(), got: queues.len() });
        }
        self.stop_worker();
        self.start_worker(mem, interrupt, queues)
    }

    fn reset(&mut self) {
        self.stop_worker();
        self.acked_features = 0;
    }

    /// The queues the worker hands back when it stops (it stays stopped).
    /// The share's FUSE session is not saved: a template is taken before
    /// the guest mounts the share, and the restored device serves a fresh
    /// filesystem from its first FUSE_INIT.
    fn save(&mut self) -> Result<DeviceSnapshot, PersistError> {
        let activated = self.active;
        let queues = match self.stop_worker() {
            Some(queues) => queues.iter().map(QueueSnapshot::from).collect(),
            None if activated => return Err(PersistError::WorkerDidNotStop("virtio-fs")),
            None => Vec::new(),
        };
        Ok(DeviceSnapshot {
            device_type: VIRTIO_ID_FS,
            acked_features: self.acked_features,
            activated,
            queues,
            extra: serde_json::Value::Null,
        })
    }
}

impl Drop for VirtioFs {
    /// Tells the worker to stop without waiting for it: when the VM is gone
    /// nobody reuses the queues, and a filesystem call stuck on the host
    /// must not keep the VMM from exiting. The worker owns everything it
    /// touches (its own handle on guest memory included) and ends when it
    /// finds its channel closed.
    fn drop(&mut self) {
        if self.active {
            let _ = self.worker.stop.write(1);
        }
    }
}

#[cfg(test)]
mod tests;
