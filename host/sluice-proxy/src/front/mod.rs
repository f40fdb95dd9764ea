//! The front: the listener monitors connect to, as if Sluice were their upstream.
//!
//! It accepts TCP (optionally TLS), speaks HTTP/2 server-side and hands each stream to
//! `forward`. It owns connection-level concerns only: handshakes, limits and graceful shutdown.
//! Per connection, HTTP/2 itself is bounded: streams (`server.max_concurrent_streams`), header
//! list bytes (`server.max_header_list_bytes`, which also ends CONTINUATION floods), and the
//! `h2` crate's defences against rapid reset (CVE-2023-44487), PING and SETTINGS floods, which
//! stay on. Connections are bounded in total and per peer by [`limits`].

pub(crate) mod identity;
mod limits;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tracing::Instrument;

use crate::Context;
use crate::coalesce::SEND_BUFFER_BYTES;
use limits::{ConnectionLimits, ConnectionSlot, RefusalSlot};

/// Streams a peer may reset before Sluice has accepted them, per connection, before the
/// connection is closed: `h2`'s own default, stated here because it is the defence against
/// rapid reset (CVE-2023-44487).
const MAX_PENDING_ACCEPT_RESET_STREAMS: usize = 20;
/// Streams Sluice may reset because the peer broke a rule, per connection, before the connection
/// is closed with `ENHANCE_YOUR_CALM` (`h2`'s default, stated for the same reason).
const MAX_LOCAL_ERROR_RESET_STREAMS: usize = 1024;
/// How long a refused connection may take to be answered before it is dropped.
const REFUSAL_WRITE_TIME: Duration = Duration::from_secs(1);
/// Calls a refused connection may bring before its GOAWAY takes effect; each is answered with
/// the refusal's status.
const MAX_REFUSED_CALLS: usize = 16;
/// How long a refused connection's first call is waited for: a client sends it right after the
/// handshake; a connection that brings none is sent away after this.
const REFUSAL_FIRST_CALL_WAIT: Duration = Duration::from_millis(200);

/// Accepts monitor connections until `shutdown` flips to `true`.
pub(crate) async fn accept_loop(
    ctx: Arc<Context>,
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut connection_id: u64 = 0;
    let limits = ConnectionLimits::new(
        ctx.config.server.max_connections,
        ctx.config.server.max_connections_per_peer,
    );
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.wait_for(|stop| *stop) => return,
        };
        let (tcp, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // Typically EMFILE: back off instead of spinning.
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        connection_id += 1;
        let _ = tcp.set_nodelay(true);
        let span = tracing::debug_span!("monitor_connection", id = connection_id, %peer);
        let slot = match limits.admit(peer.ip()) {
            Ok(slot) => slot,
            Err(refusal) => {
                ctx.stats.incr(|s| &s.monitor_connections_refused_total);
                span.in_scope(|| tracing::debug!(%refusal, "monitor connection refused"));
                if let Some(answer) = limits.refusal_slot() {
                    let ctx = Arc::clone(&ctx);
                    let tls = tls.clone();
                    let status = crate::grpc::Status::resource_exhausted(format!(
                        "connection refused: {refusal}"
                    ));
                    tokio::spawn(refuse(ctx, tcp, tls, status, answer).instrument(span));
                }
                continue;
            }
        };
        let ctx = Arc::clone(&ctx);
        let tls = tls.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(
            async move {
                let _open = ctx.stats.hold(|s| &s.monitor_connections_active);
                serve_connection(ctx, tcp, tls, shutdown, slot).await;
            }
            .instrument(span),
        );
    }
}

/// Answers a connection over a cap: the HTTP/2 handshake, then GOAWAY, and the calls that were
/// already on their way get `status` (`RESOURCE_EXHAUSTED` naming the cap), so that the client
/// sees why rather than a reset. Every step is bounded in time and count.
async fn refuse(
    ctx: Arc<Context>,
    tcp: TcpStream,
    tls: Option<tokio_rustls::TlsAcceptor>,
    status: crate::grpc::Status,
    _answer: RefusalSlot,
) {
    let limit = ctx.config.pool.connect_timeout;
    match tls {
        None => answer_refused(&ctx, tcp, limit, &status).await,
        Some(acceptor) => {
            if let Ok(Ok(stream)) = tokio::time::timeout(limit, acceptor.accept(tcp)).await {
                answer_refused(&ctx, stream, limit, &status).await;
            }
        }
    }
}

async fn answer_refused<T>(ctx: &Context, io: T, limit: Duration, status: &crate::grpc::Status)
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    let handshake = h2_builder(ctx).handshake::<_, Bytes>(io);
    let Ok(Ok(mut connection)) = tokio::time::timeout(limit, handshake).await else {
        return;
    };
    // The calls the peer sends first get the refusal as their status; the GOAWAY that follows
    // the first answer stops the rest. A peer that sends none is sent away once the wait is up.
    let first = tokio::time::timeout(REFUSAL_FIRST_CALL_WAIT, connection.accept()).await;
    if let Ok(Some(Ok((_request, mut respond)))) = first {
        let _ = respond.send_response(status.to_response(), true);
        connection.graceful_shutdown();
        let _ = tokio::time::timeout(REFUSAL_WRITE_TIME, async {
            for _ in 1..MAX_REFUSED_CALLS {
                let Some(Ok((_request, mut respond))) = connection.accept().await else {
                    return;
                };
                let _ = respond.send_response(status.to_response(), true);
            }
        })
        .await;
    }
    connection.abrupt_shutdown(h2::Reason::ENHANCE_YOUR_CALM);
    let _ = tokio::time::timeout(REFUSAL_WRITE_TIME, async {
        while let Some(Ok(_)) = connection.accept().await {}
    })
    .await;
}

/// The HTTP/2 settings and defences of every monitor connection.
fn h2_builder(ctx: &Context) -> h2::server::Builder {
    let server = &ctx.config.server;
    let window = ctx.config.pool.stream_window_bytes;
    let max_streams = server.max_concurrent_streams;
    let mut builder = h2::server::Builder::new();
    builder
        .initial_window_size(window)
        .initial_connection_window_size(crate::pool::connection_window(
            u64::from(window) * u64::from(max_streams),
        ))
        .max_concurrent_streams(max_streams)
        .max_frame_size(64 * 1024)
        .max_header_list_size(server.max_header_list_bytes)
        .max_pending_accept_reset_streams(MAX_PENDING_ACCEPT_RESET_STREAMS)
        .max_local_error_reset_streams(Some(MAX_LOCAL_ERROR_RESET_STREAMS))
        // Bytes queued for a monitor beyond what its socket took: enough for large writes,
        // small enough that a hundred saturated streams stay within a few MiB.
        .max_send_buffer_size(SEND_BUFFER_BYTES.min(window as usize));
    builder
}

/// Serves one admitted connection; `_slot` keeps its place among the open connections.
async fn serve_connection(
    ctx: Arc<Context>,
    tcp: TcpStream,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shutdown: watch::Receiver<bool>,
    _slot: ConnectionSlot,
) {
    match tls {
        None => serve_h2(ctx, tcp, shutdown, None).await,
        Some(acceptor) => {
            let handshake =
                tokio::time::timeout(ctx.config.pool.connect_timeout, acceptor.accept(tcp)).await;
            match handshake {
                Ok(Ok(stream)) => {
                    let certified = match stream.get_ref().1.peer_certificates() {
                        // No client CA configured: no certificates asked for.
                        None => None,
                        Some(chain) => match certified_monitor(chain) {
                            Ok(name) => Some(name),
                            Err(problem) => {
                                tracing::info!(%problem, "monitor certificate refused");
                                return;
                            }
                        },
                    };
                    serve_h2(ctx, stream, shutdown, certified).await;
                }
                Ok(Err(error)) => tracing::info!(%error, "TLS handshake with monitor failed"),
                Err(_) => tracing::info!("TLS handshake with monitor timed out"),
            }
        }
    }
}

/// The monitor a verified client certificate chain names, checked like any monitor id.
fn certified_monitor(chain: &[rustls::pki_types::CertificateDer<'_>]) -> Result<Arc<str>, String> {
    let leaf = chain.first().ok_or("an empty certificate chain")?;
    let name = crate::tls::monitor_of_certificate(leaf)
        .ok_or("the certificate names no monitor (no DNS name, no common name)")?;
    sluice_config::check_monitor_id(&name)
        .map_err(|problem| format!("the certificate's name {name:?} {problem}"))?;
    Ok(Arc::from(name))
}

async fn serve_h2<T>(
    ctx: Arc<Context>,
    io: T,
    mut shutdown: watch::Receiver<bool>,
    certified: Option<Arc<str>>,
) where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (io, flusher) = crate::coalesce::coalesced(io);
    let handshake = h2_builder(&ctx).handshake::<_, Bytes>(io);
    let mut connection =
        match tokio::time::timeout(ctx.config.pool.connect_timeout, handshake).await {
            Ok(Ok(connection)) => connection,
            Ok(Err(error)) => {
                tracing::info!(%error, "HTTP/2 handshake with monitor failed");
                return;
            }
            Err(_) => {
                tracing::info!("HTTP/2 handshake with monitor timed out");
                return;
            }
        };
    let activity = Arc::new(Activity::new());
    let idle_timeout = ctx.config.server.idle_timeout;
    let idle_check = tokio::time::sleep(idle_timeout);
    tokio::pin!(idle_check);
    let mut draining = false;
    // Whether the last turn accepted a stream. The next one then accepts again at once: a
    // batch of calls that arrived together is spawned before any of them runs, so their
    // upstream requests leave in one write instead of one write per call. The frames this
    // connection buffered meanwhile are written once no stream is left to accept.
    let mut accepted = false;
    loop {
        let accept = std::future::poll_fn(|cx| {
            let next = connection.poll_accept(cx);
            if !matches!(next, std::task::Poll::Ready(Some(Ok(_)))) {
                flusher.flush_deferred(cx);
            }
            next
        });
        let accept = if accepted {
            crate::coalesce::YieldFirst::resumed(accept)
        } else {
            crate::coalesce::YieldFirst::new(accept)
        };
        accepted = false;
        let next = tokio::select! {
            next = accept => next,
            _ = shutdown.wait_for(|stop| *stop), if !draining => {
                draining = true;
                connection.graceful_shutdown();
                // Calls get the whole grace period, then a second for their final statuses.
                let grace = ctx.config.server.shutdown_grace + Duration::from_secs(1);
                idle_check.as_mut().reset(tokio::time::Instant::now() + grace);
                continue;
            }
            _ = &mut idle_check => {
                if draining {
                    // A peer that does not let the connection close after GOAWAY is cut.
                    tracing::debug!("monitor connection did not close after GOAWAY; dropping it");
                    return;
                }
                match activity.idle_for(idle_timeout) {
                    Some(remaining) => idle_check.as_mut().reset(tokio::time::Instant::now() + remaining),
                    None => {
                        tracing::debug!(?idle_timeout, "closing idle monitor connection");
                        draining = true;
                        connection.graceful_shutdown();
                        idle_check.as_mut().reset(tokio::time::Instant::now() + ctx.config.server.shutdown_grace);
                    }
                }
                continue;
            }
        };
        match next {
            Some(Ok((request, respond))) => {
                accepted = true;
                let guard = activity.stream_opened();
                let ctx = Arc::clone(&ctx);
                let certified = certified.clone();
                // Boxed: the task cell then holds a pointer, so spawning and finishing the
                // task copy a few bytes instead of the whole call future (several KiB).
                tokio::spawn(Box::pin(async move {
                    crate::forward::serve(ctx, request, respond, certified).await;
                    drop(guard);
                }));
            }
            Some(Err(error)) => {
                if !error.is_io() || !is_disconnect(&error) {
                    tracing::debug!(%error, "monitor connection error");
                }
                return;
            }
            None => return,
        }
    }
}

/// Open streams of one monitor connection and when that last changed, for the idle timeout.
struct Activity {
    open: AtomicUsize,
    base: Instant,
    last_change_ms: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Self {
            open: AtomicUsize::new(0),
            base: Instant::now(),
            last_change_ms: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_change_ms.store(ms, Relaxed);
    }

    fn stream_opened(self: &Arc<Self>) -> StreamGuard {
        self.open.fetch_add(1, Relaxed);
        self.touch();
        StreamGuard(Arc::clone(self))
    }

    /// `None` when the connection has had no stream for `limit`; otherwise how long until it
    /// could have.
    fn idle_for(&self, limit: Duration) -> Option<Duration> {
        if self.open.load(Relaxed) > 0 {
            return Some(limit);
        }
        let since = Duration::from_millis(self.last_change_ms.load(Relaxed));
        let idle = self.base.elapsed().saturating_sub(since);
        (idle < limit).then(|| limit - idle)
    }
}

struct StreamGuard(Arc<Activity>);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Relaxed);
        self.0.touch();
    }
}

fn is_disconnect(error: &h2::Error) -> bool {
    error.get_io().is_some_and(|io| {
        matches!(
            io.kind(),
            std::io::ErrorKind::ConnectionReset
                | std::io::ErrorKind::BrokenPipe
                | std::io::ErrorKind::UnexpectedEof
        )
    })
}
