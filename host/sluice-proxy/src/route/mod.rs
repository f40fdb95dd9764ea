//! Placement: which upstream connection a new stream goes to.
//!
//! The pool builds a list of [`Candidate`]s (connections of the monitor's class group with a free
//! stream slot) and asks a [`Router`]. Routers see plain records, never pool internals, so a
//! policy can be swapped (the policy plugins plug in here) without touching the data path. A
//! router must be fast and must not block: it runs on the path of every new stream (without the
//! group's lock; the pool takes the chosen slot afterwards and asks again if a concurrent stream
//! took it first).

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use sluice_config::TrafficClass;

use crate::breaker::BreakerState;
use crate::health::Health;

pub mod outcome;
pub mod traffic;

pub use outcome::{OutcomeLog, RouteOutcome, ScoredBatch};
pub use traffic::{TrafficMeter, TrafficProfile};

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
    /// headers ([`crate::pool::load`]).
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

/// A placement policy.
pub trait Router: Send + Sync + 'static {
    /// A short name for logs and metrics.
    fn name(&self) -> &str;

    /// Picks one of the candidates. `None` or an out-of-range index makes the pool use the
    /// built-in [`LeastLoaded`] policy for this call.
    fn route(&self, request: &RouteRequest<'_>) -> Option<RouteDecision>;
}

/// The built-in policy: the connection with the lowest fill ratio, preferring better endpoint
/// priority, then fewer streams, then the older connection (stable placement).
#[derive(Debug, Default, Clone, Copy)]
pub struct LeastLoaded;

impl LeastLoaded {
    /// Places on `candidates`; `None` only when the slice is empty.
    pub fn pick(candidates: &[Candidate]) -> Option<RouteDecision> {
        let (index, best) = candidates.iter().enumerate().min_by(|(_, a), (_, b)| {
            a.priority
                .cmp(&b.priority)
                .then(a.fill_ratio().total_cmp(&b.fill_ratio()))
                .then(a.active_streams.cmp(&b.active_streams))
                .then(a.connection_id.cmp(&b.connection_id))
        })?;
        let confidence = if candidates.len() == 1 {
            1.0
        } else {
            (1.0 - best.fill_ratio()) as f32
        };
        Some(RouteDecision {
            index,
            confidence,
            reason: Cow::Borrowed("least-loaded: lowest fill ratio among candidates"),
            alternatives: Vec::new(),
            scored: None,
        })
    }
}

impl Router for LeastLoaded {
    fn name(&self) -> &str {
        "least-loaded"
    }

    fn route(&self, request: &RouteRequest<'_>) -> Option<RouteDecision> {
        Self::pick(request.candidates)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidate(id: u64, active: u32, max: u32, priority: u32) -> Candidate {
        Candidate {
            connection_id: id,
            endpoint_id: Arc::from("e"),
            region: Arc::from("local"),
            priority,
            active_streams: active,
            max_streams: max,
            latency: Duration::ZERO,
            error_rate: 0.0,
            age: Duration::ZERO,
            endpoint_health: Health::Healthy,
            endpoint_breaker: BreakerState::Closed,
        }
    }

    #[test]
    fn picks_lowest_fill_then_priority() {
        let candidates = [
            candidate(1, 5, 10, 0),
            candidate(2, 2, 10, 0),
            candidate(3, 0, 10, 1),
        ];
        assert_eq!(LeastLoaded::pick(&candidates).unwrap().index, 1);
        let candidates = [candidate(1, 40, 100, 0), candidate(2, 1, 2, 0)];
        assert_eq!(LeastLoaded::pick(&candidates).unwrap().index, 0);
        assert!(LeastLoaded::pick(&[]).is_none());
    }
}
