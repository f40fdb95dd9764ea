//! Power of two choices over peak-EWMA latency: the tower/linkerd balancer default.
//!
//! Among the candidates of the best (lowest) endpoint priority, two are drawn at random and the
//! one with the lower cost wins, where cost is the connection's peak-EWMA latency times its
//! streams plus one, inflated by its recent error rate. Two random choices avoid the herd that
//! "always the least loaded" causes when many streams open at once, while still steering away
//! from slow or busy connections.

use std::borrow::Cow;

use sluice_contract::route::{Candidate, RouteDecision, confidence};

/// Latency assumed for a connection that has no sample yet (milliseconds).
const DEFAULT_LATENCY_MS: f64 = 1.0;

/// The built-in router.
#[derive(Debug, Default, Clone, Copy)]
pub struct PeakEwmaP2c;

impl PeakEwmaP2c {
    /// The load cost of a candidate; lower is better.
    pub fn cost(candidate: &Candidate) -> f64 {
        let latency_ms = candidate.latency.as_secs_f64() * 1000.0;
        let latency_ms = if latency_ms > 0.0 {
            latency_ms
        } else {
            DEFAULT_LATENCY_MS
        };
        let error_penalty = 1.0 + 10.0 * candidate.error_rate.clamp(0.0, 1.0);
        latency_ms * f64::from(candidate.active_streams + 1) * error_penalty
    }

    /// Picks a candidate; `None` only when there are none.
    pub fn pick(candidates: &[Candidate]) -> Option<RouteDecision> {
        let best_priority = candidates.iter().map(|c| c.priority).min()?;
        let tier: Vec<usize> = (0..candidates.len())
            .filter(|&i| candidates[i].priority == best_priority)
            .collect();
        if let [only] = tier[..] {
            return Some(RouteDecision {
                index: only,
                confidence: confidence(
                    Self::cost(&candidates[only]),
                    None,
                    candidates[only].error_rate,
                ),
                reason: Cow::Borrowed("p2c peak-ewma: only candidate at the best priority"),
                alternatives: Vec::new(),
                scored: None,
            });
        }
        let first = tier[fastrand::usize(..tier.len())];
        let mut second = tier[fastrand::usize(..tier.len() - 1)];
        if second == first {
            second = tier[tier.len() - 1];
        }
        let (cost_a, cost_b) = (
            Self::cost(&candidates[first]),
            Self::cost(&candidates[second]),
        );
        let (winner, loser, won, lost) = if cost_a < cost_b
            || (cost_a == cost_b
                && candidates[first].active_streams <= candidates[second].active_streams)
        {
            (first, second, cost_a, cost_b)
        } else {
            (second, first, cost_b, cost_a)
        };
        Some(RouteDecision {
            index: winner,
            confidence: confidence(won, Some(lost), candidates[winner].error_rate),
            reason: Cow::Owned(format!(
                "p2c peak-ewma: conn {} (cost {won:.2}) over conn {} (cost {lost:.2})",
                candidates[winner].connection_id, candidates[loser].connection_id
            )),
            alternatives: vec![loser],
            scored: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    fn candidate(id: u64, active: u32, latency_ms: u64, priority: u32) -> Candidate {
        Candidate {
            connection_id: id,
            endpoint_id: Arc::from("e"),
            region: Arc::from("local"),
            priority,
            active_streams: active,
            max_streams: 100,
            latency: Duration::from_millis(latency_ms),
            error_rate: 0.0,
            age: Duration::ZERO,
            endpoint_health: sluice_contract::health::Health::Healthy,
            endpoint_breaker: sluice_contract::breaker::BreakerState::Closed,
        }
    }

    #[test]
    fn two_candidates_always_pick_the_cheaper() {
        let candidates = [candidate(1, 10, 5, 0), candidate(2, 1, 5, 0)];
        for _ in 0..50 {
            let decision = PeakEwmaP2c::pick(&candidates).unwrap();
            assert_eq!(decision.index, 1);
            assert_eq!(decision.alternatives, vec![0]);
        }
    }

    #[test]
    fn confidence_drops_below_half_only_when_every_pick_is_a_guess() {
        let tied = [candidate(1, 1, 5, 0), candidate(2, 1, 5, 0)];
        assert_eq!(PeakEwmaP2c::pick(&tied).unwrap().confidence, 0.5);
        let only = [candidate(1, 90, 500, 0)];
        assert_eq!(PeakEwmaP2c::pick(&only).unwrap().confidence, 1.0);
        // Both connections fail 60% of their streams.
        let failing = [1, 2].map(|id| Candidate {
            error_rate: 0.6,
            ..candidate(id, 1, 5, 0)
        });
        let decision = PeakEwmaP2c::pick(&failing).unwrap();
        assert!(decision.confidence < 0.5, "{decision:?}");
    }

    #[test]
    fn slow_connections_lose_even_when_idle() {
        let candidates = [candidate(1, 0, 200, 0), candidate(2, 3, 2, 0)];
        assert_eq!(PeakEwmaP2c::pick(&candidates).unwrap().index, 1);
    }

    #[test]
    fn stays_in_the_best_priority_tier() {
        let candidates = [
            candidate(1, 0, 1, 1),
            candidate(2, 50, 50, 0),
            candidate(3, 0, 1, 2),
        ];
        for _ in 0..50 {
            assert_eq!(PeakEwmaP2c::pick(&candidates).unwrap().index, 1);
        }
    }

    #[test]
    fn spreads_over_equal_candidates() {
        let candidates: Vec<Candidate> = (0..8).map(|i| candidate(i, 0, 1, 0)).collect();
        let mut seen = [0u32; 8];
        for _ in 0..400 {
            seen[PeakEwmaP2c::pick(&candidates).unwrap().index] += 1;
        }
        assert!(
            seen.iter().all(|&n| n > 0),
            "every candidate is used: {seen:?}"
        );
        assert!(PeakEwmaP2c::pick(&[]).is_none());
    }
}
