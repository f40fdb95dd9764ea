//! The legitimate monitor the attacks must not harm: a tonic client that subscribes again and
//! again (short `Subscribe` calls at a fixed rate, so every few hundred milliseconds a call goes
//! through admission, the breakers and placement) and counts the messages and errors it sees.
//!
//! It runs on a thread and runtime of its own, so an attack that keeps the test's runtime busy
//! cannot slow it down: what it measures is Sluice. It must not judge what it counts.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use tokio::sync::watch;

use crate::{as_monitor, pb, subscribe};

/// A message that does not come within this long counts as an error (a stalled stream).
const STALL: Duration = Duration::from_secs(2);
/// Errors whose text is kept (the first ones).
const KEPT_ERRORS: usize = 8;

/// Messages and errors counted so far (or over a window).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Count {
    /// Messages received.
    pub messages: u64,
    /// Calls that failed (an error status, a stalled stream, a failed connect).
    pub errors: u64,
    /// The longest wait for a message so far, in ms: from a call's start to its first message,
    /// or between two messages. (Over a window: the longest since the start.)
    pub longest_wait_ms: u64,
}

impl std::ops::Sub for Count {
    type Output = Count;
    fn sub(self, earlier: Count) -> Count {
        Count {
            messages: self.messages - earlier.messages,
            errors: self.errors - earlier.errors,
            longest_wait_ms: self.longest_wait_ms,
        }
    }
}

#[derive(Default)]
struct Shared {
    messages: AtomicU64,
    errors: AtomicU64,
    longest_wait_ms: AtomicU64,
    texts: parking_lot::Mutex<Vec<String>>,
}

impl Shared {
    fn error(&self, text: String) {
        self.errors.fetch_add(1, Relaxed);
        let mut texts = self.texts.lock();
        if texts.len() < KEPT_ERRORS {
            texts.push(text);
        }
    }
}

/// A legitimate monitor streaming through Sluice until stopped (or dropped).
pub struct Legit {
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Legit {
    /// Starts subscribing to `addr` as `monitor` at `rate` messages a second, each call
    /// `per_call` messages long.
    pub fn start(addr: SocketAddr, monitor: &str, rate: f64, per_call: u64) -> Self {
        let shared = Arc::new(Shared::default());
        let (stop, stopped) = watch::channel(false);
        let (counts, monitor) = (Arc::clone(&shared), monitor.to_owned());
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            match runtime {
                Ok(runtime) => {
                    runtime.block_on(run(addr, &monitor, rate, per_call, &counts, stopped))
                }
                Err(error) => counts.error(format!("no runtime: {error}")),
            }
        });
        Self {
            shared,
            stop,
            thread: Some(thread),
        }
    }

    /// What it counted so far.
    pub fn count(&self) -> Count {
        Count {
            messages: self.shared.messages.load(Relaxed),
            errors: self.shared.errors.load(Relaxed),
            longest_wait_ms: self.shared.longest_wait_ms.load(Relaxed),
        }
    }

    /// What it counts over the next `window`.
    pub async fn over(&self, window: Duration) -> Count {
        let before = self.count();
        tokio::time::sleep(window).await;
        self.count() - before
    }

    /// Waits up to `limit` until at least `messages` arrived; whether they did.
    pub async fn flowing(&self, messages: u64, limit: Duration) -> bool {
        crate::eventually(limit, || self.count().messages >= messages).await
    }

    /// The text of the first errors it saw.
    pub fn errors(&self) -> Vec<String> {
        self.shared.texts.lock().clone()
    }

    /// Stops it and waits for its thread; returns the totals.
    pub fn stop(mut self) -> Count {
        self.halt();
        self.count()
    }

    fn halt(&mut self) {
        let _ = self.stop.send(true);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Legit {
    fn drop(&mut self) {
        self.halt();
    }
}

/// Subscribes again and again until `stop`, counting into `counts`.
async fn run(
    addr: SocketAddr,
    monitor: &str,
    rate: f64,
    per_call: u64,
    counts: &Shared,
    mut stop: watch::Receiver<bool>,
) {
    let mut client = None;
    while !*stop.borrow() {
        let outcome = tokio::select! {
            outcome = one_call(addr, monitor, rate, per_call, counts, &mut client) => outcome,
            _ = stop.wait_for(|stop| *stop) => return,
        };
        if let Err(error) = outcome {
            counts.error(error);
            // A broken channel is replaced; a short pause keeps a failing Sluice from being
            // hammered.
            client = None;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// One `Subscribe` call of `per_call` messages, on `client` (connected first when `None`).
async fn one_call(
    addr: SocketAddr,
    monitor: &str,
    rate: f64,
    per_call: u64,
    counts: &Shared,
    client: &mut Option<pb::feed_client::FeedClient<tonic::transport::Channel>>,
) -> Result<(), String> {
    if client.is_none() {
        let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
            .map_err(|e| format!("uri: {e}"))?
            .connect_timeout(STALL)
            .connect()
            .await
            .map_err(|e| format!("connect: {e}"))?;
        *client = Some(pb::feed_client::FeedClient::new(channel));
    }
    let Some(client) = client.as_mut() else {
        return Err("no client".to_owned());
    };
    let mut waiting_since = tokio::time::Instant::now();
    let request = as_monitor(subscribe("legit", rate, 64, per_call), monitor);
    let mut stream = tokio::time::timeout(STALL, client.subscribe(request))
        .await
        .map_err(|_| "no response headers within 2 s".to_owned())?
        .map_err(|status| format!("subscribe: {status}"))?
        .into_inner();
    let mut received = 0;
    loop {
        match tokio::time::timeout(STALL, stream.message()).await {
            Err(_) => return Err(format!("stalled after {received} messages")),
            Ok(Err(status)) => return Err(format!("after {received} messages: {status}")),
            Ok(Ok(None)) if received == per_call => return Ok(()),
            Ok(Ok(None)) => return Err(format!("ended after {received} of {per_call}")),
            Ok(Ok(Some(_))) => {
                received += 1;
                counts.messages.fetch_add(1, Relaxed);
                let waited = waiting_since.elapsed().as_millis() as u64;
                counts.longest_wait_ms.fetch_max(waited, Relaxed);
                waiting_since = tokio::time::Instant::now();
            }
        }
    }
}
