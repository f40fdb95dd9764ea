//! Per-connection load signals that routers read (peak-EWMA latency and a recent error rate),
//! and per-group stream counts and latencies that the scaler and analytics read.
//!
//! Peak-EWMA (as in linkerd and tower's balancer) jumps to any sample above the estimate and
//! decays toward lower samples with a time constant, so one slow answer is noticed at once and
//! forgotten gradually. This module only measures; it does not decide anything.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// How fast a latency estimate forgets a peak.
const DECAY: Duration = Duration::from_secs(10);
/// Weight of one stream's outcome in the error rate (about the last 10 streams).
const ERROR_WEIGHT: f64 = 0.1;

struct State {
    latency_ns: f64,
    latency_at: Instant,
    error_rate: f64,
    error_at: Instant,
}

/// How much of a value measured `since` ago still counts now.
fn kept(since: Instant, now: Instant) -> f64 {
    let elapsed = now.saturating_duration_since(since).as_secs_f64();
    (-elapsed / DECAY.as_secs_f64()).exp()
}

/// Load of one upstream connection.
pub(crate) struct ConnectionLoad {
    state: Mutex<State>,
}

impl ConnectionLoad {
    /// Starts from a first latency sample (the connection's PING round trip).
    pub fn new(initial_latency: Duration) -> Self {
        let now = Instant::now();
        Self {
            state: Mutex::new(State {
                latency_ns: initial_latency.as_nanos() as f64,
                latency_at: now,
                error_rate: 0.0,
                error_at: now,
            }),
        }
    }

    /// Adds a latency sample: a slower one replaces the estimate at once, a faster one pulls it
    /// down as much as the time since the last sample allows.
    pub fn observe_latency(&self, sample: Duration) {
        let sample = sample.as_nanos() as f64;
        let now = Instant::now();
        let mut state = self.state.lock();
        if sample > state.latency_ns {
            state.latency_ns = sample;
        } else {
            let keep = kept(state.latency_at, now);
            state.latency_ns = sample + (state.latency_ns - sample) * keep;
        }
        state.latency_at = now;
    }

    /// Adds a stream's outcome to the error rate.
    pub fn observe_outcome(&self, failed: bool) {
        let now = Instant::now();
        let mut state = self.state.lock();
        let sample = if failed { 1.0 } else { 0.0 };
        let rate = state.error_rate * kept(state.error_at, now);
        state.error_rate = rate * (1.0 - ERROR_WEIGHT) + sample * ERROR_WEIGHT;
        state.error_at = now;
    }

    /// The current latency estimate and error rate. Both fade toward zero while no stream
    /// reports (as tower's peak-EWMA does when a connection is idle), so a connection that was
    /// slow or failing once is tried again later rather than starved forever.
    pub fn read(&self) -> (Duration, f64) {
        let now = Instant::now();
        let state = self.state.lock();
        (
            Duration::from_nanos((state.latency_ns * kept(state.latency_at, now)) as u64),
            state.error_rate * kept(state.error_at, now),
        )
    }
}

/// Recent times to response headers kept per group (enough for a p99 over a scaler period at a
/// few hundred new streams a second; older samples make room).
const GROUP_LATENCY_SAMPLES: usize = 4096;

/// Streams placed and failed on one class group's connections, and their recent times to
/// response headers.
#[derive(Default)]
pub(crate) struct GroupCounters {
    started: AtomicU64,
    failed: AtomicU64,
    latencies: Mutex<VecDeque<(Instant, f32)>>,
}

impl GroupCounters {
    pub(super) fn stream_started(&self) {
        self.started.fetch_add(1, Relaxed);
    }

    pub(super) fn stream_failed(&self) {
        self.failed.fetch_add(1, Relaxed);
    }

    pub(super) fn observe_latency(&self, sample: Duration) {
        let mut latencies = self.latencies.lock();
        if latencies.len() == GROUP_LATENCY_SAMPLES {
            latencies.pop_front();
        }
        latencies.push_back((Instant::now(), sample.as_secs_f32() * 1e3));
    }

    /// Streams placed and streams failed since the pool started.
    pub fn totals(&self) -> (u64, u64) {
        (self.started.load(Relaxed), self.failed.load(Relaxed))
    }

    /// The `q` quantile (0..=1) of times to response headers, in milliseconds, over samples
    /// taken within `window`; `None` without samples.
    pub fn latency_quantile(&self, q: f64, window: Duration) -> Option<f64> {
        let now = Instant::now();
        let mut recent: Vec<f32> = self
            .latencies
            .lock()
            .iter()
            .filter(|(at, _)| now.saturating_duration_since(*at) <= window)
            .map(|(_, ms)| *ms)
            .collect();
        if recent.is_empty() {
            return None;
        }
        recent.sort_unstable_by(f32::total_cmp);
        let rank =
            ((recent.len() as f64 * q.clamp(0.0, 1.0)).ceil() as usize).clamp(1, recent.len());
        Some(f64::from(recent[rank - 1]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peaks_at_once_and_decays_toward_lower_samples() {
        let load = ConnectionLoad::new(Duration::from_millis(1));
        load.observe_latency(Duration::from_millis(50));
        let peak = load.read().0;
        assert!(peak > Duration::from_micros(49_900) && peak <= Duration::from_millis(50));
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

    #[test]
    fn group_quantile_over_recent_samples() {
        let counters = GroupCounters::default();
        assert_eq!(
            counters.latency_quantile(0.99, Duration::from_secs(1)),
            None
        );
        for ms in 1..=100 {
            counters.observe_latency(Duration::from_millis(ms));
        }
        assert_eq!(
            counters.latency_quantile(0.99, Duration::from_secs(60)),
            Some(99.0)
        );
        assert_eq!(
            counters.latency_quantile(0.5, Duration::from_secs(60)),
            Some(50.0)
        );
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(
            counters.latency_quantile(0.99, Duration::from_millis(5)),
            None
        );
    }

    #[test]
    fn an_idle_estimate_fades() {
        let load = ConnectionLoad::new(Duration::from_millis(100));
        let later = Instant::now() + Duration::from_secs(30);
        let state = load.state.lock();
        let faded = state.latency_ns * kept(state.latency_at, later);
        assert!(faded < 100e6 * 0.06, "after 3 time constants: {faded}");
    }
}
