//! Sluice's default router (`router` world): places a new stream on the best candidate
//! connection.
//!
//! Order of preference:
//! 1. connections that pass the hard rules (all of them when none does): under 80% of their
//!    `max-streams`, and for a critical monitor an error rate of at most 1%;
//! 2. lower endpoint `priority`;
//! 3. the higher heuristic score (0..=1):
//!    `0.40 * latency + 0.35 * errors + 0.25 * room`, where
//!    - latency = `1 / (1 + latency-ms / 20)` (3 ms -> 0.87, 20 ms -> 0.5, 100 ms -> 0.17),
//!    - errors = `1 - 5 * error-rate`, floored at 0 (a 20% error rate scores nothing),
//!    - room = `1 - fill`, fill = `active-streams / max-streams`,
//!
//!    plus `scorer_weight` (config, default 0.1) times the host scorer's score for the row;
//! 4. the lower index (stable for ties).
//!
//! The `scorer` import is called once per decision (not when there is a single candidate, nor
//! with `scorer_weight = 0`) with one feature row per candidate, columns:
//!
//! | column | feature |
//! |---|---|
//! | 0 | fill ratio, `active-streams / max-streams` (0..=1) |
//! | 1 | `latency-ms` (peak EWMA, milliseconds) |
//! | 2 | `error-rate` (0..=1) |
//! | 3 | `priority` (lower is preferred) |
//! | 4 | monitor is critical: 1.0, else 0.0 |
//!
//! The built-in scorer gives every row 0.5, which leaves the heuristic's order as it is. A scorer
//! error (or a wrong number of scores) is ignored for the decision and logged at debug at most
//! once every 10 s.
//!
//! Confidence: 1.0 with one candidate, or when the best one is in a better tier (under 80% full,
//! lower priority) than the runner-up; otherwise `0.5 + margin` between their scores, clamped to
//! 0..=1. Alternatives: the next three in the same order.

#![no_std]

extern crate alloc;

use alloc::string::String;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};

use sluice_plugin::text::{push_fixed, push_u64};

wit_bindgen::generate!({
    path: "../../../wit",
    world: "router",
});

use sluice::policy::types::{Candidate, Endpoint};
use sluice::policy::{clock, config, log, scorer};

/// Connections at or above this share of `max-streams` are avoided while others have room.
const FULL: f64 = 0.8;
/// Critical monitors avoid connections whose error rate is above this while others are below.
const CRITICAL_MAX_ERROR_RATE: f64 = 0.01;
/// Scorer feature columns (see the crate documentation).
const COLUMNS: usize = 5;
/// Alternatives returned after the choice.
const ALTERNATIVES: usize = 3;
/// Heuristic weights; they sum to 1.
const LATENCY_WEIGHT: f64 = 0.40;
const ERROR_WEIGHT: f64 = 0.35;
const ROOM_WEIGHT: f64 = 0.25;
/// Latency (ms) at which the latency term is 0.5.
const LATENCY_REF_MS: f64 = 20.0;
/// Weight of the scorer's score unless the `scorer_weight` config key says otherwise.
const DEFAULT_SCORER_WEIGHT: f64 = 0.1;
/// At most one scorer-error log line per this many nanoseconds.
const LOG_EVERY_NS: u64 = 10_000_000_000;

/// `scorer_weight` once read (`f64` bits); `u64::MAX` (a NaN pattern) until then.
static SCORER_WEIGHT: AtomicU64 = AtomicU64::new(u64::MAX);
/// `clock::now_ns` of the last scorer-error log line plus one; 0 when none yet.
static LAST_SCORER_LOG: AtomicU64 = AtomicU64::new(0);

struct Router;

impl Guest for Router {
    fn route(request: RouteRequest) -> Result<Decision, String> {
        if request.candidates.len() > u32::MAX as usize {
            return Err(String::from("router: too many candidates"));
        }
        let critical = request.monitor.critical;
        let candidates = &request.candidates;
        let weight = scorer_weight();
        let fills: Vec<f64> = candidates.iter().map(fill).collect();
        let model = if candidates.len() > 1 && weight > 0.0 {
            model_scores(candidates, &request.endpoints, &fills, critical)
        } else {
            None
        };
        decide(
            candidates,
            &request.endpoints,
            &fills,
            critical,
            model.map(|m| (weight, m)),
        )
        .ok_or_else(|| String::from("router: no candidates"))
    }
}

export!(Router);

/// One candidate's place in the order.
#[derive(Clone, Copy)]
struct Ranked {
    index: u32,
    /// 0 when it passes the hard rules (or when no candidate does), 1 otherwise.
    tier: u8,
    priority: u32,
    score: f64,
}

impl Ranked {
    /// Whether `self` goes before `other`.
    fn beats(&self, other: &Ranked) -> bool {
        if self.tier != other.tier {
            return self.tier < other.tier;
        }
        if self.priority != other.priority {
            return self.priority < other.priority;
        }
        if self.score != other.score {
            return self.score > other.score;
        }
        self.index < other.index
    }
}

/// Whether `candidate` passes the hard rules: under [`FULL`], and for a critical monitor an
/// error rate of at most [`CRITICAL_MAX_ERROR_RATE`] (a non-finite one fails).
fn passes(candidate: &Candidate, fill: f64, critical: bool) -> bool {
    let erroring = candidate.error_rate.is_nan() || candidate.error_rate > CRITICAL_MAX_ERROR_RATE;
    fill < FULL && !(critical && erroring)
}

/// The decision, or `None` when there are no candidates. `fills` holds each candidate's
/// [`fill`]; `model` is the scorer's weight and its score per candidate, when it answered.
fn decide(
    candidates: &[Candidate],
    endpoints: &[Endpoint],
    fills: &[f64],
    critical: bool,
    model: Option<(f64, Vec<f64>)>,
) -> Option<Decision> {
    // An index outside `endpoints` is the host's bug; treat it as the worst priority.
    let priority = |c: &Candidate| {
        endpoints
            .get(c.endpoint as usize)
            .map_or(u32::MAX, |e| e.priority)
    };
    let passing: Vec<bool> = candidates
        .iter()
        .zip(fills)
        .map(|(c, &f)| passes(c, f, critical))
        .collect();
    let none_pass = !passing.contains(&true);

    // The best 1 + ALTERNATIVES, best first.
    let mut top: [Option<Ranked>; 1 + ALTERNATIVES] = [None; 1 + ALTERNATIVES];
    for (index, (candidate, &fill)) in candidates.iter().zip(fills).enumerate() {
        let mut score = heuristic(candidate, fill);
        if let Some((weight, scores)) = &model
            && let Some(model_score) = scores.get(index)
        {
            score += weight * model_score;
        }
        let ranked = Ranked {
            index: index as u32,
            tier: u8::from(!none_pass && !passing[index]),
            priority: priority(candidate),
            score,
        };
        insert(&mut top, ranked);
    }
    let best = top[0]?;
    let confidence = match top[1] {
        None => 1.0,
        Some(second) if second.tier != best.tier || second.priority != best.priority => 1.0,
        Some(second) => (0.5 + (best.score - second.score)).clamp(0.0, 1.0),
    };
    let alternatives = top[1..].iter().flatten().map(|r| r.index).collect();
    let chosen = &candidates[best.index as usize];
    let skipped = if none_pass {
        0
    } else {
        passing.iter().filter(|p| !**p).count()
    };
    Some(Decision {
        choice: best.index,
        confidence: confidence as f32,
        reasoning: reasoning(
            chosen,
            endpoints
                .get(chosen.endpoint as usize)
                .map_or("?", |e| e.id.as_str()),
            fills.get(best.index as usize).copied().unwrap_or(1.0),
            candidates.len(),
            HardRules {
                none_pass,
                skipped,
                critical,
            },
        ),
        alternatives,
    })
}

/// What the hard rules did to one decision, for its reason.
struct HardRules {
    /// No candidate passed: all were ranked alike.
    none_pass: bool,
    /// Candidates ranked last for breaking a rule.
    skipped: usize,
    /// The monitor is critical (the error-rate rule applied).
    critical: bool,
}

/// Keeps `top` sorted best first with the best `top.len()` seen so far.
fn insert(top: &mut [Option<Ranked>], ranked: Ranked) {
    let mut carry = ranked;
    for slot in top.iter_mut() {
        match slot {
            None => {
                *slot = Some(carry);
                return;
            }
            Some(current) if carry.beats(current) => {
                core::mem::swap(current, &mut carry);
            }
            Some(_) => {}
        }
    }
}

/// `active-streams / max-streams`, 0..=1 (a zero `max-streams` counts as full).
fn fill(candidate: &Candidate) -> f64 {
    if candidate.max_streams == 0 {
        return 1.0;
    }
    (f64::from(candidate.active_streams) / f64::from(candidate.max_streams)).clamp(0.0, 1.0)
}

/// The heuristic score, 0..=1, higher is better. Non-finite inputs score 0 for their term.
fn heuristic(candidate: &Candidate, fill: f64) -> f64 {
    let latency = if candidate.latency_ms.is_finite() && candidate.latency_ms >= 0.0 {
        1.0 / (1.0 + candidate.latency_ms / LATENCY_REF_MS)
    } else {
        0.0
    };
    let errors = if candidate.error_rate.is_finite() {
        (1.0 - 5.0 * candidate.error_rate).clamp(0.0, 1.0)
    } else {
        0.0
    };
    LATENCY_WEIGHT * latency + ERROR_WEIGHT * errors + ROOM_WEIGHT * (1.0 - fill)
}

/// The scorer's score per candidate (clamped to 0..=1, 0.5 for a non-finite one), or `None`
/// when it failed.
fn model_scores(
    candidates: &[Candidate],
    endpoints: &[Endpoint],
    fills: &[f64],
    critical: bool,
) -> Option<Vec<f64>> {
    let mut values = Vec::with_capacity(candidates.len() * COLUMNS);
    let critical = if critical { 1.0 } else { 0.0 };
    for (candidate, &fill) in candidates.iter().zip(fills) {
        values.extend_from_slice(&[
            fill as f32,
            candidate.latency_ms as f32,
            candidate.error_rate as f32,
            endpoints
                .get(candidate.endpoint as usize)
                .map_or(u32::MAX, |e| e.priority) as f32,
            critical,
        ]);
    }
    let batch = scorer::FeatureBatch {
        columns: COLUMNS as u32,
        values,
    };
    match scorer::score(&batch) {
        Ok(scores) if scores.len() == candidates.len() => Some(
            scores
                .iter()
                .map(|&s| {
                    if s.is_finite() {
                        f64::from(s).clamp(0.0, 1.0)
                    } else {
                        0.5
                    }
                })
                .collect(),
        ),
        Ok(scores) => {
            let mut message = String::from("router: scorer returned ");
            push_u64(&mut message, scores.len() as u64);
            message.push_str(" scores for ");
            push_u64(&mut message, candidates.len() as u64);
            message.push_str(" rows; using the heuristic alone");
            log_scorer_problem(&message);
            None
        }
        Err(error) => {
            let mut message = String::from("router: scorer failed (");
            message.push_str(&error);
            message.push_str("); using the heuristic alone");
            log_scorer_problem(&message);
            None
        }
    }
}

/// Logs at debug unless a line went out in the last [`LOG_EVERY_NS`].
fn log_scorer_problem(message: &str) {
    let now = clock::now_ns().saturating_add(1);
    let last = LAST_SCORER_LOG.load(Ordering::Relaxed);
    if last != 0 && now.saturating_sub(last) < LOG_EVERY_NS {
        return;
    }
    LAST_SCORER_LOG.store(now, Ordering::Relaxed);
    log::log(log::Level::Debug, message);
}

/// The `scorer_weight` config value (0..=1), read once.
fn scorer_weight() -> f64 {
    let bits = SCORER_WEIGHT.load(Ordering::Relaxed);
    if bits != u64::MAX {
        return f64::from_bits(bits);
    }
    let weight = match config::get("scorer_weight") {
        None => DEFAULT_SCORER_WEIGHT,
        Some(text) => match sluice_plugin::parse_f64(&text) {
            Some(value) if (0.0..=1.0).contains(&value) => value,
            _ => {
                let mut message = String::from("router: ignoring scorer_weight = ");
                message.push_str(&text);
                message.push_str(" (want a number in 0..=1); using 0.1");
                log::log(log::Level::Warn, &message);
                DEFAULT_SCORER_WEIGHT
            }
        },
    };
    SCORER_WEIGHT.store(weight.to_bits(), Ordering::Relaxed);
    weight
}

/// `router: conn 7 on ep-a: fill 0.20, 3.1 ms, err 0.00 (best of 4; 1 over 80% full or
/// erroring skipped)`.
fn reasoning(
    chosen: &Candidate,
    endpoint: &str,
    fill: f64,
    count: usize,
    rules: HardRules,
) -> String {
    let mut text = String::with_capacity(96 + endpoint.len());
    text.push_str("router: conn ");
    push_u64(&mut text, chosen.connection_id);
    text.push_str(" on ");
    text.push_str(endpoint);
    text.push_str(": fill ");
    push_fixed(&mut text, fill, 2);
    text.push_str(", ");
    push_fixed(&mut text, chosen.latency_ms, 1);
    text.push_str(" ms, err ");
    push_fixed(&mut text, chosen.error_rate, 2);
    text.push_str(" (best of ");
    push_u64(&mut text, count as u64);
    let broken = if rules.critical {
        "over 80% full or over 1% errors (critical monitor)"
    } else {
        "over 80% full"
    };
    if rules.none_pass {
        text.push_str("; every one ");
        text.push_str(broken);
    } else if rules.skipped > 0 {
        text.push_str("; ");
        push_u64(&mut text, rules.skipped as u64);
        text.push(' ');
        text.push_str(broken);
        text.push_str(" ranked last");
    }
    text.push(')');
    text
}

#[cfg(test)]
mod tests {
    use alloc::vec;

    use super::*;

    fn endpoint(id: &str, priority: u32) -> Endpoint {
        Endpoint {
            id: String::from(id),
            region: String::from("local"),
            priority,
        }
    }

    fn candidate(
        id: u64,
        endpoint: u32,
        active: u32,
        latency_ms: f64,
        error_rate: f64,
    ) -> Candidate {
        Candidate {
            connection_id: id,
            endpoint,
            active_streams: active,
            max_streams: 10,
            latency_ms,
            error_rate,
            age_ms: 1000,
        }
    }

    fn choose(candidates: &[Candidate], critical: bool) -> Decision {
        let endpoints = [endpoint("a", 0), endpoint("b", 0)];
        let fills: Vec<f64> = candidates.iter().map(fill).collect();
        decide(candidates, &endpoints, &fills, critical, None).expect("a decision")
    }

    #[test]
    fn connections_at_80_percent_full_are_skipped_while_others_have_room() {
        // The full one is faster and error-free, but 8 of 10 streams is at the limit.
        let candidates = [candidate(1, 0, 8, 1.0, 0.0), candidate(2, 1, 2, 40.0, 0.0)];
        let decision = choose(&candidates, false);
        assert_eq!(decision.choice, 1);
        assert_eq!(decision.confidence, 1.0);
        assert_eq!(decision.alternatives, vec![0]);
        assert!(
            decision.reasoning.contains("1 over 80% full ranked last"),
            "{}",
            decision.reasoning
        );
        // When every one is that full, the best of them is used.
        let full = [candidate(1, 0, 9, 1.0, 0.0), candidate(2, 1, 8, 40.0, 0.0)];
        let decision = choose(&full, false);
        assert_eq!(decision.choice, 0);
        assert!(
            decision.reasoning.contains("every one over 80% full"),
            "{}",
            decision.reasoning
        );
    }

    #[test]
    fn critical_monitors_avoid_connections_with_more_than_1_percent_errors() {
        // 2% errors on the otherwise better connection.
        let candidates = [
            candidate(1, 0, 0, 1.0, 0.02),
            candidate(2, 1, 5, 30.0, 0.005),
        ];
        let critical = choose(&candidates, true);
        assert_eq!(critical.choice, 1);
        assert!(
            critical.reasoning.contains("over 1% errors"),
            "{}",
            critical.reasoning
        );
        // Other monitors take the better one.
        assert_eq!(choose(&candidates, false).choice, 0);
        // A non-finite error rate counts as erroring.
        let unknown = [
            candidate(1, 0, 0, 1.0, f64::NAN),
            candidate(2, 1, 5, 30.0, 0.0),
        ];
        assert_eq!(choose(&unknown, true).choice, 1);
        // With every connection erroring, the best of them is still used.
        let all = [
            candidate(1, 0, 0, 1.0, 0.05),
            candidate(2, 1, 0, 30.0, 0.02),
        ];
        assert_eq!(choose(&all, true).choice, 0);
    }

    #[test]
    fn up_to_three_alternatives_best_first_and_the_scorer_breaks_near_ties() {
        let candidates = [
            candidate(1, 0, 1, 10.0, 0.0),
            candidate(2, 1, 1, 10.0, 0.0),
            candidate(3, 0, 2, 20.0, 0.0),
            candidate(4, 1, 3, 30.0, 0.0),
            candidate(5, 0, 4, 40.0, 0.0),
        ];
        let decision = choose(&candidates, false);
        assert_eq!(decision.choice, 0, "ties go to the lower index");
        assert_eq!(decision.alternatives, vec![1, 2, 3]);
        let endpoints = [endpoint("a", 0), endpoint("b", 0)];
        let fills: Vec<f64> = candidates.iter().map(fill).collect();
        let model = vec![0.0, 1.0, 0.0, 0.0, 0.0];
        let scored = decide(&candidates, &endpoints, &fills, false, Some((0.1, model))).unwrap();
        assert_eq!(scored.choice, 1, "the model's score decides between equals");
    }
}
