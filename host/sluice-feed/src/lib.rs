//! The feed service: a small, well-understood gRPC upstream for Sluice's demo, tests and
//! benchmarks.
//!
//! This crate owns:
//! - the generated `sluice.feed.v1` client and server ([`pb`]);
//! - the service behaviour (numbered event streams, chat echo, unary echo, collection) and its
//!   fault injection, both server-wide ([`FeedConfig`]) and per call (request metadata, see
//!   [`headers`]);
//! - a server runner ([`spawn`]) that counts connections and calls ([`FeedStats`]) and that can be
//!   stopped gracefully ([`FeedHandle::shutdown`]) or abruptly ([`FeedHandle::abort`], or dropping
//!   the handle), which is how tests make an upstream "die";
//! - the standard gRPC health service (`grpc.health.v1.Health`, see [Health checks](#health-checks));
//! - an HTTP/2 GOAWAY on demand that leaves open streams running ([`FeedHandle::goaway`]), which is
//!   how tests make an upstream drain its connections while streams flow;
//! - two binaries: `sluice-feed` (the server) and `sluice-load` (the load generator used by the
//!   benchmarks).
//!
//! # Metadata behaviour
//!
//! Every response, for all four methods and for failures too, carries:
//! - every request header whose name starts with `x-echo-`, copied into the response headers;
//! - `x-feed-name: <FeedConfig::name>` in the response headers, so a test can tell which upstream
//!   of a pool answered;
//! - `x-trailer-echo: <value>` in the trailers when the request carried `x-echo-trailer: <value>`.
//!   On a failure answered without a body (a "trailers-only" response) it is in the one header
//!   block, as gRPC carries the status there too.
//!
//! tonic has no API for a handler to add trailers to a successful response, so both echoes are
//! done by a thin service wrapper around the generated server that edits the HTTP response and
//! its final trailers frame. Only calls that ask for a trailer echo pay for the body wrapper.
//!
//! # Health checks
//!
//! Every server also serves the standard [gRPC health checking protocol][health]
//! (`grpc.health.v1.Health`, `Check` and `Watch`, from the `tonic-health` crate). Two service
//! names are known: `""` (the server as a whole) and [`FEED_SERVICE`] (`sluice.feed.v1.Feed`).
//! Both report `SERVING` from the start; [`FeedHandle::set_serving`] flips both to `NOT_SERVING`
//! and back, while the server keeps accepting connections and answering Feed calls, so a test can
//! make an endpoint fail its health checks without making it unreachable. Any other service name
//! gets `NOT_FOUND`. Health responses do not carry the metadata echo described above.
//!
//! [health]: https://github.com/grpc/grpc/blob/master/doc/health-checking.md

mod incoming;
mod metadata_echo;
mod quota;
mod service;
mod stats;

#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tonic::transport::{Identity, Server, ServerTlsConfig};
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

pub use quota::ProviderLimits;
pub use stats::{FeedStats, FeedStatsSnapshot};

/// Generated protobuf messages, client (`pb::feed_client::FeedClient`) and server
/// (`pb::feed_server`) for the `sluice.feed.v1` package. `bytes` fields are [`bytes::Bytes`].
#[allow(missing_docs, clippy::all)]
pub mod pb {
    tonic::include_proto!("sluice.feed.v1");
}

/// The gRPC service name of the feed (`sluice.feed.v1.Feed`), as used by the health service.
pub const FEED_SERVICE: &str = pb::feed_server::SERVICE_NAME;

/// Names of the request and response metadata keys the feed understands or produces.
pub mod headers {
    /// Request: fail the call at once with this gRPC status code (an integer).
    pub const FAIL_CODE: &str = "x-feed-fail-code";
    /// Request: message of the status injected by [`FAIL_CODE`].
    pub const FAIL_MESSAGE: &str = "x-feed-fail-message";
    /// Request: sleep this many milliseconds before the reply (Echo, Collect) or before each
    /// message (Subscribe, Chat).
    pub const DELAY_MS: &str = "x-feed-delay-ms";
    /// Request: end this Subscribe stream with UNAVAILABLE after this many events; `0` disables
    /// the server-wide [`crate::FeedConfig::disconnect_after`] for this stream.
    pub const DISCONNECT_AFTER: &str = "x-feed-disconnect-after";
    /// Trailer of a status injected by [`FAIL_CODE`]; its value is `injected`.
    pub const DETAIL: &str = "x-feed-detail";
    /// Prefix of request headers that are copied into the response headers.
    pub const ECHO_PREFIX: &str = "x-echo-";
    /// Request: its value is sent back in the [`TRAILER_ECHO`] trailer.
    pub const ECHO_TRAILER: &str = "x-echo-trailer";
    /// Response trailer carrying the value of the request's [`ECHO_TRAILER`].
    pub const TRAILER_ECHO: &str = "x-trailer-echo";
    /// Response header naming the server ([`crate::FeedConfig::name`]).
    pub const FEED_NAME: &str = "x-feed-name";
    /// Status details (bytes) attached to a status injected by [`FAIL_CODE`].
    pub const INJECTED_DETAILS: &[u8] = b"detail-bytes";
}

/// Largest message the server encodes or decodes. Benchmarks send 4 MiB payloads, well above
/// tonic's 4 MiB default once framing is added.
pub const MAX_MESSAGE_SIZE: usize = 16 * 1024 * 1024;

/// How long [`FeedHandle::shutdown`] lets calls finish before it closes the connections.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Server-wide behaviour, including the faults injected into every call.
#[derive(Debug, Clone, PartialEq)]
pub struct FeedConfig {
    /// Added before every call's response (its headers, for streaming calls).
    pub latency: Duration,
    /// Fraction (0..=1) of calls failed at once with UNAVAILABLE. Deterministic: a call counter
    /// decides, so 0.25 fails exactly every fourth call.
    pub error_rate: f64,
    /// End every Subscribe stream with UNAVAILABLE "injected disconnect" after this many events.
    pub disconnect_after: Option<u64>,
    /// Name reported in the `x-feed-name` response header and in logs.
    pub name: String,
    /// Answer every Feed call with this status from the start (see [`FeedHandle::refuse`]).
    pub refuse: Option<Refusal>,
    /// Connection and stream-creation limits enforced and counted as a provider's.
    pub limits: ProviderLimits,
}

/// A status the server answers every Feed call with, before anything else, as a provider does
/// when an account's quota is spent (`RESOURCE_EXHAUSTED`) or its credentials are revoked
/// (`UNAUTHENTICATED`, `PERMISSION_DENIED`). Health checks are answered as usual. Each refused
/// call counts in [`FeedStats::calls_refused`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    /// The status code.
    pub code: tonic::Code,
    /// Sent as `grpc-retry-pushback-ms` with the status, when set (negative: do not retry).
    pub pushback_ms: Option<i64>,
}

impl Default for FeedConfig {
    fn default() -> Self {
        FeedConfig {
            latency: Duration::ZERO,
            error_rate: 0.0,
            disconnect_after: None,
            name: "feed".to_owned(),
            refuse: None,
            limits: ProviderLimits::default(),
        }
    }
}

impl FeedConfig {
    /// Checks the values a server cannot work with.
    pub fn validate(&self) -> Result<(), FeedError> {
        if !(0.0..=1.0).contains(&self.error_rate) {
            return Err(FeedError::InvalidConfig(format!(
                "error_rate must be within 0..=1, got {}",
                self.error_rate
            )));
        }
        if http::HeaderValue::from_str(&self.name).is_err() {
            return Err(FeedError::InvalidConfig(format!(
                "name {:?} cannot be sent as a header value",
                self.name
            )));
        }
        Ok(())
    }
}

/// A PEM certificate chain and private key for serving TLS.
#[derive(Clone)]
pub struct TlsIdentity {
    /// The certificate chain, PEM.
    pub cert_pem: Vec<u8>,
    /// The private key, PEM.
    pub key_pem: Vec<u8>,
}

impl std::fmt::Debug for TlsIdentity {
    // The key is a secret: keep it out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsIdentity")
            .field("cert_pem", &format_args!("{} bytes", self.cert_pem.len()))
            .finish_non_exhaustive()
    }
}

impl TlsIdentity {
    /// Reads the certificate chain and key from PEM files.
    pub fn from_files(cert: &Path, key: &Path) -> Result<Self, FeedError> {
        let read = |path: &Path| {
            std::fs::read(path).map_err(|source| FeedError::ReadFile {
                path: path.display().to_string(),
                source,
            })
        };
        Ok(TlsIdentity {
            cert_pem: read(cert)?,
            key_pem: read(key)?,
        })
    }
}

/// Errors from configuring, starting or stopping a feed server.
#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    /// A [`FeedConfig`] value is out of range.
    #[error("invalid feed configuration: {0}")]
    InvalidConfig(String),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The operating system's reason.
        #[source]
        source: std::io::Error,
    },
    /// A file (certificate, key) could not be read.
    #[error("cannot read {path}: {source}")]
    ReadFile {
        /// The file.
        path: String,
        /// The operating system's reason.
        #[source]
        source: std::io::Error,
    },
    /// Some other socket operation failed.
    #[error("socket error: {0}")]
    Io(#[from] std::io::Error),
    /// The TLS identity was rejected (bad PEM, key not matching the certificate).
    #[error("invalid TLS identity: {0}")]
    Tls(#[source] tonic::transport::Error),
    /// The server stopped with an error.
    #[error("feed server failed: {0}")]
    Serve(#[source] tonic::transport::Error),
    /// The server task panicked or was cancelled.
    #[error("feed server task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// A running feed server. Dropping it stops the server abruptly, like [`FeedHandle::abort`].
#[derive(Debug)]
pub struct FeedHandle {
    /// The address the server listens on (the real port when asked for port 0).
    pub addr: SocketAddr,
    /// Live counters of the server.
    pub stats: Arc<FeedStats>,
    stop_accepting: Option<oneshot::Sender<()>>,
    drain: watch::Sender<bool>,
    task: Option<JoinHandle<Result<(), tonic::transport::Error>>>,
    sockets: Arc<incoming::Sockets>,
    health: HealthReporter,
    refusal: Arc<watch::Sender<Option<Refusal>>>,
}

impl FeedHandle {
    /// From now on, answers every new Feed call with `refusal` (`None`: serves them again).
    /// Calls already running go on.
    pub fn refuse(&self, refusal: Option<Refusal>) {
        self.refusal.send_replace(refusal);
    }

    /// [`FeedHandle::refuse`] as a function that outlives a borrow of the handle (for a task
    /// that switches refusals while the handle is kept for shutdown).
    pub fn refusal_switch(&self) -> impl Fn(Option<Refusal>) + Send + Sync + 'static {
        let refusal = Arc::clone(&self.refusal);
        move |wanted| {
            refusal.send_replace(wanted);
        }
    }

    /// Stops gracefully, giving calls [`DEFAULT_SHUTDOWN_GRACE`] to finish; see
    /// [`FeedHandle::shutdown_with_grace`].
    pub async fn shutdown(self) -> Result<(), FeedError> {
        self.shutdown_with_grace(DEFAULT_SHUTDOWN_GRACE).await
    }

    /// Stops gracefully: closes the listener, ends every Subscribe stream with UNAVAILABLE
    /// "server shutting down" (so clients can resume elsewhere), sends GOAWAY and waits up to
    /// `grace` for the remaining calls (Chat, Collect) before closing the connections.
    ///
    /// The Subscribe streams are ended at the same moment the GOAWAY is sent (in no fixed order),
    /// so a client never sees a GOAWAY while its Subscribe stream still flows; use
    /// [`FeedHandle::goaway`] for that.
    pub async fn shutdown_with_grace(mut self, grace: Duration) -> Result<(), FeedError> {
        // Closing the listen socket first makes new clients fail fast instead of completing a
        // TCP handshake with a server that will never answer.
        self.sockets.close_listener();
        self.drain.send_replace(true);
        if let Some(stop) = self.stop_accepting.take() {
            let _ = stop.send(());
        }
        let Some(mut task) = self.task.take() else {
            return Ok(());
        };
        let result = match tokio::time::timeout(grace, &mut task).await {
            Ok(joined) => match joined? {
                Ok(()) => Ok(()),
                Err(e) => Err(FeedError::Serve(e)),
            },
            Err(_elapsed) => {
                tracing::debug!("shutdown grace expired, closing the remaining connections");
                task.abort();
                Ok(())
            }
        };
        self.sockets.kill_all();
        result
    }

    /// Starts a graceful HTTP/2 drain without ending any call: closes the listener (new
    /// connections are refused) and has every open connection send GOAWAY, while the calls
    /// already open on them, Subscribe streams included, keep running to their natural end.
    ///
    /// Each connection sends a GOAWAY (NO_ERROR) whose last stream id is 2^31-1, followed by a
    /// PING; once the client answers the PING it sends a second GOAWAY naming the last stream it
    /// accepted. Clients may open no new streams on the connection after the first one. A
    /// connection closes once its last stream ends; endless Subscribe streams keep it (and
    /// [`FeedHandle::is_finished`] false) until the client cancels them or the server is stopped
    /// with [`FeedHandle::shutdown_with_grace`] (which then ends them with UNAVAILABLE),
    /// [`FeedHandle::abort`] or by dropping the handle. Calling it again does nothing.
    ///
    /// The listener is closed before this returns; the GOAWAY frames are sent by the server's
    /// connection tasks moments later (a client that needs to know waits for them, e.g. until a
    /// new call on its connection is refused).
    ///
    /// This is what tonic's graceful shutdown does (hyper's and h2's `graceful_shutdown` per
    /// connection), without the Subscribe drain that [`FeedHandle::shutdown_with_grace`] adds.
    pub fn goaway(&mut self) {
        self.sockets.close_listener();
        if let Some(stop) = self.stop_accepting.take() {
            let _ = stop.send(());
        }
    }

    /// Sets the health status reported for both `""` (the whole server) and [`FEED_SERVICE`]:
    /// `SERVING` when `serving`, else `NOT_SERVING`. Only the health service is affected: the
    /// server keeps accepting connections and serving Feed calls. `Watch` streams are notified.
    pub async fn set_serving(&self, serving: bool) {
        let status = if serving {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        for service in ["", FEED_SERVICE] {
            self.health.set_service_status(service, status).await;
        }
    }

    /// Stops at once: closes the listener and every connection (clients see the connection
    /// drop, as when an upstream process dies). Does not wait; the port can be bound again as
    /// soon as this returns. Dropping the handle does the same.
    pub fn abort(self) {
        drop(self);
    }

    fn stop_now(&mut self) {
        self.sockets.kill_all();
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }

    /// Whether the server has stopped (by itself, by an error, or by being stopped).
    pub fn is_finished(&self) -> bool {
        self.task.as_ref().is_none_or(JoinHandle::is_finished)
    }
}

impl Drop for FeedHandle {
    fn drop(&mut self) {
        self.stop_now();
    }
}

/// Starts a feed server on `addr` (port 0 picks a free port) and returns once it is listening.
///
/// With `tls`, the server speaks gRPC over TLS (HTTP/2 negotiated by ALPN); otherwise plaintext
/// HTTP/2. Must be called within a Tokio runtime; the server runs as a task of that runtime.
pub async fn spawn(
    addr: SocketAddr,
    config: FeedConfig,
    tls: Option<TlsIdentity>,
) -> Result<FeedHandle, FeedError> {
    config.validate()?;
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| FeedError::Bind { addr, source })?;
    let local_addr = listener.local_addr()?;

    let mut builder = Server::builder();
    if let Some(tls) = tls {
        let tls_config =
            ServerTlsConfig::new().identity(Identity::from_pem(tls.cert_pem, tls.key_pem));
        builder = builder.tls_config(tls_config).map_err(FeedError::Tls)?;
    }

    let stats = Arc::new(FeedStats::default());
    let (drain_tx, drain_rx) = watch::channel(false);
    let (refusal_tx, refusal_rx) = watch::channel(config.refuse);
    let name = config.name.clone();
    let limits = config.limits;
    let feed = service::FeedService::new(config, stats.clone(), drain_rx, refusal_rx);
    let grpc = pb::feed_server::FeedServer::new(feed)
        .max_decoding_message_size(MAX_MESSAGE_SIZE)
        .max_encoding_message_size(MAX_MESSAGE_SIZE);
    let (health, health_service) = tonic_health::server::health_reporter();
    // `""` (the whole server) starts as SERVING already.
    health
        .set_service_status(FEED_SERVICE, ServingStatus::Serving)
        .await;
    let router = builder
        .add_service(metadata_echo::MetadataEcho::new(grpc, &name)?)
        .add_service(health_service);

    let listener = Arc::new(listener);
    let sockets = Arc::new(incoming::Sockets::new(listener.clone()));
    let incoming =
        incoming::CountingIncoming::new(listener, stats.clone(), sockets.clone(), limits);
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let result = router
            .serve_with_incoming_shutdown(incoming, async {
                // A dropped sender (handle aborted) also ends accepting.
                let _ = stop_rx.await;
            })
            .await;
        match &result {
            Ok(()) => tracing::debug!("feed server stopped"),
            Err(e) => tracing::error!(error = %e, "feed server stopped"),
        }
        result
    });
    tracing::info!(addr = %local_addr, name = %name, "feed server listening");

    Ok(FeedHandle {
        addr: local_addr,
        stats,
        stop_accepting: Some(stop_tx),
        drain: drain_tx,
        task: Some(task),
        sockets,
        health,
        refusal: Arc::new(refusal_tx),
    })
}
