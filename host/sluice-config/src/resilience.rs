//! `[breakers]`, `[health]`, keepalive and reconnect settings, endpoint rate limits and stream
//! resume: everything that decides how Sluice reacts when an upstream misbehaves.
//!
//! Breaker tables have different defaults per scope (connection, endpoint, monitor), so their
//! fields are optional here and resolved against the scope's defaults by
//! [`BreakersConfig::settings`]. [`BreakerScope`] is the one list of scopes: the config, the
//! data plane, the admin API, alerts and metrics all name scopes through it.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// What a circuit breaker guards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BreakerScope {
    /// One upstream connection.
    Connection,
    /// One upstream endpoint, over all its connections.
    Endpoint,
    /// One monitor's calls.
    Monitor,
}

impl BreakerScope {
    /// Every scope, in a fixed order.
    pub const ALL: [BreakerScope; 3] = [
        BreakerScope::Connection,
        BreakerScope::Endpoint,
        BreakerScope::Monitor,
    ];

    /// The scope's name in the config, the admin API, alerts and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerScope::Connection => "connection",
            BreakerScope::Endpoint => "endpoint",
            BreakerScope::Monitor => "monitor",
        }
    }

    /// The settings a `[breakers.<scope>]` table starts from.
    pub fn defaults(self) -> BreakerSettings {
        match self {
            BreakerScope::Connection | BreakerScope::Endpoint => BreakerSettings::CONNECTION,
            BreakerScope::Monitor => BreakerSettings::MONITOR,
        }
    }
}

impl fmt::Display for BreakerScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A breaker scope name that is not one of [`BreakerScope::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown breaker scope {0:?}; scopes are connection, endpoint, monitor")]
pub struct UnknownBreakerScope(pub String);

impl FromStr for BreakerScope {
    type Err = UnknownBreakerScope;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|scope| scope.as_str() == text)
            .ok_or_else(|| UnknownBreakerScope(text.to_owned()))
    }
}

/// Circuit breakers for connections, endpoints and monitors.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct BreakersConfig {
    /// Per upstream connection. Defaults: 5 failures, 3 successes, 30 s, volume 10, 50%.
    pub connection: BreakerTable,
    /// Per endpoint, over all its connections (an open endpoint breaker takes the endpoint out
    /// of placement). Defaults as for connections.
    pub endpoint: BreakerTable,
    /// Per monitor (an open monitor breaker refuses its new streams with `UNAVAILABLE`).
    /// Defaults: 10 failures, 5 successes, 60 s, volume 20, 30%.
    pub monitor: BreakerTable,
    /// What counts as a failure.
    pub failures: FailureKinds,
    /// A stream whose response has not started (no headers, no message) this long after the
    /// monitor's request is in counts as a failure when `failures.no_first_message` is on. A
    /// stream whose headers came is judged no further: a quiet stream is not a dead one. A
    /// method's `first_message_timeout` holds its streams to their first message instead.
    /// Default 10 s.
    #[serde(with = "crate::duration")]
    pub first_message_timeout: Duration,
}

impl Default for BreakersConfig {
    fn default() -> Self {
        Self {
            connection: BreakerTable::default(),
            endpoint: BreakerTable::default(),
            monitor: BreakerTable::default(),
            failures: FailureKinds::default(),
            first_message_timeout: Duration::from_secs(10),
        }
    }
}

impl BreakersConfig {
    /// The table of `scope` as written.
    pub fn table(&self, scope: BreakerScope) -> &BreakerTable {
        match scope {
            BreakerScope::Connection => &self.connection,
            BreakerScope::Endpoint => &self.endpoint,
            BreakerScope::Monitor => &self.monitor,
        }
    }

    /// Effective settings of the breakers of `scope`: its table over the scope's defaults.
    pub fn settings(&self, scope: BreakerScope) -> BreakerSettings {
        self.table(scope).resolve(scope.defaults())
    }
}

/// Outcomes that count as breaker failures. Each can be turned off.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct FailureKinds {
    /// A connection could not be opened. Default on.
    pub connect: bool,
    /// The stream was reset or its connection died. Default on.
    pub reset: bool,
    /// The upstream answered `UNAVAILABLE`. Default on.
    pub unavailable: bool,
    /// The upstream answered `DEADLINE_EXCEEDED`. Default on.
    pub deadline_exceeded: bool,
    /// No response start (or, for methods that ask, no first response message) within the
    /// first-message timeout. Default on.
    pub no_first_message: bool,
}

impl Default for FailureKinds {
    fn default() -> Self {
        Self {
            connect: true,
            reset: true,
            unavailable: true,
            deadline_exceeded: true,
            no_first_message: true,
        }
    }
}

/// One breaker scope as written in the config; unset fields take the scope's defaults.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerTable {
    /// Breakers of this scope exist at all. Default true.
    pub enabled: Option<bool>,
    /// Consecutive failures that open the breaker.
    pub failure_threshold: Option<u32>,
    /// Consecutive successful probes in half-open that close it.
    pub success_threshold: Option<u32>,
    /// How long it stays open the first time; repeated trips double it (with jitter).
    #[serde(with = "crate::duration")]
    pub open_duration: Option<Duration>,
    /// The longest open period repeated trips grow to. Default: the scope's (connection and
    /// endpoint 4 minutes, monitor 2 minutes), or 8x `open_duration` when that is set.
    #[serde(with = "crate::duration")]
    pub max_open_duration: Option<Duration>,
    /// Sliding window over which failure and slow-call rates are measured. Default 60 s.
    #[serde(with = "crate::duration")]
    pub window: Option<Duration>,
    /// Calls the window must hold before a rate can trip the breaker.
    pub minimum_volume: Option<u32>,
    /// Failure share of the window (0..=1) that trips the breaker.
    pub failure_rate: Option<f64>,
    /// A call slower than this (time to the first response message) is slow. Default 5 s.
    #[serde(with = "crate::duration")]
    pub slow_call_duration: Option<Duration>,
    /// Slow share of the window (0..=1) that trips the breaker. Default 0.8.
    pub slow_call_rate: Option<f64>,
    /// Calls let through at once while half-open. Default `success_threshold`.
    pub half_open_probes: Option<u32>,
}

impl BreakerTable {
    /// This table over `defaults`.
    pub fn resolve(&self, defaults: BreakerSettings) -> BreakerSettings {
        let success_threshold = self.success_threshold.unwrap_or(defaults.success_threshold);
        let open_duration = self.open_duration.unwrap_or(defaults.open_duration);
        BreakerSettings {
            enabled: self.enabled.unwrap_or(defaults.enabled),
            failure_threshold: self.failure_threshold.unwrap_or(defaults.failure_threshold),
            success_threshold,
            open_duration,
            max_open_duration: self.max_open_duration.unwrap_or(match self.open_duration {
                Some(open) => open.saturating_mul(8),
                None => defaults.max_open_duration,
            }),
            window: self.window.unwrap_or(defaults.window),
            minimum_volume: self.minimum_volume.unwrap_or(defaults.minimum_volume),
            failure_rate: self.failure_rate.unwrap_or(defaults.failure_rate),
            slow_call_duration: self
                .slow_call_duration
                .unwrap_or(defaults.slow_call_duration),
            slow_call_rate: self.slow_call_rate.unwrap_or(defaults.slow_call_rate),
            half_open_probes: self.half_open_probes.unwrap_or(success_threshold),
        }
    }
}

/// Effective breaker settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BreakerSettings {
    /// Whether the breaker records and trips at all.
    pub enabled: bool,
    /// Consecutive failures that open it.
    pub failure_threshold: u32,
    /// Consecutive half-open successes that close it.
    pub success_threshold: u32,
    /// First open period.
    pub open_duration: Duration,
    /// Cap of the growing open period.
    pub max_open_duration: Duration,
    /// Rate window.
    pub window: Duration,
    /// Calls needed in the window before rates count.
    pub minimum_volume: u32,
    /// Failure share that trips.
    pub failure_rate: f64,
    /// Slow-call threshold.
    pub slow_call_duration: Duration,
    /// Slow share that trips.
    pub slow_call_rate: f64,
    /// Concurrent half-open probes.
    pub half_open_probes: u32,
}

impl BreakerSettings {
    /// Connection and endpoint defaults: 5 failures, 3 successes, 30 s, volume 10, 50%.
    pub const CONNECTION: BreakerSettings = BreakerSettings {
        enabled: true,
        failure_threshold: 5,
        success_threshold: 3,
        open_duration: Duration::from_secs(30),
        max_open_duration: Duration::from_secs(240),
        window: Duration::from_secs(60),
        minimum_volume: 10,
        failure_rate: 0.5,
        slow_call_duration: Duration::from_secs(5),
        slow_call_rate: 0.8,
        half_open_probes: 3,
    };

    /// Monitor defaults: 10 failures, 5 successes, 60 s, volume 20, 30%. Open at most 2
    /// minutes (the spec's time to recover): however often a monitor tripped, it is let back
    /// in that soon.
    pub const MONITOR: BreakerSettings = BreakerSettings {
        enabled: true,
        failure_threshold: 10,
        success_threshold: 5,
        open_duration: Duration::from_secs(60),
        max_open_duration: Duration::from_secs(120),
        window: Duration::from_secs(60),
        minimum_volume: 20,
        failure_rate: 0.3,
        slow_call_duration: Duration::from_secs(5),
        slow_call_rate: 0.8,
        half_open_probes: 5,
    };
}

/// Endpoint health: active `grpc.health.v1` checks and passive outlier detection.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HealthConfig {
    /// Probe every endpoint with `grpc.health.v1.Health/Check`. Default false: not every
    /// upstream implements the health service. Passive detection always runs.
    pub active: bool,
    /// Service name sent in the check (empty: the server as a whole).
    pub service: String,
    /// Time between checks. Default 2 s.
    #[serde(with = "crate::duration")]
    pub interval: Duration,
    /// A check not answered within this fails. Default 1 s.
    #[serde(with = "crate::duration")]
    pub timeout: Duration,
    /// Consecutive failed checks that make an endpoint unhealthy. Default 2.
    pub unhealthy_threshold: u32,
    /// Consecutive passed checks that make an unhealthy endpoint healthy again. Default 2.
    pub healthy_threshold: u32,
    /// Share of failed streams on an endpoint (over the endpoint breaker's window) above which
    /// it is degraded: it then takes half its usual streams per connection. Default 0.1.
    pub degraded_error_rate: f64,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            active: false,
            service: String::new(),
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(1),
            unhealthy_threshold: 2,
            healthy_threshold: 2,
            degraded_error_rate: 0.1,
        }
    }
}

/// A token bucket on stream creation (new streams and resumes) towards one endpoint.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Streams per second, sustained.
    pub streams_per_second: f64,
    /// Streams that may be created at once after a quiet period. Default 1 s worth.
    #[serde(default)]
    pub burst: Option<u32>,
    /// Streams that may wait for a token; more get `RESOURCE_EXHAUSTED`. Default 1024.
    #[serde(default = "default_rate_queue")]
    pub queue: usize,
}

fn default_rate_queue() -> usize {
    1024
}

impl RateLimitConfig {
    /// The effective bucket size.
    pub fn burst(&self) -> u32 {
        self.burst
            .unwrap_or_else(|| self.streams_per_second.ceil().max(1.0) as u32)
    }
}

/// How a broken upstream stream of a method is resumed.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum ResumeMode {
    /// Not resumed: the monitor gets `UNAVAILABLE`.
    #[default]
    None,
    /// Reopen and send the monitor's latest request message again (for a server stream, its
    /// one request).
    ReplayLast,
    /// Reopen and send every request message the monitor sent (up to `replay_buffer_bytes`).
    ReplayAll,
}

impl ResumeMode {
    /// Whether streams of the method are resumed at all.
    pub fn resumes(self) -> bool {
        self != ResumeMode::None
    }

    /// The name used in the config.
    pub fn as_str(self) -> &'static str {
        match self {
            ResumeMode::None => "none",
            ResumeMode::ReplayLast => "replay-last",
            ResumeMode::ReplayAll => "replay-all",
        }
    }
}

impl super::Config {
    pub(crate) fn validate_resilience(&self) -> Result<(), super::ConfigError> {
        use super::invalid;
        let pool = &self.pool;
        if !pool.keepalive_interval.is_zero() && pool.keepalive_timeout.is_zero() {
            return Err(invalid(
                "pool.keepalive_timeout",
                "must be greater than 0 while keepalive is on",
            ));
        }
        if pool.reconnect_backoff.is_zero() || pool.reconnect_backoff > pool.reconnect_backoff_max {
            return Err(invalid(
                "pool.reconnect_backoff",
                "must be greater than 0 and at most pool.reconnect_backoff_max",
            ));
        }
        for scope in BreakerScope::ALL {
            let settings = self.breakers.settings(scope);
            let key = |field: &str| format!("breakers.{scope}.{field}");
            if settings.failure_threshold == 0 {
                return Err(invalid(key("failure_threshold"), "must be at least 1"));
            }
            if settings.success_threshold == 0 {
                return Err(invalid(key("success_threshold"), "must be at least 1"));
            }
            if settings.half_open_probes == 0 {
                return Err(invalid(key("half_open_probes"), "must be at least 1"));
            }
            if settings.open_duration.is_zero() {
                return Err(invalid(key("open_duration"), "must be greater than 0"));
            }
            if settings.max_open_duration < settings.open_duration {
                return Err(invalid(
                    key("max_open_duration"),
                    "must be at least open_duration",
                ));
            }
            if settings.window.is_zero() {
                return Err(invalid(key("window"), "must be greater than 0"));
            }
            for (field, rate) in [
                ("failure_rate", settings.failure_rate),
                ("slow_call_rate", settings.slow_call_rate),
            ] {
                if !(rate > 0.0 && rate <= 1.0) {
                    return Err(invalid(key(field), "must be above 0 and at most 1"));
                }
            }
        }
        let health = &self.health;
        if health.interval.is_zero() || health.timeout.is_zero() {
            return Err(invalid(
                "health.interval",
                "interval and timeout must be greater than 0",
            ));
        }
        if health.unhealthy_threshold == 0 || health.healthy_threshold == 0 {
            return Err(invalid(
                "health.unhealthy_threshold",
                "thresholds must be at least 1",
            ));
        }
        if !(health.degraded_error_rate > 0.0 && health.degraded_error_rate <= 1.0) {
            return Err(invalid(
                "health.degraded_error_rate",
                "must be above 0 and at most 1",
            ));
        }
        Ok(())
    }
}
