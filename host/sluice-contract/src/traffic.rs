//! A monitor's measured traffic: the part of its routing profile that comes from live traffic
//! (message rate, burstiness, mean message size, and the latency sensitivity derived from them).
//!
//! The data path only adds to two counters per response chunk; a once-a-second tick turns the
//! counters into decaying averages. Nothing here may block or allocate on the data path.

use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use sluice_config::TrafficClass;

/// Time constant of the averages: a change in traffic shows after a few seconds and fades
/// over about a minute.
const TIME_CONSTANT: Duration = Duration::from_secs(20);
/// gRPC's per-message prefix (compressed flag and length), left out of message sizes.
const PREFIX_BYTES: u64 = 5;
/// Messages per second at which the rate term of the derived sensitivity is one half.
const SENSITIVE_RATE: f64 = 50.0;

/// What a router sees of a monitor's traffic.
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize)]
pub struct TrafficProfile {
    /// Response messages per second.
    pub message_rate: f64,
    /// Coefficient of variation of messages per second (0 for a steady feed).
    pub burstiness: f64,
    /// 0..=1: configured, or the class prior blended with the rate.
    pub latency_sensitivity: f64,
    /// Mean response message size in bytes (payload only).
    pub mean_message_bytes: f64,
}

/// Counts one monitor's response traffic (all its streams together).
#[derive(Debug)]
pub struct TrafficMeter {
    messages: AtomicU64,
    bytes: AtomicU64,
    /// The latest [`TrafficProfile`], as `f64` bits, written by [`TrafficMeter::tick`].
    rate: AtomicU64,
    burstiness: AtomicU64,
    mean_bytes: AtomicU64,
    sensitivity: AtomicU64,
    class_prior: f64,
    configured_sensitivity: Option<f64>,
    averages: Mutex<Averages>,
}

#[derive(Debug, Default)]
struct Averages {
    last: Option<(Instant, u64, u64)>,
    rate: f64,
    variance: f64,
    mean_bytes: f64,
}

impl TrafficMeter {
    /// A meter for a monitor of `class`, with its configured sensitivity if any.
    pub fn new(class: TrafficClass, configured_sensitivity: Option<f64>) -> Self {
        let class_prior = match class {
            TrafficClass::Realtime => 0.9,
            TrafficClass::Event => 0.5,
            TrafficClass::State => 0.2,
        };
        let meter = Self {
            messages: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            rate: AtomicU64::new(0),
            burstiness: AtomicU64::new(0),
            mean_bytes: AtomicU64::new(0),
            sensitivity: AtomicU64::new(0),
            class_prior,
            configured_sensitivity,
            averages: Mutex::new(Averages::default()),
        };
        meter
            .sensitivity
            .store(meter.sensitivity_at(0.0).to_bits(), Relaxed);
        meter
    }

    /// Counts response data relayed to the monitor: `bytes` on the wire (prefixes included)
    /// holding `messages` complete messages.
    pub fn record(&self, bytes: u64, messages: u64) {
        self.bytes.fetch_add(bytes, Relaxed);
        if messages > 0 {
            self.messages.fetch_add(messages, Relaxed);
        }
    }

    /// Folds the counts since the last tick into the averages; call about once a second.
    pub fn tick(&self, now: Instant) {
        let messages = self.messages.load(Relaxed);
        let bytes = self.bytes.load(Relaxed);
        let mut averages = self.averages.lock();
        let Some((at, last_messages, last_bytes)) = averages.last.replace((now, messages, bytes))
        else {
            return;
        };
        let elapsed = now.saturating_duration_since(at).as_secs_f64();
        if elapsed <= 0.0 {
            return;
        }
        let new_messages = messages.saturating_sub(last_messages);
        let new_bytes = bytes.saturating_sub(last_bytes);
        let sample = new_messages as f64 / elapsed;
        let alpha = 1.0 - (-elapsed / TIME_CONSTANT.as_secs_f64()).exp();
        // Exponentially weighted mean and variance (West's incremental form).
        let diff = sample - averages.rate;
        averages.rate += alpha * diff;
        averages.variance = (1.0 - alpha) * (averages.variance + alpha * diff * diff);
        if new_messages > 0 {
            let size =
                new_bytes.saturating_sub(PREFIX_BYTES * new_messages) as f64 / new_messages as f64;
            averages.mean_bytes = if averages.mean_bytes == 0.0 {
                size
            } else {
                averages.mean_bytes + alpha * (size - averages.mean_bytes)
            };
        }
        let burstiness = if averages.rate > 1e-3 {
            averages.variance.sqrt() / averages.rate
        } else {
            0.0
        };
        self.rate.store(averages.rate.to_bits(), Relaxed);
        self.burstiness.store(burstiness.to_bits(), Relaxed);
        self.mean_bytes
            .store(averages.mean_bytes.to_bits(), Relaxed);
        self.sensitivity
            .store(self.sensitivity_at(averages.rate).to_bits(), Relaxed);
    }

    /// The profile as of the last tick.
    pub fn profile(&self) -> TrafficProfile {
        let read = |cell: &AtomicU64| f64::from_bits(cell.load(Relaxed));
        TrafficProfile {
            message_rate: read(&self.rate),
            burstiness: read(&self.burstiness),
            latency_sensitivity: read(&self.sensitivity),
            mean_message_bytes: read(&self.mean_bytes),
        }
    }

    /// The configured sensitivity, or `0.7 * class prior + 0.3 * rate / (rate + 50)`.
    fn sensitivity_at(&self, rate: f64) -> f64 {
        self.configured_sensitivity.unwrap_or_else(|| {
            (0.7 * self.class_prior + 0.3 * rate / (rate + SENSITIVE_RATE)).clamp(0.0, 1.0)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_steady_feed_has_its_rate_and_size_and_no_burstiness() {
        let meter = TrafficMeter::new(TrafficClass::Realtime, None);
        let start = Instant::now();
        meter.tick(start);
        for second in 1..=120 {
            // 100 messages of 64 payload bytes each second.
            meter.record(100 * (64 + PREFIX_BYTES), 100);
            meter.tick(start + Duration::from_secs(second));
        }
        let profile = meter.profile();
        assert!((profile.message_rate - 100.0).abs() < 1.0, "{profile:?}");
        assert!(profile.burstiness < 0.05, "{profile:?}");
        assert!(
            (profile.mean_message_bytes - 64.0).abs() < 0.01,
            "{profile:?}"
        );
        // 0.7 * 0.9 + 0.3 * 100 / 150.
        assert!(
            (profile.latency_sensitivity - 0.83).abs() < 0.01,
            "{profile:?}"
        );
    }

    #[test]
    fn bursts_raise_burstiness_and_configured_sensitivity_wins() {
        let meter = TrafficMeter::new(TrafficClass::State, Some(0.95));
        let start = Instant::now();
        meter.tick(start);
        for second in 1..=120 {
            let messages = if second % 5 == 0 { 500 } else { 0 };
            meter.record(messages * 10, messages);
            meter.tick(start + Duration::from_secs(second));
        }
        let profile = meter.profile();
        assert!(profile.burstiness > 1.0, "{profile:?}");
        assert!((profile.message_rate - 100.0).abs() < 40.0, "{profile:?}");
        assert_eq!(profile.latency_sensitivity, 0.95);
        // Before any traffic, the class prior alone.
        let idle = TrafficMeter::new(TrafficClass::State, None).profile();
        assert!((idle.latency_sensitivity - 0.14).abs() < 1e-9, "{idle:?}");
    }
}
