//! Reading a monitor's request within bounds: bytes held per call and over all calls, and the
//! time a call has to deliver its first complete message.
//!
//! Shared and resumable methods work in whole request messages, so Sluice holds a message's
//! bytes until it is complete. Per call, a message may be no larger than the call's HTTP/2
//! window ([`request_message_limit`]), so what one call holds is bounded by what its window lets
//! the monitor send; over every call, [`RequestBudget`] (`server.max_buffered_request_bytes`)
//! bounds the total. A call past either bound is refused with `RESOURCE_EXHAUSTED`, never queued.
//! A plain call's request is not split, but its start is held the same way: [`RequestStart`]
//! reads it before the upstream stream is opened, so that a call which never sends, or is
//! refused before it does, never costs the provider a stream (and Sluice never resets streams
//! the provider has barely seen, which its rapid-reset defence would hold against every other
//! call on the connection).
//!
//! This module only bounds; what a request means is the relays' business.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use bytes::Bytes;
use h2::RecvStream;

use crate::Context;
use crate::grpc::{Code, FrameError, MessageScanner, MessageSplitter, Status};
use crate::stats::Stats;

/// Request bytes held over every call, against `server.max_buffered_request_bytes`.
#[derive(Debug)]
pub(crate) struct RequestBudget {
    limit: usize,
    held: AtomicUsize,
}

impl RequestBudget {
    /// A budget of `limit` bytes.
    pub(crate) fn new(limit: usize) -> Self {
        Self {
            limit,
            held: AtomicUsize::new(0),
        }
    }

    /// Takes `bytes` more, if they fit.
    fn take(&self, bytes: usize) -> bool {
        let mut held = self.held.load(Relaxed);
        loop {
            let Some(after) = held.checked_add(bytes).filter(|after| *after <= self.limit) else {
                return false;
            };
            match self
                .held
                .compare_exchange_weak(held, after, Relaxed, Relaxed)
            {
                Ok(_) => return true,
                Err(now) => held = now,
            }
        }
    }

    fn give_back(&self, bytes: usize) {
        self.held.fetch_sub(bytes, Relaxed);
    }
}

/// The largest request message a shared or resumable call may send: the method's message
/// limit, but never more than the call's HTTP/2 window, so that holding a message never takes
/// more than the monitor may send without Sluice reading on.
pub(crate) fn request_message_limit(ctx: &Context, max_message_bytes: usize) -> usize {
    max_message_bytes.min(ctx.config.pool.stream_window_bytes as usize)
}

/// A monitor's request messages being read, with the bytes held counted against the budget.
pub(crate) struct BoundedRequest {
    splitter: MessageSplitter,
    /// What the splitter holds, taken from the budget.
    holding: Holding,
}

impl BoundedRequest {
    /// Reads messages of at most [`request_message_limit`] bytes for a call of `ctx`.
    pub(crate) fn new(ctx: &Arc<Context>, max_message_bytes: usize) -> Self {
        Self {
            splitter: MessageSplitter::new(request_message_limit(ctx, max_message_bytes)),
            holding: Holding::new(ctx),
        }
    }

    /// Adds a chunk of the request; take its complete messages with
    /// [`BoundedRequest::next_message`] before pushing again. Fails when the bytes held would
    /// go over the budget.
    pub(crate) fn push(&mut self, chunk: Bytes) -> Result<(), Status> {
        self.splitter.push(chunk);
        self.settle()
    }

    /// The next complete message, prefix included, if one has fully arrived.
    pub(crate) fn next_message(&mut self) -> Result<Option<Bytes>, FrameError> {
        let message = self.splitter.next_message()?;
        // Giving back never fails.
        let _ = self.settle();
        Ok(message)
    }

    /// Bytes held that are not yet part of a message handed out.
    pub(crate) fn buffered(&self) -> usize {
        self.holding.bytes
    }

    /// Checks that no partial message is left over.
    pub(crate) fn finish(&self) -> Result<(), FrameError> {
        self.splitter.finish()
    }

    /// Brings the bytes taken from the budget in line with what the splitter holds.
    fn settle(&mut self) -> Result<(), Status> {
        let now = self.splitter.buffered();
        let held = self.holding.bytes;
        if now > held {
            self.holding.grow(now - held)
        } else {
            self.holding.shrink(held - now);
            Ok(())
        }
    }
}

/// Request bytes one call holds, taken from the budget and shown in
/// `sluice_request_buffered_bytes`; all given back when dropped.
struct Holding {
    ctx: Arc<Context>,
    bytes: usize,
}

impl Holding {
    fn new(ctx: &Arc<Context>) -> Self {
        Self {
            ctx: Arc::clone(ctx),
            bytes: 0,
        }
    }

    /// Takes `bytes` more from the budget; refused (and counted) when they do not fit.
    fn grow(&mut self, bytes: usize) -> Result<(), Status> {
        let stats: &Stats = &self.ctx.stats;
        if !self.ctx.request_budget.take(bytes) {
            stats.incr(|s| &s.request_buffer_refused_total);
            return Err(Status::resource_exhausted(format!(
                "sluice holds {} bytes of unfinished requests, its limit \
                 (server.max_buffered_request_bytes)",
                self.ctx.request_budget.limit
            )));
        }
        stats.add(|s| &s.request_buffered_bytes, bytes as u64);
        self.bytes += bytes;
        Ok(())
    }

    /// Gives `bytes` back.
    fn shrink(&mut self, bytes: usize) {
        self.ctx.request_budget.give_back(bytes);
        self.ctx
            .stats
            .request_buffered_bytes
            .fetch_sub(bytes as u64, Relaxed);
        self.bytes -= bytes;
    }
}

impl Drop for Holding {
    fn drop(&mut self) {
        self.shrink(self.bytes);
    }
}

/// How reading the start of a request failed.
#[derive(Debug)]
pub(crate) enum StartError {
    /// The monitor reset its stream, or its connection died.
    Cancelled,
    /// Holding more would go over `server.max_buffered_request_bytes`.
    Refused(Status),
    /// The request broke the framing rules or the size limit: the monitor's fault.
    Frame(FrameError),
}

/// The start of a plain call's request, read before the upstream stream is opened: whole once a
/// message is complete, the request ended, or a stream window's worth is held (the monitor
/// cannot send more until Sluice gives window back, which it does only as the bytes go on).
pub(crate) struct RequestStart {
    /// The chunks read, in order; their window has not been given back.
    chunks: Vec<Bytes>,
    /// The bytes of `chunks`, taken from the budget until this is dropped.
    holding: Holding,
}

impl RequestStart {
    /// Reads `body` until its request has begun, feeding `scanner` (which the relay goes on
    /// with). Bytes held are counted against the budget; nothing is given back to the monitor.
    pub(crate) async fn read(
        ctx: &Arc<Context>,
        body: &mut RecvStream,
        scanner: &mut MessageScanner,
    ) -> Result<Self, StartError> {
        let window = ctx.config.pool.stream_window_bytes as usize;
        let mut start = Self {
            chunks: Vec::new(),
            holding: Holding::new(ctx),
        };
        while scanner.completed() == 0 && !body.is_end_stream() && start.holding.bytes < window {
            let chunk = match body.data().await {
                // Ended (trailers, if any, are the relay's to forward).
                None => break,
                Some(Err(_)) => return Err(StartError::Cancelled),
                Some(Ok(chunk)) => chunk,
            };
            scanner.feed(&chunk).map_err(StartError::Frame)?;
            if body.is_end_stream() {
                scanner.finish().map_err(StartError::Frame)?;
            }
            start.hold(chunk)?;
        }
        Ok(start)
    }

    /// Whether a whole message is in (or the request ended): from then on the upstream owes
    /// the answer.
    pub(crate) fn complete(scanner: &MessageScanner, body: &RecvStream) -> bool {
        scanner.completed() > 0 || body.is_end_stream()
    }

    /// The chunks held, in order, to be sent before anything else of the request.
    pub(crate) fn take_chunks(&mut self) -> Vec<Bytes> {
        std::mem::take(&mut self.chunks)
    }

    fn hold(&mut self, chunk: Bytes) -> Result<(), StartError> {
        self.holding
            .grow(chunk.len())
            .map_err(StartError::Refused)?;
        self.chunks.push(chunk);
        Ok(())
    }
}

/// The status of a call that delivered no complete request message within `timeout`; counted.
pub(crate) fn request_timed_out(ctx: &Context, timeout: Duration) -> Status {
    ctx.stats.incr(|s| &s.request_timeouts_total);
    Status::new(
        Code::DeadlineExceeded,
        format!("no complete request message within {timeout:?} (server.request_timeout)"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_never_goes_over_its_limit() {
        let budget = RequestBudget::new(100);
        assert!(budget.take(60));
        assert!(!budget.take(41));
        assert!(budget.take(40));
        budget.give_back(100);
        assert!(budget.take(100));
        assert!(!budget.take(1));
    }
}
