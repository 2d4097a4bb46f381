//! Task events to containerd (TaskCreate, TaskStart, TaskExit, TaskDelete).
//!
//! Events go out in order from one thread, so an RPC handler never waits
//! for containerd to take an event (containerd may itself be waiting for
//! that handler's reply). Shutdown flushes what is queued, bounded by a
//! timeout, so the TaskDelete of the last task is not lost when the shim
//! exits.

use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Mutex;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use containerd_shim::event::Event;
use containerd_shim::protos::protobuf::MessageDyn;
use containerd_shim::publisher::RemotePublisher;

/// Where the service sends events.
pub trait Publish: Send + Sync {
    fn publish(&self, topic: String, event: Box<dyn MessageDyn>);
}

/// Sends an event under its own topic.
pub fn send<E: Event + 'static>(p: &dyn Publish, e: E) {
    p.publish(e.topic(), Box::new(e));
}

/// How long one event may take to reach containerd.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(5);

type Queued = (String, Box<dyn MessageDyn>);

/// Publishes to containerd's event service from a background thread.
pub struct Publisher {
    tx: Mutex<Option<Sender<Queued>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Publisher {
    pub fn spawn(remote: RemotePublisher, namespace: String) -> std::io::Result<Publisher> {
        let (tx, rx) = channel::<Queued>();
        let thread =
            std::thread::Builder::new().name("events".into()).spawn(move || forward(remote, &namespace, rx))?;
        Ok(Publisher { tx: Mutex::new(Some(tx)), thread: Mutex::new(Some(thread)) })
    }

    /// Sends what is queued, waiting at most `timeout`, then stops.
    pub fn flush(&self, timeout: Duration) {
        self.tx.lock().unwrap_or_else(|e| e.into_inner()).take();
        let Some(t) = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take() else { return };
        let deadline = Instant::now() + timeout;
        while !t.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        if t.is_finished() {
            let _ = t.join();
        }
    }
}

impl Publish for Publisher {
    fn publish(&self, topic: String, event: Box<dyn MessageDyn>) {
        if let Some(tx) = self.tx.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            let _ = tx.send((topic, event));
        }
    }
}

fn forward(remote: RemotePublisher, namespace: &str, rx: Receiver<Queued>) {
    for (topic, event) in rx {
        let ctx = containerd_shim::protos::ttrpc::context::with_timeout(PUBLISH_TIMEOUT.as_nanos() as i64);
        if let Err(e) = remote.publish(ctx, &topic, namespace, event) {
            containerd_shim::warn!("cannot publish {topic} to containerd: {e}");
        }
    }
}

/// Keeps the events it is given, for tests.
#[cfg(test)]
#[derive(Default)]
pub struct Recorded(pub Mutex<Vec<(String, Box<dyn MessageDyn>)>>);

#[cfg(test)]
impl Publish for Recorded {
    fn publish(&self, topic: String, event: Box<dyn MessageDyn>) {
        self.0.lock().unwrap().push((topic, event));
    }
}

#[cfg(test)]
impl Recorded {
    pub fn topics(&self) -> Vec<String> {
        self.0.lock().unwrap().iter().map(|(t, _)| t.clone()).collect()
    }
}
