//! Helpers shared by this crate's unit tests; not built outside them.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use std::task::Waker;

/// Counts the wake-ups of the wakers made from it.
#[derive(Debug, Default)]
pub(crate) struct WakeCounter(AtomicU32);

impl WakeCounter {
    /// A new counter and a waker that counts into it.
    pub(crate) fn waker() -> (Arc<Self>, Waker) {
        let counter = Arc::new(Self::default());
        let waker = Waker::from(Arc::clone(&counter));
        (counter, waker)
    }

    /// The wake-ups since the last call.
    pub(crate) fn take(&self) -> u32 {
        self.0.swap(0, Relaxed)
    }
}

impl std::task::Wake for WakeCounter {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Relaxed);
    }
}
