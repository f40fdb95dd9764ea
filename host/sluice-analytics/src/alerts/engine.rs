//! The rules' thresholds and the incident state machine.

use std::collections::BTreeMap;
use std::time::Duration;

use sluice_config::{AlertsConfig, BreakerScope};

use super::{ActiveAlert, AlertRule, AlertState, Conditions, Notification, Observation};

/// The `[alerts]` rules: turns raw values into [`Observation`]s and tells how long each rule's
/// condition must hold.
#[derive(Debug, Clone)]
pub struct AlertRules {
    config: AlertsConfig,
}

impl AlertRules {
    /// The rules of `config`.
    pub fn new(config: &AlertsConfig) -> Self {
        Self {
            config: config.clone(),
        }
    }

    /// How long `rule`'s condition must hold before it fires; `None` when the rule (or alerting
    /// as a whole) is disabled.
    pub fn hold_for(&self, rule: AlertRule) -> Option<Duration> {
        if !self.config.enabled {
            return None;
        }
        let c = &self.config;
        let (enabled, hold) = match rule {
            AlertRule::BreakerOpen => (c.breaker_open.enabled, c.breaker_open.hold_for),
            AlertRule::EndpointUnhealthy => {
                (c.endpoint_unhealthy.enabled, c.endpoint_unhealthy.hold_for)
            }
            AlertRule::EndpointMisconfigured => (
                c.endpoint_misconfigured.enabled,
                c.endpoint_misconfigured.hold_for,
            ),
            AlertRule::LowRouterConfidence => (
                c.low_router_confidence.enabled,
                c.low_router_confidence.hold_for,
            ),
            AlertRule::Efficiency => (c.efficiency.enabled, c.efficiency.hold_for),
        };
        enabled.then_some(hold)
    }

    /// The breaker of `name` in `scope`. Subject `{scope}:{name}`; active when the breaker is
    /// open and its scope is watched.
    pub fn breaker(&self, scope: BreakerScope, name: &str, open: bool) -> Observation {
        let watched = self.config.breaker_open.scopes.contains(&scope);
        Observation {
            rule: AlertRule::BreakerOpen,
            subject: format!("{scope}:{name}"),
            active: open && watched,
            value: if open { 1.0 } else { 0.0 },
            detail: format!(
                "the {scope} breaker of {name} is {}",
                if open { "open" } else { "closed" }
            ),
        }
    }

    /// The health of endpoint `id`. Subject `endpoint:{id}`; active while unhealthy; `reason`
    /// (e.g. the failed health check) becomes the detail.
    pub fn endpoint(&self, id: &str, unhealthy: bool, reason: &str) -> Observation {
        let detail = match (unhealthy, reason.is_empty()) {
            (true, true) => format!("endpoint {id} is unhealthy"),
            (true, false) => format!("endpoint {id} is unhealthy: {reason}"),
            (false, _) => format!("endpoint {id} is healthy"),
        };
        Observation {
            rule: AlertRule::EndpointUnhealthy,
            subject: format!("endpoint:{id}"),
            active: unhealthy,
            value: if unhealthy { 1.0 } else { 0.0 },
            detail,
        }
    }

    /// Whether endpoint `id`'s provider refused Sluice's credentials (`why`, the answer that
    /// showed it). Subject `endpoint:{id}`; active until the endpoint is re-enabled.
    pub fn endpoint_misconfigured(&self, id: &str, why: Option<&str>) -> Observation {
        Observation {
            rule: AlertRule::EndpointMisconfigured,
            subject: format!("endpoint:{id}"),
            active: why.is_some(),
            value: if why.is_some() { 1.0 } else { 0.0 },
            detail: match why {
                Some(why) => format!(
                    "endpoint {id} refused Sluice's credentials ({why}); it takes no new streams \
                     until re-enabled"
                ),
                None => format!("endpoint {id} accepts Sluice's credentials"),
            },
        }
    }

    /// The router's mean decision confidence over the last period (`None` when it made no
    /// decisions, which never counts as low). Subject `router`.
    pub fn router_confidence(&self, mean: Option<f64>) -> Observation {
        let below = self.config.low_router_confidence.below;
        let (active, value, detail) = match mean {
            Some(mean) if mean.is_finite() => (
                mean < below,
                mean,
                format!("mean router confidence is {mean:.2} (threshold {below})"),
            ),
            _ => (false, 0.0, "the router made no decisions".to_owned()),
        };
        Observation {
            rule: AlertRule::LowRouterConfidence,
            subject: "router".to_owned(),
            active,
            value,
            detail,
        }
    }

    /// The pool's efficiency: connections `needed` for its streams / connections `held`.
    /// Subject `pool`; with no connection held it counts as efficient.
    pub fn efficiency(&self, needed: f64, held: f64) -> Observation {
        let below = self.config.efficiency.below;
        let ratio = if held > 0.0 && needed.is_finite() {
            (needed / held).max(0.0)
        } else {
            1.0
        };
        Observation {
            rule: AlertRule::Efficiency,
            subject: "pool".to_owned(),
            active: ratio < below,
            value: ratio,
            detail: format!(
                "{needed:.0} connections needed for the streams, {held:.0} held: efficiency \
                 {ratio:.2} (threshold {below})"
            ),
        }
    }
}

/// One (rule, subject) whose condition holds.
#[derive(Debug, Clone)]
struct Track {
    since_ms: i64,
    hold_ms: i64,
    firing: bool,
    value: f64,
    detail: String,
}

/// The incident state machine.
///
/// Per (rule, subject) it remembers since when the condition holds. It fires once the condition
/// has held for the rule's `for` duration and resolves once when it clears after firing; a
/// condition that clears before `for` never fires, and an incident never notifies twice while
/// it stays active. Subjects no longer observed count as cleared.
#[derive(Debug, Clone)]
pub struct Alerter {
    rules: AlertRules,
    tracks: BTreeMap<(AlertRule, String), Track>,
}

impl Alerter {
    /// A state machine with no incident, using the rules of `config`.
    pub fn new(config: &AlertsConfig) -> Self {
        Self {
            rules: AlertRules::new(config),
            tracks: BTreeMap::new(),
        }
    }

    /// The rules, to build observations with.
    pub fn rules(&self) -> &AlertRules {
        &self.rules
    }

    /// Takes new rules (after a config reload). Incidents of rules now disabled resolve at the
    /// next [`Alerter::evaluate`]; pending ones keep their start time.
    pub fn reconfigure(&mut self, config: &AlertsConfig) {
        self.rules = AlertRules::new(config);
    }

    /// Advances the state machine to `conditions.now_ms` and returns the notifications due: a
    /// firing one for each incident that just reached its `for` duration, a resolved one for
    /// each firing incident whose condition cleared.
    pub fn evaluate(&mut self, conditions: &Conditions) -> Vec<Notification> {
        let now = conditions.now_ms;
        let mut active: BTreeMap<(AlertRule, &str), &Observation> = BTreeMap::new();
        let mut cleared: BTreeMap<(AlertRule, &str), &Observation> = BTreeMap::new();
        for observation in &conditions.observations {
            let key = (observation.rule, observation.subject.as_str());
            if observation.active && self.rules.hold_for(observation.rule).is_some() {
                active.entry(key).or_insert(observation);
            } else {
                cleared.entry(key).or_insert(observation);
            }
        }

        let mut out = Vec::new();
        let ended: Vec<(AlertRule, String)> = self
            .tracks
            .keys()
            .filter(|(rule, subject)| !active.contains_key(&(*rule, subject.as_str())))
            .cloned()
            .collect();
        for key in ended {
            let Some(track) = self.tracks.remove(&key) else {
                continue;
            };
            if !track.firing {
                continue;
            }
            let (rule, subject) = key;
            let value = cleared
                .get(&(rule, subject.as_str()))
                .map_or(track.value, |o| o.value);
            let summary = format!(
                "{} on {subject} resolved after {}",
                rule.title(),
                human_duration(now.saturating_sub(track.since_ms))
            );
            out.push(notification(
                rule,
                subject,
                AlertState::Resolved,
                summary,
                value,
                track.since_ms,
                now,
            ));
        }

        for ((rule, subject), observation) in active {
            let hold_ms = self
                .rules
                .hold_for(rule)
                .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
            let track = self
                .tracks
                .entry((rule, subject.to_owned()))
                .or_insert_with(|| Track {
                    since_ms: now,
                    hold_ms,
                    firing: false,
                    value: observation.value,
                    detail: String::new(),
                });
            track.value = observation.value;
            track.detail.clone_from(&observation.detail);
            if !track.firing {
                track.hold_ms = hold_ms;
            }
            let held = now.saturating_sub(track.since_ms);
            if !track.firing && held >= hold_ms {
                track.firing = true;
                let summary = if held > 0 {
                    format!(
                        "{} on {subject} for {}: {}",
                        rule.title(),
                        human_duration(held),
                        observation.detail
                    )
                } else {
                    format!("{} on {subject}: {}", rule.title(), observation.detail)
                };
                out.push(notification(
                    rule,
                    subject.to_owned(),
                    AlertState::Firing,
                    summary,
                    observation.value,
                    track.since_ms,
                    now,
                ));
            }
        }
        out
    }

    /// The alerts whose condition holds now, pending or firing, ordered by rule and subject.
    pub fn active(&self) -> Vec<ActiveAlert> {
        self.tracks
            .iter()
            .map(|((rule, subject), track)| ActiveAlert {
                incident_id: incident_id(*rule, subject, track.since_ms),
                rule: *rule,
                subject: subject.clone(),
                state: if track.firing {
                    AlertState::Firing
                } else {
                    AlertState::Pending
                },
                severity: rule.severity(),
                since_ms: track.since_ms,
                fires_at_ms: track.since_ms.saturating_add(track.hold_ms),
                value: track.value,
                detail: track.detail.clone(),
            })
            .collect()
    }
}

fn incident_id(rule: AlertRule, subject: &str, started_ms: i64) -> String {
    format!("{rule}:{subject}:{started_ms}")
}

fn notification(
    rule: AlertRule,
    subject: String,
    state: AlertState,
    summary: String,
    value: f64,
    started_ms: i64,
    ts_ms: i64,
) -> Notification {
    Notification {
        incident_id: incident_id(rule, &subject, started_ms),
        rule,
        subject,
        state,
        severity: rule.severity(),
        summary,
        value: if value.is_finite() { value } else { 0.0 },
        started_ms,
        ts_ms,
        source: "sluice".to_owned(),
    }
}

/// `ms` as `1h 5m`, `3m 20s`, `45s` or `300ms`.
fn human_duration(ms: i64) -> String {
    let ms = ms.max(0);
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let secs = ms / 1000;
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    match (h, m, s) {
        (0, 0, s) => format!("{s}s"),
        (0, m, 0) => format!("{m}m"),
        (0, m, s) => format!("{m}m {s}s"),
        (h, 0, _) => format!("{h}h"),
        (h, m, _) => format!("{h}h {m}m"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::Severity;

    fn config() -> AlertsConfig {
        let mut config = AlertsConfig::default();
        config.endpoint_unhealthy.hold_for = Duration::from_secs(10);
        config.low_router_confidence.hold_for = Duration::from_secs(60);
        config
    }

    fn at(now_ms: i64, observations: Vec<Observation>) -> Conditions {
        Conditions {
            now_ms,
            observations,
        }
    }

    fn states(notifications: &[Notification]) -> Vec<(AlertState, &str)> {
        notifications
            .iter()
            .map(|n| (n.state, n.subject.as_str()))
            .collect()
    }

    #[test]
    fn fires_only_after_for_and_only_once() {
        let mut alerter = Alerter::new(&config());
        let down = alerter.rules().endpoint("primary", true, "3 failed checks");
        for t in (0..10_000).step_by(1000) {
            assert!(
                alerter.evaluate(&at(t, vec![down.clone()])).is_empty(),
                "t={t}"
            );
        }
        assert_eq!(alerter.active()[0].state, AlertState::Pending);
        assert_eq!(alerter.active()[0].fires_at_ms, 10_000);

        let fired = alerter.evaluate(&at(10_000, vec![down.clone()]));
        assert_eq!(states(&fired), [(AlertState::Firing, "endpoint:primary")]);
        let n = &fired[0];
        assert_eq!(n.incident_id, "endpoint_unhealthy:endpoint:primary:0");
        assert_eq!(n.rule, AlertRule::EndpointUnhealthy);
        assert_eq!(n.severity, Severity::Critical);
        assert_eq!(n.started_ms, 0);
        assert_eq!(n.ts_ms, 10_000);
        assert_eq!(n.source, "sluice");
        assert!(n.summary.contains("3 failed checks"), "{}", n.summary);
        assert_eq!(alerter.active()[0].state, AlertState::Firing);

        for t in (11_000..100_000).step_by(1000) {
            assert!(
                alerter.evaluate(&at(t, vec![down.clone()])).is_empty(),
                "t={t}"
            );
        }
    }

    #[test]
    fn resolves_once_when_cleared() {
        let mut alerter = Alerter::new(&config());
        let rules = alerter.rules().clone();
        let low = rules.router_confidence(Some(0.2));
        assert_eq!(alerter.evaluate(&at(0, vec![low.clone()])).len(), 0);
        let fired = alerter.evaluate(&at(60_000, vec![low]));
        assert_eq!(states(&fired), [(AlertState::Firing, "router")]);
        assert_eq!(fired[0].severity, Severity::Warning);

        let ok = rules.router_confidence(Some(0.9));
        let resolved = alerter.evaluate(&at(65_000, vec![ok.clone()]));
        assert_eq!(states(&resolved), [(AlertState::Resolved, "router")]);
        assert_eq!(resolved[0].incident_id, fired[0].incident_id);
        assert_eq!(resolved[0].value, 0.9);
        assert!(
            resolved[0].summary.contains("1m 5s"),
            "{}",
            resolved[0].summary
        );
        for t in 66_000..70_000 {
            assert!(alerter.evaluate(&at(t, vec![ok.clone()])).is_empty());
        }
        assert!(alerter.active().is_empty());
    }

    #[test]
    fn flapping_shorter_than_for_never_fires() {
        let mut alerter = Alerter::new(&config());
        let rules = alerter.rules().clone();
        for cycle in 0..20 {
            let start = cycle * 10_000;
            for t in (start..start + 9_000).step_by(1000) {
                let obs = rules.endpoint("a", true, "");
                assert!(alerter.evaluate(&at(t, vec![obs])).is_empty());
            }
            let obs = rules.endpoint("a", false, "");
            assert!(alerter.evaluate(&at(start + 9_500, vec![obs])).is_empty());
        }
        // Not observed at all counts as cleared too.
        let obs = rules.endpoint("a", true, "");
        assert!(alerter.evaluate(&at(500_000, vec![obs])).is_empty());
        assert!(alerter.evaluate(&at(505_000, vec![])).is_empty());
        assert!(alerter.active().is_empty());
    }

    #[test]
    fn subjects_are_separate_incidents() {
        let mut alerter = Alerter::new(&config());
        let rules = alerter.rules().clone();
        let a = rules.breaker(BreakerScope::Endpoint, "a", true);
        let b = rules.breaker(BreakerScope::Monitor, "m1", true);
        let fired = alerter.evaluate(&at(1_000, vec![a.clone()]));
        assert_eq!(states(&fired), [(AlertState::Firing, "endpoint:a")]);
        let fired = alerter.evaluate(&at(2_000, vec![a.clone(), b.clone()]));
        assert_eq!(states(&fired), [(AlertState::Firing, "monitor:m1")]);
        // `a` disappears from the observations: resolved; `b` stays firing.
        let out = alerter.evaluate(&at(3_000, vec![b.clone()]));
        assert_eq!(states(&out), [(AlertState::Resolved, "endpoint:a")]);
        assert_eq!(alerter.active().len(), 1);
        let out = alerter.evaluate(&at(
            4_000,
            vec![rules.breaker(BreakerScope::Monitor, "m1", false)],
        ));
        assert_eq!(states(&out), [(AlertState::Resolved, "monitor:m1")]);
    }

    #[test]
    fn a_new_incident_after_resolution_gets_a_new_id() {
        let mut alerter = Alerter::new(&config());
        let rules = alerter.rules().clone();
        let open = rules.breaker(BreakerScope::Endpoint, "a", true);
        let first = alerter.evaluate(&at(1_000, vec![open.clone()]));
        let resolved = alerter.evaluate(&at(2_000, vec![]));
        let second = alerter.evaluate(&at(3_000, vec![open]));
        assert_eq!(first[0].incident_id, resolved[0].incident_id);
        assert_eq!(second[0].state, AlertState::Firing);
        assert_ne!(second[0].incident_id, first[0].incident_id);
        assert_eq!(second[0].started_ms, 3_000);
    }

    #[test]
    fn disabled_rules_and_unwatched_scopes_never_fire() {
        let mut config = config();
        config.low_router_confidence.enabled = false;
        let mut alerter = Alerter::new(&config);
        let rules = alerter.rules().clone();
        let obs = vec![
            rules.router_confidence(Some(0.0)),
            rules.breaker(BreakerScope::Connection, "7", true),
            rules.router_confidence(None),
        ];
        for t in (0..1_000_000).step_by(100_000) {
            assert!(alerter.evaluate(&at(t, obs.clone())).is_empty());
        }
        assert!(alerter.active().is_empty());

        // Disabling a firing rule resolves it; disabling alerts entirely resolves everything.
        let low_eff = rules.efficiency(1.0, 10.0);
        assert!(low_eff.active);
        assert!((low_eff.value - 0.1).abs() < 1e-9);
        assert!(!rules.efficiency(0.0, 0.0).active);
        alerter.evaluate(&at(0, vec![low_eff.clone()]));
        let fired = alerter.evaluate(&at(600_000, vec![low_eff.clone()]));
        assert_eq!(states(&fired), [(AlertState::Firing, "pool")]);
        config.enabled = false;
        alerter.reconfigure(&config);
        let out = alerter.evaluate(&at(601_000, vec![low_eff]));
        assert_eq!(states(&out), [(AlertState::Resolved, "pool")]);
    }

    #[test]
    fn notifications_serialize_as_documented() {
        let mut alerter = Alerter::new(&config());
        let open = alerter.rules().breaker(BreakerScope::Endpoint, "a", true);
        let fired = alerter.evaluate(&at(5, vec![open]));
        let json = serde_json::to_value(&fired[0]).unwrap();
        assert_eq!(json["state"], "firing");
        assert_eq!(json["rule"], "breaker_open");
        assert_eq!(json["severity"], "critical");
        assert_eq!(json["incident_id"], "breaker_open:endpoint:a:5");
        assert_eq!(json["source"], "sluice");
        assert_eq!(json["value"], 1.0);
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(human_duration(300), "300ms");
        assert_eq!(human_duration(45_000), "45s");
        assert_eq!(human_duration(120_000), "2m");
        assert_eq!(human_duration(200_000), "3m 20s");
        assert_eq!(human_duration(3_900_000), "1h 5m");
    }
}
