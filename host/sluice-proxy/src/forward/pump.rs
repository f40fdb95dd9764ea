//! Moving DATA from one HTTP/2 stream to another under flow control.
//!
//! A pump only sends what the receiving side has granted window for, and gives window back to
//! the sending side only after the bytes were handed on. So each stream buffers at most one
//! window per side, and a slow reader slows only its own stream: HTTP/2 flow control carries
//! the backpressure to the exact upstream stream that feeds it.

use std::future::poll_fn;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use h2::{RecvStream, SendStream};
use http::HeaderMap;

use crate::grpc::{FrameError, MessageScanner};

/// Why a pump stopped early.
#[derive(Debug, thiserror::Error)]
pub(super) enum PumpError {
    /// Reading failed: the source stream was reset or its connection died.
    #[error("source stream failed: {0}")]
    Source(h2::Error),
    /// The destination stream was reset by its peer (or its connection died).
    #[error("destination stream failed: {0}")]
    Sink(h2::Error),
    /// The destination refused data for longer than the lag timeout.
    #[error("destination refused data for {0:?}")]
    Lagging(Duration),
    /// A message broke the framing rules or the size limit.
    #[error(transparent)]
    Frame(#[from] FrameError),
}

/// What to do when the destination has no window left.
#[derive(Debug, Clone, Copy)]
pub(super) enum OnFull {
    /// Wait as long as it takes (flow control holds the source back).
    Wait,
    /// Give up with [`PumpError::Lagging`] after this long.
    GiveUpAfter(Duration),
}

/// How the source of a pump ended.
#[derive(Debug)]
pub(super) enum Ending {
    /// With trailers, which the caller forwards (after filtering) to end the sink.
    Trailers(HeaderMap),
    /// Without trailers; the sink has been ended already (with the last data when possible,
    /// saving a frame).
    Closed,
}

/// Copies `source` into `sink` until the source ends.
///
/// `bytes_counter` is bumped by the payload bytes moved; `on_first_data` is called once, when
/// the first bytes arrive; `on_data` after each chunk is handed on, with its bytes and the
/// messages it completed.
pub(super) async fn pump(
    source: &mut RecvStream,
    sink: &mut SendStream<Bytes>,
    scanner: &mut MessageScanner,
    on_full: OnFull,
    bytes_counter: &std::sync::atomic::AtomicU64,
    mut on_first_data: Option<&(dyn Fn() + Sync)>,
    on_data: Option<&(dyn Fn(u64, u64) + Sync)>,
) -> Result<Ending, PumpError> {
    let mut messages_seen = scanner.completed();
    loop {
        let next = tokio::select! {
            biased;
            next = source.data() => next,
            reset = poll_fn(|cx| sink.poll_reset(cx)) => {
                return Err(PumpError::Sink(reset.map_or_else(|e| e, h2::Error::from)));
            }
        };
        let Some(chunk) = next else { break };
        let chunk = chunk.map_err(PumpError::Source)?;
        if let Some(first) = on_first_data.take() {
            first();
        }
        let len = chunk.len();
        scanner.feed(&chunk)?;
        let last = source.is_end_stream();
        if last {
            scanner.finish()?;
        }
        send_all(sink, chunk, on_full, last).await?;
        bytes_counter.fetch_add(len as u64, std::sync::atomic::Ordering::Relaxed);
        if let Some(on_data) = on_data {
            let messages = scanner.completed();
            on_data(len as u64, messages - messages_seen);
            messages_seen = messages;
        }
        // The bytes are now the sink's problem; let the source send more.
        let _ = source.flow_control().release_capacity(len);
        if last {
            return Ok(Ending::Closed);
        }
    }
    scanner.finish()?;
    let trailers = tokio::select! {
        biased;
        trailers = source.trailers() => trailers.map_err(PumpError::Source)?,
        reset = poll_fn(|cx| sink.poll_reset(cx)) => {
            return Err(PumpError::Sink(reset.map_or_else(|e| e, h2::Error::from)));
        }
    };
    match trailers {
        Some(trailers) => Ok(Ending::Trailers(trailers)),
        None => {
            sink.send_data(Bytes::new(), true)
                .map_err(PumpError::Sink)?;
            Ok(Ending::Closed)
        }
    }
}

/// Sends all of `data`, in pieces as window becomes available; with `end`, the last piece ends
/// the stream.
pub(super) async fn send_all(
    sink: &mut SendStream<Bytes>,
    mut data: Bytes,
    on_full: OnFull,
    end: bool,
) -> Result<(), PumpError> {
    if data.is_empty() && end {
        return sink.send_data(data, true).map_err(PumpError::Sink);
    }
    while !data.is_empty() {
        sink.reserve_capacity(data.len());
        let mut available = sink.capacity();
        if available == 0 {
            let wait = poll_fn(|cx| poll_window(sink, cx));
            available = match on_full {
                OnFull::Wait => wait.await?,
                OnFull::GiveUpAfter(limit) => tokio::time::timeout(limit, wait)
                    .await
                    .map_err(|_| PumpError::Lagging(limit))??,
            };
        }
        let piece = data.split_to(available.min(data.len()));
        let end_here = end && data.is_empty();
        sink.send_data(piece, end_here).map_err(PumpError::Sink)?;
    }
    Ok(())
}

/// Waits until the sink has window, noticing a reset of the sink meanwhile.
pub(crate) fn poll_window(
    sink: &mut SendStream<Bytes>,
    cx: &mut Context<'_>,
) -> Poll<Result<usize, PumpError>> {
    loop {
        match sink.poll_capacity(cx) {
            Poll::Ready(Some(Ok(0))) => continue,
            Poll::Ready(Some(Ok(n))) => return Poll::Ready(Ok(n)),
            Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(PumpError::Sink(e))),
            Poll::Ready(None) => {
                return Poll::Ready(Err(PumpError::Sink(h2::Error::from(
                    h2::Reason::STREAM_CLOSED,
                ))));
            }
            Poll::Pending => {
                return match sink.poll_reset(cx) {
                    Poll::Ready(reset) => Poll::Ready(Err(PumpError::Sink(
                        reset.map_or_else(|e| e, h2::Error::from),
                    ))),
                    Poll::Pending => Poll::Pending,
                };
            }
        }
    }
}
