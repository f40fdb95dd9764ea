//! The built-in anomaly detector: a z-score of each metric's latest sample against the window
//! before it, after a warm-up of 10 samples. Over 3 is a warning, over 4 critical.

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
}

impl Default for ZScore {
    fn default() -> Self {
        Self {
            warning: 3.0,
            critical: 4.0,
        }
    }
}

impl ZScore {
    /// The z-score of the last sample against the others; `None` during warm-up. A flat history
    /// gives 0 when the last sample equals it and an infinite score when it departs from it.
    pub fn score(samples: &[f64]) -> Option<f64> {
        let (&last, history) = samples.split_last()?;
        if history.len() < WARM_UP || !last.is_finite() {
            return None;
        }
        let n = history.len() as f64;
        let mean = history.iter().sum::<f64>() / n;
        let variance = history.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n;
        let deviation = variance.sqrt();
        if deviation == 0.0 {
            return Some(if last == mean { 0.0 } else { f64::INFINITY });
        }
        Some((last - mean) / deviation)
    }

    /// Insights for the windows whose latest sample stands out.
    pub fn detect(&self, windows: &[MetricWindow]) -> Vec<Insight> {
        windows
            .iter()
            .filter_map(|window| {
                let z = Self::score(&window.samples)?;
                let severity = if z.abs() > self.critical {
                    Severity::Critical
                } else if z.abs() > self.warning {
                    Severity::Warning
                } else {
                    return None;
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
        let insights = detector.detect(&[window(samples)]);
        assert_eq!(insights[0].severity, Severity::Critical);
        assert_eq!(insights[0].kind, InsightKind::Anomaly);
    }
}
