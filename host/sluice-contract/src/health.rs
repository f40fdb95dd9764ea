//! An endpoint's health as policies see it. How the data plane arrives at it (active checks,
//! passive outlier detection) is its own business; this is only the verdict.

use serde::Serialize;

/// An endpoint's health.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// Takes streams normally.
    Healthy,
    /// Takes half its usual streams per connection.
    Degraded,
    /// Takes no new streams.
    Unhealthy,
}
