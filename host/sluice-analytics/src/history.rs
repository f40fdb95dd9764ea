//! In-memory metric history: a 1 s ring per metric for the last 10 minutes and a 1 min ring of
//! rollups for the last 24 hours.
//!
//! The history only keeps numbers; it does not sample the pool (the sampler does) and does not
//! persist anything (finished minutes are handed back so the caller can store them).

use std::collections::{HashMap, VecDeque};

use parking_lot::Mutex;
use serde::Serialize;

use crate::records::Rollup;

/// Samples kept at 1 s resolution: 10 minutes.
pub const SECOND_SAMPLES: usize = 600;
/// Rollups kept at 1 min resolution: 24 hours.
pub const MINUTE_SAMPLES: usize = 1440;
/// Distinct metric names kept; more are ignored (bounds memory when names carry labels).
const MAX_METRICS: usize = 256;

/// A bounded ring of timestamped values, oldest first.
#[derive(Debug, Clone)]
struct Ring<T> {
    items: VecDeque<(i64, T)>,
    capacity: usize,
}

impl<T> Ring<T> {
    fn new(capacity: usize) -> Self {
        Self {
            items: VecDeque::with_capacity(capacity.min(64)),
            capacity,
        }
    }

    fn push(&mut self, ts_ms: i64, value: T) {
        if self.items.len() == self.capacity {
            self.items.pop_front();
        }
        self.items.push_back((ts_ms, value));
    }
}

/// One point of a series, for the API and the dashboard.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Point {
    /// Unix ms.
    pub ts_ms: i64,
    /// The value (for minute points, the minute's mean).
    pub value: f64,
}

/// The points of `ring` at or after `since_ms`, oldest first.
fn points<T>(ring: Option<&Ring<T>>, since_ms: i64, value: impl Fn(&T) -> f64) -> Vec<Point> {
    ring.map_or_else(Vec::new, |ring| {
        ring.items
            .iter()
            .filter(|(ts, _)| *ts >= since_ms)
            .map(|(ts_ms, item)| Point {
                ts_ms: *ts_ms,
                value: value(item),
            })
            .collect()
    })
}

/// A minute being accumulated from 1 s samples.
#[derive(Debug, Clone, Copy)]
struct Accumulator {
    sum: f64,
    min: f64,
    max: f64,
    count: u32,
}

impl Accumulator {
    fn new(value: f64) -> Self {
        Self {
            sum: value,
            min: value,
            max: value,
            count: 1,
        }
    }

    fn add(&mut self, value: f64) {
        self.sum += value;
        self.min = self.min.min(value);
        self.max = self.max.max(value);
        self.count += 1;
    }
}

#[derive(Default)]
struct Inner {
    seconds: HashMap<String, Ring<f64>>,
    minutes: HashMap<String, Ring<Rollup>>,
    /// Start (Unix ms) of the minute being accumulated.
    minute_start: Option<i64>,
    current: HashMap<String, Accumulator>,
}

/// The metric history of one process.
#[derive(Default)]
pub struct History {
    inner: Mutex<Inner>,
}

fn minute_of(ts_ms: i64) -> i64 {
    ts_ms - ts_ms.rem_euclid(60_000)
}

impl History {
    /// Fills the minute rings from stored rollups (after a restart), oldest first.
    pub fn restore(&self, rollups: &[Rollup]) {
        let mut inner = self.inner.lock();
        for rollup in rollups {
            Self::keep_minute(&mut inner, rollup.ts_ms, rollup);
        }
    }

    /// Records one sample of each metric taken at `ts_ms`. Returns the rollups of the minute
    /// that ended, if `ts_ms` starts a new one. Non-finite values are skipped.
    pub fn record(&self, ts_ms: i64, samples: &[(String, f64)]) -> Vec<Rollup> {
        let minute = minute_of(ts_ms);
        let mut inner = self.inner.lock();
        let finished = match inner.minute_start {
            Some(start) if start != minute => Self::finish_minute(&mut inner, start),
            _ => Vec::new(),
        };
        inner.minute_start = Some(minute);
        for (name, value) in samples {
            if !value.is_finite() {
                continue;
            }
            if !inner.seconds.contains_key(name) && inner.seconds.len() >= MAX_METRICS {
                continue;
            }
            inner
                .seconds
                .entry(name.clone())
                .or_insert_with(|| Ring::new(SECOND_SAMPLES))
                .push(ts_ms, *value);
            inner
                .current
                .entry(name.clone())
                .and_modify(|a| a.add(*value))
                .or_insert_with(|| Accumulator::new(*value));
        }
        finished
    }

    /// Rollups of the minute still being accumulated, so far (for persisting it before it
    /// ends: a killed process then loses seconds, not a minute).
    pub fn current_rollups(&self) -> Vec<Rollup> {
        let inner = self.inner.lock();
        match inner.minute_start {
            Some(start) => Self::rollups_of(&inner.current, start),
            None => Vec::new(),
        }
    }

    fn rollups_of(current: &HashMap<String, Accumulator>, start: i64) -> Vec<Rollup> {
        let mut rollups: Vec<Rollup> = current
            .iter()
            .map(|(metric, a)| Rollup {
                ts_ms: start,
                metric: metric.clone(),
                avg: a.sum / f64::from(a.count),
                min: a.min,
                max: a.max,
                count: a.count,
            })
            .collect();
        rollups.sort_by(|a, b| a.metric.cmp(&b.metric));
        rollups
    }

    /// Adds `rollup` to its metric's minute ring at `ts_ms`, unless it would be a metric beyond
    /// [`MAX_METRICS`].
    fn keep_minute(inner: &mut Inner, ts_ms: i64, rollup: &Rollup) {
        if !inner.minutes.contains_key(&rollup.metric) && inner.minutes.len() >= MAX_METRICS {
            return;
        }
        inner
            .minutes
            .entry(rollup.metric.clone())
            .or_insert_with(|| Ring::new(MINUTE_SAMPLES))
            .push(ts_ms, rollup.clone());
    }

    fn finish_minute(inner: &mut Inner, start: i64) -> Vec<Rollup> {
        let current = std::mem::take(&mut inner.current);
        let rollups = Self::rollups_of(&current, start);
        for rollup in &rollups {
            Self::keep_minute(inner, start, rollup);
        }
        rollups
    }

    /// The last `n` 1 s samples of `metric`, oldest first.
    pub fn window(&self, metric: &str, n: usize) -> Vec<f64> {
        let inner = self.inner.lock();
        inner.seconds.get(metric).map_or_else(Vec::new, |ring| {
            let skip = ring.items.len().saturating_sub(n);
            ring.items.iter().skip(skip).map(|(_, v)| *v).collect()
        })
    }

    /// The latest 1 s sample of `metric`.
    pub fn latest(&self, metric: &str) -> Option<f64> {
        let inner = self.inner.lock();
        inner.seconds.get(metric)?.items.back().map(|(_, v)| *v)
    }

    /// 1 s samples of `metric` taken at or after `since_ms`.
    pub fn seconds(&self, metric: &str, since_ms: i64) -> Vec<Point> {
        points(self.inner.lock().seconds.get(metric), since_ms, |v| *v)
    }

    /// Minute means of `metric` from `since_ms` on, oldest first.
    pub fn minutes(&self, metric: &str, since_ms: i64) -> Vec<Point> {
        points(self.inner.lock().minutes.get(metric), since_ms, |r| r.avg)
    }

    /// Names of every metric with 1 s samples, sorted.
    pub fn metrics(&self) -> Vec<String> {
        let inner = self.inner.lock();
        let mut names: Vec<String> = inner.seconds.keys().cloned().collect();
        names.sort();
        names
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(name: &str, value: f64) -> Vec<(String, f64)> {
        vec![(name.to_owned(), value)]
    }

    #[test]
    fn seconds_ring_is_bounded_and_ordered() {
        let history = History::default();
        for i in 0..(SECOND_SAMPLES as i64 + 50) {
            history.record(i * 1000, &sample("m", i as f64));
        }
        let window = history.window("m", 10_000);
        assert_eq!(window.len(), SECOND_SAMPLES);
        assert_eq!(window[0], 50.0);
        assert_eq!(*window.last().unwrap(), SECOND_SAMPLES as f64 + 49.0);
        assert_eq!(history.window("m", 3), vec![647.0, 648.0, 649.0]);
    }

    #[test]
    fn a_new_minute_rolls_up_the_last() {
        let history = History::default();
        let mut finished = Vec::new();
        for second in 0..61 {
            finished.extend(history.record(second * 1000, &sample("m", second as f64)));
        }
        assert_eq!(finished.len(), 1);
        let rollup = &finished[0];
        assert_eq!((rollup.ts_ms, rollup.count), (0, 60));
        assert_eq!((rollup.min, rollup.max), (0.0, 59.0));
        assert!((rollup.avg - 29.5).abs() < 1e-9);
        assert_eq!(history.minutes("m", 0).len(), 1);
        let partial = history.current_rollups();
        assert_eq!((partial[0].ts_ms, partial[0].count), (60_000, 1));
    }

    #[test]
    fn non_finite_samples_are_skipped_and_restore_fills_minutes() {
        let history = History::default();
        history.record(0, &sample("m", f64::NAN));
        assert!(history.window("m", 5).is_empty());
        let rollups: Vec<Rollup> = (0..(MINUTE_SAMPLES as i64 + 5))
            .map(|i| Rollup {
                ts_ms: i * 60_000,
                metric: "m".into(),
                avg: i as f64,
                min: 0.0,
                max: 0.0,
                count: 60,
            })
            .collect();
        history.restore(&rollups);
        let minutes = history.minutes("m", 0);
        assert_eq!(minutes.len(), MINUTE_SAMPLES);
        assert_eq!(minutes[0].value, 5.0);
    }
}
