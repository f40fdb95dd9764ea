use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_config::BreakerSettings;

use super::*;

fn breaker(settings: BreakerSettings) -> (Arc<Breaker>, Arc<BreakerEvents>) {
    let events = Arc::new(BreakerEvents::default());
    let breaker = Breaker::new(
        BreakerScope::Connection,
        Arc::from("test"),
        settings,
        Arc::clone(&events),
    );
    (breaker, events)
}

fn call(breaker: &Arc<Breaker>, outcome: Outcome, now: Instant) {
    let mut permit = breaker.admit_at(now).expect("admitted");
    permit.record_at(outcome, now);
}

const OK: Outcome = Outcome::Success { slow: false };
const SLOW: Outcome = Outcome::Success { slow: true };
const FAIL: Outcome = Outcome::Failure;

fn states(events: &BreakerEvents) -> Vec<(BreakerState, BreakerState)> {
    events.since(0).iter().map(|e| (e.from, e.to)).collect()
}

#[test]
fn opens_on_exactly_the_configured_consecutive_failures() {
    let (b, events) = breaker(BreakerSettings::CONNECTION);
    let t = Instant::now();
    for _ in 0..4 {
        call(&b, FAIL, t);
    }
    assert!(
        b.permits(t),
        "4 failures must not open a threshold-5 breaker"
    );
    // A success resets the run.
    call(&b, OK, t);
    for _ in 0..4 {
        call(&b, FAIL, t);
    }
    assert!(b.permits(t));
    call(&b, FAIL, t);
    assert!(!b.permits(t), "the 5th failure in a row opens it");
    let refused = b.admit_at(t).expect_err("open breakers refuse");
    assert_eq!(refused.state, BreakerState::Open);
    assert_eq!(
        states(&events),
        vec![(BreakerState::Closed, BreakerState::Open)]
    );
    assert!(events.since(0)[0].cause.contains("5 failures in a row"));
}

#[test]
fn half_open_after_the_open_period_then_closes_after_the_success_threshold() {
    let settings = BreakerSettings::CONNECTION;
    let (b, events) = breaker(settings);
    let t = Instant::now();
    for _ in 0..5 {
        call(&b, FAIL, t);
    }
    // The first open period is 30 s plus at most 20% jitter.
    assert!(!b.permits(t + Duration::from_millis(29_999)));
    let after = t + Duration::from_secs(36);
    // Three probes at once (half_open_probes = success_threshold = 3), not four.
    let mut probes: Vec<Permit> = (0..3).map(|_| b.admit_at(after).expect("probe")).collect();
    assert!(probes.iter().all(Permit::is_probe));
    assert!(
        b.admit_at(after).is_err(),
        "a fourth concurrent probe is refused"
    );
    probes[0].record_at(OK, after);
    probes[1].record_at(OK, after);
    assert_eq!(b.snapshot().state, BreakerState::HalfOpen);
    probes[2].record_at(OK, after);
    assert_eq!(b.snapshot().state, BreakerState::Closed);
    assert_eq!(
        states(&events),
        vec![
            (BreakerState::Closed, BreakerState::Open),
            (BreakerState::Open, BreakerState::HalfOpen),
            (BreakerState::HalfOpen, BreakerState::Closed),
        ]
    );
}

#[test]
fn passing_health_checks_close_a_half_open_breaker_no_stream_probes() {
    let (b, events) = breaker(BreakerSettings::CONNECTION);
    let t = Instant::now();
    for _ in 0..5 {
        call(&b, FAIL, t);
    }
    // Checks that pass while it is open change nothing: the open period runs its course.
    for _ in 0..3 {
        b.check_passed_at(t + Duration::from_secs(1));
    }
    assert_eq!(b.snapshot_at(t).state, BreakerState::Open);
    let after = t + Duration::from_secs(36);
    // While a stream probes it, the stream's outcome decides, not the checks.
    let probe = b.admit_at(after).expect("probe");
    for _ in 0..3 {
        b.check_passed_at(after);
    }
    assert_eq!(b.snapshot_at(after).state, BreakerState::HalfOpen);
    drop(probe);
    // No stream comes: success_threshold (3) passing checks close it.
    b.check_passed_at(after);
    b.check_passed_at(after);
    assert_eq!(b.snapshot_at(after).state, BreakerState::HalfOpen);
    b.check_passed_at(after);
    assert_eq!(b.snapshot_at(after).state, BreakerState::Closed);
    let closed = events.since(0).last().cloned().expect("an event");
    assert!(closed.cause.contains("health checks"), "{}", closed.cause);
}

#[test]
fn a_failed_probe_reopens_for_a_longer_period() {
    let settings = BreakerSettings::CONNECTION;
    let (b, _events) = breaker(settings);
    let t = Instant::now();
    for _ in 0..5 {
        call(&b, FAIL, t);
    }
    let probe_at = t + Duration::from_secs(37);
    call(&b, FAIL, probe_at);
    let snapshot = b.snapshot_at(probe_at);
    assert_eq!(snapshot.state, BreakerState::Open);
    assert_eq!(snapshot.trips, 2);
    // Second trip: 60 s..72 s.
    assert!(!b.permits(probe_at + Duration::from_millis(59_999)));
    assert!(b.permits(probe_at + Duration::from_secs(73)));
}

#[test]
fn open_period_doubles_up_to_the_cap_with_bounded_jitter() {
    let s = BreakerSettings::CONNECTION;
    assert_eq!(open_period(&s, 1, 0.0), Duration::from_secs(30));
    assert_eq!(open_period(&s, 2, 0.0), Duration::from_secs(60));
    assert_eq!(open_period(&s, 3, 0.0), Duration::from_secs(120));
    assert_eq!(open_period(&s, 10, 0.0), s.max_open_duration);
    assert_eq!(open_period(&s, 1, 1.0), Duration::from_secs(36));
}

#[test]
fn failure_rate_trips_only_once_the_minimum_volume_is_reached() {
    let (b, events) = breaker(BreakerSettings::CONNECTION);
    let t = Instant::now();
    // Alternate: never 5 in a row, 50% failures.
    for i in 0..9 {
        call(&b, if i % 2 == 0 { FAIL } else { OK }, t);
    }
    assert!(b.permits(t), "9 calls are below the volume of 10");
    call(&b, OK, t);
    assert!(
        b.permits(t),
        "the 10th call succeeded: rates are checked on failures"
    );
    call(&b, FAIL, t);
    // 6 failures of 11 = 54% >= 50%.
    assert!(!b.permits(t));
    assert!(events.since(0)[0].cause.contains("of 11 calls"));
}

#[test]
fn old_outcomes_leave_the_window() {
    let (b, _) = breaker(BreakerSettings::CONNECTION);
    let t = Instant::now();
    for i in 0..9 {
        call(&b, if i % 3 == 0 { OK } else { FAIL }, t);
    }
    // 70 s later the 60 s window has forgotten them.
    let later = t + Duration::from_secs(70);
    assert_eq!(b.snapshot_at(later).window_calls, 0);
    call(&b, FAIL, later);
    assert!(b.permits(later));
}

#[test]
fn slow_call_rate_trips() {
    let (b, events) = breaker(BreakerSettings::CONNECTION);
    let t = Instant::now();
    for _ in 0..7 {
        call(&b, SLOW, t);
    }
    for _ in 0..2 {
        call(&b, OK, t);
    }
    assert!(b.permits(t));
    call(&b, SLOW, t);
    // 8 slow of 10 = 80%.
    assert!(!b.permits(t));
    assert!(events.since(0)[0].cause.contains("slower than"));
}

#[test]
fn monitor_defaults_differ() {
    let (b, _) = breaker(BreakerSettings::MONITOR);
    let t = Instant::now();
    for _ in 0..9 {
        call(&b, FAIL, t);
    }
    assert!(b.permits(t));
    call(&b, FAIL, t);
    assert!(!b.permits(t));
    assert!(!b.permits(t + Duration::from_millis(59_999)));
}

#[test]
fn overrides_win_until_released() {
    let (b, events) = breaker(BreakerSettings::CONNECTION);
    let t = Instant::now();
    b.set_override(Some(Override::ForceOpen));
    assert!(!b.permits(t));
    assert_eq!(
        b.admit_at(t).expect_err("forced open").state,
        BreakerState::ForcedOpen
    );
    b.set_override(Some(Override::Disable));
    for _ in 0..20 {
        call(&b, FAIL, t);
    }
    assert!(b.permits(t), "a disabled breaker counts nothing");
    b.set_override(None);
    assert_eq!(b.snapshot().state, BreakerState::Closed);
    let to: Vec<BreakerState> = events.since(0).iter().map(|e| e.to).collect();
    assert_eq!(
        to,
        vec![
            BreakerState::ForcedOpen,
            BreakerState::Disabled,
            BreakerState::Closed
        ]
    );
}

#[test]
fn an_unreported_probe_gives_its_slot_back() {
    let (b, _) = breaker(BreakerSettings::CONNECTION);
    let t = Instant::now();
    for _ in 0..5 {
        call(&b, FAIL, t);
    }
    let after = t + Duration::from_secs(37);
    for _ in 0..10 {
        let permit = b.admit_at(after).expect("probe");
        drop(permit);
    }
    assert_eq!(b.snapshot_at(after).state, BreakerState::HalfOpen);
}

#[test]
fn an_outside_trip_opens_at_once_and_closes_when_its_cause_is_gone() {
    let (b, events) = breaker(BreakerSettings::CONNECTION);
    b.trip_now("health checks failing");
    assert_eq!(b.state(), BreakerState::Open);
    b.close_tripped("health checks pass again");
    assert_eq!(b.state(), BreakerState::Closed);
    assert_eq!(
        states(&events),
        vec![
            (BreakerState::Closed, BreakerState::Open),
            (BreakerState::Open, BreakerState::Closed)
        ]
    );
    // Once the calls themselves tripped it, only probes close it.
    b.trip_now("health checks failing");
    b.probe_now("open period over");
    let mut probe = b.admit().expect("a probe is let through");
    probe.record(FAIL);
    assert_eq!(b.state(), BreakerState::Open);
    b.close_tripped("health checks pass again");
    assert_eq!(b.state(), BreakerState::Open, "a failed probe's trip stays");
    // Overrides are left alone.
    b.set_override(Some(Override::ForceOpen));
    b.trip_now("health checks failing");
    assert_eq!(b.state(), BreakerState::ForcedOpen);
}
