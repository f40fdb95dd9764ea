//! The routing decisions kept for the admin API and the dashboard: the newest [`RECENT`] over
//! all monitors, and the newest [`PER_MONITOR`] of each of up to [`MONITORS`] monitors (when a
//! new monitor needs room, the one whose last decision is oldest gives it up). It keeps
//! records; it decides nothing.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::SystemTime;

use parking_lot::Mutex;

/// Decisions kept over all monitors.
pub const RECENT: usize = 256;
/// Decisions kept per monitor.
pub const PER_MONITOR: usize = 32;
/// Monitors whose decisions are kept.
pub const MONITORS: usize = 1024;

/// One routing decision, as kept in the decision history.
#[derive(Debug, Clone)]
pub struct RecordedDecision {
    /// When it was made.
    pub at: SystemTime,
    /// The monitor whose stream was placed.
    pub monitor: Arc<str>,
    /// The method called.
    pub method: String,
    /// The id of the call it placed (its `x-sluice-stream` header); 0 outside a call.
    pub stream: u64,
    /// Who decided: `name@vN` of the plugin, or `builtin`.
    pub policy: Arc<str>,
    /// Whether the built-in policy answered because the plugin failed.
    pub fallback: bool,
    /// The chosen connection's id.
    pub connection_id: u64,
    /// How many candidates there were.
    pub candidates: usize,
    /// The decision's confidence.
    pub confidence: f32,
    /// The decision's reason.
    pub reason: String,
}

/// The kept decisions. One decision is shared by both views.
#[derive(Default)]
pub(crate) struct DecisionLog {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    recent: VecDeque<Arc<RecordedDecision>>,
    by_monitor: HashMap<Arc<str>, VecDeque<Arc<RecordedDecision>>>,
}

impl DecisionLog {
    /// Keeps `decision`, dropping the oldest ones beyond the limits.
    pub(crate) fn record(&self, decision: RecordedDecision) {
        let decision = Arc::new(decision);
        let mut inner = self.inner.lock();
        if inner.recent.len() == RECENT {
            inner.recent.pop_front();
        }
        inner.recent.push_back(Arc::clone(&decision));
        if !inner.by_monitor.contains_key(&decision.monitor) && inner.by_monitor.len() >= MONITORS {
            let stalest = inner
                .by_monitor
                .iter()
                .min_by_key(|(_, kept)| kept.back().map(|d| d.at))
                .map(|(monitor, _)| Arc::clone(monitor));
            if let Some(stalest) = stalest {
                inner.by_monitor.remove(&stalest);
            }
        }
        let kept = inner
            .by_monitor
            .entry(Arc::clone(&decision.monitor))
            .or_insert_with(|| VecDeque::with_capacity(PER_MONITOR));
        if kept.len() == PER_MONITOR {
            kept.pop_front();
        }
        kept.push_back(decision);
    }

    /// The last `n` decisions over all monitors, newest last.
    pub(crate) fn recent(&self, n: usize) -> Vec<RecordedDecision> {
        let inner = self.inner.lock();
        last(&inner.recent, n)
    }

    /// The last `n` decisions for `monitor` (at most [`PER_MONITOR`]), newest last.
    pub(crate) fn for_monitor(&self, monitor: &str, n: usize) -> Vec<RecordedDecision> {
        let inner = self.inner.lock();
        inner
            .by_monitor
            .get(monitor)
            .map(|kept| last(kept, n))
            .unwrap_or_default()
    }
}

fn last(kept: &VecDeque<Arc<RecordedDecision>>, n: usize) -> Vec<RecordedDecision> {
    kept.iter()
        .skip(kept.len().saturating_sub(n))
        .map(|d| RecordedDecision::clone(d))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::*;

    fn decision(monitor: &str, at: u64, connection_id: u64) -> RecordedDecision {
        RecordedDecision {
            at: SystemTime::UNIX_EPOCH + Duration::from_secs(at),
            monitor: Arc::from(monitor),
            method: "/m".to_owned(),
            stream: at,
            policy: Arc::from("builtin"),
            fallback: false,
            connection_id,
            candidates: 2,
            confidence: 1.0,
            reason: format!("reason {connection_id}"),
        }
    }

    #[test]
    fn keeps_the_newest_per_monitor_and_overall() {
        let log = DecisionLog::default();
        for i in 0..(PER_MONITOR as u64 + 5) {
            log.record(decision("a", i, i));
        }
        log.record(decision("b", 1000, 7));
        let a = log.for_monitor("a", 1000);
        assert_eq!(a.len(), PER_MONITOR);
        assert_eq!(a.last().unwrap().connection_id, PER_MONITOR as u64 + 4);
        assert_eq!(a.first().unwrap().connection_id, 5);
        assert_eq!(log.for_monitor("a", 2).len(), 2);
        assert_eq!(log.for_monitor("b", 10)[0].reason, "reason 7");
        assert!(log.for_monitor("c", 10).is_empty());
        let recent = log.recent(3);
        assert_eq!(recent.len(), 3);
        assert_eq!(&*recent[2].monitor, "b");
    }

    #[test]
    fn the_monitor_idle_longest_makes_room() {
        let log = DecisionLog::default();
        for i in 0..MONITORS as u64 {
            log.record(decision(&format!("m{i}"), 10 + i, i));
        }
        // m0 decided first; m1 decides again now.
        log.record(decision("m1", 10_000, 1));
        log.record(decision("newcomer", 10_001, 99));
        assert!(
            log.for_monitor("m0", 10).is_empty(),
            "the stalest monitor went"
        );
        assert_eq!(log.for_monitor("m1", 10).len(), 2);
        assert_eq!(log.for_monitor("newcomer", 10).len(), 1);
    }
}
