//! A circuit breaker's state as policies, the admin API and alerts see it. The breaker itself
//! (counting, tripping, probing) lives in the data plane; the scopes a breaker can guard are
//! [`sluice_config::BreakerScope`].

use std::fmt;

use serde::Serialize;

/// A breaker's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum BreakerState {
    /// Calls pass; outcomes are counted.
    Closed,
    /// Calls are refused until the open period ends.
    Open,
    /// A limited number of probe calls pass; their outcomes close or reopen the breaker.
    HalfOpen,
    /// Refused by an operator until released.
    ForcedOpen,
    /// Passes everything and counts nothing, by an operator's choice, until released.
    Disabled,
}

impl BreakerState {
    /// The state's name, as the admin API and metrics write it.
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half-open",
            BreakerState::ForcedOpen => "forced-open",
            BreakerState::Disabled => "disabled",
        }
    }
}

impl fmt::Display for BreakerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
