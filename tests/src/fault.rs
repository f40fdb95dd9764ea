//! A loopback TCP proxy that injects real network faults between Sluice and an upstream.
//!
//! [`FaultProxy`] forwards every connection it accepts to one upstream address, byte for byte,
//! and its behaviour can be switched at run time with [`FaultProxy::set`]: pass everything, hold
//! every byte (a peer that vanished without FIN or RST), add latency, or refuse new connections.
//! [`FaultProxy::reset_all`] aborts every connection with a TCP RST.
//!
//! ```no_run
//! # async fn example() -> std::io::Result<()> {
//! use std::time::Duration;
//! use sluice_tests::fault::{Fault, FaultProxy};
//!
//! let feed = sluice_tests::feed("up").await;
//! let proxy = FaultProxy::start(feed.addr).await?;
//! let endpoint = sluice_tests::endpoint("up", &proxy.url());
//! // ... start Sluice with `endpoint`, open streams ...
//! proxy.set(Fault::Latency(Duration::from_millis(50)));
//! proxy.set(Fault::BlackHole);
//! proxy.reset_all();
//! # Ok(())
//! # }
//! ```
//!
//! Every connection runs as one task, a child of the accept task; dropping the proxy aborts the
//! accept task, which drops the listener and aborts every connection task (closing its sockets).

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use socket2::SockRef;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

/// Size of one read, hence the largest chunk forwarded at once.
const CHUNK: usize = 16 * 1024;

/// Chunks read but not yet written, per direction (bounds memory; reading stops when full).
const IN_FLIGHT: usize = 64;

/// How long the accept loop waits after a failed `accept` (e.g. out of descriptors), so that it
/// does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(10);

/// What the proxy does to the traffic. Applies at once to every connection, open or new.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Fault {
    /// Forward bytes normally.
    #[default]
    Pass,
    /// Forward nothing, in either direction, on existing and new connections, while keeping
    /// every socket open and still accepting: a peer that vanished without FIN or RST. A
    /// connection accepted meanwhile reaches the upstream only once the fault is lifted (and
    /// not at all if its client left), as one made into a dropped route never reaches it.
    ///
    /// The proxy stops reading, so the senders' socket buffers fill up and their writes
    /// eventually block, as with a real partition. Bytes already read are held, not dropped:
    /// when the fault is lifted they are delivered, in order (a partition that heals).
    /// EOF and resets from either side go unnoticed while black-holed.
    BlackHole,
    /// Delay every forwarded chunk, in both directions, by this much after the proxy read it,
    /// keeping the byte order. Chunks are pipelined: the delay adds to latency, not to the
    /// time between chunks. A round trip through the proxy takes at least twice this.
    Latency(Duration),
    /// Accept new connections and close them at once, without reading or contacting the
    /// upstream (a plain close; the kernel sends a RST instead of a FIN when the client had
    /// already sent bytes). Open connections keep being forwarded normally.
    Refuse,
}

/// State shared by the handle, the accept task and the connection tasks.
#[derive(Debug)]
struct Shared {
    upstream: SocketAddr,
    fault: watch::Sender<Fault>,
    /// Bumped by [`FaultProxy::reset_all`]; every connection opened before watches it.
    resets: watch::Sender<u64>,
    accepted: AtomicU64,
    open: AtomicUsize,
}

/// A loopback TCP proxy with run-time switchable faults; see the [module docs](self).
///
/// Dropping it stops accepting and closes every connection (FIN, both sides).
#[derive(Debug)]
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept_task: JoinHandle<()>,
}

impl FaultProxy {
    /// Listens on a free port of 127.0.0.1 and forwards every accepted connection to
    /// `upstream`, starting in [`Fault::Pass`]. Must be called within a Tokio runtime.
    ///
    /// A connection whose upstream connection fails is reset (the client sees a RST, as it
    /// would when connecting to a closed port directly).
    pub async fn start(upstream: SocketAddr) -> io::Result<FaultProxy> {
        let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            upstream,
            fault: watch::Sender::new(Fault::Pass),
            resets: watch::Sender::new(0),
            accepted: AtomicU64::new(0),
            open: AtomicUsize::new(0),
        });
        let accept_task = tokio::spawn(accept_loop(listener, shared.clone()));
        Ok(FaultProxy {
            addr,
            shared,
            accept_task,
        })
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://<addr>`, for an endpoint URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The upstream every connection is forwarded to.
    pub fn upstream(&self) -> SocketAddr {
        self.shared.upstream
    }

    /// Switches the fault; it applies at once to open and new connections.
    pub fn set(&self, fault: Fault) {
        self.shared.fault.send_replace(fault);
    }

    /// The current fault.
    pub fn fault(&self) -> Fault {
        *self.shared.fault.borrow()
    }

    /// Aborts every open connection with a TCP RST, to the client and to the upstream
    /// (SO_LINGER 0, then close). Connections accepted afterwards are not affected.
    ///
    /// The resets are sent by the connection tasks, moments after this returns; wait on
    /// [`FaultProxy::connections`] reaching 0 to know they are all gone.
    pub fn reset_all(&self) {
        self.shared
            .resets
            .send_modify(|generation| *generation += 1);
    }

    /// Connections open now (accepted, forwarded and not yet closed).
    pub fn connections(&self) -> usize {
        self.shared.open.load(Ordering::SeqCst)
    }

    /// Connections accepted since the start, including those refused by [`Fault::Refuse`].
    pub fn accepted(&self) -> u64 {
        self.shared.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        // The accept task owns the listener and the set of connection tasks: aborting it drops
        // both, which aborts every connection task and closes all sockets.
        self.accept_task.abort();
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    // Dropped (with this task, when the proxy is) it aborts every connection task.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((client, _peer)) => {
                    shared.accepted.fetch_add(1, Ordering::SeqCst);
                    if *shared.fault.borrow() == Fault::Refuse {
                        drop(client);
                        continue;
                    }
                    // Subscribed here, at accept time, so that a reset_all() from now on
                    // covers this connection even before its task first runs.
                    let resets = shared.resets.subscribe();
                    let open = OpenGuard::new(shared.clone());
                    connections.spawn(serve(client, shared.clone(), resets, open));
                }
                Err(_) => tokio::time::sleep(ACCEPT_BACKOFF).await,
            },
            // Reaps finished connection tasks; disabled while there are none.
            Some(_) = connections.join_next() => {}
        }
    }
}

/// Counts a connection as open for as long as it lives (also when its task is aborted).
struct OpenGuard(Arc<Shared>);

impl OpenGuard {
    fn new(shared: Arc<Shared>) -> Self {
        shared.open.fetch_add(1, Ordering::SeqCst);
        OpenGuard(shared)
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Why a connection ended abnormally.
enum Abort {
    /// [`FaultProxy::reset_all`] was called.
    Reset,
    /// A read or write failed (e.g. one side reset): the other side is reset too.
    Io,
}

/// Forwards one connection until both directions end, or resets it.
async fn serve(
    mut client: TcpStream,
    shared: Arc<Shared>,
    mut resets: watch::Receiver<u64>,
    _open: OpenGuard,
) {
    // A connection made during a black hole goes nowhere, as a SYN into a dropped route does:
    // the upstream hears of it only once the fault is lifted, and not at all if the client
    // gave up meanwhile. What the client sent meanwhile is held and sent first.
    let mut held = Vec::new();
    if *shared.fault.borrow() == Fault::BlackHole {
        let mut fault = shared.fault.subscribe();
        tokio::select! {
            lifted = unblocked(&mut fault) => if lifted.is_none() { return },
            _ = resets.changed() => {
                abort(&client);
                return;
            }
        }
        // Readiness settles first, so that bytes and an EOF already in are seen.
        let _ = tokio::time::timeout(Duration::from_millis(5), client.readable()).await;
        match drain_ready(&client, &mut held) {
            ClientState::Alive => {}
            ClientState::Gone => return,
        }
    }
    let connected = tokio::select! {
        connected = TcpStream::connect(shared.upstream) => connected,
        _ = resets.changed() => {
            abort(&client);
            return;
        }
    };
    let Ok(mut upstream) = connected else {
        abort(&client);
        return;
    };
    if !held.is_empty() && upstream.write_all(&held).await.is_err() {
        abort(&client);
        return;
    }
    // Small gRPC frames must not wait for Nagle's algorithm; failing to set it only costs
    // latency.
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);

    let outcome = {
        let (client_read, client_write) = client.split();
        let (upstream_read, upstream_write) = upstream.split();
        let forward = async {
            tokio::try_join!(
                pump(client_read, upstream_write, shared.fault.subscribe()),
                pump(upstream_read, client_write, shared.fault.subscribe()),
            )
        };
        tokio::select! {
            done = forward => done.map(|_| ()).map_err(|_| Abort::Io),
            _ = resets.changed() => Err(Abort::Reset),
        }
    };
    match outcome {
        // Both directions saw EOF and passed it on: close normally.
        Ok(()) => {}
        Err(Abort::Reset | Abort::Io) => {
            abort(&client);
            abort(&upstream);
        }
    }
}

/// Whether a client is still there.
enum ClientState {
    Alive,
    Gone,
}

/// Reads what `client` sent that is ready now into `held`, and says whether it is still
/// there (no EOF, no error after it).
fn drain_ready(client: &TcpStream, held: &mut Vec<u8>) -> ClientState {
    let mut chunk = [0u8; CHUNK];
    loop {
        match client.try_read(&mut chunk) {
            Ok(0) => return ClientState::Gone,
            Ok(n) => held.extend_from_slice(&chunk[..n]),
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => return ClientState::Alive,
            Err(_) => return ClientState::Gone,
        }
    }
}

/// Makes closing `stream` (when it is dropped) send a RST instead of a FIN.
fn abort(stream: &TcpStream) {
    // Failing leaves a normal close (FIN): nothing better can be done.
    let _ = SockRef::from(stream).set_linger(Some(Duration::ZERO));
}

/// Waits while the fault is [`Fault::BlackHole`]; returns the fault in force afterwards, or
/// `None` when the proxy is gone.
async fn unblocked(fault: &mut watch::Receiver<Fault>) -> Option<Fault> {
    fault
        .wait_for(|fault| *fault != Fault::BlackHole)
        .await
        .ok()
        .map(|fault| *fault)
}

/// Forwards one direction: reads chunks from `from`, and writes each to `to` once its delay has
/// passed, then passes EOF on (shutdown of the write side).
async fn pump<R, W>(mut from: R, mut to: W, fault: watch::Receiver<Fault>) -> io::Result<()>
where
    R: AsyncReadExt + Unpin,
    W: AsyncWriteExt + Unpin,
{
    let (tx, mut rx) = mpsc::channel::<(Instant, Vec<u8>)>(IN_FLIGHT);
    let mut read_fault = fault.clone();
    let reader = async move {
        loop {
            let Some(current) = unblocked(&mut read_fault).await else {
                return Ok(());
            };
            let mut buf = vec![0; CHUNK];
            // Reading is cancel-safe, so a fault change interrupts a pending read without losing
            // bytes; the loop then re-checks the fault.
            let n = tokio::select! {
                read = from.read(&mut buf) => read?,
                _ = read_fault.changed() => continue,
            };
            if n == 0 {
                // EOF: dropping `tx` tells the writer to pass it on.
                return Ok(());
            }
            buf.truncate(n);
            let delay = match current {
                Fault::Latency(delay) => delay,
                _ => Duration::ZERO,
            };
            if tx.send((Instant::now() + delay, buf)).await.is_err() {
                return Ok(());
            }
        }
    };
    let mut write_fault = fault;
    let writer = async move {
        while let Some((due, chunk)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if unblocked(&mut write_fault).await.is_none() {
                return Ok(());
            }
            to.write_all(&chunk).await?;
        }
        to.shutdown().await
    };
    tokio::try_join!(reader, writer).map(|_| ())
}
