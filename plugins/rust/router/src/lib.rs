//! Sluice's default router (`router` world): places a new stream on the best candidate
//! connection.
//!
//! Order of preference:
//! 1. connections that pass the hard rules (all of them when none does): under 80% of their
//!    `max-streams`; for a latency-sensitive monitor (`latency-sensitivity` > 0.8) a latency of
//!    at most 50 ms; for a critical monitor an error rate of at most 1%;
//! 2. lower endpoint `priority`;
//! 3. the higher score: `scorer_weight * model + (1 - scorer_weight) * heuristic`, where
//!    `scorer_weight` is a config value (0..=1, default 0.9), `model` the host scorer's score
//!    for the row (the model's predicted outcome of placing the stream there) stretched to
//!    0..=1 over the candidates (lowest 0, highest 1; all 0.5 when they are equal), and the
//!    heuristic (0..=1) is `0.40 * latency + 0.35 * errors + 0.25 * room`, with
//!    - latency = `1 / (1 + latency-ms / 20)` (3 ms -> 0.87, 20 ms -> 0.5, 100 ms -> 0.17),
//!    - errors = `1 - 5 * error-rate`, floored at 0 (a 20% error rate scores nothing),
//!    - room = `1 - fill`, fill = `active-streams / max-streams`.
//!
//!    A trained model decides; the heuristic breaks its near-ties, and decides alone under the
//!    built-in scorer (every row 0.5) or when the scorer fails;
//! 4. the lower index (stable for ties).
//!
//! With `explore` (config, 0..=0.5, default 0) set, that share of decisions picks a random
//! connection among those that pass the hard rules instead, so that the recorded outcomes
//! cover every kind of connection (for training a model; see `plugins/training/`).
//!
//! The `scorer` import is called once per decision (not when there is a single candidate, nor
//! with `scorer_weight = 0`) with one row per candidate, in candidate order: feature vector
//! **v1**, 18 columns.
//!
//! | column | feature |
//! |---|---|
//! | 0 | monitor message rate, `ln(1 + messages/s)` |
//! | 1 | monitor burstiness (coefficient of variation of messages/s) |
//! | 2 | monitor latency sensitivity (0..=1) |
//! | 3 | monitor mean message size, `ln(1 + bytes)` |
//! | 4 | monitor class is realtime: 1, else 0 |
//! | 5 | monitor class is event: 1, else 0 (state: both 0) |
//! | 6 | monitor is critical: 1, else 0 |
//! | 7 | connection's active streams |
//! | 8 | connection's max streams |
//! | 9 | fill ratio, `active-streams / max-streams` (0..=1) |
//! | 10 | connection latency, `ln(1 + latency-ms)` (peak EWMA) |
//! | 11 | connection error rate (0..=1; unknown counts as 1) |
//! | 12 | endpoint health: healthy 1, degraded 0.5, unhealthy 0 |
//! | 13 | endpoint breaker: closed 0, half-open 0.5, open 1 |
//! | 14 | region match: 1 when the monitor has no region or the endpoint is in it, else 0 |
//! | 15 | connection age, `ln(1 + seconds)` |
//! | 16 | endpoint priority (lower is preferred) |
//! | 17 | latency relative to the fastest candidate, `latency-ms / min latency-ms` (>= 1) |
//!
//! The built-in scorer gives every row 0.5, which leaves the heuristic's order as it is. A scorer
//! error (or a wrong number of scores) is ignored for the decision and logged at debug at most
//! once every 10 s.
//!
//! Confidence: 1.0 with one candidate, or when the best one is in a better tier (passing the
//! rules, lower priority) than the runner-up; otherwise `0.5 + margin` between their scores,
//! clamped to 0..=1. Alternatives: the next three in the same order.

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

use sluice::policy::types::{
    BreakerState, Candidate, Endpoint, EndpointHealth, MonitorProfile, TrafficClass,
};
use sluice::policy::{clock, config, log, scorer};

/// Connections at or above this share of `max-streams` are avoided while others have room.
const FULL: f64 = 0.8;
/// Critical monitors avoid connections whose error rate is above this while others are below.
const CRITICAL_MAX_ERROR_RATE: f64 = 0.01;
/// Monitors more latency-sensitive than this avoid connections slower than
/// [`SENSITIVE_MAX_LATENCY_MS`] while others are faster.
const LATENCY_SENSITIVE: f64 = 0.8;
const SENSITIVE_MAX_LATENCY_MS: f64 = 50.0;
/// Scorer feature columns: feature vector v1 (see the crate documentation).
const COLUMNS: usize = 18;
/// Alternatives returned after the choice.
const ALTERNATIVES: usize = 3;
/// Heuristic weights; they sum to 1.
const LATENCY_WEIGHT: f64 = 0.40;
const ERROR_WEIGHT: f64 = 0.35;
const ROOM_WEIGHT: f64 = 0.25;
/// Latency (ms) at which the latency term is 0.5.
const LATENCY_REF_MS: f64 = 20.0;
/// Weight of the scorer's score unless the `scorer_weight` config key says otherwise.
const DEFAULT_SCORER_WEIGHT: f64 = 0.9;
/// Largest `explore` share accepted.
const MAX_EXPLORE: f64 = 0.5;
/// At most one scorer-error log line per this many nanoseconds.
const LOG_EVERY_NS: u64 = 10_000_000_000;

/// `scorer_weight` once read (`f64` bits); `u64::MAX` (a NaN pattern) until then.
static SCORER_WEIGHT: AtomicU64 = AtomicU64::new(u64::MAX);
/// `explore` once read, the same way.
static EXPLORE: AtomicU64 = AtomicU64::new(u64::MAX);
/// State of the exploration coin (xorshift), seeded from the clock on first use.
static COIN: AtomicU64 = AtomicU64::new(0);
/// `clock::now_ns` of the last scorer-error log line plus one; 0 when none yet.
static LAST_SCORER_LOG: AtomicU64 = AtomicU64::new(0);

struct Router;

impl Guest for Router {
    fn route(request: RouteRequest) -> Result<Decision, String> {
        if request.candidates.len() > u32::MAX as usize {
            return Err(String::from("router: too many candidates"));
        }
        let rules = Rules::for_monitor(&request.monitor);
        let candidates = &request.candidates;
        let weight = read_share(&SCORER_WEIGHT, "scorer_weight", DEFAULT_SCORER_WEIGHT, 1.0);
        let fills: Vec<f64> = candidates.iter().map(fill).collect();
        let model = if candidates.len() > 1 && weight > 0.0 {
            model_scores(&request, &fills)
        } else {
            None
        };
        let explore = read_share(&EXPLORE, "explore", 0.0, MAX_EXPLORE);
        let coin = if explore > 0.0 && candidates.len() > 1 {
            Some(flip())
                .filter(|draw| *draw < explore)
                .map(|draw| draw / explore)
        } else {
            None
        };
        decide(
            candidates,
            &request.endpoints,
            &fills,
            rules,
            model.map(|m| (weight, m)),
            coin,
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

/// Which hard rules apply to a monitor.
#[derive(Clone, Copy)]
struct Rules {
    /// Critical: avoid connections over 1% errors.
    critical: bool,
    /// Latency-sensitive: avoid connections over 50 ms.
    latency_sensitive: bool,
}

impl Rules {
    fn for_monitor(monitor: &MonitorProfile) -> Self {
        Self {
            critical: monitor.critical,
            latency_sensitive: monitor.traffic.latency_sensitivity > LATENCY_SENSITIVE,
        }
    }

    /// Whether `candidate` passes: under [`FULL`]; for a latency-sensitive monitor at most
    /// [`SENSITIVE_MAX_LATENCY_MS`]; for a critical one an error rate of at most
    /// [`CRITICAL_MAX_ERROR_RATE`]. Non-finite measurements fail.
    fn pass(self, candidate: &Candidate, fill: f64) -> bool {
        let erroring =
            candidate.error_rate.is_nan() || candidate.error_rate > CRITICAL_MAX_ERROR_RATE;
        let slow = candidate.latency_ms.is_nan() || candidate.latency_ms > SENSITIVE_MAX_LATENCY_MS;
        fill < FULL && !(self.critical && erroring) && !(self.latency_sensitive && slow)
    }

    /// What failing them means, for the reason.
    fn broken(self) -> &'static str {
        match (self.latency_sensitive, self.critical) {
            (false, false) => "over 80% full",
            (true, false) => "over 80% full or over 50 ms (latency-sensitive monitor)",
            (false, true) => "over 80% full or over 1% errors (critical monitor)",
            (true, true) => {
                "over 80% full, over 50 ms or over 1% errors (latency-sensitive, critical monitor)"
            }
        }
    }
}

/// The decision, or `None` when there are no candidates. `fills` holds each candidate's
/// [`fill`]; `model` is the scorer's weight and its score per candidate, when it answered;
/// `explore`, when set (0..1), picks the passing candidate at that position instead of the best.
fn decide(
    candidates: &[Candidate],
    endpoints: &[Endpoint],
    fills: &[f64],
    rules: Rules,
    model: Option<(f64, Vec<f64>)>,
    explore: Option<f64>,
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
        .map(|(c, &f)| rules.pass(c, f))
        .collect();
    let none_pass = !passing.contains(&true);
    if let Some(position) = explore {
        return Some(explored(
            candidates, endpoints, &passing, none_pass, position,
        ));
    }

    // The model's scores stretched to 0..=1 over these candidates: its ranking counts, whatever
    // the spread of its predictions (a model predicting 0.86 and 0.89 still prefers the second
    // clearly). Equal scores (the built-in scorer) stretch to 0.5 each and leave the heuristic's
    // order.
    let model = model.map(|(weight, scores)| {
        let low = scores.iter().copied().fold(f64::INFINITY, f64::min);
        let high = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let stretched: Vec<f64> = scores
            .iter()
            .map(|s| {
                if high - low > 1e-9 {
                    (s - low) / (high - low)
                } else {
                    0.5
                }
            })
            .collect();
        (weight, stretched)
    });
    // The best 1 + ALTERNATIVES, best first.
    let mut top: [Option<Ranked>; 1 + ALTERNATIVES] = [None; 1 + ALTERNATIVES];
    for (index, (candidate, &fill)) in candidates.iter().zip(fills).enumerate() {
        let mut score = heuristic(candidate, fill);
        if let Some((weight, scores)) = &model
            && let Some(model_score) = scores.get(index)
        {
            score = (1.0 - weight) * score + weight * model_score;
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
    let separation = match top[1] {
        None => 1.0,
        Some(second) if second.tier != best.tier || second.priority != best.priority => 1.0,
        Some(second) => (0.5 + (best.score - second.score)).clamp(0.0, 1.0),
    };
    let alternatives = top[1..].iter().flatten().map(|r| r.index).collect();
    let chosen = &candidates[best.index as usize];
    // A pick is no surer than the chosen connection carries streams: one failing most of them
    // makes the pick a guess among bad options, and the host's low-confidence alert can say
    // so. Busy connections alone never lower it.
    let works = if chosen.error_rate.is_finite() {
        1.0 - chosen.error_rate.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let confidence = separation.min(works);
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
                broken: rules.broken(),
            },
        ),
        alternatives,
    })
}

/// An exploring decision: the passing candidate (any, when none passes) at `position` (0..1).
fn explored(
    candidates: &[Candidate],
    endpoints: &[Endpoint],
    passing: &[bool],
    none_pass: bool,
    position: f64,
) -> Decision {
    let eligible: Vec<u32> = (0..candidates.len() as u32)
        .filter(|&i| none_pass || passing[i as usize])
        .collect();
    let pick = ((position * eligible.len() as f64) as usize).min(eligible.len() - 1);
    let index = eligible[pick];
    let chosen = &candidates[index as usize];
    let mut reasoning = String::from("router: exploring, conn ");
    push_u64(&mut reasoning, chosen.connection_id);
    reasoning.push_str(" on ");
    reasoning.push_str(
        endpoints
            .get(chosen.endpoint as usize)
            .map_or("?", |e| e.id.as_str()),
    );
    reasoning.push_str(" (random among ");
    push_u64(&mut reasoning, eligible.len() as u64);
    reasoning.push_str(" for training)");
    Decision {
        choice: index,
        confidence: 1.0 / eligible.len() as f32,
        reasoning,
        alternatives: eligible
            .iter()
            .copied()
            .filter(|&i| i != index)
            .take(ALTERNATIVES)
            .collect(),
    }
}

/// What the hard rules did to one decision, for its reason.
struct HardRules {
    /// No candidate passed: all were ranked alike.
    none_pass: bool,
    /// Candidates ranked last for breaking a rule.
    skipped: usize,
    /// What breaking them means.
    broken: &'static str,
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
fn model_scores(request: &RouteRequest, fills: &[f64]) -> Option<Vec<f64>> {
    let candidates = &request.candidates;
    let mut values = Vec::with_capacity(candidates.len() * COLUMNS);
    for (candidate, &fill) in candidates.iter().zip(fills) {
        values.extend_from_slice(&features(request, candidate, fill));
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

/// Feature vector v1 of one candidate (see the crate documentation).
fn features(request: &RouteRequest, candidate: &Candidate, fill: f64) -> [f32; COLUMNS] {
    let monitor = &request.monitor;
    let traffic = &monitor.traffic;
    let endpoint = request.endpoints.get(candidate.endpoint as usize);
    let flag = |on: bool| if on { 1.0 } else { 0.0 };
    let ln1p = |x: f64| {
        if x.is_finite() && x > 0.0 {
            libm::log1p(x)
        } else {
            0.0
        }
    };
    let health = match endpoint.map(|e| e.health) {
        Some(EndpointHealth::Healthy) => 1.0,
        Some(EndpointHealth::Degraded) => 0.5,
        Some(EndpointHealth::Unhealthy) | None => 0.0,
    };
    let breaker = match endpoint.map(|e| e.breaker) {
        Some(BreakerState::Closed) => 0.0,
        Some(BreakerState::HalfOpen) => 0.5,
        Some(BreakerState::Open) | None => 1.0,
    };
    let region_match =
        monitor.region.is_empty() || endpoint.is_some_and(|e| e.region == monitor.region);
    let fastest = request
        .candidates
        .iter()
        .map(|c| c.latency_ms)
        .filter(|l| l.is_finite() && *l > 0.0)
        .fold(f64::INFINITY, f64::min);
    let relative_latency = if fastest.is_finite() && candidate.latency_ms.is_finite() {
        (candidate.latency_ms / fastest).max(1.0)
    } else {
        1.0
    };
    let error_rate = if candidate.error_rate.is_finite() {
        candidate.error_rate.clamp(0.0, 1.0)
    } else {
        1.0
    };
    [
        ln1p(traffic.message_rate),
        if traffic.burstiness.is_finite() {
            traffic.burstiness
        } else {
            0.0
        },
        traffic.latency_sensitivity,
        ln1p(traffic.mean_message_bytes),
        flag(monitor.class == TrafficClass::Realtime),
        flag(monitor.class == TrafficClass::Event),
        flag(monitor.critical),
        f64::from(candidate.active_streams),
        f64::from(candidate.max_streams),
        fill,
        ln1p(candidate.latency_ms),
        error_rate,
        health,
        breaker,
        flag(region_match),
        ln1p(candidate.age_ms as f64 / 1000.0),
        f64::from(endpoint.map_or(u32::MAX, |e| e.priority)),
        relative_latency,
    ]
    .map(|x| x as f32)
}

/// A uniform draw in 0..1 (xorshift64*, seeded from the clock): enough for exploration, which
/// needs no unpredictability.
fn flip() -> f64 {
    let mut state = COIN.load(Ordering::Relaxed);
    if state == 0 {
        state = clock::now_ns() | 1;
    }
    state ^= state >> 12;
    state ^= state << 25;
    state ^= state >> 27;
    COIN.store(state, Ordering::Relaxed);
    (state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
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

/// The config value `key`, a number in `0..=max`, read once into `cell`; `default` when unset
/// or invalid (with a warning).
fn read_share(cell: &AtomicU64, key: &str, default: f64, max: f64) -> f64 {
    let bits = cell.load(Ordering::Relaxed);
    if bits != u64::MAX {
        return f64::from_bits(bits);
    }
    let value = match config::get(key) {
        None => default,
        Some(text) => match sluice_plugin::parse_f64(&text) {
            Some(value) if (0.0..=max).contains(&value) => value,
            _ => {
                let mut message = String::from("router: ignoring ");
                message.push_str(key);
                message.push_str(" = ");
                message.push_str(&text);
                message.push_str(" (want a number in 0..=");
                push_fixed(&mut message, max, 1);
                message.push_str("); using ");
                push_fixed(&mut message, default, 1);
                log::log(log::Level::Warn, &message);
                default
            }
        },
    };
    cell.store(value.to_bits(), Ordering::Relaxed);
    value
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
    let broken = rules.broken;
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
    use sluice::policy::types::TrafficProfile;

    fn endpoint(id: &str, priority: u32) -> Endpoint {
        Endpoint {
            id: String::from(id),
            region: String::from("local"),
            priority,
            health: EndpointHealth::Healthy,
            breaker: BreakerState::Closed,
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

    const PLAIN: Rules = Rules {
        critical: false,
        latency_sensitive: false,
    };

    fn choose_with(candidates: &[Candidate], rules: Rules) -> Decision {
        let endpoints = [endpoint("a", 0), endpoint("b", 0)];
        let fills: Vec<f64> = candidates.iter().map(fill).collect();
        decide(candidates, &endpoints, &fills, rules, None, None).expect("a decision")
    }

    fn choose(candidates: &[Candidate], critical: bool) -> Decision {
        choose_with(
            candidates,
            Rules {
                critical,
                latency_sensitive: false,
            },
        )
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
    fn confidence_drops_below_half_only_when_every_pick_is_a_guess() {
        // Busy (70% full) but clearly better: sure of it.
        let busy = [candidate(1, 0, 7, 1.0, 0.0), candidate(2, 1, 7, 400.0, 0.0)];
        assert!(choose(&busy, false).confidence > 0.5);
        // Every connection failing 60% of its streams: whatever is picked is a guess.
        let failing = [candidate(1, 0, 1, 5.0, 0.6), candidate(2, 1, 1, 5.0, 0.6)];
        let decision = choose(&failing, false);
        assert!(decision.confidence < 0.5, "{}", decision.confidence);
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
    fn latency_sensitive_monitors_avoid_connections_over_50_ms() {
        // The slow one is empty and error-free, which the heuristic would prefer.
        let candidates = [candidate(1, 0, 0, 60.0, 0.0), candidate(2, 1, 7, 45.0, 0.0)];
        let sensitive = Rules {
            critical: false,
            latency_sensitive: true,
        };
        let decision = choose_with(&candidates, sensitive);
        assert_eq!(decision.choice, 1);
        assert!(
            decision
                .reasoning
                .contains("over 50 ms (latency-sensitive monitor)"),
            "{}",
            decision.reasoning
        );
        assert_eq!(choose_with(&candidates, PLAIN).choice, 0);
        // The threshold on the profile: above 0.8 only.
        let mut monitor = MonitorProfile {
            id: String::from("m"),
            class: TrafficClass::Realtime,
            critical: false,
            region: String::new(),
            traffic: TrafficProfile {
                message_rate: 10.0,
                burstiness: 0.0,
                latency_sensitivity: 0.8,
                mean_message_bytes: 64.0,
            },
        };
        assert!(!Rules::for_monitor(&monitor).latency_sensitive);
        monitor.traffic.latency_sensitivity = 0.81;
        assert!(Rules::for_monitor(&monitor).latency_sensitive);
        // All rules at once, and none passing: the best of them all.
        let both = Rules {
            critical: true,
            latency_sensitive: true,
        };
        let bad = [
            candidate(1, 0, 0, 80.0, 0.0),
            candidate(2, 1, 0, 10.0, 0.03),
        ];
        let decision = choose_with(&bad, both);
        assert!(
            decision
                .reasoning
                .contains("every one over 80% full, over 50 ms or over 1% errors"),
            "{}",
            decision.reasoning
        );
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
        let scored = decide(
            &candidates,
            &endpoints,
            &fills,
            PLAIN,
            Some((0.1, model)),
            None,
        )
        .unwrap();
        assert_eq!(scored.choice, 1, "the model's score decides between equals");
        // At the default weight the model outweighs a modest heuristic lead.
        let model = vec![0.1, 0.1, 0.9, 0.1, 0.1];
        let scored = decide(
            &candidates,
            &endpoints,
            &fills,
            PLAIN,
            Some((DEFAULT_SCORER_WEIGHT, model)),
            None,
        )
        .unwrap();
        assert_eq!(scored.choice, 2);
    }

    #[test]
    fn exploring_picks_among_the_passing_candidates_only() {
        let candidates = [
            candidate(1, 0, 9, 1.0, 0.0),
            candidate(2, 1, 1, 10.0, 0.0),
            candidate(3, 0, 2, 20.0, 0.0),
        ];
        let endpoints = [endpoint("a", 0), endpoint("b", 0)];
        let fills: Vec<f64> = candidates.iter().map(fill).collect();
        let mut seen = [false; 3];
        for step in 0..10 {
            let position = f64::from(step) / 10.0;
            let decision =
                decide(&candidates, &endpoints, &fills, PLAIN, None, Some(position)).unwrap();
            assert!(decision.reasoning.starts_with("router: exploring"));
            seen[decision.choice as usize] = true;
        }
        assert_eq!(seen, [false, true, true], "the full one is never explored");
    }

    #[test]
    fn the_feature_vector_follows_its_documented_columns() {
        let mut degraded = endpoint("b", 1);
        degraded.health = EndpointHealth::Degraded;
        degraded.breaker = BreakerState::HalfOpen;
        degraded.region = String::from("eu");
        let request = RouteRequest {
            monitor: MonitorProfile {
                id: String::from("m"),
                class: TrafficClass::Event,
                critical: true,
                region: String::from("local"),
                traffic: TrafficProfile {
                    message_rate: libm::expm1(2.0),
                    burstiness: 0.5,
                    latency_sensitivity: 0.6,
                    mean_message_bytes: libm::expm1(5.0),
                },
            },
            method: String::from("/p.S/M"),
            endpoints: vec![endpoint("a", 0), degraded],
            candidates: vec![candidate(1, 0, 2, 4.0, 0.0), candidate(2, 1, 5, 12.0, 0.5)],
        };
        let row = features(&request, &request.candidates[1], 0.5);
        let expected = [
            2.0,
            0.5,
            0.6,
            5.0,
            0.0,
            1.0,
            1.0,
            5.0,
            10.0,
            0.5,
            libm::log1p(12.0),
            0.5,
            0.5,
            0.5,
            0.0,
            libm::log1p(1.0),
            1.0,
            3.0,
        ];
        assert_eq!(row.len(), COLUMNS);
        for (column, (got, want)) in row.iter().zip(expected).enumerate() {
            assert!(
                (f64::from(*got) - want).abs() < 1e-5,
                "column {column}: {got} != {want}"
            );
        }
    }
}
