//! Accepting connections: counts them in [`FeedStats`] and keeps a way to close them all at
//! once.
//!
//! tonic spawns a task per connection, so aborting the server task alone would leave accepted
//! connections (and their streams) running. To make "stop the server" mean what a dead process
//! means, every accepted socket is registered here through a duplicate descriptor, and stopping
//! shuts each one down (`shutdown(2)`), which ends the connection tasks and tells clients at
//! once, without waiting for those tasks to be scheduled.

use std::collections::HashMap;
use std::io;
use std::net::Shutdown;
use std::os::fd::AsFd;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use socket2::{SockRef, Socket};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_stream::Stream;
use tonic::transport::server::{Connected, TcpConnectInfo};

use crate::{FeedStats, ProviderLimits};

/// The listener and the live connections of one server, so that they can be closed from the
/// handle.
#[derive(Debug)]
pub(crate) struct Sockets {
    listener: Arc<TcpListener>,
    listener_closed: AtomicBool,
    killed: AtomicBool,
    next_id: AtomicU64,
    conns: Mutex<HashMap<u64, Socket>>,
}

impl Sockets {
    pub(crate) fn new(listener: Arc<TcpListener>) -> Self {
        Sockets {
            listener,
            listener_closed: AtomicBool::new(false),
            killed: AtomicBool::new(false),
            next_id: AtomicU64::new(0),
            conns: Mutex::new(HashMap::new()),
        }
    }

    fn conns(&self) -> MutexGuard<'_, HashMap<u64, Socket>> {
        // A panic while holding the lock cannot leave the map inconsistent, so poisoning is
        // ignored.
        self.conns.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stops listening. On Linux, shutting a listening socket down makes the kernel refuse new
    /// connections immediately and lets the port be bound again (with SO_REUSEADDR, which Tokio
    /// sets) even while the descriptor is still open somewhere.
    pub(crate) fn close_listener(&self) {
        if !self.listener_closed.swap(true, Ordering::SeqCst)
            && let Err(e) = SockRef::from(&*self.listener).shutdown(Shutdown::Both)
        {
            tracing::debug!(error = %e, "shutting the listener down failed");
        }
    }

    /// Closes the listener and every connection, now and for any connection accepted later.
    pub(crate) fn kill_all(&self) {
        self.killed.store(true, Ordering::SeqCst);
        self.close_listener();
        for socket in self.conns().values() {
            let _ = socket.shutdown(Shutdown::Both);
        }
    }

    /// Remembers an accepted connection; `None` when it cannot be tracked (it is then served but
    /// not closed by [`Sockets::kill_all`], which is only logged: the server stays usable).
    fn register(&self, stream: &TcpStream) -> Option<u64> {
        let dup = match stream.as_fd().try_clone_to_owned() {
            Ok(fd) => Socket::from(fd),
            Err(e) => {
                tracing::warn!(error = %e, "cannot track connection for shutdown");
                return None;
            }
        };
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut conns = self.conns();
        // Checked under the lock, so a connection accepted while the server is being killed is
        // either seen by `kill_all` or shut down here.
        if self.killed.load(Ordering::SeqCst) {
            let _ = dup.shutdown(Shutdown::Both);
            return None;
        }
        conns.insert(id, dup);
        Some(id)
    }

    fn unregister(&self, id: u64) {
        self.conns().remove(&id);
    }
}

/// The server's stream of accepted connections.
pub(crate) struct CountingIncoming {
    listener: Arc<TcpListener>,
    stats: Arc<FeedStats>,
    sockets: Arc<Sockets>,
    limits: ProviderLimits,
}

impl CountingIncoming {
    pub(crate) fn new(
        listener: Arc<TcpListener>,
        stats: Arc<FeedStats>,
        sockets: Arc<Sockets>,
        limits: ProviderLimits,
    ) -> Self {
        CountingIncoming {
            listener,
            stats,
            sockets,
            limits,
        }
    }
}

impl Stream for CountingIncoming {
    type Item = io::Result<CountedStream>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.sockets.listener_closed.load(Ordering::SeqCst) {
            return Poll::Ready(None);
        }
        match this.listener.poll_accept(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Err(e)) => {
                // A listener that was shut down reports errors (EINVAL): that is the end of the
                // stream, not a failure.
                if this.sockets.listener_closed.load(Ordering::SeqCst) {
                    Poll::Ready(None)
                } else {
                    Poll::Ready(Some(Err(e)))
                }
            }
            Poll::Ready(Ok((stream, peer))) => {
                // tonic ignores its own TCP_NODELAY setting for custom incoming streams; without
                // it small responses wait for Nagle's algorithm and latency numbers mean nothing.
                if let Err(e) = stream.set_nodelay(true) {
                    tracing::debug!(error = %e, "cannot set TCP_NODELAY");
                }
                tracing::debug!(%peer, "connection accepted");
                let id = this.sockets.register(&stream);
                this.stats
                    .connections_accepted
                    .fetch_add(1, Ordering::Relaxed);
                let open = this.stats.connections_open.fetch_add(1, Ordering::Relaxed) + 1;
                this.stats
                    .connections_peak
                    .fetch_max(open, Ordering::Relaxed);
                if this.limits.too_many_connections(open) {
                    // A provider over its account's cap drops the connection: so does this one,
                    // and it counts the violation.
                    this.stats
                        .connection_violations
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%peer, open, "connection over the connection limit closed");
                    let _ = SockRef::from(&stream).shutdown(Shutdown::Both);
                }
                Poll::Ready(Some(Ok(CountedStream {
                    inner: stream,
                    id,
                    stats: this.stats.clone(),
                    sockets: this.sockets.clone(),
                })))
            }
        }
    }
}

/// An accepted connection; dropping it (when the server is done with it) updates the open
/// count.
pub(crate) struct CountedStream {
    inner: TcpStream,
    id: Option<u64>,
    stats: Arc<FeedStats>,
    sockets: Arc<Sockets>,
}

impl Drop for CountedStream {
    fn drop(&mut self) {
        self.stats.connections_open.fetch_sub(1, Ordering::Relaxed);
        if let Some(id) = self.id {
            self.sockets.unregister(id);
        }
    }
}

impl Connected for CountedStream {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

impl AsyncRead for CountedStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for CountedStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    // hyper writes HTTP/2 frames as vectored writes; forwarding them avoids a copy per frame.
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
