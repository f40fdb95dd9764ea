//! The built-in anomaly detector: a z-score of each metric's latest sample against the window
//! before it, after a warm-up of 10 samples. Over 3 is a warning. Critical takes two samples in
//! a row over 4 the same way, both measured against the samples before them: one sample alone
//! (one slow second) is a blip, a warning.
//!
//! The spread a sample is measured against is never below a floor: an absolute one (0.3 for
//! counts, rates and times, so one event in a series that was flat at zero scores 3.3, a
//! warning, not a critical insight; 0.01 for shares, the 0..=1 metrics named `*_rate`,
//! `*ratio`, `*utilization` and `*usage`) and a relative one (5% of the mean, so a flat latency
//! that moves by a few percent is no news). A flat series has no spread of its own, and without
//! the floor any change would be an infinite z-score.

use crate::types::{Insight, InsightKind, MetricWindow, Severity};

/// Samples a window needs before it is judged.
const WARM_UP: usize = 10;

/// The built-in z-score detector.
#[derive(Debug, Clone, Copy)]
pub struct ZScore {
    /// |z| above which a sample is a warning.
    pub warning: f64,
    /// |z| above which a sample is critical.
    pub critical: f64,
    /// The least spread a sample is measured against, in the metric's unit (counts, rates,
    /// times).
    pub min_deviation: f64,
    /// The least spread for shares (0..=1 metrics, see [`is_share`]).
    pub min_share_deviation: f64,
    /// The least spread as a share of the mean's magnitude.
    pub min_relative_deviation: f64,
}

impl Default for ZScore {
    fn default() -> Self {
        Self {
            warning: 3.0,
            critical: 4.0,
            min_deviation: 0.3,
            min_share_deviation: 0.01,
            min_relative_deviation: 0.05,
        }
    }
}

/// Whether metric `name` is a share (0..=1) by Sluice's naming: `*_rate`, `*ratio`,
/// `*utilization` or `*usage`.
pub fn is_share(name: &str) -> bool {
    ["_rate", "ratio", "utilization", "usage"]
        .iter()
        .any(|suffix| name.ends_with(suffix))
}

impl ZScore {
    /// The z-score of the last sample of metric `name` against the others, their spread
    /// floored (see the module's docs); `None` during warm-up.
    pub fn score(&self, name: &str, samples: &[f64]) -> Option<f64> {
        let (&last, history) = samples.split_last()?;
        self.score_against(name, last, history)
    }

    /// The z-score of `last` against `history`, as [`ZScore::score`] gives it.
    fn score_against(&self, name: &str, last: f64, history: &[f64]) -> Option<f64> {
        if history.len() < WARM_UP || !last.is_finite() {
            return None;
        }
        let n = history.len() as f64;
        let mean = history.iter().sum::<f64>() / n;
        let variance = history.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n;
        let absolute = if is_share(name) {
            self.min_share_deviation
        } else {
            self.min_deviation
        };
        let floor = absolute.max(self.min_relative_deviation * mean.abs());
        let deviation = variance.sqrt().max(floor);
        if deviation == 0.0 {
            // Only with both floors at 0: a flat history nothing departs from, or departs from
            // without measure.
            return Some(if last == mean { 0.0 } else { f64::INFINITY });
        }
        Some((last - mean) / deviation)
    }

    /// The z-score of the last sample against the samples before the last two, when it and
    /// the one before it are both over the critical threshold in the same direction.
    fn sustained(&self, name: &str, samples: &[f64]) -> Option<f64> {
        let (&last, history) = samples.split_last()?;
        let (&previous, before) = history.split_last()?;
        let earlier = self.score_against(name, previous, before)?;
        let now = self.score_against(name, last, before)?;
        let beyond = |z: f64| z.abs() > self.critical;
        (beyond(earlier) && beyond(now) && earlier.signum() == now.signum()).then_some(now)
    }

    /// Insights for the windows whose latest sample stands out.
    pub fn detect(&self, windows: &[MetricWindow]) -> Vec<Insight> {
        windows
            .iter()
            .filter_map(|window| {
                let (z, severity) = match self.sustained(&window.name, &window.samples) {
                    Some(z) => (z, Severity::Critical),
                    None => {
                        let z = self.score(&window.name, &window.samples)?;
                        if z.abs() <= self.warning {
                            return None;
                        }
                        (z, Severity::Warning)
                    }
                };
                let last = *window.samples.last()?;
                let direction = if z > 0.0 { "Spike" } else { "Drop" };
                Some(Insight {
                    kind: InsightKind::Anomaly,
                    severity,
                    title: format!("{direction} in {}", window.name),
                    description: format!(
                        "{} is {last:.3}, {:.1} standard deviations from its last {} samples",
                        window.name,
                        z.abs().min(1e9),
                        window.samples.len() - 1
                    ),
                    metric: Some(window.name.clone()),
                    value: last,
                    score: z.clamp(-1e9, 1e9),
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(samples: Vec<f64>) -> MetricWindow {
        MetricWindow {
            name: "upstream.errors_per_s".to_owned(),
            interval_ms: 1000,
            samples,
        }
    }

    #[test]
    fn warms_up_then_flags_spikes_by_severity() {
        let detector = ZScore::default();
        assert!(detector.detect(&[window(vec![1.0, 50.0])]).is_empty());
        let mut samples: Vec<f64> = (0..20).map(|i| 10.0 + f64::from(i % 3)).collect();
        samples.push(11.0);
        assert!(detector.detect(&[window(samples.clone())]).is_empty());
        samples.push(13.8);
        let _ = samples.remove(20);
        let insights = detector.detect(&[window(samples.clone())]);
        assert_eq!(insights.len(), 1);
        assert_eq!(
            insights[0].severity,
            Severity::Warning,
            "z={}",
            insights[0].score
        );
        let _ = samples.pop();
        samples.push(100.0);
        // One sample far out is a blip; two in a row are critical.
        let insights = detector.detect(&[window(samples.clone())]);
        assert_eq!(insights[0].severity, Severity::Warning);
        samples.push(100.0);
        let insights = detector.detect(&[window(samples)]);
        assert_eq!(insights[0].severity, Severity::Critical);
        assert_eq!(insights[0].kind, InsightKind::Anomaly);
    }

    #[test]
    fn one_slow_second_on_a_steady_latency_is_a_warning_not_critical() {
        // A p99 of about 3 ms (stddev 0.6) reading 5.8 ms once: z 4.1, but a blip.
        let detector = ZScore::default();
        let mut samples: Vec<f64> = (0..119)
            .map(|i| 3.0 + [0.0, 0.6, -0.6, 0.9, -0.9][i % 5])
            .collect();
        samples.push(5.8);
        let latency = |samples: &[f64]| {
            detector.detect(&[MetricWindow {
                name: "upstream.latency_p99_ms".to_owned(),
                ..window(samples.to_vec())
            }])
        };
        let blip = latency(&samples);
        assert!(blip[0].score > 4.0, "{}", blip[0].score);
        assert_eq!(blip[0].severity, Severity::Warning);
        samples.push(5.8);
        assert_eq!(latency(&samples)[0].severity, Severity::Critical);
        // A drop then a spike are two blips, not a sustained change.
        let spike = samples.len() - 2;
        samples[spike] = 0.2;
        assert_eq!(latency(&samples)[0].severity, Severity::Warning);
    }

    #[test]
    fn one_event_in_a_flat_series_is_at_most_a_warning() {
        let detector = ZScore::default();
        // The last sample twice: what lasts is critical, where a blip would be a warning.
        let flat = |last: f64| {
            let mut samples = vec![0.0; 30];
            samples.extend([last, last]);
            detector.detect(&[window(samples)])
        };
        let one = flat(1.0);
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].severity, Severity::Warning, "z={}", one[0].score);
        assert!(one[0].score.is_finite());
        // A burst is still news.
        assert_eq!(flat(5.0)[0].severity, Severity::Critical);
        // A flat latency moving by 5% is not.
        let mut latency = vec![20.0; 30];
        latency.extend([21.0, 21.0]);
        assert!(detector.detect(&[window(latency)]).is_empty());
        // Shares keep their own scale: an error rate from a flat 0 to 5% is critical, a steady
        // count dropping by 30% too.
        let share = |last: f64| {
            let mut samples = vec![0.0; 30];
            samples.extend([last, last]);
            detector.detect(&[MetricWindow {
                name: "upstream.error_rate".to_owned(),
                ..window(samples)
            }])
        };
        assert_eq!(share(0.05)[0].severity, Severity::Critical);
        assert!(share(0.02).is_empty());
        let mut streams = vec![10_000.0; 30];
        streams.extend([7_000.0, 7_000.0]);
        assert_eq!(
            detector.detect(&[window(streams)])[0].severity,
            Severity::Critical
        );
    }
}
