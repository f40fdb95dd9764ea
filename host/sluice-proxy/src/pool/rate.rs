//! Per-endpoint token bucket on stream creation.
//!
//! Reservation-based: each stream takes a token at once, letting the bucket go negative, and
//! waits until its token is due. Waiters are therefore served in order, the rate holds exactly
//! whatever the burst of callers (a reconnect storm after an outage included), and the debt is
//! bounded by the queue size: a stream that would wait behind a full queue is refused.

use std::time::Duration;

use parking_lot::Mutex;
use sluice_config::RateLimitConfig;
use tokio::time::Instant;

/// Why a stream was not allowed to start.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("stream creation rate limit of {rate}/s reached and {queued} streams are already waiting")]
pub struct RateLimited {
    /// The configured rate.
    pub rate: f64,
    /// Streams waiting when this one was refused.
    pub queued: usize,
}

/// A token bucket refilled at a constant rate.
#[derive(Debug)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    queue: usize,
    state: Mutex<BucketState>,
}

#[derive(Debug)]
struct BucketState {
    /// Tokens available; negative while streams wait for tokens already promised to them.
    tokens: f64,
    refilled_at: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(config: &RateLimitConfig) -> Self {
        let burst = f64::from(config.burst());
        Self {
            rate: config.streams_per_second,
            burst,
            queue: config.queue,
            state: Mutex::new(BucketState {
                tokens: burst,
                refilled_at: Instant::now(),
            }),
        }
    }

    /// Takes a token, waiting for it if none is available now.
    pub async fn acquire(&self) -> Result<(), RateLimited> {
        let wait = self.reserve(Instant::now())?;
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        Ok(())
    }

    /// Takes a token at `now` and says how long until it is due.
    fn reserve(&self, now: Instant) -> Result<Duration, RateLimited> {
        let mut state = self.state.lock();
        let elapsed = now
            .saturating_duration_since(state.refilled_at)
            .as_secs_f64();
        state.tokens = (state.tokens + elapsed * self.rate).min(self.burst);
        state.refilled_at = now;
        if state.tokens < 1.0 {
            // Streams already holding a token that is not due yet.
            let queued = (-state.tokens).max(0.0).ceil() as usize;
            if queued >= self.queue {
                return Err(RateLimited {
                    rate: self.rate,
                    queued,
                });
            }
        }
        state.tokens -= 1.0;
        if state.tokens >= 0.0 {
            Ok(Duration::ZERO)
        } else {
            Ok(Duration::from_secs_f64(-state.tokens / self.rate))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bucket(rate: f64, burst: u32, queue: usize) -> TokenBucket {
        TokenBucket::new(&RateLimitConfig {
            streams_per_second: rate,
            burst: Some(burst),
            queue,
        })
    }

    #[test]
    fn burst_is_free_then_tokens_are_spaced_by_the_rate() {
        let b = bucket(10.0, 3, 100);
        let t = Instant::now();
        for _ in 0..3 {
            assert_eq!(b.reserve(t), Ok(Duration::ZERO));
        }
        let waits: Vec<Duration> = (0..3).map(|_| b.reserve(t).expect("queued")).collect();
        let ms: Vec<u128> = waits.iter().map(Duration::as_millis).collect();
        assert_eq!(ms, vec![100, 200, 300]);
    }

    #[test]
    fn a_full_queue_refuses() {
        let b = bucket(1.0, 1, 2);
        let t = Instant::now();
        assert!(b.reserve(t).is_ok());
        assert!(b.reserve(t).is_ok());
        assert!(b.reserve(t).is_ok());
        let refused = b.reserve(t).expect_err("queue of 2 is full");
        assert_eq!(refused.queued, 2);
        // A second later one token has been earned back.
        assert!(b.reserve(t + Duration::from_secs(1)).is_ok());
    }

    #[test]
    fn never_more_than_burst_plus_rate_times_elapsed() {
        let b = bucket(50.0, 10, 10_000);
        let t = Instant::now();
        let due: Vec<Duration> = (0..500).map(|_| b.reserve(t).expect("queued")).collect();
        for window_start in 0..500 {
            let start = due[window_start];
            let within = due
                .iter()
                .filter(|d| **d >= start && **d < start + Duration::from_secs(1));
            assert!(within.count() <= 10 + 50);
        }
        assert!(due[499] >= Duration::from_secs_f64(489.0 / 50.0));
    }
}
