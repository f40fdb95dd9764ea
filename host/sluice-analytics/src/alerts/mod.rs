//! Alerts: turns conditions of the pool into incidents and delivers their notifications.
//!
//! This module owns the `[alerts]` rules ([`AlertRules`]), the incident state machine
//! ([`Alerter`]: pending → firing → resolved, one firing and one resolved notification per
//! incident) and the delivery of notifications to logs and webhooks ([`Notifier`]).
//!
//! It must never sit on a stream's data path and must never block the analytics loop: the
//! caller computes [`Observation`]s from pool state it already holds, [`Alerter::evaluate`] is a
//! pure in-memory step, and [`Notifier::notify`] only pushes into bounded queues that background
//! tasks drain (one per webhook, so a failing webhook delays nobody else).

mod engine;
mod http;
mod notifier;

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::records::Severity;

pub use engine::{AlertRules, Alerter};
pub use http::DeliveryError;
pub use notifier::{Notifier, NotifierStats};

/// The conditions an alert can be raised for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertRule {
    /// A circuit breaker (endpoint, monitor or connection) is open.
    BreakerOpen,
    /// An upstream endpoint is unhealthy.
    EndpointUnhealthy,
    /// An endpoint's provider refused Sluice's credentials.
    EndpointMisconfigured,
    /// The router's mean decision confidence is below the threshold.
    LowRouterConfidence,
    /// Connections needed for the streams / connections held is below the threshold.
    Efficiency,
}

impl AlertRule {
    /// Every rule.
    pub const ALL: [AlertRule; 5] = [
        AlertRule::BreakerOpen,
        AlertRule::EndpointUnhealthy,
        AlertRule::EndpointMisconfigured,
        AlertRule::LowRouterConfidence,
        AlertRule::Efficiency,
    ];

    /// The name used in config, notifications and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            AlertRule::BreakerOpen => "breaker_open",
            AlertRule::EndpointUnhealthy => "endpoint_unhealthy",
            AlertRule::EndpointMisconfigured => "endpoint_misconfigured",
            AlertRule::LowRouterConfidence => "low_router_confidence",
            AlertRule::Efficiency => "efficiency",
        }
    }

    /// How urgent an incident of this rule is: critical for open breakers and unhealthy or
    /// misconfigured endpoints, a warning otherwise.
    pub fn severity(self) -> Severity {
        match self {
            AlertRule::BreakerOpen
            | AlertRule::EndpointUnhealthy
            | AlertRule::EndpointMisconfigured => Severity::Critical,
            AlertRule::LowRouterConfidence | AlertRule::Efficiency => Severity::Warning,
        }
    }

    /// A short human title, e.g. `Circuit breaker open`.
    pub fn title(self) -> &'static str {
        match self {
            AlertRule::BreakerOpen => "Circuit breaker open",
            AlertRule::EndpointUnhealthy => "Endpoint unhealthy",
            AlertRule::EndpointMisconfigured => "Endpoint misconfigured",
            AlertRule::LowRouterConfidence => "Low router confidence",
            AlertRule::Efficiency => "Low connection efficiency",
        }
    }
}

impl fmt::Display for AlertRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where an alert stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertState {
    /// The condition holds but not yet for the rule's `for` duration.
    Pending,
    /// The condition has held long enough; the firing notification was sent.
    Firing,
    /// The condition cleared after firing.
    Resolved,
}

impl AlertState {
    /// The name used in notifications and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            AlertState::Pending => "pending",
            AlertState::Firing => "firing",
            AlertState::Resolved => "resolved",
        }
    }
}

/// What the caller saw for one rule and subject on one tick.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Observation {
    /// The rule this observation is about.
    pub rule: AlertRule,
    /// What it is about, e.g. `endpoint:primary`, `monitor:m1` or `pool`.
    pub subject: String,
    /// Whether the condition holds now.
    pub active: bool,
    /// The value behind it (a ratio, or 1/0 for open/closed and unhealthy/healthy).
    pub value: f64,
    /// A human explanation of the value, used in the notification's summary.
    pub detail: String,
}

/// Everything observed on one analytics tick.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Conditions {
    /// The tick's time, Unix ms; expected not to go backwards.
    pub now_ms: i64,
    /// One observation per rule and subject (subjects left out count as cleared).
    pub observations: Vec<Observation>,
}

/// A firing or resolved incident, as logged and sent to webhooks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Notification {
    /// Identifies the incident: `{rule}:{subject}:{started_ms}`; the firing and the resolved
    /// notification of one incident share it.
    pub incident_id: String,
    /// The rule.
    pub rule: AlertRule,
    /// What it is about.
    pub subject: String,
    /// `firing` or `resolved`.
    pub state: AlertState,
    /// `critical` or `warning`.
    pub severity: Severity,
    /// One human sentence.
    pub summary: String,
    /// The observed value (the last one seen, for a resolved incident).
    pub value: f64,
    /// When the condition started to hold, Unix ms.
    pub started_ms: i64,
    /// When this notification was produced, Unix ms.
    pub ts_ms: i64,
    /// Always `sluice`.
    pub source: String,
}

/// An alert that is pending or firing, for the admin API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActiveAlert {
    /// The incident's id (the one its notifications carry once it fires).
    pub incident_id: String,
    /// The rule.
    pub rule: AlertRule,
    /// What it is about.
    pub subject: String,
    /// `pending` or `firing`.
    pub state: AlertState,
    /// `critical` or `warning`.
    pub severity: Severity,
    /// Since when the condition holds, Unix ms.
    pub since_ms: i64,
    /// When it fired (firing) or will fire if it keeps holding (pending), Unix ms.
    pub fires_at_ms: i64,
    /// The last observed value.
    pub value: f64,
    /// The last observation's explanation.
    pub detail: String,
}
