//! Stream creation as an upstream sees it: sampled counts of started `Subscribe` streams, and
//! the check that they never outran a token bucket. Used by the rate-limit test and the
//! failover benchmark.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_feed::FeedStats;

/// Scheduling jitter allowed between Sluice letting a stream go and the server seeing it
/// (loopback, shared machine). Sluice's bucket spaces starts out, but a loaded 2-core machine
/// running the whole suite can hold a few back and deliver them together: 43 starts were seen in
/// 94 ms once, 4 more than 20 ms of jitter allows at 200/s. 50 ms (10 starts at 200/s) still
/// fails a bucket that lets twice the rate through in any window longer than a quarter second,
/// and one with no limit at once.
pub const SCHEDULING_JITTER: Duration = Duration::from_millis(50);

/// One reading of the started-stream count, bracketed by clock readings (since sampling began)
/// so that intervals between samples are never underestimated.
#[derive(Debug, Clone, Copy)]
pub struct StartSample {
    /// Time just before the count was read.
    pub before: Duration,
    /// Streams started since sampling began.
    pub started: u64,
    /// Time just after the count was read.
    pub after: Duration,
}

/// More streams started between two samples than the bucket allows.
#[derive(Debug, Clone, Copy)]
pub struct Violation {
    /// Streams started in the interval.
    pub started: u64,
    /// The interval, widened by [`SCHEDULING_JITTER`].
    pub interval: Duration,
    /// What `burst + rate x interval` allows.
    pub allowed: f64,
}

/// Samples `stats.subscribe_started` every `every` until `done(started, elapsed)`. Counting
/// starts when this is called, not when the returned future is first polled, so a spawned
/// sampler misses no start.
pub fn sample_starts(
    stats: Arc<FeedStats>,
    every: Duration,
    done: impl Fn(u64, Duration) -> bool,
) -> impl Future<Output = Vec<StartSample>> {
    let base = stats.snapshot().subscribe_started;
    let began = Instant::now();
    async move {
        let mut samples = Vec::new();
        loop {
            let before = began.elapsed();
            let started = stats.snapshot().subscribe_started - base;
            let sample = StartSample {
                before,
                started,
                after: began.elapsed(),
            };
            samples.push(sample);
            if done(started, sample.after) {
                return samples;
            }
            tokio::time::sleep(every).await;
        }
    }
}

/// Every pair of samples between which more streams started than `burst + rate x interval`.
pub fn rate_violations(samples: &[StartSample], burst: f64, rate: f64) -> Vec<Violation> {
    let mut violations = Vec::new();
    for (i, first) in samples.iter().enumerate() {
        for later in &samples[i + 1..] {
            let interval = later.before.saturating_sub(first.after) + SCHEDULING_JITTER;
            let allowed = burst + rate * interval.as_secs_f64();
            let started = later.started - first.started;
            if started as f64 > allowed {
                violations.push(Violation {
                    started,
                    interval,
                    allowed,
                });
            }
        }
    }
    violations
}
