//! Reading a monitor's request within bounds: bytes held per call and over all calls, and the
//! time a call has to deliver its first complete message.
//!
//! Shared and resumable methods work in whole request messages, so Sluice holds a message's
//! bytes until it is complete. Per call, a message may be no larger than the call's HTTP/2
//! window ([`request_message_limit`]), so what one call holds is bounded by what its window lets
//! the monitor send; over every call, [`RequestBudget`] (`server.max_buffered_request_bytes`)
//! bounds the total. A call past either bound is refused with `RESOURCE_EXHAUSTED`, never queued.
//! This module only bounds; what a request means is the relays' business.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use bytes::Bytes;

use crate::Context;
use crate::grpc::{Code, FrameError, MessageSplitter, Status};
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
    ctx: Arc<Context>,
    /// Bytes of this call currently taken from the budget.
    held: usize,
}

impl BoundedRequest {
    /// Reads messages of at most [`request_message_limit`] bytes for a call of `ctx`.
    pub(crate) fn new(ctx: &Arc<Context>, max_message_bytes: usize) -> Self {
        Self {
            splitter: MessageSplitter::new(request_message_limit(ctx, max_message_bytes)),
            ctx: Arc::clone(ctx),
            held: 0,
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
        self.held
    }

    /// Checks that no partial message is left over.
    pub(crate) fn finish(&self) -> Result<(), FrameError> {
        self.splitter.finish()
    }

    /// Brings the bytes taken from the budget in line with what the splitter holds.
    fn settle(&mut self) -> Result<(), Status> {
        let now = self.splitter.buffered();
        let stats: &Stats = &self.ctx.stats;
        if now > self.held {
            if !self.ctx.request_budget.take(now - self.held) {
                stats.incr(|s| &s.request_buffer_refused_total);
                return Err(Status::resource_exhausted(format!(
                    "sluice holds {} bytes of unfinished requests, its limit \
                     (server.max_buffered_request_bytes)",
                    self.ctx.request_budget.limit
                )));
            }
            stats.add(|s| &s.request_buffered_bytes, (now - self.held) as u64);
        } else if now < self.held {
            self.ctx.request_budget.give_back(self.held - now);
            stats
                .request_buffered_bytes
                .fetch_sub((self.held - now) as u64, Relaxed);
        }
        self.held = now;
        Ok(())
    }
}

impl Drop for BoundedRequest {
    fn drop(&mut self) {
        self.ctx.request_budget.give_back(self.held);
        self.ctx
            .stats
            .request_buffered_bytes
            .fetch_sub(self.held as u64, Relaxed);
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
