//! One configured upstream endpoint: how to reach it, and what the pool knows about its state
//! (breaker, health, reconnect back-off, stream-creation rate limit, its own caps). Over all
//! endpoints: which may take new streams now (health, breaker, priority spill-over, caps
//! reached) and in what order new connections try them.
//!
//! This module judges endpoints; it does not place streams or open connections (`place` and
//! `life` act on its verdicts).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

use http::uri::{Authority, Scheme};
use http::{HeaderName, HeaderValue};
use parking_lot::Mutex;
use sluice_config::{AnswersConfig, Config, EndpointConfig};
use tokio::sync::Notify;

use super::PoolError;
use super::connector::{Connector, Http2Settings};
use super::limits::{LimitReached, Limits, LimitsSnapshot};
use super::rate::TokenBucket;
use sluice_config::BreakerScope;

use crate::breaker::{Breaker, BreakerEvents, BreakerState};
use crate::health::check::CheckTarget;
use crate::health::{EndpointHealth, Health};

/// One configured upstream endpoint and how to reach it.
pub(crate) struct Endpoint {
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
    /// Its provider's caps (`[endpoints.limits]`) and the use against them.
    pub(super) limits: Limits,
    /// What its provider's final statuses mean (`[endpoints.answers]`).
    pub answers: AnswersConfig,
    connector: Connector,
    backoff: Mutex<Backoff>,
    backoff_base: Duration,
    backoff_max: Duration,
    /// Connections to this endpoint over all groups, including ones being opened.
    pub(super) connections: AtomicUsize,
    /// Its position in the pool's endpoint list.
    pub(super) index: usize,
    /// When a stream last probed it while every endpoint was out ([`probe_outage`]).
    outage_probe: Mutex<Option<Instant>>,
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
        limits_released: &Arc<Notify>,
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
            limits: Limits::new(
                config.limits,
                whole.health.active,
                whole.cluster.is_some(),
                Arc::clone(limits_released),
            ),
            answers: config.answers.clone(),
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
            outage_probe: Mutex::new(None),
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

    /// Takes one connection under the endpoint's caps, or says which one refused; the count
    /// is given back when the connection ends (or its opening fails).
    pub(super) fn try_start_connection(&self) -> Result<(), LimitReached> {
        self.limits.try_open_connection(&self.connections)
    }

    /// Whether the endpoint's caps let the pool open a connection to it now.
    pub(super) fn may_open_connection(&self) -> bool {
        self.limits.may_open_connection(self.connection_count())
    }

    /// Use against its caps.
    pub(super) fn limits_snapshot(&self) -> LimitsSnapshot {
        let rate = self.rate_limit.as_ref().map(TokenBucket::rate);
        self.limits.snapshot(self.connection_count(), rate)
    }

    /// A refusal of [`Self::try_start_connection`], naming the endpoint and the cap.
    pub(super) fn limit_refusal(&self, reached: LimitReached) -> String {
        format!("{}: {}", self.id, self.limits.refusal(reached))
    }

    /// Its caps reached now, as a phrase naming them (none reached: `None`).
    pub(super) fn limits_reached(&self) -> Option<String> {
        self.limits
            .reached_phrase(self.connection_count())
            .map(|phrase| format!("endpoint {}: {phrase}", self.id))
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

/// What placement may do with one endpoint right now.
#[derive(Debug, Clone, Copy)]
pub(super) struct EndpointView {
    /// New streams may go there (healthy or degraded, breaker permits, best usable priority).
    pub(super) selected: bool,
    /// Connections there take half their streams.
    pub(super) degraded: bool,
    /// The endpoint's health and breaker, as routers see them.
    pub(super) health: Health,
    pub(super) breaker: BreakerState,
}

/// Which of `endpoints` new streams may use now: those neither unhealthy nor refused by their
/// breaker, and of those only the best priority (traffic spills to lower priorities when higher
/// ones lose health, and comes back when they recover). One view per endpoint, in order.
pub(super) fn views(endpoints: &[Arc<Endpoint>], now: Instant) -> Vec<EndpointView> {
    views_avoiding(endpoints, now, None)
}

/// [`views`] for a stream that must not go to the endpoint `avoid` (its answer there said to
/// take no new streams): that one counts as unusable, so the stream spills as it would.
pub(super) fn views_avoiding(
    endpoints: &[Arc<Endpoint>],
    now: Instant,
    avoid: Option<&str>,
) -> Vec<EndpointView> {
    views_excluding(endpoints, now, |e| avoid == Some(&*e.id))
}

/// [`views`] with the endpoints `excluded` says counting as unusable (an answer said to avoid
/// it, or its caps leave no room), so that placement spills past them as it would past a lost
/// endpoint: to the same priority first, then the next.
pub(super) fn views_excluding(
    endpoints: &[Arc<Endpoint>],
    now: Instant,
    excluded: impl Fn(&Endpoint) -> bool,
) -> Vec<EndpointView> {
    let verdicts: Vec<(bool, Health)> = endpoints
        .iter()
        .map(|e| {
            let health = e.health();
            // An endpoint that just refused a connection and has none left cannot take a
            // stream before its back-off ends: the next priority can.
            let unreachable = e.backing_off(now) && e.connection_count() == 0;
            let usable = health != Health::Unhealthy
                && !unreachable
                && !excluded(e)
                && e.breaker.permits(now);
            (usable, health)
        })
        .collect();
    let best = endpoints
        .iter()
        .zip(&verdicts)
        .filter(|(_, (usable, _))| *usable)
        .map(|(e, _)| e.priority)
        .min();
    endpoints
        .iter()
        .zip(verdicts)
        .map(|(e, (usable, health))| EndpointView {
            selected: usable && Some(e.priority) == best,
            degraded: health == Health::Degraded,
            health,
            breaker: e.breaker.state(),
        })
        .collect()
}

/// How often, at most, each endpoint gets a probe while every endpoint is out.
pub(super) const OUTAGE_PROBE_EVERY: Duration = Duration::from_secs(1);

/// Every endpoint is out. Those kept out by nothing but their breaker's open period (and the
/// reconnect back-off that came with the outage) let probes through now, each at most once per
/// [`OUTAGE_PROBE_EVERY`]: sitting out open periods that double with each trip would keep every
/// monitor down for minutes after the provider is back, and with nowhere else to go, a probe
/// costs the monitors nothing. Returns whether any endpoint was opened to probes.
pub(super) fn probe_outage(endpoints: &[Arc<Endpoint>], now: Instant) -> bool {
    let mut probing = false;
    for endpoint in endpoints {
        if !endpoint.health.only_breaker_open(&endpoint.breaker) {
            continue;
        }
        let mut last = endpoint.outage_probe.lock();
        if last.is_some_and(|at| now.saturating_duration_since(at) < OUTAGE_PROBE_EVERY) {
            continue;
        }
        *last = Some(now);
        endpoint.backoff.lock().retry_after = None;
        endpoint
            .breaker
            .probe_now("every endpoint is out: probing whether the provider is back");
        probing = true;
    }
    probing
}

/// Endpoints to try for a new connection: the selected (usable, best priority) ones of
/// `views` whose caps allow one now, those not backing off first, then the one with the fewest
/// connections (spreading load).
pub(super) fn connect_order(
    endpoints: &[Arc<Endpoint>],
    views: &[EndpointView],
    now: Instant,
) -> Vec<Arc<Endpoint>> {
    let mut order: Vec<(bool, usize, usize)> = endpoints
        .iter()
        .enumerate()
        .filter(|(i, e)| views[*i].selected && e.may_open_connection())
        .map(|(i, e)| (e.backing_off(now), e.connection_count(), i))
        .collect();
    order.sort_unstable();
    order
        .into_iter()
        .map(|(_, _, i)| Arc::clone(&endpoints[i]))
        .collect()
}

/// Why none of `endpoints` can take a stream, for the monitor's status message.
pub(super) fn unavailable_reason(endpoints: &[Arc<Endpoint>]) -> String {
    let reasons: Vec<String> = endpoints
        .iter()
        .map(|e| {
            let snapshot = e.health.snapshot(&e.breaker);
            let why = snapshot
                .reason
                .unwrap_or_else(|| "half-open probes in flight".to_owned());
            format!("{}: {why}", e.id)
        })
        .collect();
    format!("no upstream endpoint is available ({})", reasons.join("; "))
}

/// Pause after `failures` refused connections: `base * 2^(failures-1)` capped at `max`, then
/// scaled by a random factor in 0.5..1 ("equal jitter").
pub(super) fn backoff_pause(base: Duration, max: Duration, failures: u32, jitter: f64) -> Duration {
    let doublings = failures.saturating_sub(1).min(20);
    let full = base.saturating_mul(1 << doublings).min(max);
    full.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0))
}

/// Endpoints with these priorities and regions, named `e0`, `e1`, ... and dialling nowhere, for
/// tests of what the pool does with them.
#[cfg(test)]
pub(super) fn test_endpoints(specs: &[(u32, &str)]) -> Vec<Arc<Endpoint>> {
    use super::window::StreamWindowSizing;

    let whole = Config::default();
    let settings = Http2Settings {
        stream_window: StreamWindowSizing {
            floor: 65_535,
            budget: 65_535,
        },
        connection_window: 1 << 20,
    };
    let events = Arc::new(BreakerEvents::default());
    let released = Arc::new(Notify::new());
    specs
        .iter()
        .enumerate()
        .map(|(i, &(priority, region))| {
            let mut config = EndpointConfig::new(format!("e{i}"), "http://127.0.0.1:9");
            config.priority = priority;
            config.region = region.to_owned();
            let endpoint = Endpoint::new(i, &config, &whole, settings, &events, &released);
            Arc::new(endpoint.unwrap_or_else(|e| panic!("test endpoint: {e}")))
        })
        .collect()
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

    fn selected(views: &[EndpointView]) -> Vec<bool> {
        views.iter().map(|v| v.selected).collect()
    }

    fn ids(endpoints: &[Arc<Endpoint>]) -> Vec<&str> {
        endpoints.iter().map(|e| &*e.id).collect()
    }

    #[test]
    fn streams_use_the_best_usable_priority_and_spill_when_it_is_lost() {
        let endpoints = test_endpoints(&[(0, "a"), (0, "a"), (1, "a")]);
        let now = Instant::now();
        assert_eq!(selected(&views(&endpoints, now)), [true, true, false]);
        endpoints[0].breaker.trip_now("test");
        let tripped = views(&endpoints, Instant::now());
        assert_eq!(selected(&tripped), [false, true, false]);
        assert_eq!(tripped[0].health, Health::Unhealthy);
        assert_eq!(tripped[0].breaker, BreakerState::Open);
        endpoints[1].breaker.trip_now("test");
        assert_eq!(
            selected(&views(&endpoints, Instant::now())),
            [false, false, true],
            "traffic spills to the next priority"
        );
    }

    #[test]
    fn an_endpoint_its_provider_pushed_back_or_refused_spills_to_the_next_priority() {
        let endpoints = test_endpoints(&[(0, "a"), (1, "a")]);
        let standing = &endpoints[0].health.standing;
        standing.push_back(Duration::from_secs(60), "RESOURCE_EXHAUSTED: quota".into());
        let pushed = views(&endpoints, Instant::now());
        assert_eq!(selected(&pushed), [false, true]);
        assert_eq!(pushed[0].health, Health::Unhealthy);
        // Its breaker blames it for nothing.
        assert_eq!(pushed[0].breaker, BreakerState::Closed);
        assert!(standing.reenable());
        assert_eq!(selected(&views(&endpoints, Instant::now())), [true, false]);
        standing.misconfigure("UNAUTHENTICATED: revoked".into());
        assert_eq!(selected(&views(&endpoints, Instant::now())), [false, true]);
        let reason = unavailable_reason(&endpoints[..1]);
        assert!(
            reason.contains("e0: misconfigured until re-enabled (UNAUTHENTICATED: revoked)"),
            "{reason}"
        );
    }

    #[test]
    fn when_every_endpoint_is_out_those_only_their_breaker_keeps_out_are_probed_once_a_second() {
        let endpoints = test_endpoints(&[(0, "a"), (0, "a"), (1, "a")]);
        for endpoint in &endpoints {
            endpoint.breaker.trip_now("test");
            endpoint.connect_failed();
        }
        // Checks failing, or an operator's mark, keep an endpoint out for a reason of its own.
        endpoints[1]
            .health
            .standing
            .misconfigure("UNAUTHENTICATED: revoked".into());
        let now = Instant::now();
        assert_eq!(selected(&views(&endpoints, now)), [false, false, false]);
        assert!(probe_outage(&endpoints, now));
        let probing = views(&endpoints, Instant::now());
        assert_eq!(selected(&probing), [true, false, false]);
        assert_eq!(probing[0].breaker, BreakerState::HalfOpen);
        // Once a second at most: a probe that failed opens the breaker again until then.
        endpoints[0].breaker.trip_now("the probe failed");
        assert!(!probe_outage(&endpoints, now + Duration::from_millis(500)));
        assert!(probe_outage(&endpoints, now + OUTAGE_PROBE_EVERY));
    }

    #[test]
    fn an_endpoint_backing_off_without_connections_cannot_take_streams() {
        let endpoints = test_endpoints(&[(0, "a"), (1, "a")]);
        endpoints[0].connect_failed();
        let now = Instant::now();
        assert_eq!(selected(&views(&endpoints, now)), [false, true]);
        // With a connection left, its streams need no new connection: it stays selected.
        endpoints[0].connections.fetch_add(1, Relaxed);
        assert_eq!(selected(&views(&endpoints, now)), [true, false]);
    }

    #[test]
    fn connections_open_first_where_no_back_off_runs_then_where_fewest_are() {
        let endpoints = test_endpoints(&[(0, "a"), (0, "a"), (0, "a"), (0, "a"), (1, "a")]);
        endpoints[0].connections.fetch_add(2, Relaxed);
        endpoints[2].connections.fetch_add(1, Relaxed);
        // Backing off, but still selected: it has a connection.
        endpoints[3].connections.fetch_add(1, Relaxed);
        endpoints[3].connect_failed();
        let now = Instant::now();
        let views = views(&endpoints, now);
        assert_eq!(
            ids(&connect_order(&endpoints, &views, now)),
            ["e1", "e2", "e0", "e3"],
            "e4 has a worse priority"
        );
    }

    #[test]
    fn the_unavailable_reason_names_every_endpoint_and_why() {
        let endpoints = test_endpoints(&[(0, "a"), (1, "a")]);
        endpoints[0].breaker.trip_now("test");
        let reason = unavailable_reason(&endpoints);
        assert!(
            reason
                .starts_with("no upstream endpoint is available (e0: endpoint circuit breaker is"),
            "{reason}"
        );
        assert!(
            reason.contains("; e1: half-open probes in flight)"),
            "{reason}"
        );
    }
}
