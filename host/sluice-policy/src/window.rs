//! The failure-rate window of the plugin breaker: calls and failures of the last
//! `failure_window`, in a ring of [`BUCKETS`] buckets of a tenth of the window each.
//!
//! It is on the data path (the router is called for every new stream), so recording a call is
//! one clock read and one compare-and-swap on a single atomic, with no lock and no allocation.
//! This module only counts; whether the rate disables a plugin is the slot's decision.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// Buckets in the ring: the window slides in steps of a tenth of its length.
pub(crate) const BUCKETS: usize = 10;

/// Bits of a bucket word: its sequence number (which tenth of the window since `origin` it
/// counts), then calls, then failures. 20 bits of calls is a million per bucket; beyond that a
/// bucket saturates (its calls and failures stop growing, which keeps its rate as it was).
const COUNT_BITS: u32 = 20;
const COUNT_MAX: u64 = (1 << COUNT_BITS) - 1;
const SEQUENCE_BITS: u32 = 64 - 2 * COUNT_BITS;
const SEQUENCE_MASK: u64 = (1 << SEQUENCE_BITS) - 1;

/// Calls and failures of one plugin over the recent past.
#[derive(Debug)]
pub struct FailureWindow {
    origin: Instant,
    buckets: [AtomicU64; BUCKETS],
}

impl Default for FailureWindow {
    fn default() -> Self {
        Self {
            origin: Instant::now(),
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

/// What the window held when it was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowCounts {
    /// Calls in the window.
    pub calls: u64,
    /// Of which failed.
    pub failures: u64,
}

impl WindowCounts {
    /// Whether more than `rate` of at least `min_calls` calls failed.
    pub fn exceeds(&self, rate: f64, min_calls: u32) -> bool {
        self.calls >= u64::from(min_calls) && self.failures as f64 > rate * self.calls as f64
    }
}

impl FailureWindow {
    /// Counts one call at `now` (a failure or not); `window` is the slot's `failure_window`.
    pub(crate) fn record(&self, now: Instant, window: Duration, failed: bool) {
        let sequence = self.sequence(now, window);
        let bucket = &self.buckets[bucket_of(sequence)];
        let mut current = bucket.load(Relaxed);
        loop {
            let (mut calls, mut failures) = if current >> (2 * COUNT_BITS) == sequence {
                ((current >> COUNT_BITS) & COUNT_MAX, current & COUNT_MAX)
            } else {
                // The bucket still counts an older tenth: this call starts it afresh.
                (0, 0)
            };
            if calls < COUNT_MAX {
                calls += 1;
                failures += u64::from(failed);
            }
            let next = (sequence << (2 * COUNT_BITS)) | (calls << COUNT_BITS) | failures;
            match bucket.compare_exchange_weak(current, next, Relaxed, Relaxed) {
                Ok(_) => return,
                Err(actual) => current = actual,
            }
        }
    }

    /// The calls and failures of the window ending at `now`.
    pub(crate) fn counts(&self, now: Instant, window: Duration) -> WindowCounts {
        let newest = self.sequence(now, window);
        let mut counts = WindowCounts {
            calls: 0,
            failures: 0,
        };
        for bucket in &self.buckets {
            let word = bucket.load(Relaxed);
            let age = newest.wrapping_sub(word >> (2 * COUNT_BITS)) & SEQUENCE_MASK;
            if age < BUCKETS as u64 {
                counts.calls += (word >> COUNT_BITS) & COUNT_MAX;
                counts.failures += word & COUNT_MAX;
            }
        }
        counts
    }

    /// Forgets every call (the plugin was re-enabled or made active again).
    pub(crate) fn clear(&self) {
        for bucket in &self.buckets {
            bucket.store(0, Relaxed);
        }
    }

    /// Which tenth of `window` since `origin` holds `now`, modulo the sequence bits. Starts at
    /// 1 so that an untouched bucket (all zero) is never mistaken for the first tenth.
    fn sequence(&self, now: Instant, window: Duration) -> u64 {
        let step = (window.as_nanos() / BUCKETS as u128).max(1);
        let elapsed = now.saturating_duration_since(self.origin).as_nanos();
        let sequence = u64::try_from(elapsed / step).unwrap_or(u64::MAX);
        (sequence.wrapping_add(1)) & SEQUENCE_MASK
    }
}

fn bucket_of(sequence: u64) -> usize {
    usize::try_from(sequence % BUCKETS as u64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const WINDOW: Duration = Duration::from_secs(10);

    /// `(calls, failures)` of `window` at `now`.
    fn counted(window: &FailureWindow, now: Instant) -> (u64, u64) {
        let counts = window.counts(now, WINDOW);
        (counts.calls, counts.failures)
    }

    #[test]
    fn counts_calls_and_failures_of_the_window_only() {
        let window = FailureWindow::default();
        let start = window.origin;
        for i in 0..30 {
            window.record(start + Duration::from_millis(100 * i), WINDOW, i % 3 == 0);
        }
        let now = start + Duration::from_secs(3);
        assert_eq!(counted(&window, now), (30, 10));
        // 10.5 s after the first calls, the first second (10 calls, 4 failures) has left the
        // window.
        let later = start + Duration::from_millis(10_500);
        assert_eq!(counted(&window, later), (20, 6));
        // A minute later nothing is left, and a new call starts afresh in a reused bucket.
        let much_later = start + Duration::from_secs(60);
        assert_eq!(counted(&window, much_later), (0, 0));
        window.record(much_later, WINDOW, true);
        assert_eq!(counted(&window, much_later), (1, 1));
        window.clear();
        assert_eq!(counted(&window, much_later), (0, 0));
    }

    #[test]
    fn alternating_failures_exceed_half_at_a_failure() {
        let window = FailureWindow::default();
        let now = window.origin;
        let mut tripped_at = None;
        for call in 1..=100_u32 {
            let failed = call % 2 == 1;
            window.record(now, WINDOW, failed);
            if failed && window.counts(now, WINDOW).exceeds(0.5, 20) {
                tripped_at = Some(call);
                break;
            }
        }
        // 11 failures of 21 calls: the first failure once 20 calls were made.
        assert_eq!(tripped_at, Some(21));
        let counts = window.counts(now, WINDOW);
        assert!(!counts.exceeds(1.0, 1), "a rate of 1 never trips");
        assert!(!counts.exceeds(0.5, 22), "too few calls to judge");
    }

    #[test]
    fn concurrent_records_are_all_counted() {
        let window = std::sync::Arc::new(FailureWindow::default());
        let now = window.origin + Duration::from_millis(5);
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let window = std::sync::Arc::clone(&window);
                std::thread::spawn(move || {
                    for i in 0..1000 {
                        window.record(now, WINDOW, (i + t) % 4 == 0);
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        assert_eq!(counted(&window, now), (4000, 1000));
    }
}
