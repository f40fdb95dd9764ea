//! `[endpoints.answers]`: what a provider's final gRPC status says about its endpoint. One
//! table per endpoint, from status code to treatment ([`Answer`]), over defaults that fit gRPC
//! providers ([`AnswersConfig::DEFAULTS`]), and the quota back-off periods.
//!
//! This module is the one list of gRPC status code names ([`CODE_NAMES`]) the config accepts.
//! It describes the treatments; acting on them (backing off, marking an endpoint
//! misconfigured, resuming elsewhere) is the data plane's job.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The gRPC status code names, indexed by code (`OK` is 0, `UNAUTHENTICATED` 16).
pub const CODE_NAMES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// The code of a status code name from [`CODE_NAMES`].
pub fn code_of(name: &str) -> Option<u32> {
    CODE_NAMES
        .iter()
        .position(|n| *n == name)
        .and_then(|i| u32::try_from(i).ok())
}

/// What an upstream's final status means for the endpoint that sent it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Answer {
    /// The endpoint failed the stream: it counts against the endpoint's and connection's
    /// breakers (`UNAVAILABLE` and `DEADLINE_EXCEEDED` as `[breakers] failure_kinds` says).
    Failure,
    /// Quota pushback: the endpoint takes no new streams for `pushback` (or the server's
    /// `grpc-retry-pushback-ms`), resumable streams resume elsewhere, nobody is blamed.
    Pushback,
    /// The endpoint's credentials are wrong: it takes no new streams until the operator
    /// re-enables it (`POST /api/v1/endpoints/{id}/enable`) or Sluice restarts with a new
    /// config; resumable streams resume elsewhere, nobody is blamed.
    Misconfigured,
    /// The monitor gets the status; it says nothing about the endpoint.
    Pass,
}

/// `[endpoints.answers]`: the endpoint's table from status code to [`Answer`], and the quota
/// back-off.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AnswersConfig {
    /// Status code name (`RESOURCE_EXHAUSTED`) to treatment, over [`AnswersConfig::DEFAULTS`];
    /// codes in neither are `pass`.
    pub codes: BTreeMap<String, Answer>,
    /// How long the endpoint takes no new streams after a pushback that did not say. Default
    /// 10 s.
    #[serde(with = "crate::duration")]
    pub pushback: Duration,
    /// The longest pushback honoured from `grpc-retry-pushback-ms` (a negative one, "do not
    /// retry", means this long). Default 5 min.
    #[serde(with = "crate::duration")]
    pub max_pushback: Duration,
    /// How many different monitors' calls must get a `pushback` or `misconfigured` answer
    /// within a minute before the endpoint is marked. Default 2: one monitor's request can
    /// draw such an answer for what it asked, and must not take the endpoint from the others
    /// (every unconfigured monitor counts as one). 1 trusts a single call.
    pub witnesses: u32,
}

impl Default for AnswersConfig {
    fn default() -> Self {
        Self {
            codes: BTreeMap::new(),
            pushback: Duration::from_secs(10),
            max_pushback: Duration::from_secs(300),
            witnesses: 2,
        }
    }
}

impl AnswersConfig {
    /// The treatments every endpoint starts from.
    pub const DEFAULTS: [(&'static str, Answer); 5] = [
        ("UNAVAILABLE", Answer::Failure),
        ("DEADLINE_EXCEEDED", Answer::Failure),
        ("RESOURCE_EXHAUSTED", Answer::Pushback),
        ("UNAUTHENTICATED", Answer::Misconfigured),
        ("PERMISSION_DENIED", Answer::Misconfigured),
    ];

    /// The treatment of status `code`.
    pub fn answer(&self, code: u32) -> Answer {
        let Some(name) = usize::try_from(code).ok().and_then(|i| CODE_NAMES.get(i)) else {
            return Answer::Pass;
        };
        self.codes
            .get(*name)
            .copied()
            .or_else(|| {
                Self::DEFAULTS
                    .iter()
                    .find(|(n, _)| n == name)
                    .map(|(_, answer)| *answer)
            })
            .unwrap_or(Answer::Pass)
    }

    /// How long to take no new streams after a pushback whose `grpc-retry-pushback-ms` was
    /// `server` (gRFC A6: a negative value asks not to retry at all).
    pub fn pushback_for(&self, server: Option<i64>) -> Duration {
        match server {
            None => self.pushback,
            Some(ms) if ms < 0 => self.max_pushback,
            Some(ms) => Duration::from_millis(ms.unsigned_abs()).min(self.max_pushback),
        }
    }

    /// Checks the table; `key` names it in errors (`endpoints[0].answers`).
    pub(crate) fn validate(&self, key: &str) -> Result<(), crate::ConfigError> {
        for name in self.codes.keys() {
            if name == "OK" || code_of(name).is_none() {
                return Err(crate::invalid(
                    format!("{key}.codes.{name}"),
                    format!(
                        "is not a gRPC error code name (one of {})",
                        CODE_NAMES[1..].join(", ")
                    ),
                ));
            }
        }
        if self.witnesses == 0 {
            return Err(crate::invalid(
                format!("{key}.witnesses"),
                "must be at least 1",
            ));
        }
        if self.pushback > self.max_pushback {
            return Err(crate::invalid(
                format!("{key}.pushback"),
                format!(
                    "{:?} is longer than max_pushback ({:?})",
                    self.pushback, self.max_pushback
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_fit_grpc_providers_and_the_table_overrides_them() {
        let defaults = AnswersConfig::default();
        let of = |name: &str| code_of(name).unwrap_or(u32::MAX);
        assert_eq!(defaults.answer(of("UNAVAILABLE")), Answer::Failure);
        assert_eq!(defaults.answer(of("RESOURCE_EXHAUSTED")), Answer::Pushback);
        assert_eq!(
            defaults.answer(of("UNAUTHENTICATED")),
            Answer::Misconfigured
        );
        assert_eq!(
            defaults.answer(of("PERMISSION_DENIED")),
            Answer::Misconfigured
        );
        assert_eq!(defaults.answer(of("INTERNAL")), Answer::Pass);
        assert_eq!(defaults.answer(99), Answer::Pass);
        let mut table = AnswersConfig::default();
        table.codes.insert("INTERNAL".into(), Answer::Failure);
        table
            .codes
            .insert("RESOURCE_EXHAUSTED".into(), Answer::Pass);
        assert_eq!(table.answer(of("INTERNAL")), Answer::Failure);
        assert_eq!(table.answer(of("RESOURCE_EXHAUSTED")), Answer::Pass);
        assert_eq!(table.answer(of("UNAVAILABLE")), Answer::Failure);
    }

    #[test]
    fn the_server_pushback_is_honoured_up_to_the_cap() {
        let table = AnswersConfig::default();
        assert_eq!(table.pushback_for(None), Duration::from_secs(10));
        assert_eq!(table.pushback_for(Some(750)), Duration::from_millis(750));
        assert_eq!(table.pushback_for(Some(0)), Duration::ZERO);
        assert_eq!(table.pushback_for(Some(-1)), Duration::from_secs(300));
        assert_eq!(table.pushback_for(Some(i64::MAX)), Duration::from_secs(300));
    }

    #[test]
    fn unknown_code_names_and_a_pushback_past_the_cap_are_refused() {
        let mut table = AnswersConfig::default();
        table.codes.insert("RESOURCE_EXHAUSTD".into(), Answer::Pass);
        let error = table
            .validate("endpoints[0].answers")
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("endpoints[0].answers.codes.RESOURCE_EXHAUSTD")
                && error.contains("UNAUTHENTICATED"),
            "{error}"
        );
        let mut table = AnswersConfig::default();
        table.codes.insert("OK".into(), Answer::Failure);
        assert!(table.validate("a").is_err());
        let table = AnswersConfig {
            pushback: Duration::from_secs(600),
            ..AnswersConfig::default()
        };
        let error = table.validate("a").unwrap_err().to_string();
        assert!(error.contains("a.pushback"), "{error}");
    }
}
