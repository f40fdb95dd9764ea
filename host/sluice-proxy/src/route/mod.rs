//! Placement: which upstream connection a new stream goes to.
//!
//! The pool builds a list of [`Candidate`]s (connections of the monitor's class group with a free
//! stream slot) and asks a [`Router`]; both are records of the policy contract
//! ([`sluice_contract::route`]), so a policy can be swapped (the policy plugins plug in here)
//! without touching the data path. A router runs on the path of every new stream, without the
//! group's lock: the pool takes the chosen slot afterwards and asks again if a concurrent stream
//! took it first. This module holds what the data plane adds to the contract: the built-in
//! [`LeastLoaded`] policy and the outcome log of the learning loop (`outcome`).

use std::borrow::Cow;

use sluice_contract::route::confidence;
pub(crate) use sluice_contract::route::{
    Candidate, MonitorProfile, RouteDecision, RouteRequest, Router,
};
pub(crate) use sluice_contract::traffic::TrafficMeter;

mod outcome;

pub use outcome::RouteOutcome;
pub(crate) use outcome::{Observation, OutcomeLog};

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
        // The runner-up at the same priority, if any: how clearly the winner's fill beat it.
        let rival = candidates
            .iter()
            .enumerate()
            .filter(|(i, c)| *i != index && c.priority == best.priority)
            .map(|(_, c)| c.fill_ratio())
            .min_by(f64::total_cmp);
        let confidence = confidence(best.fill_ratio(), rival, best.error_rate);
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
    use std::sync::Arc;
    use std::time::Duration;

    use sluice_contract::breaker::BreakerState;
    use sluice_contract::health::Health;

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

    #[test]
    fn confidence_is_uncertainty_not_load() {
        // Busy: alone at its priority it is sure, beside a fuller rival surer than a coin flip.
        let busy = [candidate(1, 80, 100, 0), candidate(2, 99, 100, 1)];
        assert_eq!(LeastLoaded::pick(&busy).unwrap().confidence, 1.0);
        let busy = [candidate(1, 80, 100, 0), candidate(2, 99, 100, 0)];
        assert!(LeastLoaded::pick(&busy).unwrap().confidence > 0.5);
        // A tie is a coin flip, with a few errors too; a rival twice as full gives 0.75.
        let tied = [candidate(1, 5, 10, 0), candidate(2, 5, 10, 0)];
        assert_eq!(LeastLoaded::pick(&tied).unwrap().confidence, 0.5);
        let tied = tied.map(|c| Candidate {
            error_rate: 0.01,
            ..c
        });
        assert_eq!(LeastLoaded::pick(&tied).unwrap().confidence, 0.5);
        let clear = [candidate(1, 2, 10, 0), candidate(2, 4, 10, 0)];
        assert_eq!(LeastLoaded::pick(&clear).unwrap().confidence, 0.75);
        // Every connection failing 60% of its streams: whatever is picked is a guess.
        let failing = [1, 2].map(|id| Candidate {
            error_rate: 0.6,
            ..candidate(id, 1, 10, 0)
        });
        let decision = LeastLoaded::pick(&failing).unwrap();
        assert!(decision.confidence < 0.5, "{decision:?}");
    }
}
