//! What became of routing decisions: the learning loop's raw data.
//!
//! A router that scored its candidates with a model hands the scored feature rows back with its
//! decision ([`ScoredBatch`]). The pool then watches the stream it placed ([`Observation`]):
//! time to first message, whether it failed, how many messages it carried, for
//! `learning.observe_for` or until it ends. [`OutcomeLog::drain`] hands finished observations to
//! whoever stores them. This module only measures: it judges nothing and writes nothing to disk.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::time::{Duration, Instant, SystemTime};

use parking_lot::Mutex;
use sluice_config::LearningConfig;
use sluice_contract::route::ScoredBatch;

/// Observations in flight beyond this are not started (a burst of new streams is sampled).
const MAX_PENDING: usize = 4096;
/// Finished observations kept for [`OutcomeLog::drain`] when nobody drains.
const MAX_FINISHED: usize = 4096;

/// One decision whose stream is being watched.
#[derive(Debug)]
pub(crate) struct Observation {
    started: Instant,
    at: SystemTime,
    monitor: Arc<str>,
    endpoint: Arc<str>,
    connection_id: u64,
    chosen: usize,
    candidates: usize,
    reason: String,
    batch: ScoredBatch,
    /// Microseconds from the request to the first response message, plus one; 0 when none yet.
    first_message_us: AtomicU64,
    messages: AtomicU64,
    failed: AtomicBool,
    /// Microseconds from the start to the end of the stream, plus one; 0 while it runs.
    ended_us: AtomicU64,
}

impl Observation {
    /// The first response message arrived `after` the request was sent.
    pub fn first_message(&self, after: Duration) {
        let micros = u64::try_from(after.as_micros()).unwrap_or(u64::MAX - 1) + 1;
        let _ = self
            .first_message_us
            .compare_exchange(0, micros, Relaxed, Relaxed);
    }

    /// `messages` more response messages reached the monitor.
    pub fn delivered(&self, messages: u64) {
        if messages > 0 {
            self.messages.fetch_add(messages, Relaxed);
        }
    }

    /// The stream failed on the upstream side.
    pub fn failed(&self) {
        if !self.is_over() {
            self.failed.store(true, Relaxed);
        }
    }

    /// The stream ended (its lease was released).
    pub fn ended(&self) {
        let micros = u64::try_from(self.started.elapsed().as_micros()).unwrap_or(u64::MAX - 1) + 1;
        let _ = self.ended_us.compare_exchange(0, micros, Relaxed, Relaxed);
    }

    fn is_over(&self) -> bool {
        self.ended_us.load(Relaxed) != 0
    }
}

/// What one watched decision came to.
#[derive(Debug, Clone)]
pub struct RouteOutcome {
    /// When the decision was made.
    pub at: SystemTime,
    /// The monitor whose stream it was.
    pub monitor: Arc<str>,
    /// The chosen connection's endpoint.
    pub endpoint: Arc<str>,
    /// The chosen connection.
    pub connection_id: u64,
    /// Index of the chosen row in `batch`.
    pub chosen: usize,
    /// Candidates the router saw.
    pub candidates: usize,
    /// The decision's reason.
    pub reason: String,
    /// Every candidate's features and score.
    pub batch: ScoredBatch,
    /// Time from the request to the first response message, if one came in the window.
    pub first_message: Option<Duration>,
    /// Whether the stream failed upstream within the window.
    pub failed: bool,
    /// Response messages within the window.
    pub messages: u64,
    /// How long the stream was watched: the window, or less when it ended sooner.
    pub observed: Duration,
}

impl RouteOutcome {
    /// Response messages per second over the watched time.
    pub fn throughput(&self) -> f64 {
        let seconds = self.observed.as_secs_f64();
        if seconds > 0.0 {
            self.messages as f64 / seconds
        } else {
            0.0
        }
    }
}

/// Decisions being watched and those finished, shared by the pool and whoever drains it.
#[derive(Debug)]
pub(crate) struct OutcomeLog {
    enabled: bool,
    window: Duration,
    per_second: u32,
    state: Mutex<LogState>,
}

#[derive(Debug, Default)]
struct LogState {
    /// Start of the current one-second budget and what is left of it.
    budget: Option<(Instant, u32)>,
    pending: Vec<Arc<Observation>>,
    finished: Vec<RouteOutcome>,
    skipped: u64,
}

impl OutcomeLog {
    /// A log following `config`.
    pub fn new(config: &LearningConfig) -> Self {
        Self {
            enabled: config.enabled && config.max_records_per_second > 0,
            window: config.observe_for,
            per_second: config.max_records_per_second,
            state: Mutex::new(LogState::default()),
        }
    }

    /// Starts watching `decision`, made with the feature rows `scored`, unless recording is
    /// off or this second's budget is spent.
    pub(crate) fn observe(
        &self,
        monitor: &Arc<str>,
        endpoint: &Arc<str>,
        connection_id: u64,
        decision: &super::RouteDecision,
        scored: Option<Box<ScoredBatch>>,
        candidates: usize,
    ) -> Option<Arc<Observation>> {
        let batch = scored.filter(|_| self.enabled)?;
        let now = Instant::now();
        let mut state = self.state.lock();
        let (start, left) = match state.budget {
            Some((start, left)) if now.duration_since(start) < Duration::from_secs(1) => {
                (start, left)
            }
            _ => (now, self.per_second),
        };
        if left == 0 || state.pending.len() >= MAX_PENDING {
            state.skipped += 1;
            return None;
        }
        state.budget = Some((start, left - 1));
        let observation = Arc::new(Observation {
            started: now,
            at: SystemTime::now(),
            monitor: Arc::clone(monitor),
            endpoint: Arc::clone(endpoint),
            connection_id,
            chosen: decision.index,
            candidates,
            reason: decision.reason.to_string(),
            batch: *batch,
            first_message_us: AtomicU64::new(0),
            messages: AtomicU64::new(0),
            failed: AtomicBool::new(false),
            ended_us: AtomicU64::new(0),
        });
        state.pending.push(Arc::clone(&observation));
        Some(observation)
    }

    /// Moves every observation whose stream ended, or whose window has passed, to the
    /// finished list, and returns that list (emptying it).
    pub fn drain(&self) -> Vec<RouteOutcome> {
        let now = Instant::now();
        let mut state = self.state.lock();
        let window = self.window;
        let mut index = 0;
        while index < state.pending.len() {
            let observation = &state.pending[index];
            let age = now.saturating_duration_since(observation.started);
            if !observation.is_over() && age < window {
                index += 1;
                continue;
            }
            let observation = state.pending.swap_remove(index);
            let outcome = finish(&observation, window);
            if state.finished.len() < MAX_FINISHED {
                state.finished.push(outcome);
            } else {
                state.skipped += 1;
            }
        }
        std::mem::take(&mut state.finished)
    }

    /// Decisions not watched because the budget or the queues were full (only the tests ask:
    /// nothing exports it yet).
    #[cfg(test)]
    pub fn skipped(&self) -> u64 {
        self.state.lock().skipped
    }
}

fn finish(observation: &Observation, window: Duration) -> RouteOutcome {
    let micros = |cell: &AtomicU64| match cell.load(Relaxed) {
        0 => None,
        value => Some(Duration::from_micros(value - 1)),
    };
    let observed = micros(&observation.ended_us).map_or(window, |ended| ended.min(window));
    RouteOutcome {
        at: observation.at,
        monitor: Arc::clone(&observation.monitor),
        endpoint: Arc::clone(&observation.endpoint),
        connection_id: observation.connection_id,
        chosen: observation.chosen,
        candidates: observation.candidates,
        reason: observation.reason.clone(),
        batch: observation.batch.clone(),
        first_message: micros(&observation.first_message_us).filter(|t| *t <= window),
        failed: observation.failed.load(Relaxed),
        messages: observation.messages.load(Relaxed),
        observed,
    }
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use super::*;
    use crate::route::RouteDecision;

    fn decision() -> RouteDecision {
        RouteDecision {
            index: 1,
            confidence: 0.9,
            reason: Cow::Borrowed("test"),
            alternatives: Vec::new(),
            scored: Some(Box::new(ScoredBatch {
                columns: 2,
                values: vec![0.0, 1.0, 2.0, 3.0],
                scores: vec![0.2, 0.8],
            })),
        }
    }

    fn log(per_second: u32) -> OutcomeLog {
        OutcomeLog::new(&LearningConfig {
            enabled: true,
            max_records_per_second: per_second,
            observe_for: Duration::from_secs(60),
        })
    }

    #[test]
    fn an_ended_stream_is_drained_with_what_it_did() {
        let log = log(10);
        let (monitor, endpoint) = (Arc::from("m"), Arc::from("e"));
        let mut decided = decision();
        let scored = decided.scored.take();
        let watched = log
            .observe(&monitor, &endpoint, 7, &decided, scored, 2)
            .unwrap();
        watched.first_message(Duration::from_millis(3));
        watched.first_message(Duration::from_millis(9));
        watched.delivered(5);
        assert!(log.drain().is_empty(), "still running");
        watched.ended();
        watched.failed();
        let outcomes = log.drain();
        assert_eq!(outcomes.len(), 1);
        let outcome = &outcomes[0];
        assert_eq!(outcome.first_message, Some(Duration::from_millis(3)));
        assert_eq!(outcome.messages, 5);
        assert!(!outcome.failed, "failures after the end do not count");
        assert_eq!(outcome.batch.row(outcome.chosen), Some(&[2.0, 3.0][..]));
        assert!(log.drain().is_empty());
    }

    #[test]
    fn recording_is_budgeted_per_second_and_needs_scores() {
        let log = log(2);
        let (monitor, endpoint) = (Arc::from("m"), Arc::from("e"));
        let watched: Vec<_> = (0..5)
            .filter_map(|_| {
                let mut decided = decision();
                let scored = decided.scored.take();
                log.observe(&monitor, &endpoint, 1, &decided, scored, 2)
            })
            .collect();
        assert_eq!(watched.len(), 2);
        assert_eq!(log.skipped(), 3);
        let fresh = self::log(10);
        assert!(
            fresh
                .observe(&monitor, &endpoint, 1, &decision(), None, 2)
                .is_none()
        );
    }
}
