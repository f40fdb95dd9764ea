//! Sizing the receive window of an upstream connection's streams by how many share it.
//!
//! A stream's window is the most its upstream may send before Sluice has handed the bytes on,
//! so it is both the depth of the stream's pipeline and the memory a stalled monitor can pin.
//! One fast stream alone on a connection needs a deep pipeline to keep up with its upstream on
//! a busy machine; a hundred streams on one connection each need little, and together would pin
//! a hundred times as much. So a connection shares a window budget among its streams, never
//! granting a stream less than the configured per-stream window. This module only computes the
//! size; the connection's driver advertises it (HTTP/2 SETTINGS_INITIAL_WINDOW_SIZE, which
//! applies to the streams already open as well as to new ones).

use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use std::task::Context;

use futures_util::task::AtomicWaker;

/// A connection's receive window of `bytes`, cut to the largest window HTTP/2 allows.
pub(crate) fn connection_window(bytes: u64) -> u32 {
    const MAX: u32 = sluice_config::PoolConfig::MAX_WINDOW_BYTES;
    u32::try_from(bytes).map_or(MAX, |bytes| bytes.min(MAX))
}

/// How a connection sizes each stream's receive window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct StreamWindowSizing {
    /// The smallest window a stream gets, however many share the connection.
    pub floor: u32,
    /// The window the connection shares among its streams.
    pub budget: u32,
}

impl StreamWindowSizing {
    /// The window for each stream when `streams` share the connection (a connection without
    /// streams sizes for its first one).
    ///
    /// The share is rounded down to a power of two so that the size, and with it the SETTINGS
    /// frames that announce it, changes only when the stream count doubles or halves.
    pub fn for_streams(&self, streams: u32) -> u32 {
        let share = self.budget / streams.max(1);
        if share <= self.floor {
            return self.floor;
        }
        (1u32 << (u32::BITS - 1 - share.leading_zeros())).max(self.floor)
    }
}

/// The streams open on one upstream connection: counted by the pool as it leases and releases
/// slots, read by the connection's driver to size the windows.
#[derive(Debug)]
pub(crate) struct StreamCount {
    streams: AtomicU32,
    sizing: StreamWindowSizing,
    /// Woken when a change of the count changes the window, so that an otherwise idle
    /// connection still announces it.
    driver: AtomicWaker,
}

impl StreamCount {
    /// No streams yet, windows sized by `sizing`.
    pub fn new(sizing: StreamWindowSizing) -> Self {
        Self {
            streams: AtomicU32::new(0),
            sizing,
            driver: AtomicWaker::new(),
        }
    }

    /// Streams open now.
    pub fn get(&self) -> u32 {
        self.streams.load(Relaxed)
    }

    /// Takes a slot if fewer than `capacity` are taken; whether it did.
    pub fn try_add(&self, capacity: u32) -> bool {
        match self
            .streams
            .fetch_update(Relaxed, Relaxed, |n| (n < capacity).then_some(n + 1))
        {
            Ok(before) => {
                self.changed(before, before + 1);
                true
            }
            Err(_) => false,
        }
    }

    /// Takes a slot whatever the capacity.
    pub fn add(&self) {
        let before = self.streams.fetch_add(1, Relaxed);
        self.changed(before, before.saturating_add(1));
    }

    /// Gives a slot back.
    pub fn remove(&self) {
        let before = self.streams.fetch_sub(1, Relaxed);
        debug_assert!(before > 0, "a stream slot given back twice");
        self.changed(before, before.saturating_sub(1));
    }

    /// The window each stream should have now; the driver polling with `cx` is woken when it
    /// changes.
    pub fn wanted_window(&self, cx: &Context<'_>) -> u32 {
        self.driver.register(cx.waker());
        self.sizing.for_streams(self.get())
    }

    fn changed(&self, before: u32, after: u32) {
        if self.sizing.for_streams(before) != self.sizing.for_streams(after) {
            self.driver.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::WakeCounter;

    const KIB: u32 = 1024;

    #[test]
    fn few_streams_share_the_budget_and_many_get_the_floor() {
        let sizing = StreamWindowSizing {
            floor: 128 * KIB,
            budget: 1024 * KIB,
        };
        assert_eq!(sizing.for_streams(0), 1024 * KIB);
        assert_eq!(sizing.for_streams(1), 1024 * KIB);
        assert_eq!(sizing.for_streams(2), 512 * KIB);
        // 341 KiB each is rounded down, so three streams buffer no more than the budget.
        assert_eq!(sizing.for_streams(3), 256 * KIB);
        assert_eq!(sizing.for_streams(4), 256 * KIB);
        assert_eq!(sizing.for_streams(5), 128 * KIB);
        assert_eq!(sizing.for_streams(100), 128 * KIB);
        assert_eq!(sizing.for_streams(u32::MAX), 128 * KIB);
    }

    #[test]
    fn the_driver_is_woken_only_when_the_window_changes() {
        let count = StreamCount::new(StreamWindowSizing {
            floor: 128 * KIB,
            budget: 1024 * KIB,
        });
        let (wakes, waker) = WakeCounter::waker();
        let cx = Context::from_waker(&waker);
        assert_eq!(count.wanted_window(&cx), 1024 * KIB);
        // 0 -> 1 stream: the same window.
        count.add();
        assert_eq!(wakes.take(), 0);
        // 1 -> 2 streams: half the window.
        assert!(count.try_add(10));
        assert_eq!(wakes.take(), 1);
        assert_eq!(count.wanted_window(&cx), 512 * KIB);
        // A full connection refuses the slot and changes nothing.
        assert!(!count.try_add(2));
        assert_eq!((count.get(), wakes.take()), (2, 0));
        count.remove();
        assert_eq!(wakes.take(), 1);
        assert_eq!(count.wanted_window(&cx), 1024 * KIB);
    }

    #[test]
    fn connection_windows_stop_at_the_http2_limit() {
        let max = sluice_config::PoolConfig::MAX_WINDOW_BYTES;
        assert_eq!(connection_window(1 << 20), 1 << 20);
        assert_eq!(connection_window(u64::from(max)), max);
        assert_eq!(connection_window(u64::from(max) + 1), max);
        assert_eq!(connection_window(u64::MAX), max);
    }

    #[test]
    fn a_floor_that_is_not_a_power_of_two_is_still_the_minimum() {
        let sizing = StreamWindowSizing {
            floor: 65_535,
            budget: 200_000,
        };
        assert_eq!(sizing.for_streams(1), 131_072);
        assert_eq!(sizing.for_streams(3), 65_536);
        assert_eq!(sizing.for_streams(4), 65_535);
    }
}
