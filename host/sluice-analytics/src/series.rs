//! Long series for forecasts: minute rollups from the store, averaged into coarser steps.

use std::sync::Arc;

use sluice_config::TrafficClass;
use sluice_policy::LoadHistory;

use crate::records::unix_ms_now;
use crate::sampler::group_metric;
use crate::store::Store;

/// The `history` host import of scaler plugins, answered from the store's minute rollups of
/// each group's streams.
pub struct StoredHistory {
    store: Arc<Store>,
}

impl StoredHistory {
    /// History read from `store`.
    pub fn new(store: Arc<Store>) -> Self {
        Self { store }
    }
}

impl LoadHistory for StoredHistory {
    fn group_streams(&self, class: TrafficClass, step_minutes: u32, points: u32) -> Vec<f64> {
        stepped(
            &self.store,
            &group_metric(class, "streams"),
            unix_ms_now(),
            step_minutes,
            points,
        )
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
