//! The analytics loop's judgement: anomalies from the `anomaly` policy, the host's threshold
//! rules (pool exhaustion, error and reconnect rates), recommendations, load trends and
//! predictions of the connections needed.
//!
//! Insights are de-duplicated: the same kind, metric, title and severity within
//! `analytics.repeat_after` updates the existing insight (last seen, occurrences) instead of
//! adding one. This module judges and records; it does not alert (the alerts module does) and
//! never changes the pool.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use parking_lot::Mutex;
use serde::Serialize;
use sluice_config::{AnalyticsConfig, SlotKind};
use sluice_policy::Policies;
use sluice_policy::types::{self as policy, MetricWindow};
use sluice_proxy::ProxyView;

use crate::history::History;
use crate::records::{Insight, InsightKind, Severity, unix_ms_now};
use crate::sampler;
use crate::scaling::slope_per_minute;
use crate::series::stepped;
use crate::store::Store;

/// Insights kept in memory for the API.
const RECENT: usize = 256;
/// Forecast step and season: 15 minutes, one day.
const STEP_MINUTES: u32 = 15;
const SEASON_STEPS: usize = 96;
/// History behind a forecast: 7 days of steps.
const HISTORY_STEPS: u32 = 7 * 96;
/// Forecast horizon: 6 hours of steps.
const HORIZON_STEPS: usize = 24;
/// Steps in the next hour.
const HOUR_STEPS: usize = 4;
/// Steps a forecast needs before it is made.
const MIN_FORECAST_STEPS: usize = 8;
/// How often the forecast is recomputed.
const FORECAST_EVERY_MS: i64 = 60_000;

/// One step of a forecast.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ForecastPoint {
    /// Start of the step, Unix ms.
    pub ts_ms: i64,
    /// Expected value.
    pub mean: f64,
    /// Lower edge of the 95% band.
    pub lower: f64,
    /// Upper edge of the 95% band.
    pub upper: f64,
}

/// The forecast of connections needed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Prediction {
    /// When it was made, Unix ms.
    pub generated_ms: i64,
    /// The metric forecast.
    pub metric: String,
    /// Minutes per step.
    pub step_minutes: u32,
    /// The model used (`flat`, `holt`, `holt-winters`).
    pub method: String,
    /// Steps of history it was fitted on.
    pub history_steps: usize,
    /// The next 6 hours, step by step.
    pub points: Vec<ForecastPoint>,
    /// The highest expected step in the next hour, with its band.
    pub next_hour: ForecastPoint,
    /// The highest expected step in the next 6 hours, with its band.
    pub next_6h: ForecastPoint,
}

#[derive(Default)]
struct State {
    recent: VecDeque<Insight>,
    /// Open insights by de-duplication key: their id and when they were last seen.
    open: HashMap<String, (i64, i64)>,
    prediction: Option<Prediction>,
}

/// Judges the pool every analytics period.
pub struct Analyst {
    config: AnalyticsConfig,
    proxy: ProxyView,
    policies: Arc<Policies>,
    history: Arc<History>,
    store: Arc<Store>,
    state: Mutex<State>,
}

fn peak(points: &[ForecastPoint]) -> Option<ForecastPoint> {
    points
        .iter()
        .copied()
        .max_by(|a, b| a.mean.total_cmp(&b.mean))
}

fn mean(values: &[f64]) -> Option<f64> {
    (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
}

struct Found {
    kind: InsightKind,
    severity: Severity,
    title: String,
    description: String,
    metric: Option<String>,
    value: f64,
    score: f64,
    source: String,
    data: serde_json::Value,
}

impl Analyst {
    /// An analyst of `proxy` that asks `policies` for anomalies.
    pub fn new(
        config: AnalyticsConfig,
        proxy: ProxyView,
        policies: Arc<Policies>,
        history: Arc<History>,
        store: Arc<Store>,
    ) -> Self {
        Self {
            config,
            proxy,
            policies,
            history,
            store,
            state: Mutex::new(State::default()),
        }
    }

    /// The last `limit` insights, newest first.
    pub fn recent(&self, limit: usize) -> Vec<Insight> {
        let state = self.state.lock();
        state.recent.iter().rev().take(limit).cloned().collect()
    }

    /// The latest forecast of connections needed, if one was made.
    pub fn prediction(&self) -> Option<Prediction> {
        self.state.lock().prediction.clone()
    }

    /// One analytics run: returns the insights it added or saw again.
    pub async fn run_once(self: &Arc<Self>) -> Vec<Insight> {
        let this = Arc::clone(self);
        match tokio::task::spawn_blocking(move || this.judge()).await {
            Ok(found) => found,
            Err(error) => {
                tracing::error!(%error, "the analytics run panicked");
                Vec::new()
            }
        }
    }

    fn judge(&self) -> Vec<Insight> {
        let now_ms = unix_ms_now();
        let mut found = self.anomalies();
        found.extend(self.thresholds());
        found.extend(self.recommendations());
        found.extend(self.trend());
        found.extend(self.predict(now_ms));
        found
            .into_iter()
            .filter_map(|f| self.record(f, now_ms))
            .collect()
    }

    fn anomalies(&self) -> Vec<Found> {
        let windows: Vec<MetricWindow> = sampler::WATCHED
            .iter()
            .map(|name| MetricWindow {
                name: (*name).to_owned(),
                interval_ms: 1000,
                samples: self.history.window(name, self.config.window_samples),
            })
            .collect();
        let source = self
            .policies
            .slot(SlotKind::Anomaly)
            .callable()
            .map_or_else(|| "builtin".to_owned(), |p| p.label().to_string());
        self.policies
            .detect(&windows)
            .into_iter()
            .map(|insight| Found {
                kind: match insight.kind {
                    policy::InsightKind::Anomaly => InsightKind::Anomaly,
                    policy::InsightKind::Trend => InsightKind::Trend,
                    policy::InsightKind::Prediction => InsightKind::Prediction,
                    policy::InsightKind::Recommendation => InsightKind::Recommendation,
                },
                severity: match insight.severity {
                    policy::Severity::Info => Severity::Info,
                    policy::Severity::Warning => Severity::Warning,
                    policy::Severity::Critical => Severity::Critical,
                },
                title: insight.title,
                description: insight.description,
                metric: insight.metric,
                value: insight.value,
                score: insight.score,
                source: source.clone(),
                data: serde_json::Value::Null,
            })
            .collect()
    }

    /// Mean of the last `seconds` samples of `metric`.
    fn recent_mean(&self, metric: &str, seconds: usize) -> Option<f64> {
        mean(&self.history.window(metric, seconds))
    }

    fn period_samples(&self) -> usize {
        (self.config.period.as_secs() as usize).max(1)
    }

    fn thresholds(&self) -> Vec<Found> {
        let mut found = Vec::new();
        let rule = |severity, title: &str, description: String, metric: &str, value, limit| Found {
            kind: InsightKind::Anomaly,
            severity,
            title: title.to_owned(),
            description,
            metric: Some(metric.to_owned()),
            value,
            score: value / limit,
            source: "rules".to_owned(),
            data: serde_json::json!({ "threshold": limit }),
        };
        if let Some(usage) = self.history.latest(sampler::CAP_USAGE)
            && usage > self.config.exhaustion_ratio
        {
            found.push(rule(
                Severity::Critical,
                "Connection pool near exhaustion",
                format!(
                    "{:.0}% of the global cap of {} connections is in use (threshold {:.0}%)",
                    usage * 100.0,
                    self.proxy.global_cap(),
                    self.config.exhaustion_ratio * 100.0
                ),
                sampler::CAP_USAGE,
                usage,
                self.config.exhaustion_ratio,
            ));
        }
        let period = self.period_samples();
        let started: f64 = self
            .history
            .window(sampler::STREAMS_STARTED, period)
            .iter()
            .sum();
        let failed: f64 = self.history.window(sampler::ERRORS, period).iter().sum();
        if started >= 10.0 && failed / started > self.config.critical_error_rate {
            let rate = failed / started;
            found.push(rule(
                Severity::Critical,
                "High upstream error rate",
                format!(
                    "{:.1}% of the {started:.0} streams placed in the last {period} s failed (threshold {:.1}%)",
                    rate * 100.0,
                    self.config.critical_error_rate * 100.0
                ),
                sampler::ERROR_RATE,
                rate,
                self.config.critical_error_rate,
            ));
        }
        if let Some(reconnects) = self.recent_mean(sampler::RECONNECTS, 60)
            && reconnects > self.config.critical_reconnects_per_minute
        {
            found.push(rule(
                Severity::Critical,
                "High reconnect rate",
                format!(
                    "{reconnects:.0} upstream connections opened per minute over the last minute (threshold {:.0})",
                    self.config.critical_reconnects_per_minute
                ),
                sampler::RECONNECTS,
                reconnects,
                self.config.critical_reconnects_per_minute,
            ));
        }
        found
    }

    fn recommendations(&self) -> Vec<Found> {
        let mut found = Vec::new();
        let connections = self.recent_mean(sampler::CONNECTIONS, 60).unwrap_or(0.0);
        let recommend =
            |severity, title: String, description: String, metric: Option<&str>, value: f64| {
                Found {
                    kind: InsightKind::Recommendation,
                    severity,
                    title,
                    description,
                    metric: metric.map(str::to_owned),
                    value,
                    score: 0.0,
                    source: "rules".to_owned(),
                    data: serde_json::Value::Null,
                }
            };
        if connections >= 2.0
            && let Some(per_connection) = self.recent_mean(sampler::STREAMS_PER_CONNECTION, 60)
            && per_connection < self.config.low_multiplexing
        {
            found.push(recommend(
                Severity::Info,
                "Low multiplexing".to_owned(),
                format!(
                    "connections carry {per_connection:.1} streams each on average over the last minute; \
                     fewer connections (lower min_connections, or let the scaler shrink the groups) would carry the same streams"
                ),
                Some(sampler::STREAMS_PER_CONNECTION),
                per_connection,
            ));
        }
        if connections >= 3.0
            && let Some(idle) = self.recent_mean(sampler::IDLE_RATIO, 60)
            && idle > self.config.idle_ratio
        {
            found.push(recommend(
                Severity::Info,
                "Many idle connections".to_owned(),
                format!(
                    "{:.0}% of connections carried no stream over the last minute; lower the groups' min_connections",
                    idle * 100.0
                ),
                Some(sampler::IDLE_RATIO),
                idle,
            ));
        }
        let calls = self.proxy.monitor_calls();
        let active: Vec<&(Arc<str>, u64)> = calls.iter().filter(|(_, n)| *n > 0).collect();
        let total: u64 = active.iter().map(|(_, n)| n).sum();
        if active.len() >= 3
            && total >= 10
            && let Some((monitor, top)) = active.iter().max_by_key(|(_, n)| *n)
        {
            let share = *top as f64 / total as f64;
            if share > self.config.monitor_share {
                found.push(recommend(
                    Severity::Warning,
                    format!("Monitor {monitor} holds {:.0}% of streams", share * 100.0),
                    format!(
                        "{monitor} has {top} of {total} open calls; give it its own class or a stream limit so it cannot crowd out the others"
                    ),
                    None,
                    share,
                ));
            }
        }
        found
    }

    fn trend(&self) -> Vec<Found> {
        let since = unix_ms_now() - 30 * 60_000;
        let minutes: Vec<f64> = self
            .history
            .minutes(sampler::DOWNSTREAM_STREAMS, since)
            .iter()
            .map(|p| p.value)
            .collect();
        if minutes.len() < 10 {
            return Vec::new();
        }
        let per_minute = slope_per_minute(&minutes) / 60.0;
        let level = mean(&minutes).unwrap_or(0.0).max(1.0);
        let change = per_minute * minutes.len() as f64;
        if change.abs() < 5.0 || change.abs() / level < 0.5 {
            return Vec::new();
        }
        let direction = if change > 0.0 { "rising" } else { "falling" };
        vec![Found {
            kind: InsightKind::Trend,
            severity: if change > 0.0 {
                Severity::Warning
            } else {
                Severity::Info
            },
            title: format!("Load {direction}"),
            description: format!(
                "open calls changed by {change:+.0} over the last {} minutes ({per_minute:+.1} a minute)",
                minutes.len()
            ),
            metric: Some(sampler::DOWNSTREAM_STREAMS.to_owned()),
            value: minutes.last().copied().unwrap_or(0.0),
            score: change / level,
            source: "rules".to_owned(),
            data: serde_json::json!({ "per_minute": per_minute }),
        }]
    }

    fn predict(&self, now_ms: i64) -> Vec<Found> {
        let fresh = self
            .state
            .lock()
            .prediction
            .as_ref()
            .is_some_and(|p| now_ms - p.generated_ms < FORECAST_EVERY_MS);
        if fresh {
            return Vec::new();
        }
        let Some(prediction) = self.forecast(now_ms) else {
            return Vec::new();
        };
        let found = Found {
            kind: InsightKind::Prediction,
            severity: Severity::Info,
            title: "Connections needed ahead".to_owned(),
            description: format!(
                "next hour: up to {:.1} connections (95% band {:.1}-{:.1}); next 6 hours: up to {:.1} ({:.1}-{:.1}); {} over {} steps of {} min",
                prediction.next_hour.mean,
                prediction.next_hour.lower,
                prediction.next_hour.upper,
                prediction.next_6h.mean,
                prediction.next_6h.lower,
                prediction.next_6h.upper,
                prediction.method,
                prediction.history_steps,
                prediction.step_minutes
            ),
            metric: Some(prediction.metric.clone()),
            value: prediction.next_hour.mean,
            score: prediction.next_6h.mean,
            source: "forecast".to_owned(),
            data: serde_json::json!({
                "next_hour": prediction.next_hour,
                "next_6h": prediction.next_6h,
            }),
        };
        self.state.lock().prediction = Some(prediction);
        vec![found]
    }

    /// Forecasts connections needed from the stored minute rollups.
    pub fn forecast(&self, now_ms: i64) -> Option<Prediction> {
        let series = stepped(
            &self.store,
            sampler::CONNECTIONS_NEEDED,
            now_ms,
            STEP_MINUTES,
            HISTORY_STEPS,
        );
        if series.len() < MIN_FORECAST_STEPS {
            return None;
        }
        let forecast = sluice_forecast::forecast(&series, SEASON_STEPS, HORIZON_STEPS);
        let step_ms = i64::from(STEP_MINUTES) * 60_000;
        let next_step = now_ms - now_ms.rem_euclid(step_ms) + step_ms;
        let points: Vec<ForecastPoint> = forecast
            .mean
            .iter()
            .zip(&forecast.lower)
            .zip(&forecast.upper)
            .enumerate()
            .map(|(i, ((mean, lower), upper))| ForecastPoint {
                ts_ms: next_step + i as i64 * step_ms,
                mean: mean.max(0.0),
                lower: lower.max(0.0),
                upper: upper.max(0.0),
            })
            .collect();
        Some(Prediction {
            generated_ms: now_ms,
            metric: sampler::CONNECTIONS_NEEDED.to_owned(),
            step_minutes: STEP_MINUTES,
            method: forecast.method.name().to_owned(),
            history_steps: series.len(),
            next_hour: peak(&points[..HOUR_STEPS.min(points.len())])?,
            next_6h: peak(&points)?,
            points,
        })
    }

    /// Stores a new insight, or updates the open one with the same key.
    fn record(&self, found: Found, now_ms: i64) -> Option<Insight> {
        let key = format!(
            "{}|{}|{}|{}",
            found.kind.as_str(),
            found.metric.as_deref().unwrap_or(""),
            found.title,
            found.severity.as_str()
        );
        let repeat_ms = i64::try_from(self.config.repeat_after.as_millis()).unwrap_or(i64::MAX);
        let mut state = self.state.lock();
        if let Some((id, last_ms)) = state.open.get(&key).copied()
            && now_ms - last_ms < repeat_ms
        {
            state.open.insert(key, (id, now_ms));
            let insight = state.recent.iter_mut().find(|i| i.id == id)?;
            insight.last_seen_ms = now_ms;
            insight.occurrences += 1;
            insight.value = found.value;
            insight.score = found.score;
            insight.description = found.description;
            let updated = insight.clone();
            drop(state);
            if let Err(error) = self.store.update_insight_seen(
                updated.id,
                updated.last_seen_ms,
                updated.occurrences,
                updated.value,
                updated.score,
            ) {
                tracing::warn!(%error, "could not update an insight in the store");
            }
            return Some(updated);
        }
        let mut insight = Insight {
            id: 0,
            ts_ms: now_ms,
            last_seen_ms: now_ms,
            occurrences: 1,
            kind: found.kind,
            severity: found.severity,
            title: found.title,
            description: found.description,
            metric: found.metric,
            value: found.value,
            score: found.score,
            source: found.source,
            data: found.data,
        };
        drop(state);
        match self.store.insert_insight(&insight) {
            Ok(id) => insight.id = id,
            Err(error) => {
                tracing::warn!(%error, "could not store an insight");
                // Keep it in memory under a negative id so that it is still shown and
                // de-duplicated.
                insight.id = -now_ms;
            }
        }
        match insight.severity {
            Severity::Critical | Severity::Warning => tracing::warn!(
                kind = insight.kind.as_str(), severity = insight.severity.as_str(),
                title = %insight.title, description = %insight.description, "insight"),
            Severity::Info => tracing::info!(
                kind = insight.kind.as_str(), severity = insight.severity.as_str(),
                title = %insight.title, description = %insight.description, "insight"),
        }
        let mut state = self.state.lock();
        state.open.insert(key, (insight.id, now_ms));
        state.open.retain(|_, (_, last)| now_ms - *last < repeat_ms);
        if state.recent.len() == RECENT {
            state.recent.pop_front();
        }
        state.recent.push_back(insight.clone());
        Some(insight)
    }
}
