//! Per-endpoint token bucket on stream creation.
//!
//! Waiters queue on a fair (FIFO) lock; the one at the head sleeps until a token is there and
//! takes it. Tokens accrue at the configured rate up to the burst, never beyond, so however late
//! a sleeper wakes (a busy machine) it cannot release a catch-up burst: over any interval at
//! most `burst + rate x interval` streams start, and a reconnect storm after an outage never
//! exceeds a provider's limit. The queue is bounded: a stream that would wait behind a full
//! queue is refused.

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use sluice_config::RateLimitConfig;
use tokio::time::Instant;

/// Why a stream was not allowed to start.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("stream creation rate limit of {rate}/s reached and {queued} streams are already waiting")]
pub(crate) struct RateLimited {
    /// The configured rate.
    pub rate: f64,
    /// Streams waiting when this one was refused.
    pub queued: usize,
}

/// A token bucket refilled at a constant rate.
#[derive(Debug)]
pub(crate) struct TokenBucket {
    rate: f64,
    burst: f64,
    queue: usize,
    waiting: AtomicUsize,
    state: tokio::sync::Mutex<BucketState>,
}

#[derive(Debug)]
struct BucketState {
    tokens: f64,
    refilled_at: Instant,
}

impl BucketState {
    /// Tokens in the bucket at `now`: accrued at `rate` since the last refill, up to `burst`.
    fn available(&self, now: Instant, rate: f64, burst: f64) -> f64 {
        let elapsed = now
            .saturating_duration_since(self.refilled_at)
            .as_secs_f64();
        (self.tokens + elapsed * rate).min(burst)
    }

    /// Takes a token at `now`, or says how long until one is there.
    fn take(&mut self, now: Instant, rate: f64, burst: f64) -> Result<(), Duration> {
        self.tokens = self.available(now, rate, burst);
        self.refilled_at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / rate))
        }
    }

    /// How long until a token is there at `now`, without taking it.
    fn ready_in(&self, now: Instant, rate: f64, burst: f64) -> Duration {
        let tokens = self.available(now, rate, burst);
        Duration::from_secs_f64((1.0 - tokens).max(0.0) / rate)
    }
}

/// Gives a queue place back however the wait ends (token taken, or the stream gone).
struct QueuePlace<'a>(&'a AtomicUsize);

impl Drop for QueuePlace<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(config: &RateLimitConfig) -> Self {
        let burst = f64::from(config.burst());
        Self {
            rate: config.streams_per_second,
            burst,
            queue: config.queue,
            waiting: AtomicUsize::new(0),
            state: tokio::sync::Mutex::new(BucketState {
                tokens: burst,
                refilled_at: Instant::now(),
            }),
        }
    }

    /// The sustained rate, per second.
    pub fn rate(&self) -> f64 {
        self.rate
    }

    /// Takes a token if one is at hand and nobody waits in line for one; otherwise says how
    /// long until one is (a short pause while another caller holds the bucket).
    pub fn try_take(&self) -> Result<(), Duration> {
        match self.state.try_lock() {
            Ok(mut state) => state.take(Instant::now(), self.rate, self.burst),
            Err(_) => Err(Duration::from_millis(1)),
        }
    }

    /// How long until a token is at hand (zero: one is now). Takes nothing.
    pub fn ready_in(&self) -> Duration {
        match self.state.try_lock() {
            Ok(state) => state.ready_in(Instant::now(), self.rate, self.burst),
            Err(_) => Duration::from_millis(1),
        }
    }

    /// Takes a token, waiting in line for it if none is available now.
    pub async fn acquire(&self) -> Result<(), RateLimited> {
        // A token at hand and nobody in line: no queue place needed (so `queue = 0` means "no
        // waiting", not "no streams"). The lock is fair, so this never jumps the line.
        if let Ok(mut state) = self.state.try_lock()
            && state.take(Instant::now(), self.rate, self.burst).is_ok()
        {
            return Ok(());
        }
        let queued = self.waiting.fetch_add(1, Relaxed);
        let _place = QueuePlace(&self.waiting);
        if queued >= self.queue {
            return Err(RateLimited {
                rate: self.rate,
                queued,
            });
        }
        let mut state = self.state.lock().await;
        loop {
            match state.take(Instant::now(), self.rate, self.burst) {
                Ok(()) => return Ok(()),
                Err(wait) => tokio::time::sleep(wait).await,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(tokens: f64, at: Instant) -> BucketState {
        BucketState {
            tokens,
            refilled_at: at,
        }
    }

    #[test]
    fn burst_is_free_then_tokens_come_at_the_rate() {
        let t = Instant::now();
        let mut bucket = state(3.0, t);
        for _ in 0..3 {
            assert_eq!(bucket.take(t, 10.0, 3.0), Ok(()));
        }
        assert_eq!(bucket.take(t, 10.0, 3.0), Err(Duration::from_millis(100)));
        assert_eq!(
            bucket.take(t + Duration::from_millis(100), 10.0, 3.0),
            Ok(())
        );
    }

    #[test]
    fn a_late_waker_gets_at_most_the_burst() {
        let t = Instant::now();
        let mut bucket = state(0.0, t);
        // A sleeper that wakes 10 s late finds the burst, not 10 s worth of tokens.
        let late = t + Duration::from_secs(10);
        let taken = (0..100)
            .filter(|_| bucket.take(late, 50.0, 5.0).is_ok())
            .count();
        assert_eq!(taken, 5);
    }

    #[tokio::test]
    async fn a_full_queue_refuses_and_waiters_are_served_in_order() {
        let bucket = std::sync::Arc::new(TokenBucket::new(&RateLimitConfig {
            streams_per_second: 20.0,
            burst: Some(1),
            queue: 2,
        }));
        bucket.acquire().await.expect("the burst token");
        let order = std::sync::Arc::new(parking_lot::Mutex::new(Vec::new()));
        let mut waiters = Vec::new();
        for i in 0..2 {
            let (bucket, order) = (bucket.clone(), order.clone());
            waiters.push(tokio::spawn(async move {
                bucket.acquire().await.expect("queued");
                order.lock().push(i);
            }));
            // Let each waiter take its place in line before the next.
            tokio::task::yield_now().await;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let refused = bucket.acquire().await.expect_err("the queue of 2 is full");
        assert_eq!(refused.queued, 2);
        for waiter in waiters {
            waiter.await.expect("waiter");
        }
        assert_eq!(*order.lock(), vec![0, 1]);
        // The queue emptied: the next stream waits for its token again.
        bucket.acquire().await.expect("a place again");
    }

    #[tokio::test]
    async fn a_queue_of_zero_takes_the_burst_and_refuses_waiting() {
        let bucket = TokenBucket::new(&RateLimitConfig {
            streams_per_second: 1.0,
            burst: Some(2),
            queue: 0,
        });
        bucket.acquire().await.expect("burst token 1");
        bucket.acquire().await.expect("burst token 2");
        let refused = bucket.acquire().await.expect_err("no waiting allowed");
        assert_eq!(refused.queued, 0);
    }
}
