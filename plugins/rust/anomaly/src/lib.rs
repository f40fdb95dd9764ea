//! Sluice's default anomaly detector (`anomaly` world): a z-score of each window's latest sample
//! against the samples before it.
//!
//! For each metric window with at least `min_samples` samples (default 10; fewer is warm-up and
//! yields nothing): the mean and (sample) standard deviation of all samples but the last, and
//! `z = (last - mean) / stddev`. `|z|` above `warning_z` (default 3) is a warning, above
//! `critical_z` (default 4) critical when the sample before it is beyond `critical_z` too, in the
//! same direction, both measured against the samples before them: one sample beyond it alone,
//! a blip, is a warning. Non-finite samples are skipped; a non-finite latest sample yields nothing.
//!
//! The spread a sample is measured against is never below a floor: `min_deviation` (default 0.3,
//! in the metric's unit, for counts, rates and times), `min_share_deviation` (default 0.01, for
//! shares: the 0..=1 metrics named `*_rate`, `*ratio`, `*utilization` and `*usage`) and
//! `min_relative_deviation` (default 0.05, a share of the mean's magnitude). So one event in a
//! series flat at zero scores 3.3, a warning and not a critical insight, an error rate going from
//! a flat 0 to 5% is critical, and a flat latency moving by a few percent is no news; without the floor a flat
//! history has no spread, and any change would be an infinite z-score. With both floors set to
//! 0, a flat history departed from scores [`FLAT_Z`] (1e9, with the sign of the change), a finite
//! stand-in for infinity; measured z-scores are capped to the same range.
//!
//! Insight: kind `anomaly`, title `Spike in <metric>` or `Drop in <metric>`, `metric` the
//! window's name, `value` the latest sample, `score` `|z|` (larger is more unusual, as the
//! contract says; the sign is in the title and the description).

#![no_std]

extern crate alloc;

use alloc::string::String;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, Ordering};

use sluice_plugin::parse_f64;
use sluice_plugin::text::{push_fixed, push_short, push_u64};

wit_bindgen::generate!({
    path: "../../../wit",
    world: "anomaly",
});

use sluice::policy::types::{InsightKind, Severity};
use sluice::policy::{config, log};

/// The z-score reported when the history is flat and the latest sample is not; also the cap.
pub const FLAT_Z: f64 = 1e9;

/// Set once a bad config value has been reported.
static WARNED: AtomicBool = AtomicBool::new(false);

struct Detector;

impl Guest for Detector {
    fn detect(windows: Vec<MetricWindow>) -> Result<Vec<Insight>, String> {
        let settings = Settings::load();
        Ok(windows
            .iter()
            .filter_map(|window| examine(window, &settings))
            .collect())
    }
}

export!(Detector);

/// Thresholds and floors: the config over [`Settings::default`].
struct Settings {
    warning_z: f64,
    critical_z: f64,
    min_samples: usize,
    min_deviation: f64,
    min_share_deviation: f64,
    min_relative_deviation: f64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            warning_z: 3.0,
            critical_z: 4.0,
            min_samples: 10,
            min_deviation: 0.3,
            min_share_deviation: 0.01,
            min_relative_deviation: 0.05,
        }
    }
}

impl Settings {
    fn load() -> Self {
        let mut settings = Settings::default();
        for key in config::keys() {
            let Some(text) = config::get(&key) else {
                continue;
            };
            let value = parse_f64(&text);
            let ok = match (key.as_str(), value) {
                ("warning_z", Some(v)) if v > 0.0 => {
                    settings.warning_z = v;
                    true
                }
                ("critical_z", Some(v)) if v > 0.0 => {
                    settings.critical_z = v;
                    true
                }
                ("min_deviation", Some(v)) if v >= 0.0 && v.is_finite() => {
                    settings.min_deviation = v;
                    true
                }
                ("min_share_deviation", Some(v)) if v >= 0.0 && v.is_finite() => {
                    settings.min_share_deviation = v;
                    true
                }
                ("min_relative_deviation", Some(v)) if v >= 0.0 && v.is_finite() => {
                    settings.min_relative_deviation = v;
                    true
                }
                // Two samples of history at least, for a standard deviation.
                ("min_samples", Some(v)) if (3.0..=1e6).contains(&v) && v == v as usize as f64 => {
                    settings.min_samples = v as usize;
                    true
                }
                _ => false,
            };
            if !ok {
                warn_once(&key, &text, "unknown key or invalid value");
            }
        }
        if settings.critical_z < settings.warning_z {
            warn_once(
                "critical_z",
                "(below warning_z)",
                "using warning_z for both thresholds",
            );
            settings.critical_z = settings.warning_z;
        }
        settings
    }
}

fn warn_once(key: &str, text: &str, why: &str) {
    if WARNED.swap(true, Ordering::Relaxed) {
        return;
    }
    let mut message = String::from("anomaly: config ");
    message.push_str(key);
    message.push_str(" = ");
    message.push_str(text);
    message.push_str(": ");
    message.push_str(why);
    message.push_str(" (further problems are not reported)");
    log::log(log::Level::Warn, &message);
}

/// Mean, sample standard deviation and count of the finite values (Welford's method).
fn stats(samples: &[f64]) -> (f64, f64, usize) {
    let mut count = 0_usize;
    let mut mean = 0.0;
    let mut m2 = 0.0;
    for &x in samples.iter().filter(|x| x.is_finite()) {
        count += 1;
        let delta = x - mean;
        mean += delta / count as f64;
        m2 += delta * (x - mean);
    }
    let stddev = if count > 1 {
        libm::sqrt((m2 / (count - 1) as f64).max(0.0))
    } else {
        0.0
    };
    (mean, stddev, count)
}

/// Whether metric `name` is a share (0..=1) by Sluice's naming: `*_rate`, `*ratio`,
/// `*utilization` or `*usage`.
fn is_share(name: &str) -> bool {
    ["_rate", "ratio", "utilization", "usage"]
        .iter()
        .any(|suffix| name.ends_with(suffix))
}

/// One sample measured against the samples before it.
struct Measured {
    z: f64,
    mean: f64,
    stddev: f64,
    count: usize,
    /// The spread used: the history's, or the floor when that is larger.
    spread: f64,
}

impl Measured {
    /// Whether the spread used is the floor, not one the history shows.
    fn floored(&self) -> bool {
        self.stddev < self.spread
    }
}

/// `last` of metric `name` against `history` (the spread floored, see the crate's docs); `None`
/// during warm-up or when `last` is not finite, or when `last` equals a flat, unfloored history.
fn measure(name: &str, last: f64, history: &[f64], settings: &Settings) -> Option<Measured> {
    if history.len() + 1 < settings.min_samples || !last.is_finite() {
        return None;
    }
    let (mean, stddev, count) = stats(history);
    if count + 1 < settings.min_samples {
        return None;
    }
    let deviation = last - mean;
    let stddev = if stddev.is_nan() { 0.0 } else { stddev };
    let absolute = if is_share(name) {
        settings.min_share_deviation
    } else {
        settings.min_deviation
    };
    let floor = absolute.max(settings.min_relative_deviation * libm::fabs(mean));
    let spread = stddev.max(floor);
    let z = if spread <= 0.0 {
        if deviation == 0.0 {
            return None;
        }
        FLAT_Z.copysign(deviation)
    } else {
        (deviation / spread).clamp(-FLAT_Z, FLAT_Z)
    };
    Some(Measured {
        z,
        mean,
        stddev,
        count,
        spread,
    })
}

/// The latest sample measured against the samples before the last two, when it and the one
/// before it are both beyond `critical_z` in the same direction.
fn sustained(window: &MetricWindow, settings: &Settings) -> Option<Measured> {
    let (&last, history) = window.samples.split_last()?;
    let (&previous, before) = history.split_last()?;
    let earlier = measure(&window.name, previous, before, settings)?;
    let now = measure(&window.name, last, before, settings)?;
    let beyond = |m: &Measured| m.z.abs() > settings.critical_z;
    (beyond(&earlier) && beyond(&now) && earlier.z.signum() == now.z.signum()).then_some(now)
}

fn examine(window: &MetricWindow, settings: &Settings) -> Option<Insight> {
    let (&last, history) = window.samples.split_last()?;
    // Critical takes the last two samples both beyond the threshold, the same way, against
    // the samples before them: a single sample is a blip (one slow second), not an incident.
    let (measured, severity) = match sustained(window, settings) {
        Some(run) => (run, Severity::Critical),
        None => {
            let measured = measure(&window.name, last, history, settings)?;
            if measured.z.abs() <= settings.warning_z {
                return None;
            }
            (measured, Severity::Warning)
        }
    };
    let floored = measured.floored();
    let Measured {
        z,
        mean,
        stddev,
        count,
        spread,
    } = measured;
    let flat = stddev <= 0.0;
    let score = z.abs();

    let name = &window.name;
    let mut title = String::with_capacity(9 + name.len());
    title.push_str(if z > 0.0 { "Spike in " } else { "Drop in " });
    title.push_str(name);

    let mut description = String::with_capacity(160);
    description.push_str(name);
    description.push_str(" = ");
    push_short(&mut description, last);
    if flat {
        description.push_str(" after ");
        push_u64(&mut description, count as u64);
        description.push_str(" samples flat at ");
        push_short(&mut description, mean);
        if spread > 0.0 {
            description.push_str(" (measured against the least spread, ");
            push_short(&mut description, spread);
            description.push_str("): z = ");
            push_fixed(&mut description, z, 1);
        } else {
            description.push_str(" (no variation to measure against)");
        }
    } else {
        description.push_str(" vs a mean of ");
        push_short(&mut description, mean);
        description.push_str(" (stddev ");
        push_short(&mut description, stddev);
        if floored {
            description.push_str(", below the least spread ");
            push_short(&mut description, spread);
        }
        description.push_str(") over the previous ");
        push_u64(&mut description, count as u64);
        description.push_str(" samples: z = ");
        push_fixed(&mut description, z, 1);
    }
    let critical = matches!(severity, Severity::Critical);
    description.push_str(if critical {
        ", above the critical threshold |z| > "
    } else {
        ", above the warning threshold |z| > "
    });
    push_short(
        &mut description,
        if critical {
            settings.critical_z
        } else {
            settings.warning_z
        },
    );
    if critical {
        description.push_str(" for a second sample in a row");
    } else if score > settings.critical_z {
        description.push_str(" (critical once a second sample in a row is beyond ");
        push_short(&mut description, settings.critical_z);
        description.push(')');
    }
    description.push_str(" (samples every ");
    push_u64(&mut description, u64::from(window.interval_ms));
    description.push_str(" ms)");

    Some(Insight {
        kind: InsightKind::Anomaly,
        severity,
        title,
        description,
        metric: Some(name.clone()),
        value: last,
        score,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings::default()
    }

    fn flat(level: f64, last: f64) -> MetricWindow {
        let mut samples = alloc::vec![level; 30];
        samples.push(last);
        MetricWindow {
            name: String::from("upstream.connections_opened_per_min"),
            interval_ms: 1000,
            samples,
        }
    }

    #[test]
    fn one_event_in_a_flat_series_is_at_most_a_warning() {
        let one = examine(&flat(0.0, 1.0), &settings()).expect("an insight");
        assert!(matches!(one.severity, Severity::Warning));
        assert!(
            one.description.contains("least spread"),
            "{}",
            one.description
        );
        // A burst is news, critical once it lasts a second sample.
        let burst = examine(&flat(0.0, 5.0), &settings()).expect("an insight");
        assert!(matches!(burst.severity, Severity::Warning));
        assert!(
            burst.description.contains("critical once"),
            "{}",
            burst.description
        );
        let lasting = examine(&twice(flat(0.0, 5.0)), &settings()).expect("an insight");
        assert!(matches!(lasting.severity, Severity::Critical));
        assert!(examine(&flat(20.0, 21.0), &settings()).is_none());
        // With no floor, a flat series departed from is unprecedented.
        let bare = Settings {
            min_deviation: 0.0,
            min_share_deviation: 0.0,
            min_relative_deviation: 0.0,
            ..settings()
        };
        let unfloored = examine(&flat(0.0, 1.0), &bare).expect("an insight");
        assert_eq!(unfloored.score, FLAT_Z);
        // Shares keep their own scale.
        let errors = MetricWindow {
            name: String::from("upstream.error_rate"),
            ..twice(flat(0.0, 0.05))
        };
        let share = examine(&errors, &settings()).expect("an insight");
        assert!(matches!(share.severity, Severity::Critical));
    }

    #[test]
    fn one_slow_second_on_a_steady_latency_is_a_warning_not_critical() {
        // The soak's case: a p99 of about 3 ms (stddev 0.6) reading 5.8 ms once.
        let mut samples: alloc::vec::Vec<f64> = (0..119)
            .map(|i| 3.0 + [0.0, 0.6, -0.6, 0.9, -0.9][i % 5])
            .collect();
        samples.push(5.8);
        let window = MetricWindow {
            name: String::from("upstream.latency_p99_ms"),
            interval_ms: 1000,
            samples,
        };
        let blip = examine(&window, &settings()).expect("an insight");
        assert!(blip.score > 4.0, "{}", blip.score);
        assert!(matches!(blip.severity, Severity::Warning));
        // Two such seconds in a row are critical; a spike then a drop are not.
        let lasting = twice(window.clone());
        assert!(matches!(
            examine(&lasting, &settings()).map(|i| i.severity),
            Some(Severity::Critical)
        ));
        let mut swing = window;
        let last = swing.samples.len() - 1;
        swing.samples[last] = 0.2;
        swing.samples.push(5.8);
        assert!(matches!(
            examine(&swing, &settings()).map(|i| i.severity),
            Some(Severity::Warning)
        ));
    }

    /// `window` with its latest sample repeated.
    fn twice(mut window: MetricWindow) -> MetricWindow {
        let last = *window.samples.last().expect("a sample");
        window.samples.push(last);
        window
    }
}
