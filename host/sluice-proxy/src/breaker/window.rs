//! A sliding window of call outcomes in fixed time buckets: constant memory however many calls
//! a breaker sees, at the price of the window's edge moving one bucket at a time.

use std::time::{Duration, Instant};

/// Buckets per window.
const BUCKETS: usize = 10;

/// Calls, failures and slow calls in a window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Counts {
    pub calls: u32,
    pub failures: u32,
    pub slow: u32,
}

#[derive(Debug)]
pub(super) struct OutcomeWindow {
    bucket_span: Duration,
    /// Start of bucket `head`.
    head_start: Instant,
    head: usize,
    buckets: [Counts; BUCKETS],
}

impl OutcomeWindow {
    pub fn new(window: Duration, now: Instant) -> Self {
        Self {
            bucket_span: (window / BUCKETS as u32).max(Duration::from_millis(1)),
            head_start: now,
            head: 0,
            buckets: [Counts::default(); BUCKETS],
        }
    }

    pub fn add(&mut self, now: Instant, failed: bool, slow: bool) {
        self.rotate(now);
        let bucket = &mut self.buckets[self.head];
        bucket.calls += 1;
        bucket.failures += u32::from(failed);
        bucket.slow += u32::from(slow);
    }

    pub fn counts(&mut self, now: Instant) -> Counts {
        self.rotate(now);
        self.buckets
            .iter()
            .fold(Counts::default(), |sum, b| Counts {
                calls: sum.calls + b.calls,
                failures: sum.failures + b.failures,
                slow: sum.slow + b.slow,
            })
    }

    pub fn clear(&mut self, now: Instant) {
        self.buckets = [Counts::default(); BUCKETS];
        self.head_start = now;
    }

    /// Moves the head to the bucket holding `now`, emptying the buckets it passes.
    fn rotate(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.head_start);
        let steps = (elapsed.as_nanos() / self.bucket_span.as_nanos()) as usize;
        if steps == 0 {
            return;
        }
        for _ in 0..steps.min(BUCKETS) {
            self.head = (self.head + 1) % BUCKETS;
            self.buckets[self.head] = Counts::default();
        }
        self.head_start += self.bucket_span * steps as u32;
    }
}
