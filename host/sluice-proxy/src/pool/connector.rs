//! Opening one upstream HTTP/2 connection: TCP, optional TLS (rustls, ALPN `h2`), handshake.
//!
//! The connector owns transport set-up only. What the connection is used for, and when it is
//! opened or dropped, is the pool's business.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use rustls::pki_types::ServerName;
use sluice_config::EndpointConfig;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use super::liveness::{Heard, Liveness};
use super::window::{StreamCount, StreamWindowSizing};
use crate::coalesce::{CoalescedIo, Flusher, SEND_BUFFER_BYTES, YieldFirst, coalesced};
use crate::tls::{self, TlsError};

/// Why an upstream connection could not be opened.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnectError {
    /// TCP connect failed.
    #[error("connect to {addr} failed: {source}")]
    Tcp {
        /// The address dialled.
        addr: String,
        /// The socket error.
        source: std::io::Error,
    },
    /// The TLS handshake failed.
    #[error("TLS handshake with {addr} failed: {source}")]
    Tls {
        /// The address dialled.
        addr: String,
        /// The TLS error.
        source: std::io::Error,
    },
    /// The HTTP/2 handshake failed.
    #[error("HTTP/2 handshake with {addr} failed: {source}")]
    Http2 {
        /// The address dialled.
        addr: String,
        /// The protocol error.
        source: h2::Error,
    },
    /// Nothing answered within the connect timeout.
    #[error("connect to {addr} timed out after {timeout:?}")]
    Timeout {
        /// The address dialled.
        addr: String,
        /// The configured timeout.
        timeout: Duration,
    },
}

/// HTTP/2 settings Sluice advertises on upstream connections.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Http2Settings {
    /// Receive window of each stream, by the number of streams on the connection.
    pub stream_window: StreamWindowSizing,
    /// Receive window of the connection. Large enough that every stream can fill its own window
    /// without starving the others: one stalled monitor must not stall its neighbours.
    pub connection_window: u32,
}

/// Dials one endpoint.
pub(crate) struct Connector {
    addr: String,
    tls: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
    settings: Http2Settings,
}

/// A freshly opened connection: the handle to send requests and the task that drives it.
pub(crate) struct Opened {
    /// Sends requests; cheap to clone.
    pub send_request: h2::client::SendRequest<Bytes>,
    /// The peer's SETTINGS_MAX_CONCURRENT_STREAMS, kept current by `driver`.
    pub peer_max_streams: Arc<AtomicU32>,
    /// Streams open on the connection, counted by its user; `driver` sizes the streams'
    /// receive windows by it.
    pub active_streams: Arc<StreamCount>,
    /// Must be polled (spawned) for the connection to make progress; ends when it closes.
    pub driver: Pin<Box<dyn Future<Output = Result<(), h2::Error>> + Send>>,
    /// How long the first PING took to come back: the connection's first latency sample.
    pub ping_rtt: std::time::Duration,
    /// Sends keepalive PINGs (absent only if the h2 library already handed it out).
    pub ping_pong: Option<h2::PingPong>,
    /// When the connection last heard from its peer.
    pub liveness: Arc<Liveness>,
}

impl Connector {
    /// Builds the connector, loading the CA bundle if TLS is configured.
    pub fn new(endpoint: &EndpointConfig, settings: Http2Settings) -> Result<Self, TlsError> {
        let tls = if endpoint.uses_tls() {
            let config = tls::client_config(endpoint.ca_file.as_deref())?;
            let name = endpoint
                .tls_server_name
                .clone()
                .unwrap_or_else(|| endpoint.host().to_owned());
            let server_name =
                ServerName::try_from(name.clone()).map_err(|_| TlsError::ServerName(name))?;
            Some((
                tokio_rustls::TlsConnector::from(Arc::new(config)),
                server_name,
            ))
        } else {
            None
        };
        Ok(Self {
            addr: endpoint.authority().to_owned(),
            tls,
            settings,
        })
    }

    /// Opens a connection within `timeout`.
    pub async fn connect(&self, timeout: Duration) -> Result<Opened, ConnectError> {
        match tokio::time::timeout(timeout, self.connect_inner()).await {
            Ok(result) => result,
            Err(_) => Err(ConnectError::Timeout {
                addr: self.addr.clone(),
                timeout,
            }),
        }
    }

    async fn connect_inner(&self) -> Result<Opened, ConnectError> {
        let tcp = TcpStream::connect(&self.addr)
            .await
            .map_err(|source| ConnectError::Tcp {
                addr: self.addr.clone(),
                source,
            })?;
        // Small gRPC messages must not wait for Nagle's algorithm.
        let _ = tcp.set_nodelay(true);
        match &self.tls {
            None => self.handshake(tcp).await,
            Some((connector, name)) => {
                let stream = connector
                    .connect(name.clone(), tcp)
                    .await
                    .map_err(|source| ConnectError::Tls {
                        addr: self.addr.clone(),
                        source,
                    })?;
                self.handshake(stream).await
            }
        }
    }

    async fn handshake<T>(&self, io: T) -> Result<Opened, ConnectError>
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let liveness = Liveness::new();
        let (io, flusher) = coalesced(Heard::new(io, Arc::clone(&liveness)));
        let (send_request, mut connection) = h2::client::Builder::new()
            .initial_window_size(self.settings.stream_window.floor)
            .initial_connection_window_size(self.settings.connection_window)
            .max_frame_size(64 * 1024)
            .max_send_buffer_size(SEND_BUFFER_BYTES.min(self.settings.stream_window.floor as usize))
            .enable_push(false)
            .handshake::<_, Bytes>(io)
            .await
            .map_err(|source| ConnectError::Http2 {
                addr: self.addr.clone(),
                source,
            })?;
        let mut ping_pong = connection.ping_pong();
        let peer_max_streams = Arc::new(AtomicU32::new(0));
        let active_streams = Arc::new(StreamCount::new(self.settings.stream_window));
        let mut driver: Pin<Box<dyn Future<Output = Result<(), h2::Error>> + Send>> =
            Box::pin(YieldFirst::new(Driver {
                connection,
                flusher,
                peer_max_streams: Arc::clone(&peer_max_streams),
                active_streams: Arc::clone(&active_streams),
                advertised_window: self.settings.stream_window.floor,
            }));
        // The peer's SETTINGS (and so its stream limit) precede its answer to our first PING:
        // waiting one round trip means no stream is ever placed over the peer's limit.
        let ping_sent = std::time::Instant::now();
        if let Some(ping_pong) = ping_pong.as_mut() {
            let settled = async {
                tokio::select! {
                    pong = ping_pong.ping(h2::Ping::opaque()) => pong,
                    ended = &mut driver => Err(ended.err().unwrap_or_else(|| h2::Error::from(h2::Reason::NO_ERROR))),
                }
            };
            settled.await.map_err(|source| ConnectError::Http2 {
                addr: self.addr.clone(),
                source,
            })?;
        }
        Ok(Opened {
            send_request,
            peer_max_streams,
            active_streams,
            driver,
            ping_rtt: ping_sent.elapsed(),
            ping_pong,
            liveness,
        })
    }
}

/// Polls the h2 connection, writes out what it buffered, and publishes the peer's stream limit
/// whenever SETTINGS change it.
struct Driver<T> {
    connection: h2::client::Connection<CoalescedIo<T>, Bytes>,
    flusher: Flusher<T>,
    peer_max_streams: Arc<AtomicU32>,
    active_streams: Arc<StreamCount>,
    /// The stream window last sent to the peer (it applies once the peer acknowledges it).
    advertised_window: u32,
}

impl<T> Driver<T>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    /// Re-sizes the streams' windows when the number of streams changed enough; whether a
    /// SETTINGS frame was queued.
    ///
    /// Only one SETTINGS frame may wait for its acknowledgement; while one does, h2 refuses
    /// another, and the change follows once the acknowledgement has been read (the connection
    /// window bounds what the streams can take meanwhile).
    fn follow_stream_count(&mut self, cx: &Context<'_>) -> bool {
        let wanted = self.active_streams.wanted_window(cx);
        if wanted == self.advertised_window
            || self.connection.set_initial_window_size(wanted).is_err()
        {
            return false;
        }
        tracing::trace!(
            from = self.advertised_window,
            to = wanted,
            "stream window resized"
        );
        self.advertised_window = wanted;
        true
    }
}

impl<T> Future for Driver<T>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    type Output = Result<(), h2::Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // Before the poll, so that the SETTINGS frame leaves ahead of the requests that caused
        // it.
        self.follow_stream_count(cx);
        let result = Pin::new(&mut self.connection).poll(cx);
        // A change refused before the poll may be accepted now that the poll has read the
        // acknowledgement of the previous one; poll again to send it.
        if result.is_pending() && self.follow_stream_count(cx) {
            cx.waker().wake_by_ref();
        }
        self.flusher.flush_deferred(cx);
        let max = self.connection.max_concurrent_send_streams();
        self.peer_max_streams
            .store(u32::try_from(max).unwrap_or(u32::MAX), Relaxed);
        result
    }
}
