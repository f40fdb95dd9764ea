//! One configured upstream endpoint: how to reach it, and what the pool knows about its state
//! (breaker, health, reconnect back-off, stream-creation rate limit).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

use http::uri::{Authority, Scheme};
use http::{HeaderName, HeaderValue};
use parking_lot::Mutex;
use sluice_config::{Config, EndpointConfig};

use super::PoolError;
use super::connector::{Connector, Http2Settings};
use super::rate::TokenBucket;
use sluice_config::BreakerScope;

use crate::breaker::{Breaker, BreakerEvents};
use crate::health::check::CheckTarget;
use crate::health::{EndpointHealth, Health};

/// One configured upstream endpoint and how to reach it.
pub struct Endpoint {
    /// The endpoint's id from the config.
    pub id: Arc<str>,
    /// Its region label.
    pub region: Arc<str>,
    /// Its priority (lower preferred).
    pub priority: u32,
    /// `http` or `https`, for the `:scheme` pseudo-header.
    pub scheme: Scheme,
    /// `host:port`, for the `:authority` pseudo-header.
    pub authority: Authority,
    /// Metadata added to every request sent here.
    pub metadata: Vec<(HeaderName, HeaderValue)>,
    /// Counts failed connects and streams over all its connections.
    pub breaker: Arc<Breaker>,
    /// Active checks and the verdict.
    pub health: EndpointHealth,
    /// Cap on stream creation, when configured.
    pub rate_limit: Option<TokenBucket>,
    connector: Connector,
    backoff: Mutex<Backoff>,
    backoff_base: Duration,
    backoff_max: Duration,
    /// Connections to this endpoint over all groups, including ones being opened.
    pub(super) connections: AtomicUsize,
    /// Its position in the pool's endpoint list.
    pub(super) index: usize,
}

/// Reconnect back-off after refused connections.
#[derive(Debug, Default)]
struct Backoff {
    failures: u32,
    retry_after: Option<Instant>,
}

impl Endpoint {
    pub(super) fn new(
        index: usize,
        config: &EndpointConfig,
        whole: &Config,
        settings: Http2Settings,
        events: &Arc<BreakerEvents>,
    ) -> Result<Self, PoolError> {
        let invalid = |problem: String| PoolError::Invalid {
            endpoint: config.id.clone(),
            problem,
        };
        let authority = Authority::try_from(config.authority())
            .map_err(|e| invalid(format!("bad authority {:?}: {e}", config.authority())))?;
        let metadata = config
            .metadata
            .iter()
            .map(|(name, value)| {
                let name = HeaderName::try_from(name.as_str())
                    .map_err(|e| invalid(format!("metadata name {name:?}: {e}")))?;
                let value = HeaderValue::try_from(value.as_str())
                    .map_err(|e| invalid(format!("metadata value for {name}: {e}")))?;
                Ok((name, value))
            })
            .collect::<Result<Vec<_>, PoolError>>()?;
        let connector = Connector::new(config, settings).map_err(|source| PoolError::Tls {
            endpoint: config.id.clone(),
            source,
        })?;
        let id: Arc<str> = Arc::from(config.id.as_str());
        Ok(Self {
            breaker: Breaker::new(
                BreakerScope::Endpoint,
                Arc::clone(&id),
                whole.breakers.settings(BreakerScope::Endpoint),
                Arc::clone(events),
            ),
            health: EndpointHealth::new(&whole.health),
            rate_limit: config.rate_limit.as_ref().map(TokenBucket::new),
            id,
            region: Arc::from(config.region.as_str()),
            priority: config.priority,
            scheme: if config.uses_tls() {
                Scheme::HTTPS
            } else {
                Scheme::HTTP
            },
            authority,
            metadata,
            connector,
            backoff: Mutex::new(Backoff::default()),
            backoff_base: whole.pool.reconnect_backoff,
            backoff_max: whole.pool.reconnect_backoff_max,
            connections: AtomicUsize::new(0),
            index,
        })
    }

    /// Dials the endpoint.
    pub fn connector(&self) -> &Connector {
        &self.connector
    }

    /// What a health check's request needs to know of it.
    pub(super) fn check_target(&self) -> CheckTarget<'_> {
        CheckTarget {
            scheme: &self.scheme,
            authority: &self.authority,
            metadata: &self.metadata,
        }
    }

    /// Connections to it now (including ones being opened).
    pub fn connection_count(&self) -> usize {
        self.connections.load(Relaxed)
    }

    /// Its health now.
    pub fn health(&self) -> Health {
        self.health.health(&self.breaker)
    }

    /// Whether a refused connection is still being backed off from.
    pub(super) fn backing_off(&self, now: Instant) -> bool {
        self.backoff
            .lock()
            .retry_after
            .is_some_and(|until| until > now)
    }

    /// When the current back-off ends, if one runs.
    pub(super) fn retry_at(&self) -> Option<Instant> {
        self.backoff.lock().retry_after
    }

    /// A connection attempt failed: back off exponentially, with jitter so that every group
    /// and every Sluice instance do not reconnect in step.
    pub(super) fn connect_failed(&self) {
        let mut backoff = self.backoff.lock();
        backoff.failures = backoff.failures.saturating_add(1);
        let pause = backoff_pause(
            self.backoff_base,
            self.backoff_max,
            backoff.failures,
            fastrand::f64(),
        );
        backoff.retry_after = Some(Instant::now() + pause);
    }

    /// A connection attempt succeeded: the back-off starts over.
    pub(super) fn connect_succeeded(&self) {
        *self.backoff.lock() = Backoff::default();
    }
}

/// Pause after `failures` refused connections: `base * 2^(failures-1)` capped at `max`, then
/// scaled by a random factor in 0.5..1 ("equal jitter").
pub(super) fn backoff_pause(base: Duration, max: Duration, failures: u32, jitter: f64) -> Duration {
    let doublings = failures.saturating_sub(1).min(20);
    let full = base.saturating_mul(1 << doublings).min(max);
    full.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_up_to_the_cap() {
        let base = Duration::from_millis(100);
        let max = Duration::from_secs(10);
        assert_eq!(backoff_pause(base, max, 1, 1.0), base);
        assert_eq!(backoff_pause(base, max, 1, 0.0), base / 2);
        assert_eq!(backoff_pause(base, max, 4, 1.0), Duration::from_millis(800));
        assert_eq!(backoff_pause(base, max, 30, 1.0), max);
        assert_eq!(backoff_pause(base, max, 30, 0.0), max / 2);
    }
}
