//! The front: the listener monitors connect to, as if Sluice were their upstream.
//!
//! It accepts TCP (optionally TLS), speaks HTTP/2 server-side and hands each stream to
//! `forward`. It owns connection-level concerns only: handshakes, limits and graceful shutdown.

pub mod identity;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tracing::Instrument;

use crate::Context;

/// Accepts monitor connections until `shutdown` flips to `true`.
pub(crate) async fn accept_loop(
    ctx: Arc<Context>,
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut connection_id: u64 = 0;
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
        let ctx = Arc::clone(&ctx);
        let tls = tls.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(
            async move {
                serve_connection(ctx, tcp, tls, shutdown).await;
            }
            .instrument(span),
        );
    }
}

async fn serve_connection(
    ctx: Arc<Context>,
    tcp: TcpStream,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shutdown: watch::Receiver<bool>,
) {
    match tls {
        None => serve_h2(ctx, tcp, shutdown).await,
        Some(acceptor) => {
            let handshake =
                tokio::time::timeout(ctx.config.pool.connect_timeout, acceptor.accept(tcp)).await;
            match handshake {
                Ok(Ok(stream)) => serve_h2(ctx, stream, shutdown).await,
                Ok(Err(error)) => tracing::info!(%error, "TLS handshake with monitor failed"),
                Err(_) => tracing::info!("TLS handshake with monitor timed out"),
            }
        }
    }
}

async fn serve_h2<T>(ctx: Arc<Context>, io: T, mut shutdown: watch::Receiver<bool>)
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let window = ctx.config.pool.stream_window_bytes;
    let max_streams = ctx.config.server.max_concurrent_streams;
    let handshake = h2::server::Builder::new()
        .initial_window_size(window)
        .initial_connection_window_size(
            u32::try_from(u64::from(window) * u64::from(max_streams))
                .unwrap_or(u32::MAX)
                .min((1 << 31) - 1),
        )
        .max_concurrent_streams(max_streams)
        .max_frame_size(64 * 1024)
        .max_send_buffer_size(window as usize)
        .handshake::<T, Bytes>(io);
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
    let mut draining = false;
    loop {
        let next = tokio::select! {
            next = crate::coalesce::YieldFirst::new(std::future::poll_fn(|cx| connection.poll_accept(cx))) => next,
            _ = shutdown.wait_for(|stop| *stop), if !draining => {
                draining = true;
                connection.graceful_shutdown();
                continue;
            }
        };
        match next {
            Some(Ok((request, respond))) => {
                tokio::spawn(crate::forward::serve(Arc::clone(&ctx), request, respond));
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
