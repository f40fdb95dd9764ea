//! Hostile clients against a real `sluice run` process in front of a real feed process: every
//! attack of `sluice_tests::abuse`, each made while a legitimate monitor streams through the
//! same Sluice.
//!
//! Every attack's checks assert that the legitimate monitor saw no error and kept at least 90%
//! of the messages it got over a window of the same length just before the attack, that no
//! endpoint breaker and no configured monitor's breaker opened, and that Sluice's peak RSS
//! stayed under [`PEAK_RSS_LIMIT_KB`]; and, where a defence shows, that it acted (refusals
//! counted in `/metrics`, GOAWAYs, statuses). The attacks run one at a time, so that one attack's load
//! never counts against another's victim: [`every_attack_is_contained`] makes them all, in a
//! test binary of its own so that no other test's load counts either.

use std::time::Duration;

use sluice_tests::abuse::stage::{
    self, MAX_CONNECTIONS_PER_PEER, NOISY_MAX_STREAMS, STREAM_WINDOW_BYTES,
};
use sluice_tests::abuse::{Attack, CONFIGURED_MONITORS, Round, Stage, wire};

/// The legitimate monitor's windows, before and during an attack (it also bounds the attack).
const WINDOW: Duration = Duration::from_secs(3);
/// The share of its baseline messages the legitimate monitor must keep under attack.
const KEPT_SHARE: f64 = 0.9;
/// The longest one attack, its stage and its checks may take.
const ATTACK_LIMIT: Duration = Duration::from_secs(120);
/// Sluice's peak RSS allowed over an attack, in KiB (200 MiB).
const PEAK_RSS_LIMIT_KB: u64 = 200 * 1024;

/// An attack made, and what was read around it.
struct Siege {
    stage: Stage,
    round: Round,
    /// `/metrics` before and after the attack.
    metrics: (String, String),
}

impl Siege {
    /// Starts a stage, makes `attack` on it and checks that nobody else noticed.
    async fn of(attack: Attack) -> Self {
        let stage = Stage::start().await;
        let before = stage.metrics().await;
        let round = stage.round(Some(attack), WINDOW).await;
        eprintln!(
            "{}: legitimate monitor {:?} before, {:?} during; Sluice {:.0}% CPU, attacker {:.0}% \
             CPU, peak RSS {} KiB; observed {:#?}",
            attack.name(),
            round.baseline,
            round.during,
            round.cpu_percent,
            round.attacker_cpu_percent,
            round.peak_rss_kb,
            round.observed
        );
        // Effects that come late (a breaker that opens on the attack's last failures) show in
        // the checks below.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let after = stage.metrics().await;
        let siege = Self {
            stage,
            round,
            metrics: (before, after),
        };
        siege.assert_nobody_else_noticed().await;
        siege
    }

    /// The common assertions: the legitimate monitor unharmed, no breaker open, memory bounded.
    async fn assert_nobody_else_noticed(&self) {
        let legit = &self.stage.legit;
        assert_eq!(
            legit.count().errors,
            0,
            "the legitimate monitor saw errors: {:?}",
            legit.errors()
        );
        let (baseline, during) = (self.round.baseline, self.round.during);
        assert!(
            during.messages as f64 >= KEPT_SHARE * baseline.messages as f64,
            "the legitimate monitor got {} messages under attack, {} in the same time before",
            during.messages,
            baseline.messages
        );
        let opened = self.stage.breakers_opened().await;
        assert!(opened.is_empty(), "breakers opened: {opened:#?}");
        assert!(
            self.round.peak_rss_kb < PEAK_RSS_LIMIT_KB,
            "Sluice's peak RSS was {} KiB (limit {PEAK_RSS_LIMIT_KB} KiB)",
            self.round.peak_rss_kb
        );
    }

    /// How much the counter `name` went up over the attack.
    fn counted(&self, name: &str) -> f64 {
        stage::metric(&self.metrics.1, name) - stage::metric(&self.metrics.0, name)
    }
}

/// Every attack in turn, each on a stage of its own, with the checks common to all
/// ([`Siege::of`]) and those of its own defence. One test in a binary of its own, so that the
/// attacks run one at a time and nothing else runs beside them (cargo runs test binaries one
/// after the other). A failed attack does not stop the others; the test fails at the end naming
/// each (their panics are printed above).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_attack_is_contained() {
    let mut failed = Vec::new();
    for attack in Attack::ALL {
        let mut made = tokio::spawn(async move {
            let siege = Siege::of(attack).await;
            check(attack, &siege).await;
        });
        // A stage takes about 8 s; a hung one must not hold the others up.
        match tokio::time::timeout(ATTACK_LIMIT, &mut made).await {
            Ok(Ok(())) => {}
            Ok(Err(_panicked)) => failed.push(attack.name()),
            Err(_elapsed) => {
                made.abort();
                eprintln!("{}: not over after {ATTACK_LIMIT:?}", attack.name());
                failed.push(attack.name());
            }
        }
    }
    assert!(failed.is_empty(), "attacks not contained: {failed:?}");
}

/// The checks of `attack`'s own defence.
async fn check(attack: Attack, siege: &Siege) {
    match attack {
        Attack::SlowHeaders => slow_headers_are_sent_away_once_idle(siege),
        Attack::SilentBodies => calls_that_never_send_a_body_end_with_deadline_exceeded(siege),
        Attack::HugeMessages => {
            huge_declared_messages_buffer_at_most_a_window_and_are_refused(siege)
        }
        Attack::StreamFlood => ten_thousand_streams_of_one_monitor_stop_at_its_stream_limit(siege),
        Attack::ConnectionFlood => connections_past_the_per_peer_cap_are_sent_away(siege),
        Attack::HeaderFlood => header_lists_over_the_limit_are_refused(siege),
        Attack::MonitorIdFlood => ten_thousand_monitor_ids_share_one_breaker(siege).await,
        Attack::Impersonation => {
            impersonating_a_monitor_with_tiny_deadlines_leaves_its_breaker_closed(siege)
        }
        Attack::ContinuationFlood => continuation_floods_get_the_connection_sent_away(siege),
        Attack::RapidReset => rapid_resets_get_the_connection_sent_away(siege),
        Attack::PingFlood => ping_floods_harm_no_one(siege),
        Attack::SettingsFlood => settings_floods_harm_no_one(siege),
    }
}

fn slow_headers_are_sent_away_once_idle(siege: &Siege) {
    let observed = &siege.round.observed;
    // Half the connections trickle a HEADERS frame after the handshake: a connection whose
    // call never opens is idle, and sent away. (The other half trickle the preface itself,
    // which the handshake limit, `pool.connect_timeout`, 5 s, ends after the attack.)
    assert_eq!(observed.outcome("headers closed"), 20, "{observed:#?}");
    let limit = stage::IDLE_TIMEOUT * 2 + Duration::from_millis(500);
    assert!(
        observed.peak <= limit.as_millis() as u64,
        "a slow connection was held {} ms",
        observed.peak
    );
}

fn calls_that_never_send_a_body_end_with_deadline_exceeded(siege: &Siege) {
    let observed = &siege.round.observed;
    assert_eq!(
        observed.outcome("DeadlineExceeded"),
        observed.attempts,
        "{observed:#?}"
    );
    let message = observed
        .messages
        .get("DeadlineExceeded")
        .map_or("", String::as_str);
    assert!(message.contains("request message within"), "{message:?}");
    assert!(siege.counted("sluice_request_timeouts_total") >= observed.attempts as f64);
}

fn huge_declared_messages_buffer_at_most_a_window_and_are_refused(siege: &Siege) {
    let observed = &siege.round.observed;
    // Each call is refused (too large, over the budget, no message in time), or turned away
    // by the breaker the unconfigured monitors share once those refusals opened it.
    let (timed_out, refused, turned_away) = (
        observed.outcome("DeadlineExceeded"),
        observed.outcome("ResourceExhausted"),
        observed.outcome("Unavailable"),
    );
    assert_eq!(
        timed_out + refused + turned_away,
        observed.attempts,
        "{observed:#?}"
    );
    assert!(
        observed.peak <= STREAM_WINDOW_BYTES,
        "one call got {} request bytes through before admission",
        observed.peak
    );
    // 64 calls holding up to a window each are twice the budget.
    assert!(
        siege.counted("sluice_request_buffer_refused_total") > 0.0,
        "{observed:#?}"
    );
    assert!(siege.counted("sluice_request_timeouts_total") >= timed_out as f64);
}

fn ten_thousand_streams_of_one_monitor_stop_at_its_stream_limit(siege: &Siege) {
    let observed = &siege.round.observed;
    let (open, refused) = (
        observed.outcome("open"),
        observed.outcome("ResourceExhausted"),
    );
    assert!(
        observed.attempts > 10 * NOISY_MAX_STREAMS as u64,
        "{observed:#?}"
    );
    assert!(open <= NOISY_MAX_STREAMS as u64, "{observed:#?}");
    assert_eq!(open + refused, observed.attempts, "{observed:#?}");
    assert!(siege.counted("sluice_monitor_streams_refused_total") >= refused as f64);
}

fn connections_past_the_per_peer_cap_are_sent_away(siege: &Siege) {
    let observed = &siege.round.observed;
    // The legitimate monitor's connection counts against the same peer's cap. Past the cap a
    // connection gets GOAWAY right after the handshake, or, while many refusals are being
    // answered already, is closed.
    let past_cap = observed.attempts - MAX_CONNECTIONS_PER_PEER as u64 + 1;
    assert!(observed.outcome("refused") >= past_cap, "{observed:#?}");
    assert!(
        observed.outcome("admitted") < MAX_CONNECTIONS_PER_PEER as u64,
        "{observed:#?}"
    );
    assert!(siege.counted("sluice_monitor_connections_refused_total") >= past_cap as f64);
}

fn header_lists_over_the_limit_are_refused(siege: &Siege) {
    let observed = &siege.round.observed;
    assert!(observed.attempts > 0, "{observed:#?}");
    assert_eq!(observed.answered, 0, "{observed:#?}");
}

async fn ten_thousand_monitor_ids_share_one_breaker(siege: &Siege) {
    let observed = &siege.round.observed;
    let breakers = siege.stage.monitor_breakers().await;
    assert!(
        breakers <= CONFIGURED_MONITORS.len() + 1,
        "{breakers} monitor breakers after {} monitor ids",
        observed.attempts
    );
    // Valid ids are served; only the three invalid ones may fail.
    let failed = observed.attempts - observed.outcome("Ok") - observed.outcome("open");
    assert!(failed <= 3, "{observed:#?}");
}

fn impersonating_a_monitor_with_tiny_deadlines_leaves_its_breaker_closed(siege: &Siege) {
    let observed = &siege.round.observed;
    // Every call ends on its own deadline: Sluice's DEADLINE_EXCEEDED, or the upstream's
    // CANCELLED when the deadline Sluice passed on runs out there first.
    assert_eq!(
        observed.outcome("DeadlineExceeded") + observed.outcome("Cancelled"),
        observed.attempts,
        "{observed:#?}"
    );
}

fn continuation_floods_get_the_connection_sent_away(siege: &Siege) {
    let observed = &siege.round.observed;
    // The connection open when the attack stopped may not have been sent away yet.
    let connections = observed.outcome("connections");
    assert!(connections >= 2, "{observed:#?}");
    assert!(observed.goaway_total() >= connections - 1, "{observed:#?}");
}

fn rapid_resets_get_the_connection_sent_away(siege: &Siege) {
    let observed = &siege.round.observed;
    assert!(
        observed.goaways.contains_key(&wire::ENHANCE_YOUR_CALM),
        "{observed:#?}"
    );
}

fn ping_floods_harm_no_one(siege: &Siege) {
    assert!(siege.round.observed.attempts > 0);
}

fn settings_floods_harm_no_one(siege: &Siege) {
    assert!(siege.round.observed.attempts > 0);
}
