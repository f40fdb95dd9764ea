//! The `history` host import of the scaler world: the pool's recent load, for scalers that plan
//! ahead (e.g. forecast a daily peak).
//!
//! This module owns the [`LoadHistory`] trait the host's metrics store implements, the default
//! [`NoHistory`], and the bounds of what a plugin may ask for ([`MAX_STEP_MINUTES`],
//! [`MAX_POINTS`]): the answer never holds more than it asked for. The import itself is wired
//! to a plugin instance in [`crate::host`], with every other import.

use std::sync::Arc;

use parking_lot::RwLock;

use crate::types::TrafficClass;

/// The longest step a plugin may ask for: one day. Longer ones are cut to this, 0 becomes 1.
pub const MAX_STEP_MINUTES: u32 = 1440;

/// The most points a plugin may ask for: a week of minutes. More are cut to this.
pub const MAX_POINTS: u32 = 10_080;

/// Where a scaler's `history::group-streams` import gets its answers: the host's record of each
/// traffic class group's load (e.g. the analytics store's minute rollups).
///
/// Called from the scaler slot's `plan` calls, under the plugin's deadline: answer from memory,
/// without waiting on I/O. The host clamps the arguments before calling (`step_minutes` in
/// `1..=1440`, `points` at most 10 080) and cuts a longer answer to its last `points` values.
pub trait LoadHistory: Send + Sync {
    /// The group's mean active streams per step of `step_minutes` minutes, oldest first, ending
    /// with the step that holds now; at most `points` values (fewer when less history exists).
    /// NaN marks a step with no samples.
    fn group_streams(
        &self,
        class: sluice_config::TrafficClass,
        step_minutes: u32,
        points: u32,
    ) -> Vec<f64>;
}

/// The history until the host sets one ([`crate::Policies::set_history`]): none, so every
/// answer is empty and predictive scalers fall back to their reactive rules.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoHistory;

impl LoadHistory for NoHistory {
    fn group_streams(&self, _: sluice_config::TrafficClass, _: u32, _: u32) -> Vec<f64> {
        Vec::new()
    }
}

/// The history every plugin instance reaches, replaceable after plugins were loaded.
pub(crate) type SharedHistory = Arc<RwLock<Arc<dyn LoadHistory>>>;

/// A [`SharedHistory`] holding [`NoHistory`].
pub(crate) fn no_history() -> SharedHistory {
    Arc::new(RwLock::new(Arc::new(NoHistory)))
}

fn config_class(class: TrafficClass) -> sluice_config::TrafficClass {
    match class {
        TrafficClass::Realtime => sluice_config::TrafficClass::Realtime,
        TrafficClass::Event => sluice_config::TrafficClass::Event,
        TrafficClass::State => sluice_config::TrafficClass::State,
    }
}

/// Asks `history` within the bounds a plugin may ask for.
pub(crate) fn group_streams(
    history: &dyn LoadHistory,
    class: TrafficClass,
    step_minutes: u32,
    points: u32,
) -> Vec<f64> {
    let step_minutes = step_minutes.clamp(1, MAX_STEP_MINUTES);
    let points = points.min(MAX_POINTS);
    if points == 0 {
        return Vec::new();
    }
    let mut values = history.group_streams(config_class(class), step_minutes, points);
    let extra = values.len().saturating_sub(points as usize);
    if extra > 0 {
        values.drain(..extra);
    }
    values
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicU32, Ordering};

    use sluice_config::{PluginsConfig, SlotKind};

    use super::*;
    use crate::Policies;
    use crate::types::GroupMetrics;

    /// Remembers the last arguments and answers `len` values.
    struct Recording {
        len: usize,
        step: AtomicU32,
        points: AtomicU32,
    }

    impl LoadHistory for Recording {
        fn group_streams(
            &self,
            _: sluice_config::TrafficClass,
            step_minutes: u32,
            points: u32,
        ) -> Vec<f64> {
            self.step.store(step_minutes, Ordering::Relaxed);
            self.points.store(points, Ordering::Relaxed);
            (0..self.len).map(|i| i as f64).collect()
        }
    }

    #[test]
    fn plugin_arguments_are_bounded() {
        let history = Recording {
            len: 20_000,
            step: AtomicU32::new(0),
            points: AtomicU32::new(0),
        };
        let values = group_streams(&history, TrafficClass::Event, 0, u32::MAX);
        assert_eq!(history.step.load(Ordering::Relaxed), 1);
        assert_eq!(history.points.load(Ordering::Relaxed), MAX_POINTS);
        assert_eq!(values.len(), MAX_POINTS as usize);
        // The newest values are kept.
        assert_eq!(values.last(), Some(&19_999.0));

        let values = group_streams(&history, TrafficClass::State, u32::MAX, 3);
        assert_eq!(history.step.load(Ordering::Relaxed), MAX_STEP_MINUTES);
        assert_eq!(values, vec![19_997.0, 19_998.0, 19_999.0]);

        assert!(group_streams(&history, TrafficClass::Realtime, 15, 0).is_empty());
        assert!(group_streams(&NoHistory, TrafficClass::Realtime, 15, 672).is_empty());
    }

    /// A group's mean active streams per 15 minutes: a daily cycle between 40 and 360 streams
    /// that peaks at `peak_step` steps of each day (of 96).
    struct Daily {
        /// Steps of history, the last one holding now.
        points: usize,
        /// The step of the day (0..96) of the peak, counted from the first point.
        peak_step: usize,
    }

    impl LoadHistory for Daily {
        fn group_streams(
            &self,
            class: sluice_config::TrafficClass,
            step_minutes: u32,
            points: u32,
        ) -> Vec<f64> {
            if class != sluice_config::TrafficClass::Realtime || step_minutes != 15 {
                return Vec::new();
            }
            let len = self.points.min(points as usize);
            let first = self.points - len;
            (first..self.points)
                .map(|t| {
                    let angle =
                        2.0 * std::f64::consts::PI * (t as f64 - self.peak_step as f64) / 96.0;
                    // A little deterministic wobble so the fit has residuals.
                    let wobble = ((t * 7919) % 13) as f64 - 6.0;
                    200.0 + 160.0 * angle.cos() + wobble
                })
                .collect()
        }
    }

    /// The built scaler component (`cargo xtask plugins`), or `None` when it is not built and
    /// `SLUICE_REQUIRE_ALL` is not `1`.
    fn built_scaler() -> Option<PathBuf> {
        let dir = std::env::var_os("SLUICE_PLUGINS")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../target/plugins"))
            });
        let file = dir.join("scaler.wasm");
        if file.is_file() {
            return Some(file);
        }
        if std::env::var("SLUICE_REQUIRE_ALL").is_ok_and(|v| v == "1") {
            panic!("no {} (run `cargo xtask plugins`)", file.display());
        }
        eprintln!("skipped: no {}; run `cargo xtask plugins`", file.display());
        None
    }

    /// A quiet realtime group: 4 connections of 100 streams at 45% utilization, no queue, no
    /// rising trend, fast, no errors, last scaled 10 minutes ago. No reactive rule fires.
    fn quiet_realtime() -> GroupMetrics {
        GroupMetrics {
            class: TrafficClass::Realtime,
            connections: 4,
            min_connections: 1,
            max_connections: 16,
            active_streams: 180,
            stream_capacity: 400,
            utilization: 0.45,
            queue_depth: 0,
            p99_latency_ms: 40.0,
            error_rate: 0.0,
            trend: 0.0,
            since_last_scale_ms: 600_000,
        }
    }

    #[test]
    fn the_default_scaler_scales_ahead_of_a_forecast_peak() {
        let Some(file) = built_scaler() else { return };
        let config = PluginsConfig {
            cache_dir: Some(PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../target/plugin-cache"
            ))),
            ..PluginsConfig::default()
        };
        let policies = Policies::new(&config).expect("policies");
        policies
            .load_file(&file, Some(SlotKind::Scaler), false)
            .expect("the scaler loads");
        let groups = [quiet_realtime()];

        // Without history: the reactive rules alone, which hold.
        let plan = policies.plan(&groups);
        assert!(plan.actions.is_empty(), "{plan:?}");

        // A week of history (what the plugin asks for by default) ending 45 minutes (3 steps)
        // before the daily peak of 360 streams: 4 connections of 100 at 75% carry 300, so 5 are
        // needed.
        let days = 7 * 96;
        policies.set_history(Arc::new(Daily {
            points: days,
            peak_step: (days + 2) % 96,
        }));
        let started = std::time::Instant::now();
        let plan = policies.plan(&groups);
        eprintln!("{:?}: {}", started.elapsed(), plan.reasoning);
        assert_eq!(plan.actions.len(), 1, "{plan:?}");
        let action = &plan.actions[0];
        assert_eq!(action.class, TrafficClass::Realtime);
        assert!(action.delta > 0, "{plan:?}");
        assert!(action.reason.contains("forecast"), "{}", action.reason);
        assert!(action.reason.contains("Holt-Winters"), "{}", action.reason);

        // The same cycle with the peak 6 hours past: the next hour (about 200 streams, falling)
        // stays below what 4 connections carry.
        policies.set_history(Arc::new(Daily {
            points: days,
            peak_step: (days + 96 - 24) % 96,
        }));
        let plan = policies.plan(&groups);
        eprintln!("{}", plan.reasoning);
        assert!(plan.actions.is_empty(), "{plan:?}");
    }
}
