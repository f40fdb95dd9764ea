//! An endpoint's standing with its provider, from the provider's own answers
//! (`[endpoints.answers]`): quota pushback (no new streams until a moment passes) and wrong
//! credentials (no new streams until an operator re-enables the endpoint).
//!
//! This module records and reports; it does not read statuses (the forwarders classify them)
//! nor place streams (the pool reads the verdict through the endpoint's health).

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::Serialize;

/// What the provider's answers say about taking new streams.
#[derive(Debug, Default)]
pub(crate) struct Standing {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Who got a marking answer lately: its kind, the monitor, when.
    witnesses: Vec<(Mark, Arc<str>, Instant)>,
    /// No new streams before this moment, and the answer that asked for it.
    pushback: Option<(Instant, String)>,
    /// The answer that showed the credentials are wrong.
    misconfigured: Option<String>,
}

/// The two marks the provider's answers can set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mark {
    /// Quota pushback.
    Pushback,
    /// Wrong credentials.
    Misconfigured,
}

/// How long a monitor's marking answer counts towards the witnesses a mark needs.
const WITNESS_WINDOW: Duration = Duration::from_secs(60);

/// The standing as the admin API shows it.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct StandingSnapshot {
    /// Why the endpoint is marked misconfigured, until it is re-enabled.
    pub misconfigured: Option<String>,
    /// How much longer the quota pushback lasts, in milliseconds.
    pub pushback_remaining_ms: Option<u64>,
    /// The answer that asked for the pushback.
    pub pushback_reason: Option<String>,
}

impl Standing {
    /// `monitor`'s call got an answer calling for `mark`. Returns whether `needed` different
    /// monitors have now, within [`WITNESS_WINDOW`], so that the mark is due.
    pub(crate) fn witness(&self, mark: Mark, monitor: &Arc<str>, needed: u32) -> bool {
        let now = Instant::now();
        let mut state = self.state.lock();
        state
            .witnesses
            .retain(|(_, _, at)| now.saturating_duration_since(*at) < WITNESS_WINDOW);
        let seen = state
            .witnesses
            .iter()
            .any(|(m, who, _)| *m == mark && who == monitor);
        if !seen {
            state.witnesses.push((mark, Arc::clone(monitor), now));
        }
        let count = state.witnesses.iter().filter(|(m, ..)| *m == mark).count();
        let due = count >= usize::try_from(needed).unwrap_or(usize::MAX);
        if due {
            // The mark starts over: once it ends, it takes new witnesses to set it again.
            state.witnesses.retain(|(m, ..)| *m != mark);
        }
        due
    }

    /// The provider pushed back: no new streams for `pause`. A longer pushback already running
    /// stays.
    pub(crate) fn push_back(&self, pause: Duration, why: String) {
        let until = Instant::now() + pause;
        let mut state = self.state.lock();
        if state.pushback.as_ref().is_none_or(|(t, _)| *t < until) {
            state.pushback = Some((until, why));
        }
    }

    /// The provider refused the credentials. Returns whether the endpoint was not marked
    /// misconfigured before (the first refusal is the one to log).
    pub(crate) fn misconfigure(&self, why: String) -> bool {
        let mut state = self.state.lock();
        let first = state.misconfigured.is_none();
        if first {
            state.misconfigured = Some(why);
        }
        first
    }

    /// The operator re-enabled the endpoint: both marks go. Returns whether there was one.
    pub(crate) fn reenable(&self) -> bool {
        let mut state = self.state.lock();
        let marked = state.misconfigured.is_some() || state.pushback.is_some();
        *state = State::default();
        marked
    }

    /// Whether the endpoint is marked misconfigured.
    pub(crate) fn is_misconfigured(&self) -> bool {
        self.state.lock().misconfigured.is_some()
    }

    /// Why the endpoint takes no new streams now, if the provider's answers say so.
    pub(crate) fn refusal(&self, now: Instant) -> Option<String> {
        let state = self.state.lock();
        if let Some(why) = &state.misconfigured {
            return Some(format!("misconfigured until re-enabled ({why})"));
        }
        let (until, why) = state.pushback.as_ref().filter(|(until, _)| *until > now)?;
        Some(format!(
            "quota pushback for {} ms more ({why})",
            until.duration_since(now).as_millis()
        ))
    }

    /// The standing now, for the admin API.
    pub(crate) fn snapshot(&self, now: Instant) -> StandingSnapshot {
        let state = self.state.lock();
        let pushback = state.pushback.as_ref().filter(|(until, _)| *until > now);
        StandingSnapshot {
            misconfigured: state.misconfigured.clone(),
            pushback_remaining_ms: pushback.map(|(until, _)| {
                u64::try_from(until.duration_since(now).as_millis()).unwrap_or(u64::MAX)
            }),
            pushback_reason: pushback.map(|(_, why)| why.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pushback_ends_by_itself_and_the_longer_one_wins() {
        let standing = Standing::default();
        let now = Instant::now();
        assert_eq!(standing.refusal(now), None);
        standing.push_back(Duration::from_secs(60), "quota".into());
        standing.push_back(Duration::from_millis(1), "short".into());
        let refusal = standing.refusal(Instant::now()).unwrap_or_default();
        assert!(
            refusal.starts_with("quota pushback for") && refusal.contains("(quota)"),
            "{refusal}"
        );
        assert_eq!(standing.refusal(now + Duration::from_secs(61)), None);
        assert_eq!(
            standing.snapshot(now + Duration::from_secs(61)),
            StandingSnapshot::default()
        );
    }

    #[test]
    fn a_mark_needs_answers_to_different_monitors() {
        let standing = Standing::default();
        let (a, b): (Arc<str>, Arc<str>) = (Arc::from("a"), Arc::from("b"));
        assert!(!standing.witness(Mark::Misconfigured, &a, 2));
        assert!(
            !standing.witness(Mark::Misconfigured, &a, 2),
            "the same monitor again"
        );
        assert!(
            !standing.witness(Mark::Pushback, &b, 2),
            "another kind of answer"
        );
        assert!(standing.witness(Mark::Misconfigured, &b, 2));
        assert!(standing.witness(Mark::Pushback, &a, 1), "one trusted call");
    }

    #[test]
    fn misconfigured_lasts_until_re_enabled() {
        let standing = Standing::default();
        assert!(standing.misconfigure("UNAUTHENTICATED: bad token".into()));
        assert!(!standing.misconfigure("again".into()));
        let later = Instant::now() + Duration::from_secs(3600);
        let refusal = standing.refusal(later).unwrap_or_default();
        assert!(refusal.contains("UNAUTHENTICATED: bad token"), "{refusal}");
        assert!(standing.reenable());
        assert_eq!(standing.refusal(later), None);
        assert!(!standing.reenable());
    }
}
