//! Placement as policies see it: what a router is asked about a new stream and what it answers.
//!
//! The data plane builds a list of [`Candidate`]s (connections of the monitor's class group with
//! a free stream slot) and asks a [`Router`]. Routers see plain records, never pool internals,
//! so a policy can be swapped (the policy plugins plug in here) without touching the data path.
//! A router must be fast and must not block: it runs on the path of every new stream.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use sluice_config::TrafficClass;

use crate::breaker::BreakerState;
use crate::health::Health;
use crate::traffic::TrafficMeter;

/// What a router knows about the monitor opening a stream.
#[derive(Debug, Clone)]
pub struct MonitorProfile {
    /// The monitor's id, or `"anonymous"`.
    pub id: Arc<str>,
    /// Its traffic class.
    pub class: TrafficClass,
    /// Whether the config marks it critical.
    pub critical: bool,
    /// Its configured region (`prefer_region`), if any.
    pub region: Option<Arc<str>>,
    /// Its measured traffic (shared by all its calls).
    pub traffic: Arc<TrafficMeter>,
}

impl MonitorProfile {
    /// A profile with no region and a fresh meter.
    pub fn new(id: impl Into<Arc<str>>, class: TrafficClass, critical: bool) -> Self {
        Self {
            id: id.into(),
            class,
            critical,
            region: None,
            traffic: Arc::new(TrafficMeter::new(class, None)),
        }
    }
}

/// One connection that could take the stream.
#[derive(Debug, Clone)]
pub struct Candidate {
    /// Pool-unique connection id.
    pub connection_id: u64,
    /// The endpoint the connection goes to.
    pub endpoint_id: Arc<str>,
    /// The endpoint's region label.
    pub region: Arc<str>,
    /// The endpoint's priority (lower is preferred).
    pub priority: u32,
    /// Streams currently on the connection.
    pub active_streams: u32,
    /// Streams the connection may carry: the configured limit, lowered by the peer's
    /// SETTINGS_MAX_CONCURRENT_STREAMS.
    pub max_streams: u32,
    /// Peak-EWMA latency: the PING round trip at open, then each stream's time to response
    /// headers.
    pub latency: Duration,
    /// Exponentially weighted share of recent streams on the connection that failed, 0..=1.
    pub error_rate: f64,
    /// How long the connection has been open.
    pub age: Duration,
    /// The endpoint's health.
    pub endpoint_health: Health,
    /// The endpoint breaker's state.
    pub endpoint_breaker: BreakerState,
}

impl Candidate {
    /// `active_streams / max_streams`.
    pub fn fill_ratio(&self) -> f64 {
        f64::from(self.active_streams) / f64::from(self.max_streams.max(1))
    }
}

/// The question a router answers.
#[derive(Debug)]
pub struct RouteRequest<'a> {
    /// Who is asking.
    pub monitor: &'a MonitorProfile,
    /// The method being called.
    pub method: &'a str,
    /// The id of the monitor's call being placed (its `x-sluice-stream` header), which the
    /// decision log files the decision under; 0 outside a call (benches, self-tests).
    pub stream: u64,
    /// Connections with a free slot; never empty.
    pub candidates: &'a [Candidate],
}

/// A router's answer.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteDecision {
    /// Index into [`RouteRequest::candidates`].
    pub index: usize,
    /// How sure the router is, 0..=1.
    pub confidence: f32,
    /// Why, in words, for the decision history.
    pub reason: Cow<'static, str>,
    /// Other candidates worth trying next, best first (indexes into the candidates).
    pub alternatives: Vec<usize>,
    /// The feature rows and model scores the decision was made with, when a model scored the
    /// candidates; the pool may watch the stream's outcome for the learning loop.
    pub scored: Option<Box<ScoredBatch>>,
}

/// How sure a router can be of a pick: how clearly it beat the runner-up, capped by how likely
/// the chosen connection is to carry the stream at all.
///
/// `won` and `lost` are the winner's and the runner-up's costs (lower is better, at least 0);
/// `None` when the winner had no rival at its priority. A tie is a coin flip (0.5), a rival
/// twice as costly gives 0.75, no rival 1. A winner failing a share of its streams makes any
/// pick a guess among bad options: the confidence is at most `1 - error_rate`, so a pool whose
/// every connection fails more than half its streams reads below 0.5 and the low-confidence
/// alert can say so, while a tie among healthy connections stays at 0.5. Busy connections alone
/// never lower it: load is not uncertainty.
pub fn confidence(won: f64, lost: Option<f64>, error_rate: f64) -> f32 {
    let separation = match lost {
        None => 1.0,
        Some(lost) if lost > 0.0 && won.is_finite() => {
            (0.5 + 0.5 * (1.0 - won.max(0.0) / lost)).clamp(0.5, 1.0)
        }
        Some(_) => 0.5,
    };
    let works = if error_rate.is_finite() {
        1.0 - error_rate.clamp(0.0, 1.0)
    } else {
        0.0
    };
    separation.min(works) as f32
}

/// A placement policy.
pub trait Router: Send + Sync + 'static {
    /// A short name for logs and metrics.
    fn name(&self) -> &str;

    /// Picks one of the candidates. `None` or an out-of-range index makes the data plane use
    /// its built-in policy for this call.
    fn route(&self, request: &RouteRequest<'_>) -> Option<RouteDecision>;
}

/// The feature rows a router scored for one decision, and the model's scores.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoredBatch {
    /// Features per row.
    pub columns: u32,
    /// One row per candidate, row-major.
    pub values: Vec<f32>,
    /// The model's score per row.
    pub scores: Vec<f32>,
}

impl ScoredBatch {
    /// Row `index`, if the batch has it.
    pub fn row(&self, index: usize) -> Option<&[f32]> {
        let columns = self.columns as usize;
        self.values.get(index * columns..(index + 1) * columns)
    }
}
