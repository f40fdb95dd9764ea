//! Long series for forecasts: minute rollups from the store, averaged into coarser steps.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use sluice_config::TrafficClass;
use sluice_policy::LoadHistory;

use crate::records::unix_ms_now;
use crate::sampler::group_metric;
use crate::store::Store;

/// How long a computed series answers the `history` import before it is read again.
const FRESH_FOR: Duration = Duration::from_secs(60);
/// The default scaler plugin's question: 15-minute steps over 7 days.
const DEFAULT_QUESTION: (u32, u32) = (15, 7 * 96);

/// A plugin's question: the group, minutes per step, and steps.
type Question = (TrafficClass, u32, u32);
/// An answer and when it was read.
type Answer = (Instant, Arc<Vec<f64>>);

/// The `history` host import of scaler plugins, answered from the store's minute rollups of
/// each group's streams.
///
/// A week of rollups is thousands of rows, too slow to read inside a plugin call's deadline, so
/// answers come from a cache that the scaler loop refreshes before it asks the plugin
/// ([`StoredHistory::refresh`]); a question not seen before is read at once and remembered.
pub struct StoredHistory {
    store: Arc<Store>,
    cache: Mutex<HashMap<Question, Answer>>,
}

impl StoredHistory {
    /// History read from `store`.
    pub fn new(store: Arc<Store>) -> Self {
        Self {
            store,
            cache: Mutex::new(HashMap::new()),
        }
    }

    fn read(&self, (class, step, points): Question) -> Arc<Vec<f64>> {
        Arc::new(stepped(
            &self.store,
            &group_metric(class, "streams"),
            unix_ms_now(),
            step,
            points,
        ))
    }

    /// Re-reads every question asked so far, and the default scaler's for each group, when its
    /// answer is older than a minute. Blocking: call it off the async runtime.
    pub fn refresh(&self) {
        let mut questions: Vec<Question> = self.cache.lock().keys().copied().collect();
        for class in TrafficClass::ALL {
            let question = (class, DEFAULT_QUESTION.0, DEFAULT_QUESTION.1);
            if !questions.contains(&question) {
                questions.push(question);
            }
        }
        for question in questions {
            let stale = self
                .cache
                .lock()
                .get(&question)
                .is_none_or(|(at, _)| at.elapsed() >= FRESH_FOR);
            if stale {
                let answer = self.read(question);
                self.cache.lock().insert(question, (Instant::now(), answer));
            }
        }
    }
}

impl LoadHistory for StoredHistory {
    fn group_streams(&self, class: TrafficClass, step_minutes: u32, points: u32) -> Vec<f64> {
        let question = (class, step_minutes, points);
        if let Some((_, answer)) = self.cache.lock().get(&question) {
            return answer.to_vec();
        }
        let answer = self.read(question);
        let mut cache = self.cache.lock();
        // Plugins choose the questions: keep the cache bounded.
        if cache.len() >= 64 {
            cache.clear();
        }
        cache.insert(question, (Instant::now(), Arc::clone(&answer)));
        answer.to_vec()
    }
}

/// Mean of `metric`'s minute rollups per step of `step_minutes`, oldest first, ending with the
/// step that holds `now_ms`; at most `points` values. Steps without rollups are NaN; leading
/// and trailing empty steps are dropped, so a young store gives a short series.
pub fn stepped(
    store: &Store,
    metric: &str,
    now_ms: i64,
    step_minutes: u32,
    points: u32,
) -> Vec<f64> {
    let step_ms = i64::from(step_minutes.max(1)) * 60_000;
    let points = points.max(1) as usize;
    let last_start = now_ms - now_ms.rem_euclid(step_ms);
    let first_start = last_start - (points as i64 - 1) * step_ms;
    let rows = match store.rollups(metric, first_start, now_ms) {
        Ok(rows) => rows,
        Err(error) => {
            tracing::warn!(%error, metric, "could not read rollups for a forecast");
            return Vec::new();
        }
    };
    let mut sums = vec![(0.0f64, 0u32); points];
    for row in rows {
        let Ok(index) = usize::try_from((row.ts_ms - first_start) / step_ms) else {
            continue;
        };
        if let Some((sum, count)) = sums.get_mut(index) {
            *sum += row.avg;
            *count += 1;
        }
    }
    let mut series: Vec<f64> = sums
        .into_iter()
        .map(|(sum, count)| {
            if count == 0 {
                f64::NAN
            } else {
                sum / f64::from(count)
            }
        })
        .collect();
    while series.last().is_some_and(|v| v.is_nan()) {
        series.pop();
    }
    let leading = series.iter().take_while(|v| v.is_nan()).count();
    series.drain(..leading);
    series
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::records::Rollup;

    fn rollup(metric: &str, ts_ms: i64, avg: f64) -> Rollup {
        Rollup {
            ts_ms,
            metric: metric.to_owned(),
            avg,
            min: avg,
            max: avg,
            count: 60,
        }
    }

    #[test]
    fn minutes_average_into_steps_with_gaps_and_without_empty_edges() {
        let store = Store::open(Path::new(":memory:"), Duration::from_secs(86_400)).unwrap();
        let hour = 3_600_000;
        let now = 100 * hour + 5 * 60_000;
        // Step [96h, 97h): 2 and 4; step [97h, 98h) empty; step [98h, 99h): 10.
        let metric = "group.realtime.streams";
        store
            .write_rollups(&[
                rollup(metric, 96 * hour, 2.0),
                rollup(metric, 96 * hour + 60_000, 4.0),
                rollup(metric, 98 * hour, 10.0),
            ])
            .unwrap();
        let series = stepped(&store, metric, now, 60, 24);
        assert_eq!(series.len(), 3, "{series:?}");
        assert_eq!(series[0], 3.0);
        assert!(series[1].is_nan());
        assert_eq!(series[2], 10.0);
        assert!(stepped(&store, "other", now, 60, 24).is_empty());
    }

    #[test]
    fn answers_come_from_the_cache_until_refreshed() {
        let store =
            Arc::new(Store::open(Path::new(":memory:"), Duration::from_secs(86_400)).unwrap());
        let history = StoredHistory::new(Arc::clone(&store));
        assert!(history.group_streams(TrafficClass::Event, 1, 10).is_empty());
        let now = unix_ms_now();
        store
            .write_rollups(&[rollup(
                "group.event.streams",
                now - now.rem_euclid(60_000),
                7.0,
            )])
            .unwrap();
        // Cached (empty) until the answer is a minute old.
        assert!(history.group_streams(TrafficClass::Event, 1, 10).is_empty());
        history.cache.lock().clear();
        assert_eq!(history.group_streams(TrafficClass::Event, 1, 10), vec![7.0]);
        history.refresh();
        assert!(
            history.cache.lock().len() >= 4,
            "the default questions are read too"
        );
    }
}
