//! A provider's per-account limits, enforced the way providers do and counted, so that tests
//! and the soak can prove a proxy in front never exceeds them: connections beyond
//! `max_connections` are closed at once, and Feed calls beyond the stream-creation rate are
//! answered `RESOURCE_EXHAUSTED`. Every such event is a violation in [`crate::FeedStats`].
//!
//! This module only judges; the accept loop and the service call it.

use std::sync::Mutex;
use std::time::Instant;

/// Limits a feed server enforces on its clients, as a rate-limited provider account does.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ProviderLimits {
    /// TCP connections open at once; a connection beyond it is closed on accept.
    pub max_connections: Option<u64>,
    /// Feed calls started per second, sustained (a token bucket).
    pub streams_per_second: Option<f64>,
    /// Calls that may start at once after a quiet period. Default one second's worth.
    pub stream_burst: Option<u32>,
}

impl ProviderLimits {
    /// Whether `open` connections (this one included) exceed `max_connections`.
    pub(crate) fn too_many_connections(&self, open: u64) -> bool {
        self.max_connections.is_some_and(|max| open > max)
    }
}

/// The stream-creation token bucket of [`ProviderLimits::streams_per_second`].
#[derive(Debug)]
pub(crate) struct StreamQuota {
    rate: f64,
    burst: f64,
    state: Mutex<(f64, Instant)>,
}

impl StreamQuota {
    /// A full bucket, or `None` without a rate.
    pub(crate) fn new(limits: &ProviderLimits) -> Option<Self> {
        let rate = limits.streams_per_second?;
        let burst = f64::from(
            limits
                .stream_burst
                .unwrap_or_else(|| rate.ceil().max(1.0) as u32),
        );
        Some(Self {
            rate,
            burst,
            state: Mutex::new((burst, Instant::now())),
        })
    }

    /// Takes a token for a call starting now; `false` when the call exceeds the rate.
    pub(crate) fn admit(&self) -> bool {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let (tokens, at) = *state;
        let tokens = (tokens + now.duration_since(at).as_secs_f64() * self.rate).min(self.burst);
        if tokens >= 1.0 {
            *state = (tokens - 1.0, now);
            true
        } else {
            *state = (tokens, now);
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_burst_passes_then_the_rate_holds() {
        let quota = StreamQuota::new(&ProviderLimits {
            streams_per_second: Some(10.0),
            stream_burst: Some(3),
            ..ProviderLimits::default()
        })
        .expect("a rate is set");
        let admitted = (0..5).filter(|_| quota.admit()).count();
        assert_eq!(admitted, 3);
        std::thread::sleep(std::time::Duration::from_millis(120));
        assert!(quota.admit(), "a token accrued in 100 ms");
        assert!(!quota.admit());
    }

    #[test]
    fn connections_beyond_the_cap_are_too_many() {
        let limits = ProviderLimits {
            max_connections: Some(2),
            ..ProviderLimits::default()
        };
        assert!(!limits.too_many_connections(2));
        assert!(limits.too_many_connections(3));
        assert!(!ProviderLimits::default().too_many_connections(1000));
    }
}
