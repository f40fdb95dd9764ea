//! `[endpoints.limits]`: a provider's per-account caps, stated per endpoint (connections,
//! health checks included; open streams; streams per connection; connection opens per second).
//! The stream-creation rate stays `[endpoints] rate_limit`.
//!
//! This module describes the caps and checks that they make sense; counting use against them
//! and placing streams within them is the data plane's job.

use serde::{Deserialize, Serialize};

use crate::ConfigError;

/// Caps one endpoint's provider puts on this account. Every field is optional: unset means no
/// cap of Sluice's own beyond the class and pool limits.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EndpointLimits {
    /// Connections open to the endpoint at once, over every class, the health check's own
    /// connection and connections still draining included.
    #[serde(default)]
    pub max_connections: Option<u32>,
    /// Streams open on the endpoint at once, over every connection.
    #[serde(default)]
    pub max_streams: Option<u32>,
    /// Streams on one connection (lowers the class's `max_streams_per_connection` for this
    /// endpoint's connections).
    #[serde(default)]
    pub max_streams_per_connection: Option<u32>,
    /// New connections per second, sustained (burst: one second's worth), health-check
    /// reconnects included.
    #[serde(default)]
    pub connections_per_second: Option<f64>,
    /// Named filters one subscription may hold (Yellowstone providers cap them): packed
    /// subscriptions (methods with `pack`) are filled up to the smallest such cap over the
    /// endpoints.
    #[serde(default)]
    pub max_filters_per_subscription: Option<u32>,
}

impl EndpointLimits {
    /// Whether any cap is set.
    pub fn any(&self) -> bool {
        *self != Self::default()
    }

    /// Checks the caps, naming offending keys under `key` (e.g. `endpoints[0].limits`).
    /// `health_checks` says whether active health checks will hold one of the connections.
    pub(crate) fn validate(&self, key: &str, health_checks: bool) -> Result<(), ConfigError> {
        let positive = |name: &str, value: Option<u32>| match value {
            Some(0) => Err(crate::invalid(
                format!("{key}.{name}"),
                "must be at least 1",
            )),
            _ => Ok(()),
        };
        positive("max_connections", self.max_connections)?;
        positive("max_streams", self.max_streams)?;
        positive(
            "max_streams_per_connection",
            self.max_streams_per_connection,
        )?;
        positive(
            "max_filters_per_subscription",
            self.max_filters_per_subscription,
        )?;
        if let Some(rate) = self.connections_per_second
            && !(rate > 0.0 && rate.is_finite())
        {
            return Err(crate::invalid(
                format!("{key}.connections_per_second"),
                "must be a positive number",
            ));
        }
        if health_checks && self.max_connections == Some(1) {
            return Err(crate::invalid(
                format!("{key}.max_connections"),
                "must be at least 2 with [health] active = true: the health check holds a \
                 connection of its own, which counts against this cap",
            ));
        }
        Ok(())
    }
}
