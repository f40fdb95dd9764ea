//! Write coalescing for HTTP/2 connection tasks.
//!
//! Stream tasks queue frames and wake their connection's task, which then writes. Polled at
//! once, the connection would issue one `writev` per stream; yielding once first lets every
//! stream task that is ready run and queue its frames, so one write carries them all. Under
//! light load this costs one scheduler round; under load it saves most of the syscalls.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

/// Wraps a future so that each wake-up is deferred by one scheduler round.
pub(crate) struct YieldFirst<F> {
    inner: F,
    yielded: bool,
}

impl<F> YieldFirst<F> {
    pub(crate) fn new(inner: F) -> Self {
        Self {
            inner,
            yielded: false,
        }
    }
}

impl<F: Future + Unpin> Future for YieldFirst<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        if !self.yielded {
            self.yielded = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        self.yielded = false;
        Pin::new(&mut self.inner).poll(cx)
    }
}
