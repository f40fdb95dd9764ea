//! The records the analytics engine keeps: what the store persists and the admin API serves.
//!
//! Plain serializable data; no behaviour beyond naming. Times are Unix milliseconds so that rows
//! survive restarts and compare across processes.

use serde::{Deserialize, Serialize};

/// Milliseconds since the Unix epoch, now.
pub fn unix_ms_now() -> i64 {
    unix_ms(std::time::SystemTime::now())
}

/// One metric over one minute.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rollup {
    /// Start of the minute, Unix ms (a multiple of 60 000).
    pub ts_ms: i64,
    /// Metric name, e.g. `pool.connections` or `group.realtime.streams`.
    pub metric: String,
    /// Mean of the minute's 1 s samples.
    pub avg: f64,
    /// Smallest sample.
    pub min: f64,
    /// Largest sample.
    pub max: f64,
    /// Samples in the minute.
    pub count: u32,
}

/// What kind of observation an insight is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InsightKind {
    /// A value far outside its recent distribution.
    Anomaly,
    /// A sustained change in one direction.
    Trend,
    /// A forecast.
    Prediction,
    /// A suggested configuration change.
    Recommendation,
}

impl InsightKind {
    /// The name used in the store, the API and reports.
    pub fn as_str(self) -> &'static str {
        match self {
            InsightKind::Anomaly => "anomaly",
            InsightKind::Trend => "trend",
            InsightKind::Prediction => "prediction",
            InsightKind::Recommendation => "recommendation",
        }
    }

    /// The kind named `text`.
    pub fn parse(text: &str) -> Option<Self> {
        [
            InsightKind::Anomaly,
            InsightKind::Trend,
            InsightKind::Prediction,
            InsightKind::Recommendation,
        ]
        .into_iter()
        .find(|k| k.as_str() == text)
    }
}

/// How urgent an insight is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Worth knowing.
    Info,
    /// Needs attention soon.
    Warning,
    /// Needs attention now.
    Critical,
}

impl Severity {
    /// The name used in the store, the API and reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }

    /// The severity named `text`.
    pub fn parse(text: &str) -> Option<Self> {
        [Severity::Info, Severity::Warning, Severity::Critical]
            .into_iter()
            .find(|s| s.as_str() == text)
    }
}

/// An observation about the pool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Insight {
    /// Store id (0 before it is stored).
    pub id: i64,
    /// When it was first seen, Unix ms.
    pub ts_ms: i64,
    /// When it was last seen again (repeats within `analytics.repeat_after` update this).
    pub last_seen_ms: i64,
    /// How many times it was seen.
    pub occurrences: u32,
    /// What kind of observation.
    pub kind: InsightKind,
    /// How urgent.
    pub severity: Severity,
    /// One line.
    pub title: String,
    /// What was seen and why it matters.
    pub description: String,
    /// The metric it concerns, if any.
    pub metric: Option<String>,
    /// The value that triggered it.
    pub value: f64,
    /// How unusual it is (policy-defined for anomalies, e.g. a z-score).
    pub score: f64,
    /// Who produced it: the anomaly plugin's label, `builtin`, or `rules` for host thresholds.
    pub source: String,
    /// Supporting numbers (e.g. a forecast's band), free-form JSON.
    pub data: serde_json::Value,
}

/// One scaling decision for one group, applied or not.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScalingRecord {
    /// Store id (0 before it is stored).
    pub id: i64,
    /// When, Unix ms.
    pub ts_ms: i64,
    /// The group's class (`realtime`, `event`, `state`).
    pub class: String,
    /// The change the policy asked for.
    pub requested: i32,
    /// The change applied after cooldowns, min/max and the global cap (0 when none).
    pub applied: i32,
    /// Connections before.
    pub from: u32,
    /// Connections the group targets after.
    pub to: u32,
    /// The policy's reason, plus the host's when it clamped or refused the action.
    pub reason: String,
    /// Who decided: the scaler plugin's label or `builtin`.
    pub policy: String,
    /// The group's metrics as the policy saw them.
    pub metrics: serde_json::Value,
}

/// A routing decision kept as a sample of what the router did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DecisionSample {
    /// When, Unix ms.
    pub ts_ms: i64,
    /// The monitor whose stream was placed.
    pub monitor: String,
    /// The method called.
    pub method: String,
    /// The id of the call it placed (its `x-sluice-stream` header). Kept in memory only:
    /// samples read back from the store have none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<u64>,
    /// Who decided.
    pub policy: String,
    /// Whether the built-in policy answered because the plugin failed.
    pub fallback: bool,
    /// The chosen connection.
    pub connection_id: u64,
    /// Candidates there were.
    pub candidates: u32,
    /// The decision's confidence.
    pub confidence: f32,
    /// The decision's reason.
    pub reason: String,
}

impl From<sluice_policy::RecordedDecision> for DecisionSample {
    fn from(decision: sluice_policy::RecordedDecision) -> Self {
        Self {
            ts_ms: unix_ms(decision.at),
            monitor: decision.monitor.to_string(),
            method: decision.method,
            stream: (decision.stream != 0).then_some(decision.stream),
            policy: decision.policy.to_string(),
            fallback: decision.fallback,
            connection_id: decision.connection_id,
            candidates: u32::try_from(decision.candidates).unwrap_or(u32::MAX),
            confidence: decision.confidence,
            reason: decision.reason,
        }
    }
}

/// Time to first message at which an outcome's quality is one half (see [`outcome_quality`]).
pub const QUALITY_REFERENCE_MS: f64 = 50.0;

/// How good a placement turned out, 0..=1, the value the scorer's model learns to predict:
/// 0 when the stream failed upstream or got no message within the watched time, else
/// `1 / (1 + ttfm_ms / 50)` (2 ms -> 0.96, 10 ms -> 0.83, 50 ms -> 0.5).
pub fn outcome_quality(first_message_ms: Option<f64>, failed: bool) -> f64 {
    match first_message_ms {
        Some(ms) if !failed && ms.is_finite() => 1.0 / (1.0 + ms.max(0.0) / QUALITY_REFERENCE_MS),
        _ => 0.0,
    }
}

/// A routing decision's features and what became of its stream, as stored for training.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutcomeRecord {
    /// When the decision was made, Unix ms.
    pub ts_ms: i64,
    /// The monitor whose stream it was.
    pub monitor: String,
    /// The chosen connection's endpoint.
    pub endpoint: String,
    /// The chosen connection.
    pub connection_id: u64,
    /// Candidates the router saw.
    pub candidates: u32,
    /// The decision's reason.
    pub reason: String,
    /// Features per row.
    pub columns: u32,
    /// The chosen candidate's feature row.
    pub features: Vec<f32>,
    /// Time to first message, ms, when one came within the watched time.
    pub first_message_ms: Option<f64>,
    /// Whether the stream failed upstream within the watched time.
    pub failed: bool,
    /// Response messages per second over the watched time.
    pub throughput: f64,
    /// How long it was watched, ms.
    pub observed_ms: f64,
    /// [`outcome_quality`] of the above.
    pub quality: f64,
    /// The active model's prediction for the chosen row.
    pub predicted: Option<f64>,
    /// The shadow model's prediction for it, when a shadow ran.
    pub shadow_predicted: Option<f64>,
    /// Whether the shadow model's best row was the active model's.
    pub shadow_agreed: Option<bool>,
}

impl OutcomeRecord {
    /// The stored form of a finished observation (before any shadow comparison).
    pub fn from_outcome(outcome: &sluice_proxy::route::RouteOutcome) -> Self {
        let first_message_ms = outcome.first_message.map(|t| t.as_secs_f64() * 1e3);
        Self {
            ts_ms: unix_ms(outcome.at),
            monitor: outcome.monitor.to_string(),
            endpoint: outcome.endpoint.to_string(),
            connection_id: outcome.connection_id,
            candidates: u32::try_from(outcome.candidates).unwrap_or(u32::MAX),
            reason: outcome.reason.clone(),
            columns: outcome.batch.columns,
            features: outcome
                .batch
                .row(outcome.chosen)
                .unwrap_or_default()
                .to_vec(),
            first_message_ms,
            failed: outcome.failed,
            throughput: outcome.throughput(),
            observed_ms: outcome.observed.as_secs_f64() * 1e3,
            quality: outcome_quality(first_message_ms, outcome.failed),
            predicted: outcome
                .batch
                .scores
                .get(outcome.chosen)
                .map(|&s| f64::from(s)),
            shadow_predicted: None,
            shadow_agreed: None,
        }
    }
}

/// `at` in Unix ms (0 before the epoch).
pub fn unix_ms(at: std::time::SystemTime) -> i64 {
    at.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |t| i64::try_from(t.as_millis()).unwrap_or(i64::MAX))
}

/// The span a report covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReportPeriod {
    /// The last hour.
    Hourly,
    /// The last 24 hours.
    Daily,
    /// The last 7 days.
    Weekly,
}

impl ReportPeriod {
    /// Every period.
    pub const ALL: [ReportPeriod; 3] = [
        ReportPeriod::Hourly,
        ReportPeriod::Daily,
        ReportPeriod::Weekly,
    ];

    /// The name used in the store, the API and the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            ReportPeriod::Hourly => "hourly",
            ReportPeriod::Daily => "daily",
            ReportPeriod::Weekly => "weekly",
        }
    }

    /// The period named `text`.
    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.as_str() == text)
    }

    /// Its length in milliseconds.
    pub fn length_ms(self) -> i64 {
        match self {
            ReportPeriod::Hourly => 3_600_000,
            ReportPeriod::Daily => 86_400_000,
            ReportPeriod::Weekly => 7 * 86_400_000,
        }
    }
}
