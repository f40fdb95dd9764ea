//! Per-connection load signals that routers read: peak-EWMA latency and a recent error rate.
//!
//! Peak-EWMA (as in linkerd and tower's balancer) jumps to any sample above the estimate and
//! decays toward lower samples with a time constant, so one slow answer is noticed at once and
//! forgotten gradually. This module only measures; it does not decide anything.

use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// How fast a latency estimate forgets a peak.
const DECAY: Duration = Duration::from_secs(10);
/// Weight of one stream's outcome in the error rate (about the last 10 streams).
const ERROR_WEIGHT: f64 = 0.1;

struct State {
    latency_ns: f64,
    sampled_at: Instant,
    error_rate: f64,
}

/// Load of one upstream connection.
pub struct ConnectionLoad {
    state: Mutex<State>,
}

impl ConnectionLoad {
    /// Starts from a first latency sample (the connection's PING round trip).
    pub fn new(initial_latency: Duration) -> Self {
        Self {
            state: Mutex::new(State {
                latency_ns: initial_latency.as_nanos() as f64,
                sampled_at: Instant::now(),
                error_rate: 0.0,
            }),
        }
    }

    /// Adds a latency sample.
    pub fn observe_latency(&self, sample: Duration) {
        let sample = sample.as_nanos() as f64;
        let now = Instant::now();
        let mut state = self.state.lock();
        if sample > state.latency_ns {
            state.latency_ns = sample;
        } else {
            let elapsed = now
                .saturating_duration_since(state.sampled_at)
                .as_secs_f64();
            let keep = (-elapsed / DECAY.as_secs_f64()).exp();
            state.latency_ns = state.latency_ns * keep + sample * (1.0 - keep);
        }
        state.sampled_at = now;
    }

    /// Adds a stream's outcome to the error rate.
    pub fn observe_outcome(&self, failed: bool) {
        let mut state = self.state.lock();
        let sample = if failed { 1.0 } else { 0.0 };
        state.error_rate = state.error_rate * (1.0 - ERROR_WEIGHT) + sample * ERROR_WEIGHT;
    }

    /// The current latency estimate and error rate.
    pub fn read(&self) -> (Duration, f64) {
        let state = self.state.lock();
        (
            Duration::from_nanos(state.latency_ns as u64),
            state.error_rate,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peaks_at_once_and_decays_toward_lower_samples() {
        let load = ConnectionLoad::new(Duration::from_millis(1));
        load.observe_latency(Duration::from_millis(50));
        assert_eq!(load.read().0, Duration::from_millis(50));
        std::thread::sleep(Duration::from_millis(20));
        load.observe_latency(Duration::from_millis(1));
        let (latency, _) = load.read();
        assert!(latency < Duration::from_millis(50) && latency > Duration::from_millis(40));
    }

    #[test]
    fn error_rate_follows_recent_outcomes() {
        let load = ConnectionLoad::new(Duration::ZERO);
        for _ in 0..30 {
            load.observe_outcome(true);
        }
        assert!(load.read().1 > 0.9);
        for _ in 0..30 {
            load.observe_outcome(false);
        }
        assert!(load.read().1 < 0.1);
    }
}
