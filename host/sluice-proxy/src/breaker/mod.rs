//! Circuit breakers: per connection, per endpoint and per monitor.
//!
//! A `Breaker` owns one state machine (closed, open, half-open, plus the operator overrides
//! forced-open and disabled) and the counts that drive it: consecutive failures, a sliding
//! window of outcomes (failure and slow-call rates once a minimum volume is reached) and the
//! half-open probes in flight. Callers ask `Breaker::admit` before using what the breaker
//! guards and report how it went through the `Permit`; every state change is an event in the
//! shared `BreakerEvents` log and in the trace.
//!
//! A breaker decides nothing about placement or retries: the pool and the forwarder read its
//! state and act on it.

mod window;

use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant, SystemTime};

use parking_lot::Mutex;
use serde::Serialize;
use sluice_config::{BreakerScope, BreakerSettings};
pub(crate) use sluice_contract::breaker::BreakerState;

use self::window::OutcomeWindow;

/// An operator override set through the admin API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Override {
    /// Refuse everything.
    ForceOpen,
    /// Pass everything and count nothing.
    Disable,
}

/// How one guarded call went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// It worked; `slow` when it took longer than the slow-call threshold.
    Success {
        /// Slower than `slow_call_duration`.
        slow: bool,
    },
    /// It failed in a way the config counts as a failure.
    Failure,
}

/// A state change, kept in the pool's log of breaker events.
#[derive(Debug, Clone, Serialize)]
pub struct BreakerEvent {
    /// Increasing number of the event in its log.
    pub seq: u64,
    /// Wall-clock time of the change.
    #[serde(with = "unix_ms")]
    pub at: SystemTime,
    /// What the breaker guards.
    pub scope: BreakerScope,
    /// The guarded thing's name (endpoint id, monitor id, `endpoint#connection`).
    pub name: Arc<str>,
    /// State before.
    pub from: BreakerState,
    /// State after.
    pub to: BreakerState,
    /// Why, in words.
    pub cause: String,
}

mod unix_ms {
    use std::time::{SystemTime, UNIX_EPOCH};

    pub fn serialize<S: serde::Serializer>(at: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        let ms = at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis());
        s.serialize_u128(ms)
    }
}

/// The most recent breaker state changes of a proxy (bounded).
#[derive(Debug, Default)]
pub(crate) struct BreakerEvents {
    next_seq: AtomicU64,
    events: Mutex<VecDeque<BreakerEvent>>,
}

/// Events kept by [`BreakerEvents`].
const EVENTS_KEPT: usize = 512;

impl BreakerEvents {
    fn push(&self, mut event: BreakerEvent) {
        event.seq = self.next_seq.fetch_add(1, Relaxed) + 1;
        tracing::info!(
            scope = %event.scope,
            name = %event.name,
            from = %event.from,
            to = %event.to,
            cause = %event.cause,
            "circuit breaker changed state",
        );
        let mut events = self.events.lock();
        if events.len() == EVENTS_KEPT {
            events.pop_front();
        }
        events.push_back(event);
    }

    /// Events with `seq > since`, oldest first.
    pub fn since(&self, since: u64) -> Vec<BreakerEvent> {
        self.events
            .lock()
            .iter()
            .filter(|e| e.seq > since)
            .cloned()
            .collect()
    }
}

/// A point-in-time view of one breaker.
#[derive(Debug, Clone, Serialize)]
pub struct BreakerSnapshot {
    /// What it guards.
    pub scope: BreakerScope,
    /// The guarded thing's name.
    pub name: Arc<str>,
    /// Its state now.
    pub state: BreakerState,
    /// Failures in a row.
    pub consecutive_failures: u32,
    /// Calls in the sliding window.
    pub window_calls: u32,
    /// Failed calls in the window.
    pub window_failures: u32,
    /// Slow calls in the window.
    pub window_slow: u32,
    /// Times it opened since it was last closed for good.
    pub trips: u32,
    /// Time until an open breaker lets probes through, in milliseconds.
    pub retry_in_ms: Option<u64>,
}

/// One circuit breaker.
pub(crate) struct Breaker {
    scope: BreakerScope,
    name: Arc<str>,
    settings: BreakerSettings,
    events: Arc<BreakerEvents>,
    inner: Mutex<Inner>,
}

impl fmt::Debug for Breaker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Breaker")
            .field("scope", &self.scope)
            .field("name", &self.name)
            .field("state", &self.inner.lock().state)
            .finish()
    }
}

struct Inner {
    state: BreakerState,
    override_: Option<Override>,
    consecutive_failures: u32,
    consecutive_successes: u32,
    probes_in_flight: u32,
    open_until: Instant,
    trips: u32,
    window: OutcomeWindow,
    /// Opened by [`Breaker::trip_now`] rather than by the calls it counts; cleared by
    /// [`Breaker::close_tripped`] or by any later trip from calls.
    tripped_from_outside: bool,
}

/// Leave to make one call through a breaker. Report the outcome with [`Permit::record`];
/// a permit dropped unreported gives its probe slot back without counting anything.
#[must_use = "report the outcome with Permit::record"]
pub(crate) struct Permit {
    breaker: Arc<Breaker>,
    probe: bool,
    done: bool,
}

impl fmt::Debug for Permit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Permit")
            .field("breaker", &self.breaker.name)
            .field("probe", &self.probe)
            .finish()
    }
}

impl Permit {
    /// Counts the call's outcome (once; later reports of the same permit are ignored).
    pub fn record(&mut self, outcome: Outcome) {
        self.record_at(outcome, Instant::now());
    }

    /// [`Permit::record`] at a given time (tests drive time explicitly).
    pub fn record_at(&mut self, outcome: Outcome, now: Instant) {
        if self.done {
            return;
        }
        self.done = true;
        self.breaker.record(outcome, self.probe, now);
    }

    /// Whether the outcome was reported already.
    pub fn is_recorded(&self) -> bool {
        self.done
    }

    /// Whether this call is a half-open probe (only the tests ask: the breaker keeps count).
    #[cfg(test)]
    pub fn is_probe(&self) -> bool {
        self.probe
    }

    /// The breaker it was taken from.
    pub fn breaker(&self) -> &Arc<Breaker> {
        &self.breaker
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if !self.done && self.probe {
            self.breaker.inner.lock().probes_in_flight -= 1;
        }
    }
}

/// Why a breaker refused a call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("circuit breaker of {scope} {name} is {state}{}", retry_hint(*.retry_in))]
pub(crate) struct Refused {
    /// What it guards.
    pub scope: BreakerScope,
    /// The guarded thing's name.
    pub name: Arc<str>,
    /// Its state.
    pub state: BreakerState,
    /// When probes will be let through, if known.
    pub retry_in: Option<Duration>,
}

fn retry_hint(retry_in: Option<Duration>) -> String {
    match retry_in {
        Some(d) => format!(" (probes again in {} ms)", d.as_millis()),
        None => String::new(),
    }
}

impl Breaker {
    /// A closed breaker.
    pub fn new(
        scope: BreakerScope,
        name: Arc<str>,
        settings: BreakerSettings,
        events: Arc<BreakerEvents>,
    ) -> Arc<Self> {
        let now = Instant::now();
        Arc::new(Self {
            scope,
            name,
            settings,
            events,
            inner: Mutex::new(Inner {
                state: if settings.enabled {
                    BreakerState::Closed
                } else {
                    BreakerState::Disabled
                },
                override_: None,
                consecutive_failures: 0,
                consecutive_successes: 0,
                probes_in_flight: 0,
                open_until: now,
                trips: 0,
                window: OutcomeWindow::new(settings.window, now),
                tripped_from_outside: false,
            }),
        })
    }

    /// The guarded thing's name.
    pub fn name(&self) -> &Arc<str> {
        &self.name
    }

    /// Asks to make one call.
    pub fn admit(self: &Arc<Self>) -> Result<Permit, Refused> {
        self.admit_at(Instant::now())
    }

    /// [`Breaker::admit`] at a given time.
    pub fn admit_at(self: &Arc<Self>, now: Instant) -> Result<Permit, Refused> {
        let mut inner = self.inner.lock();
        self.advance(&mut inner, now);
        let probe = match inner.state {
            BreakerState::Closed | BreakerState::Disabled => false,
            BreakerState::HalfOpen if inner.probes_in_flight < self.settings.half_open_probes => {
                inner.probes_in_flight += 1;
                true
            }
            state => return Err(self.refusal(&inner, state, now)),
        };
        Ok(Permit {
            breaker: Arc::clone(self),
            probe,
            done: false,
        })
    }

    /// Whether a call would be admitted now, without taking a probe slot.
    pub fn permits(&self, now: Instant) -> bool {
        let mut inner = self.inner.lock();
        self.advance(&mut inner, now);
        match inner.state {
            BreakerState::Closed | BreakerState::Disabled => true,
            BreakerState::HalfOpen => inner.probes_in_flight < self.settings.half_open_probes,
            BreakerState::Open | BreakerState::ForcedOpen => false,
        }
    }

    /// The state now (an open breaker whose period is over reads as half-open).
    pub fn state(&self) -> BreakerState {
        let mut inner = self.inner.lock();
        self.advance(&mut inner, Instant::now());
        inner.state
    }

    /// Counts an outcome that did not come through a permit (for example a stream that
    /// worked, then broke: its permit already reported the success).
    pub fn observe(&self, outcome: Outcome) {
        self.record(outcome, false, Instant::now());
    }

    /// The configured slow-call threshold.
    pub fn slow_call_duration(&self) -> Duration {
        self.settings.slow_call_duration
    }

    /// Ends an open period early (for example when health checks pass again): an open breaker
    /// becomes half-open and lets probes through.
    pub fn probe_now(&self, cause: &str) {
        let mut inner = self.inner.lock();
        if inner.state == BreakerState::Open {
            inner.consecutive_successes = 0;
            inner.open_until = Instant::now();
            self.transition(&mut inner, BreakerState::HalfOpen, cause.to_owned());
        }
    }

    /// A passing health check of the endpoint this breaker guards. A half-open breaker with no
    /// probe in flight counts it as a successful probe: placement prefers endpoints whose
    /// breakers are closed, so with healthy endpoints elsewhere no stream may ever come to
    /// probe this one, and it would stay half-open, taking no traffic, long after the endpoint
    /// is back. A stream that fails there afterwards opens it again as any failure would.
    pub fn check_passed(&self) {
        self.check_passed_at(Instant::now());
    }

    /// [`Breaker::check_passed`] at a given time.
    pub fn check_passed_at(&self, now: Instant) {
        let mut inner = self.inner.lock();
        self.advance(&mut inner, now);
        if inner.state != BreakerState::HalfOpen || inner.probes_in_flight > 0 {
            return;
        }
        self.half_open_success(
            &mut inner,
            now,
            "successes in a row (health checks while no stream probed it)",
        );
    }

    /// One more success while half-open; `success_threshold` in a row close the breaker, the
    /// cause naming how many and `what` they were.
    fn half_open_success(&self, inner: &mut Inner, now: Instant, what: &str) {
        inner.consecutive_successes += 1;
        if inner.consecutive_successes >= self.settings.success_threshold {
            inner.consecutive_failures = 0;
            inner.trips = 0;
            inner.window.clear(now);
            let cause = format!("{} {what}", inner.consecutive_successes);
            self.transition(inner, BreakerState::Closed, cause);
        }
    }

    /// Opens a closed or half-open breaker at once, for a cause seen outside the calls it
    /// counts (the endpoint's active health checks started failing). Overrides and an open
    /// breaker are left as they are.
    pub fn trip_now(&self, cause: &str) {
        let mut inner = self.inner.lock();
        if matches!(inner.state, BreakerState::Closed | BreakerState::HalfOpen) {
            self.trip(&mut inner, Instant::now(), cause.to_owned());
            inner.tripped_from_outside = true;
        }
    }

    /// Closes a breaker that [`Breaker::trip_now`] opened, once that cause is gone (the health
    /// checks pass again). A breaker that its calls opened since is left to its probes.
    pub fn close_tripped(&self, cause: &str) {
        let mut inner = self.inner.lock();
        let tripped = std::mem::take(&mut inner.tripped_from_outside);
        if tripped && matches!(inner.state, BreakerState::Open | BreakerState::HalfOpen) {
            inner.consecutive_failures = 0;
            inner.trips = 0;
            inner.window.clear(Instant::now());
            self.transition(&mut inner, BreakerState::Closed, cause.to_owned());
        }
    }

    /// Sets or clears an operator override.
    pub fn set_override(&self, value: Option<Override>) {
        let mut inner = self.inner.lock();
        let now = Instant::now();
        inner.override_ = value;
        let (to, cause) = match value {
            Some(Override::ForceOpen) => (BreakerState::ForcedOpen, "forced open by an operator"),
            Some(Override::Disable) => (BreakerState::Disabled, "disabled by an operator"),
            None => (
                if self.settings.enabled {
                    BreakerState::Closed
                } else {
                    BreakerState::Disabled
                },
                "override released by an operator",
            ),
        };
        inner.consecutive_failures = 0;
        inner.consecutive_successes = 0;
        inner.trips = 0;
        inner.window.clear(now);
        self.transition(&mut inner, to, cause.to_owned());
    }

    /// A view for the admin API.
    pub fn snapshot(&self) -> BreakerSnapshot {
        self.snapshot_at(Instant::now())
    }

    /// [`Breaker::snapshot`] at a given time.
    pub fn snapshot_at(&self, now: Instant) -> BreakerSnapshot {
        let mut inner = self.inner.lock();
        self.advance(&mut inner, now);
        let counts = inner.window.counts(now);
        BreakerSnapshot {
            scope: self.scope,
            name: Arc::clone(&self.name),
            state: inner.state,
            consecutive_failures: inner.consecutive_failures,
            window_calls: counts.calls,
            window_failures: counts.failures,
            window_slow: counts.slow,
            trips: inner.trips,
            retry_in_ms: (inner.state == BreakerState::Open)
                .then(|| inner.open_until.saturating_duration_since(now).as_millis() as u64),
        }
    }

    fn refusal(&self, inner: &Inner, state: BreakerState, now: Instant) -> Refused {
        Refused {
            scope: self.scope,
            name: Arc::clone(&self.name),
            state,
            retry_in: (state == BreakerState::Open)
                .then(|| inner.open_until.saturating_duration_since(now)),
        }
    }

    /// Moves an open breaker whose period is over to half-open.
    fn advance(&self, inner: &mut Inner, now: Instant) {
        if inner.state == BreakerState::Open && now >= inner.open_until {
            inner.consecutive_successes = 0;
            self.transition(
                inner,
                BreakerState::HalfOpen,
                "open period over; letting probes through".to_owned(),
            );
        }
    }

    fn record(&self, outcome: Outcome, probe: bool, now: Instant) {
        let mut inner = self.inner.lock();
        if probe {
            inner.probes_in_flight -= 1;
        }
        self.advance(&mut inner, now);
        match inner.state {
            BreakerState::Disabled | BreakerState::ForcedOpen => return,
            // Outcomes of calls admitted before the breaker opened say nothing new.
            BreakerState::Open => return,
            BreakerState::HalfOpen => {
                if !probe {
                    return;
                }
                match outcome {
                    Outcome::Success { slow: false } => {
                        self.half_open_success(&mut inner, now, "probes in a row succeeded");
                    }
                    Outcome::Success { slow: true } => {
                        self.trip(&mut inner, now, "a half-open probe was slow".to_owned());
                    }
                    Outcome::Failure => {
                        self.trip(&mut inner, now, "a half-open probe failed".to_owned());
                    }
                }
                return;
            }
            BreakerState::Closed => {}
        }
        let (failed, slow) = match outcome {
            Outcome::Success { slow } => (false, slow),
            Outcome::Failure => (true, false),
        };
        inner.window.add(now, failed, slow);
        if failed {
            inner.consecutive_failures += 1;
        } else {
            inner.consecutive_failures = 0;
        }
        if inner.consecutive_failures >= self.settings.failure_threshold {
            let cause = format!("{} failures in a row", inner.consecutive_failures);
            self.trip(&mut inner, now, cause);
            return;
        }
        let counts = inner.window.counts(now);
        if counts.calls < self.settings.minimum_volume {
            return;
        }
        let calls = f64::from(counts.calls);
        let failure_rate = f64::from(counts.failures) / calls;
        let slow_rate = f64::from(counts.slow) / calls;
        if failed && failure_rate >= self.settings.failure_rate {
            let cause = format!(
                "{:.0}% of {} calls in {:?} failed",
                failure_rate * 100.0,
                counts.calls,
                self.settings.window
            );
            self.trip(&mut inner, now, cause);
        } else if slow && slow_rate >= self.settings.slow_call_rate {
            let cause = format!(
                "{:.0}% of {} calls in {:?} were slower than {:?}",
                slow_rate * 100.0,
                counts.calls,
                self.settings.window,
                self.settings.slow_call_duration
            );
            self.trip(&mut inner, now, cause);
        }
    }

    fn trip(&self, inner: &mut Inner, now: Instant, cause: String) {
        inner.tripped_from_outside = false;
        inner.trips += 1;
        let period = open_period(&self.settings, inner.trips, fastrand::f64());
        inner.open_until = now + period;
        inner.consecutive_successes = 0;
        let cause = format!("{cause}; open for {} ms", period.as_millis());
        self.transition(inner, BreakerState::Open, cause);
    }

    fn transition(&self, inner: &mut Inner, to: BreakerState, cause: String) {
        let from = inner.state;
        inner.state = to;
        if from == to {
            return;
        }
        self.events.push(BreakerEvent {
            seq: 0,
            at: SystemTime::now(),
            scope: self.scope,
            name: Arc::clone(&self.name),
            from,
            to,
            cause,
        });
    }
}

/// The open period after `trips` trips: doubling from `open_duration`, capped, plus up to 20%
/// jitter (`jitter` in 0..1) so that breakers tripped together do not probe together.
fn open_period(settings: &BreakerSettings, trips: u32, jitter: f64) -> Duration {
    let doublings = trips.saturating_sub(1).min(16);
    let base = settings
        .open_duration
        .saturating_mul(1 << doublings)
        .min(settings.max_open_duration);
    base.mul_f64(1.0 + 0.2 * jitter.clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests;
