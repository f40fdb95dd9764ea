//! Endpoint health: active `grpc.health.v1` checks and passive outlier detection.
//!
//! An endpoint is
//! - **unhealthy** when its provider said so in its answers (quota pushback, wrong credentials:
//!   [`standing`]), its active checks failed `unhealthy_threshold` times in a row, or its
//!   endpoint breaker is open (passive detection: the breaker counts failed connects and
//!   streams);
//! - **degraded** when its breaker is half-open or more than `degraded_error_rate` of its recent
//!   streams failed; it then takes half the usual streams per connection;
//! - **healthy** otherwise.
//!
//! Checks that start failing trip the endpoint breaker, and checks that pass again close it (or,
//! when its streams opened it since, let it probe at once), so the breaker says whether the
//! endpoint may take streams whichever signal came first. Beyond that this module measures and
//! reports: running the checks (they need the endpoint's connector and breaker) and acting on
//! health (which endpoints get new streams, spill to lower priorities) are the pool's job. It
//! knows nothing of the pool, routing or forwarding.

pub(crate) mod check;
pub(crate) mod standing;

use parking_lot::Mutex;
use serde::Serialize;
use sluice_config::HealthConfig;

pub(crate) use sluice_contract::health::Health;

use crate::breaker::{Breaker, BreakerState};
use standing::{Standing, StandingSnapshot};

/// Smallest number of recent streams before an error rate can degrade an endpoint.
const DEGRADE_MIN_CALLS: u32 = 5;

/// What the active checks found so far.
#[derive(Debug, Default)]
struct ActiveState {
    failures_in_row: u32,
    passes_in_row: u32,
    unhealthy: bool,
    /// A check failed since the checks last passed again: the endpoint was seen down, even
    /// when too briefly to be marked unhealthy.
    failed: bool,
    last_error: Option<String>,
}

/// Health inputs of one endpoint.
#[derive(Debug)]
pub(crate) struct EndpointHealth {
    config: HealthConfig,
    active: Mutex<ActiveState>,
    /// What the provider's answers said.
    pub(crate) standing: Standing,
}

/// A point-in-time view of an endpoint's health.
#[derive(Debug, Clone, Serialize)]
pub struct HealthSnapshot {
    /// The combined verdict.
    pub health: Health,
    /// Why it is not healthy, if it is not.
    pub reason: Option<String>,
    /// Whether active checks run.
    pub active_checks: bool,
    /// The last active check's error, if it failed.
    pub last_check_error: Option<String>,
    /// What the provider's answers said (pushback, wrong credentials).
    #[serde(flatten)]
    pub standing: StandingSnapshot,
}

impl EndpointHealth {
    /// Health with no observations: healthy.
    pub fn new(config: &HealthConfig) -> Self {
        Self {
            config: config.clone(),
            active: Mutex::new(ActiveState::default()),
            standing: Standing::default(),
        }
    }

    /// The `[health]` settings it judges by (the checks' interval, service and timeout too).
    pub(crate) fn config(&self) -> &HealthConfig {
        &self.config
    }

    /// The verdict now, given the endpoint's breaker.
    pub fn health(&self, breaker: &Breaker) -> Health {
        self.assess(breaker).0
    }

    /// The verdict and its reason.
    pub fn snapshot(&self, breaker: &Breaker) -> HealthSnapshot {
        let (health, reason) = self.assess(breaker);
        HealthSnapshot {
            health,
            reason,
            active_checks: self.config.active,
            last_check_error: self.active.lock().last_error.clone(),
            standing: self.standing.snapshot(std::time::Instant::now()),
        }
    }

    fn assess(&self, breaker: &Breaker) -> (Health, Option<String>) {
        if let Some(refusal) = self.standing.refusal(std::time::Instant::now()) {
            return (Health::Unhealthy, Some(refusal));
        }
        {
            let active = self.active.lock();
            if active.unhealthy {
                let error = active.last_error.as_deref().unwrap_or("unknown error");
                return (
                    Health::Unhealthy,
                    Some(format!(
                        "{} health checks failed in a row: {error}",
                        active.failures_in_row.max(self.config.unhealthy_threshold)
                    )),
                );
            }
        }
        let snapshot = breaker.snapshot();
        match snapshot.state {
            BreakerState::Open | BreakerState::ForcedOpen => {
                return (
                    Health::Unhealthy,
                    Some(format!("endpoint circuit breaker is {}", snapshot.state)),
                );
            }
            BreakerState::HalfOpen => {
                return (
                    Health::Degraded,
                    Some("endpoint circuit breaker is half-open".to_owned()),
                );
            }
            BreakerState::Closed | BreakerState::Disabled => {}
        }
        if snapshot.window_calls >= DEGRADE_MIN_CALLS {
            let rate = f64::from(snapshot.window_failures) / f64::from(snapshot.window_calls);
            if rate > self.config.degraded_error_rate {
                return (
                    Health::Degraded,
                    Some(format!(
                        "{:.0}% of {} recent streams failed",
                        rate * 100.0,
                        snapshot.window_calls
                    )),
                );
            }
        }
        (Health::Healthy, None)
    }

    /// Whether nothing but `breaker`'s open period keeps the endpoint out: its provider's
    /// answers and its active checks have nothing against it, and no operator forced the
    /// breaker open.
    pub(crate) fn only_breaker_open(&self, breaker: &Breaker) -> bool {
        self.standing.refusal(std::time::Instant::now()).is_none()
            && !self.active.lock().unhealthy
            && breaker.state() == BreakerState::Open
    }

    /// Records one active check. Returns the new verdict of the checks when it changed:
    /// `Some(false)` when they make the endpoint unhealthy, `Some(true)` when they pass again
    /// (`healthy_threshold` in a row) after any failure - the endpoint was seen down and is
    /// back, whether or not the failures had reached `unhealthy_threshold`.
    pub(crate) fn record_check(&self, result: Result<(), String>) -> Option<bool> {
        let mut active = self.active.lock();
        match result {
            Ok(()) => {
                active.passes_in_row += 1;
                active.failures_in_row = 0;
                active.last_error = None;
                if active.failed && active.passes_in_row >= self.config.healthy_threshold {
                    active.unhealthy = false;
                    active.failed = false;
                    return Some(true);
                }
            }
            Err(error) => {
                active.failures_in_row += 1;
                active.passes_in_row = 0;
                active.failed = true;
                active.last_error = Some(error);
                if !active.unhealthy && active.failures_in_row >= self.config.unhealthy_threshold {
                    active.unhealthy = true;
                    return Some(false);
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use sluice_config::HealthConfig;

    use super::EndpointHealth;

    #[test]
    fn checks_report_unhealthy_at_the_threshold_and_passing_again_after_any_failure() {
        let health = EndpointHealth::new(&HealthConfig::default());
        let fail = || Err("refused".to_owned());
        // Passing from the start is no change.
        assert_eq!(health.record_check(Ok(())), None);
        assert_eq!(health.record_check(Ok(())), None);
        // Unhealthy at the second failure in a row, then back after two passes.
        assert_eq!(health.record_check(fail()), None);
        assert_eq!(health.record_check(fail()), Some(false));
        assert_eq!(health.record_check(fail()), None);
        assert_eq!(health.record_check(Ok(())), None);
        assert_eq!(health.record_check(Ok(())), Some(true));
        assert_eq!(health.record_check(Ok(())), None);
        // One failure (down too briefly to be unhealthy) still makes the passes that follow a
        // recovery: an open breaker may then probe at once.
        assert_eq!(health.record_check(fail()), None);
        assert_eq!(health.record_check(Ok(())), None);
        assert_eq!(health.record_check(Ok(())), Some(true));
        assert_eq!(health.record_check(Ok(())), None);
    }
}
